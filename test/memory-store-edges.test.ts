// The embedded store (MemoryStore) at its edges, through the Manager on a fake clock (vitest's
// fake timers drive both the clock and the timers): the tick epoch re-based after a long
// uptime, a clock that starts at 0 or steps back, profile changes, units and usage given back,
// retries of a task whose user changed, the sweep of ended subscriptions; and the store on its
// own (no manager), through its Store interface.
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { Manager, MemoryStore, type Limiter, type ManagerOptions, type SubscriptionEvent, type TaskEvent, type TaskvalveError } from '../src/index.js';
import { resolveProfile } from '../src/profile.js';
import { AdmitMode, Verdict, type RateReceipt, type SubscribeInput } from '../src/store/store.js';
import { convertTat, makeRate } from '../src/rate/gcra.js';
import { quiet, rejection } from './helpers.js';

const T0 = Date.UTC(2026, 5, 1);
const HOUR = 3_600_000;
const DAY = 24 * HOUR;
/** 999,983 per second counts in ticks of 1/999,983 µs: the store re-bases its tick epoch every ~37.5 minutes. */
const FINE = { rate: { limit: 999_983, intervalMs: 1000 } };

let manager: Manager | undefined;
let errors: Error[];

/** A manager on the fake clock (Date.now under fake timers) unless `options` gives another. */
function start(options: ManagerOptions = {}): Manager {
  const m = new Manager({ clock: () => Date.now(), ...options });
  errors = [];
  m.on('error', (error) => errors.push(error));
  manager = m;
  return m;
}

/** Moves the clock on without firing a timer (one that has come due fires at the next advance). */
function jump(ms: number): void {
  vi.setSystemTime(Date.now() + ms);
}

/** Resolves at the task's first move to `state` (listen before submitting it). */
function reaches(m: Manager, id: string, state: TaskEvent['to']): Promise<TaskEvent> {
  return new Promise((resolve) => m.on('task', (e) => e.id === id && e.to === state && resolve(e)));
}

/** Holds the user's one slot (perUserConcurrency 1) with a running task until released. */
function hold(u: Limiter): { release: () => void; ended: Promise<unknown> } {
  let release!: () => void;
  const ended = quiet(u.submit(() => new Promise<void>((done) => (release = done))));
  return { release: () => release(), ended };
}

/**
 * Submits task `id`, admitted at once and queued behind the running one (its units taken);
 * resolves once it is queued, with a way to give it back (abort it, refunds landed).
 */
async function queued(m: Manager, u: Limiter, id: string): Promise<{ giveBack: () => Promise<void> }> {
  const abort = new AbortController();
  const reached = reaches(m, id, 'QUEUED');
  const outcome = u.submit(() => id, { signal: abort.signal, taskId: id }).then(
    () => 'ran',
    (error: TaskvalveError) => error.code,
  );
  await reached;
  return {
    async giveBack() {
      abort.abort();
      expect(await outcome).toBe('ABORTED');
      await vi.advanceTimersByTimeAsync(0); // the units go back in a microtask
    },
  };
}

/** The deleted events, in order. */
function deletions(m: Manager): string[] {
  const ids: string[] = [];
  m.on('subscription', (e: SubscriptionEvent) => {
    if (e.event === 'deleted') ids.push(e.userId);
  });
  return ids;
}

/** A store's subscribe input: no dates, no quota, unless `input` gives them. */
function input(fields: Partial<SubscribeInput> = {}): SubscribeInput {
  return { startsAt: undefined, endsAt: undefined, durationMs: undefined, quota: undefined, resetUsage: false, ...fields };
}

beforeEach(() => {
  vi.useFakeTimers({ now: T0 });
});

afterEach(async () => {
  const closing = manager?.close({ drain: false, timeoutMs: 0 });
  await vi.runAllTimersAsync();
  await closing;
  manager = undefined;
  vi.useRealTimers();
});

