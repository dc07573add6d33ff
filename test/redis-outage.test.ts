// Redis goes away mid-load and comes back: each outage policy behaves as stated, the process
// stays up, service resumes by itself, and no subscription or charged usage is lost. The server
// runs append-only with fsync always, as docs/redis.md tells production users to run it.
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Manager, RedisStore, TaskvalveError } from '../src/index.js';
import { eventually } from './helpers.js';
import { startFaultProxy } from './support/fault-proxy.js';
import { startRedis, type RedisServer } from './support/redis.js';

let server: RedisServer;

beforeAll(async () => {
  server = await startRedis({ appendonly: true });
});

afterAll(async () => {
  await server?.stop();
});

type Policy = 'fail-closed' | 'fail-open' | 'local';

function setup(policy: Policy): { manager: Manager; store: RedisStore; client: Redis } {
  const client = new Redis({ port: server.port, maxRetriesPerRequest: null, retryStrategy: () => 20 });
  client.on('error', () => {}); // connection errors are expected here: the server is killed
  const store = new RedisStore({ client, prefix: 'outage', timeoutMs: 300 });
  const manager = new Manager({ store, onStoreUnavailable: policy });
  // Three processes' worth of limits: every manager shares one bucket config. (A soft quota:
  // under 'local' a hard one fails closed; test/redis-outage-policies.test.ts.)
  manager.registerProfile('p', { rate: { limit: 30, intervalMs: 3_600_000 }, quota: { limit: 1000, kind: 'soft' } });
  return { manager, store, client };
}

describe('Redis killed mid-load and restarted', () => {
  it('fail-closed rejects, fail-open admits, local decides on its share; all resume; no usage lost', async () => {
    const all = (['fail-closed', 'fail-open', 'local'] as const).map((policy) => ({ policy, ...setup(policy) }));
    const [closed, open, local] = all as [(typeof all)[0], (typeof all)[0], (typeof all)[0]];
    for (const s of all) await s.manager.subscribe(s.policy, 'p');
    await closed.manager.subscribe('probe', 'p'); // a bucket the load never empties
    // Every process counts itself among the live ones: 3, so 'local' holds a third of each rate.
    for (const s of all) await s.store.refreshPresence();
    expect(await local.store.refreshPresence()).toBe(3);

    // Load on the fail-closed manager while the server dies and returns.
    let admitted = 0;
    let failed = 0;
    let stop = false;
    const errors = new Set<string>();
    const load = (async () => {
      while (!stop) {
        // Refusals the process remembers answer without I/O: yield a turn so the loop never starves the rest.
        await new Promise((resolve) => setImmediate(resolve));
        const results = await Promise.allSettled(Array.from({ length: 5 }, () => closed.manager.getLimiter('fail-closed').check(1)));
        for (const r of results) {
          if (r.status === 'fulfilled') admitted += r.value.allowed ? 1 : 0;
          else {
            failed++;
            errors.add((r.reason as TaskvalveError).code);
          }
        }
      }
    })();
    for (const s of all) expect((await s.manager.getLimiter(s.policy).check(2)).allowed).toBe(true);

    await server.kill();
    // (A bucket the load emptied may still answer from this process's cache of refusals: that is
    // a refusal too. A bucket with room needs Redis, and fails closed.)
    expect((await closed.manager.getLimiter('probe').check(1).catch((e: TaskvalveError) => e.code))).toBe('STORE_UNAVAILABLE');
    // fail-open admits without charging anything.
    const opened = await Promise.all(Array.from({ length: 40 }, () => open.manager.getLimiter('fail-open').check(1)));
    expect(opened.every((d) => d.allowed)).toBe(true);
    // local: this process's share of the bucket starts empty and refills 30 / 3 = 10 an hour:
    // every check is decided (refused), none fails.
    const local1 = await Promise.all(Array.from({ length: 15 }, () => local.manager.getLimiter('local').check(1)));
    expect(local1.filter((d) => d.allowed)).toHaveLength(0);
    // Subscriptions cannot change without Redis: that is an error, not a guess.
    expect((await local.manager.subscribe('new', 'p').catch((e: TaskvalveError) => e.code))).toBe('STORE_UNAVAILABLE');

    await server.restart();
    for (const s of all) await s.client.ping();
    stop = true;
    await load;
    expect([...errors]).toEqual(errors.size === 0 ? [] : ['STORE_UNAVAILABLE']);

    // Service resumed by itself.
    const last = await closed.manager.getLimiter('fail-closed').check(1);
    if (last.allowed) admitted++;
    for (const s of [open, local]) expect((await s.manager.getLimiter(s.policy).check(1)).allowed).toBe(true);
    await local.manager.close();
    await open.manager.close();
    await closed.manager.close();
    const reader = setup('fail-closed');
    const usage = async (user: string) => (await reader.manager.getSubscription(user))!.usage;
    // fail-closed: exactly the admitted checks are charged; a call whose caller was told it failed
    // is not (it was refused by its deadline, never sent, or taken back once Redis was back).
    expect(failed).toBeGreaterThan(0);
    expect(await usage('fail-closed')).toBe(2 + admitted);
    // fail-open charged nothing while Redis was away.
    expect(await usage('fail-open')).toBe(2 + 1);
    // local: nothing was admitted during the outage, nothing more charged.
    expect(await usage('local')).toBe(2 + 1);
    expect(await reader.manager.getSubscription('new')).toBeUndefined();
    await reader.manager.close();
    for (const s of [...all, reader]) s.client.disconnect();
  });
});

describe('presence', () => {
  it('a process that registered its profiles while Redis was unreachable joins the live processes, and records its configuration, once Redis is reachable', async () => {
    const proxy = await startFaultProxy({ port: server.port });
    proxy.refuse();
    // Without the offline queue, a call made while the connection is down fails at once and is
    // never sent later (the queue would replay the first registration by itself).
    const late = new Redis({ port: proxy.port, enableOfflineQueue: false });
    late.on('error', () => {}); // refused connections, until the proxy heals
    const other = new Redis({ port: server.port });
    const lateStore = new RedisStore({ client: late, prefix: 'presence', timeoutMs: 300 });
    const otherStore = new RedisStore({ client: other, prefix: 'presence' });
    const warnings: string[] = [];
    const faults: unknown[] = [];
    const logger = { info() {}, error: (o: unknown) => void faults.push(o), warn: (_: unknown, message?: string) => void warnings.push(message ?? '') };
    const lateManager = new Manager({ store: lateStore, onStoreUnavailable: 'local', logger });
    const otherManager = new Manager({ store: otherStore });
    try {
      otherManager.registerProfile('p', { rate: { limit: 30, intervalMs: 1000 } });
      // Registered while Redis cannot be reached, with another rate than the process above.
      lateManager.registerProfile('p', { rate: { limit: 60, intervalMs: 1000 } });
      // Its call to record the profile failed (timed out), and was reported.
      await eventually(async () => faults.length > 0, 'the failed registration reported');
      expect(await otherStore.refreshPresence()).toBe(1);
      proxy.heal();
      await eventually(async () => (await otherStore.refreshPresence()) === 2, 'the late process counted among the live ones');
      await eventually(async () => warnings.some((w) => w.includes('configuration drift on profile p')), 'the late process warned of the drift');
    } finally {
      await Promise.all([lateManager.close(), otherManager.close()]);
      late.disconnect();
      other.disconnect();
      await proxy.close();
    }
  });
});
