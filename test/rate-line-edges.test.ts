// Edges of the rate line (tasks waiting for their rate turn, onLimit 'wait'): deadlines of users
// of one shared bucket with different maxWaitMs, retries on a shared bucket, and a store whose
// turns answer asynchronously, one take per call (no takeTurns) or in batches (the RedisStore).
import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import { Manager, MemoryStore, RedisStore, type ProfileConfig, type RateReceipt, type Store, type TaskvalveError, type TurnRequest, type TurnsTaken } from '../src/index.js';
import { rejection, track } from './helpers.js';
import { startRedis, type RedisServer } from './support/redis.js';

/**
 * 1 unit per second, room for 3, spent by a check: a task (1 s away), a big one of cost 3 (4 s
 * away) aborted at 1.5 s, and a small one behind it, which starts at 2 s, when its own unit
 * conforms (fake timers).
 */
async function headAbortedWhileSleeping(manager: Manager, since: () => number): Promise<void> {
    manager.registerProfile('p', { rate: { limit: 1, intervalMs: 1000, burst: 3 } });
    await manager.subscribe('A', 'p');
    const limiter = manager.getLimiter('A');
    // A check takes its units: the bucket is empty.
    expect((await limiter.check(3)).allowed).toBe(true);
    const starts: string[] = [];
    const controller = new AbortController();
    const first = limiter.submit(() => starts.push(`first@${since()}`));
    const big = limiter.submit(() => starts.push('big'), { cost: 3, signal: controller.signal }).catch((e: TaskvalveError) => e.code);
    const small = limiter.submit(() => starts.push(`small@${since()}`));
    // At 1 s the first task's turn comes; the big one's would come at 4 s.
    await vi.advanceTimersByTimeAsync(1500);
    controller.abort();
    expect(await big).toBe('ABORTED');
    await vi.advanceTimersByTimeAsync(500);
    await Promise.all([first, small]);
    expect(starts).toEqual(['first@1000', 'small@2000']);
}

describe('on the MemoryStore (fake timers)', () => {
  let manager: Manager;
  let t0: number;
  const since = () => Date.now() - t0;

  beforeEach(() => {
    vi.useFakeTimers();
    t0 = Date.now();
    manager = new Manager();
  });

  afterEach(async () => {
    const closing = manager.close({ drain: false, timeoutMs: 0 });
    await vi.runAllTimersAsync();
    await closing;
    vi.useRealTimers();
  });

  it('on a shared bucket, a task whose profile allows a shorter wait leaves RATE_LIMITED at its own deadline, even when it joined after tasks allowed to wait longer; tasks with no deadline wait on', async () => {
    // One bucket of 1 per second, burst 1, shared by three profiles: 'patient' waits up to 60 s,
    // 'hasty' 3.5 s, 'calm' as long as it takes.
    const rate = { limit: 2, intervalMs: 2000, burst: 1, shared: 'pool' };
    manager.registerProfile('patient', { rate: { ...rate, maxWaitMs: 60_000 } });
    manager.registerProfile('hasty', { rate: { ...rate, maxWaitMs: 3500 } });
    manager.registerProfile('calm', { rate });
    const users = [['D', 'calm'], ['A', 'patient'], ['B', 'hasty'], ['C', 'patient'], ['E', 'calm'], ['F', 'patient']] as const;
    for (const [user, profile] of users) await manager.subscribe(user, profile);
    const starts: string[] = [];
    const submit = (user: string, name = user) => manager.getLimiter(user).submit(() => starts.push(`${name}@${since()}`));
    // D spends the bucket at 0. Then A, B (twice), C, E and F wait: round-robin gives A at 1 s, B
    // at 2 s, C at 3 s, E at 4 s, F at 5 s, and B's second would come at 6 s, past its deadline (3.5 s).
    const runs = [submit('D'), submit('A'), submit('B', 'B1')];
    const b2 = track(submit('B', 'B2'));
    runs.push(submit('C'), submit('E'), submit('F'));
    await vi.advanceTimersByTimeAsync(3499);
    expect(b2.settled).toBe(false);
    await vi.advanceTimersByTimeAsync(1);
    expect(b2.error?.code).toBe('RATE_LIMITED');
    // A new request could run once E's turn (0.5 s away) and the two units waiting after it (2 s) have passed.
    expect(b2.error?.retryAfterMs).toBe(2500);
    await vi.advanceTimersByTimeAsync(1500);
    await Promise.all(runs);
    expect(starts).toEqual(['D@0', 'A@1000', 'B1@2000', 'C@3000', 'E@4000', 'F@5000']);
  });

  it("a retry on a shared bucket takes its turn round-robin behind the other users' waiting tasks, not ahead of the line", async () => {
    manager.registerProfile('p', { rate: { limit: 1, intervalMs: 1000, burst: 1, shared: 'pool' }, retry: { attempts: 2, baseMs: 500, multiplier: 1, jitter: 0 } });
    await manager.subscribe('A', 'p');
    await manager.subscribe('B', 'p');
    const starts: string[] = [];
    let tries = 0;
    // A's task runs at 0 and fails: its retry is due at 0.5 s, while B's two tasks wait (1 s, 2 s).
    const x = manager.getLimiter('A').submit(() => {
      starts.push(`X@${since()}`);
      if (++tries === 1) throw new Error('once');
      return 'x';
    });
    const ys = [1, 2].map((i) => manager.getLimiter('B').submit(() => starts.push(`Y${i}@${since()}`)));
    await vi.advanceTimersByTimeAsync(5000);
    await Promise.all([x, ...ys]);
    // The retry joined the line in A's lane: B's first at 1 s, then A's retry, then B's second.
    expect(starts).toEqual(['X@0', 'Y1@1000', 'X@2000', 'Y2@3000']);
  });

  it('when the head is aborted while the line sleeps after a turn, the task behind it starts when its own units conform', async () => {
    await headAbortedWhileSleeping(manager, since);
  });

  it('a user whose lane emptied and who submits again takes one turn per round, like everyone else', async () => {
    manager.registerProfile('p', { rate: { limit: 1, intervalMs: 1000, burst: 1, shared: 'pool' } });
    for (const user of ['D', 'A', 'B']) await manager.subscribe(user, 'p');
    const starts: string[] = [];
    const submit = (user: string, name: string) => manager.getLimiter(user).submit(() => starts.push(`${name}@${since()}`));
    const runs = [submit('D', 'D'), submit('A', 'A1'), submit('B', 'B1'), submit('B', 'B2'), submit('B', 'B3')];
    // A's only task starts at 1 s; A then submits two more.
    await vi.advanceTimersByTimeAsync(1500);
    runs.push(submit('A', 'A2'), submit('A', 'A3'));
    await vi.advanceTimersByTimeAsync(5000);
    await Promise.all(runs);
    expect(starts).toEqual(['D@0', 'A1@1000', 'B1@2000', 'A2@3000', 'B2@4000', 'A3@5000', 'B3@6000']);
  });

  it('when the head of the line leaves RATE_LIMITED at its deadline, the tasks behind it still have their turns', async () => {
    const rate = { limit: 1, intervalMs: 1000, burst: 1, shared: 'pool' };
    manager.registerProfile('hasty', { rate: { ...rate, maxWaitMs: 2500 } });
    manager.registerProfile('calm', { rate });
    for (const [user, profile] of [['D', 'calm'], ['A', 'hasty'], ['B', 'calm']] as const) await manager.subscribe(user, profile);
    const starts: string[] = [];
    const submit = (user: string, name: string) => manager.getLimiter(user).submit(() => starts.push(`${name}@${since()}`));
    // Round-robin: A1 at 1 s, B1 at 2 s; A2 would come at 3 s, past its deadline (2.5 s): it leaves, and B2 follows at 3 s.
    const runs = [submit('D', 'D'), submit('A', 'A1')];
    const a2 = track(submit('A', 'A2'));
    runs.push(submit('B', 'B1'), submit('B', 'B2'));
    await vi.advanceTimersByTimeAsync(3000);
    await Promise.all(runs);
    expect(a2.error?.code).toBe('RATE_LIMITED');
    expect(starts).toEqual(['D@0', 'A1@1000', 'B1@2000', 'B2@3000']);
  });

  it('when the head leaves RATE_LIMITED at its deadline, a task behind it whose units conform starts at once', async () => {
    // Two managers on one store, as two processes on one shared bucket.
    const store = new MemoryStore();
    await manager.close();
    manager = new Manager({ store });
    const other = new Manager({ store });
    const rate = { limit: 1, intervalMs: 1000, burst: 3, shared: 'pool' };
    for (const m of [manager, other]) {
      m.registerProfile('calm', { rate });
      m.registerProfile('hasty', { rate: { ...rate, maxWaitMs: 3500 } });
    }
    await manager.subscribe('X', 'calm');
    await manager.subscribe('Y', 'hasty');
    await other.subscribe('Z', 'calm');
    // A check takes the bucket's units: one conforms per second from 0.
    expect((await manager.getLimiter('X').check(3)).allowed).toBe(true);
    const starts: string[] = [];
    // Y's task of cost 3 would conform at 3 s, within its wait (3.5 s); X's task waits behind it.
    const big = manager.getLimiter('Y').submit(() => starts.push('big'), { cost: 3 }).catch((e: TaskvalveError) => e.code);
    const small = manager.getLimiter('X').submit(() => starts.push(`small@${since()}`));
    // At 2 s the other process takes a unit: the big task's units conform at 4 s, past its deadline.
    try {
      await vi.advanceTimersByTimeAsync(2000);
      expect((await other.getLimiter('Z').check(1)).allowed).toBe(true);
      await vi.advanceTimersByTimeAsync(1500);
      expect(await big).toBe('RATE_LIMITED');
      // The small task's unit conforms at 3.5 s.
      expect(starts).toEqual(['small@3500']);
      await small;
    } finally {
      await other.close();
    }
  });

  it('while tasks still wait after a turn, a check counts their units: it is not allowed ahead of them', async () => {
    manager.registerProfile('p', { rate: { limit: 1, intervalMs: 1000, burst: 1 } });
    await manager.subscribe('A', 'p');
    const limiter = manager.getLimiter('A');
    expect((await limiter.check(1)).allowed).toBe(true);
    const runs = [0, 1].map((i) => limiter.submit(() => i));
    // The first starts at 1 s; the second waits for 2 s. At 1.5 s a check would need 3 s.
    await vi.advanceTimersByTimeAsync(1500);
    expect(await limiter.check(1)).toMatchObject({ allowed: false, retryAfterMs: 1500 });
    await vi.advanceTimersByTimeAsync(500);
    expect(await Promise.all(runs)).toEqual([0, 1]);
  });

  it.each(['aborted', 'started'] as const)('once the last waiting task of a bucket has %s, a retry whose units conform goes straight to the queue, not through the rate line', async (how) => {
    manager.registerProfile('p', { rate: { limit: 1, intervalMs: 1000, burst: 1 }, retry: { attempts: 2, baseMs: 5000, multiplier: 1, jitter: 0 } });
    await manager.subscribe('A', 'p');
    const limiter = manager.getLimiter('A');
    const moves: string[] = [];
    manager.on('task', (e) => {
      if (e.id === 'r' && e.attempt === 2) moves.push(`${e.from}>${e.to}`);
    });
    let tries = 0;
    // The task runs at 0 and fails: its retry is due at 5 s.
    const r = limiter.submit(
      () => {
        if (++tries === 1) throw new Error('once');
        return since();
      },
      { taskId: 'r' },
    );
    // Another task waits for its turn (1 s): it is aborted, or it starts. Nobody waits any more.
    const controller = new AbortController();
    const w = limiter.submit(() => 'w', { signal: controller.signal }).catch((e: TaskvalveError) => e.code);
    await vi.advanceTimersByTimeAsync(how === 'aborted' ? 10 : 1000);
    controller.abort();
    expect(await w).toBe(how === 'aborted' ? 'ABORTED' : 'w');
    await vi.advanceTimersByTimeAsync(5000);
    expect(await r).toBe(5000);
    expect(moves[0]).toBe('RETRY_WAIT>QUEUED');
    expect(moves).not.toContain('RETRY_WAIT>WAITING_RATE');
  });
});

