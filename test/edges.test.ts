// Guarantees at the edges of the embedded pipeline, through the public API on the MemoryStore:
// hostile results, replay once, long delays, inline timeouts, refusals that charge nothing,
// async means async. Fake clock throughout.
import { Redis } from 'ioredis';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { Manager, RedisStore, TaskvalveError, type TaskContext } from '../src/index.js';
import { gate, rejection, thrown, track, quiet } from './helpers.js';
import { scrape } from './support/scrape.js';

let manager: Manager;
let t0: number;
const since = () => Date.now() - t0;
const DAY = 24 * 3_600_000;

beforeEach(() => {
  vi.useFakeTimers();
  t0 = Date.now();
  manager = new Manager({ clock: () => Date.now() });
});

afterEach(async () => {
  const closing = manager.close({ drain: false, timeoutMs: 0 });
  await vi.runAllTimersAsync();
  await closing;
  vi.useRealTimers();
});


/** Resolves after `ms` of (fake) time, however long: setTimeout alone fires at once past 2^31 - 1 ms. */
function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => {
    const step = (left: number): void => {
      if (left <= 0) resolve();
      else setTimeout(() => step(left - Math.min(left, 2 ** 31 - 1)), Math.min(left, 2 ** 31 - 1));
    };
    step(ms);
  });
}

async function usage(userId: string): Promise<number | undefined> {
  return (await manager.getSubscription(userId))?.usage;
}

/** A value that throws on every property read: it cannot even be described. */
const untouchable = (): object =>
  new Proxy(
    {},
    {
      get() {
        throw new Error('do not touch');
      },
    },
  );

describe('1. hostile results', () => {
  beforeEach(async () => {
    manager.registerProfile('p', { rate: { limit: 100, intervalMs: 1000 }, pool: { perUserConcurrency: 1 } });
    await manager.subscribe('u', 'p');
  });

  it('a thenable whose then throws: submit returns a promise that rejects TASK_FAILED, and the slot is freed', async () => {
    const u = manager.getLimiter('u');
    let p!: Promise<unknown>;
    expect(() => {
      p = u.submit(() => ({
        then() {
          throw new Error('then throws');
        },
      }));
    }).not.toThrow();
    const err = await rejection(p);
    expect(err.code).toBe('TASK_FAILED');
    expect((err.cause as Error).message).toBe('then throws');
    expect(await u.submit(() => 'slot free')).toBe('slot free');
  });

  it('a result whose then getter throws rejects TASK_FAILED, and the slot is freed', async () => {
    const u = manager.getLimiter('u');
    const hostile = {
      get then(): never {
        throw new Error('getter throws');
      },
    };
    const err = await rejection(u.submit(() => hostile));
    expect(err.code).toBe('TASK_FAILED');
    expect(await u.submit(() => 'slot free')).toBe('slot free');
  });

  it('a thenable that resolves, then rejects, then throws: the first answer wins', async () => {
    const u = manager.getLimiter('u');
    const value = await u.submit(() => ({
      then(resolve: (v: unknown) => void, reject: (e: unknown) => void) {
        resolve('first');
        reject(new Error('second'));
        throw new Error('third');
      },
    }));
    expect(value).toBe('first');
  });

  it('a thenable whose then throws a value that cannot even be described: TASK_FAILED, the slot freed, nothing unhandled', async () => {
    const u = manager.getLimiter('u');
    const hostile = untouchable();
    const run = track(
      u.submit(() => ({
        then() {
          throw hostile;
        },
      })),
    );
    await vi.advanceTimersByTimeAsync(0);
    expect(run.settled).toBe(true);
    expect(run.error?.code).toBe('TASK_FAILED');
    expect(await u.submit(() => 'slot free')).toBe('slot free');
  });

  it('a task that throws a value that cannot even be described: TASK_FAILED, the slot freed', async () => {
    const u = manager.getLimiter('u');
    const hostile = untouchable();
    const run = track(
      u.submit(() => {
        throw hostile;
      }),
    );
    await vi.advanceTimersByTimeAsync(0);
    expect(run.settled).toBe(true);
    expect(run.error?.code).toBe('TASK_FAILED');
    expect(await u.submit(() => 'slot free')).toBe('slot free');
  });

  it('a hostile thenable still pending at close(): close settles its caller, and its late throw is no unhandled rejection', async () => {
    const u = manager.getLimiter('u');
    let fail!: (e: unknown) => void;
    const run = track(
      u.submit(() => ({
        then(_resolve: unknown, reject: (e: unknown) => void) {
          fail = reject;
        },
      })),
    );
    await vi.advanceTimersByTimeAsync(0);
    const closing = manager.close({ drain: false, timeoutMs: 0 });
    await vi.advanceTimersByTimeAsync(0);
    const report = await closing;
    expect(report.abandoned).toBe(1);
    expect(run.error?.code).toBe('SHUTTING_DOWN');
    fail(new Error('late'));
    await vi.advanceTimersByTimeAsync(0);
    expect(run.error?.code).toBe('SHUTTING_DOWN');
  });
});

