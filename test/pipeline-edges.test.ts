// The pipeline at its edges, through the public API: a retry the store cannot re-admit, stores
// that answer late or fail, a user moved to another profile while tasks wait, profiles side by
// side, and close(). A store here is a MemoryStore with some of its calls held, failed or made
// asynchronous, as a user's own store (or an unreachable Redis) would answer. Fake clock
// throughout, except in the worker-thread test (real threads, real timers).
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { ErrorCode, Manager, MemoryStore, TaskvalveError, type FailedTask, type RateReceipt, type Store, type TaskEvent, type TurnRequest, type TurnsTaken } from '../src/index.js';
import { gate, rejection, track } from './helpers.js';
import { scrape } from './support/scrape.js';

const managers: Manager[] = [];

/** A manager on the fake clock (closed after the test). */
function make(store?: Store): Manager {
  const m = new Manager(store === undefined ? { clock: () => Date.now() } : { store, clock: () => Date.now() });
  managers.push(m);
  return m;
}

beforeEach(() => {
  vi.useFakeTimers();
});

afterEach(async () => {
  const closing = Promise.all(managers.splice(0).map((m) => m.close({ drain: false, timeoutMs: 0 })));
  if (vi.isFakeTimers()) await vi.runAllTimersAsync();
  await closing;
  vi.useRealTimers();
});

/** Every `task` event of the manager, in order. */
function record(m: Manager): TaskEvent[] {
  const events: TaskEvent[] = [];
  m.on('task', (e) => events.push(e));
  return events;
}

/** A task's path as `FROM>TO` steps. */
function path(events: TaskEvent[], id: string): string[] {
  return events.filter((e) => e.id === id).map((e) => `${e.from}>${e.to}`);
}

/** Errors the manager reports with no caller to reject. */
function faults(m: Manager): Error[] {
  const errors: Error[] = [];
  m.on('error', (e) => errors.push(e));
  return errors;
}

/** Dead letters as the `dead-letter` event tells them. */
function letters(m: Manager): FailedTask[] {
  const entries: FailedTask[] = [];
  m.on('dead-letter', (e) => entries.push(e));
  return entries;
}

async function usage(m: Manager, userId: string): Promise<number | undefined> {
  return (await m.getSubscription(userId))?.usage;
}

/** A task that fails its first attempt and returns `value` on the next. */
function failsOnce<T>(value: T): (ctx: { attempt: number }) => T {
  return ({ attempt }) => {
    if (attempt === 1) throw new Error(`attempt ${attempt} failed`);
    return value;
  };
}

/** The store `inner`, with the calls in `calls` answered by them instead (what a store of one's own does). */
function storeWith(inner: MemoryStore, calls: Partial<Store>): Store {
  return new Proxy(inner, {
    get(target, key) {
      if (Object.hasOwn(calls, key)) return calls[key as keyof Store];
      const value = Reflect.get(target, key) as unknown;
      return typeof value === 'function' ? (value as (...args: unknown[]) => unknown).bind(target) : value;
    },
  }) as unknown as Store;
}

/** A store whose rate turns fail, as an unreachable store's do, while `down` is set. */
class FlakyTurns extends MemoryStore {
  down = false;
  error: Error = new Error('connection lost');
  override take(...args: Parameters<MemoryStore['take']>): number {
    if (this.down) throw this.error;
    return super.take(...args);
  }
}

/**
 * A store whose rate turns are taken at once but answered only when the test says, as a remote
 * store's answer is in flight: each call waits in `held`. With `receipts: false` it takes units
 * it cannot give back (no receipt).
 */
function heldTurns(receipts = true): { store: Store; held: { answer: () => void; fail: (error: unknown) => void }[] } {
  const inner = new MemoryStore();
  const held: { answer: () => void; fail: (error: unknown) => void }[] = [];
  const store = storeWith(inner, {
    take(userId: string, cost: number, nowMs: number, slot?: Parameters<MemoryStore['take']>[3], receipt?: { value: RateReceipt | undefined }) {
      const ms = inner.take(userId, cost, nowMs, slot, receipts ? receipt : undefined);
      return new Promise<number>((resolve, reject) => held.push({ answer: () => resolve(ms), fail: reject }));
    },
  });
  return { store, held };
}

/** A store that takes the rate turns of many waiters in one call (as the RedisStore does); `batches` counts the waiters of each call. */
class BatchTurns extends MemoryStore {
  readonly batches: number[] = [];
  takeTurns(waiters: readonly TurnRequest[], nowMs: number): TurnsTaken {
    this.batches.push(waiters.length);
    const receipts: (RateReceipt | undefined)[] = [];
    for (const w of waiters) {
      const receipt: { value: RateReceipt | undefined } = { value: undefined };
      const ms = this.take(w.userId, w.cost, nowMs, w.slot, receipt);
      if (ms > 0) return { taken: receipts.length, waitMs: ms, receipts };
      receipts.push(receipt.value);
    }
    return { taken: receipts.length, waitMs: 0, receipts };
  }
}