/** `target` as a Store, with `overrides` in place of its own members (the rest bound to it). */
function overriding<T extends object>(target: T, overrides: Record<string, unknown>): Store {
  return new Proxy(target, {
    get(t, prop) {
      if (typeof prop === 'string' && Object.hasOwn(overrides, prop)) return overrides[prop];
      const value: unknown = Reflect.get(t, prop, t);
      return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(t) : value;
    },
  }) as unknown as Store;
}

/** Answers a store's calls give, held while `state.hold` until the test releases them or fails them. */
function holder<T>(state: { hold: boolean }) {
  const held: { answer: T; resolve: (answer: T) => void; reject: (error: Error) => void }[] = [];
  return {
    /** The answer now, or later if answers are held. */
    answer: (answer: T): Promise<T> => (state.hold ? new Promise<T>((resolve, reject) => held.push({ answer, resolve, reject })) : Promise.resolve(answer)),
    /** The held answers reach the line. */
    release: (): void => {
      for (const call of held.splice(0)) call.resolve(call.answer);
    },
    /** The held calls fail instead (their units stay taken, as when a reply is lost). */
    fail: (error: Error): void => {
      for (const call of held.splice(0)) call.reject(error);
    },
  };
}

/**
 * A MemoryStore behind a store whose `take` answers with a promise and that has no
 * `takeTurns` (a store is free to answer either way): each waiting task's turn is one call.
 * Its answers can be held until the test lets them go, and the next call can be made to fail;
 * `receipts: false` answers with no receipts (a store that cannot say how to give units back).
 */
function asyncTakes(inner: MemoryStore) {
  const state = { hold: false, failNext: undefined as Error | undefined, calls: 0, receipts: true };
  const answers = holder<number>(state);
  const store = overriding(inner, {
    takeTurns: undefined,
    take: (...args: Parameters<MemoryStore['take']>): Promise<number> => {
      state.calls++;
      const error = state.failNext;
      if (error !== undefined) {
        state.failNext = undefined;
        return Promise.reject(error);
      }
      // The units are taken now (as a store's script runs when the call arrives); the answer comes later.
      // Without receipts, the store does not say how to give them back.
      const [userId, cost, nowMs, slot, receipt] = args;
      return answers.answer(inner.take(userId, cost, nowMs, slot, state.receipts ? receipt : undefined));
    },
  });
  return { store, state, release: answers.release, fail: answers.fail };
}

