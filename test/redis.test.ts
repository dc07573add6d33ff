// RedisStore behaviour that only Redis has: scripts surviving SCRIPT FLUSH and restarts, Redis
// time over client time, deadlines, key escaping, bucket expiry, the protocol across slots.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Cluster, Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Manager, RedisStore } from '../src/index.js';
import { escapeId, rendezvous, slotOf } from '../src/store/redis/keys.js';
import { rejection } from './helpers.js';
import { deadLetter } from './support/dead-letters.js';
import { rawCommand, startCluster, startRedis, type RedisClusterHandle, type RedisServer } from './support/redis.js';

let server: RedisServer;
let durable: RedisServer;
let cluster: RedisClusterHandle;
const open: { close(): Promise<unknown> }[] = [];
let prefixes = 0;

beforeAll(async () => {
  [server, durable, cluster] = await Promise.all([startRedis(), startRedis({ appendonly: true }), startCluster(3)]);
}, 60_000);

afterAll(async () => {
  await Promise.all([server?.stop(), durable?.stop(), cluster?.stop()]);
});

afterEach(async () => {
  for (const o of open.splice(0)) await o.close();
});

/** A manager on a RedisStore over `client`, closed (and the client disconnected) after the test. */
function managerOn(
  client: Redis | Cluster,
  options: { clock?: () => number; timeoutMs?: number; prefix?: string; onStoreUnavailable?: 'fail-closed' | 'fail-open' | 'local'; logger?: ConstructorParameters<typeof Manager>[0] extends infer O ? (O extends { logger?: infer L } ? L : never) : never } = {},
): { manager: Manager; store: RedisStore } {
  const store = new RedisStore({ client, prefix: options.prefix ?? `r${++prefixes}`, ...(options.timeoutMs === undefined ? {} : { timeoutMs: options.timeoutMs }) });
  const manager = new Manager({
    store,
    ...(options.clock === undefined ? {} : { clock: options.clock }),
    ...(options.logger === undefined ? {} : { logger: options.logger }),
    ...(options.onStoreUnavailable === undefined ? {} : { onStoreUnavailable: options.onStoreUnavailable }),
  });
  open.push({
    close: async () => {
      await manager.close();
      client.disconnect();
    },
  });
  return { manager, store };
}

describe('client options', () => {
  it('ioredis auto-pipelining: decisions, tasks and dead letters work and stay exact', async () => {
    const client = new Redis({ port: server.port, enableAutoPipelining: true });
    const { manager } = managerOn(client);
    manager.registerProfile('p', { rate: { limit: 10, intervalMs: 3_600_000 }, retry: { attempts: 1 } });
    await manager.subscribe('u', 'p');
    const decisions = await Promise.all(Array.from({ length: 30 }, () => manager.getLimiter('u').check(1)));
    expect(decisions.filter((d) => d.allowed)).toHaveLength(10);
    await manager.subscribe('v', 'p');
    await expect(manager.getLimiter('v').submit(() => 'ran')).resolves.toBe('ran');
    await expect(manager.getLimiter('v').submit(() => Promise.reject(new Error('no')))).rejects.toMatchObject({ code: 'TASK_FAILED' });
    expect(await manager.dlq.list()).toHaveLength(1);
    expect((await manager.getSubscription('u'))?.usage).toBe(10);
  });
});

describe('scripts', () => {
  it('keep working after SCRIPT FLUSH (NOSCRIPT is answered by a reload)', async () => {
    const client = new Redis({ port: server.port });
    const { manager } = managerOn(client);
    manager.registerProfile('p', { rate: { limit: 5, intervalMs: 3_600_000 } });
    await manager.subscribe('u', 'p');
    expect((await manager.getLimiter('u').check(2)).allowed).toBe(true);
    await client.script('FLUSH');
    expect(await client.script('EXISTS', '0000000000000000000000000000000000000000')).toEqual([0]);
    expect(await manager.getLimiter('u').check(2)).toMatchObject({ allowed: true, remaining: 1 });
    expect((await manager.getSubscription('u'))?.usage).toBe(4);
  });

  it('keep working after a restart, and an append-only server keeps subscriptions and usage', async () => {
    const client = new Redis({ port: durable.port, maxRetriesPerRequest: null });
    const { manager } = managerOn(client, { timeoutMs: 5000 });
    manager.registerProfile('p', { rate: { limit: 100, intervalMs: 3_600_000 }, quota: { limit: 50 } });
    await manager.subscribe('u', 'p');
    await manager.getLimiter('u').check(7);
    await durable.kill();
    await durable.restart();
    expect(await manager.getSubscription('u')).toMatchObject({ profileName: 'p', usage: 7, status: 'active' });
    expect((await manager.getLimiter('u').check(3)).allowed).toBe(true);
    expect((await manager.getSubscription('u'))?.usage).toBe(10);
  });
});