describe('a retry the store cannot re-admit', () => {
  const profile = { rate: { limit: 100, intervalMs: 1000 }, retry: { attempts: 2, baseMs: 100 } };

  it('fails while it waits in the rate line: FAILED and dead-lettered, its caller gets its last error noting why it was not retried', async () => {
    const store = new FlakyTurns();
    const m = make(store);
    m.registerProfile('p', { ...profile, rate: { limit: 1, intervalMs: 1000 } });
    await m.subscribe('u', 'p');
    const events = record(m);
    m.on('task', (e) => {
      if (e.to === 'WAITING_RATE') store.down = true; // the retry waits for its turn: the store goes away
    });
    const run = track(
      m.getLimiter('u').submit(
        () => {
          throw new Error('boom');
        },
        { taskId: 'T' },
      ),
    );
    await vi.advanceTimersByTimeAsync(1000);
    expect(run.error?.code).toBe('TASK_FAILED');
    expect(run.error?.message).toMatch(/not retried/);
    expect(await m.dlq.list()).toHaveLength(1);
    expect(path(events, 'T').slice(-3)).toEqual(['RUNNING>RETRY_WAIT', 'RETRY_WAIT>WAITING_RATE', 'WAITING_RATE>FAILED']);
  });

  it('aborted while its turn is in flight, then the store fails the turn: the caller got ABORTED, and nothing is dead-lettered', async () => {
    const { store, held } = heldTurns();
    const m = make(store);
    m.registerProfile('p', profile);
    await m.subscribe('u', 'p');
    const dead = letters(m);
    const controller = new AbortController();
    const run = track(
      m.getLimiter('u').submit(
        () => {
          throw new Error('boom');
        },
        { signal: controller.signal },
      ),
    );
    await vi.advanceTimersByTimeAsync(100);
    expect(held).toHaveLength(1); // the retry's turn is in flight
    controller.abort();
    held[0]?.fail(new Error('connection lost'));
    await vi.advanceTimersByTimeAsync(0);
    expect(run.error?.code).toBe('ABORTED');
    expect(dead).toEqual([]);
    expect(await m.dlq.list()).toEqual([]);
    // As for a first attempt that left while its turn was in flight: the store's answer is not counted as a late event.
    expect(await scrape(m, 'taskvalve_task_late_events_total', { profile: 'p' })).toBe(0);
  });

  it('a first attempt whose rate turn fails with an error of the store\'s own: the caller gets it; the metrics still scrape, with no such rejection reason', async () => {
    const store = new FlakyTurns();
    store.error = new TaskvalveError(ErrorCode.PROFILE_NOT_FOUND, 'the user is subscribed to a profile this process has not registered');
    const m = make(store);
    m.registerProfile('p', { ...profile, rate: { limit: 1, intervalMs: 1000 } });
    await m.subscribe('u', 'p');
    const u = m.getLimiter('u');
    expect(await u.submit(() => 'first')).toBe('first');
    const waiting = track(u.submit(() => 'second'));
    await vi.advanceTimersByTimeAsync(0);
    store.down = true;
    await vi.advanceTimersByTimeAsync(1000);
    expect(waiting.error?.code).toBe('PROFILE_NOT_FOUND');
    const body = await m.registry.metrics();
    expect(body).not.toMatch(/tasks_rejected_total\{[^}]*reason="profile_not_found"/);
    expect(await usage(m, 'u')).toBe(1);
  });
});

describe('rate turns answered late (a store whose answer is in flight)', () => {
  /** A task failing its first attempt, aborted while its retry's turn is in flight; the turn is then answered. */
  async function abortRetryDuringTurn(receipts: boolean): Promise<{ m: Manager; errors: Error[] }> {
    const { store, held } = heldTurns(receipts);
    const m = make(store);
    m.registerProfile('p', { rate: { limit: 1, intervalMs: 10_000, burst: 2 }, retry: { attempts: 2, baseMs: 100 } });
    await m.subscribe('u', 'p');
    const errors = faults(m);
    const controller = new AbortController();
    const run = track(m.getLimiter('u').submit(failsOnce('second'), { signal: controller.signal }));
    await vi.advanceTimersByTimeAsync(100);
    expect(held).toHaveLength(1);
    controller.abort();
    held[0]?.answer();
    await vi.advanceTimersByTimeAsync(0);
    expect(run.error?.code).toBe('ABORTED');
    return { m, errors };
  }

  it('a retry aborted while its turn is in flight gets the units that turn took back into the bucket', async () => {
    const { m, errors } = await abortRetryDuringTurn(true);
    expect((await m.getLimiter('u').peek()).remaining).toBe(1); // the first attempt's unit is spent; the retry's came back
    expect(errors).toEqual([]);
  });

  it('a retry aborted while its turn is in flight on a store that cannot give units back: no refund is asked for, no error', async () => {
    const { m, errors } = await abortRetryDuringTurn(false);
    expect((await m.getLimiter('u').peek()).remaining).toBe(0);
    expect(errors).toEqual([]);
  });
});