/**
 * The hooks of a suite on a store whose answers can be held (fake timers): before each test a
 * fresh store from `make` and a manager on it, handed to `use`; after it, the held answers let go
 * and the manager closed. Returns the ms since the test began, on the fake clock.
 */
function onHeldStore<S extends { store: Store; state: { hold: boolean }; release(): void }>(make: () => S, use: (manager: Manager, held: S) => void): () => number {
  let manager: Manager;
  let held: S;
  let t0 = 0;
  beforeEach(() => {
    vi.useFakeTimers();
    t0 = Date.now();
    held = make();
    manager = new Manager({ store: held.store });
    use(manager, held);
  });
  afterEach(async () => {
    held.state.hold = false;
    held.release();
    const closing = manager.close({ drain: false, timeoutMs: 0 });
    await vi.runAllTimersAsync();
    await closing;
    vi.useRealTimers();
  });
  return () => Date.now() - t0;
}

describe('on a store whose takes answer asynchronously, one task per call (fake timers)', () => {
  let manager: Manager;
  let takes: ReturnType<typeof asyncTakes>;
  const since = onHeldStore(
    () => asyncTakes(new MemoryStore()),
    (m, held) => ((manager = m), (takes = held)),
  );

  it('waiting tasks start one per turn, in order, each when its units conform', async () => {
    manager.registerProfile('p', { rate: { limit: 1, intervalMs: 1000, burst: 1 } });
    await manager.subscribe('A', 'p');
    const starts: string[] = [];
    const runs = [0, 1, 2, 3].map((i) => manager.getLimiter('A').submit(() => starts.push(`${i}@${since()}`)));
    await vi.advanceTimersByTimeAsync(2500);
    expect(starts).toEqual(['0@0', '1@1000', '2@2000']);
    await vi.advanceTimersByTimeAsync(500);
    await Promise.all(runs);
    expect(starts).toEqual(['0@0', '1@1000', '2@2000', '3@3000']);
  });

  it("when the head is aborted, the next task's turn is asked at once and, not conforming yet, comes when its units do", async () => {
    await headAbortedWhileSleeping(manager, since);
  });

  it('a task behind the head aborted while the line sleeps for the head does not have the line ask the store again: the head starts when its units conform', async () => {
    manager.registerProfile('p', { rate: { limit: 1, intervalMs: 1000, burst: 3 } });
    await manager.subscribe('A', 'p');
    const limiter = manager.getLimiter('A');
    // A check takes its units: the bucket is empty.
    expect((await limiter.check(3)).allowed).toBe(true);
    const starts: string[] = [];
    const controller = new AbortController();
    const head = limiter.submit(() => starts.push(`head@${since()}`), { cost: 3 });
    const behind = limiter.submit(() => starts.push('behind'), { signal: controller.signal }).catch((e: TaskvalveError) => e.code);
    const last = limiter.submit(() => starts.push(`last@${since()}`));
    // The head's units conform at 3 s: the line sleeps until then.
    await vi.advanceTimersByTimeAsync(500);
    const calls = takes.state.calls;
    controller.abort();
    expect(await behind).toBe('ABORTED');
    await vi.advanceTimersByTimeAsync(2000);
    expect(takes.state.calls).toBe(calls);
    await vi.advanceTimersByTimeAsync(2000);
    await Promise.all([head, last]);
    expect(starts).toEqual(['head@3000', 'last@4000']);
  });

  it('a task aborted while its turn is in flight does not start, its units come back, and the next task still has its turn', async () => {
    manager.registerProfile('p', { rate: { limit: 1, intervalMs: 1000, burst: 3 } });
    await manager.subscribe('A', 'p');
    const limiter = manager.getLimiter('A');
    // A check takes its units: the bucket is empty (its next unit conforms at 1 s).
    expect((await limiter.check(3)).allowed).toBe(true);
    const starts: string[] = [];
    const controller = new AbortController();
    const first = limiter.submit(() => starts.push('first'), { cost: 2, signal: controller.signal }).catch((e: TaskvalveError) => e.code);
    const second = limiter.submit(() => starts.push(`second@${since()}`));
    takes.state.hold = true;
    const calls = takes.state.calls;
    await vi.advanceTimersByTimeAsync(3000);
    // The first task's turn was asked for at 3 s (its two units taken); the answer is held.
    expect(takes.state.calls).toBe(calls + 1);
    controller.abort();
    expect(await first).toBe('ABORTED');
    takes.state.hold = false;
    takes.release();
    await vi.advanceTimersByTimeAsync(0);
    // Its two units were given back: only the second task's unit waits on the bucket.
    expect(await limiter.peek()).toMatchObject({ remaining: 2 });
    await vi.advanceTimersByTimeAsync(2000);
    await second;
    expect(starts).toHaveLength(1);
    expect(starts[0]).toMatch(/^second@/);
  });

  it('a task aborted while its turn is in flight is given nothing back when the store gave no receipt for its units, and the next task still has its turn', async () => {
    manager.registerProfile('p', { rate: { limit: 1, intervalMs: 1000, burst: 3 } });
    await manager.subscribe('A', 'p');
    const errors: Error[] = [];
    manager.on('error', (e) => errors.push(e));
    const limiter = manager.getLimiter('A');
    expect((await limiter.check(3)).allowed).toBe(true);
    const controller = new AbortController();
    const first = limiter.submit(() => 'first', { cost: 2, signal: controller.signal }).catch((e: TaskvalveError) => e.code);
    const second = limiter.submit(() => 'second');
    // The first task's turn is asked for at 2 s (its two units taken, with no receipt); the answer is held.
    takes.state.receipts = false;
    takes.state.hold = true;
    const calls = takes.state.calls;
    await vi.advanceTimersByTimeAsync(2000);
    expect(takes.state.calls).toBe(calls + 1);
    controller.abort();
    expect(await first).toBe('ABORTED');
    takes.state.hold = false;
    takes.release();
    await vi.advanceTimersByTimeAsync(1000);
    expect(await second).toBe('second');
    expect(errors).toEqual([]);
  });

  it('a task aborted while its turn is in flight, its units not conforming yet: the next task has its turn when its own units conform', async () => {
    manager.registerProfile('p', { rate: { limit: 1, intervalMs: 1000, burst: 3 } });
    await manager.subscribe('A', 'p');
    const limiter = manager.getLimiter('A');
    // A check takes its units: the bucket is empty.
    expect((await limiter.check(3)).allowed).toBe(true);
    const starts: string[] = [];
    const controller = new AbortController();
    const big = limiter.submit(() => starts.push('big'), { cost: 3, signal: controller.signal }).catch((e: TaskvalveError) => e.code);
    const small = limiter.submit(() => starts.push(`small@${since()}`));
    // A profile change (same rate) at 0.5 s has the line ask for the big task's turn at once: the
    // store will answer that it does not conform yet. The task is aborted before that answer.
    takes.state.hold = true;
    await vi.advanceTimersByTimeAsync(500);
    manager.registerProfile('q', { rate: { limit: 1, intervalMs: 1000, burst: 3 } });
    await manager.changeProfile('A', 'q');
    await vi.advanceTimersByTimeAsync(0);
    controller.abort();
    expect(await big).toBe('ABORTED');
    takes.state.hold = false;
    takes.release();
    await vi.advanceTimersByTimeAsync(2000);
    await small;
    expect(starts).toEqual(['small@1000']);
  });

  it('the deadline of a task that has left the line does not wake it: the line sleeps until its head conforms', async () => {
    const rate = { limit: 1, intervalMs: 1000, burst: 3, shared: 'pool' };
    manager.registerProfile('calm', { rate });
    manager.registerProfile('hasty', { rate: { ...rate, maxWaitMs: 3000 } });
    await manager.subscribe('X', 'calm');
    await manager.subscribe('Y', 'hasty');
    const x = manager.getLimiter('X');
    // A check takes the bucket's units: one conforms per second from 0.
    expect((await x.check(3)).allowed).toBe(true);
    const starts: string[] = [];
    const controller = new AbortController();
    const first = x.submit(() => starts.push(`first@${since()}`));
    // Y's task may wait until 3 s; it is aborted at 0.5 s.
    const hasty = manager.getLimiter('Y').submit(() => starts.push('hasty'), { signal: controller.signal }).catch((e: TaskvalveError) => e.code);
    const big = x.submit(() => starts.push(`big@${since()}`), { cost: 3 });
    await vi.advanceTimersByTimeAsync(500);
    controller.abort();
    expect(await hasty).toBe('ABORTED');
    // At 1 s the first task has its turn; the big one's three units conform at 4 s.
    await vi.advanceTimersByTimeAsync(500);
    expect(starts).toEqual(['first@1000']);
    const calls = takes.state.calls;
    await vi.advanceTimersByTimeAsync(2500);
    expect(takes.state.calls).toBe(calls);
    await vi.advanceTimersByTimeAsync(500);
    await big;
    expect(starts).toEqual(['first@1000', 'big@4000']);
  });

  it("while a bucket's take is in flight the line asks the store for no other take on it, even once every task of that take has left: a newcomer's turn is asked when the answer is in", async () => {
    manager.registerProfile('p', { rate: { limit: 1, intervalMs: 1000, burst: 1 } });
    await manager.subscribe('A', 'p');
    const limiter = manager.getLimiter('A');
    await limiter.submit(() => 'spend');
    const controller = new AbortController();
    const gone = limiter.submit(() => 'gone', { signal: controller.signal }).catch((e: TaskvalveError) => e.code);
    // Its turn is asked at 1 s (its unit taken); the answer is held. Then it is aborted.
    takes.state.hold = true;
    await vi.advanceTimersByTimeAsync(1000);
    takes.state.hold = false;
    const calls = takes.state.calls;
    controller.abort();
    expect(await gone).toBe('ABORTED');
    // A newcomer waits (its unit conforms at 2 s); the answer is still held at 3 s.
    const newcomer = limiter.submit(() => `newcomer@${since()}`);
    await vi.advanceTimersByTimeAsync(2000);
    expect(takes.state.calls).toBe(calls);
    takes.release();
    await vi.advanceTimersByTimeAsync(0);
    expect(takes.state.calls).toBe(calls + 1);
    expect(await newcomer).toBe('newcomer@3000');
  });

  it('a task moved to another bucket by a profile change while its turn on the old one is in flight waits on, and runs, on its new bucket when that old turn fails', async () => {
    manager.registerProfile('p', { rate: { limit: 1, intervalMs: 1000, burst: 1 } });
    manager.registerProfile('q', { rate: { limit: 1, intervalMs: 1000, burst: 1, shared: 'pool' } });
    await manager.subscribe('A', 'p');
    const limiter = manager.getLimiter('A');
    await limiter.submit(() => 'spend');
    const moved = limiter.submit(() => `ran@${since()}`).catch((e: TaskvalveError) => e.code);
    takes.state.hold = true;
    await vi.advanceTimersByTimeAsync(1000);
    takes.state.hold = false;
    // Its turn on its own bucket is in flight: it moves to the shared one, then that old turn fails.
    await manager.changeProfile('A', 'q');
    takes.fail(new Error('reply lost'));
    await vi.advanceTimersByTimeAsync(0);
    expect(await moved).toBe('ran@1000');
  });

  it('a turn the store fails ends that task STORE_UNAVAILABLE, refunded, and the next task still has its turn', async () => {
    manager.registerProfile('p', { rate: { limit: 1, intervalMs: 1000, burst: 1 }, quota: { limit: 100 } });
    await manager.subscribe('A', 'p');
    const limiter = manager.getLimiter('A');
    await limiter.submit(() => 'spend');
    const starts: string[] = [];
    const first = rejection(limiter.submit(() => starts.push('first')));
    const second = limiter.submit(() => starts.push(`second@${since()}`));
    takes.state.failNext = new Error('connection lost');
    await vi.advanceTimersByTimeAsync(2000);
    expect((await first).code).toBe('STORE_UNAVAILABLE');
    await second;
    expect(starts).toEqual(['second@1000']);
    expect((await manager.getSubscription('A'))?.usage).toBe(2);
  });
});

