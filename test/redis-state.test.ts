// State kept in Redis reads back exactly: every number a script writes (a bucket's TAT, a
// user's record) comes back as it was written, across the whole range the profile validation
// allows, so the RedisStore decides as the MemoryStore and an exact model do. And a user's
// record of a layout version this code does not know is an error, never a wrong answer.
import fc from 'fast-check';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Manager, MemoryStore, RedisStore, type Decision, type ProfileConfig } from '../src/index.js';
import { eventually, rejection } from './helpers.js';
import { ModelBucket } from './support/model-bucket.js';
import { startRedis, type RedisServer } from './support/redis.js';

let server: RedisServer;
let client: Redis;
let prefixes = 0;

beforeAll(async () => {
  server = await startRedis();
  client = new Redis({ port: server.port });
}, 60_000);

afterAll(async () => {
  client?.disconnect();
  await server?.stop();
});

const T0 = Date.UTC(2026, 5, 1);

/** One profile on a MemoryStore and on a RedisStore, both deciding at the clock `at()` (ms). */
async function pair(profile: ProfileConfig, at: () => number): Promise<{ memory: Manager; redis: Manager; close(): Promise<void> }> {
  const prefix = `s${++prefixes}`;
  const store = new RedisStore({ client, prefix });
  store.setTestClock(at);
  const memory = new Manager({ clock: at, store: new MemoryStore() });
  const redis = new Manager({ clock: at, store });
  for (const m of [memory, redis]) {
    m.registerProfile('p', profile);
    await m.subscribe('u', 'p');
  }
  return {
    memory,
    redis,
    async close() {
      await Promise.all([memory.close(), redis.close()]);
    },
  };
}