describe('a user moved to a smaller profile elsewhere (another process on the same store)', () => {
  const big = { rate: { limit: 3, intervalMs: 3000, burst: 3 }, retry: { attempts: 2, baseMs: 100 } };
  const small = { rate: { limit: 1, intervalMs: 1000, burst: 1 } };

  /** This process, and another one on the same store that moves users. */
  async function two(store: Store, inner: MemoryStore = store as MemoryStore): Promise<{ m: Manager; other: Manager }> {
    const m = make(store);
    const other = make(inner);
    for (const x of [m, other]) {
      x.registerProfile('big', big);
      x.registerProfile('small', small);
    }
    await m.subscribe('u', 'big');
    return { m, other };
  }

  it('a task waiting for its turn that can never conform now ends INVALID_ARGUMENT at its turn (a store whose turns are answered late)', async () => {
    const inner = new MemoryStore();
    let asked = 0;
    const store = storeWith(inner, {
      take(userId: string, cost: number, nowMs: number, slot?: Parameters<MemoryStore['take']>[3], receipt?: { value: RateReceipt | undefined }) {
        asked++;
        return Promise.resolve(inner.take(userId, cost, nowMs, slot, receipt));
      },
    });
    const { m, other } = await two(store, inner);
    const u = m.getLimiter('u');
    expect(await u.submit(() => 'all three', { cost: 3 })).toBe('all three');
    const waiting = track(u.submit(() => 'never', { cost: 3 }));
    await other.changeProfile('u', 'small');
    await vi.advanceTimersByTimeAsync(3000);
    expect(asked).toBeGreaterThan(0);
    expect(waiting.error?.code).toBe('INVALID_ARGUMENT');
    expect(waiting.error?.message).toMatch(/\(the profile changed while the task waited\)/);
  });

  it('a task waiting for its turn that can never conform now ends INVALID_ARGUMENT at its turn, refunded (a store that takes turns in batches)', async () => {
    const store = new BatchTurns();
    const { m, other } = await two(store);
    const u = m.getLimiter('u');
    expect(await u.submit(() => 'all three', { cost: 3 })).toBe('all three');
    const waiting = track(u.submit(() => 'never', { cost: 3 }));
    await other.changeProfile('u', 'small');
    await vi.advanceTimersByTimeAsync(3000);
    expect(store.batches.length).toBeGreaterThan(0);
    expect(waiting.error?.code).toBe('INVALID_ARGUMENT');
    expect(waiting.error?.message).toMatch(/\(the profile changed while the task waited\)/);
    expect(await usage(m, 'u')).toBe(3);
  });

  it('a task waiting for its retry whose cost can never conform now ends INVALID_ARGUMENT, not dead-lettered', async () => {
    const { m, other } = await two(new MemoryStore());
    const dead = letters(m);
    const run = track(m.getLimiter('u').submit(failsOnce('second'), { cost: 2 }));
    await vi.advanceTimersByTimeAsync(0);
    await other.changeProfile('u', 'small');
    await vi.advanceTimersByTimeAsync(100);
    expect(run.error?.code).toBe('INVALID_ARGUMENT');
    expect(dead).toEqual([]);
    expect(await m.dlq.list()).toEqual([]);
  });
});

describe('a store that takes turns in batches', () => {
  it('after a profile change that keeps their bucket, waiting tasks are asked for once each per turn', async () => {
    const store = new BatchTurns();
    const m = make(store);
    m.registerProfile('a', { rate: { limit: 4, intervalMs: 4000, burst: 4 } });
    m.registerProfile('b', { rate: { limit: 4, intervalMs: 4000, burst: 4 } });
    await m.subscribe('u', 'a');
    const u = m.getLimiter('u');
    expect(await u.submit(() => 'all four', { cost: 4 })).toBe('all four');
    const waiting = [u.submit(() => 'one'), u.submit(() => 'two')];
    await m.changeProfile('u', 'b');
    await vi.advanceTimersByTimeAsync(2000);
    expect(await Promise.all(waiting)).toEqual(['one', 'two']);
    expect(store.batches.length).toBeGreaterThan(0);
    expect(store.batches.filter((waiters) => waiters > 2)).toEqual([]); // two tasks wait: never more waiters than that
  });
});

/** A store whose quota refunds land only when the test opens `door` (or fail, with `fail`). */
class HeldRefunds extends MemoryStore {
  readonly door = gate();
  fail: Error | undefined = undefined;
  override refund(userId: string, cost: number, period: number, nowMs: number): Promise<void> {
    return this.door.opened.then(() => {
      if (this.fail !== undefined) throw this.fail;
      super.refund(userId, cost, period, nowMs);
    });
  }
}

/** A store whose admissions, while `holding`, are answered when the test opens `door` (asynchronously, as a remote store's). */
function heldAdmissions(): { store: Store; door: ReturnType<typeof gate<void>>; hold: (on: boolean) => void; fail: (error: Error) => void } {
  const inner = new MemoryStore();
  const door = gate();
  let holding = false;
  let failure: Error | undefined;
  const store = storeWith(inner, {
    admit(...args: Parameters<MemoryStore['admit']>) {
      if (failure !== undefined) return Promise.reject(failure);
      const answer = inner.admit(...args);
      if (!holding) return answer;
      const copy = { ...answer };
      return door.opened.then(() => copy);
    },
  });
  return { store, door, hold: (on) => (holding = on), fail: (error) => (failure = error) };
}