describe('what a task threw, told to its caller and its dead letter', () => {
  it('a string is the message itself, an object is described, and the value is kept on the cause', async () => {
    manager.registerProfile('t', { rate: { limit: 100, intervalMs: 1000 }, retry: { attempts: 1 } });
    await manager.subscribe('t', 't');
    const u = manager.getLimiter('t');
    const plain = await rejection(u.submit(() => Promise.reject('a long story, told plainly')));
    expect(plain.code).toBe('TASK_FAILED');
    expect(plain.cause).toMatchObject({ message: 'a long story, told plainly', value: 'a long story, told plainly' });
    const object = await rejection(u.submit(() => Promise.reject({ code: 42 })));
    expect(object.cause).toMatchObject({ message: '{"code":42}', value: { code: 42 } });
    const letters = await manager.dlq.list({ userId: 't' });
    expect(letters.map((e) => e.error.message)).toEqual(['a long story, told plainly', '{"code":42}']);
  });
});

describe('a signal read late', () => {
  it('an inline task that first reads ctx.signal after its caller aborted it finds it aborted, with the reason', async () => {
    manager.registerProfile('late', { rate: { limit: 100, intervalMs: 1000 } });
    await manager.subscribe('late', 'late');
    const proceed = gate();
    const started = gate();
    const finished = gate<{ aborted: boolean; reason: unknown }>();
    const controller = new AbortController();
    const task = manager.getLimiter('late').submit(
      async (ctx: TaskContext) => {
        started.open();
        await proceed.opened;
        finished.open({ aborted: ctx.signal.aborted, reason: ctx.signal.reason });
      },
      { signal: controller.signal },
    );
    await started.opened;
    controller.abort(new Error('changed my mind'));
    expect((await rejection(task)).code).toBe('ABORTED');
    proceed.open();
    const seen = await finished.opened;
    expect(seen.aborted).toBe(true);
    expect(seen.reason).toBeDefined();
  });
});

describe('3. replay once', () => {
  beforeEach(async () => {
    manager.registerProfile('p', { rate: { limit: 100, intervalMs: 1000 }, quota: { limit: 2 } });
    await manager.subscribe('u', 'p');
  });

  /** A task that fails on its first call and succeeds after; `calls` counts its runs. */
  function flaky(): { task: () => string; calls: () => number } {
    let n = 0;
    return {
      task: () => {
        if (++n === 1) throw new Error('first call fails');
        return `run ${n}`;
      },
      calls: () => n,
    };
  }

  it('two concurrent replays of one entry run the task once and charge once; the other rejects with a TaskvalveError', async () => {
    const f = flaky();
    expect((await rejection(manager.getLimiter('u').submit(f.task))).code).toBe('TASK_FAILED');
    const [entry] = await manager.dlq.list();
    expect(await usage('u')).toBe(1);
    const outcomes = await Promise.allSettled([manager.dlq.replay(entry!.id), manager.dlq.replay(entry!.id)]);
    const fulfilled = outcomes.filter((o) => o.status === 'fulfilled');
    const rejected = outcomes.filter((o): o is PromiseRejectedResult => o.status === 'rejected');
    expect(fulfilled).toHaveLength(1);
    expect(rejected).toHaveLength(1);
    expect(rejected[0]!.reason).toBeInstanceOf(TaskvalveError);
    expect(f.calls()).toBe(2);
    expect(await usage('u')).toBe(2);
    expect(await manager.dlq.list()).toEqual([]);
  });

  it('a replay that admission refuses puts the entry back, and a later replay runs it', async () => {
    const f = flaky();
    await rejection(manager.getLimiter('u').submit(f.task, { cost: 2 }));
    const [entry] = await manager.dlq.list();
    expect((await rejection(manager.dlq.replay(entry!.id))).code).toBe('QUOTA_EXCEEDED');
    expect(await manager.dlq.get(entry!.id)).toMatchObject({ id: entry!.id });
    await manager.updateSubscriptionQuota('u', 4);
    expect(await manager.dlq.replay(entry!.id)).toBe('run 2');
    expect(await manager.dlq.get(entry!.id)).toBeUndefined();
    expect(await usage('u')).toBe(4);
  });

  it('two concurrent replays, the first refused at admission: neither runs, the entry is there afterwards, each caller gets a TaskvalveError', async () => {
    const f = flaky();
    await rejection(manager.getLimiter('u').submit(f.task, { cost: 2 }));
    const [entry] = await manager.dlq.list();
    const outcomes = await Promise.allSettled([manager.dlq.replay(entry!.id), manager.dlq.replay(entry!.id)]);
    for (const o of outcomes) {
      expect(o.status).toBe('rejected');
      expect((o as PromiseRejectedResult).reason).toBeInstanceOf(TaskvalveError);
    }
    expect(f.calls()).toBe(1);
    expect(await manager.dlq.get(entry!.id)).toMatchObject({ id: entry!.id });
    expect(await usage('u')).toBe(2);
  });
});