describe('the tick epoch re-based after a long uptime', () => {
  it("a user's own bucket keeps exactly what is in use across a re-base", async () => {
    const m = start();
    m.registerProfile('fine', FINE);
    m.registerProfile('daily', { rate: { limit: 1, intervalMs: DAY } });
    await m.subscribe('u', 'daily');
    const u = m.getLimiter('u');
    expect((await u.check()).allowed).toBe(true);
    jump(HOUR); // past a re-base
    expect(await u.check()).toMatchObject({ allowed: false, retryAfterMs: DAY - HOUR });
  });

  it('a shared bucket whose ticks are finer than a microsecond keeps exactly what is in use across a re-base', async () => {
    const m = start();
    m.registerProfile('fine', FINE);
    // 7 per day: one unit every 12,342,857.14 ms, counted in ticks of 1/7 µs.
    m.registerProfile('pooled', { rate: { limit: 7, intervalMs: DAY, burst: 1, shared: 'pool' } });
    await m.subscribe('u', 'pooled');
    const u = m.getLimiter('u');
    expect((await u.check()).allowed).toBe(true);
    jump(HOUR); // past a re-base
    expect(await u.check()).toMatchObject({ allowed: false, retryAfterMs: Math.ceil(DAY / 7 - HOUR) });
  });
});

describe('the clock', () => {
  it('a rate counted in ticks finer than a microsecond stays exact after a year, whichever profile was defined last', async () => {
    const m = start();
    m.registerProfile('fine', FINE);
    m.registerProfile('seconds', { rate: { limit: 1, intervalMs: 1000 } });
    await m.subscribe('f', 'fine');
    await m.subscribe('s', 'seconds');
    const f = m.getLimiter('f');
    expect((await f.check()).allowed).toBe(true);
    jump(365 * DAY);
    const costs = [1, 2, 3, 4, 5, 7, 11, 13, 1000];
    const left: number[] = [];
    for (const cost of costs) {
      left.push((await f.check(cost)).remaining);
      jump(2000); // full again
    }
    expect(left).toEqual(costs.map((cost) => 999_983 - cost));
    expect(await f.check(999_983)).toMatchObject({ allowed: true, remaining: 0, resetAfterMs: 1000 });
  });

  it('a clock that starts at 0 (the epoch) runs on like any other', async () => {
    let now = 0;
    const m = start({ clock: () => now });
    m.registerProfile('seconds', { rate: { limit: 1, intervalMs: 1000 } });
    await m.subscribe('u', 'seconds');
    const u = m.getLimiter('u');
    expect((await u.check()).allowed).toBe(true);
    expect((await u.check()).allowed).toBe(false);
    now = 1000;
    expect((await u.check()).allowed).toBe(true);
  });

  it('a clock stepping back (a time correction) takes no capacity away', async () => {
    let now = T0;
    const m = start({ clock: () => now });
    m.registerProfile('seconds', { rate: { limit: 1, intervalMs: 1000 } });
    await m.subscribe('a', 'seconds');
    await m.subscribe('b', 'seconds', { startsAt: T0 - HOUR });
    expect((await m.getLimiter('a').check()).allowed).toBe(true);
    now = T0 - 5000;
    // b has used nothing: its full bucket admits at once.
    expect(await m.getLimiter('b').check()).toMatchObject({ allowed: true, remaining: 0 });
  });
});

describe('units given back around a re-base', () => {
  it("a unit given back after 2041-05-10 comes back: ticks count from the store's first decision, not from 1970", async () => {
    vi.setSystemTime(Date.UTC(2041, 4, 10, 10)); // 2 h before 2^51 µs since 1970
    const m = start();
    m.registerProfile('daily', { rate: { limit: 1, intervalMs: DAY, burst: 2 }, pool: { perUserConcurrency: 1 } });
    await m.subscribe('u', 'daily');
    const u = m.getLimiter('u');
    const running = hold(u);
    const a = await queued(m, u, 'a');
    jump(4 * HOUR);
    await a.giveBack();
    expect((await u.peek()).remaining).toBe(1);
    running.release();
    await running.ended;
  });

  it('a unit given back at the very microsecond the tick count reaches 2^51 comes back (the epoch moves only past it)', async () => {
    let now = T0;
    const m = start({ clock: () => now });
    // 524,288 per 999 ms counts in ticks of 1/65,536 µs: 2^51 of them in 2^35 µs (9.5 h).
    m.registerProfile('binary', { rate: { limit: 524_288, intervalMs: 999 } });
    m.registerProfile('daily', { rate: { limit: 1, intervalMs: DAY, burst: 2 }, pool: { perUserConcurrency: 1 } });
    await m.subscribe('u', 'daily');
    const u = m.getLimiter('u');
    const running = hold(u); // the store's first decision: its tick epoch
    const a = await queued(m, u, 'a');
    now = T0 + 2 ** 35 / 1000;
    await a.giveBack();
    expect((await u.peek()).remaining).toBe(1);
    running.release();
    await running.ended;
  });
});