describe('close()', () => {
  it('waits for a refund in flight, up to its timeout', async () => {
    const store = new HeldRefunds();
    const m = make(store);
    m.registerProfile('p', { rate: { limit: 1, intervalMs: 3_600_000 } });
    await m.subscribe('u', 'p');
    const u = m.getLimiter('u');
    expect(await u.submit(() => 'first')).toBe('first');
    const waiting = track(u.submit(() => 'second'));
    await vi.advanceTimersByTimeAsync(0);
    const closing = track(m.close({ drain: false, timeoutMs: 5000 }));
    await vi.advanceTimersByTimeAsync(0);
    expect(waiting.error?.code).toBe('SHUTTING_DOWN');
    expect(closing.settled).toBe(false); // its refund is in flight
    await vi.advanceTimersByTimeAsync(5000);
    expect(closing.value).toEqual({ completed: 0, rejected: 1, abandoned: 0 });
  });

  it('a refund the store fails is reported to error listeners', async () => {
    const store = new HeldRefunds();
    store.fail = new Error('refund lost');
    store.door.open();
    const m = make(store);
    m.registerProfile('p', { rate: { limit: 1, intervalMs: 3_600_000 } });
    await m.subscribe('u', 'p');
    const errors = faults(m);
    const u = m.getLimiter('u');
    expect(await u.submit(() => 'first')).toBe('first');
    const controller = new AbortController();
    const waiting = track(u.submit(() => 'second', { signal: controller.signal }));
    await vi.advanceTimersByTimeAsync(0);
    controller.abort();
    await vi.advanceTimersByTimeAsync(0);
    expect(waiting.error?.code).toBe('ABORTED');
    expect(errors.map((e) => e.message)).toEqual(['refund lost']);
  });

  it('with drain, waits for an admission in flight even when the last running task ends first; the admitted task runs', async () => {
    const { store, door, hold } = heldAdmissions();
    const m = make(store);
    m.registerProfile('p', { rate: { limit: 100, intervalMs: 1000 } });
    await m.subscribe('u', 'p');
    const u = m.getLimiter('u');
    const finish = gate();
    const running = u.submit(() => finish.opened.then(() => 'running'));
    await vi.advanceTimersByTimeAsync(0);
    hold(true);
    const late = track(u.submit(() => 'late'));
    const closing = track(m.close({ drain: true, timeoutMs: 60_000 }));
    finish.open();
    expect(await running).toBe('running');
    await vi.advanceTimersByTimeAsync(0);
    expect(closing.settled).toBe(false); // the admission is still in flight
    door.open();
    await vi.advanceTimersByTimeAsync(0);
    expect(late.value).toBe('late');
    expect(closing.value).toEqual({ completed: 2, rejected: 0, abandoned: 0 });
  });

  it('with drain, an admission still in flight at the timeout never runs: SHUTTING_DOWN when the store answers, its charge returned', async () => {
    const { store, door, hold } = heldAdmissions();
    const m = make(store);
    m.registerProfile('p', { rate: { limit: 100, intervalMs: 1000 }, quota: { limit: 10 } });
    await m.subscribe('u', 'p');
    const u = m.getLimiter('u');
    hold(true);
    let ran = 0;
    const late = track(u.submit(() => ran++));
    const closing = track(m.close({ drain: true, timeoutMs: 50 }));
    await vi.advanceTimersByTimeAsync(50);
    expect(closing.value).toEqual({ completed: 0, rejected: 0, abandoned: 0 });
    door.open();
    await vi.advanceTimersByTimeAsync(0);
    expect(ran).toBe(0);
    expect(late.error?.code).toBe('SHUTTING_DOWN');
    expect((await store.getSubscription('u', Date.now()))?.usage).toBe(0);
  });

  it('after an asynchronous admission that failed, resolves at once: nothing is in flight', async () => {
    const { store, fail } = heldAdmissions();
    const m = make(store);
    m.registerProfile('p', { rate: { limit: 100, intervalMs: 1000 } });
    await m.subscribe('u', 'p');
    fail(new Error('store down'));
    await expect(m.getLimiter('u').submit(() => 'never')).rejects.toThrow('store down');
    const closing = track(m.close({ timeoutMs: 60_000 }));
    await vi.advanceTimersByTimeAsync(0);
    expect(closing.value).toEqual({ completed: 0, rejected: 0, abandoned: 0 });
  });

  it('at its timeout, a task still waiting for its rate turn is rejected (not abandoned) and refunded', async () => {
    const m = make();
    m.registerProfile('p', { rate: { limit: 1, intervalMs: 3_600_000 } });
    await m.subscribe('u', 'p');
    const u = m.getLimiter('u');
    expect(await u.submit(() => 'first')).toBe('first');
    const waiting = track(u.submit(() => 'second'));
    await vi.advanceTimersByTimeAsync(0);
    const closing = m.close({ drain: true, timeoutMs: 1000 });
    await vi.advanceTimersByTimeAsync(1000);
    expect(await closing).toEqual({ completed: 0, rejected: 1, abandoned: 0 });
    expect(waiting.error?.code).toBe('SHUTTING_DOWN');
    expect(await usage(m, 'u')).toBe(1);
  });

  it('without drain, a running task that fails is not retried: dead-lettered, its caller gets TASK_FAILED', async () => {
    const m = make();
    m.registerProfile('p', { rate: { limit: 100, intervalMs: 1000 }, retry: { attempts: 3, baseMs: 100 } });
    await m.subscribe('u', 'p');
    const dead = letters(m);
    const failing = gate();
    let runs = 0;
    const run = track(
      m.getLimiter('u').submit(async () => {
        runs++;
        await failing.opened;
        throw new Error('boom');
      }),
    );
    await vi.advanceTimersByTimeAsync(0);
    const closing = track(m.close({ drain: false, timeoutMs: 60_000 }));
    failing.open();
    await vi.advanceTimersByTimeAsync(0);
    expect(run.error?.code).toBe('TASK_FAILED');
    expect(dead).toHaveLength(1);
    expect(closing.value).toEqual({ completed: 1, rejected: 0, abandoned: 0 });
    await vi.advanceTimersByTimeAsync(1000);
    expect(runs).toBe(1);
  });
});