describe('5. long delays neither fire early nor poll', () => {
  it('a rate of 1 per 30 days: the second task starts exactly 30 days after the first, the third 60', async () => {
    manager.registerProfile('monthly', { rate: { limit: 1, intervalMs: 30 * DAY } });
    await manager.subscribe('u', 'monthly');
    const idle = vi.getTimerCount(); // the manager's own background timers (the ended-subscription sweep)
    const starts: number[] = [];
    const runs = [0, 1, 2].map(() => quiet(manager.getLimiter('u').submit(() => starts.push(since()))));
    await vi.advanceTimersByTimeAsync(30 * DAY - 1);
    expect(starts).toEqual([0]);
    expect(vi.getTimerCount()).toBe(idle + 1);
    await vi.advanceTimersByTimeAsync(1);
    expect(starts).toEqual([0, 30 * DAY]);
    await vi.advanceTimersByTimeAsync(30 * DAY);
    await Promise.all(runs);
    expect(starts).toEqual([0, 30 * DAY, 60 * DAY]);
  });

  it('a rate of 1 per 30 days: check() tells the exact wait, peek too', async () => {
    manager.registerProfile('monthly', { rate: { limit: 1, intervalMs: 30 * DAY } });
    await manager.subscribe('u', 'monthly');
    const u = manager.getLimiter('u');
    expect((await u.check()).allowed).toBe(true);
    expect(await u.check()).toMatchObject({ allowed: false, retryAfterMs: 30 * DAY, resetAfterMs: 30 * DAY });
    expect(await u.peek()).toMatchObject({ allowed: false, retryAfterMs: 30 * DAY });
  });

  it('a rate of 1 per year is accepted and paced exactly', async () => {
    manager.registerProfile('yearly', { rate: { limit: 1, intervalMs: 365 * DAY } });
    await manager.subscribe('u', 'yearly');
    const starts: number[] = [];
    const runs = [0, 1].map(() => quiet(manager.getLimiter('u').submit(() => starts.push(since()))));
    await vi.advanceTimersByTimeAsync(365 * DAY - 1);
    expect(starts).toEqual([0]);
    await vi.advanceTimersByTimeAsync(1);
    await Promise.all(runs);
    expect(starts).toEqual([0, 365 * DAY]);
  });

  it('a 30-day backoff: the second attempt runs exactly 30 days after the first failed', async () => {
    manager.registerProfile('r', { rate: { limit: 100, intervalMs: 1000 }, retry: { attempts: 2, baseMs: 30 * DAY, maxMs: 30 * DAY } });
    await manager.subscribe('u', 'r');
    const attempts: number[] = [];
    const run = quiet(
      manager.getLimiter('u').submit(({ attempt }) => {
        attempts.push(since());
        if (attempt === 1) throw new Error('try again next month');
        return 'done';
      }),
    );
    await vi.advanceTimersByTimeAsync(30 * DAY - 1);
    expect(attempts).toEqual([0]);
    await vi.advanceTimersByTimeAsync(1);
    expect(await run).toBe('done');
    expect(attempts).toEqual([0, 30 * DAY]);
  });

  it('an inline timeoutMs of 3e9 neither fires early: a task of 30 days succeeds, a task that never ends times out at exactly 3e9 ms', async () => {
    manager.registerProfile('p', { rate: { limit: 100, intervalMs: 1000 } });
    await manager.subscribe('u', 'p');
    const idle = vi.getTimerCount(); // the manager's own background timers (the ended-subscription sweep)
    const u = manager.getLimiter('u');
    const month = track(u.submit(() => sleep(30 * DAY).then(() => 'a month'), { timeoutMs: 3e9 }));
    const never = track(u.submit(() => new Promise(() => {}), { timeoutMs: 3e9 }));
    await vi.advanceTimersByTimeAsync(30 * DAY - 1);
    expect(month.settled).toBe(false);
    await vi.advanceTimersByTimeAsync(1);
    expect(month.value).toBe('a month');
    await vi.advanceTimersByTimeAsync(3e9 - 30 * DAY - 1);
    expect(vi.getTimerCount()).toBe(idle + 1);
    expect(never.settled).toBe(false);
    await vi.advanceTimersByTimeAsync(1);
    expect(never.error?.code).toBe('TASK_TIMEOUT');
  });

  it('pool.taskTimeoutMs of 3e9 on an inline task does not fire early', async () => {
    manager.registerProfile('p', { rate: { limit: 100, intervalMs: 1000 }, pool: { taskTimeoutMs: 3e9 } });
    await manager.subscribe('u', 'p');
    const never = track(manager.getLimiter('u').submit(() => new Promise(() => {})));
    await vi.advanceTimersByTimeAsync(3e9 - 1);
    expect(never.settled).toBe(false);
    await vi.advanceTimersByTimeAsync(1);
    expect(never.error?.code).toBe('TASK_TIMEOUT');
  });

  it('close({ timeoutMs: 3e9 }) waits for a 30-day task instead of abandoning it at once', async () => {
    manager.registerProfile('p', { rate: { limit: 100, intervalMs: 1000 } });
    await manager.subscribe('u', 'p');
    const run = track(manager.getLimiter('u').submit(() => sleep(30 * DAY).then(() => 'done')));
    await vi.advanceTimersByTimeAsync(0);
    const closing = track(manager.close({ timeoutMs: 3e9 }));
    await vi.advanceTimersByTimeAsync(30 * DAY - 1);
    expect(closing.settled).toBe(false);
    expect(run.settled).toBe(false);
    await vi.advanceTimersByTimeAsync(1);
    expect(run.value).toBe('done');
    expect(closing.value).toEqual({ completed: 1, rejected: 0, abandoned: 0 });
  });

  it('a maxWaitMs of 40 days admits a 30-day wait and the task starts on time', async () => {
    manager.registerProfile('monthly', { rate: { limit: 1, intervalMs: 30 * DAY, maxWaitMs: 40 * DAY } });
    await manager.subscribe('u', 'monthly');
    const starts: number[] = [];
    const runs = [0, 1].map(() => quiet(manager.getLimiter('u').submit(() => starts.push(since()))));
    await vi.advanceTimersByTimeAsync(30 * DAY);
    await Promise.all(runs);
    expect(starts).toEqual([0, 30 * DAY]);
  });
});