describe('a receipt from before a re-base', () => {
  it('gives nothing back from units charged after it: a task queued before the re-base, aborted after, leaves the later charges alone', async () => {
    const m = start();
    m.registerProfile('fine', FINE);
    m.registerProfile('hourly', { rate: { limit: 1, intervalMs: HOUR, burst: 2 }, pool: { perUserConcurrency: 1 } });
    await m.subscribe('u', 'hourly');
    const u = m.getLimiter('u');
    const running = hold(u);
    const a = await queued(m, u, 'a'); // its slot ends 2 h from now
    jump(3 * HOUR); // past several re-bases; the bucket refilled
    expect((await u.check(2)).allowed).toBe(true); // both units in use again, by new charges
    await a.giveBack();
    expect((await u.check(1)).allowed).toBe(false);
    running.release();
    await running.ended;
  });
});

describe('decisions while a task waits for its turn', () => {
  it('a check refused while a task waits says to retry after that task has had its turn, even once the bucket has refilled', async () => {
    const m = start();
    m.registerProfile('one', { rate: { limit: 1, intervalMs: 1000 } });
    await m.subscribe('u', 'one');
    const u = m.getLimiter('u');
    expect((await u.check()).allowed).toBe(true);
    const waiting = reaches(m, 'w', 'WAITING_RATE');
    quiet(u.submit(() => 'done', { taskId: 'w' }));
    await waiting;
    jump(10_000); // the bucket is full again; the task's turn (a timer) has not come yet
    // The task takes the one unit at its turn: the next one conforms a second later.
    expect(await u.check()).toMatchObject({ allowed: false, retryAfterMs: 1000 });
  });
});

describe('profile changes', () => {
  it('the units in use are carried over to a rate counted in ticks finer than a microsecond', async () => {
    const m = start();
    m.registerProfile('tens', { rate: { limit: 10, intervalMs: 1000 } });
    m.registerProfile('thirds', { rate: { limit: 3, intervalMs: 1000 } });
    await m.subscribe('u', 'tens');
    const u = m.getLimiter('u');
    expect((await u.check(10)).allowed).toBe(true);
    jump(100); // 9 units still in use
    await m.changeProfile('u', 'thirds');
    // 9 units in use at 3 per second with room for 3: the next one conforms once 7 have gone, in 2333.3 ms.
    expect(await u.check()).toMatchObject({ allowed: false, remaining: 0, retryAfterMs: 2334 });
  });

  it('the units in use are carried over from a rate counted in ticks finer than a microsecond', async () => {
    const m = start();
    m.registerProfile('thirds', { rate: { limit: 3, intervalMs: 1000 } });
    m.registerProfile('tens', { rate: { limit: 10, intervalMs: 1000 } });
    await m.subscribe('u', 'thirds');
    const u = m.getLimiter('u');
    expect((await u.check(3)).allowed).toBe(true);
    jump(100); // 2.7 units still in use
    await m.changeProfile('u', 'tens');
    // 2.7 units in use at 10 per second with room for 10: 7 more fit, and the next conforms once 0.7 has gone, in 70 ms.
    expect(await u.check(7)).toMatchObject({ allowed: true, remaining: 0 });
    expect(await u.check()).toMatchObject({ allowed: false, retryAfterMs: 70 });
  });

  it('convertTat keeps the units in use, rounded up to a whole tick of the new rate', () => {
    const perThree = makeRate(1, 3000, 5);
    const perOne = makeRate(1, 1000, 5);
    // 5,999,000 µs of a 1-per-3-s bucket in use at 1 ms: 1,999,666.7 µs of a 1-per-second one, rounded up.
    expect(convertTat(6_000_000, 1000, perThree, perOne)).toBe(1000 + 1_999_667);
  });

  it("a user moved to a shared-bucket profile and back finds the own bucket full (it was left when the shared one was joined)", async () => {
    const m = start();
    m.registerProfile('solo', { rate: { limit: 1, intervalMs: 60_000, burst: 2 } });
    m.registerProfile('pooled', { rate: { limit: 1, intervalMs: 60_000, burst: 2, shared: 'pool' } });
    await m.subscribe('u', 'solo');
    const u = m.getLimiter('u');
    expect((await u.check(2)).allowed).toBe(true);
    await m.changeProfile('u', 'pooled');
    await m.changeProfile('u', 'solo');
    expect(await u.check(2)).toMatchObject({ allowed: true, remaining: 0 });
  });
});