/** A store whose every refund fails at once (quota and rate units alike). */
class FailingRefunds extends MemoryStore {
  override refund(): never {
    throw new Error('quota refund lost');
  }
  override refundRate(): never {
    throw new Error('rate refund lost');
  }
}

/** A store whose rate refunds answer asynchronously, failing (as a remote store's call that is lost). */
class LostRateRefunds extends MemoryStore {
  override refundRate(): Promise<void> {
    return Promise.reject(new Error('rate refund lost'));
  }
}

/** A store whose admissions fail at once. */
class FailingAdmissions extends MemoryStore {
  override admit(): never {
    throw new Error('store down');
  }
}

describe('admission at its edges', () => {
  it('options that cannot be read: INVALID_ARGUMENT saying so and why, the reason as its cause', async () => {
    const m = make();
    m.registerProfile('p', { rate: { limit: 100, intervalMs: 1000 } });
    await m.subscribe('u', 'p');
    const hostile = new Proxy(
      {},
      {
        ownKeys() {
          throw new Error('do not list me');
        },
      },
    );
    const err = await rejection(m.getLimiter('u').submit(() => 'never', hostile));
    expect(err.code).toBe('INVALID_ARGUMENT');
    expect(err.message).toBe('submit options could not be read: Error: do not list me');
    expect((err.cause as Error).message).toBe('do not list me');
  });

  it('a store whose admission throws: submit() still returns a promise, rejected with that error', async () => {
    const m = make(new FailingAdmissions());
    m.registerProfile('p', { rate: { limit: 100, intervalMs: 1000 } });
    await m.subscribe('u', 'p');
    let p!: Promise<unknown>;
    expect(() => {
      p = m.getLimiter('u').submit(() => 'never');
    }).not.toThrow();
    await expect(p).rejects.toThrow('store down');
  });

  it('a signal already aborted: ABORTED at once, the store never asked (a store that would fail is never reached)', async () => {
    const m = make(new FailingAdmissions());
    m.registerProfile('p', { rate: { limit: 100, intervalMs: 1000 } });
    await m.subscribe('u', 'p');
    const controller = new AbortController();
    controller.abort();
    let ran = false;
    const err = await rejection(
      m.getLimiter('u').submit(
        () => {
          ran = true;
        },
        { signal: controller.signal },
      ),
    );
    expect(err.code).toBe('ABORTED');
    expect(ran).toBe(false);
  });

  it('a task aborted while its admission is in flight never runs: ABORTED, refunded', async () => {
    const { store, door, hold } = heldAdmissions();
    const m = make(store);
    m.registerProfile('p', { rate: { limit: 100, intervalMs: 1000 } });
    await m.subscribe('u', 'p');
    hold(true);
    const controller = new AbortController();
    let ran = false;
    const run = track(
      m.getLimiter('u').submit(
        () => {
          ran = true;
        },
        { signal: controller.signal },
      ),
    );
    controller.abort();
    door.open();
    await vi.advanceTimersByTimeAsync(0);
    expect(run.error?.code).toBe('ABORTED');
    expect(ran).toBe(false);
    expect(await usage(m, 'u')).toBe(0);
  });

  const failing = [
    { how: 'at once', store: () => new FailingRefunds(), lost: ['quota refund lost', 'rate refund lost'] },
    { how: 'asynchronously', store: () => new LostRateRefunds(), lost: ['rate refund lost'] },
  ];
  for (const { how, store, lost } of failing) {
    it(`refunds the store fails ${how} are reported to error listeners; the caller still gets its answer`, async () => {
      const m = make(store());
      m.registerProfile('p', { rate: { limit: 100, intervalMs: 1000 }, pool: { perUserConcurrency: 1 } });
      await m.subscribe('u', 'p');
      const errors = faults(m);
      const u = m.getLimiter('u');
      const door = gate();
      const running = u.submit(() => door.opened);
      const controller = new AbortController();
      const queued = track(u.submit(() => 'queued', { signal: controller.signal })); // its units are taken: it waits for the slot
      await vi.advanceTimersByTimeAsync(0);
      controller.abort();
      await vi.advanceTimersByTimeAsync(0);
      expect(queued.error?.code).toBe('ABORTED');
      expect(errors.map((e) => e.message).sort()).toEqual(lost);
      door.open();
      await running;
    });
  }
});