describe('time', () => {
  it('decides on Redis TIME: a skewed client clock changes nothing, and subscription dates come from Redis', async () => {
    const skewed = () => Date.now() + 3_600_000;
    const { manager } = managerOn(new Redis({ port: server.port }), { clock: skewed });
    manager.registerProfile('p', { rate: { limit: 2, intervalMs: 1000 } });
    const before = Date.now();
    const sub = await manager.subscribe('u', 'p', { durationMs: 60_000 });
    const after = Date.now();
    expect(sub.startsAt.getTime()).toBeGreaterThanOrEqual(before - 1000);
    expect(sub.startsAt.getTime()).toBeLessThanOrEqual(after + 1000);
    expect(sub.endsAt!.getTime() - sub.startsAt.getTime()).toBe(60_000);
    // A client an hour ahead would see the bucket refilled and the subscription over: Redis does not.
    const limiter = manager.getLimiter('u');
    expect((await limiter.check(2)).allowed).toBe(true);
    const denied = await limiter.check(1);
    expect(denied.allowed).toBe(false);
    expect(denied.retryAfterMs).toBeGreaterThan(0);
    expect(denied.retryAfterMs).toBeLessThanOrEqual(500);
    expect((await manager.getSubscription('u'))?.status).toBe('active');
  });

  /** A manager (timeout 200 ms) whose user 'u' has used 1 unit, and a second connection to pause the server with. */
  async function usedOnce(onStoreUnavailable?: 'fail-open'): Promise<{ manager: Manager; client: Redis; admin: Redis }> {
    const client = new Redis({ port: server.port });
    const admin = new Redis({ port: server.port });
    open.push({ close: async () => admin.disconnect() });
    const { manager } = managerOn(client, { timeoutMs: 200, ...(onStoreUnavailable === undefined ? {} : { onStoreUnavailable }) });
    manager.registerProfile('p', { rate: { limit: 100, intervalMs: 1000 }, quota: { limit: 100 } });
    await manager.subscribe('u', 'p');
    await manager.getLimiter('u').check(1); // learns the server's clock
    return { manager, client, admin };
  }

  it('a call that times out on the client is refused by Redis when it runs late: it never charges', async () => {
    const { manager, client, admin } = await usedOnce();
    await admin.client('PAUSE', 600, 'ALL');
    const err = await rejection(manager.getLimiter('u').check(5));
    expect(err.code).toBe('STORE_UNAVAILABLE');
    // The paused call is still queued on the connection: this PING answers once it has run.
    await client.ping();
    expect((await manager.getSubscription('u'))?.usage).toBe(1);
  });

  /**
   * Pauses the server, sends `call`, and blocks the event loop from before the call's timeout
   * until Redis, unpaused, has run it past its deadline and answered: that answer is read before
   * the timeout's timer runs (as on a busy event loop).
   */
  async function answeredLate<T>(admin: Redis, call: () => Promise<T>): Promise<T> {
    await admin.client('PAUSE', 400, 'ALL');
    const answer = call();
    setTimeout(() => execFileSync('redis-cli', ['-p', String(server.port), 'PING']), 0);
    return answer;
  }

  it('a check that reaches Redis late but is answered before its timeout fires fails STORE_UNAVAILABLE and charges nothing', async () => {
    const { manager, admin } = await usedOnce();
    const err = await answeredLate(admin, () => rejection(manager.getLimiter('u').check(5)));
    expect(err.code).toBe('STORE_UNAVAILABLE');
    expect(err.message).toContain('after its deadline');
    expect((await manager.getSubscription('u'))?.usage).toBe(1);
  });

  it('a check answered late goes to the outage policy: fail-open admits it and charges nothing', async () => {
    const { manager, admin } = await usedOnce('fail-open');
    expect(await answeredLate(admin, () => manager.getLimiter('u').check(5))).toMatchObject({ allowed: true });
    expect((await manager.getSubscription('u'))?.usage).toBe(1);
  });
});