describe('shared buckets', () => {
  it('a new subscriber to a shared-bucket profile does not refill the bucket', async () => {
    const m = start();
    m.registerProfile('pooled', { rate: { limit: 1, intervalMs: 60_000, shared: 'pool' } });
    await m.subscribe('a', 'pooled');
    expect((await m.getLimiter('a').check()).allowed).toBe(true);
    await m.subscribe('b', 'pooled');
    expect((await m.getLimiter('a').check()).allowed).toBe(false);
    expect((await m.getLimiter('b').check()).allowed).toBe(false);
  });
});

describe('subscriptions', () => {
  it('canceling keeps the per-user quota', async () => {
    const m = start();
    m.registerProfile('p', { rate: { limit: 10, intervalMs: 1000 }, quota: { limit: 10 } });
    await m.subscribe('u', 'p', { quota: 5 });
    expect(await m.cancelSubscription('u')).toMatchObject({ status: 'canceled', quota: 5, quotaLimit: 5 });
  });

  it('more than a thousand users subscribe to one profile', async () => {
    const m = start();
    m.registerProfile('p', { rate: { limit: 10, intervalMs: 1000 } });
    for (let i = 0; i < 1100; i++) await m.subscribe(`u${i}`, 'p');
    expect(await m.getSubscription('u1099')).toMatchObject({ status: 'active', profileName: 'p' });
  });

  it.each([1, 2])('a task canceled after %i usage resets gives nothing back of the usage counted since', async (resets) => {
    const m = start();
    m.registerProfile('p', { rate: { limit: 100, intervalMs: 1000 }, quota: { limit: 10 }, pool: { perUserConcurrency: 1 } });
    await m.subscribe('u', 'p');
    const u = m.getLimiter('u');
    const running = hold(u);
    const a = await queued(m, u, 'a');
    for (let i = 0; i < resets; i++) expect(await m.resetUsage('u')).toMatchObject({ usage: 0 });
    expect((await u.check()).allowed).toBe(true);
    await a.giveBack();
    expect(await m.getSubscription('u')).toMatchObject({ usage: 1 });
    running.release();
    await running.ended;
  });

  it('a task queued while its quota period rolls over 2^18 times gives nothing back to the period it is aborted in (the usage token wraps after 2^19)', async () => {
    const m = start();
    m.registerProfile('p', { rate: { limit: 1_000_000, intervalMs: 1000 }, quota: { limit: 1_000_000_000, periodMs: 1000 }, pool: { perUserConcurrency: 1 } });
    await m.subscribe('u', 'p');
    const u = m.getLimiter('u');
    const running = hold(u);
    const a = await queued(m, u, 'a');
    // Each check after a period's end starts a new period (a new usage generation).
    for (let i = 0; i < 2 ** 18; i++) {
      jump(1000);
      await u.check();
    }
    await u.check();
    expect(await m.getSubscription('u')).toMatchObject({ usage: 2 });
    await a.giveBack();
    expect(await m.getSubscription('u')).toMatchObject({ usage: 2 });
    running.release();
    await running.ended;
  });
});

describe('the sweep of ended subscriptions', () => {
  it('passes over a user deleted by hand and deletes the others', async () => {
    const m = start({ endedRetentionMs: 0 });
    const deleted = deletions(m);
    m.registerProfile('p', { rate: { limit: 10, intervalMs: 1000 } });
    await m.subscribe('a', 'p', { durationMs: 1000 });
    await m.subscribe('b', 'p', { durationMs: 1000 });
    await m.deleteSubscription('a');
    await vi.advanceTimersByTimeAsync(2000);
    expect(deleted).toEqual(['a', 'b']);
    expect(errors).toEqual([]);
  });

  it('a round with more due than one batch (1,000) goes on at once, up to the subscriptions ending exactly at the cutoff', async () => {
    const m = start({ endedRetentionMs: 0 }); // a round each second
    const deleted = deletions(m);
    m.registerProfile('p', { rate: { limit: 10, intervalMs: 1000 } });
    for (let i = 0; i < 1001; i++) await m.subscribe(`u${i}`, 'p', { durationMs: 1000 });
    await vi.advanceTimersByTimeAsync(1000); // the round at 1 s: every end is its cutoff
    await vi.advanceTimersByTimeAsync(1); // its second batch, after a turn of the event loop (the next round is at 2 s)
    expect(deleted).toHaveLength(1001);
  });

  it('a subscription is deleted its retention after it was first canceled (canceling again changes nothing)', async () => {
    const m = start({ endedRetentionMs: 60_000 }); // a round each minute
    const deleted = deletions(m);
    m.registerProfile('p', { rate: { limit: 10, intervalMs: 1000 } });
    await m.subscribe('first', 'p');
    await vi.advanceTimersByTimeAsync(5000);
    await m.subscribe('u', 'p');
    await m.cancelSubscription('u'); // at 5 s: due at 65 s
    await vi.advanceTimersByTimeAsync(65_000);
    await m.cancelSubscription('u'); // at 70 s
    expect(deleted).toEqual([]);
    await vi.advanceTimersByTimeAsync(50_000); // the round at 120 s
    expect(deleted).toEqual(['u']);
  });
});