describe('7. inline timeouts', () => {
  beforeEach(async () => {
    manager.registerProfile('p', { rate: { limit: 100, intervalMs: 1000 }, pool: { perUserConcurrency: 1 } });
    manager.registerProfile('retry', { rate: { limit: 100, intervalMs: 1000 }, pool: { perUserConcurrency: 1 }, retry: { attempts: 2, baseMs: 100 } });
    manager.registerProfile('timed', { rate: { limit: 100, intervalMs: 1000 }, pool: { perUserConcurrency: 1, taskTimeoutMs: 1000 } });
  });

  it('at timeoutMs ctx.signal aborts, the caller gets TASK_TIMEOUT, and the slot is released', async () => {
    await manager.subscribe('u', 'p');
    const u = manager.getLimiter('u');
    let signal!: AbortSignal;
    const slow = rejection(
      u.submit(
        (ctx: TaskContext) => {
          signal = ctx.signal;
          return new Promise((_resolve, reject) => ctx.signal.addEventListener('abort', () => reject(new Error('stopped'))));
        },
        { timeoutMs: 1000 },
      ),
    );
    const next = track(u.submit(() => since()));
    await vi.advanceTimersByTimeAsync(999);
    expect(signal.aborted).toBe(false);
    expect(next.settled).toBe(false);
    await vi.advanceTimersByTimeAsync(1);
    expect(signal.aborted).toBe(true);
    expect((await slow).code).toBe('TASK_TIMEOUT');
    await vi.advanceTimersByTimeAsync(0);
    expect(next.value).toBe(1000);
  });

  it('pool.taskTimeoutMs applies to inline tasks', async () => {
    await manager.subscribe('u', 'timed');
    const err = await (async () => {
      const run = rejection(manager.getLimiter('u').submit(() => new Promise(() => {})));
      await vi.advanceTimersByTimeAsync(1000);
      return run;
    })();
    expect(err.code).toBe('TASK_TIMEOUT');
  });

  it('a timed-out inline task is retried per policy', async () => {
    await manager.subscribe('u', 'retry');
    const run = quiet(
      manager.getLimiter('u').submit(({ attempt }) => (attempt === 1 ? new Promise(() => {}) : `attempt ${attempt}`), { timeoutMs: 1000 }),
    );
    await vi.advanceTimersByTimeAsync(1100);
    expect(await run).toBe('attempt 2');
  });

  it('a function that ignores its signal keeps running but no longer holds the slot, and is counted as abandoned', async () => {
    await manager.subscribe('u', 'p');
    const u = manager.getLimiter('u');
    const finish = gate();
    let finished = false;
    const stubborn = rejection(
      u.submit(
        async () => {
          await finish.opened;
          finished = true;
          return 'ignored';
        },
        { timeoutMs: 1000 },
      ),
    );
    await vi.advanceTimersByTimeAsync(1000);
    expect((await stubborn).code).toBe('TASK_TIMEOUT');
    expect(await u.submit(() => 'runs while the other still runs')).toBe('runs while the other still runs');
    expect(finished).toBe(false);
    expect(await scrape(manager, 'taskvalve_tasks_abandoned_total', { profile: 'p' })).toBe(1);
    expect(await scrape(manager, 'taskvalve_tasks_running', { profile: 'p' })).toBe(0);
    finish.open();
  });

  it('an inline task aborted by its caller: ABORTED at once, ctx.signal aborted, the slot released, counted as abandoned', async () => {
    await manager.subscribe('u', 'p');
    const u = manager.getLimiter('u');
    const controller = new AbortController();
    let signal!: AbortSignal;
    const run = rejection(
      u.submit(
        (ctx: TaskContext) => {
          signal = ctx.signal;
          return new Promise(() => {});
        },
        { signal: controller.signal },
      ),
    );
    const next = track(u.submit(() => 'next'));
    await vi.advanceTimersByTimeAsync(0);
    expect(next.settled).toBe(false);
    controller.abort();
    expect((await run).code).toBe('ABORTED');
    expect(signal.aborted).toBe(true);
    await vi.advanceTimersByTimeAsync(0);
    expect(next.value).toBe('next');
    expect(await scrape(manager, 'taskvalve_tasks_abandoned_total', { profile: 'p' })).toBe(1);
  });
});

