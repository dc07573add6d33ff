// The Store contract: the same behaviour from every store (MemoryStore, RedisStore on each
// topology). A harness makes a store and lets the test move its time.
import { setMaxListeners } from 'node:events';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Manager, TaskvalveError, type Store, type SubscriptionEvent, type TaskEvent } from '../src/index.js';
import { SlotModel } from './support/model-slots.js';
import { eventually } from './helpers.js';
import { deadLetter } from './support/dead-letters.js';
import vectors from './vectors/gcra.json' with { type: 'json' };

/** How the contract gets a store. */
export interface StoreHarness {
  /** A fresh, empty store whose decisions follow `clock` (ms). */
  make(clock: () => number): Promise<Store>;
  /** Releases what make() took (clients), after the manager closed. */
  release?(store: Store): Promise<void>;
}

let now: number;
let manager: Manager;
let store: Store;
let events: SubscriptionEvent[];
const T0 = Date.UTC(2026, 5, 1);

async function code(promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
  } catch (error) {
    expect(error).toBeInstanceOf(TaskvalveError);
    return (error as TaskvalveError).code;
  }
  return 'resolved';
}

/** Resolves when every task with one of these taskIds has reached `state` (listen before submitting them). */
function reached(ids: string[], state: string): Promise<void> {
  const left = new Set(ids);
  return new Promise((resolve) => {
    const listener = (e: TaskEvent): void => {
      if (e.to !== state || !left.delete(e.id) || left.size > 0) return;
      manager.off('task', listener);
      resolve();
    };
    manager.on('task', listener);
  });
}