describe('refusals and decisions', () => {
  it('a refused check tells when the bucket is full again, counted from now', async () => {
    const m = start();
    m.registerProfile('one', { rate: { limit: 1, intervalMs: 1000 } });
    await m.subscribe('u', 'one');
    const u = m.getLimiter('u');
    expect((await u.check()).allowed).toBe(true);
    jump(400);
    expect(await u.check()).toMatchObject({ allowed: false, remaining: 0, retryAfterMs: 600, resetAfterMs: 600 });
  });

  it('a check allowed while a task waits counts the units that task reserved', async () => {
    const m = start();
    m.registerProfile('two', { rate: { limit: 1, intervalMs: 1000, burst: 2 } });
    await m.subscribe('u', 'two');
    const u = m.getLimiter('u');
    expect((await u.check(2)).allowed).toBe(true);
    const waiting = reaches(m, 'w', 'WAITING_RATE');
    quiet(u.submit(() => 'done', { taskId: 'w' }));
    await waiting;
    jump(2000); // both units back; the task's turn (a timer) has not come yet
    // This unit and the task's fit together: none left, full again in 2 s.
    expect(await u.check()).toMatchObject({ allowed: true, remaining: 0, resetAfterMs: 2000 });
  });

  it("peek tells the quota limit in force: the profile's, or the user's own", async () => {
    const m = start();
    m.registerProfile('p', { rate: { limit: 10, intervalMs: 1000 }, quota: { limit: 10 } });
    await m.subscribe('a', 'p');
    await m.subscribe('b', 'p', { quota: 5 });
    expect(await m.getLimiter('a').peek()).toMatchObject({ quotaLimit: 10 });
    expect(await m.getLimiter('b').peek()).toMatchObject({ quotaLimit: 5 });
  });

  it('an expired subscription is refused with the time it ended', async () => {
    const m = start();
    m.registerProfile('p', { rate: { limit: 10, intervalMs: 1000 } });
    await m.subscribe('u', 'p', { durationMs: 1000 });
    jump(5000);
    const error = await rejection(m.getLimiter('u').check());
    expect(error.code).toBe('SUBSCRIPTION_EXPIRED');
    expect(error.message).toContain(new Date(T0 + 1000).toISOString());
  });

  it('a lifetime quota refusal names no time to retry, even for a subscription moved to start earlier', async () => {
    const m = start();
    m.registerProfile('life', { rate: { limit: 10, intervalMs: 1000 }, quota: { limit: 1 } });
    await m.subscribe('u', 'life', { startsAt: T0 + HOUR });
    await m.subscribe('u', 'life', { startsAt: T0 });
    const u = m.getLimiter('u');
    expect((await u.check()).allowed).toBe(true);
    const error = await rejection(u.check());
    expect(error.code).toBe('QUOTA_EXCEEDED');
    expect(error.retryAfterMs).toBeUndefined();
    expect(error.refusal?.quotaResetAfterMs).toBeNull();
  });
});

describe('subscribing', () => {
  it('a subscription that would end as it starts is refused, naming both times', async () => {
    const m = start();
    m.registerProfile('p', { rate: { limit: 10, intervalMs: 1000 } });
    const at = new Date(T0 + HOUR);
    const error = await rejection(m.subscribe('u', 'p', { startsAt: at, endsAt: at }));
    expect(error.code).toBe('INVALID_ARGUMENT');
    expect(error.message).toBe(`endsAt (${at.toISOString()}) must be after startsAt (${at.toISOString()})`);
    expect(await m.getSubscription('u')).toBeUndefined();
  });

  it("subscribing again without a quota returns the user to the profile's", async () => {
    const m = start();
    m.registerProfile('p', { rate: { limit: 10, intervalMs: 1000 }, quota: { limit: 10 } });
    await m.subscribe('u', 'p', { quota: 5 });
    expect(await m.subscribe('u', 'p')).toMatchObject({ quota: null, quotaLimit: 10 });
  });
});