describe('numbers read back exactly', () => {
  // About 770,000 units a second, counted per 30 days: d = 2,000,000,000,003 ticks per µs, so
  // a bucket 200 units deep holds its TAT's sub-millisecond part as more than 10^14 ticks.
  const monthly = { limit: 2_000_000_000_003, intervalMs: 30 * 86_400_000, burst: 400, onLimit: 'reject' as const };

  for (const shared of [true, false]) {
    it(`a ${shared ? 'shared' : "user's own"} bucket holding more than 10^14 ticks admits no more than its burst`, async () => {
      const now = T0;
      const { memory, redis, close } = await pair({ rate: { ...monthly, ...(shared ? { shared: 'month' } : {}) } }, () => now);
      try {
        const steps = [200, 200, 1, 200];
        const onRedis: Decision[] = [];
        const inMemory: Decision[] = [];
        for (const cost of steps) {
          onRedis.push(await redis.getLimiter('u').check(cost));
          inMemory.push(await memory.getLimiter('u').check(cost));
        }
        expect(onRedis.map((d) => d.allowed)).toEqual([true, true, false, false]);
        expect(onRedis).toEqual(inMemory);
        expect((await redis.getLimiter('u').peek()).remaining).toBe(0);
      } finally {
        await close();
      }
    });
  }

  it('a rate of 10^14 ticks per µs decided mid-millisecond admits its whole burst, and no more', async () => {
    // Just under a million units a second over a 3-year interval: d = 99,999,999,999,999. A TAT
    // counted in ms would carry up to 999 x d leftover ticks, past what a double holds exactly.
    const rate = { limit: 99_999_999_999_999, intervalMs: 100_000_000_000, burst: 11, onLimit: 'reject' as const };
    for (const eighths of [3, 7]) {
      let now = T0 + eighths / 8;
      const { memory, redis, close } = await pair({ rate }, () => now);
      try {
        for (const m of [redis, memory]) {
          const allowed: boolean[] = [];
          for (let i = 0; i < 12; i++) allowed.push((await m.getLimiter('u').check(1)).allowed);
          expect(allowed).toEqual([...Array.from({ length: 11 }, () => true), false]);
        }
        expect(await redis.getLimiter('u').peek()).toEqual(await memory.getLimiter('u').peek());
        now += 1; // 1,000 units' worth: full again
        expect(await redis.getLimiter('u').check(11)).toEqual(await memory.getLimiter('u').check(11));
      } finally {
        await close();
      }
    }
  });

  it('subscription dates given as ms with a fraction come back as on the MemoryStore', async () => {
    const now = T0;
    const { memory, redis, close } = await pair({ rate: { limit: 10, intervalMs: 1000 } }, () => now);
    try {
      for (const [startsAt, endsAt] of [[T0 - 1000 + 0.96875, T0 + 5000.96875], [-86_400_000.75, 2e15 + 0.75]] as const) {
        const onRedis = await redis.subscribe('f', 'p', { startsAt, endsAt });
        expect(onRedis).toEqual(await memory.subscribe('f', 'p', { startsAt, endsAt }));
        expect(await redis.getSubscription('f')).toEqual(await memory.getSubscription('f'));
      }
    } finally {
      await close();
    }
  });

  // Random valid profiles over the whole validated range (intervals up to centuries, up to a
  // million units a second, bursts up to burst x T = 2^50 ticks), random costs and times.
  const logInt = (min: number, max: number): fc.Arbitrary<number> =>
    fc.double({ min: Math.log(min), max: Math.log(max + 1), noNaN: true }).map((x) => Math.min(max, Math.max(min, Math.floor(Math.exp(x)))));
  const gcd = (a: number, b: number): number => (b === 0 ? a : gcd(b, a % b));
  /** Largest burst x T (ticks) the validation allows. */
  const MAX_TAU = 2 ** 50;

  // Half of the rates are long intervals with limits near the most allowed (up to a million units
  // a second): the largest d, ticks per µs.
  const rates = fc
    .oneof(logInt(1, 9e12), logInt(1e8, 9e12)) // intervalMs: intervalMs * 1000 µs stays an exact integer
    .chain((intervalMs) => fc.record({ intervalMs: fc.constant(intervalMs), limit: fc.oneof(logInt(1, intervalMs * 1000), logInt(Math.max(1, intervalMs * 100), intervalMs * 1000)) }))
    .map(({ intervalMs, limit }) => ({ intervalMs, limit, T: (intervalMs * 1000) / gcd(intervalMs * 1000, limit) }))
    .filter(({ T }) => T <= MAX_TAU)
    .chain(({ intervalMs, limit, T }) => fc.record({ intervalMs: fc.constant(intervalMs), limit: fc.constant(limit), burst: logInt(1, Math.floor(MAX_TAU / T)) }));

  const scenario = rates.chain((rate) => {
    // Time for the bucket to refill entirely, in ms; steps move time by up to half again that.
    const fullMs = Math.ceil((rate.burst * rate.intervalMs) / rate.limit);
    const dt = fc.oneof(fc.constant(0), logInt(1, Math.min(2e11, Math.max(1, Math.ceil(fullMs * 1.5)))));
    // Costs that fill the bucket exactly (alone, or two or three at one instant) reach its edge.
    const cost = fc.oneof(logInt(1, rate.burst), ...[1, 2, 3].map((k) => fc.constant(Math.max(1, Math.floor(rate.burst / k)))));
    return fc.record({
      // Redis decides on µs: the start lies anywhere in a millisecond (in steps of 125 µs, which
      // keep the clock's ms exact in a double), the steps move whole ms.
      start: fc.integer({ min: 0, max: 7 }).map((eighths) => T0 + eighths / 8),
      rate: fc.constant(rate),
      shared: fc.boolean(),
      quota: fc.option(fc.record({ limit: logInt(1, Number.MAX_SAFE_INTEGER), periodMs: logInt(1, 1e13) }), { nil: undefined }),
      steps: fc.array(fc.record({ dt, cost, op: fc.constantFrom('check', 'check', 'peek', 'three at once') }), { minLength: 1, maxLength: 24 }),
    });
  });

  it('on random valid profiles, costs and times, the RedisStore decides as the MemoryStore and the exact model', async () => {
    await fc.assert(
      fc.asyncProperty(scenario, async ({ start, rate, shared, quota, steps }) => {
        let now = start;
        const profile: ProfileConfig = {
          rate: { ...rate, onLimit: 'reject', ...(shared ? { shared: 'pool' } : {}) },
          ...(quota === undefined ? {} : { quota: { ...quota, kind: 'soft' as const } }),
        };
        const { memory, redis, close } = await pair(profile, () => now);
        const model = new ModelBucket(BigInt(rate.limit), BigInt(rate.intervalMs) * 1000n, BigInt(rate.burst));
        try {
          for (const step of steps) {
            now += step.dt;
            const at = now - start;
            if (step.op === 'peek') {
              expect(await redis.getLimiter('u').peek()).toEqual(await memory.getLimiter('u').peek());
              continue;
            }
            const n = step.op === 'check' ? 1 : 3;
            const onRedis = await Promise.all(Array.from({ length: n }, () => redis.getLimiter('u').check(step.cost)));
            const inMemory = await Promise.all(Array.from({ length: n }, () => memory.getLimiter('u').check(step.cost)));
            for (let i = 0; i < n; i++) {
              const r = onRedis[i] as Decision;
              const m = inMemory[i] as Decision;
              expect(r.allowed).toBe(model.take(at, step.cost));
              if (r.allowed) {
                expect(r).toEqual(m);
              } else {
                // A refusal may come from the cache of refusals, which tells an earlier refusal's
                // figures less the time since (docs/redis.md): never a later retry or reset.
                expect(r.limit).toBe(m.limit);
                expect(r.retryAfterMs).toBeGreaterThanOrEqual(1);
                expect(r.retryAfterMs).toBeLessThanOrEqual(m.retryAfterMs);
                expect(r.resetAfterMs).toBeLessThanOrEqual(m.resetAfterMs);
              }
            }
          }
          expect((await redis.getSubscription('u'))?.usage).toBe((await memory.getSubscription('u'))?.usage);
        } finally {
          await close();
        }
      }),
      { numRuns: 120 },
    );
  }, 120_000);
});