/**
 * A MemoryStore that also takes turns in batches, answering at once (a store may have
 * `takeTurns` and answer synchronously): the waiters' units in order, while they conform.
 */
function batchTurns(inner: MemoryStore, faults: { failNext: boolean } = { failNext: false }): Store {
  const takeTurns = (waiters: readonly TurnRequest[], nowMs: number): TurnsTaken => {
    if (faults.failNext) {
      faults.failNext = false;
      throw new Error('store down');
    }
    const receipts: (RateReceipt | undefined)[] = [];
    for (const w of waiters) {
      const receipt: { value: RateReceipt | undefined } = { value: undefined };
      const ms = inner.take(w.userId, w.cost, nowMs, w.slot, receipt);
      if (ms !== 0) return { taken: receipts.length, waitMs: ms, receipts };
      receipts.push(receipt.value);
    }
    return { taken: receipts.length, waitMs: 0, receipts };
  };
  return overriding(inner, { takeTurns });
}

describe('on a store that takes turns in batches and answers at once (fake timers)', () => {
  let manager: Manager;
  let t0: number;
  const since = () => Date.now() - t0;

  const faults = { failNext: false };

  beforeEach(() => {
    vi.useFakeTimers();
    t0 = Date.now();
    faults.failNext = false;
    manager = new Manager({ store: batchTurns(new MemoryStore(), faults) });
  });

  afterEach(async () => {
    const closing = manager.close({ drain: false, timeoutMs: 0 });
    await vi.runAllTimersAsync();
    await closing;
    vi.useRealTimers();
  });

  it('tasks whose costs together pass the burst each start when their own units conform', async () => {
    manager.registerProfile('p', { rate: { limit: 1, intervalMs: 1000, burst: 3 } });
    await manager.subscribe('A', 'p');
    const limiter = manager.getLimiter('A');
    // A check takes its units: the bucket is empty.
    expect((await limiter.check(3)).allowed).toBe(true);
    const starts: string[] = [];
    const runs = [0, 1, 2].map((i) => limiter.submit(() => starts.push(`${i}@${since()}`), { cost: 2 }));
    await vi.advanceTimersByTimeAsync(6000);
    await Promise.all(runs);
    expect(starts).toEqual(['0@2000', '1@4000', '2@6000']);
  });

  it('a task left behind a turn that took every task it asked for leaves RATE_LIMITED once past its deadline, told when a new request could run', async () => {
    const rate = { limit: 1, intervalMs: 1000, burst: 2, shared: 'pool' };
    manager.registerProfile('calm', { rate });
    manager.registerProfile('hasty', { rate: { ...rate, maxWaitMs: 3000 } });
    await manager.subscribe('X', 'calm');
    await manager.subscribe('Y', 'hasty');
    // A check takes the bucket's units: one conforms per second from 0.
    expect((await manager.getLimiter('X').check(2)).allowed).toBe(true);
    const starts: string[] = [];
    const submit = (user: string, name: string, cost: number) =>
      manager.getLimiter(user).submit(() => starts.push(`${name}@${since()}`), { cost }).catch((e: TaskvalveError) => e);
    // Y's two tasks may wait until 3 s. Round-robin: Y1 at 1 s, X's task of cost 2 at 3 s; Y2's
    // turn would come at 4 s. The turn at 3 s takes X's task alone (Y2 would pass the burst).
    const runs = [submit('Y', 'Y1', 1), submit('Y', 'Y2', 1), submit('X', 'X1', 2)];
    await vi.advanceTimersByTimeAsync(3000);
    const [y1, y2, x1] = await Promise.all(runs);
    expect([y1, x1]).toEqual([1, 2]);
    expect(starts).toEqual(['Y1@1000', 'X1@3000']);
    // The bucket is empty at 3 s: a new request's unit conforms at 4 s.
    expect(y2).toMatchObject({ code: 'RATE_LIMITED', retryAfterMs: 1000 });
  });

  it('a turn the store fails ends the tasks of it STORE_UNAVAILABLE, their quota refunded, and the task behind them still has its turn', async () => {
    manager.registerProfile('p', { rate: { limit: 1, intervalMs: 1000, burst: 1 }, quota: { limit: 100 } });
    await manager.subscribe('A', 'p');
    const limiter = manager.getLimiter('A');
    await limiter.submit(() => 'spend');
    const starts: string[] = [];
    const first = rejection(limiter.submit(() => starts.push('first')));
    const second = limiter.submit(() => starts.push(`second@${since()}`));
    faults.failNext = true;
    await vi.advanceTimersByTimeAsync(1000);
    expect((await first).code).toBe('STORE_UNAVAILABLE');
    await second;
    expect(starts).toEqual(['second@1000']);
    expect((await manager.getSubscription('A'))?.usage).toBe(2);
  });

  it('a turn starts no more waiting tasks than the queue has room for: the others leave QUEUE_FULL', async () => {
    manager.registerProfile('p', { rate: { limit: 1, intervalMs: 1000, burst: 2 }, pool: { perUserConcurrency: 1, maxQueue: 1 } });
    await manager.subscribe('A', 'p');
    const limiter = manager.getLimiter('A');
    let release!: () => void;
    // The user's one slot is busy until the test releases it; the bucket is then empty.
    const blocker = limiter.submit(() => new Promise<void>((done) => (release = done)), { cost: 2 });
    await vi.advanceTimersByTimeAsync(0);
    const waiting = [0, 1].map((i) => limiter.submit(() => `ran ${i}`).catch((e: TaskvalveError) => e.code));
    // Both conform at 2 s: the first fills the queue, the second finds it full.
    await vi.advanceTimersByTimeAsync(2000);
    expect(await waiting[1]).toBe('QUEUE_FULL');
    release();
    await blocker;
    expect(await waiting[0]).toBe('ran 0');
  });

  it('a task refused at its turn for a full queue gets its unit back, and never starts', async () => {
    manager.registerProfile('p', { rate: { limit: 1, intervalMs: 1000, burst: 2 }, pool: { perUserConcurrency: 1, maxQueue: 1 } });
    await manager.subscribe('A', 'p');
    const limiter = manager.getLimiter('A');
    let release!: () => void;
    // The user's one slot is busy until the test releases it; the bucket is then empty.
    const blocker = limiter.submit(() => new Promise<void>((done) => (release = done)), { cost: 2 });
    await vi.advanceTimersByTimeAsync(0);
    const starts: string[] = [];
    const waiting = [0, 1].map((i) => limiter.submit(() => starts.push(`${i}`)).catch((e: TaskvalveError) => e.code));
    // At 2 s both units conform: the first task fills the queue, the second finds it full and its unit goes back.
    await vi.advanceTimersByTimeAsync(2000);
    expect(await waiting[1]).toBe('QUEUE_FULL');
    expect((await limiter.check(1)).allowed).toBe(true);
    release();
    await blocker;
    expect(await waiting[0]).toBe(1);
    expect(starts).toEqual(['0']);
  });

  it('after a profile change lowers the burst, every task of a turn the store did not take still has its turn, in order', async () => {
    manager.registerProfile('p', { rate: { limit: 1, intervalMs: 1000, burst: 4 } });
    manager.registerProfile('q', { rate: { limit: 1, intervalMs: 1000, burst: 1 } });
    await manager.subscribe('A', 'p');
    const limiter = manager.getLimiter('A');
    expect((await limiter.check(4)).allowed).toBe(true);
    const starts: string[] = [];
    const runs = [1, 2, 3, 4].map((i) => limiter.submit(() => starts.push(`${i}`)));
    // The turn at 1 s asks for all four (together within the burst): the store takes the first.
    await vi.advanceTimersByTimeAsync(1500);
    expect(starts).toEqual(['1']);
    // A burst of 1: the next turn asks for one task at a time.
    await manager.changeProfile('A', 'q');
    await vi.advanceTimersByTimeAsync(10_000);
    expect(starts).toEqual(['1', '2', '3', '4']);
    await Promise.all(runs);
  });

  it('when the head is aborted, the task behind it starts when its own units conform', async () => {
    manager.registerProfile('p', { rate: { limit: 1, intervalMs: 1000, burst: 3 } });
    await manager.subscribe('A', 'p');
    const limiter = manager.getLimiter('A');
    expect((await limiter.check(3)).allowed).toBe(true);
    const starts: string[] = [];
    const controller = new AbortController();
    const big = limiter.submit(() => starts.push('big'), { cost: 3, signal: controller.signal }).catch((e: TaskvalveError) => e.code);
    const small = limiter.submit(() => starts.push(`small@${since()}`));
    await vi.advanceTimersByTimeAsync(500);
    controller.abort();
    expect(await big).toBe('ABORTED');
    await vi.advanceTimersByTimeAsync(500);
    await small;
    expect(starts).toEqual(['small@1000']);
  });
});