describe('units given back', () => {
  it('a unit given back after the user changed to the same profile again comes back', async () => {
    const m = start();
    m.registerProfile('slow', { rate: { limit: 1, intervalMs: 60_000, burst: 3 }, pool: { perUserConcurrency: 1 } });
    await m.subscribe('u', 'slow');
    const u = m.getLimiter('u');
    const running = hold(u);
    const a = await queued(m, u, 'a');
    const b = await queued(m, u, 'b');
    await b.giveBack();
    expect((await u.peek()).remaining).toBe(1);
    await m.changeProfile('u', 'slow'); // no change
    await a.giveBack();
    expect((await u.peek()).remaining).toBe(2);
    running.release();
    await running.ended;
  });

  it('a user deleted while tasks wait: they end SUBSCRIPTION_INACTIVE and nothing faults', async () => {
    const m = start();
    m.registerProfile('p', { rate: { limit: 10, intervalMs: 1000 }, quota: { limit: 10 }, pool: { perUserConcurrency: 1 } });
    await m.subscribe('u', 'p');
    const u = m.getLimiter('u');
    const running = hold(u);
    const queuedTask = reaches(m, 'a', 'QUEUED');
    const a = rejection(u.submit(() => 'a', { taskId: 'a' }));
    await queuedTask;
    await m.deleteSubscription('u');
    expect((await a).code).toBe('SUBSCRIPTION_INACTIVE');
    await vi.advanceTimersByTimeAsync(0);
    expect(errors).toEqual([]);
    running.release();
    await running.ended;
  });
});

describe('retries of a task whose user changed while it ran', () => {
  /** Submits task `id` to u: its first attempt runs `during`, then fails; its retry resolves 'retried'. */
  function flaky(u: Limiter, id: string, during: () => Promise<unknown>, cost = 1): Promise<string> {
    let attempts = 0;
    return u
      .submit(
        async () => {
          if (attempts++ > 0) return 'retried';
          await during();
          throw new Error('first attempt fails');
        },
        { taskId: id, cost },
      )
      .then(
        (value) => value as string,
        (error: TaskvalveError) => error.code,
      );
  }

  it("a retry after the user was deleted and subscribed again takes its unit from the new subscription's bucket", async () => {
    const m = start();
    m.registerProfile('slow', { rate: { limit: 1, intervalMs: 60_000 }, retry: { attempts: 2, baseMs: 1000 } });
    await m.subscribe('u', 'slow');
    const task = flaky(m.getLimiter('u'), 't', async () => {
      await m.deleteSubscription('u');
      await m.subscribe('u', 'slow');
    });
    await vi.advanceTimersByTimeAsync(1000);
    expect(await task).toBe('retried');
    expect(await m.getLimiter('u').check()).toMatchObject({ allowed: false, retryAfterMs: 60_000 });
  });

  it('a retry after the user was deleted still runs', async () => {
    const m = start();
    m.registerProfile('slow', { rate: { limit: 1, intervalMs: 60_000 }, retry: { attempts: 2, baseMs: 1000 } });
    await m.subscribe('u', 'slow');
    const task = flaky(m.getLimiter('u'), 't', () => m.deleteSubscription('u'));
    await vi.advanceTimersByTimeAsync(1000);
    expect(await task).toBe('retried');
    expect(errors).toEqual([]);
  });

  it('a retry whose cost no longer fits the burst of the profile the user moved to ends INVALID_ARGUMENT, without waiting', async () => {
    const m = start();
    m.registerProfile('wide', { rate: { limit: 10, intervalMs: 1000, burst: 5 }, retry: { attempts: 2, baseMs: 1000 } });
    m.registerProfile('narrow', { rate: { limit: 10, intervalMs: 1000, burst: 2 } });
    await m.subscribe('u', 'wide');
    const moves: string[] = [];
    m.on('task', (e) => e.id === 't' && moves.push(e.to));
    const task = flaky(m.getLimiter('u'), 't', () => m.changeProfile('u', 'narrow'), 3);
    await vi.advanceTimersByTimeAsync(1000);
    expect(moves.slice(moves.indexOf('RETRY_WAIT'))).toEqual(['RETRY_WAIT', 'CANCELED']);
    expect(await task).toBe('INVALID_ARGUMENT');
  });
});