describe("a user's record of another layout version", () => {
  /**
   * A manager on a fresh prefix with users u, v, w subscribed; after `before`, u's record is
   * rewritten with a raw SET with layout version `version`.
   */
  async function tampered(version: number, before?: (manager: Manager, clock: { now: number }) => Promise<void>): Promise<{ manager: Manager; store: RedisStore; key: string; record: Buffer }> {
    const clock = { now: T0 };
    const prefix = `s${++prefixes}`;
    const store = new RedisStore({ client, prefix });
    store.setTestClock(() => clock.now);
    // Fail-open: were the error taken for an outage, the calls below would be admitted.
    const manager = new Manager({ clock: () => clock.now, store, onStoreUnavailable: 'fail-open' });
    manager.registerProfile('p', { rate: { limit: 10, intervalMs: 1000 }, quota: { limit: 100 } });
    manager.registerProfile('q', { rate: { limit: 5, intervalMs: 1000 } });
    for (const user of ['u', 'v', 'w']) await manager.subscribe(user, 'p');
    // Admissions learn u's profile first, as in a process that has seen u before.
    expect((await manager.getLimiter('u').check()).allowed).toBe(true);
    await before?.(manager, clock);
    const key = `${prefix}:{u:u}`;
    const written = await client.getBuffer(key);
    expect(written?.[0]).toBe(2); // the layout's version comes first (docs/redis.md)
    const record = Buffer.from(written as Buffer);
    record[0] = version;
    await client.set(key, record);
    return { manager, store, key, record };
  }

  it('fails every call on that user with INVALID_CONFIG naming the version, and is left as it was', async () => {
    const { manager, key, record } = await tampered(3);
    const u = manager.getLimiter('u');
    const calls: Record<string, () => Promise<unknown>> = {
      check: () => u.check(),
      checkDetailed: () => u.checkDetailed(3),
      peek: () => u.peek(),
      submit: () => u.submit(() => 'ran'),
      getSubscription: () => manager.getSubscription('u'),
      subscribe: () => manager.subscribe('u', 'p', { resetUsage: true }),
      extendSubscription: () => manager.extendSubscription('u', 60_000),
      cancelSubscription: () => manager.cancelSubscription('u'),
      changeProfile: () => manager.changeProfile('u', 'q'),
      resetUsage: () => manager.resetUsage('u'),
      updateSubscriptionQuota: () => manager.updateSubscriptionQuota('u', 5),
      deleteSubscription: () => manager.deleteSubscription('u'),
    };
    try {
      for (const [name, call] of Object.entries(calls)) {
        const error = await rejection(call());
        expect({ name, code: error.code }).toEqual({ name, code: 'INVALID_CONFIG' });
        expect(error.message).toContain(`the record ${key} in Redis has layout version 3, and this version of taskvalve reads version 2`);
      }
      expect(await client.getBuffer(key)).toEqual(record);
    } finally {
      await manager.close();
    }
  });

  it('reads a record of the layout before (version 1, without its bucket\'s refund log) as ever, and writes it back as version 2', async () => {
    const clock = { now: T0 };
    const prefix = `s${++prefixes}`;
    const store = new RedisStore({ client, prefix });
    store.setTestClock(() => clock.now);
    const manager = new Manager({ clock: () => clock.now, store });
    manager.registerProfile('p', { rate: { limit: 10, intervalMs: 1000 }, quota: { limit: 100 } });
    await manager.subscribe('u', 'p');
    const u = manager.getLimiter('u');
    try {
      for (let i = 0; i < 3; i++) expect((await u.check()).allowed).toBe(true);
      const key = `${prefix}:{u:u}`;
      const written = (await client.getBuffer(key)) as Buffer;
      // Version 2 ends with the log, a length-prefixed string, empty here: version 1 is the rest.
      expect(written.readUInt32LE(written.length - 4)).toBe(0);
      const old = Buffer.from(written.subarray(0, written.length - 4));
      old[0] = 1;
      await client.set(key, old);
      expect(await manager.getSubscription('u')).toMatchObject({ status: 'active', usage: 3 });
      expect((await u.peek()).remaining).toBe(7);
      for (let i = 0; i < 7; i++) expect((await u.check()).allowed).toBe(true);
      expect((await u.check()).allowed).toBe(false);
      expect((await manager.getSubscription('u'))?.usage).toBe(10);
      expect((await client.getBuffer(key))?.[0]).toBe(2);
    } finally {
      await manager.close();
    }
  });

  it('fails only its own decision in a batch: other users are answered and charged as ever', async () => {
    const { manager } = await tampered(0);
    try {
      const v = manager.getLimiter('v');
      const w = manager.getLimiter('w');
      // The first two go at once; the rest wait for them and travel in one call together.
      const answers = await Promise.allSettled([v.check(), w.check(), v.check(2), manager.getLimiter('u').check(), w.check(3)]);
      expect(answers.map((a) => (a.status === 'fulfilled' ? (a.value as Decision).allowed : (a.reason as { code: string }).code))).toEqual([true, true, true, 'INVALID_CONFIG', true]);
      expect((await manager.getSubscription('v'))?.usage).toBe(3);
      expect((await manager.getSubscription('w'))?.usage).toBe(4);
    } finally {
      await manager.close();
    }
  });

  it('fails a sweep of ended subscriptions that meets it, before it deletes anything', async () => {
    // v ends first, then u: the sweep meets v's record before u's.
    const { manager, store } = await tampered(7, async (m, clock) => {
      await m.cancelSubscription('v');
      clock.now += 1;
      await m.cancelSubscription('u');
      clock.now += 1;
    });
    try {
      const error = await rejection(Promise.resolve(store.sweepEnded(T0 + 2, 0, 100)));
      expect(error.code).toBe('INVALID_CONFIG');
      expect(error.message).toContain('has layout version 7');
      expect(await manager.getSubscription('v')).toMatchObject({ status: 'canceled' });
    } finally {
      await manager.close();
    }
  });
});