describe('8. refusals charge nothing', () => {
  it('QUEUE_FULL at submit leaves the bucket and the quota as they were', async () => {
    manager.registerProfile('p', { rate: { limit: 10, intervalMs: 1000 }, quota: { limit: 100 }, pool: { perUserConcurrency: 1, maxQueue: 1 } });
    await manager.subscribe('u', 'p');
    const u = manager.getLimiter('u');
    const hold = gate();
    const running = quiet(u.submit(() => hold.opened));
    const queued = quiet(u.submit(() => 'queued'));
    await vi.advanceTimersByTimeAsync(0);
    const before = await u.peek();
    expect((await rejection(u.submit(() => 'refused', { cost: 3 }))).code).toBe('QUEUE_FULL');
    expect(await u.peek()).toEqual(before);
    hold.open();
    await Promise.all([running, queued]);
  });

  it('QUEUE_FULL when a waiting task\'s turn comes: its quota is refunded and it takes no units', async () => {
    manager.registerProfile('p', { rate: { limit: 1, intervalMs: 1000, burst: 2 }, quota: { limit: 100 }, pool: { perUserConcurrency: 1, maxQueue: 1 } });
    await manager.subscribe('u', 'p');
    const u = manager.getLimiter('u');
    const hold = gate();
    const running = quiet(u.submit(() => hold.opened));
    const queued = quiet(u.submit(() => 'queued'));
    const late = rejection(u.submit(() => 'never'));
    await vi.advanceTimersByTimeAsync(0);
    expect(await usage('u')).toBe(3);
    await vi.advanceTimersByTimeAsync(1000);
    expect((await late).code).toBe('QUEUE_FULL');
    expect(await usage('u')).toBe(2);
    expect(await u.peek()).toMatchObject({ remaining: 1 });
    hold.open();
    await Promise.all([running, queued]);
  });

  it('a named task on a profile without pool.filename is refused INVALID_ARGUMENT and charges nothing', async () => {
    manager.registerProfile('p', { rate: { limit: 10, intervalMs: 1000 }, quota: { limit: 100 } });
    await manager.subscribe('u', 'p');
    const u = manager.getLimiter('u');
    const before = await u.peek();
    expect((await rejection(u.submit({ name: 'anything' }, { cost: 4 }))).code).toBe('INVALID_ARGUMENT');
    expect(await u.peek()).toEqual(before);
  });

  it('RATE_LIMITED (wait: false, maxWaitMs, onLimit reject) and a cost over the burst charge nothing', async () => {
    manager.registerProfile('p', { rate: { limit: 1, intervalMs: 1000, burst: 2, maxWaitMs: 500 }, quota: { limit: 100 } });
    manager.registerProfile('r', { rate: { limit: 1, intervalMs: 1000, burst: 2, onLimit: 'reject' }, quota: { limit: 100 } });
    await manager.subscribe('u', 'p');
    await manager.subscribe('v', 'r');
    for (const user of ['u', 'v']) {
      const l = manager.getLimiter(user);
      await l.check(2);
      const before = await l.peek();
      expect((await rejection(l.submit(() => 1, { wait: false }))).code).toBe('RATE_LIMITED');
      expect((await rejection(l.submit(() => 1))).code).toBe('RATE_LIMITED');
      expect((await rejection(l.submit(() => 1, { cost: 3 }))).code).toBe('INVALID_ARGUMENT');
      expect(await l.peek()).toEqual(before);
    }
  });
});