describe('the tick epoch, late', () => {
  it('a charge of all units but one leaves exactly one, 160 hours after the first decision, on a rate counted in ticks of 1/15,621 µs', async () => {
    const m = start();
    // 999,744 per second (64 x 15,621) counts in ticks of 1/15,621 µs, 15,625 ticks a unit: an odd
    // charge's ticks are odd, and past 2^53 (160 h of ticks) a double rounds them to even.
    m.registerProfile('fine', { rate: { limit: 999_744, intervalMs: 1000 } });
    await m.subscribe('u', 'fine');
    const u = m.getLimiter('u');
    expect((await u.check()).allowed).toBe(true); // the store's first decision: its tick epoch
    jump(576_608_364); // 160.2 h: just short of 2^53 ticks since the first decision
    expect(await u.check(999_743)).toMatchObject({ allowed: true, remaining: 1 });
  });
});

describe('quota periods', () => {
  it('a user moved from a lifetime quota to a daily one has the usage reset a day after the subscription started', async () => {
    const m = start();
    m.registerProfile('life', { rate: { limit: 10, intervalMs: 1000 }, quota: { limit: 5 } });
    m.registerProfile('daily', { rate: { limit: 10, intervalMs: 1000 }, quota: { limit: 5, periodMs: DAY } });
    await m.subscribe('u', 'life');
    expect((await m.getLimiter('u').check(2)).allowed).toBe(true);
    jump(HOUR);
    expect(await m.changeProfile('u', 'daily')).toMatchObject({ usage: 2, periodStartedAt: new Date(T0) });
    jump(DAY - HOUR);
    expect(await m.getSubscription('u')).toMatchObject({ usage: 0, periodStartedAt: new Date(T0 + DAY) });
  });
});

describe('units given back after a profile change', () => {
  it('a unit charged before the user changed profile and back gives nothing back, once the bucket has had a unit given back', async () => {
    const m = start();
    m.registerProfile('thirds', { rate: { limit: 3, intervalMs: 1000 }, pool: { perUserConcurrency: 1 } });
    m.registerProfile('tens', { rate: { limit: 10, intervalMs: 1000 } });
    await m.subscribe('first', 'thirds');
    expect((await m.getLimiter('first').check()).allowed).toBe(true); // the store's first decision: its tick epoch
    jump(HOUR);
    await m.subscribe('u', 'thirds');
    const u = m.getLimiter('u');
    const running = hold(u);
    const a = await queued(m, u, 'a');
    await a.giveBack(); // the bucket's first unit given back
    const b = await queued(m, u, 'b');
    await m.changeProfile('u', 'tens');
    await m.changeProfile('u', 'thirds');
    await b.giveBack();
    expect((await u.peek()).remaining).toBe(1);
    running.release();
    await running.ended;
  });
});

describe('the MemoryStore on its own', () => {
  const T = T0;
  const plain = resolveProfile('plain', { rate: { limit: 10, intervalMs: 1000 } });
  const other = resolveProfile('other', { rate: { limit: 10, intervalMs: 1000 } });

  it('marks a subscription past its end expired before any manager is attached', () => {
    const store = new MemoryStore();
    store.subscribe('u', plain, input({ durationMs: 1000 }), T);
    expect(store.getSubscription('u', T + 2000)).toMatchObject({ status: 'expired' });
  });

  it('peek without the reservations of waiting tasks tells the bucket as it is', () => {
    const store = new MemoryStore();
    store.subscribe('u', plain, input(), T);
    expect(store.peek('u', T)).toMatchObject({ remaining: 10, retryAfterMs: 0 });
  });

  it('a sweep of one subscription at most takes the one that ended, however many never end', () => {
    const store = new MemoryStore();
    for (let i = 0; i < 3; i++) store.subscribe(`forever${i}`, plain, input(), T);
    store.subscribe('ended', plain, input({ durationMs: 1000 }), T);
    expect(store.sweepEnded(T + 2000, 0, 1)).toEqual({ deleted: [{ userId: 'ended', profileName: 'plain' }], more: false });
  });

  it("a refund of a deleted subscription's charge changes nothing on the user's next subscription, however many others subscribed in between", () => {
    const store = new MemoryStore();
    store.defineProfile(plain);
    for (const between of [0, 1, 2, 3]) {
      const user = `u${between}`;
      store.subscribe(user, plain, input(), T);
      const { period } = store.admit(user, 1, AdmitMode.NOW, new Map(), T);
      store.deleteSubscription(user, T);
      for (let i = 0; i < between; i++) store.subscribe(`x${between}-${i}`, plain, input(), T);
      store.subscribe(user, plain, input(), T);
      expect(store.admit(user, 1, AdmitMode.NOW, new Map(), T).verdict).toBe(Verdict.ALLOWED);
      store.refund(user, 1, period, T);
      expect(store.getSubscription(user, T)).toMatchObject({ usage: 1 });
    }
  });

  it('a user subscribed and deleted 2^19 times (every new record a usage generation of its own) is then canceled like any other', () => {
    const store = new MemoryStore();
    store.defineProfile(plain);
    store.defineProfile(other);
    for (let i = 0; i < 2 ** 19; i++) {
      store.subscribe('u', other, input(), T);
      store.deleteSubscription('u', T);
    }
    store.subscribe('u', other, input(), T);
    expect(store.cancelSubscription('u', T)).toMatchObject({ status: 'canceled', profileName: 'other' });
  });
});