describe("a bucket's refund log", () => {
  it('is dropped to its header once no charge can need it: a shared bucket given back 40 charges goes back to a short text', async () => {
    const clock = { now: T0 };
    const prefix = `s${++prefixes}`;
    const store = new RedisStore({ client, prefix });
    store.setTestClock(() => clock.now);
    const manager = new Manager({ clock: () => clock.now, store });
    // 1 unit per second, room for 50 (its burst tolerance: 50 s).
    manager.registerProfile('p', { rate: { limit: 1, intervalMs: 1000, burst: 50, shared: 'pipe' }, pool: { perUserConcurrency: 1 } });
    await manager.subscribe('u', 'p');
    const u = manager.getLimiter('u');
    const key = `${prefix}:{b:pipe}`;
    let release!: () => void;
    const blocker = u.submit(() => new Promise<void>((done) => (release = done)));
    try {
      const aborts = Array.from({ length: 40 }, () => new AbortController());
      const queued = new Promise<void>((resolve) => {
        let n = 0;
        manager.on('task', (e) => e.to === 'QUEUED' && ++n === 41 && resolve());
      });
      const tasks = aborts.map((a) => u.submit(() => 1, { signal: a.signal }).catch(() => undefined));
      await queued;
      // Given back one at a time: 40 refunds, the log folds all but the last 32.
      for (let i = 0; i < 40; i++) {
        aborts[i]!.abort();
        await tasks[i];
        await eventually(async () => (await u.peek()).remaining === 50 - 40 + i, `refund ${i + 1} landed`);
      }
      const long = (await client.getBuffer(key)) as Buffer;
      expect(long.length).toBeGreaterThan(1000);
      // Past the burst tolerance no charge from before can need the log: the next write keeps its header only.
      clock.now += 51_000;
      expect((await u.check()).allowed).toBe(true);
      const short = (await client.getBuffer(key)) as Buffer;
      expect(short.length).toBeLessThan(120);
      // And refunds go on working: a task charged now and given back returns its unit.
      const late = new AbortController();
      const queuedLate = new Promise<void>((resolve) => manager.on('task', (e) => e.id === 'late' && e.to === 'QUEUED' && resolve()));
      const task = u.submit(() => 1, { signal: late.signal, taskId: 'late' }).catch(() => undefined);
      await queuedLate;
      const before = (await u.peek()).remaining;
      late.abort();
      await task;
      await eventually(async () => (await u.peek()).remaining === before + 1, 'the late refund landed');
    } finally {
      release();
      await blocker;
      await manager.close();
    }
  });
});