describe('a user moved to another profile while tasks wait', () => {
  const big = { rate: { limit: 1, intervalMs: 1000, burst: 3 }, retry: { attempts: 2, baseMs: 100 } };

  it('a waiting task whose cost exceeds the new burst ends at once, INVALID_ARGUMENT, refunded; other users are left alone', async () => {
    const m = make();
    m.registerProfile('big', big);
    m.registerProfile('small', { rate: { limit: 1, intervalMs: 1000, burst: 1 } });
    await m.subscribe('a', 'big');
    await m.subscribe('b', 'big');
    const [a, b] = [m.getLimiter('a'), m.getLimiter('b')];
    expect(await a.submit(() => 'a first', { cost: 3 })).toBe('a first');
    expect(await b.submit(() => 'b first', { cost: 3 })).toBe('b first');
    const aWaits = track(a.submit(() => 'never', { cost: 3 }));
    const bWaits = track(b.submit(() => 'b second', { cost: 3 }));
    await m.changeProfile('a', 'small');
    expect(aWaits.error?.code).toBe('INVALID_ARGUMENT');
    expect(aWaits.error?.message).toMatch(/burst 1 of profile "small" \(the profile changed while the task waited\)/);
    expect(await usage(m, 'a')).toBe(3);
    await vi.advanceTimersByTimeAsync(3000);
    expect(bWaits.value).toBe('b second');
  });

  it('a task waiting for its retry follows the new profile: its cost equal to the new burst, it retries; the bucket then holds nothing for it', async () => {
    const m = make();
    m.registerProfile('big', big);
    m.registerProfile('two', { rate: { limit: 2, intervalMs: 1000, burst: 2 }, retry: { attempts: 2, baseMs: 100 } });
    await m.subscribe('u', 'big');
    const events = record(m);
    const u = m.getLimiter('u');
    const run = track(u.submit(failsOnce('second'), { cost: 2, taskId: 'T' }));
    await vi.advanceTimersByTimeAsync(0);
    await m.changeProfile('u', 'two');
    await vi.advanceTimersByTimeAsync(2000);
    expect(run.value).toBe('second');
    expect(events.filter((e) => e.id === 'T' && e.attempt === 2).every((e) => e.profileName === 'two')).toBe(true);
    await vi.advanceTimersByTimeAsync(10_000);
    expect((await u.peek()).remaining).toBe(2); // refilled: no units wait for a task that is gone
  });

  it('a task waiting for its retry whose cost exceeds the new burst ends at once, INVALID_ARGUMENT', async () => {
    const m = make();
    m.registerProfile('big', big);
    m.registerProfile('small', { rate: { limit: 1, intervalMs: 1000, burst: 1 } });
    await m.subscribe('u', 'big');
    const dead = letters(m);
    const run = track(m.getLimiter('u').submit(failsOnce('second'), { cost: 2 }));
    await vi.advanceTimersByTimeAsync(0);
    await m.changeProfile('u', 'small');
    expect(run.error?.code).toBe('INVALID_ARGUMENT');
    expect(run.error?.message).toMatch(/\(the profile changed while the task waited\)/);
    await vi.advanceTimersByTimeAsync(100);
    expect(dead).toEqual([]);
  });

});

describe('a subscription canceled while tasks wait', () => {
  it('rejects the tasks whose units are taken but that wait for a slot, refunded; the running one goes on', async () => {
    const m = make();
    m.registerProfile('p', { rate: { limit: 100, intervalMs: 1000 }, pool: { perUserConcurrency: 1 } });
    await m.subscribe('u', 'p');
    const u = m.getLimiter('u');
    const door = gate();
    const running = u.submit(() => door.opened.then(() => 'running'));
    const queued = track(u.submit(() => 'queued'));
    await vi.advanceTimersByTimeAsync(0);
    await m.cancelSubscription('u');
    await vi.advanceTimersByTimeAsync(0);
    expect(queued.error?.code).toBe('SUBSCRIPTION_INACTIVE');
    expect(await usage(m, 'u')).toBe(1);
    door.open();
    expect(await running).toBe('running');
  });
});

describe('a task between attempts', () => {
  it('rejected by a close without drain leaves no timer behind: its retry never comes', async () => {
    const m = make();
    m.registerProfile('p', { rate: { limit: 100, intervalMs: 1000 }, retry: { attempts: 2, baseMs: 3_600_000 } });
    await m.subscribe('u', 'p');
    let runs = 0;
    const run = track(
      m.getLimiter('u').submit(() => {
        runs++;
        throw new Error('boom');
      }),
    );
    await vi.advanceTimersByTimeAsync(0); // failed once: its retry is an hour away
    const closing = m.close({ drain: false, timeoutMs: 1000 });
    await vi.advanceTimersByTimeAsync(0);
    expect(await closing).toEqual({ completed: 0, rejected: 1, abandoned: 0 });
    expect(run.error?.code).toBe('SHUTTING_DOWN');
    expect(vi.getTimerCount()).toBe(0); // nothing keeps the process alive
    expect(runs).toBe(1);
  });

});

describe('profiles side by side', () => {
  it("a user's concurrency cap holds while users of another profile come and go", async () => {
    const m = make();
    m.registerProfile('capped', { rate: { limit: 1, intervalMs: 1000 }, pool: { perUserConcurrency: 1 } });
    m.registerProfile('free', { rate: { limit: 100, intervalMs: 1000 } });
    await m.subscribe('a', 'capped');
    await m.subscribe('b', 'free');
    const [a, b] = [m.getLimiter('a'), m.getLimiter('b')];
    const door = gate();
    const first = a.submit(() => door.opened.then(() => 'first'));
    let secondStarted = false;
    const second = a.submit(() => {
      secondStarted = true;
      return 'second';
    }); // waits for its rate turn
    expect(await b.submit(() => 'other')).toBe('other');
    await vi.advanceTimersByTimeAsync(1000);
    expect(await b.submit(() => 'other again')).toBe('other again');
    expect(secondStarted).toBe(false); // its turn came, but the first still runs
    door.open();
    expect(await first).toBe('first');
    expect(await second).toBe('second');
  });
});