describe('receipts across profile changes and usage resets', () => {
  it('a unit charged before a change to another profile gives nothing back to the new profile\'s bucket', async () => {
    const m = start();
    m.registerProfile('tens', { rate: { limit: 10, intervalMs: 1000 }, pool: { perUserConcurrency: 1 } });
    m.registerProfile('slow', { rate: { limit: 1, intervalMs: 60_000, burst: 3 } });
    await m.subscribe('u', 'tens');
    const u = m.getLimiter('u');
    const running = hold(u);
    const a = await queued(m, u, 'a');
    await m.changeProfile('u', 'slow'); // 2 units in use: full again in 2 minutes
    await a.giveBack();
    expect(await u.peek()).toMatchObject({ remaining: 1, resetAfterMs: 120_000 });
    running.release();
    await running.ended;
  });

  it('a unit given back after the user moved to another profile on the same shared bucket comes back to that bucket', async () => {
    const m = start();
    const rate = { limit: 1, intervalMs: 60_000, burst: 3, shared: 'pool' };
    m.registerProfile('basic', { rate, pool: { perUserConcurrency: 1 } });
    m.registerProfile('plus', { rate, pool: { perUserConcurrency: 1 } });
    await m.subscribe('u', 'basic');
    const u = m.getLimiter('u');
    const running = hold(u);
    const a = await queued(m, u, 'a');
    await m.changeProfile('u', 'plus');
    await a.giveBack();
    expect(await u.peek()).toMatchObject({ remaining: 2, resetAfterMs: 60_000 });
    running.release();
    await running.ended;
  });

  it('a unit given back after a usage reset still comes back to the bucket', async () => {
    const m = start();
    m.registerProfile('slow', { rate: { limit: 1, intervalMs: 60_000, burst: 3 }, quota: { limit: 10 }, pool: { perUserConcurrency: 1 } });
    await m.subscribe('u', 'slow');
    const u = m.getLimiter('u');
    const running = hold(u);
    const a = await queued(m, u, 'a');
    await m.resetUsage('u');
    await a.giveBack();
    expect(await u.peek()).toMatchObject({ remaining: 2, resetAfterMs: 60_000 });
    running.release();
    await running.ended;
  });
});

describe('the MemoryStore on its own, over many re-bases', () => {
  it('a receipt taken under another profile 1,024 re-bases ago gives nothing back', () => {
    const store = new MemoryStore();
    const glacial = resolveProfile('glacial', { rate: { limit: 1, intervalMs: 60 * DAY, burst: 2 } });
    const monthly = resolveProfile('monthly', { rate: { limit: 1, intervalMs: 30 * DAY, burst: 2 } });
    const fine = resolveProfile('fine', FINE);
    for (const profile of [glacial, monthly, fine]) store.defineProfile(profile);
    let now = T0;
    store.subscribe('u', monthly, input(), now);
    store.subscribe('f', fine, input(), now);
    const receipt: { value: RateReceipt | undefined } = { value: undefined };
    expect(store.take('u', 1, now, undefined, receipt)).toBe(0);
    store.changeProfile('u', glacial, now); // the unit in use: 60 days of the new rate
    const step = 38 * 60_000; // past a re-base for the fine rate's ticks
    for (let i = 0; i < 1024; i++) {
      now += step;
      expect(store.take('f', 1, now)).toBe(0);
    }
    store.refundRate('u', 1, receipt.value as RateReceipt, now);
    expect(store.peek('u', now)).toMatchObject({ remaining: 1, resetAfterMs: 60 * DAY - 1024 * step });
  });
});