describe('10. async means async', () => {
  beforeEach(async () => {
    manager.registerProfile('p', { rate: { limit: 10, intervalMs: 1000 } });
    await manager.subscribe('u', 'p');
  });

  /** Calls `fn`, which must return a promise without throwing; resolves with how that promise settled. */
  async function outcome(fn: () => Promise<unknown>): Promise<{ status: string; reason?: unknown }> {
    let p: Promise<unknown> | undefined;
    let threw: unknown;
    try {
      p = fn();
    } catch (error) {
      threw = error;
    }
    expect(threw, `${String(fn)} threw synchronously`).toBeUndefined();
    expect(p).toBeInstanceOf(Promise);
    return Promise.allSettled([p]).then(([r]) => r as { status: string; reason?: unknown });
  }

  it('bad arguments come back as rejected promises with INVALID_ARGUMENT', async () => {
    const u = manager.getLimiter('u');
    const calls: Array<() => Promise<unknown>> = [
      () => manager.close(null as never),
      () => manager.close('now' as never),
      () => manager.dlq.list(null as never),
      () => manager.dlq.get(42 as never),
      () => manager.dlq.remove(undefined as never),
      () => manager.dlq.replay({} as never),
      () => u.submit(() => 1, null as never),
      () => u.submit(null as never),
      () => u.submit(() => 1, { cost: 0 }),
      () => u.submit(() => 1, { timeoutMs: -1 }),
      () => u.check('1' as never),
      () => u.checkDetailed(1.5),
      () => manager.subscribe(42 as never, 'p'),
      () => manager.subscribe('v', 'p', null as never),
      () => manager.extendSubscription('u', -1),
      () => manager.updateSubscriptionQuota('u', -1),
      () => manager.resetUsage('' as never),
      () => manager.cancelSubscription(null as never),
      () => manager.changeProfile('u', 42 as never),
    ];
    for (const call of calls) {
      const r = await outcome(call);
      expect(r.status, String(call)).toBe('rejected');
      expect(r.reason, String(call)).toBeInstanceOf(TaskvalveError);
    }
  });

  it('options whose getters throw come back as rejected promises, never a synchronous throw', async () => {
    const u = manager.getLimiter('u');
    const hostile = {
      get cost(): number {
        throw new Error('getter throws');
      },
    };
    const calls: Array<() => Promise<unknown>> = [
      () => u.submit(() => 1, hostile as never),
      () => manager.close({
        get drain(): boolean {
          throw new Error('getter throws');
        },
      }),
      () => manager.dlq.list({
        get limit(): number {
          throw new Error('getter throws');
        },
      }),
      () => manager.subscribe('v', 'p', {
        get durationMs(): number {
          throw new Error('getter throws');
        },
      }),
    ];
    for (const call of calls) expect((await outcome(call)).status, String(call)).toBe('rejected');
  });

  it('options that are proxies refusing to list their keys come back as rejected promises', async () => {
    const u = manager.getLimiter('u');
    const opaque = new Proxy(
      {},
      {
        ownKeys() {
          throw new Error('no keys');
        },
      },
    );
    for (const call of [() => u.submit(() => 1, opaque as never), () => manager.close(opaque as never), () => manager.dlq.list(opaque as never)]) {
      expect((await outcome(call)).status, String(call)).toBe('rejected');
    }
  });

  it('invalid dates are INVALID_ARGUMENT: NaN, and times no Date can hold', async () => {
    const wrong: string[] = [];
    for (const options of [
      { startsAt: new Date(Number.NaN) },
      { endsAt: new Date('not a date') },
      { startsAt: 1e20 },
      { endsAt: 1e20 },
      { durationMs: Number.MAX_SAFE_INTEGER },
    ]) {
      const [r] = await Promise.allSettled([manager.subscribe('v', 'p', options)]);
      const code = r!.status === 'rejected' ? (r.reason as TaskvalveError).code : `resolved with endsAt ${String(r!.value.endsAt)}, startsAt ${String(r!.value.startsAt)}`;
      if (code !== 'INVALID_ARGUMENT') wrong.push(`${String(Object.keys(options)[0])}: ${code}`);
    }
    expect(wrong).toEqual([]);
  });

  it('extending a subscription beyond what a Date can hold is INVALID_ARGUMENT', async () => {
    await manager.subscribe('w', 'p', { durationMs: 1000 });
    const err = await rejection(manager.extendSubscription('w', Number.MAX_SAFE_INTEGER));
    expect(err.code).toBe('INVALID_ARGUMENT');
    const sub = await manager.getSubscription('w');
    expect(Number.isNaN(sub!.endsAt!.getTime())).toBe(false);
  });

  it('unknown option names are rejected in new Manager, subscribe, submit, close and dlq.list', async () => {
    expect(thrown(() => new Manager({ clok: () => 0 } as never)).code).toBe('INVALID_CONFIG');
    expect((await rejection(manager.subscribe('v', 'p', { duration: 1000 } as never))).code).toBe('INVALID_ARGUMENT');
    expect((await rejection(manager.getLimiter('u').submit(() => 1, { timeout: 5 } as never))).code).toBe('INVALID_ARGUMENT');
    expect((await rejection(manager.dlq.list({ limt: 1 } as never))).code).toBe('INVALID_ARGUMENT');
    expect((await rejection(manager.close({ drian: false } as never))).code).toBe('INVALID_ARGUMENT');
  });

  it('unknown option names are rejected in new RedisStore', () => {
    const client = new Redis({ lazyConnect: true });
    try {
      const err = thrown(() => new RedisStore({ client, prefixx: 'typo' } as never));
      expect(err.code).toBe('INVALID_CONFIG');
      expect(err.message).toContain('prefixx');
    } finally {
      client.disconnect();
    }
  });

  it('two live Managers on one registry: INVALID_CONFIG naming the clash; after close() the registry can be reused', async () => {
    const registry = manager.registry;
    const err = thrown(() => new Manager({ registry }));
    expect(err.code).toBe('INVALID_CONFIG');
    expect(err.message).toMatch(/registry/);
    expect(err.message).toMatch(/taskvalve_/);
    await manager.close();
    manager = new Manager({ registry, clock: () => Date.now() });
    manager.registerProfile('p', { rate: { limit: 10, intervalMs: 1000 } });
    await manager.subscribe('u', 'p');
    await manager.getLimiter('u').submit(() => 1);
    expect(await scrape(manager, 'taskvalve_tasks_submitted_total', { profile: 'p' })).toBe(1);
  });
});
