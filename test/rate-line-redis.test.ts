// The rate line on a RedisStore, on real redis-servers: a turn takes every waiting task that
// conforms in one script call, so a line drains at its bucket's rate and not at one task per
// round trip, whatever the round trip.
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Manager, RedisStore, type RateReceipt } from '../src/index.js';
import { startRedis, type RedisServer } from './support/redis.js';

let server: RedisServer;
let prefixes = 0;

beforeAll(async () => {
  server = await startRedis();
});

afterAll(async () => {
  await server?.stop();
});

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