/** Registers the contract's tests against a harness. */
export function storeContract(label: string, harness: StoreHarness): void {
describe(`store contract: ${label}`, () => {
beforeEach(async () => {
  now = T0;
  store = await harness.make(() => now);
  manager = new Manager({ clock: () => now, store });
  events = [];
  manager.on('subscription', (e: SubscriptionEvent) => events.push(e));
  manager.registerProfile('basic', { rate: { limit: 1000, intervalMs: 1000 }, quota: { limit: 10 } });
  manager.registerProfile('big', { rate: { limit: 1000, intervalMs: 1000 }, quota: { limit: 100 } });
});

afterEach(async () => {
  await manager.close();
  await harness.release?.(store);
});

describe('lifecycle', () => {
  it('subscribe returns the subscription and emits created', async () => {
    const sub = await manager.subscribe('u', 'basic', { durationMs: 60_000 });
    expect(sub).toEqual({
      userId: 'u',
      profileName: 'basic',
      status: 'active',
      startsAt: new Date(T0),
      endsAt: new Date(T0 + 60_000),
      usage: 0,
      quota: null,
      quotaLimit: 10,
    });
    expect(await manager.getSubscription('u')).toEqual(sub);
    expect(await manager.getSubscription('nobody')).toBeUndefined();
    expect(events.map((e) => e.event)).toEqual(['created']);
  });

  it('every mutation emits its event; each rejects SUBSCRIPTION_NOT_FOUND for an unknown user', async () => {
    await manager.subscribe('u', 'basic', { durationMs: 1000 });
    await manager.extendSubscription('u', 1000);
    await manager.changeProfile('u', 'big');
    await manager.updateSubscriptionQuota('u', 5);
    await manager.resetUsage('u');
    await manager.cancelSubscription('u');
    expect(events.map((e) => e.event)).toEqual(['created', 'extended', 'profile_changed', 'quota_updated', 'usage_reset', 'canceled']);
    expect(events.every((e) => e.userId === 'u')).toBe(true);
    const codes = await Promise.all(
      [
        manager.extendSubscription('x', 1),
        manager.cancelSubscription('x'),
        manager.changeProfile('x', 'big'),
        manager.resetUsage('x'),
        manager.updateSubscriptionQuota('x', 1),
      ].map(code),
    );
    expect(codes).toEqual(Array(5).fill('SUBSCRIPTION_NOT_FOUND'));
  });

  it('extend: from endsAt while ahead, from now once past; no end stays no end; canceled stays canceled', async () => {
    await manager.subscribe('a', 'basic', { durationMs: 1000 });
    expect((await manager.extendSubscription('a', 500))?.endsAt).toEqual(new Date(T0 + 1500));
    now += 5000;
    expect((await manager.extendSubscription('a', 500))?.endsAt).toEqual(new Date(now + 500));
    await manager.subscribe('b', 'basic');
    expect((await manager.extendSubscription('b', 500)).endsAt).toBeNull();
    await manager.subscribe('c', 'basic', { durationMs: 1000 });
    await manager.cancelSubscription('c');
    expect(await manager.extendSubscription('c', 500)).toMatchObject({ status: 'canceled', endsAt: new Date(now + 1000) });
  });

  it('not yet started, expired and canceled each give their own code; an expired subscription emits expired once', async () => {
    await manager.subscribe('later', 'basic', { startsAt: new Date(T0 + 1000) });
    await manager.subscribe('short', 'basic', { endsAt: T0 + 1000 });
    await manager.subscribe('gone', 'basic');
    await manager.cancelSubscription('gone');
    expect(await code(manager.getLimiter('later').check())).toBe('SUBSCRIPTION_NOT_STARTED');
    expect(await code(manager.getLimiter('gone').check())).toBe('SUBSCRIPTION_INACTIVE');
    now += 1000;
    expect(await code(manager.getLimiter('later').check())).toBe('resolved');
    events = [];
    expect(await code(manager.getLimiter('short').check())).toBe('SUBSCRIPTION_EXPIRED');
    expect(await code(manager.getLimiter('short').submit(() => 1))).toBe('SUBSCRIPTION_EXPIRED');
    expect(events).toEqual([{ userId: 'short', event: 'expired' }]);
    expect(await manager.getLimiter('short').peek()).toMatchObject({ status: 'expired', allowed: true });
  });

  it('a subscription first seen expired by a peek emits expired once', async () => {
    await manager.subscribe('brief', 'basic', { endsAt: T0 + 1000 });
    now += 1000;
    events = [];
    expect(await manager.getLimiter('brief').peek()).toMatchObject({ status: 'expired' });
    expect(await code(manager.getLimiter('brief').check())).toBe('SUBSCRIPTION_EXPIRED');
    expect(events).toEqual([{ userId: 'brief', event: 'expired' }]);
  });

  it('re-subscribing replaces profile and dates but keeps the period usage, unless resetUsage', async () => {
    await manager.subscribe('u', 'basic', { durationMs: 1000 });
    const limiter = manager.getLimiter('u');
    await limiter.check(4);
    const again = await manager.subscribe('u', 'big', { durationMs: 5000 });
    expect(again).toMatchObject({ profileName: 'big', usage: 4, quotaLimit: 100, endsAt: new Date(T0 + 5000) });
    await manager.cancelSubscription('u');
    expect((await manager.subscribe('u', 'big')).status).toBe('active');
    expect((await manager.subscribe('u', 'basic', { resetUsage: true })).usage).toBe(0);
  });

  it('changeProfile keeps usage and applies the new limits at once', async () => {
    await manager.subscribe('u', 'basic');
    const limiter = manager.getLimiter('u');
    await limiter.check(10);
    expect(await code(limiter.check(1))).toBe('QUOTA_EXCEEDED');
    expect(await manager.changeProfile('u', 'big')).toMatchObject({ usage: 10, quotaLimit: 100 });
    expect((await limiter.check(1)).allowed).toBe(true);
    expect(await code(manager.changeProfile('u', 'nope'))).toBe('PROFILE_NOT_FOUND');
  });

  it('a dedicated bucket carries over a profile change: a downgrade gains no capacity', async () => {
    manager.registerProfile('fast', { rate: { limit: 10, intervalMs: 1000 } });
    manager.registerProfile('slow', { rate: { limit: 3, intervalMs: 1000, burst: 10 } });
    await manager.subscribe('u', 'fast');
    const limiter = manager.getLimiter('u');
    expect((await limiter.check(10)).allowed).toBe(true);
    await manager.changeProfile('u', 'slow');
    // 10 units in use stay 10 units in use: the slower bucket is empty, one unit is 1/3 s away.
    expect(await limiter.check(1)).toMatchObject({ allowed: false, retryAfterMs: 334 });
    await manager.changeProfile('u', 'fast');
    expect(await limiter.check(1)).toMatchObject({ allowed: false, retryAfterMs: 100 });
  });
});

describe('delete', () => {
  it('deleteSubscription removes subscription, usage and own bucket; true only if the user existed; emits deleted', async () => {
    manager.registerProfile('tight', { rate: { limit: 2, intervalMs: 3_600_000 }, quota: { limit: 10 } });
    await manager.subscribe('u', 'tight', { durationMs: 60_000 });
    const limiter = manager.getLimiter('u');
    expect((await limiter.check(2)).allowed).toBe(true);
    expect((await limiter.check(1)).allowed).toBe(false);
    events = [];
    expect(await manager.deleteSubscription('u')).toBe(true);
    expect(events).toEqual([{ userId: 'u', event: 'deleted' }]);
    expect(await manager.getSubscription('u')).toBeUndefined();
    // A handle held from before the delete (with a remembered refusal) finds nothing.
    expect(await code(limiter.check(1))).toBe('SUBSCRIPTION_NOT_FOUND');
    expect(await code(limiter.submit(() => 1))).toBe('SUBSCRIPTION_NOT_FOUND');
    expect(await limiter.peek()).toMatchObject({ status: 'not_found' });
    expect(await manager.deleteSubscription('u')).toBe(false);
    expect(events).toEqual([{ userId: 'u', event: 'deleted' }]);
    // Subscribing again starts from nothing: no usage, a full bucket, through the same handle.
    expect(await manager.subscribe('u', 'tight')).toMatchObject({ usage: 0, endsAt: null });
    expect(await limiter.checkDetailed(1)).toMatchObject({ allowed: true, usage: 1, remaining: 1 });
    expect(await limiter.checkDetailed(1)).toMatchObject({ allowed: true, usage: 2, remaining: 0 });
  });

  it("deleteSubscription removes the user's dead letters too, and only theirs (also when the subscription was already gone)", async () => {
    manager.registerProfile('keep', { rate: { limit: 1000, intervalMs: 1000 }, dlq: { retentionMs: 3_600_000 } });
    for (const user of ['u', 'v']) {
      await manager.subscribe(user, 'keep');
      expect(await code(manager.getLimiter(user).submit(() => Promise.reject(new Error(user))))).toBe('TASK_FAILED');
    }
    expect(await manager.deleteSubscription('u')).toBe(true);
    expect((await manager.dlq.list()).map((e) => e.userId)).toEqual(['v']);
    expect(await manager.dlq.list({ userId: 'u' })).toEqual([]);
    // A letter stored under a user with no subscription any more goes with the next delete.
    await store.dlqAdd({ ...deadLetter(1, 'keep', now), userId: 'u' }, { maxEntries: 10, retentionMs: 3_600_000 }, now);
    expect(await manager.deleteSubscription('u')).toBe(false);
    expect((await manager.dlq.list()).map((e) => e.userId)).toEqual(['v']);
  });

  it('a handle on a shared bucket with a remembered refusal finds nothing after the delete; other users keep the bucket', async () => {
    manager.registerProfile('pooled', { rate: { limit: 1, intervalMs: 3_600_000, shared: 'pool' } });
    await manager.subscribe('a', 'pooled');
    await manager.subscribe('b', 'pooled');
    expect((await manager.getLimiter('a').check(1)).allowed).toBe(true);
    expect((await manager.getLimiter('a').check(1)).allowed).toBe(false);
    const held = manager.getLimiter('a');
    expect(await manager.deleteSubscription('a')).toBe(true);
    expect(await code(held.check(1))).toBe('SUBSCRIPTION_NOT_FOUND');
    expect((await manager.getLimiter('b').check(1)).allowed).toBe(false);
  });

  it('a deleted user is not touched by a refund, a turn or a usage charge that lands afterwards', async () => {
    manager.registerProfile('slow', { rate: { limit: 1, intervalMs: 1000 }, quota: { limit: 10 } });
    await manager.subscribe('u', 'slow');
    const limiter = manager.getLimiter('u');
    await limiter.check(1);
    const waiting = limiter.submit(() => 1);
    // Charged and waiting for its turn.
    expect((await manager.getSubscription('u'))?.usage).toBe(2);
    expect(await manager.deleteSubscription('u')).toBe(true);
    expect(await code(waiting)).toBe('SUBSCRIPTION_INACTIVE');
    now += 5000;
    expect(await manager.getSubscription('u')).toBeUndefined();
    expect(await code(limiter.check(1))).toBe('SUBSCRIPTION_NOT_FOUND');
  });

  it('rejects a bad user id with INVALID_ARGUMENT as a rejected promise', async () => {
    for (const bad of ['', 42, null, undefined]) {
      let promise: Promise<boolean> | undefined;
      expect(() => {
        promise = manager.deleteSubscription(bad as string);
      }).not.toThrow();
      expect(await code(promise!)).toBe('INVALID_ARGUMENT');
    }
  });
});

describe('sweep of ended subscriptions', () => {
  const R = 10_000;
  /** One sweep round: calls until the store says it is done; the deleted, sorted. */
  async function sweep(max = 1000): Promise<string[]> {
    const out: string[] = [];
    for (;;) {
      const r = await store.sweepEnded(now, R, max);
      expect(r.deleted.length).toBeLessThanOrEqual(max);
      out.push(...r.deleted.map((d) => `${d.userId}:${d.profileName}`));
      if (!r.more) return out.sort();
    }
  }

  it('deletes canceled and expired subscriptions once their retention has passed, and nothing else', async () => {
    await manager.subscribe('canceled', 'basic');
    await manager.subscribe('expires', 'basic', { durationMs: 1000 });
    await manager.subscribe('forever', 'basic');
    await manager.subscribe('later', 'basic', { durationMs: 60_000 });
    await manager.subscribe('back', 'basic', { durationMs: 1000 });
    await manager.subscribe('extended', 'big', { durationMs: 1000 });
    await manager.cancelSubscription('canceled');
    await manager.cancelSubscription('back');
    const held = manager.getLimiter('canceled');
    expect(await code(held.check())).toBe('SUBSCRIPTION_INACTIVE');
    now += 500;
    await manager.subscribe('back', 'basic');
    await manager.extendSubscription('extended', 60_000);
    now = T0 + 1000 + R - 1;
    expect(await sweep()).toEqual(['canceled:basic']);
    now = T0 + 1000 + R;
    await store.dlqAdd({ ...deadLetter(1, 'basic', now), userId: 'expires' }, { maxEntries: 10, retentionMs: 100 * R }, now);
    await store.dlqAdd({ ...deadLetter(2, 'basic', now), userId: 'forever' }, { maxEntries: 10, retentionMs: 100 * R }, now);
    expect(await sweep()).toEqual(['expires:basic']);
    // The swept user's dead letters went with the subscription.
    expect((await manager.dlq.list()).map((e) => e.userId)).toEqual(['forever']);
    expect(await manager.getSubscription('canceled')).toBeUndefined();
    expect(await manager.getSubscription('expires')).toBeUndefined();
    expect(await code(held.check())).toBe('SUBSCRIPTION_NOT_FOUND');
    now = T0 + 61_000 + R;
    expect(await sweep()).toEqual(['extended:big', 'later:basic']);
    now += 100 * R;
    expect(await sweep()).toEqual([]);
    for (const user of ['forever', 'back']) expect(await manager.getSubscription(user)).toMatchObject({ status: 'active' });
  });

  it('a call deletes at most max subscriptions; the round goes on until none is due', async () => {
    for (let i = 0; i < 7; i++) await manager.subscribe(`u${i}`, 'basic', { durationMs: 1000 + i });
    now += 2000 + R;
    expect(await sweep(3)).toEqual(Array.from({ length: 7 }, (_, i) => `u${i}:basic`));
    expect(await sweep(3)).toEqual([]);
  });

  it('deleting or re-subscribing takes a user out of the sweep; subscribing again after a sweep starts afresh', async () => {
    await manager.subscribe('a', 'basic', { durationMs: 1000 });
    await manager.subscribe('b', 'basic', { durationMs: 1000 });
    await manager.getLimiter('b').check(3);
    expect(await manager.deleteSubscription('a')).toBe(true);
    await manager.subscribe('a', 'basic');
    now += 1000 + R;
    expect(await sweep()).toEqual(['b:basic']);
    expect(await manager.getSubscription('a')).toMatchObject({ status: 'active', endsAt: null });
    expect(await manager.subscribe('b', 'basic')).toMatchObject({ usage: 0, status: 'active' });
  });
});

describe('quota', () => {
  it('hard quota rejects QUOTA_EXCEEDED past the limit and counts nothing for the rejection', async () => {
    await manager.subscribe('u', 'basic');
    const limiter = manager.getLimiter('u');
    await limiter.check(7);
    expect(await code(limiter.submit(() => 1, { cost: 4 }))).toBe('QUOTA_EXCEEDED');
    expect(await limiter.submit(() => 1, { cost: 3 })).toBe(1);
    expect((await manager.getSubscription('u'))?.usage).toBe(10);
  });

  it('soft quota admits and counts the overage', async () => {
    manager.registerProfile('soft', { rate: { limit: 1000, intervalMs: 1000 }, quota: { limit: 2, kind: 'soft' } });
    await manager.subscribe('u', 'soft');
    for (let i = 0; i < 5; i++) expect((await manager.getLimiter('u').check()).allowed).toBe(true);
    expect(await manager.getSubscription('u')).toMatchObject({ usage: 5, quotaLimit: 2 });
  });

  it('periodMs resets usage each period, aligned to the subscription start', async () => {
    manager.registerProfile('daily', { rate: { limit: 1000, intervalMs: 1000 }, quota: { limit: 3, periodMs: 86_400_000 } });
    await manager.subscribe('u', 'daily');
    const limiter = manager.getLimiter('u');
    await limiter.check(3);
    now += 3_600_000;
    const err = await limiter.check(1).catch((e: TaskvalveError) => e);
    expect(err).toMatchObject({ code: 'QUOTA_EXCEEDED', retryAfterMs: 86_400_000 - 3_600_000 });
    now = T0 + 86_400_000 * 2 + 5;
    expect((await limiter.check(1)).allowed).toBe(true);
    expect(await manager.getSubscription('u')).toMatchObject({ usage: 1, periodStartedAt: new Date(T0 + 86_400_000 * 2) });
  });

  it('the times a refusal and a decision tell: a quota that never resets, a start to come, a period turning exactly on its boundary and after 2.5 periods', async () => {
    manager.registerProfile('once', { rate: { limit: 1000, intervalMs: 1000 }, quota: { limit: 1 } });
    manager.registerProfile('minute', { rate: { limit: 1000, intervalMs: 1000 }, quota: { limit: 2, periodMs: 60_000 } });
    await manager.subscribe('a', 'once');
    await manager.subscribe('b', 'minute');
    await manager.subscribe('c', 'once', { startsAt: new Date(T0 + 5000) });
    await manager.getLimiter('a').check();
    // No period: the quota never comes back, so there is no time to retry after.
    expect(await manager.getLimiter('a').check().catch((e: TaskvalveError) => e)).toMatchObject({ code: 'QUOTA_EXCEEDED', retryAfterMs: undefined });
    expect(await manager.getLimiter('c').check().catch((e: TaskvalveError) => e)).toMatchObject({ code: 'SUBSCRIPTION_NOT_STARTED', retryAfterMs: 5000 });
    await manager.getLimiter('b').check(2);
    // Exactly on the boundary the new period has begun.
    now = T0 + 60_000;
    expect(await manager.getLimiter('b').checkDetailed()).toMatchObject({ allowed: true, usage: 1, quotaResetAfterMs: 60_000 });
    // 2.5 periods in: the third period, half gone.
    now = T0 + 150_000;
    expect(await manager.getLimiter('b').checkDetailed()).toMatchObject({ allowed: true, usage: 1, quotaResetAfterMs: 30_000 });
  });

  it('a per-user override replaces the profile limit; null returns to it', async () => {
    await manager.subscribe('u', 'basic', { quota: 2 });
    const limiter = manager.getLimiter('u');
    await limiter.check(2);
    expect(await code(limiter.check(1))).toBe('QUOTA_EXCEEDED');
    expect(await manager.updateSubscriptionQuota('u', null)).toMatchObject({ quota: null, quotaLimit: 10 });
    expect((await limiter.check(1)).allowed).toBe(true);
    expect(await manager.updateSubscriptionQuota('u', 50)).toMatchObject({ quota: 50, quotaLimit: 50 });
  });

  it('usage counts every admitted unit, from check and submit, without a quota too', async () => {
    manager.registerProfile('free', { rate: { limit: 1000, intervalMs: 1000 } });
    await manager.subscribe('u', 'free');
    await manager.getLimiter('u').check(2);
    await manager.getLimiter('u').submit(() => 1, { cost: 3 });
    expect(await manager.getSubscription('u')).toMatchObject({ usage: 5, quotaLimit: null });
  });

  it('resetUsage zeroes usage; a refund of a charge from before the reset does not go below it', async () => {
    await manager.subscribe('u', 'basic');
    await manager.getLimiter('u').check(5);
    expect((await manager.resetUsage('u')).usage).toBe(0);
    expect(await code(manager.getLimiter('u').check(11))).toBe('QUOTA_EXCEEDED');
  });

  it('on a shared pool the charge goes to the submitter: B over quota leaves A at 0; canceling A leaves B unaffected', async () => {
    manager.registerProfile('pooled', { rate: { limit: 100, intervalMs: 1000, shared: 'pool' }, quota: { limit: 2 } });
    await manager.subscribe('A', 'pooled');
    await manager.subscribe('B', 'pooled');
    const b = manager.getLimiter('B');
    await b.submit(() => 1);
    await b.submit(() => 2);
    expect(await code(b.submit(() => 3))).toBe('QUOTA_EXCEEDED');
    expect((await manager.getSubscription('A'))?.usage).toBe(0);
    expect((await manager.getSubscription('B'))?.usage).toBe(2);
    await manager.cancelSubscription('A');
    await manager.updateSubscriptionQuota('B', 3);
    expect(await b.submit(() => 3)).toBe(3);
    expect(await code(manager.getLimiter('A').submit(() => 1))).toBe('SUBSCRIPTION_INACTIVE');
  });

  it('mutations never lose a concurrent usage charge', async () => {
    await manager.subscribe('u', 'big', { quota: 100 });
    const limiter = manager.getLimiter('u');
    const work: Promise<unknown>[] = [];
    for (let i = 0; i < 30; i++) {
      work.push(limiter.check(1));
      if (i % 5 === 0) {
        work.push(manager.extendSubscription('u', 1000), manager.updateSubscriptionQuota('u', 100));
        work.push(manager.changeProfile('u', i % 10 ? 'big' : 'basic'), manager.subscribe('u', 'big', { quota: 100 }));
      }
    }
    const outcomes = await Promise.allSettled(work);
    expect(outcomes.every((o) => o.status === 'fulfilled')).toBe(true);
    expect((await manager.getSubscription('u'))?.usage).toBe(30);
  });
});

describe('contention', () => {
  it('1,000 concurrent checks of cost 1 on burst 10 with no refill admit exactly 10; with cost 3, exactly 3', async () => {
    manager.registerProfile('tight', { rate: { limit: 10, intervalMs: 3_600_000 } });
    await manager.subscribe('a', 'tight');
    await manager.subscribe('b', 'tight');
    const ones = await Promise.all(Array.from({ length: 1000 }, () => manager.getLimiter('a').check(1)));
    expect(ones.filter((d) => d.allowed)).toHaveLength(10);
    const threes = await Promise.all(Array.from({ length: 1000 }, () => manager.getLimiter('b').check(3)));
    expect(threes.filter((d) => d.allowed)).toHaveLength(3);
  });

  it('1,000 concurrent submits in reject mode admit exactly 10 (cost 1) and 3 (cost 3)', async () => {
    manager.registerProfile('tight', { rate: { limit: 10, intervalMs: 3_600_000, onLimit: 'reject' } });
    await manager.subscribe('a', 'tight');
    await manager.subscribe('b', 'tight');
    for (const [user, cost, expected] of [['a', 1, 10], ['b', 3, 3]] as const) {
      let ran = 0;
      const outcomes = await Promise.allSettled(Array.from({ length: 1000 }, () => manager.getLimiter(user).submit(() => ++ran, { cost })));
      expect(outcomes.filter((o) => o.status === 'fulfilled')).toHaveLength(expected);
      expect(ran).toBe(expected);
      expect(outcomes.filter((o) => o.status === 'rejected').every((o) => (o as PromiseRejectedResult).reason.code === 'RATE_LIMITED')).toBe(true);
    }
  });

  it('quota 10: 50 concurrent submits give exactly 10 accepted and 40 QUOTA_EXCEEDED; usage ends at 10', async () => {
    await manager.subscribe('u', 'basic');
    const outcomes = await Promise.allSettled(Array.from({ length: 50 }, () => manager.getLimiter('u').submit(() => 1)));
    expect(outcomes.filter((o) => o.status === 'fulfilled')).toHaveLength(10);
    const codes = outcomes.filter((o): o is PromiseRejectedResult => o.status === 'rejected').map((o) => o.reason.code);
    expect(codes).toEqual(Array(40).fill('QUOTA_EXCEEDED'));
    expect((await manager.getSubscription('u'))?.usage).toBe(10);
  });
});

describe('checkDetailed', () => {
  it('answers the decision with the profile, usage, quota in force and time to the period end', async () => {
    manager.registerProfile('daily', { rate: { limit: 10, intervalMs: 1000 }, quota: { limit: 5, periodMs: 60_000 } });
    await manager.subscribe('u', 'daily');
    now += 15_000;
    expect(await manager.getLimiter('u').checkDetailed(2)).toEqual({
      allowed: true, limit: 10, remaining: 8, retryAfterMs: 0, resetAfterMs: 200,
      profile: 'daily', usage: 2, quotaLimit: 5, quotaResetAfterMs: 45_000,
    });
    await manager.updateSubscriptionQuota('u', 3);
    expect(await manager.getLimiter('u').checkDetailed(1)).toMatchObject({ allowed: true, usage: 3, quotaLimit: 3 });
    await manager.updateSubscriptionQuota('u', 100);
    expect(await manager.getLimiter('u').checkDetailed(8)).toMatchObject({ allowed: false, usage: 3, quotaLimit: 100, profile: 'daily' });
    await manager.subscribe('v', 'basic');
    expect(await manager.getLimiter('v').checkDetailed()).toMatchObject({ allowed: true, profile: 'basic', usage: 1, quotaLimit: 10, quotaResetAfterMs: null });
  });
});

describe('peek', () => {
  it('counts the units that waiting tasks have reserved, as check(1) would', async () => {
    manager.registerProfile('slow', { rate: { limit: 1, intervalMs: 1000, burst: 3 } });
    await manager.subscribe('u', 'slow');
    const limiter = manager.getLimiter('u');
    expect((await limiter.check(2)).allowed).toBe(true);
    expect(await limiter.peek()).toMatchObject({ allowed: true, remaining: 1, retryAfterMs: 0, resetAfterMs: 2000 });
    const aborter = new AbortController();
    const queued = new Promise<void>((resolve) => manager.on('task', (e) => e.to === 'WAITING_RATE' && resolve()));
    const waiting = code(limiter.submit(() => 1, { cost: 2, signal: aborter.signal }));
    await queued;
    // 2 units are spent and 2 reserved: check(1) would wait for 2 more units to drain.
    expect(await limiter.peek()).toMatchObject({ allowed: false, remaining: 0, retryAfterMs: 2000, resetAfterMs: 4000 });
    expect((await limiter.check(1)).allowed).toBe(false);
    aborter.abort();
    expect(await waiting).toBe('ABORTED');
    expect(await limiter.peek()).toMatchObject({ allowed: true, remaining: 1 });
  });
});

describe('the rate line', () => {
  it.each([
    { bucket: 'its own bucket', shared: undefined },
    { bucket: 'a shared bucket', shared: 'wide' },
  ])('a check while a task waits on $bucket is allowed when its unit and the waiting units conform together; then the task takes its own', async ({ shared }) => {
    manager.registerProfile('slow', { rate: { limit: 1, intervalMs: 1000, burst: 2, ...(shared === undefined ? {} : { shared }) } });
    await manager.subscribe('u', 'slow');
    const limiter = manager.getLimiter('u');
    expect((await limiter.check(2)).allowed).toBe(true);
    const queued = reached(['w'], 'WAITING_RATE');
    const waiting = limiter.submit(() => 'ran', { taskId: 'w' });
    await queued;
    // 2 units conform again; the line's turn (1 s away) has not come yet.
    now += 2000;
    expect((await limiter.check(1)).allowed).toBe(true);
    expect((await limiter.check(1)).allowed).toBe(false);
    expect(await waiting).toBe('ran');
    expect((await limiter.check(1)).allowed).toBe(false);
  });

  it('a waiting task whose turn comes later than its maxWaitMs (another user took a turn first) leaves RATE_LIMITED, its quota refunded', async () => {
    manager.registerProfile('bounded', { rate: { limit: 10, intervalMs: 1000, burst: 1, shared: 'line', maxWaitMs: 200 }, quota: { limit: 10 } });
    manager.registerProfile('patient', { rate: { limit: 10, intervalMs: 1000, burst: 1, shared: 'line' } });
    await manager.subscribe('a', 'bounded');
    await manager.subscribe('b', 'patient');
    const a = manager.getLimiter('a');
    const b = manager.getLimiter('b');
    expect((await a.check(1)).allowed).toBe(true);
    // a's two tasks were admitted to wait 100 and 200 ms; round-robin gives b's task the second
    // turn. (Each is admitted before the next is submitted.)
    let waiting = reached(['a1'], 'WAITING_RATE');
    const a1 = a.submit(() => 'a1', { taskId: 'a1' });
    await waiting;
    waiting = reached(['a2'], 'WAITING_RATE');
    const a2 = a.submit(() => 'a2', { taskId: 'a2' }).then(() => undefined, (e: unknown) => e as TaskvalveError);
    await waiting;
    waiting = reached(['b1'], 'WAITING_RATE');
    const b1 = b.submit(() => 'b1', { taskId: 'b1' });
    await waiting;
    now += 100;
    expect(await a1).toBe('a1');
    now += 100;
    expect(await b1).toBe('b1');
    const error = await a2;
    expect(error?.code).toBe('RATE_LIMITED');
    expect(error?.retryAfterMs).toBeGreaterThan(0);
    await eventually(async () => (await manager.getSubscription('a'))?.usage === 2, "usage 2: a2's quota refunded");
  });

  it('a turn starts no more waiting tasks than the queue has room for: the others leave QUEUE_FULL, their units and quota back', async () => {
    manager.registerProfile('narrow', { rate: { limit: 1, intervalMs: 1000, burst: 5 }, pool: { maxQueue: 1, perUserConcurrency: 1 }, quota: { limit: 100 } });
    await manager.subscribe('u', 'narrow');
    const limiter = manager.getLimiter('u');
    expect((await limiter.check(5)).allowed).toBe(true);
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    // Five tasks wait, in this order (each admitted before the next is submitted).
    const outcomes: Promise<string>[] = [];
    for (let i = 0; i < 5; i++) {
      const waiting = reached([`t${i}`], 'WAITING_RATE');
      outcomes.push(code(limiter.submit(() => (i === 0 ? held : undefined), { taskId: `t${i}` })));
      await waiting;
    }
    // Every unit conforms again: the first task takes the user's slot, the second the queue's room.
    now += 5000;
    const refused = await Promise.all(outcomes.slice(2));
    expect(refused).toEqual(['QUEUE_FULL', 'QUEUE_FULL', 'QUEUE_FULL']);
    release();
    expect(await Promise.all(outcomes.slice(0, 2))).toEqual(['resolved', 'resolved']);
    // A remote store gives quota and units back asynchronously: wait until it shows them.
    await eventually(async () => (await manager.getSubscription('u'))?.usage === 7, 'usage 7: 3 refunded');
    await eventually(async () => (await limiter.peek()).remaining >= 3, 'the 3 units back in the bucket');
    expect((await limiter.check(3)).allowed).toBe(true);
    expect((await limiter.check(1)).allowed).toBe(false);
  });

  it('a full queue refuses a waiter at its own turn, not at the turn of the waiter ahead of it', async () => {
    manager.registerProfile('slow', { rate: { limit: 1, intervalMs: 300 }, pool: { maxQueue: 1, perUserConcurrency: 1 } });
    await manager.subscribe('u', 'slow');
    const u = manager.getLimiter('u');
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    // a runs; b's turn comes at 300 ms, c's at 600 ms.
    const running = reached(['a'], 'RUNNING');
    const a = u.submit(() => held, { taskId: 'a' });
    await running;
    const waiting = reached(['b', 'c'], 'WAITING_RATE');
    const b = u.submit(() => 'b', { taskId: 'b' });
    const c = code(u.submit(() => 'c', { taskId: 'c' }));
    await waiting;
    // b's turn: it fills the queue; c's turn has not come.
    const queued = reached(['b'], 'QUEUED');
    now += 300;
    await queued;
    // a ends and b runs: the queue has room when c's turn comes.
    release();
    expect(await Promise.all([a, b])).toEqual([undefined, 'b']);
    now += 300;
    expect(await c).toBe('resolved');
    expect((await manager.getSubscription('u'))?.usage).toBe(3);
  });

  it('a waiter refused at its turn (queue full) takes its units off the line once: the units still waiting keep counting', async () => {
    manager.registerProfile('q', { rate: { limit: 10, intervalMs: 1000, burst: 2, shared: 'q' }, pool: { maxQueue: 1, perUserConcurrency: 1 } });
    await manager.subscribe('u', 'q');
    await manager.subscribe('z', 'q');
    const u = manager.getLimiter('u');
    const z = manager.getLimiter('z');
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    // a runs and b is queued behind it (the queue is full); they take the bucket's 2 units.
    const running = reached(['a'], 'RUNNING');
    const a = u.submit(() => held, { taskId: 'a' });
    await running;
    const full = reached(['b'], 'QUEUED');
    const b = u.submit(() => 'b', { taskId: 'b' });
    await full;
    // c's turn comes at 100 ms, when the queue is still full; y's 2 units wait behind it. (y is
    // submitted once c waits: two users' admissions may answer in either order on a Cluster.)
    let waiting = reached(['c'], 'WAITING_RATE');
    const c = code(u.submit(() => 'c', { taskId: 'c' }));
    await waiting;
    waiting = reached(['y'], 'WAITING_RATE');
    const y = z.submit(() => 'y', { cost: 2, taskId: 'y' });
    await waiting;
    now += 100;
    expect(await c).toBe('QUEUE_FULL');
    // y's 2 units still wait (until 300 ms): check(1) would wait for them, then for its own unit.
    expect(await z.peek()).toMatchObject({ allowed: false, retryAfterMs: 200 });
    now += 200;
    expect(await y).toBe('y');
    release();
    expect(await Promise.all([a, b])).toEqual([undefined, 'b']);
  });

  it('after an upgrade, a waiting task takes its turn on the new rate', async () => {
    manager.registerProfile('hourly', { rate: { limit: 1, intervalMs: 3_600_000 } });
    manager.registerProfile('quick', { rate: { limit: 10, intervalMs: 1000 } });
    await manager.subscribe('u', 'hourly');
    const limiter = manager.getLimiter('u');
    expect((await limiter.check(1)).allowed).toBe(true);
    const queued = reached(['w'], 'WAITING_RATE');
    const waiting = limiter.submit(() => 'ran', { taskId: 'w' });
    await queued;
    await manager.changeProfile('u', 'quick');
    // The unit in use is one of 10 in the new bucket: the task's unit conforms now.
    expect(await waiting).toBe('ran');
  });
});

describe('refunds', () => {
  it('a task that leaves before it starts gives back its quota and its rate units: the bucket is as it was', async () => {
    manager.registerProfile('two', { rate: { limit: 1, intervalMs: 3_600_000, burst: 2 }, pool: { perUserConcurrency: 1 }, quota: { limit: 10 } });
    await manager.subscribe('u', 'two');
    const limiter = manager.getLimiter('u');
    let release!: () => void;
    const started = new Promise<void>((resolve) => {
      void limiter.submit(() => {
        resolve();
        return new Promise<void>((done) => (release = done));
      });
    });
    const queued = new Promise<void>((resolve) => manager.on('task', (e) => e.id === 'second' && e.to === 'QUEUED' && resolve()));
    const aborter = new AbortController();
    // Admitted at once (it takes its unit), then queued behind the user's one running task.
    const second = code(limiter.submit(() => 2, { signal: aborter.signal, taskId: 'second' }));
    await Promise.all([started, queued]);
    try {
      aborter.abort();
      expect(await second).toBe('ABORTED');
      // A remote store gives back asynchronously (and a script's first call may be re-sent):
      // wait until the bucket shows the unit back, each event-loop turn.
      while ((await limiter.peek()).remaining < 1) await new Promise((resolve) => setImmediate(resolve));
      // Its unit came back: one more unit conforms, then none.
      expect((await limiter.check(1)).allowed).toBe(true);
      expect((await limiter.check(1)).allowed).toBe(false);
      expect((await manager.getSubscription('u'))?.usage).toBe(2);
    } finally {
      release();
    }
  });
});

describe('a new subscription after a deletion', () => {
  it("a refund of the deleted subscription's charge that lands after the user subscribed again leaves the new subscription's usage alone", async () => {
    // A store whose quota refunds wait until the test lets them through (a refund on Redis can
    // land late: after a NOSCRIPT reload, behind later calls).
    let release!: () => void;
    const later = new Promise<void>((resolve) => (release = resolve));
    const landed: Promise<unknown>[] = [];
    const base = await harness.make(() => now);
    const held = new Proxy(base, {
      get(target, key) {
        const value = Reflect.get(target, key, target) as unknown;
        if (typeof value !== 'function') return value;
        if (key === 'refund') {
          return (...args: unknown[]) => {
            const done = later.then(() => (value as (...a: unknown[]) => unknown).apply(target, args));
            landed.push(done);
            return done;
          };
        }
        return (value as (...a: unknown[]) => unknown).bind(target);
      },
    }) as Store;
    const m = new Manager({ clock: () => now, store: held });
    try {
      m.registerProfile('slow', { rate: { limit: 1, intervalMs: 1000 }, quota: { limit: 10 } });
      await m.subscribe('u', 'slow');
      const limiter = m.getLimiter('u');
      await limiter.check(1);
      // Charged, waiting for its rate turn, then canceled by the deletion: its quota refund is held.
      const waiting = limiter.submit(() => 1);
      expect((await m.getSubscription('u'))?.usage).toBe(2);
      expect(await m.deleteSubscription('u')).toBe(true);
      expect(await code(waiting)).toBe('SUBSCRIPTION_INACTIVE');
      expect(landed.length).toBeGreaterThan(0);
      // (A store may stamp a new record with the time: a real clock has moved on by then.)
      now += 1;
      await m.subscribe('u', 'slow');
      for (let i = 0; i < 3; i++) {
        now += 1000;
        expect((await m.getLimiter('u').check(1)).allowed).toBe(true);
      }
      expect((await m.getSubscription('u'))?.usage).toBe(3);
      release();
      await Promise.all(landed);
      expect((await m.getSubscription('u'))?.usage).toBe(3);
    } finally {
      release();
      await m.close();
      await harness.release?.(base);
    }
  });
});

describe('refunds one after another', () => {
  // 1 unit per 10 s, room for 4. A blocker holds the user's one slot (unit 1, its slot 0-10 s);
  // a and b are admitted and queue behind it (slots 10-20 s and 20-30 s). Given back at 0 s, a's
  // slot moves b's down to 10-20 s; given back at 5 s, b returns the 15 s of its slot still
  // ahead: 10 s of the bucket in use, 3 units free. The other order ends the same way.
  for (const [first, shared] of [['a', undefined], ['b', undefined], ['a', 'pipe']] as const) {
    it(`${first} aborted at 0 s, the other at 5 s: each gives back what it still held, 3 units free (${shared === undefined ? "the user's own bucket" : 'a shared bucket'})`, async () => {
      manager.registerProfile('slow', { rate: { limit: 4, intervalMs: 40_000, ...(shared === undefined ? {} : { shared }) }, pool: { perUserConcurrency: 1 } });
      await manager.subscribe('u', 'slow');
      const limiter = manager.getLimiter('u');
      let release!: () => void;
      const blocker = limiter.submit(() => new Promise<void>((done) => (release = done)));
      const aborts = { a: new AbortController(), b: new AbortController() };
      const queued = reached(['a', 'b'], 'QUEUED');
      const outcomes = { a: code(limiter.submit(() => 1, { signal: aborts.a.signal, taskId: 'a' })), b: code(limiter.submit(() => 1, { signal: aborts.b.signal, taskId: 'b' })) };
      await queued;
      const second = first === 'a' ? 'b' : 'a';
      try {
        aborts[first as 'a' | 'b'].abort();
        expect(await outcomes[first as 'a' | 'b']).toBe('ABORTED');
        await eventually(async () => (await limiter.peek()).remaining === 2, 'the first refund: 2 units free');
        now += 5000;
        aborts[second].abort();
        expect(await outcomes[second]).toBe('ABORTED');
        await eventually(async () => (await limiter.peek()).remaining === 3, 'the second refund: 3 units free');
        for (let i = 0; i < 3; i++) expect((await limiter.check()).allowed).toBe(true);
        expect((await limiter.check()).allowed).toBe(false);
      } finally {
        release();
        await blocker;
      }
    });
  }
});

describe('a refund among folded refunds', () => {
  // 40 tasks queued at 0 s behind a blocker (slots of 1 s each, room for 100). t0 given back
  // first, then t39 down to t3: past 32 refunds the bucket's log folds its oldest entries (t0's
  // among them), and from then on a refund whose slot lies between folded ones gives back less
  // than it held, never more. At 2.5 s, t1's slot, moved down by t0's refund to 1-2 s, is over:
  // nothing of it comes back (its receipt still says 3 s). A task charged after all this is
  // given back whole, the summary notwithstanding.
  it('never emptier than the slots say; a slot an early refund moved into the past gives nothing; one charged after the fold comes back whole', async () => {
    manager.registerProfile('wide', { rate: { limit: 1, intervalMs: 1000, burst: 100 }, pool: { perUserConcurrency: 1 } });
    await manager.subscribe('u', 'wide');
    const limiter = manager.getLimiter('u');
    const start = now;
    const model = new SlotModel(1n, 1_000_000n, 100n);
    let release!: () => void;
    const blocker = limiter.submit(() => new Promise<void>((done) => (release = done)));
    model.take(0, 1);
    const tasks = new Map<string, { abort: AbortController; outcome: Promise<string> }>();
    let usage = 1;
    const queue = async (id: string): Promise<void> => {
      const abort = new AbortController();
      const queued = reached([id], 'QUEUED');
      tasks.set(id, { abort, outcome: code(limiter.submit(() => 1, { signal: abort.signal, taskId: id })) });
      model.take(now - start, 1, id);
      usage++;
      await queued;
    };
    /** Gives `id` back; answers how many ms of the bucket came back. */
    const giveBack = async (id: string): Promise<number> => {
      const before = (await limiter.peek()).resetAfterMs;
      const task = tasks.get(id) as { abort: AbortController; outcome: Promise<string> };
      task.abort.abort();
      expect(await task.outcome).toBe('ABORTED');
      model.giveBack(now - start, id);
      // Its quota and its rate units go back in one call: the quota says when it has landed.
      usage--;
      await eventually(async () => (await manager.getSubscription('u'))?.usage === usage, `${id}'s refund landed`);
      const after = (await limiter.peek()).resetAfterMs;
      expect({ id, full: after }).toEqual({ id, full: Math.max(after, model.peek(now - start).resetAfterMs) });
      return before - after;
    };
    try {
      for (let i = 0; i < 40; i++) await queue(`t${i}`);
      expect(await giveBack('t0')).toBe(1000);
      // 34 refunds: the 33rd folds t0's entry, the 34th t39's (the summary then spans 2 s to 40 s).
      for (let i = 39; i >= 7; i--) await giveBack(`t${i}`);
      now += 2500;
      expect(await giveBack('t1')).toBe(0);
      for (let i = 6; i >= 2; i--) await giveBack(`t${i}`);
      // Everything charged so far is over: the bucket is empty, its log still holds the summary.
      now += 10_000;
      await queue('late');
      expect(await giveBack('late')).toBe(1000);
    } finally {
      release();
      await blocker;
    }
  });
});

describe('a profile change between a charge and its refund', () => {
  // The bucket's ticks changed meaning in between (and back): the queued task's unit was carried
  // over with the bucket, and giving it back may return it or not, but never more than it held.
  for (const path of [['fast'], ['fast', 'slow']] as const) {
    it(`slow -> ${path.join(' -> ')}, then the queued task aborted: its quota comes back, and at most its one unit`, async () => {
      manager.registerProfile('slow', { rate: { limit: 4, intervalMs: 40_000 }, pool: { perUserConcurrency: 1 } });
      manager.registerProfile('fast', { rate: { limit: 8, intervalMs: 40_000, burst: 4 }, pool: { perUserConcurrency: 1 } });
      await manager.subscribe('u', 'slow');
      const limiter = manager.getLimiter('u');
      let release!: () => void;
      const blocker = limiter.submit(() => new Promise<void>((done) => (release = done)));
      const faults: unknown[] = [];
      manager.on('error', (e) => faults.push(e));
      const aborts = [new AbortController(), new AbortController()];
      const queued = reached(['p', 'q'], 'QUEUED');
      const first = code(limiter.submit(() => 1, { signal: aborts[0]!.signal, taskId: 'p' }));
      const outcome = code(limiter.submit(() => 1, { signal: aborts[1]!.signal, taskId: 'q' }));
      await queued;
      try {
        // A refund before the change: the bucket has a log of refunds when its rate changes.
        aborts[0]!.abort();
        expect(await first).toBe('ABORTED');
        await eventually(async () => (await manager.getSubscription('u'))?.usage === 2 && (await limiter.peek()).remaining === 2, "p's quota and unit back");
        for (const name of path) await manager.changeProfile('u', name);
        aborts[1]!.abort();
        expect(await outcome).toBe('ABORTED');
        await eventually(async () => (await manager.getSubscription('u'))?.usage === 1, 'its quota back');
        expect(faults).toEqual([]);
        // The blocker's unit stays in use: 3 units free at most (2 if the task's unit stayed).
        const { remaining } = await limiter.peek();
        expect(remaining).toBeGreaterThanOrEqual(2);
        expect(remaining).toBeLessThanOrEqual(3);
      } finally {
        release();
        await blocker;
      }
    });
  }
});

describe('more refunds than a bucket remembers', () => {
  // 40 tasks admitted and queued behind a blocker, given back one at a time a quarter second
  // apart, in the order of their charges or the reverse: each gives back exactly the part of its
  // slot still ahead, wherever the earlier refunds moved it (past 32 refunds the bucket's log
  // folds its oldest entries; these two orders stay exact). The slot model says how much.
  for (const [order, shared] of [['earliest', undefined], ['latest', undefined], ['earliest', 'pipe']] as const) {
    it(`40 aborted one by one, ${order} charge first: the bucket ends as the slot model says (${shared === undefined ? "the user's own bucket" : 'a shared bucket'})`, async () => {
      manager.registerProfile('wide', { rate: { limit: 1, intervalMs: 1000, burst: 50, ...(shared === undefined ? {} : { shared }) }, pool: { perUserConcurrency: 1 } });
      await manager.subscribe('u', 'wide');
      const limiter = manager.getLimiter('u');
      const start = now;
      const model = new SlotModel(1n, 1_000_000n, 50n);
      let release!: () => void;
      const blocker = limiter.submit(() => new Promise<void>((done) => (release = done)));
      model.take(0, 1);
      const tasks: { id: string; abort: AbortController; outcome: Promise<string> }[] = [];
      const queued = reached(Array.from({ length: 40 }, (_, i) => `t${i}`), 'QUEUED');
      for (let i = 0; i < 40; i++) {
        const id = `t${i}`;
        const abort = new AbortController();
        tasks.push({ id, abort, outcome: code(limiter.submit(() => 1, { signal: abort.signal, taskId: id })) });
        model.take(0, 1, id);
      }
      await queued;
      try {
        while (tasks.length > 0) {
          const task = (order === 'earliest' ? tasks.shift() : tasks.pop()) as (typeof tasks)[number];
          now += 250;
          task.abort.abort();
          expect(await task.outcome).toBe('ABORTED');
          model.giveBack(now - start, task.id);
          const right = model.peek(now - start).remaining;
          await eventually(async () => (await limiter.peek()).remaining === right, `${task.id}: ${right} units free`);
        }
      } finally {
        release();
        await blocker;
      }
    });
  }
});

describe('a retry that never started', () => {
  it('gives back the rate unit its retry took: a task that failed once, retried, and was aborted while queued behind another', async () => {
    manager.registerProfile('rq', { rate: { limit: 5, intervalMs: 3_600_000 }, pool: { perUserConcurrency: 1 }, retry: { attempts: 2, baseMs: 1, maxMs: 1 } });
    await manager.subscribe('rq', 'rq');
    const u = manager.getLimiter('rq');
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    const controller = new AbortController();
    const waiting = reached(['retried'], 'RETRY_WAIT');
    let runs = 0;
    const task = u.submit(() => {
      runs++;
      throw new Error('first attempt');
    }, { signal: controller.signal, taskId: 'retried' });
    const outcome = task.then(() => 'ran', (e: TaskvalveError) => e.code);
    await waiting;
    // While it waits to retry, another task takes the user's one slot: the retry takes its unit and queues.
    const queued = reached(['retried'], 'QUEUED');
    const blocker = u.submit(() => held);
    await queued;
    controller.abort();
    expect(await outcome).toBe('ABORTED');
    release();
    await blocker;
    expect(runs).toBe(1);
    // 5 units: the first attempt's and the blocker's are spent; the retry's came back.
    await eventually(async () => (await u.peek()).remaining === 3, 'the retry\'s unit given back');
  });
});

describe('changing profile keeps the units in use', () => {
  it('4 of 10 units in use move to a bucket of 20 as 4 in use, and to a bucket of 5 as 4 in use (1 left), rounded up, never gaining', async () => {
    manager.registerProfile('ten', { rate: { limit: 10, intervalMs: 1000 } });
    manager.registerProfile('twenty', { rate: { limit: 20, intervalMs: 4000 } });
    manager.registerProfile('five', { rate: { limit: 5, intervalMs: 60_000 } });
    await manager.subscribe('c', 'ten');
    const u = manager.getLimiter('c');
    for (let i = 0; i < 4; i++) expect((await u.check()).allowed).toBe(true);
    expect((await u.peek()).remaining).toBe(6);
    await manager.changeProfile('c', 'twenty');
    expect((await u.peek()).remaining).toBe(16);
    await manager.changeProfile('c', 'five');
    expect((await u.peek()).remaining).toBe(1);
    // Half a unit of the slow bucket later (6 s of its 12 s), still 1: the units in use were rounded up.
    now += 6000;
    expect((await u.peek()).remaining).toBe(1);
    now += 6000;
    expect((await u.peek()).remaining).toBe(2);
    // Back to the fast bucket: 3 units in use there.
    await manager.changeProfile('c', 'ten');
    expect((await u.peek()).remaining).toBe(7);
  });
});

describe('GCRA vectors through check()', () => {
  for (const c of vectors.cases) {
    it(c.name, async () => {
      manager.registerProfile('v', { rate: c.rate });
      await manager.subscribe('v', 'v');
      const limiter = manager.getLimiter('v');
      for (const step of c.steps) {
        now = T0 + step.at;
        const d = await limiter.check(step.cost);
        expect({ at: step.at, allowed: d.allowed, remaining: d.remaining, retryAfterMs: d.retryAfterMs }).toEqual({
          at: step.at,
          allowed: step.allowed,
          remaining: step.remaining,
          retryAfterMs: step.retryAfterMs,
        });
      }
    });
  }
});

describe('refunds given back together', () => {
  it('50 tasks of 5 users admitted and queued behind a running one, all aborted at once: every unit of quota and rate comes back', async () => {
    manager.registerProfile('q', { rate: { limit: 20, intervalMs: 3_600_000 }, quota: { limit: 1000 }, pool: { perUserConcurrency: 1 } });
    const users = ['r0', 'r1', 'r2', 'r3', 'r4'];
    for (const user of users) await manager.subscribe(user, 'q');
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    // Each user's first task runs and holds the user's one slot.
    const blockers = users.map((user) => manager.getLimiter(user).submit(() => held));
    const controller = new AbortController();
    setMaxListeners(100, controller.signal);
    let started = 0;
    const outcomes: Promise<string>[] = [];
    const queued = reached(users.flatMap((user) => Array.from({ length: 10 }, (_, k) => `${user}-${k}`)), 'QUEUED');
    for (const user of users) {
      for (let k = 0; k < 10; k++) {
        const taskId = `${user}-${k}`;
        outcomes.push(manager.getLimiter(user).submit(() => started++, { signal: controller.signal, taskId }).then(() => 'ran', (e: TaskvalveError) => e.code));
      }
    }
    // Every task was admitted (its quota and rate unit taken) and waits for its user's slot.
    await queued;
    controller.abort();
    expect(new Set(await Promise.all(outcomes))).toEqual(new Set(['ABORTED']));
    release();
    await Promise.all(blockers);
    expect(started).toBe(0);
    for (const user of users) {
      // The blocker alone was charged: usage 1, and 19 of the 20 units are left (on Redis a
      // refund lands asynchronously: after a NOSCRIPT reload even after later calls).
      await eventually(async () => (await manager.getSubscription(user))?.usage === 1 && (await manager.getLimiter(user).peek()).remaining === 19, `${user}'s refunds`);
      let allowed = 0;
      while (allowed < 25 && (await manager.getLimiter(user).check()).allowed) allowed++;
      expect({ user, allowed }).toEqual({ user, allowed: 19 });
    }
  });
});

describe('dead letters', () => {
  it('are stored, listed oldest first, bounded per profile, dropped after their retention', async () => {
    manager.registerProfile('d', { rate: { limit: 1000, intervalMs: 1000 }, dlq: { maxEntries: 3, retentionMs: 60_000 } });
    await manager.subscribe('u', 'd');
    for (let i = 0; i < 5; i++) {
      now += 1;
      expect(await code(manager.getLimiter('u').submit(() => {
        throw new Error(`fail ${i}`);
      }))).toBe('TASK_FAILED');
    }
    const list = await manager.dlq.list();
    expect(list.map((e) => e.error.message)).toEqual(['fail 2', 'fail 3', 'fail 4']);
    expect(list[0]).toMatchObject({ userId: 'u', profileName: 'd', attempts: 1, cost: 1, error: { code: 'TASK_FAILED', name: 'Error' } });
    expect(await manager.dlq.get(list[0]!.id)).toMatchObject({ id: list[0]!.id, error: { message: 'fail 2' } });
    expect(await manager.dlq.list({ limit: 1 })).toHaveLength(1);
    expect(await manager.dlq.list({ userId: 'other' })).toEqual([]);
    expect(await manager.dlq.remove(list[0]!.id)).toBe(true);
    expect(await manager.dlq.remove(list[0]!.id)).toBe(false);
    now += 60_000;
    expect(await manager.dlq.list()).toEqual([]);
  });

  it('many tasks failing at once: every letter stored once, under two profiles, each bounded on its own', async () => {
    manager.registerProfile('da', { rate: { limit: 1000, intervalMs: 1000 }, dlq: { maxEntries: 5 } });
    manager.registerProfile('db', { rate: { limit: 1000, intervalMs: 1000 }, dlq: { maxEntries: 100 } });
    await manager.subscribe('ua', 'da');
    await manager.subscribe('ub', 'db');
    const fail = (user: string, message: string): Promise<unknown> =>
      manager.getLimiter(user).submit(() => Promise.reject(new Error(message)));
    const calls: Promise<unknown>[] = [];
    for (let i = 0; i < 40; i++) calls.push(fail(i % 2 === 0 ? 'ua' : 'ub', `m${i}`));
    expect(new Set(await Promise.all(calls.map(code)))).toEqual(new Set(['TASK_FAILED']));
    const a = await manager.dlq.list({ profileName: 'da' });
    const b = await manager.dlq.list({ profileName: 'db' });
    // 'da' keeps its 5 newest of 20; 'db' all 20; none twice.
    expect(a).toHaveLength(5);
    expect(b.map((e) => e.error.message).sort()).toEqual(Array.from({ length: 20 }, (_, k) => `m${2 * k + 1}`).sort());
    expect(new Set([...a, ...b].map((e) => e.id)).size).toBe(25);
    expect((await manager.dlq.list()).length).toBe(25);
  });

  it("a worker task's dead letter keeps its payload as the worker received it (structured clone: Dates, Maps, typed arrays, BigInts, NaN)", async () => {
    const payload = { at: new Date(5), map: new Map([['a', 1]]), set: new Set(['x']), bytes: new Uint8Array([1, 2, 3]), big: 10n, nan: Number.NaN, low: -Infinity, nested: { list: [1, 'two'] } };
    const entry = { ...deadLetter(1, 'basic', now), task: { name: 'job', payload } };
    await store.dlqAdd(entry, { maxEntries: 10, retentionMs: 60_000 }, now);
    const [listed] = await manager.dlq.list();
    expect(listed?.task).toEqual({ name: 'job', payload });
    expect((await manager.dlq.get(entry.id))?.task).toEqual({ name: 'job', payload });
  });

  it("a list of one user's entries: theirs only, oldest first, by profile too; a removed or expired one is gone from it", async () => {
    manager.registerProfile('short', { rate: { limit: 1000, intervalMs: 1000 }, dlq: { retentionMs: 1000 } });
    for (const [user, profile] of [['a', 'basic'], ['b', 'basic'], ['a', 'short'], ['a', 'basic']] as const) {
      await manager.subscribe(user, profile);
      expect(await code(manager.getLimiter(user).submit(() => Promise.reject(new Error(`${user}-${profile}`))))).toBe('TASK_FAILED');
      now += 1;
    }
    const messages = async (query: { userId: string; profileName?: string; limit?: number }): Promise<string[]> => (await manager.dlq.list(query)).map((e) => e.error.message);
    expect(await messages({ userId: 'a' })).toEqual(['a-basic', 'a-short', 'a-basic']);
    expect(await messages({ userId: 'a', limit: 2 })).toEqual(['a-basic', 'a-short']);
    expect(await messages({ userId: 'a', profileName: 'short' })).toEqual(['a-short']);
    expect(await messages({ userId: 'b' })).toEqual(['b-basic']);
    const [first] = await manager.dlq.list({ userId: 'a' });
    expect(await manager.dlq.remove(first!.id)).toBe(true);
    now += 1000; // a-short is past its retention
    expect(await messages({ userId: 'a' })).toEqual(['a-basic']);
    expect(await messages({ userId: 'nobody' })).toEqual([]);
  });

  it('an entry put back after a refused replay is listed once, and one remove takes it away', async () => {
    manager.registerProfile('one', { rate: { limit: 1000, intervalMs: 1000 }, quota: { limit: 1 } });
    await manager.subscribe('u', 'one');
    const failing = manager.getLimiter('u').submit(() => {
      throw new Error('planned');
    });
    expect(await code(failing)).toBe('TASK_FAILED');
    const [entry] = await manager.dlq.list();
    // The quota is spent: the replay is refused and the entry put back.
    expect(await code(manager.dlq.replay(entry!.id))).toBe('QUOTA_EXCEEDED');
    expect((await manager.dlq.list()).map((e) => e.id)).toEqual([entry!.id]);
    expect((await manager.dlq.list({ profileName: 'one' })).map((e) => e.id)).toEqual([entry!.id]);
    expect(await manager.dlq.remove(entry!.id)).toBe(true);
    expect(await manager.dlq.list()).toEqual([]);
  });

  it('an entry put back after a refused replay keeps its retention, counted from its failure', async () => {
    manager.registerProfile('short', { rate: { limit: 1000, intervalMs: 1000 }, dlq: { retentionMs: 1000 } });
    await manager.subscribe('u', 'short');
    const failing = manager.getLimiter('u').submit(() => {
      throw new Error('planned');
    });
    expect(await code(failing)).toBe('TASK_FAILED');
    const [entry] = await manager.dlq.list();
    now += 700;
    await manager.cancelSubscription('u');
    // Refused: the subscription is canceled. The entry is put back, with 300 ms left.
    expect(await code(manager.dlq.replay(entry!.id))).toBe('SUBSCRIPTION_INACTIVE');
    expect((await manager.dlq.get(entry!.id))?.id).toBe(entry!.id);
    now += 301;
    expect(await manager.dlq.get(entry!.id)).toBeUndefined();
    expect(await manager.dlq.list()).toEqual([]);
  });

  it('an entry past its profile retention is never returned by get, list or replay, whatever sits before it', async () => {
    manager.registerProfile('long', { rate: { limit: 1000, intervalMs: 1000 }, dlq: { retentionMs: 3_600_000 } });
    manager.registerProfile('short', { rate: { limit: 1000, intervalMs: 1000 }, dlq: { retentionMs: 1000 } });
    await manager.subscribe('l', 'long');
    await manager.subscribe('s', 'short');
    const fail = (user: string, message: string): Promise<unknown> =>
      manager.getLimiter(user).submit(() => {
        throw new Error(message);
      });
    for (const [user, message] of [['l', 'L1'], ['s', 'S1'], ['l', 'L2'], ['s', 'S2']] as const) {
      expect(await code(fail(user, message))).toBe('TASK_FAILED');
      now += 1;
    }
    const all = await manager.dlq.list();
    expect(all.map((e) => e.error.message)).toEqual(['L1', 'S1', 'L2', 'S2']);
    const s1 = all[1]!.id;
    // S1 failed at T0 + 1 and S2 at T0 + 3: now S1 is past its retention of 1 s, S2 not yet.
    now = T0 + 1001;
    expect(await manager.dlq.get(s1)).toBeUndefined();
    expect((await manager.dlq.list()).map((e) => e.error.message)).toEqual(['L1', 'L2', 'S2']);
    expect((await manager.dlq.list({ profileName: 'short' })).map((e) => e.error.message)).toEqual(['S2']);
    expect((await manager.dlq.list({ limit: 2 })).map((e) => e.error.message)).toEqual(['L1', 'L2']);
    expect(await code(manager.dlq.replay(s1))).toBe('INVALID_ARGUMENT');
    now += 10;
    expect((await manager.dlq.list({ userId: 's' })).map((e) => e.error.message)).toEqual([]);
    expect((await manager.dlq.list({ userId: 'l', limit: 5 })).map((e) => e.error.message)).toEqual(['L1', 'L2']);
  });
});
});
}