/**
 * The batch store above, its answers given as promises, which can be held until the test lets
 * them go (the units are taken when the call is made, as a store's script runs when the call
 * arrives). It can also answer as a store may for its own reasons: taking at most `perCall`
 * waiters per call (then 0: ask again now), stopping before the first waiter (`stalls` calls
 * answered "0 taken, ask again now"), finding that the first waiter's units can never conform
 * (`never`: the next call), or giving no receipts (a store that cannot say how to give units back).
 */
function heldBatchTurns(inner: MemoryStore) {
  const batch = batchTurns(inner);
  const state = { hold: false, calls: 0, sizes: [] as number[], perCall: Infinity, stalls: 0, never: false, receipts: true };
  const answers = holder<TurnsTaken>(state);
  const store = overriding(batch, {
    takeTurns: (waiters: readonly TurnRequest[], nowMs: number): Promise<TurnsTaken> => {
      state.calls++;
      state.sizes.push(waiters.length);
      let answer: TurnsTaken;
      if (state.stalls > 0) {
        state.stalls--;
        answer = { taken: 0, waitMs: 0, receipts: [] };
      } else if (state.never) {
        state.never = false;
        answer = { taken: 0, waitMs: Infinity, receipts: [] };
      } else {
        answer = (batch.takeTurns as (w: readonly TurnRequest[], now: number) => TurnsTaken)(waiters.slice(0, state.perCall), nowMs);
        if (!state.receipts) answer.receipts = answer.receipts.map(() => undefined);
      }
      return answers.answer(answer);
    },
  });
  return { store, state, release: answers.release, fail: answers.fail };
}

