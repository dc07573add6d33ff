// The RedisStore's cache of refusals (docs/redis.md, "Refusals answered locally"): a refusal a
// process remembers is answered without a round trip, and it never refuses what Redis would
// allow at that instant, with the figures Redis would give.
import fc from 'fast-check';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Manager, MemoryStore, RedisStore, type DetailedDecision, type Limiter, type ProfileConfig, type RedisClientLike } from '../src/index.js';
import { quiet, rejection } from './helpers.js';
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

/**
 * `client`, counting the admission calls a store sends through it (admissions are the calls
 * whose replies are read as binary records): a check answered with no new one came from the cache.
 */
function counting(redis: Redis): { client: RedisClientLike; admissions: () => number } {
  let admissions = 0;
  const wrapped: RedisClientLike = {
    evalsha: (sha, numkeys, ...args) => redis.evalsha(sha, numkeys, ...args),
    eval: (script, numkeys, ...args) => redis.eval(script, numkeys, ...args),
    callBuffer: (command, args) => {
      admissions++;
      return redis.callBuffer(command, args);
    },
    time: () => redis.time(),
  };
  return { client: wrapped, admissions: () => admissions };
}

/** A manager on a RedisStore over `client` (counted) on a fresh prefix, deciding at `clock()`. */
function onRedis(clock: () => number): { manager: Manager; admissions: () => number } {
  const counted = counting(client);
  const store = new RedisStore({ client: counted.client, prefix: `c${++prefixes}` });
  store.setTestClock(clock);
  return { manager: new Manager({ clock, store }), admissions: counted.admissions };
}