describe('batches and timeouts', () => {
  it('one batch carries every kind of answer, each to its own caller', async () => {
    const { manager } = managerOn(new Redis({ port: server.port }));
    manager.registerProfile('tarif-é✓', { rate: { limit: 3, intervalMs: 3_600_000 }, quota: { limit: 2 } });
    manager.registerProfile('pooled', { rate: { limit: 1, intervalMs: 3_600_000, shared: 'pool', onLimit: 'reject' } });
    await manager.subscribe('full', 'tarif-é✓');
    await manager.subscribe('spent', 'tarif-é✓');
    await manager.getLimiter('spent').check(2);
    await manager.subscribe('gone', 'tarif-é✓');
    await manager.cancelSubscription('gone');
    await manager.subscribe('pool-a', 'pooled');
    await manager.subscribe('pool-b', 'pooled');
    for (const u of ['full', 'spent', 'gone', 'pool-a', 'pool-b']) await manager.getLimiter(u).peek();
    // Issued in one turn: they travel in one or two admit calls on this node.
    const answers = await Promise.allSettled([
      manager.getLimiter('full').checkDetailed(2),
      manager.getLimiter('spent').check(1),
      manager.getLimiter('gone').check(1),
      manager.getLimiter('nobody').check(1),
      manager.getLimiter('pool-a').check(1),
      manager.getLimiter('pool-b').check(1),
      manager.getLimiter('full').check(4),
    ]);
    const code = (r: PromiseSettledResult<unknown>): unknown => (r.status === 'rejected' ? (r.reason as { code?: string }).code : 'fulfilled');
    expect(answers[0]).toMatchObject({ status: 'fulfilled', value: { allowed: true, profile: 'tarif-é✓', usage: 2, quotaLimit: 2 } });
    expect(code(answers[1])).toBe('QUOTA_EXCEEDED');
    expect(answers[2]).toMatchObject({ status: 'rejected', reason: { code: 'SUBSCRIPTION_INACTIVE', message: expect.stringContaining('canceled') } });
    expect(code(answers[3])).toBe('SUBSCRIPTION_NOT_FOUND');
    const pooled = [answers[4], answers[5]].map((r) => (r.status === 'fulfilled' ? (r.value as { allowed: boolean }).allowed : r.reason));
    expect(pooled.sort()).toEqual([false, true]);
    expect(code(answers[6])).toBe('INVALID_ARGUMENT');
    expect(await manager.getSubscription('full')).toMatchObject({ usage: 2, profileName: 'tarif-é✓' });
  });

  it('calls in flight time out each at its own deadline, charge nothing, and service resumes', async () => {
    const client = new Redis({ port: server.port });
    const admin = new Redis({ port: server.port });
    open.push({ close: async () => admin.disconnect() });
    const { manager } = managerOn(client, { timeoutMs: 300 });
    manager.registerProfile('p', { rate: { limit: 100, intervalMs: 3_600_000 } });
    const users = Array.from({ length: 20 }, (_, i) => `t${i}`);
    for (const u of users) await manager.subscribe(u, 'p');
    for (const u of users) await manager.getLimiter(u).check(1);
    await admin.client('PAUSE', 900, 'ALL');
    const settled = async (p: Promise<unknown>, from: number): Promise<{ code: unknown; after: number }> => {
      const e = await rejection(p);
      return { code: e.code, after: performance.now() - from };
    };
    const t0 = performance.now();
    const first = users.map((u) => settled(manager.getLimiter(u).check(1), t0));
    // A later call keeps its own deadline: the timer that fails the first ones must not fail it early.
    await new Promise<void>((resolve) => setTimeout(resolve, 150));
    const t1 = performance.now();
    const later = settled(manager.getLimiter('t0').check(1), t1);
    for (const r of [...(await Promise.all(first)), await later]) {
      expect(r.code).toBe('STORE_UNAVAILABLE');
      expect(r.after).toBeGreaterThanOrEqual(299);
    }
    await client.ping(); // the queued calls have run (and were refused past their deadline)
    for (const u of users) expect((await manager.getSubscription(u))?.usage).toBe(1);
    expect((await manager.getLimiter('t1').check(1)).allowed).toBe(true);
  });
});

describe('batches on a Redis Cluster', () => {
  it("one turn's decisions for many users of one slot travel in a few script calls, each answered and charged as its own", async () => {
    const { manager } = managerOn(new Cluster(cluster.nodes));
    manager.registerProfile('p', { rate: { limit: 100, intervalMs: 1000 } });
    // Users whose keys share one slot, each with a hash tag of its own.
    const slot = slotOf(`u:${escapeId('slot-0')}`);
    const users = ['slot-0'];
    for (let i = 1; users.length < 24; i++) if (slotOf(`u:${escapeId(`slot-${i}`)}`) === slot) users.push(`slot-${i}`);
    for (const user of users) await manager.subscribe(user, 'p');
    expect((await manager.getLimiter(users[0]!).check(1)).allowed).toBe(true); // the script is loaded on that node
    await Promise.all(cluster.ports.map((port) => rawCommand(port, ['CONFIG', 'RESETSTAT'])));
    const decisions = await Promise.all(users.map((user, i) => manager.getLimiter(user).check(1 + (i % 3))));
    const stats = await Promise.all(cluster.ports.map((port) => rawCommand(port, ['INFO', 'commandstats'])));
    const calls = stats.reduce((sum, text) => sum + Number(/cmdstat_evalsha:calls=(\d+)/.exec(text)?.[1] ?? 0), 0);
    expect(decisions.map((d) => d.allowed)).toEqual(users.map(() => true));
    // The first two go at once, the rest gather behind them into one call (and a presence beat may
    // land meanwhile): not one call per user.
    expect(calls).toBeLessThanOrEqual(4);
    for (const [i, user] of users.entries()) expect({ user, usage: (await manager.getSubscription(user))?.usage }).toEqual({ user, usage: (i === 0 ? 1 : 0) + 1 + (i % 3) });
  });
});