describe('on a store that takes turns in batches and answers later (fake timers)', () => {
  let manager: Manager;
  let turns: ReturnType<typeof heldBatchTurns>;
  const since = onHeldStore(
    () => heldBatchTurns(new MemoryStore()),
    (m, held) => ((manager = m), (turns = held)),
  );

  it('one call asks for at most 64 waiting tasks; the others follow in later calls', async () => {
    manager.registerProfile('p', { rate: { limit: 100, intervalMs: 1000, burst: 100 } });
    await manager.subscribe('A', 'p');
    const limiter = manager.getLimiter('A');
    // A check takes the bucket's units: one conforms every 10 ms from 0.
    expect((await limiter.check(100)).allowed).toBe(true);
    let ran = 0;
    const runs = Array.from({ length: 70 }, () => limiter.submit(() => ++ran));
    await vi.advanceTimersByTimeAsync(700);
    await Promise.all(runs);
    expect(ran).toBe(70);
    expect(turns.state.sizes[0]).toBe(64);
    expect(Math.max(...turns.state.sizes)).toBe(64);
  });

  it('a task left behind a turn whose answer came past its deadline leaves RATE_LIMITED, though its units conform by then', async () => {
    const rate = { limit: 1, intervalMs: 1000, burst: 3, shared: 'pool' };
    manager.registerProfile('calm', { rate });
    manager.registerProfile('hasty', { rate: { ...rate, maxWaitMs: 4000 } });
    await manager.subscribe('X', 'calm');
    await manager.subscribe('Y', 'hasty');
    // A check takes the bucket's units: one conforms per second from 0.
    expect((await manager.getLimiter('X').check(3)).allowed).toBe(true);
    const starts: string[] = [];
    const small = manager.getLimiter('X').submit(() => starts.push('small'));
    // Y's task of cost 3 may wait until 4 s (its units would conform then).
    const big = manager.getLimiter('Y').submit(() => starts.push('big'), { cost: 3 }).catch((e: TaskvalveError) => e.code);
    // The turn at 1 s asks for the small task alone (the big one would pass the burst); its answer is held until 5 s.
    turns.state.hold = true;
    await vi.advanceTimersByTimeAsync(1000);
    expect(turns.state.sizes).toEqual([1]);
    turns.state.hold = false;
    await vi.advanceTimersByTimeAsync(4000);
    turns.release();
    await vi.advanceTimersByTimeAsync(0);
    expect(await big).toBe('RATE_LIMITED');
    await small;
    expect(starts).toEqual(['small']);
  });

  it('when the store takes fewer of a turn\'s tasks than asked and says to ask again now, the others are asked for at once', async () => {
    manager.registerProfile('p', { rate: { limit: 1, intervalMs: 1000, burst: 3 } });
    await manager.subscribe('A', 'p');
    const limiter = manager.getLimiter('A');
    expect((await limiter.check(3)).allowed).toBe(true);
    const starts: string[] = [];
    const controller = new AbortController();
    // A task of cost 3 heads the line (3 s away); two of cost 1 wait behind it.
    const big = limiter.submit(() => starts.push('big'), { cost: 3, signal: controller.signal }).catch((e: TaskvalveError) => e.code);
    const small = [1, 2].map((i) => limiter.submit(() => starts.push(`${i}@${since()}`)));
    // The store takes one task per call. At 2.5 s the head is aborted: both units behind it conform.
    turns.state.perCall = 1;
    await vi.advanceTimersByTimeAsync(2500);
    controller.abort();
    expect(await big).toBe('ABORTED');
    await vi.advanceTimersByTimeAsync(0);
    expect(starts).toEqual(['1@2500', '2@2500']);
    await Promise.all(small);
  });

  it('when the store stops before the first task of a turn and says to ask again now, it is asked again a moment later, not in a loop', async () => {
    manager.registerProfile('p', { rate: { limit: 1, intervalMs: 1000, burst: 1 } });
    await manager.subscribe('A', 'p');
    const limiter = manager.getLimiter('A');
    expect((await limiter.check(1)).allowed).toBe(true);
    const task = limiter.submit(() => 'ran');
    turns.state.stalls = 3;
    const calls = turns.state.calls;
    await vi.advanceTimersByTimeAsync(1000);
    expect(turns.state.calls).toBe(calls + 1);
    await vi.advanceTimersByTimeAsync(100);
    expect(await task).toBe('ran');
    expect(turns.state.calls).toBe(calls + 4);
  });

  it('when the store says the first task\'s units can never conform (its profile changed elsewhere), it leaves and the task behind it still has its turn', async () => {
    manager.registerProfile('p', { rate: { limit: 1, intervalMs: 1000, burst: 2 } });
    await manager.subscribe('A', 'p');
    const limiter = manager.getLimiter('A');
    expect((await limiter.check(2)).allowed).toBe(true);
    const starts: string[] = [];
    const first = limiter.submit(() => 'first').catch((e: TaskvalveError) => e.code);
    const second = limiter.submit(() => starts.push(`second@${since()}`));
    turns.state.never = true;
    await vi.advanceTimersByTimeAsync(1000);
    expect(await first).toBe('INVALID_ARGUMENT');
    expect(starts).toEqual(['second@1000']);
    await second;
  });

  it.each(['says its units can never conform', 'fails'] as const)(
    'a task moved to another bucket by a profile change while a turn on the old one is in flight waits on, and runs, on its new bucket when the store %s',
    async (answer) => {
      manager.registerProfile('p', { rate: { limit: 1, intervalMs: 1000, burst: 1 } });
      manager.registerProfile('q', { rate: { limit: 1, intervalMs: 1000, burst: 1, shared: 'pool' } });
      await manager.subscribe('A', 'p');
      const limiter = manager.getLimiter('A');
      await limiter.submit(() => 'spend');
      const moved = limiter.submit(() => `ran@${since()}`).catch((e: TaskvalveError) => e.code);
      // Its turn on its own bucket is asked for at 1 s and held; it moves to the shared bucket.
      turns.state.hold = true;
      turns.state.never = answer === 'says its units can never conform';
      await vi.advanceTimersByTimeAsync(1000);
      turns.state.hold = false;
      await manager.changeProfile('A', 'q');
      if (answer === 'fails') turns.fail(new Error('reply lost'));
      else turns.release();
      await vi.advanceTimersByTimeAsync(0);
      expect(await moved).toBe('ran@1000');
    },
  );

  it('units taken for a task that left while the turn was in flight are not given back when the store gave no receipt for them', async () => {
    manager.registerProfile('p', { rate: { limit: 1, intervalMs: 1000, burst: 3 } });
    await manager.subscribe('A', 'p');
    const errors: Error[] = [];
    manager.on('error', (e) => errors.push(e));
    const limiter = manager.getLimiter('A');
    expect((await limiter.check(3)).allowed).toBe(true);
    const controllers = [1, 2].map(() => new AbortController());
    // A task of cost 3 heads the line (3 s away); two of cost 1 wait behind it.
    const big = limiter.submit(() => 'big', { cost: 3, signal: controllers[0]?.signal }).catch((e: TaskvalveError) => e.code);
    const first = limiter.submit(() => 'first');
    const second = limiter.submit(() => 'second', { signal: controllers[1]?.signal }).catch((e: TaskvalveError) => e.code);
    await vi.advanceTimersByTimeAsync(2000);
    // At 2 s the head is aborted: one call takes both units behind it, with no receipts. Its
    // answer is held, and the second task is aborted meanwhile.
    turns.state.receipts = false;
    turns.state.hold = true;
    const calls = turns.state.calls;
    controllers[0]?.abort();
    expect(await big).toBe('ABORTED');
    await vi.advanceTimersByTimeAsync(0);
    expect(turns.state.calls).toBe(calls + 1);
    expect(turns.state.sizes.at(-1)).toBe(2);
    controllers[1]?.abort();
    expect(await second).toBe('ABORTED');
    turns.release();
    await vi.advanceTimersByTimeAsync(0);
    expect(await first).toBe('first');
    expect(errors).toEqual([]);
  });
});