describe('the cache of refusals', () => {
  const logInt = (min: number, max: number): fc.Arbitrary<number> =>
    fc.double({ min: Math.log(min), max: Math.log(max + 1), noNaN: true }).map((x) => Math.min(max, Math.max(min, Math.floor(Math.exp(x)))));

  // Units every 10 µs to every minute, bursts up to 20; time moves by whole µs, often by less
  // than a millisecond, so checks land anywhere in the millisecond a refusal's retry is rounded to.
  const scenario = fc
    .record({ intervalMs: logInt(1, 60_000), perMs: fc.double({ min: Math.log(1 / 60_000), max: Math.log(100), noNaN: true }), burst: logInt(1, 20) })
    .map(({ intervalMs, perMs, burst }) => ({ intervalMs, burst, limit: Math.max(1, Math.min(intervalMs * 100, Math.round(Math.exp(perMs) * intervalMs))) }))
    .chain((rate) => {
      const unitUs = Math.ceil((rate.intervalMs * 1000) / rate.limit);
      const dtUs = fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 1500 }), logInt(1, 2 * unitUs * rate.burst));
      const cost = fc.oneof(fc.constant(1), fc.integer({ min: 1, max: rate.burst }));
      return fc.record({ rate: fc.constant(rate), steps: fc.array(fc.record({ dtUs, cost }), { minLength: 1, maxLength: 30 }) });
    });

  it('on random rates, costs and times to the µs, refuses only what Redis would refuse at that instant', async () => {
    let fromCache = 0;
    await fc.assert(
      fc.asyncProperty(scenario, async ({ rate, steps }) => {
        let atUs = 0;
        const { manager, admissions } = onRedis(() => T0 + atUs / 1000);
        manager.registerProfile('p', { rate: { ...rate, onLimit: 'reject' } });
        await manager.subscribe('u', 'p');
        // Redis decides as this exact model does (test/redis-state.test.ts holds it to that).
        const model = new ModelBucket(BigInt(rate.limit), BigInt(rate.intervalMs) * 1000n, BigInt(rate.burst));
        try {
          for (const { dtUs, cost } of steps) {
            atUs += dtUs;
            const before = admissions();
            const decision = await manager.getLimiter('u').check(cost);
            expect({ atUs, cost, allowed: decision.allowed }).toEqual({ atUs, cost, allowed: model.takeUs(atUs, cost) });
            if (!decision.allowed && admissions() === before) fromCache++;
          }
        } finally {
          await manager.close();
        }
      }),
      { numRuns: 150 },
    );
    // The cache answered many of the refusals above: the property is about it.
    expect(fromCache).toBeGreaterThan(100);
  }, 120_000);

  it('a larger cost refused from the cache is told when that cost conforms, as Redis tells it', async () => {
    const clock = (): number => T0;
    const prefix = `c${++prefixes}`;
    const counted = counting(client);
    const store = new RedisStore({ client: counted.client, prefix });
    store.setTestClock(clock);
    const manager = new Manager({ clock, store });
    // Redis's own answer: a second store on the same keys, whose cache has seen nothing.
    const oracleStore = new RedisStore({ client, prefix });
    oracleStore.setTestClock(clock);
    const oracle = new Manager({ clock, store: oracleStore });
    try {
      for (const m of [manager, oracle]) m.registerProfile('p', { rate: { limit: 10, intervalMs: 1000, onLimit: 'reject' } });
      await manager.subscribe('u', 'p');
      const u = manager.getLimiter('u');
      expect((await u.check(10)).allowed).toBe(true);
      const one = await u.check(1);
      expect(one.allowed).toBe(false);
      const before = counted.admissions();
      const ten = await u.check(10);
      expect(counted.admissions()).toBe(before); // answered from the cache
      const told = await oracle.getLimiter('u').check(10);
      expect(told.allowed).toBe(false);
      expect(told.retryAfterMs).toBeGreaterThan(one.retryAfterMs);
      // Never later than Redis (the cache is measured from when the refused call was sent), at most 1 ms earlier.
      expect(ten.retryAfterMs).toBeLessThanOrEqual(told.retryAfterMs);
      expect(ten.retryAfterMs).toBeGreaterThanOrEqual(told.retryAfterMs - 1);
    } finally {
      await manager.close();
      await oracle.close();
    }
  });

  it('a refusal that counted tasks waiting for their turn does not outlive them', async () => {
    let now = T0;
    const { manager } = onRedis(() => now);
    manager.registerProfile('p', { rate: { limit: 1, intervalMs: 1000, onLimit: 'wait', maxWaitMs: 60_000 } });
    await manager.subscribe('u', 'p');
    const u = manager.getLimiter('u');
    try {
      expect((await u.check()).allowed).toBe(true);
      const inLine = new Promise<void>((resolve) => manager.on('task', (e: { to: string }) => e.to === 'WAITING_RATE' && resolve()));
      const controller = new AbortController();
      const task = quiet(u.submit(() => 'ran', { signal: controller.signal }));
      await inLine;
      // Redis counts the waiting task's unit ahead of this check: 2 s.
      expect(await u.check()).toMatchObject({ allowed: false, retryAfterMs: 2000 });
      controller.abort();
      expect((await rejection(task)).code).toBe('ABORTED');
      // A second on, the bucket alone has room again, and nobody waits.
      now += 1000;
      expect((await u.check()).allowed).toBe(true);
    } finally {
      await manager.close();
    }
  });

  it("a user's subscription change forgets that user's refusals, and only theirs", async () => {
    const now = T0;
    const { manager, admissions } = onRedis(() => now);
    manager.registerProfile('slow', { rate: { limit: 1, intervalMs: 3_600_000 }, quota: { limit: 100 } });
    manager.registerProfile('fast', { rate: { limit: 1000, intervalMs: 1000 } });
    try {
      for (const user of ['a', 'b']) {
        await manager.subscribe(user, 'slow');
        expect((await manager.getLimiter(user).check()).allowed).toBe(true);
        expect((await manager.getLimiter(user).check()).allowed).toBe(false);
      }
      const asked = async (user: string): Promise<{ allowed: boolean; quotaLimit: number | null; asked: boolean }> => {
        const before = admissions();
        const d = (await manager.getLimiter(user).checkDetailed()) as DetailedDecision;
        return { allowed: d.allowed, quotaLimit: d.quotaLimit, asked: admissions() > before };
      };
      expect(await asked('b')).toEqual({ allowed: false, quotaLimit: 100, asked: false });
      // 'a' gets a quota of its own: its refusal is asked again, and tells the new quota.
      await manager.updateSubscriptionQuota('a', 5);
      expect(await asked('a')).toEqual({ allowed: false, quotaLimit: 5, asked: true });
      // 'b' is still refused from memory.
      expect(await asked('b')).toEqual({ allowed: false, quotaLimit: 100, asked: false });
      // Subscribed again, on the same profile, with another quota: asked again.
      await manager.subscribe('a', 'slow', { quota: 7 });
      expect(await asked('a')).toEqual({ allowed: false, quotaLimit: 7, asked: true });
      // 'a' moves to a fast profile: allowed at once.
      await manager.subscribe('a', 'fast');
      expect(await asked('a')).toEqual({ allowed: true, quotaLimit: null, asked: true });
      expect(await asked('b')).toEqual({ allowed: false, quotaLimit: 100, asked: false });
    } finally {
      await manager.close();
    }
  });

  /** 'crowd' (a shared bucket of one unit an hour) and 'fast' (a bucket of the user's own), on `manager`. */
  const crowdAndFast = (manager: Manager): void => {
    manager.registerProfile('crowd', { rate: { limit: 1, intervalMs: 3_600_000, shared: 'crowd' } });
    manager.registerProfile('fast', { rate: { limit: 1000, intervalMs: 1000 } });
  };
  /** User 'a' on 'crowd', its bucket spent: its handle, refused once. */
  const spentOnCrowd = async (manager: Manager): Promise<Limiter> => {
    await manager.subscribe('a', 'crowd');
    const a = manager.getLimiter('a');
    expect((await a.check()).allowed).toBe(true);
    expect((await a.check()).allowed).toBe(false);
    return a;
  };

  it("a user subscribed again to another profile is not refused from the shared bucket it left (the handle reads the profile again)", async () => {
    const now = T0;
    const { manager, admissions } = onRedis(() => now);
    crowdAndFast(manager);
    try {
      const a = await spentOnCrowd(manager);
      // The shared bucket's refusal is remembered: asked from memory.
      let before = admissions();
      expect((await a.check()).allowed).toBe(false);
      expect(admissions()).toBe(before);
      // Subscribed again, to a profile with a bucket of its own: the same handle asks Redis, and is allowed.
      await manager.subscribe('a', 'fast');
      before = admissions();
      expect((await a.check()).allowed).toBe(true);
      expect(admissions()).toBe(before + 1);
      // Subscribing a new user, or the same user to the same profile again, leaves the handle as it was.
      await manager.subscribe('new-user', 'crowd');
      await manager.subscribe('a', 'fast');
      expect((await a.check()).allowed).toBe(true);
    } finally {
      await manager.close();
    }
  });

  it('a user deleted by another process and subscribed here to another profile is not refused from the bucket it left', async () => {
    const now = T0;
    const { manager, admissions } = onRedis(() => now);
    // Another process on the same keys.
    const otherStore = new RedisStore({ client, prefix: `c${prefixes}` });
    otherStore.setTestClock(() => now);
    const other = new Manager({ clock: () => now, store: otherStore });
    crowdAndFast(manager);
    crowdAndFast(other);
    try {
      const a = await spentOnCrowd(manager);
      await other.deleteSubscription('a');
      // A new record here: this process's handle still knew 'crowd' and its remembered refusal.
      await manager.subscribe('a', 'fast');
      const before = admissions();
      expect((await a.check()).allowed).toBe(true);
      expect(admissions()).toBe(before + 1);
    } finally {
      await other.close();
      await manager.close();
    }
  });

  for (const shared of [false, true]) {
    it(`answers with the user's own quota in force and the time left in its period (${shared ? 'a shared bucket' : 'own buckets'})`, async () => {
      let now = T0;
      const profile: ProfileConfig = { rate: { limit: 1, intervalMs: 3_600_000, ...(shared ? { shared: 'pool' } : {}) }, quota: { limit: 100, periodMs: 60_000 } };
      const { manager: redis, admissions } = onRedis(() => now);
      const memory = new Manager({ clock: () => now, store: new MemoryStore() });
      const users = ['a', 'b'];
      for (const m of [redis, memory]) {
        m.registerProfile('p', profile);
        for (const user of users) await m.subscribe(user, 'p');
        await m.updateSubscriptionQuota('a', 50);
        for (const user of users) await m.getLimiter(user).check();
      }
      /** Each user's refusal on both stores at this instant; `cached`: whether Redis was asked. */
      const round = async (): Promise<{ cached: boolean[] }> => {
        const cached: boolean[] = [];
        for (const user of users) {
          const before = admissions();
          const r = (await redis.getLimiter(user).checkDetailed()) as DetailedDecision;
          cached.push(admissions() === before);
          const m = (await memory.getLimiter(user).checkDetailed()) as DetailedDecision;
          const figures = (d: DetailedDecision) => ({ user, allowed: d.allowed, limit: d.limit, profile: d.profile, usage: d.usage, quotaLimit: d.quotaLimit, quotaResetAfterMs: d.quotaResetAfterMs });
          expect(figures(r)).toEqual(figures(m));
          expect(r.retryAfterMs).toBeLessThanOrEqual(m.retryAfterMs);
        }
        return { cached };
      };
      try {
        now += 1000;
        await round();
        now += 1000;
        // Both users' refusals are known now: neither asks Redis, and each gets its own figures.
        expect(await round()).toEqual({ cached: [true, true] });
        // The usage period ended: its usage is gone, which Redis tells.
        now = T0 + 60_000 + 1;
        await round();
      } finally {
        await Promise.all([redis.close(), memory.close()]);
      }
    });
  }
});