describe('keys', () => {
  const ids = ['a:b', 'a{b}', '{a}', 'a}b{', 'a b', 'ünï©ødé', 'a%7db', 'a%u007db', '🙂', 'x'.repeat(1024), ':', '{}'];

  it('escaping is injective and brace-free', () => {
    const escaped = ids.map(escapeId);
    expect(new Set(escaped).size).toBe(ids.length);
    for (const e of escaped) expect(e).not.toMatch(/[{}]/);
    expect(escapeId('\ud800')).not.toBe(escapeId('\udc00'));
  });

  it('odd user ids work on a Redis Cluster, each with its own usage', async () => {
    const { manager } = managerOn(new Cluster(cluster.nodes));
    manager.registerProfile('p', { rate: { limit: 100, intervalMs: 1000 } });
    for (const [i, id] of ids.entries()) {
      await manager.subscribe(id, 'p');
      await manager.getLimiter(id).check(i + 1);
    }
    for (const [i, id] of ids.entries()) expect((await manager.getSubscription(id))?.usage).toBe(i + 1);
  });

  it('a bucket key expires once the bucket is full again', async () => {
    const client = new Redis({ port: server.port });
    const { manager } = managerOn(client);
    manager.registerProfile('p', { rate: { limit: 10, intervalMs: 1000, shared: 'gpu' } });
    await manager.subscribe('u', 'p');
    await manager.getLimiter('u').check(3);
    const keys = await client.keys(`r${prefixes}:{b:gpu}`);
    expect(keys).toHaveLength(1);
    const ttl = await client.pttl(keys[0]!);
    expect(ttl).toBeGreaterThan(0);
    expect(ttl).toBeLessThanOrEqual(301);
  });

  it('rendezvous placement spreads tenants evenly and moves about 1/N of them when a shard is added', () => {
    const tags = Array.from({ length: 20_000 }, (_, i) => `u:tenant-${i}`);
    const before = tags.map((t) => rendezvous(t, 4));
    const counts = [0, 0, 0, 0];
    for (const s of before) counts[s]!++;
    for (const c of counts) expect(Math.abs(c - 5000)).toBeLessThan(400);
    const after = tags.map((t) => rendezvous(t, 5));
    const moved = after.filter((s, i) => s !== before[i]);
    expect(moved.every((s) => s === 4)).toBe(true);
    expect(Math.abs(moved.length / tags.length - 0.2)).toBeLessThan(0.02);
  });
});

describe('across slots (Redis Cluster)', () => {
  it('a shared bucket in another slot: a rate denial gives the quota reservation back', async () => {
    const { manager } = managerOn(new Cluster(cluster.nodes));
    manager.registerProfile('p', { rate: { limit: 2, intervalMs: 3_600_000, shared: 'pool', onLimit: 'reject' }, quota: { limit: 10 } });
    await manager.subscribe('A', 'p');
    await manager.subscribe('B', 'p');
    const results = await Promise.allSettled([
      ...Array.from({ length: 5 }, () => manager.getLimiter('A').submit(() => 'A')),
      ...Array.from({ length: 5 }, () => manager.getLimiter('B').submit(() => 'B')),
    ]);
    expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(2);
    const a = (await manager.getSubscription('A'))!.usage;
    const b = (await manager.getSubscription('B'))!.usage;
    expect(a + b).toBe(2);
  });

  // The protocol across slots tells a refusal's wait in whole ms only; the cache of refusals
  // keeps a millisecond less, and nothing that counted tasks waiting (docs/redis.md).
  const T0 = Date.UTC(2026, 5, 1);

  it('a refusal remembered across slots, told in whole ms, never outlives the refusal Redis would give', async () => {
    let now = T0;
    const { manager, store } = managerOn(new Cluster(cluster.nodes), { clock: () => now });
    store.setTestClock(() => now);
    // A unit every 333⅓ ms: Redis tells a wait of 334 ms, and the bucket has room after 333.334.
    manager.registerProfile('p', { rate: { limit: 3, intervalMs: 1000, burst: 1, shared: 'thirds' } });
    await manager.subscribe('u', 'p');
    const u = manager.getLimiter('u');
    expect((await u.check()).allowed).toBe(true);
    expect(await u.check()).toMatchObject({ allowed: false, retryAfterMs: 334 });
    now = T0 + 333.5;
    expect((await u.check()).allowed).toBe(true);
  });

  it('a refusal across slots that counted tasks waiting for their turn does not outlive them', async () => {
    let now = T0;
    const { manager, store } = managerOn(new Cluster(cluster.nodes), { clock: () => now });
    store.setTestClock(() => now);
    manager.registerProfile('p', { rate: { limit: 1, intervalMs: 1000, shared: 'line', onLimit: 'wait', maxWaitMs: 60_000 } });
    await manager.subscribe('u', 'p');
    const u = manager.getLimiter('u');
    expect((await u.check()).allowed).toBe(true);
    const inLine = new Promise<void>((resolve) => manager.on('task', (e: { to: string }) => e.to === 'WAITING_RATE' && resolve()));
    const controller = new AbortController();
    const task = u.submit(() => 'ran', { signal: controller.signal });
    task.catch(() => {});
    await inLine;
    // The waiting task's unit counts ahead of this check: 2 s.
    expect(await u.check()).toMatchObject({ allowed: false, retryAfterMs: 2000 });
    controller.abort();
    expect((await rejection(task)).code).toBe('ABORTED');
    now += 1000;
    expect((await u.check()).allowed).toBe(true);
  });

  it('waiting for a shared bucket in another slot keeps the reservation and runs in turn', async () => {
    const { manager } = managerOn(new Cluster(cluster.nodes));
    manager.registerProfile('p', { rate: { limit: 20, intervalMs: 1000, burst: 2, shared: 'slow' }, quota: { limit: 10 } });
    await manager.subscribe('A', 'p');
    const runs = await Promise.all(Array.from({ length: 4 }, (_, i) => manager.getLimiter('A').submit(() => i)));
    expect(runs).toEqual([0, 1, 2, 3]);
    expect((await manager.getSubscription('A'))?.usage).toBe(4);
  });
});