/**
 * A RedisStore whose `takeTurns` answers can be held: the call runs on the server when it is
 * made (the units are taken then); its answer reaches the line when the test lets it go.
 */
function heldTurns(inner: RedisStore) {
  const held: { answer: Promise<unknown>; resolve: (value: unknown) => void }[] = [];
  const state = { hold: false, calls: 0 };
  let called: (() => void) | undefined;
  let answered: (() => void) | undefined;
  /** Per call, in order: settles when the server has answered it. */
  const answers: Promise<void>[] = [];
  const waiters = new Map<number, (answer: Promise<void>) => void>();
  const store = overriding(inner, {
    takeTurns: (...args: Parameters<RedisStore['takeTurns']>) => {
      state.calls++;
      const answer = inner.takeTurns(...args);
      called?.();
      const onAnswer = answered;
      answered = undefined;
      if (onAnswer !== undefined) void answer.finally(onAnswer).catch(() => {});
      const settled = answer.then(
        () => {},
        () => {},
      );
      answers.push(settled);
      waiters.get(answers.length)?.(settled);
      if (!state.hold) return answer;
      return new Promise((resolve) => held.push({ answer, resolve }));
    },
  });
  /** Resolves at the next takeTurns call. */
  const nextCall = (): Promise<void> => new Promise((resolve) => (called = resolve));
  /** Resolves when the server has answered the `n`th takeTurns call (counting from 1), made or to be made. */
  const answerOf = (n: number): Promise<void> =>
    answers[n - 1] ?? new Promise<void>((resolve) => waiters.set(n, (answer) => void answer.then(resolve)));
  /** Resolves when the server has answered the next takeTurns call. */
  const nextAnswer = (): Promise<void> => new Promise((resolve) => (answered = resolve));
  /** Lets the held answers reach the line, once the server has given them all: the latest call's first. */
  const release = async (): Promise<void> => {
    const calls = held.splice(0);
    const answers = await Promise.allSettled(calls.map((c) => c.answer));
    for (let i = calls.length - 1; i >= 0; i--) {
      const a = answers[i] as PromiseSettledResult<unknown>;
      (calls[i] as (typeof calls)[number]).resolve(a.status === 'fulfilled' ? a.value : Promise.reject(a.reason));
    }
  };
  /** The held calls fail instead (the server ran them: their units stay taken, as when a reply is lost). */
  const fail = (error: Error): void => {
    for (const call of held.splice(0)) {
      call.answer.catch(() => {});
      call.resolve(Promise.reject(error));
    }
  };
  return { store, state, nextCall, nextAnswer, answerOf, release, fail };
}

/** Resolves once `n` tasks of the manager wait for their rate turn. */
function waitingTasks(m: Manager, n: number): Promise<void> {
  let count = 0;
  return new Promise((resolve) => m.on('task', (e) => e.to === 'WAITING_RATE' && ++count === n && resolve()));
}