describe('retries and the rate line', () => {
  it('a retry does not need room in the queue: it runs after the tasks queued meanwhile', async () => {
    const m = make();
    m.registerProfile('p', { rate: { limit: 100, intervalMs: 1000 }, pool: { perUserConcurrency: 1, maxQueue: 1 }, retry: { attempts: 2, baseMs: 100 } });
    await m.subscribe('u', 'p');
    const u = m.getLimiter('u');
    const retried = track(u.submit(failsOnce('retried')));
    await vi.advanceTimersByTimeAsync(0); // failed once; its retry waits 100 ms
    const door = gate();
    const running = u.submit(() => door.opened.then(() => 'running'));
    const queued = u.submit(() => 'queued'); // the queue is full now
    await vi.advanceTimersByTimeAsync(100);
    expect(retried.settled).toBe(false);
    door.open();
    expect(await Promise.all([running, queued])).toEqual(['running', 'queued']);
    await vi.advanceTimersByTimeAsync(0);
    expect(retried.value).toBe('retried');
  });

  it('a retry does not overtake a task already waiting for its turn on the bucket', async () => {
    const m = make();
    m.registerProfile('p', { rate: { limit: 1, intervalMs: 1000, burst: 3 }, retry: { attempts: 2, baseMs: 100 } });
    await m.subscribe('u', 'p');
    const u = m.getLimiter('u');
    const done: string[] = [];
    const retried = u.submit(({ attempt }) => {
      if (attempt === 1) throw new Error('first attempt fails');
      done.push('retried');
    });
    await vi.advanceTimersByTimeAsync(0); // one unit spent; its retry comes in 100 ms
    const waiting = u.submit(() => done.push('waiting'), { cost: 3 }); // waits for all three units
    await vi.advanceTimersByTimeAsync(5000);
    await Promise.all([retried, waiting]);
    expect(done).toEqual(['waiting', 'retried']);
  });
});

/**
 * A store whose admissions give receipts of its own numbering (`receipt`; -1: it cannot give the
 * units back), and that records the receipts it is asked to give back.
 */
class OwnReceipts extends MemoryStore {
  receipt = 0;
  readonly givenBack: number[] = [];
  override admit(...args: Parameters<MemoryStore['admit']>): ReturnType<MemoryStore['admit']> {
    const answer = super.admit(...args);
    if (answer.receiptTat >= 0) answer.receiptTat = this.receipt;
    return answer;
  }
  override refundRate(_userId: string, _cost: number, receipt: RateReceipt): void {
    this.givenBack.push(receipt.tat);
  }
}

describe('rate units a task never used', () => {
  it('are given back with the receipt the store gave, whatever its value, unless the store said it cannot give them back (-1)', async () => {
    const store = new OwnReceipts();
    const m = make(store);
    m.registerProfile('p', { rate: { limit: 100, intervalMs: 1000 }, pool: { perUserConcurrency: 1 } });
    await m.subscribe('u', 'p');
    const u = m.getLimiter('u');
    const door = gate();
    const running = u.submit(() => door.opened);
    for (const receipt of [0, -1]) {
      store.receipt = receipt;
      const controller = new AbortController();
      const queued = track(u.submit(() => 'never', { signal: controller.signal })); // its units are taken: it waits for the slot
      await vi.advanceTimersByTimeAsync(0);
      controller.abort();
      await vi.advanceTimersByTimeAsync(0);
      expect(queued.error?.code).toBe('ABORTED');
    }
    expect(store.givenBack).toEqual([0]);
    door.open();
    await running;
  });
});

describe('a running task stopped', () => {
  it("by its caller's abort: its RUNNING>CANCELED event gives the reason aborted", async () => {
    const m = make();
    m.registerProfile('p', { rate: { limit: 100, intervalMs: 1000 } });
    await m.subscribe('u', 'p');
    const events = record(m);
    const door = gate();
    const controller = new AbortController();
    const run = track(m.getLimiter('u').submit(() => door.opened, { signal: controller.signal, taskId: 'T' }));
    await vi.advanceTimersByTimeAsync(0);
    controller.abort();
    await vi.advanceTimersByTimeAsync(0);
    expect(run.error?.code).toBe('ABORTED');
    expect(events.filter((e) => e.id === 'T' && e.to === 'CANCELED').map((e) => `${e.from}>${e.to} ${e.reason}`)).toEqual(['RUNNING>CANCELED aborted']);
    door.open();
  });
});

describe('rate units given back', () => {
  it('all come back when many tasks holding them are aborted in one go, in any order, more of them than a bucket keeps a log of', async () => {
    const m = make();
    m.registerProfile('p', { rate: { limit: 100, intervalMs: 1000 }, pool: { perUserConcurrency: 1 } });
    await m.subscribe('u', 'p');
    const u = m.getLimiter('u');
    const door = gate();
    const running = u.submit(() => door.opened);
    const controllers = Array.from({ length: 60 }, () => new AbortController());
    const queued = controllers.map((c) => rejection(u.submit(() => 'never', { signal: c.signal }))); // their units are taken: they wait for the slot
    await vi.advanceTimersByTimeAsync(0);
    expect((await u.peek()).remaining).toBe(39);
    // From both ends inwards (first, last, second, second to last...), all in one run of code.
    for (let i = 0; i < 30; i++) {
      controllers[i]?.abort();
      controllers[59 - i]?.abort();
    }
    expect((await Promise.all(queued)).every((e) => e.code === 'ABORTED')).toBe(true);
    await vi.advanceTimersByTimeAsync(0);
    expect((await u.peek()).remaining).toBe(99); // only the running task's unit is spent
    door.open();
    await running;
  });
});

