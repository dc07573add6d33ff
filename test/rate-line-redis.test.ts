// The rate line on a RedisStore, on real redis-servers: a turn takes every waiting task that
// conforms in one script call, so a line drains at its bucket's rate and not at one task per
// round trip, whatever the round trip.
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Manager, RedisStore, TaskvalveError, type RateReceipt } from '../src/index.js';
import { eventually } from './helpers.js';
import { startFaultProxy } from './support/fault-proxy.js';
import { startRedis, type RedisServer } from './support/redis.js';

let server: RedisServer;
let admin: Redis;
let prefixes = 0;

beforeAll(async () => {
  server = await startRedis();
  admin = new Redis({ port: server.port });
});

afterAll(async () => {
  admin?.disconnect();
  await server?.stop();
});

/** Script calls the server has run so far: EVALSHA, and EVAL (a script's first call, after NOSCRIPT). */
async function scriptCalls(): Promise<number> {
  const info = await admin.info('commandstats');
  let calls = 0;
  for (const m of info.matchAll(/^cmdstat_(?:evalsha|eval):calls=(\d+)/gm)) calls += Number(m[1]);
  return calls;
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Time as the test sets it: the scripts decide at `now`, and the manager reads it. */
interface TestTime {
  now: number;
}

/** Runs `test` with a manager on a store (of its own prefix) that decides at the time the test sets. */
async function onTestTime(test: (m: Manager, store: RedisStore, time: TestTime) => Promise<void>): Promise<void> {
  const time: TestTime = { now: Date.UTC(2026, 5, 1) };
  const client = new Redis({ port: server.port });
  const store = new RedisStore({ client, prefix: `t${++prefixes}` });
  store.setTestClock(() => time.now);
  const m = new Manager({ store, clock: () => time.now });
  try {
    await test(m, store, time);
  } finally {
    await m.close();
    client.disconnect();
  }
}

describe('RedisStore.takeTurns', () => {
  it('takes units in order while they conform, stops at the first that does not (nobody behind it is taken), and says when it would', async () => {
    await onTestTime(async (m, store, time) => {
      m.registerProfile('p', { rate: { limit: 10, intervalMs: 1000, burst: 4 } });
      await m.subscribe('u', 'p');
      const limiter = m.getLimiter('u');
      expect((await limiter.check(4)).allowed).toBe(true);
      const slot = { ref: undefined };
      const turns = [
        { userId: 'u', cost: 1, slot },
        { userId: 'u', cost: 3, slot },
        { userId: 'u', cost: 1, slot },
      ];
      // 2 units conform: the first waiter's, and one more, which the second (3) cannot use and
      // the third (1) must not take ahead of it.
      time.now += 200;
      const first = await store.takeTurns(turns, time.now);
      expect(first).toMatchObject({ taken: 1, waitMs: 200 });
      expect(first.receipts).toHaveLength(1);
      expect(await limiter.peek()).toMatchObject({ remaining: 1 });
      time.now += 300;
      const rest = await store.takeTurns(turns.slice(1), time.now);
      expect(rest).toMatchObject({ taken: 2, waitMs: 0 });
      expect(rest.receipts).toHaveLength(2);
      expect(await limiter.peek()).toMatchObject({ remaining: 0 });
      // 350 ms on, half of the last waiter's slot is still ahead: its receipt gives back that
      // half (and nothing of the slots before it), and the bucket is full again.
      time.now += 350;
      expect(await limiter.peek()).toMatchObject({ remaining: 3 });
      await store.refundRate('u', 1, rest.receipts[1] as RateReceipt, time.now);
      expect(await limiter.peek()).toMatchObject({ remaining: 4 });
    });
  });

  it('a user whose record is gone: every waiter of the user taken, nothing to give back', async () => {
    const prefix = `take${++prefixes}`;
    const clients = [new Redis({ port: server.port }), new Redis({ port: server.port })];
    const [store, other] = clients.map((client) => new RedisStore({ client, prefix })) as [RedisStore, RedisStore];
    const [m, n] = [store, other].map((s) => new Manager({ store: s })) as [Manager, Manager];
    try {
      for (const manager of [m, n]) manager.registerProfile('p', { rate: { limit: 1, intervalMs: 1000, burst: 5 } });
      await m.subscribe('u', 'p');
      const slot = { ref: undefined };
      const turns = [1, 2].map(() => ({ userId: 'u', cost: 1, slot }));
      expect(await store.takeTurns(turns, Date.now())).toMatchObject({ taken: 2, waitMs: 0 });
      // Deleted by another process: this one still knows the user's profile (the script finds no
      // record), or, with a new handle, looks it up and finds none.
      await n.deleteSubscription('u');
      const nothing = { taken: 2, waitMs: 0, receipts: [undefined, undefined] };
      expect(await store.takeTurns(turns, Date.now())).toEqual(nothing);
      const fresh = { ref: undefined };
      expect(await store.takeTurns(turns.map((t) => ({ ...t, slot: fresh })), Date.now())).toEqual(nothing);
    } finally {
      await Promise.all([m.close(), n.close()]);
      for (const client of clients) client.disconnect();
    }
  });
});

describe.each([
  { bucket: 'a shared bucket, 10 users', shared: 'line', users: 10 },
  { bucket: "a user's own bucket", shared: undefined, users: 1 },
])('one turn on $bucket', ({ shared, users }) => {
  it('takes every waiting task that conforms in one script call', async () => {
    await onTestTime(async (m, _store, time) => {
      m.registerProfile('p', { rate: { limit: 1, intervalMs: 1000, burst: 50, ...(shared === undefined ? {} : { shared }) } });
      const ids = Array.from({ length: users }, (_, i) => `u${i}`);
      for (const id of ids) await m.subscribe(id, 'p');
      expect((await m.getLimiter('u0').check(50)).allowed).toBe(true);
      let waiting = 0;
      const allWaiting = new Promise<void>((resolve) => m.on('task', (e) => e.to === 'WAITING_RATE' && ++waiting === 50 && resolve()));
      const runs = Array.from({ length: 50 }, (_, i) => m.getLimiter(ids[i % users] as string).submit(() => i));
      await allWaiting;
      const before = await scriptCalls();
      // All 50 units conform again; the line's timer (the first task's wait, 1 s) fires after this.
      time.now += 50_000;
      expect((await Promise.all(runs)).length).toBe(50);
      // One take_turns call (two commands if the server had to load the script first).
      expect((await scriptCalls()) - before).toBeLessThanOrEqual(2);
    });
  });
});

describe('maxWaitMs on a line that drains without sleeping', () => {
  it('after each turn, the tasks still waiting past their deadline leave RATE_LIMITED, refunded', async () => {
    await onTestTime(async (m, _store, time) => {
      m.registerProfile('p', { rate: { limit: 10, intervalMs: 1000, burst: 100, shared: 'deep', maxWaitMs: 10_000 }, quota: { limit: 1000 } });
      await m.subscribe('u', 'p');
      const limiter = m.getLimiter('u');
      expect((await limiter.check(100)).allowed).toBe(true);
      let waiting = 0;
      const all = new Promise<void>((resolve) => m.on('task', (e) => e.to === 'WAITING_RATE' && ++waiting === 70 && resolve()));
      const outcomes = Array.from({ length: 70 }, () => limiter.submit(() => 'ran').catch((e: TaskvalveError) => e.code));
      await all;
      // Every unit conforms again, 20 s on: past every task's deadline. The first turn takes 64
      // (the most one call carries); the 6 left have waited too long.
      time.now += 20_000;
      const results = await Promise.all(outcomes);
      expect(results.filter((r) => r === 'ran')).toHaveLength(64);
      expect(results.filter((r) => r === 'RATE_LIMITED')).toHaveLength(6);
      // Refunds land asynchronously (a script's first call may be re-sent after a NOSCRIPT).
      await eventually(async () => (await m.getSubscription('u'))?.usage === 164, 'usage 164: the 6 refunded');
    });
  });
});

describe('a line under a steady stream, with a round trip of a few ms', () => {
  it("drains at the bucket's rate: waits stay within maxWaitMs, nothing waits when the stream ends, and check() is allowed once the line's wait has passed", async () => {
    const LIMIT = 2000; // units per second, the burst too
    const RATE = 500; // submits per second, a quarter of it
    const STREAM_MS = 2000;
    const BURST = 600; // submits landing at once on the spent bucket: a line of about 300 ms
    const MAX_WAIT_MS = 1000;
    const proxy = await startFaultProxy({ port: server.port });
    // Every chunk is held 2 ms each way: a round trip of about 4 ms, as across a network.
    proxy.delay(2);
    const client = new Redis({ port: proxy.port });
    const m = new Manager({ store: new RedisStore({ client, prefix: `stream${++prefixes}` }) });
    try {
      m.registerProfile('api', { rate: { limit: LIMIT, intervalMs: 1000, shared: 'api', maxWaitMs: MAX_WAIT_MS } });
      const ids = Array.from({ length: 20 }, (_, i) => `u${i}`);
      for (const id of [...ids, 'probe']) await m.subscribe(id, 'api');
      // Tasks waiting for their turn, and how long each waited, from the `task` events.
      let waiting = 0;
      let longest = 0;
      const entered = new Map<string, number>();
      m.on('task', (e) => {
        if (e.to === 'WAITING_RATE') {
          waiting++;
          entered.set(e.id, performance.now());
        } else if (e.from === 'WAITING_RATE') {
          waiting--;
          longest = Math.max(longest, performance.now() - (entered.get(e.id) as number));
        }
      });
      const refused: string[] = [];
      const tasks: Promise<unknown>[] = [];
      const submit = (i: number): void => {
        tasks.push(m.getLimiter(ids[i % ids.length] as string).submit(() => i).catch((e: TaskvalveError) => refused.push(e.code)));
      };
      const probe = m.getLimiter('probe');
      expect((await probe.check(LIMIT)).allowed).toBe(true);
      for (let i = 0; i < BURST; i++) submit(i);
      const t0 = performance.now();
      let streaming = true;
      // check() meanwhile, retried after the wait each denial gives: the longest run of denials.
      let starved = 0;
      let allowed = 0;
      const prober = (async () => {
        let deniedSince: number | undefined;
        while (streaming) {
          const d = await probe.check(1);
          const t = performance.now();
          if (d.allowed) {
            allowed++;
            if (deniedSince !== undefined) starved = Math.max(starved, t - deniedSince);
            deniedSince = undefined;
            await sleep(20);
          } else {
            deniedSince ??= t;
            await sleep(d.retryAfterMs);
          }
        }
        if (deniedSince !== undefined) starved = Math.max(starved, performance.now() - deniedSince);
      })();
      let submitted = BURST;
      while (performance.now() - t0 < STREAM_MS) {
        const due = BURST + Math.floor(((performance.now() - t0) / 1000) * RATE);
        while (submitted < due) submit(submitted++);
        await sleep(1);
      }
      const waitingAtEnd = waiting;
      streaming = false;
      await prober;
      await Promise.all(tasks);
      expect(refused).toEqual([]);
      expect(waitingAtEnd).toBe(0);
      expect(longest).toBeLessThanOrEqual(MAX_WAIT_MS);
      expect(allowed).toBeGreaterThan(0);
      expect(starved).toBeLessThanOrEqual(MAX_WAIT_MS);
    } finally {
      await m.close();
      client.disconnect();
      await proxy.close();
    }
  });
});