describe('on a RedisStore (turns in batches, real redis-server)', () => {
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

  interface Setup {
    m: Manager;
    turns: ReturnType<typeof heldTurns>;
    time: TestTime;
    /** Another process on the same data, reading at the same time (its own handle and manager). */
    other: () => Manager;
  }

  async function onRedis(profile: ProfileConfig, test: (s: Setup) => Promise<void>): Promise<void> {
    const time: TestTime = { now: Date.UTC(2026, 5, 1) };
    const prefix = `rle${++prefixes}`;
    const clients: Redis[] = [];
    const managers: Manager[] = [];
    const manager = (wrap: boolean): { m: Manager; turns: ReturnType<typeof heldTurns> } => {
      const client = new Redis({ port: server.port });
      clients.push(client);
      const redis = new RedisStore({ client, prefix });
      redis.setTestClock(() => time.now);
      const turns = heldTurns(redis);
      const m = new Manager({ store: wrap ? turns.store : redis, clock: () => time.now });
      m.registerProfile('p', profile);
      managers.push(m);
      return { m, turns };
    };
    const { m, turns } = manager(true);
    try {
      await test({ m, turns, time, other: () => manager(false).m });
    } finally {
      turns.state.hold = false;
      await turns.release();
      for (const each of managers) await each.close();
      for (const client of clients) client.disconnect();
    }
  }

  it('tasks aborted while their turn is in flight do not start, and their units come back', async () => {
    await onRedis({ rate: { limit: 10, intervalMs: 1000, burst: 3 } }, async ({ m, turns, time, other }) => {
      await m.subscribe('u', 'p');
      const limiter = m.getLimiter('u');
      expect((await limiter.check(3)).allowed).toBe(true);
      const controllers = [1, 2, 3].map(() => new AbortController());
      const ran: number[] = [];
      const waiting = waitingTasks(m, 3);
      const tasks = controllers.map((c, i) => limiter.submit(() => ran.push(i), { signal: c.signal }).catch((e: TaskvalveError) => e.code));
      await waiting;
      // All three conform at the line's first turn (100 ms on): one call takes the three units; its answer is held.
      turns.state.hold = true;
      const call = turns.nextCall();
      time.now += 1000;
      await call;
      controllers[1]?.abort();
      controllers[2]?.abort();
      await turns.release();
      expect(await Promise.all(tasks)).toEqual([1, 'ABORTED', 'ABORTED']);
      expect(ran).toEqual([0]);
      // close() waits for the refunds: two of the three units are back.
      await m.close();
      const view = other();
      expect(await view.getLimiter('u').peek()).toMatchObject({ remaining: 2 });
    });
  });

  it('a turn whose reply is lost ends the tasks of it STORE_UNAVAILABLE, and the task behind them still has its turn', async () => {
    await onRedis({ rate: { limit: 10, intervalMs: 1000, burst: 2 } }, async ({ m, turns, time }) => {
      await m.subscribe('u', 'p');
      const limiter = m.getLimiter('u');
      expect((await limiter.check(2)).allowed).toBe(true);
      const waiting = waitingTasks(m, 3);
      const tasks = [0, 1, 2].map((i) => limiter.submit(() => `ran ${i}`).catch((e: TaskvalveError) => e.code));
      await waiting;
      // The first turn takes the first two tasks (the burst) in one call; its reply is lost.
      turns.state.hold = true;
      const call = turns.nextCall();
      time.now += 10_000;
      await call;
      turns.state.hold = false;
      turns.fail(new Error('connection reset'));
      time.now += 1000;
      expect(await Promise.all(tasks)).toEqual(['STORE_UNAVAILABLE', 'STORE_UNAVAILABLE', 'ran 2']);
    });
  });

  it("a line sleeping until its head conforms does not poll the store: the head starts on the line's timer", async () => {
    await onRedis({ rate: { limit: 10, intervalMs: 1000, burst: 1 } }, async ({ m, turns, time }) => {
      await m.subscribe('u', 'p');
      const limiter = m.getLimiter('u');
      expect((await limiter.check(1)).allowed).toBe(true);
      vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
      try {
        const queued: number[] = [];
        m.on('task', (e) => e.to === 'QUEUED' && queued.push(queued.length));
        // The first call takes the first task's units; the line then asks for the second's at once
        // (the store will say 100 ms) and sleeps.
        const sleeping = turns.answerOf(turns.state.calls + 2);
        const waiting = waitingTasks(m, 2);
        const tasks = [0, 1].map((i) => limiter.submit(() => i));
        await waiting;
        time.now += 100;
        await vi.advanceTimersByTimeAsync(1000);
        expect(await tasks[0]).toBe(0);
        await sleeping;
        await vi.advanceTimersByTimeAsync(0);
        // The second task's unit conforms now, but the line sleeps until its timer (100 ms): 50 ms
        // on, and two round trips on the store's connection later, it has not asked again.
        time.now += 1000;
        await vi.advanceTimersByTimeAsync(50);
        await limiter.peek();
        await limiter.peek();
        expect(queued).toEqual([0]);
        await vi.advanceTimersByTimeAsync(1000);
        expect(await tasks[1]).toBe(1);
      } finally {
        vi.useRealTimers();
      }
    });
  });

  it("tasks past their deadline when a turn takes only part of its call leave RATE_LIMITED, retryAfterMs counting from the wait of the first task not taken", async () => {
    await onRedis({ rate: { limit: 10, intervalMs: 1000, burst: 3, maxWaitMs: 400 } }, async ({ m, time, other }) => {
      await m.subscribe('u', 'p');
      const limiter = m.getLimiter('u');
      expect((await limiter.check(3)).allowed).toBe(true);
      vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
      try {
        const waiting = waitingTasks(m, 3);
        const tasks = [1, 2, 1].map((cost, i) => limiter.submit(() => `ran ${i}`, { cost }).catch((e: TaskvalveError) => e));
        await waiting;
        // 410 ms on, past every deadline (400 ms), another process takes 2 of the 3 units that conform.
        time.now += 410;
        expect((await other().getLimiter('u').check(2)).allowed).toBe(true);
        // The line's turn: the first task (1 unit) is taken and starts; the second (2 units) would
        // conform 200 ms on: it leaves, and so does the third. Each is told the head's wait plus the
        // units then waiting behind the head (the third leaves first, with its own unit behind it).
        await vi.advanceTimersByTimeAsync(1000);
        const [first, second, third] = await Promise.all(tasks);
        expect(first).toBe('ran 0');
        expect(second).toMatchObject({ code: 'RATE_LIMITED', retryAfterMs: 200 });
        expect(third).toMatchObject({ code: 'RATE_LIMITED', retryAfterMs: 300 });
      } finally {
        vi.useRealTimers();
      }
    });
  });

  it('close() while a turn is in flight rejects the waiting tasks SHUTTING_DOWN and resolves', async () => {
    await onRedis({ rate: { limit: 10, intervalMs: 1000, burst: 2 } }, async ({ m, turns, time }) => {
      await m.subscribe('u', 'p');
      const limiter = m.getLimiter('u');
      expect((await limiter.check(2)).allowed).toBe(true);
      const waiting = waitingTasks(m, 2);
      const tasks = [0, 1].map(() => limiter.submit(() => 'ran').catch((e: TaskvalveError) => e.code));
      await waiting;
      turns.state.hold = true;
      const call = turns.nextCall();
      time.now += 10_000;
      await call;
      expect(await m.close({ drain: false, timeoutMs: 0 })).toMatchObject({ rejected: 2 });
      expect(await Promise.all(tasks)).toEqual(['SHUTTING_DOWN', 'SHUTTING_DOWN']);
    });
  });

  it("when the head is aborted while the line sleeps after a turn's answer, the task behind it has its turn at once", async () => {
    await onRedis({ rate: { limit: 10, intervalMs: 1000, burst: 3 } }, async ({ m, turns, time }) => {
      await m.subscribe('u', 'p');
      const limiter = m.getLimiter('u');
      expect((await limiter.check(3)).allowed).toBe(true);
      // The line's timers run on a fake clock: each fires when the test says.
      vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
      try {
        const controller = new AbortController();
        const waiting = waitingTasks(m, 2);
        const big = limiter.submit(() => 'big', { cost: 3, signal: controller.signal }).catch((e: TaskvalveError) => e.code);
        const small = limiter.submit(() => 'small');
        await waiting;
        // 100 ms on (the line's clock), the big task's units do not conform yet: the store says so, and the line sleeps.
        time.now += 100;
        const call = turns.nextAnswer();
        await vi.advanceTimersByTimeAsync(300);
        await call;
        await vi.advanceTimersByTimeAsync(0);
        // The small task's unit conforms now: aborting the big one gives it its turn.
        controller.abort();
        expect(await big).toBe('ABORTED');
        await vi.advanceTimersByTimeAsync(0);
        expect(await small).toBe('small');
      } finally {
        vi.useRealTimers();
      }
    });
  });

  it('while a turn is in flight, neither a task of it aborted nor a newcomer lets the tasks behind that turn start ahead of it', async () => {
    await onRedis({ rate: { limit: 10, intervalMs: 1000, burst: 2 } }, async ({ m, turns, time }) => {
      await m.subscribe('u', 'p');
      const limiter = m.getLimiter('u');
      expect((await limiter.check(2)).allowed).toBe(true);
      const controller = new AbortController();
      const ran: number[] = [];
      const waiting = waitingTasks(m, 4);
      const tasks = [0, 1, 2, 3].map((i) => limiter.submit(() => ran.push(i), i === 1 ? { signal: controller.signal } : {}).catch((e: TaskvalveError) => e.code));
      await waiting;
      // The line's timers run on a fake clock from here: each fires when the test says.
      vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
      try {
        turns.state.hold = true;
        time.now += 10_000;
        const call = turns.nextCall();
        // The first turn (100 ms on): the first two tasks (the burst) in one call, its answer held.
        await vi.advanceTimersByTimeAsync(100);
        await call;
        controller.abort();
        // A newcomer joins the line meanwhile.
        const joined = waitingTasks(m, 1);
        tasks.push(limiter.submit(() => ran.push(4)).catch((e: TaskvalveError) => e.code));
        await joined;
        // Everyone's units conform by now: a turn taken meanwhile would start the tasks behind at once.
        time.now += 10_000;
        await vi.advanceTimersByTimeAsync(1000);
        turns.state.hold = false;
        await turns.release();
      } finally {
        vi.useRealTimers();
      }
      // From here the clock moves 1 s on whenever a task's units are taken: every task left conforms in turn.
      m.on('task', (e) => {
        if (e.to === 'QUEUED') time.now += 1000;
      });
      time.now += 1000;
      expect(await Promise.all(tasks)).toEqual([1, 'ABORTED', 2, 3, 4]);
      expect(ran).toEqual([0, 2, 3, 4]);
    });
  });
});