describe('close() and what running a task came to', () => {
  it('with drain, a task that returns the SHUTTING_DOWN error of a submit it made during the close ran to its end: completed', async () => {
    const m = make();
    m.registerProfile('p', { rate: { limit: 100, intervalMs: 1000 } });
    await m.subscribe('u', 'p');
    const u = m.getLimiter('u');
    const door = gate();
    const run = u.submit(async () => {
      await door.opened;
      return u.submit(() => 'never').catch((error: unknown) => error);
    });
    await vi.advanceTimersByTimeAsync(0);
    const closing = m.close({ drain: true, timeoutMs: 60_000 });
    door.open();
    expect(((await run) as TaskvalveError).code).toBe('SHUTTING_DOWN');
    expect(await closing).toEqual({ completed: 1, rejected: 0, abandoned: 0 });
  });
});

/** A store that says the user's usage period ends at the very moment of each decision (0 ms left). */
function periodEndsNow(): Store {
  const inner = new MemoryStore();
  return storeWith(inner, {
    admit(...args: Parameters<MemoryStore['admit']>) {
      return { ...inner.admit(...args), quotaResetAfterMs: 0 };
    },
  });
}

describe('quota figures of a usage period that ends at the decision', () => {
  const profile = { rate: { limit: 1, intervalMs: 1000 }, quota: { limit: 10, periodMs: 60_000 } };

  it('checkDetailed() gives 0 ms until the period ends, not null (which says there is no period)', async () => {
    const m = make(periodEndsNow());
    m.registerProfile('p', profile);
    await m.subscribe('u', 'p');
    expect(await m.getLimiter('u').checkDetailed()).toMatchObject({ allowed: true, quotaLimit: 10, quotaResetAfterMs: 0 });
  });

  it('a RATE_LIMITED refusal gives 0 ms until the period ends, not null', async () => {
    const m = make(periodEndsNow());
    m.registerProfile('p', profile);
    await m.subscribe('u', 'p');
    const u = m.getLimiter('u');
    expect(await u.submit(() => 'first')).toBe('first');
    const err = await rejection(u.submit(() => 'never', { wait: false }));
    expect(err.code).toBe('RATE_LIMITED');
    expect(err.refusal).toMatchObject({ quotaLimit: 10, quotaResetAfterMs: 0 });
  });
});

describe('worker tasks and inline tasks side by side', () => {
  const TASKS = new URL('./fixtures/tasks.mjs', import.meta.url);

  it('with the only thread busy and no queue, at their rate turns an inline task still starts and a worker task leaves QUEUE_FULL', async () => {
    vi.useRealTimers(); // real threads
    const m = new Manager();
    managers.push(m);
    m.registerProfile('p', { rate: { limit: 1, intervalMs: 50 }, pool: { filename: TASKS, maxThreads: 1, maxQueue: 0 } });
    await m.subscribe('u', 'p');
    const u = m.getLimiter('u');
    const held = new Int32Array(new SharedArrayBuffer(4));
    const busy = u.submit({ name: 'concurrent', payload: { state: new Int32Array(new SharedArrayBuffer(8)), gate: held, label: 'busy' } });
    // The bucket is spent: both wait for their turn, the thread still busy when it comes.
    const inline = u.submit(() => 'inline at its turn');
    const worker = rejection(u.submit({ name: 'echo', payload: 2 }));
    expect(await inline).toBe('inline at its turn');
    expect((await worker).code).toBe('QUEUE_FULL');
    Atomics.store(held, 0, 1);
    Atomics.notify(held, 0);
    expect(await busy).toMatchObject({ label: 'busy' });
  });

  it('a worker task abandoned by close(): its thread is terminated, and its end is neither a late event, a crash nor a dead letter', async () => {
    vi.useRealTimers(); // real threads
    // The store's own close waits for the test: the metrics are still registered until it ends.
    const storeClosing = gate();
    const storeClosed = gate();
    const store = storeWith(new MemoryStore(), {
      close() {
        storeClosing.open();
        return storeClosed.opened.then(() => ({ owed: 0 }));
      },
    });
    const m = new Manager({ store });
    managers.push(m);
    m.registerProfile('p', { rate: { limit: 100, intervalMs: 1000 }, pool: { filename: TASKS, maxThreads: 1 } });
    await m.subscribe('u', 'p');
    const dead = letters(m);
    const running = new Promise<void>((resolve) =>
      m.on('task', (e) => {
        if (e.id === 'T' && e.to === 'RUNNING') resolve();
      }),
    );
    // Holds its thread (at most 5 s) on a gate nobody opens; it has no signal, so only terminating its thread stops it.
    const payload = { state: new Int32Array(new SharedArrayBuffer(8)), gate: new Int32Array(new SharedArrayBuffer(4)), label: 'held' };
    const held = rejection(m.getLimiter('u').submit({ name: 'concurrent', payload }, { taskId: 'T' }));
    await running;
    const closing = m.close({ drain: false, timeoutMs: 0 });
    expect((await held).code).toBe('SHUTTING_DOWN');
    await storeClosing.opened; // the pools are destroyed: the terminated run's end has come back
    try {
      // The thread close() terminated is not the task's answer.
      expect(await scrape(m, 'taskvalve_task_late_events_total', { profile: 'p' })).toBe(0);
      expect(await scrape(m, 'taskvalve_tasks_completed_total', { profile: 'p', outcome: 'crashed' })).toBe(0);
      expect(dead).toEqual([]);
    } finally {
      storeClosed.open();
    }
    expect(await closing).toEqual({ completed: 0, rejected: 0, abandoned: 1 });
  });
});