describe('processes sharing one Redis', () => {
  it('a profile registered with different rates is a drift: a logger warning and an error event naming both', async () => {
    const prefix = `drift${++prefixes}`;
    const first = managerOn(new Redis({ port: server.port }), { prefix });
    first.manager.registerProfile('p', { rate: { limit: 10, intervalMs: 1000, shared: 'gpu' } });
    await first.manager.subscribe('warm-up', 'p'); // the registration reached Redis by now
    const warnings: string[] = [];
    const logger = { info() {}, error() {}, warn: (_: unknown, msg?: string) => warnings.push(msg ?? '') };
    const second = managerOn(new Redis({ port: server.port }), { prefix, logger });
    const errors: Error[] = [];
    second.manager.on('error', (e: Error) => errors.push(e));
    const reported = new Promise((resolve) => second.manager.once('error', resolve));
    second.manager.registerProfile('p', { rate: { limit: 20, intervalMs: 1000, shared: 'gpu' } });
    await reported;
    await second.manager.subscribe('warm-up-2', 'p');
    expect(errors.length).toBeGreaterThanOrEqual(1);
    expect(errors[0]!.message).toContain('"limit":20');
    expect(errors[0]!.message).toContain('"limit":10');
    expect(warnings.join('\n')).toContain('drift');
  });

  it('a dead-lettered worker task is replayed from another process; an inline one is refused there', async () => {
    const prefix = `dlq${++prefixes}`;
    const dir = mkdtempSync(join(tmpdir(), 'taskvalve-dlq-'));
    const flag = join(dir, 'ready');
    try {
      const profile = { rate: { limit: 100, intervalMs: 1000 }, pool: { filename: new URL('./fixtures/tasks.mjs', import.meta.url), maxThreads: 1 } };
      const a = managerOn(new Redis({ port: server.port }), { prefix });
      const b = managerOn(new Redis({ port: server.port }), { prefix });
      a.manager.registerProfile('p', profile);
      b.manager.registerProfile('p', profile);
      await a.manager.subscribe('u', 'p');
      expect((await rejection(a.manager.getLimiter('u').submit({ name: 'failUnlessFile', payload: { path: flag } }))).code).toBe('TASK_FAILED');
      expect((await rejection(a.manager.getLimiter('u').submit(function localOnly() {
        throw new Error('inline failure');
      }))).code).toBe('TASK_FAILED');
      const entries = await b.manager.dlq.list();
      expect(entries.map((e) => e.error.message)).toEqual([`${flag} is missing`, 'inline failure']);
      expect(entries[0]!.task).toEqual({ name: 'failUnlessFile', payload: { path: flag } });
      expect(entries[1]!.task).toEqual({ inline: true, description: 'function localOnly' });
      writeFileSync(flag, '');
      await expect(b.manager.dlq.replay(entries[0]!.id)).resolves.toBe('file found');
      const refused = await rejection(b.manager.dlq.replay(entries[1]!.id));
      expect(refused.code).toBe('INVALID_ARGUMENT');
      expect(refused.message).toContain('localOnly');
      expect((await a.manager.dlq.list()).map((e) => e.id)).toEqual([entries[1]!.id]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('dead letters at scale', () => {
  const T = Date.UTC(2026, 5, 1);
  let now = T;

  /** A RedisStore deciding at `now` (T unless a test moves it) on the standalone server, with a second client to watch it. */
  function storeAtT(): { store: RedisStore; client: Redis; admin: Redis } {
    const client = new Redis({ port: server.port });
    const admin = new Redis({ port: server.port });
    const store = new RedisStore({ client, prefix: `r${++prefixes}` });
    now = T;
    store.setTestClock(() => now);
    open.push({ close: async () => (client.disconnect(), admin.disconnect()) });
    return { store, client, admin };
  }

  /** Commands the server has run, scripts' own included. */
  async function commands(admin: Redis): Promise<number> {
    const text = await admin.info('commandstats');
    return [...text.matchAll(/:calls=(\d+)/g)].reduce((sum, m) => sum + Number(m[1]), 0);
  }

  it('an add runs as many commands, and a list({ limit: 10 }) answers as many bytes, with 10,000 entries as with 100', async () => {
    const bounds = { maxEntries: 1_000_000, retentionMs: 3_600_000 };
    async function work(held: number): Promise<{ add: number; list: number }> {
      const { store, client, admin } = storeAtT();
      for (let i = 0; i < held; i += 500) {
        await Promise.all(Array.from({ length: Math.min(500, held - i) }, (_, k) => store.dlqAdd(deadLetter(i + k, 'a', T), bounds, T)));
      }
      const before = await commands(admin);
      await store.dlqAdd(deadLetter(held, 'a', T), bounds, T);
      const add = (await commands(admin)) - before;
      const socket = (client as unknown as { stream: { bytesRead: number } }).stream;
      const read = socket.bytesRead;
      expect(await store.dlqList({ limit: 10 }, T)).toHaveLength(10);
      return { add, list: socket.bytesRead - read };
    }
    // 9 commands per add (the INFO that reads the count included), 2,955 bytes per list.
    expect(await work(10_000)).toEqual(await work(100));
  });

  it("a list of one user's entries runs as many commands with 10,000 entries of others as with 100", async () => {
    const bounds = { maxEntries: 1_000_000, retentionMs: 3_600_000 };
    async function work(held: number): Promise<number> {
      const { store, admin } = storeAtT();
      for (let i = 0; i < held; i += 500) {
        await Promise.all(Array.from({ length: Math.min(500, held - i) }, (_, k) => store.dlqAdd(deadLetter(i + k, 'a', T), bounds, T)));
      }
      for (let k = 1; k <= 3; k++) await store.dlqAdd({ ...deadLetter(held + k, k === 2 ? 'b' : 'a', T), userId: 'few' }, bounds, T);
      const before = await commands(admin);
      expect((await store.dlqList({ userId: 'few', limit: 10 }, T)).map((e) => e.profileName)).toEqual(['a', 'b', 'a']);
      expect((await store.dlqList({ userId: 'few', profileName: 'a' }, T)).map((e) => e.userId)).toEqual(['few', 'few']);
      return (await commands(admin)) - before;
    }
    expect(await work(10_000)).toBe(await work(100));
  });

  it('entries past their retention are not returned even when more expired than one call drops', async () => {
    const { store } = storeAtT();
    now = T - 2000;
    for (let i = 0; i < 350; i++) await store.dlqAdd(deadLetter(i, 's', now), { maxEntries: 1000, retentionMs: 1000 }, now);
    now = T;
    // Each call drops 100 expired entries at most: the list and the get below still find some left.
    await store.dlqAdd(deadLetter(350, 'l', T), { maxEntries: 1000, retentionMs: 3_600_000 }, T);
    expect((await store.dlqList({}, T)).map((e) => e.profileName)).toEqual(['l']);
    expect(await store.dlqGet(deadLetter(349, 's', T).id, T)).toBeUndefined();
    expect(await store.dlqList({ profileName: 's' }, T)).toEqual([]);
  });
  it('a list walks past expired entries once: it drops them, and the next list costs what it would with none', async () => {
    async function listCommands(expired: number): Promise<number[]> {
      const { store, admin } = storeAtT();
      now = T - 2000;
      for (let i = 0; i < expired; i += 500) {
        await Promise.all(Array.from({ length: Math.min(500, expired - i) }, (_, k) => store.dlqAdd(deadLetter(i + k, 's', now), { maxEntries: 100_000, retentionMs: 1000 }, now)));
      }
      now = T;
      await store.dlqAdd(deadLetter(expired, 'l', T), { maxEntries: 1000, retentionMs: 3_600_000 }, T);
      const costs: number[] = [];
      for (let round = 0; round < 2; round++) {
        const before = await commands(admin);
        expect((await store.dlqList({ limit: 10 }, T)).map((e) => e.profileName)).toEqual(['l']);
        costs.push((await commands(admin)) - before);
      }
      return costs;
    }
    const [first, second] = await listCommands(1000);
    const [, none] = await listCommands(0);
    expect(first).toBeGreaterThan(1000);
    expect(second).toBe(none);
  });
});

describe('sharding', () => {
  it('after appending a shard, migrate() moves about 1/3 of the tenants; none is lost, none over-spends', async () => {
    const extra = await Promise.all([startRedis(), startRedis(), startRedis()]);
    try {
      const prefix = `shard${++prefixes}`;
      const two = extra.slice(0, 2).map((s) => new Redis({ port: s.port }));
      const storeTwo = new RedisStore({ client: two, prefix });
      const m2 = new Manager({ store: storeTwo });
      const profile = { rate: { limit: 100, intervalMs: 3_600_000 }, quota: { limit: 1000 } };
      m2.registerProfile('p', profile);
      const users = Array.from({ length: 300 }, (_, i) => `tenant-${i}`);
      for (const [i, u] of users.entries()) {
        await m2.subscribe(u, 'p');
        await m2.getLimiter(u).check((i % 5) + 1);
      }
      // Ended subscriptions, in the ends indexes of the two shards.
      const ended = Array.from({ length: 60 }, (_, i) => `ended-${i}`);
      for (const u of ended) await m2.subscribe(u, 'p', { durationMs: 1 });
      await m2.close();
      const three = [...two, new Redis({ port: extra[2]!.port })];
      const storeThree = new RedisStore({ client: three, prefix });
      const m3 = new Manager({ store: storeThree });
      m3.registerProfile('p', profile);
      const moved = await storeThree.migrate(two);
      // A user's subscription and own bucket are one key: about a third of 360 keys move.
      expect(moved).toBeGreaterThan(90);
      expect(moved).toBeLessThan(150);
      for (const [i, u] of users.entries()) {
        expect((await m3.getSubscription(u))?.usage).toBe((i % 5) + 1);
        // The bucket moved too: 100 - used units remain, not a fresh 100.
        expect((await m3.getLimiter(u).check(100 - ((i % 5) + 1))).allowed).toBe(true);
        expect((await m3.getLimiter(u).check(1)).allowed).toBe(false);
      }
      // Every ended subscription, moved or not, is found by the sweep on the shards as they are now.
      storeThree.setTestClock(() => Date.now() + 1000);
      const swept: string[] = [];
      for (let more = true; more; ) {
        const r = await storeThree.sweepEnded(Date.now(), 0, 1000);
        swept.push(...r.deleted.map((d) => d.userId));
        more = r.more;
      }
      expect(swept.sort()).toEqual([...ended].sort());
      await m3.close();
      for (const c of three) c.disconnect();
    } finally {
      await Promise.all(extra.map((s) => s.stop()));
    }
  });
});

describe('migrate() after a shard was appended', () => {
  const T0 = Date.UTC(2026, 5, 1);
  /** User ids whose keys move to the third shard when a third is appended to two. */
  const movers = (count: number, prefix: string): string[] => {
    const ids: string[] = [];
    for (let i = 0; ids.length < count; i++) if (rendezvous(`u:${escapeId(`${prefix}-${i}`)}`, 3) === 2) ids.push(`${prefix}-${i}`);
    return ids;
  };
  // A shared bucket that moves from the second shard to the third.
  const pool = 'pool2';

  /**
   * Two shards, and the same store with a third appended (its layout live before the migration,
   * as after a deploy), both deciding at `clock.now`; every server stopped after the test.
   */
  async function layouts(clock: { now: number }): Promise<{ prefix: string; two: Redis[]; three: Redis[]; m2: Manager; m3: Manager; after: RedisStore; stop(): Promise<void> }> {
    const servers = await Promise.all([startRedis(), startRedis(), startRedis()]);
    const two = servers.slice(0, 2).map((s) => new Redis({ port: s.port }));
    const three = [...two, new Redis({ port: servers[2]!.port })];
    const prefix = `mig${++prefixes}`;
    const make = (client: Redis[]): { manager: Manager; store: RedisStore } => {
      const store = new RedisStore({ client, prefix });
      store.setTestClock(() => clock.now);
      const manager = new Manager({ store, clock: () => clock.now });
      manager.registerProfile('p', { rate: { limit: 10, intervalMs: 3_600_000 }, quota: { limit: 1000, periodMs: 60_000 } });
      manager.registerProfile('q', { rate: { limit: 10, intervalMs: 3_600_000, shared: pool } });
      return { manager, store };
    };
    const { manager: m2 } = make(two);
    const { manager: m3, store: after } = make(three);
    return {
      prefix,
      two,
      three,
      m2,
      m3,
      after,
      async stop() {
        await Promise.all([m2.close(), m3.close()]);
        for (const c of three) c.disconnect();
        await Promise.all(servers.map((s) => s.stop()));
      },
    };
  }

  it('a tenant charged on its new shard before the migration keeps the fuller bucket and only the current period\'s usage', async () => {
    expect([rendezvous(`b:${pool}`, 2), rendezvous(`b:${pool}`, 3)]).toEqual([1, 2]);
    const clock = { now: T0 - 120_000 };
    const { two, m2, m3, after, stop } = await layouts(clock);
    try {
      const [fuller, emptier, stale, pooled] = movers(4, 'tenant') as [string, string, string, string];
      // On the two shards: `stale` used 5 units two usage periods ago; the others 7 now.
      await m2.subscribe(stale, 'p');
      expect((await m2.getLimiter(stale).check(5)).allowed).toBe(true);
      clock.now = T0;
      for (const [user, profile] of [[fuller, 'p'], [emptier, 'p'], [pooled, 'q']] as const) {
        await m2.subscribe(user, profile);
        expect((await m2.getLimiter(user).check(user === emptier ? 1 : 7)).allowed).toBe(true);
      }
      // The three-shard layout went live: the same tenants subscribe and are charged there.
      clock.now = T0 + 1000;
      for (const [user, profile, cost] of [[fuller, 'p', 2], [emptier, 'p', 6], [stale, 'p', 2], [pooled, 'q', 2]] as const) {
        await m3.subscribe(user, profile);
        expect((await m3.getLimiter(user).check(cost)).allowed).toBe(true);
      }
      expect(await after.migrate(two)).toBeGreaterThanOrEqual(5);
      // Usage of the current period is added; the earlier period's 5 units are over.
      expect.soft((await m3.getSubscription(fuller))?.usage).toBe(7 + 2);
      expect.soft((await m3.getSubscription(emptier))?.usage).toBe(1 + 6);
      expect.soft((await m3.getSubscription(stale))?.usage).toBe(2);
      // The fuller bucket stands: 7 units in use (3 left) for `fuller` and the pool, 6 for `emptier`.
      for (const [user, left] of [[fuller, 3], [pooled, 3], [emptier, 4]] as const) {
        expect.soft({ user, over: (await m3.getLimiter(user).check(left + 1)).allowed }).toEqual({ user, over: false });
        expect.soft({ user, all: (await m3.getLimiter(user).check(left)).allowed }).toEqual({ user, all: true });
      }
    } finally {
      await stop();
    }
  });

  it('a run interrupted after a key arrived on its new shard runs again without counting it twice', async () => {
    const clock = { now: T0 };
    const { prefix, two, m2, m3, after, stop } = await layouts(clock);
    try {
      const [user] = movers(1, 'again') as [string];
      await m2.subscribe(user, 'p');
      expect((await m2.getLimiter(user).check(3)).allowed).toBe(true);
      const key = `${prefix}:{u:${escapeId(user)}}`;
      const source = two[rendezvous(`u:${escapeId(user)}`, 2)]!;
      const copy = await source.dumpBuffer(key);
      await after.migrate(two);
      expect(await source.exists(key)).toBe(0);
      // As if the run had stopped before it deleted the key where it was.
      await source.restore(key, 0, copy!);
      expect((await m3.getLimiter(user).check(1)).allowed).toBe(true);
      await after.migrate(two);
      expect(await source.exists(key)).toBe(0);
      expect((await m3.getSubscription(user))?.usage).toBe(3 + 1);
    } finally {
      await stop();
    }
  });

  it('a record naming a profile this process has not registered stays where it is, and the error names it', async () => {
    const clock = { now: T0 };
    const { prefix, two, three, m2, m3, after, stop } = await layouts(clock);
    try {
      const [user] = movers(1, 'unknown') as [string];
      m2.registerProfile('r', { rate: { limit: 5, intervalMs: 1000 } });
      m3.registerProfile('r', { rate: { limit: 5, intervalMs: 1000 } });
      await m2.subscribe(user, 'r');
      await m3.subscribe(user, 'p');
      // A process that knows profile p only.
      const partial = new RedisStore({ client: three, prefix });
      partial.setTestClock(() => clock.now);
      const knowsP = new Manager({ store: partial, clock: () => clock.now });
      knowsP.registerProfile('p', { rate: { limit: 10, intervalMs: 3_600_000 }, quota: { limit: 1000, periodMs: 60_000 } });
      const error = await rejection(partial.migrate(two));
      await knowsP.close();
      expect(error.code).toBe('PROFILE_NOT_FOUND');
      expect(error.message).toContain('"r"');
      expect((await m2.getSubscription(user))?.profileName).toBe('r');
      await after.migrate(two);
      expect((await m2.getSubscription(user))).toBeUndefined();
      expect((await m3.getSubscription(user))?.profileName).toBe('p');
    } finally {
      await stop();
    }
  });
});

describe('abort', () => {
  it('a signal aborted while Redis decides: the task never runs and its charge is refunded', async () => {
    const { manager } = managerOn(new Redis({ port: server.port }));
    manager.registerProfile('p', { rate: { limit: 100, intervalMs: 1000 }, quota: { limit: 100 } });
    await manager.subscribe('u', 'p');
    const controller = new AbortController();
    let ran = false;
    const run = manager.getLimiter('u').submit(() => {
      ran = true;
    }, { signal: controller.signal });
    controller.abort(); // the admission is on its way to Redis
    expect((await rejection(run)).code).toBe('ABORTED');
    expect(ran).toBe(false);
    // The refund is sent at once but lands on its own time (after a SCRIPT FLUSH its reload can
    // let a later read pass it): wait for it, a turn of the event loop at a time.
    while ((await manager.getSubscription('u'))?.usage !== 0) await new Promise((resolve) => setImmediate(resolve));
  });
});
