// Self-test of test/support/redis.ts: real redis-server processes on loopback.
import { Redis } from 'ioredis';
import { afterAll, describe, expect, it } from 'vitest';
import { existsSync } from 'node:fs';
import { freePort, startCluster, startRedis, type RedisClusterHandle, type RedisServer } from './redis.js';

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    expect((error as NodeJS.ErrnoException).code).toBe('ESRCH');
    return false;
  }
}

describe('test/support/redis', () => {
  const cleanups: (() => Promise<void>)[] = [];
  afterAll(async () => {
    await Promise.allSettled(cleanups.map((c) => c()));
  });

  it('freePort gives a usable loopback port', async () => {
    const port = await freePort();
    expect(port).toBeGreaterThan(0);
    expect(port).not.toBe(6379);
  });

  it('starts a server, serves SET/GET, and stop() ends the process', async () => {
    const server = await startRedis();
    cleanups.push(() => server.stop());
    const client = new Redis(server.url, { lazyConnect: true, maxRetriesPerRequest: 0 });
    try {
      await client.connect();
      expect(server.port).not.toBe(6379);
      expect(await client.set('k', 'v')).toBe('OK');
      expect(await client.get('k')).toBe('v');
      expect(await client.config('GET', 'appendonly')).toEqual(['appendonly', 'no']);
    } finally {
      client.disconnect();
    }
    const { pid, dir } = server;
    expect(alive(pid)).toBe(true);
    await server.stop();
    expect(alive(pid)).toBe(false);
    expect(existsSync(dir)).toBe(false);
  });

  it('an append-only server keeps a write across kill -9 and restart on the same port', async () => {
    const server = await startRedis({ appendonly: true });
    cleanups.push(() => server.stop());
    const port = server.port;
    const firstPid = server.pid;
    const before = new Redis(server.url, { lazyConnect: true, maxRetriesPerRequest: 0 });
    try {
      await before.connect();
      await before.set('durable', '42');
    } finally {
      before.disconnect();
    }
    await server.kill();
    expect(alive(firstPid)).toBe(false);
    await server.restart();
    expect(server.port).toBe(port);
    expect(server.pid).not.toBe(firstPid);
    const after = new Redis(server.url, { lazyConnect: true, maxRetriesPerRequest: 0 });
    try {
      await after.connect();
      expect(await after.get('durable')).toBe('42');
    } finally {
      after.disconnect();
    }
    await server.stop();
    expect(alive(server.pid)).toBe(false);
  });

  it('starts a 3-master cluster that ioredis Cluster can use across slots', async () => {
    let cluster: RedisClusterHandle | undefined;
    let client: InstanceType<typeof Redis.Cluster> | undefined;
    try {
      cluster = await startCluster(3);
      expect(cluster.ports).toHaveLength(3);
      expect(cluster.ports).not.toContain(6379);
      const first = cluster.nodes[0]!;
      client = new Redis.Cluster([{ host: first.host, port: first.port }], { lazyConnect: true });
      await client.connect();
      const keys = ['{a}x', '{b}x', '{c}x'];
      for (const key of keys) await client.set(key, `value-${key}`);
      for (const key of keys) expect(await client.get(key)).toBe(`value-${key}`);
      // The three keys land on three different masters.
      const sizes = await Promise.all(cluster.servers.map((s: RedisServer) => dbsize(s)));
      expect(sizes).toEqual([1, 1, 1]);
      const info = String(await client.cluster('INFO'));
      expect(info).toMatch(/cluster_state:ok/);
      expect(info).toMatch(/cluster_size:3\r?\n/);
    } finally {
      client?.disconnect();
      const pids = cluster?.servers.map((s) => s.pid) ?? [];
      await cluster?.stop();
      for (const pid of pids) expect(alive(pid)).toBe(false);
    }
  });
});

async function dbsize(server: RedisServer): Promise<number> {
  const client = new Redis(server.url, { lazyConnect: true, maxRetriesPerRequest: 0 });
  try {
    await client.connect();
    return await client.dbsize();
  } finally {
    client.disconnect();
  }
}
