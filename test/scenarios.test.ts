// Scenarios of the embedded pipeline: setup, what is done, what must be seen. Fake clock throughout.
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { Manager, type Limiter } from '../src/index.js';
import { gate, rejection } from './helpers.js';

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

describe('rate pacing', () => {
  it('shared bucket at 2/s, burst 2: A and B submit 3 each at t=0; tasks start at 0, 0, 0.5, 1.0, 1.5, 2.0 s', async () => {
    manager.registerProfile('free', { rate: { limit: 2, intervalMs: 1000, shared: 'pool' } });
    await manager.subscribe('A', 'free');
    await manager.subscribe('B', 'free');
    const starts: number[] = [];
    const runs = [];
    for (const user of ['A', 'B']) {
      for (let i = 0; i < 3; i++) runs.push(manager.getLimiter(user).submit(() => starts.push(since())));
    }
    await vi.advanceTimersByTimeAsync(2000);
    await Promise.all(runs);
    expect(starts.sort((a, b) => a - b)).toEqual([0, 0, 500, 1000, 1500, 2000]);
  });

  it('shared bucket takes turns between users: B is not starved behind A', async () => {
    manager.registerProfile('free', { rate: { limit: 1, intervalMs: 1000, shared: 'pool', burst: 1 } });
    await manager.subscribe('A', 'free');
    await manager.subscribe('B', 'free');
    const order: string[] = [];
    const runs = [];
    for (let i = 0; i < 5; i++) runs.push(manager.getLimiter('A').submit(() => order.push(`A${i}`)));
    runs.push(manager.getLimiter('B').submit(() => order.push('B0')));
    await vi.advanceTimersByTimeAsync(6000);
    await Promise.all(runs);
    expect(order.indexOf('B0')).toBeLessThanOrEqual(2);
  });

  it('dedicated buckets at 1/s: A and B both start at t=0', async () => {
    manager.registerProfile('pro', { rate: { limit: 1, intervalMs: 1000 } });
    await manager.subscribe('A', 'pro');
    await manager.subscribe('B', 'pro');
    const starts: Record<string, number[]> = { A: [], B: [] };
    const runs = ['A', 'B', 'A'].map((u) => manager.getLimiter(u).submit(() => starts[u]!.push(since())));
    await vi.advanceTimersByTimeAsync(1000);
    await Promise.all(runs);
    expect(starts).toEqual({ A: [0, 1000], B: [0] });
  });

  it('slow rate, 1 per 10 s: 3 tasks start at 0, 10 and 20 s', async () => {
    manager.registerProfile('slow', { rate: { limit: 1, intervalMs: 10_000 } });
    await manager.subscribe('A', 'slow');
    const starts: number[] = [];
    const runs = [0, 1, 2].map(() => manager.getLimiter('A').submit(() => starts.push(since())));
    await vi.advanceTimersByTimeAsync(9_999);
    expect(starts).toEqual([0, 10_000].slice(0, 1));
    await vi.advanceTimersByTimeAsync(10_001);
    await Promise.all(runs);
    expect(starts).toEqual([0, 10_000, 20_000]);
  });

  it('3 per second (emission interval not a whole number of µs) stays exact over a long run', async () => {
    manager.registerProfile('three', { rate: { limit: 3, intervalMs: 1000 } });
    await manager.subscribe('A', 'three');
    const starts: number[] = [];
    const runs = Array.from({ length: 3002 }, () => manager.getLimiter('A').submit(() => starts.push(since())));
    await vi.advanceTimersByTimeAsync(1_000_000);
    await Promise.all(runs);
    // Burst 3: task k conforms at (k - 2) / 3 s exactly; its timer fires at that whole ms or the next.
    expect(starts.map((t, k) => t - Math.max(0, Math.ceil(((k - 2) * 1000) / 3)))).toEqual(starts.map(() => 0));
    expect(starts.at(-1)).toBe(999_667);
  });

  it('a newcomer after every waiter aborted is paced by its own turn, not by a stale timer', async () => {
    manager.registerProfile('p', { rate: { limit: 1, intervalMs: 1000, burst: 3 } });
    await manager.subscribe('A', 'p');
    const limiter = manager.getLimiter('A');
    expect((await limiter.check(3)).allowed).toBe(true);
    // The bucket is empty: a cost-3 task would wait 3 s. It is aborted; a cost-1 task then waits 1 s.
    const controller = new AbortController();
    const big = limiter.submit(() => 'never', { cost: 3, signal: controller.signal });
    await vi.advanceTimersByTimeAsync(10);
    controller.abort();
    await big.catch(() => undefined);
    const starts: number[] = [];
    const small = limiter.submit(() => starts.push(since()));
    await vi.advanceTimersByTimeAsync(3000);
    await small;
    expect(starts).toEqual([1000]);
  });

  it("'reject' mode gives RATE_LIMITED with the exact retryAfterMs and charges nothing", async () => {
    manager.registerProfile('r', { rate: { limit: 2, intervalMs: 1000, onLimit: 'reject' } });
    await manager.subscribe('A', 'r');
    const limiter = manager.getLimiter('A');
    await limiter.submit(() => 1);
    await limiter.submit(() => 2);
    const err = await rejection(limiter.submit(() => 3));
    expect(err.code).toBe('RATE_LIMITED');
    expect(err.retryAfterMs).toBe(500);
    expect((await manager.getSubscription('A'))?.usage).toBe(2);
    await vi.advanceTimersByTimeAsync(499);
    expect((await rejection(limiter.submit(() => 3))).retryAfterMs).toBe(1);
    await vi.advanceTimersByTimeAsync(1);
    await expect(limiter.submit(() => 3)).resolves.toBe(3);
  });

  it('wait: false gives RATE_LIMITED at once in wait mode', async () => {
    manager.registerProfile('w', { rate: { limit: 1, intervalMs: 1000 } });
    await manager.subscribe('A', 'w');
    const limiter = manager.getLimiter('A');
    await limiter.submit(() => 1);
    const err = await rejection(limiter.submit(() => 2, { wait: false }));
    expect(err.code).toBe('RATE_LIMITED');
    expect(err.retryAfterMs).toBe(1000);
  });

  it('maxWaitMs rejects a task whose turn is too far away, charging nothing', async () => {
    manager.registerProfile('w', { rate: { limit: 1, intervalMs: 1000, maxWaitMs: 1500 }, quota: { limit: 100 } });
    await manager.subscribe('A', 'w');
    const limiter = manager.getLimiter('A');
    const runs = [limiter.submit(() => 1), limiter.submit(() => 2)];
    // The third would wait behind the second: its turn is 2000 ms away.
    const err = await rejection(limiter.submit(() => 3));
    expect(err.code).toBe('RATE_LIMITED');
    expect(err.retryAfterMs).toBe(2000);
    expect((await manager.getSubscription('A'))?.usage).toBe(2);
    await vi.advanceTimersByTimeAsync(1000);
    await expect(Promise.all(runs)).resolves.toEqual([1, 2]);
  });

  it('a cost above the burst is INVALID_ARGUMENT at once, never a wait', async () => {
    manager.registerProfile('b', { rate: { limit: 10, intervalMs: 1000, burst: 5 } });
    await manager.subscribe('A', 'b');
    expect((await rejection(manager.getLimiter('A').submit(() => 1, { cost: 6 }))).code).toBe('INVALID_ARGUMENT');
    expect((await rejection(manager.getLimiter('A').check(6))).code).toBe('INVALID_ARGUMENT');
    expect((await manager.getSubscription('A'))?.usage).toBe(0);
  });

  it('check decides now and never waits, whatever onLimit says; a denial changes nothing', async () => {
    manager.registerProfile('c', { rate: { limit: 2, intervalMs: 1000, onLimit: 'wait' } });
    await manager.subscribe('A', 'c');
    const limiter = manager.getLimiter('A');
    expect(await limiter.check(2)).toEqual({ allowed: true, limit: 2, remaining: 0, retryAfterMs: 0, resetAfterMs: 1000 });
    const denied = await limiter.check(1);
    expect(denied).toEqual({ allowed: false, limit: 2, remaining: 0, retryAfterMs: 500, resetAfterMs: 1000 });
    await limiter.check(1);
    await limiter.check(2);
    const peek = await limiter.peek();
    expect(peek).toMatchObject({ allowed: false, remaining: 0, retryAfterMs: 500, usage: 2, status: 'active' });
    await vi.advanceTimersByTimeAsync(500);
    expect(await limiter.check(1)).toMatchObject({ allowed: true, remaining: 0 });
  });
});

describe('refusals', () => {
  it("rate and quota refusals carry the decision's figures: a periodic quota's renewal, none for a lifetime quota", async () => {
    manager.registerProfile('monthly', { rate: { limit: 1, intervalMs: 1000 }, quota: { limit: 1, periodMs: 60_000 } });
    manager.registerProfile('lifetime', { rate: { limit: 10, intervalMs: 1000 }, quota: { limit: 1 } });
    manager.registerProfile('open', { rate: { limit: 1, intervalMs: 1000 } });
    for (const user of ['M', 'R', 'L', 'O']) await manager.subscribe(user, user === 'L' ? 'lifetime' : user === 'O' ? 'open' : 'monthly');
    await vi.advanceTimersByTimeAsync(10_000);

    expect(await manager.getLimiter('R').submit(() => 1)).toBe(1);
    await manager.resetUsage('R');
    const rated = await rejection(manager.getLimiter('R').submit(() => 2, { wait: false }));
    expect(rated.code).toBe('RATE_LIMITED');
    expect(rated.retryAfterMs).toBe(1000);
    expect(rated.refusal).toEqual({ profile: 'monthly', usage: 0, quotaLimit: 1, quotaResetAfterMs: 50_000, rate: { limit: 1, remaining: 0, resetAfterMs: 1000 } });

    expect(await manager.getLimiter('O').submit(() => 1)).toBe(1);
    const open = await rejection(manager.getLimiter('O').submit(() => 2, { wait: false }));
    expect(open.refusal).toMatchObject({ profile: 'open', usage: 1, quotaLimit: null, quotaResetAfterMs: null });

    expect(await manager.getLimiter('M').submit(() => 1)).toBe(1);
    const monthly = await rejection(manager.getLimiter('M').submit(() => 2));
    expect(monthly.code).toBe('QUOTA_EXCEEDED');
    expect(monthly.message).toContain('limit 1');
    expect(monthly.retryAfterMs).toBe(50_000);
    expect(monthly.refusal).toEqual({ profile: 'monthly', usage: 1, quotaLimit: 1, quotaResetAfterMs: 50_000, rate: undefined });

    expect(await manager.getLimiter('L').submit(() => 1)).toBe(1);
    const lifetime = await rejection(manager.getLimiter('L').submit(() => 2));
    expect(lifetime.code).toBe('QUOTA_EXCEEDED');
    expect(lifetime.retryAfterMs).toBeUndefined();
    expect(lifetime.refusal).toEqual({ profile: 'lifetime', usage: 1, quotaLimit: 1, quotaResetAfterMs: null, rate: undefined });
  });
});

describe('fairness and concurrency', () => {
  it('A queues 20 tasks, then B submits 1: B starts before A\'s third (perUserConcurrency 1, inline)', async () => {
    manager.registerProfile('p', { rate: { limit: 1000, intervalMs: 1000 }, pool: { perUserConcurrency: 1 } });
    await manager.subscribe('A', 'p');
    await manager.subscribe('B', 'p');
    const order: string[] = [];
    const task = (label: string) => async () => {
      order.push(label);
      await new Promise((resolve) => setTimeout(resolve, 10));
    };
    const runs = Array.from({ length: 20 }, (_, i) => manager.getLimiter('A').submit(task(`A${i}`)));
    runs.push(manager.getLimiter('B').submit(task('B0')));
    await vi.advanceTimersByTimeAsync(1000);
    await Promise.all(runs);
    expect(order.indexOf('B0')).toBeLessThan(order.indexOf('A2'));
  });

  it('perUserConcurrency caps running tasks of one user, worker-free', async () => {
    manager.registerProfile('p', { rate: { limit: 1000, intervalMs: 1000 }, pool: { perUserConcurrency: 2 } });
    await manager.subscribe('A', 'p');
    let running = 0;
    let peak = 0;
    const runs = Array.from({ length: 10 }, () =>
      manager.getLimiter('A').submit(async () => {
        peak = Math.max(peak, ++running);
        await new Promise((resolve) => setTimeout(resolve, 5));
        running--;
      }),
    );
    await vi.advanceTimersByTimeAsync(100);
    await Promise.all(runs);
    expect(peak).toBe(2);
  });

  it('past maxQueue: QUEUE_FULL at once, refunded', async () => {
    manager.registerProfile('q', { rate: { limit: 1000, intervalMs: 1000 }, pool: { perUserConcurrency: 1, maxQueue: 2 }, quota: { limit: 100 } });
    await manager.subscribe('A', 'q');
    const hold = gate();
    const limiter = manager.getLimiter('A');
    const runs = [limiter.submit(() => hold.opened), limiter.submit(() => 2), limiter.submit(() => 3)];
    const err = await rejection(limiter.submit(() => 4));
    expect(err.code).toBe('QUEUE_FULL');
    expect((await manager.getSubscription('A'))?.usage).toBe(3);
    hold.open();
    await Promise.all(runs);
  });

  /** Inline tasks that record their start and run until the test ends them. */
  function held(): {
    task: (label: string) => () => Promise<string>;
    started: string[];
    end: (label: string) => void;
    startsAtOnce: (limiter: Limiter, label: string) => Promise<void>;
  } {
    const started: string[] = [];
    const gates = new Map<string, ReturnType<typeof gate<string>>>();
    const task = (label: string) => (): Promise<string> => {
      started.push(label);
      const g = gate<string>();
      gates.set(label, g);
      return g.opened;
    };
    const end = (label: string): void => gates.get(label)?.open(label);
    return {
      started,
      task,
      end,
      // Submits a task that must start at once (in the next dispatch), then lets it end.
      startsAtOnce: async (limiter, label) => {
        const run = limiter.submit(task(label));
        await vi.advanceTimersByTimeAsync(0);
        expect(started.at(-1)).toBe(label);
        end(label);
        expect(await run).toBe(label);
      },
    };
  }

  it("a user's task submitted after earlier ones ended still waits for the user's slot (perUserConcurrency 1)", async () => {
    manager.registerProfile('p', { rate: { limit: 1000, intervalMs: 1000 }, pool: { perUserConcurrency: 1 } });
    await manager.subscribe('A', 'p');
    const { task, started, end, startsAtOnce } = held();
    const limiter = manager.getLimiter('A');
    const first = limiter.submit(task('A1'));
    const second = limiter.submit(task('A2'));
    await vi.advanceTimersByTimeAsync(0);
    expect(started).toEqual(['A1']);
    end('A1');
    expect(await first).toBe('A1');
    await vi.advanceTimersByTimeAsync(0);
    expect(started).toEqual(['A1', 'A2']);
    const third = limiter.submit(task('A3'));
    await vi.advanceTimersByTimeAsync(0);
    expect(started).toEqual(['A1', 'A2']);
    end('A2');
    expect(await second).toBe('A2');
    await vi.advanceTimersByTimeAsync(0);
    expect(started).toEqual(['A1', 'A2', 'A3']);
    end('A3');
    expect(await third).toBe('A3');
    await startsAtOnce(limiter, 'A4');
    expect(started).toEqual(['A1', 'A2', 'A3', 'A4']);
  });

  it('users whose slots free up together take turns, one task each (perUserConcurrency 2)', async () => {
    manager.registerProfile('p', { rate: { limit: 1000, intervalMs: 1000 }, pool: { perUserConcurrency: 2 } });
    await manager.subscribe('A', 'p');
    await manager.subscribe('B', 'p');
    const { task, started, end } = held();
    const runs: Promise<string>[] = [];
    for (const user of ['A', 'B']) for (let i = 1; i <= 4; i++) runs.push(manager.getLimiter(user).submit(task(`${user}${i}`)));
    await vi.advanceTimersByTimeAsync(0);
    expect(started).toEqual(['A1', 'A2', 'B1', 'B2']);
    for (const label of ['A1', 'A2', 'B1', 'B2']) end(label);
    await vi.advanceTimersByTimeAsync(0);
    expect(started.slice(4)).toEqual(['A3', 'B3', 'A4', 'B4']);
    for (const label of ['A3', 'B3', 'A4', 'B4']) end(label);
    expect(await Promise.all(runs)).toEqual(['A1', 'A2', 'A3', 'A4', 'B1', 'B2', 'B3', 'B4']);
  });

  it("a queued task aborted just as the user's slot frees leaves the slot to the user's next submit", async () => {
    manager.registerProfile('p', { rate: { limit: 1000, intervalMs: 1000 }, pool: { perUserConcurrency: 1 } });
    await manager.subscribe('A', 'p');
    await manager.subscribe('B', 'p');
    const { task, started, end, startsAtOnce } = held();
    const a = manager.getLimiter('A');
    const b = manager.getLimiter('B');
    const controller = new AbortController();
    const b1 = b.submit(task('B1'));
    const a1 = a.submit(task('A1'));
    // B2 starts in the turn in which A's slot frees too, and aborts A2 before A's turn comes.
    const b2 = b.submit(() => {
      started.push('B2');
      controller.abort();
      return 'B2';
    });
    const a2 = a.submit(task('A2'), { signal: controller.signal });
    await vi.advanceTimersByTimeAsync(0);
    end('B1');
    end('A1');
    expect(await Promise.all([b1, a1, b2])).toEqual(['B1', 'A1', 'B2']);
    expect((await rejection(a2)).code).toBe('ABORTED');
    await startsAtOnce(a, 'A3');
    expect(started).toEqual(['B1', 'A1', 'B2', 'A3']);
  });

  it('maxQueue counts waiting tasks only: a user under their cap starts at once while the queue is full', async () => {
    manager.registerProfile('p', { rate: { limit: 1000, intervalMs: 1000 }, pool: { perUserConcurrency: 2, maxQueue: 1 } });
    await manager.subscribe('A', 'p');
    await manager.subscribe('B', 'p');
    const { task, started, end } = held();
    const b = manager.getLimiter('B');
    const a = manager.getLimiter('A');
    const runs = [b.submit(task('B1')), b.submit(task('B2')), b.submit(task('B3')), a.submit(task('A1')), a.submit(task('A2'))];
    expect((await rejection(a.submit(task('A3')))).code).toBe('QUEUE_FULL');
    await vi.advanceTimersByTimeAsync(0);
    expect(started).toEqual(['B1', 'B2', 'A1', 'A2']);
    for (const label of ['B1', 'B2', 'A1', 'A2']) end(label);
    await vi.advanceTimersByTimeAsync(0);
    end('B3');
    expect(await Promise.all(runs)).toEqual(['B1', 'B2', 'B3', 'A1', 'A2']);
  });

  it('a task aborted before its start gives the queue no extra room', async () => {
    manager.registerProfile('p', { rate: { limit: 1000, intervalMs: 1000 }, pool: { perUserConcurrency: 1, maxQueue: 1 } });
    await manager.subscribe('A', 'p');
    const { task, end } = held();
    const limiter = manager.getLimiter('A');
    const controller = new AbortController();
    const aborted = limiter.submit(task('A0'), { signal: controller.signal });
    controller.abort();
    expect((await rejection(aborted)).code).toBe('ABORTED');
    const runs = [limiter.submit(task('A1')), limiter.submit(task('A2'))];
    expect((await rejection(limiter.submit(task('A3')))).code).toBe('QUEUE_FULL');
    end('A1');
    await vi.advanceTimersByTimeAsync(0);
    end('A2');
    expect(await Promise.all(runs)).toEqual(['A1', 'A2']);
  });

  it('priority orders one user\'s queued tasks', async () => {
    manager.registerProfile('p', { rate: { limit: 1000, intervalMs: 1000 }, pool: { perUserConcurrency: 1 } });
    await manager.subscribe('A', 'p');
    const hold = gate();
    const order: string[] = [];
    const limiter = manager.getLimiter('A');
    const runs = [
      limiter.submit(() => hold.opened),
      limiter.submit(() => order.push('low')),
      limiter.submit(() => order.push('high'), { priority: 5 }),
      limiter.submit(() => order.push('mid'), { priority: 1 }),
    ];
    hold.open();
    await Promise.all(runs);
    expect(order).toEqual(['high', 'mid', 'low']);
  });
});

describe('abort', () => {
  it('an already-aborted signal gives ABORTED, the task never runs, usage unchanged', async () => {
    manager.registerProfile('p', { rate: { limit: 10, intervalMs: 1000 }, quota: { limit: 10 } });
    await manager.subscribe('A', 'p');
    const task = vi.fn();
    const err = await rejection(manager.getLimiter('A').submit(task, { signal: AbortSignal.abort() }));
    expect(err.code).toBe('ABORTED');
    expect(task).not.toHaveBeenCalled();
    expect((await manager.getSubscription('A'))?.usage).toBe(0);
  });

  it('aborting a queued task: it never runs and is refunded', async () => {
    manager.registerProfile('p', { rate: { limit: 10, intervalMs: 1000 }, pool: { perUserConcurrency: 1 }, quota: { limit: 10 } });
    await manager.subscribe('A', 'p');
    const hold = gate();
    const limiter = manager.getLimiter('A');
    const first = limiter.submit(() => hold.opened);
    const controller = new AbortController();
    const task = vi.fn();
    const queued = limiter.submit(task, { signal: controller.signal });
    controller.abort();
    expect((await rejection(queued)).code).toBe('ABORTED');
    hold.open();
    await first;
    expect(task).not.toHaveBeenCalled();
    expect((await manager.getSubscription('A'))?.usage).toBe(1);
  });

  it('aborting a task waiting for its rate turn: it never runs, is refunded, and the next waiter moves up', async () => {
    manager.registerProfile('p', { rate: { limit: 1, intervalMs: 1000 }, quota: { limit: 10 } });
    await manager.subscribe('A', 'p');
    const limiter = manager.getLimiter('A');
    const starts: number[] = [];
    await limiter.submit(() => starts.push(since()));
    const controller = new AbortController();
    const task = vi.fn();
    const waiting = limiter.submit(task, { signal: controller.signal });
    const next = limiter.submit(() => starts.push(since()));
    await vi.advanceTimersByTimeAsync(200);
    controller.abort();
    expect((await rejection(waiting)).code).toBe('ABORTED');
    await vi.advanceTimersByTimeAsync(2000);
    await next;
    expect(task).not.toHaveBeenCalled();
    expect(starts).toEqual([0, 1000]);
    expect((await manager.getSubscription('A'))?.usage).toBe(2);
  });

  it('aborting a running inline task rejects ABORTED at once and aborts ctx.signal', async () => {
    manager.registerProfile('p', { rate: { limit: 10, intervalMs: 1000 } });
    await manager.subscribe('A', 'p');
    const controller = new AbortController();
    let seen: AbortSignal | undefined;
    const run = manager.getLimiter('A').submit(({ signal }) => {
      seen = signal;
      return new Promise(() => {});
    }, { signal: controller.signal });
    await vi.advanceTimersByTimeAsync(0);
    controller.abort();
    expect((await rejection(run)).code).toBe('ABORTED');
    expect(seen?.aborted).toBe(true);
  });
});

describe('retries and dead letters', () => {
  it('attempts 4, base 100, x2, cap 250, no jitter: tried at 0, 100, 300, 550 ms, then dead-lettered', async () => {
    manager.registerProfile('p', { rate: { limit: 100, intervalMs: 1000 }, retry: { attempts: 4, baseMs: 100, multiplier: 2, maxMs: 250 } });
    await manager.subscribe('A', 'p');
    const tries: number[] = [];
    const letters: unknown[] = [];
    manager.on('dead-letter', (entry) => letters.push(entry));
    const run = manager.getLimiter('A').submit(({ attempt }) => {
      tries.push(since());
      throw Object.assign(new Error(`boom ${attempt}`), { code: 'E_BOOM' });
    });
    const settled = rejection(run);
    await vi.advanceTimersByTimeAsync(1000);
    const err = await settled;
    expect(tries).toEqual([0, 100, 300, 550]);
    expect(err.code).toBe('TASK_FAILED');
    expect((err.cause as Error).message).toBe('boom 4');
    const [entry] = await manager.dlq.list();
    expect(entry).toMatchObject({ userId: 'A', profileName: 'p', attempts: 4, cost: 1, error: { code: 'TASK_FAILED', name: 'Error', message: 'boom 4' } });
    expect(entry?.error.stack).toContain('boom 4');
    expect(entry?.firstFailedAt.getTime()).toBe(t0);
    expect(entry?.lastFailedAt.getTime()).toBe(t0 + 550);
    expect(letters).toEqual([entry]);
  });

  it('retries are re-admitted through the rate, even in reject mode, and are charged once', async () => {
    manager.registerProfile('p', { rate: { limit: 1, intervalMs: 1000, onLimit: 'reject' }, retry: { attempts: 3, baseMs: 10 }, quota: { limit: 10 } });
    await manager.subscribe('A', 'p');
    const tries: number[] = [];
    const run = rejection(manager.getLimiter('A').submit(() => {
      tries.push(since());
      throw new Error('no');
    }));
    await vi.advanceTimersByTimeAsync(3000);
    await run;
    expect(tries).toEqual([0, 1000, 2000]);
    expect((await manager.getSubscription('A'))?.usage).toBe(1);
  });

  it('an error with retryable: false is not retried', async () => {
    manager.registerProfile('p', { rate: { limit: 100, intervalMs: 1000 }, retry: { attempts: 5, baseMs: 10 } });
    await manager.subscribe('A', 'p');
    let tries = 0;
    const err = await rejection(manager.getLimiter('A').submit(() => {
      tries++;
      throw Object.assign(new Error('fatal'), { retryable: false });
    }));
    expect(tries).toBe(1);
    expect(err.code).toBe('TASK_FAILED');
    expect(await manager.dlq.list()).toHaveLength(1);
  });

  it('jitter draws each delay within [delay * (1 - jitter), delay]', async () => {
    manager.registerProfile('p', { rate: { limit: 100, intervalMs: 1000 }, retry: { attempts: 6, baseMs: 100, multiplier: 2, maxMs: 10_000, jitter: 0.5 } });
    await manager.subscribe('A', 'p');
    const tries: number[] = [];
    const run = rejection(manager.getLimiter('A').submit(() => {
      tries.push(since());
      throw new Error('no');
    }));
    await vi.advanceTimersByTimeAsync(10_000);
    await run;
    const gaps = tries.slice(1).map((t, i) => t - tries[i]!);
    gaps.forEach((gap, i) => {
      const full = 100 * 2 ** i;
      expect(gap).toBeGreaterThanOrEqual(Math.round(full * 0.5));
      expect(gap).toBeLessThanOrEqual(full);
    });
  });

  it('dlq list / get / remove / replay; replay removes the entry once admitted; bounded by maxEntries', async () => {
    manager.registerProfile('p', { rate: { limit: 100, intervalMs: 1000 }, dlq: { maxEntries: 3, retentionMs: 60_000 } });
    await manager.subscribe('A', 'p');
    let fail = true;
    const task = () => {
      if (fail) throw new Error('down');
      return 'up';
    };
    for (let i = 0; i < 5; i++) await rejection(manager.getLimiter('A').submit(task));
    const list = await manager.dlq.list();
    expect(list).toHaveLength(3);
    expect(await manager.dlq.list({ limit: 2 })).toEqual(list.slice(0, 2));
    expect(await manager.dlq.list({ userId: 'B' })).toEqual([]);
    expect(await manager.dlq.get(list[0]!.id)).toBe(list[0]);
    expect(await manager.dlq.remove(list[0]!.id)).toBe(true);
    expect(await manager.dlq.remove(list[0]!.id)).toBe(false);
    fail = false;
    await expect(manager.dlq.replay(list[1]!.id)).resolves.toBe('up');
    expect((await manager.dlq.list()).map((e) => e.id)).toEqual([list[2]!.id]);
    expect((await rejection(manager.dlq.replay('nope'))).code).toBe('INVALID_ARGUMENT');
    await vi.advanceTimersByTimeAsync(60_000);
    expect(await manager.dlq.list()).toEqual([]);
  });
  it('replay removes the entry once admitted, before the task ends; a second replay of it is refused', async () => {
    manager.registerProfile('p', { rate: { limit: 100, intervalMs: 1000 } });
    await manager.subscribe('A', 'p');
    const hold = gate();
    let fail = true;
    await rejection(manager.getLimiter('A').submit(async () => {
      if (fail) throw new Error('down');
      await hold.opened;
      return 'up';
    }));
    const [entry] = await manager.dlq.list();
    fail = false;
    const replay = manager.dlq.replay(entry!.id);
    await vi.advanceTimersByTimeAsync(0);
    expect(await manager.dlq.get(entry!.id)).toBeUndefined();
    expect((await rejection(manager.dlq.replay(entry!.id))).code).toBe('INVALID_ARGUMENT');
    hold.open();
    await expect(replay).resolves.toBe('up');
  });

  it('a replay admitted but ended before it started (its user canceled while it waited its turn) puts the entry back', async () => {
    manager.registerProfile('p', { rate: { limit: 1, intervalMs: 1000 } });
    await manager.subscribe('A', 'p');
    await rejection(manager.getLimiter('A').submit(() => {
      throw new Error('down');
    }));
    const [entry] = await manager.dlq.list();
    const replay = rejection(manager.dlq.replay(entry!.id)); // the bucket is spent: it waits its turn
    await vi.advanceTimersByTimeAsync(0);
    expect(await manager.dlq.get(entry!.id)).toBeUndefined(); // claimed
    await manager.cancelSubscription('A');
    expect((await replay).code).toBe('SUBSCRIPTION_INACTIVE');
    expect((await manager.dlq.get(entry!.id))?.id).toBe(entry!.id);
  });

  it('a replay that ran and failed again leaves only its own new dead letter', async () => {
    manager.registerProfile('p', { rate: { limit: 100, intervalMs: 1000 } });
    await manager.subscribe('A', 'p');
    const down = (): never => {
      throw new Error('down');
    };
    await rejection(manager.getLimiter('A').submit(down));
    const [entry] = await manager.dlq.list();
    expect((await rejection(manager.dlq.replay(entry!.id))).code).toBe('TASK_FAILED');
    const after = await manager.dlq.list();
    expect(after).toHaveLength(1);
    expect(after[0]!.id).not.toBe(entry!.id);
  });

  it('a replay refused at admission keeps its entry', async () => {
    manager.registerProfile('p', { rate: { limit: 100, intervalMs: 1000 } });
    await manager.subscribe('A', 'p');
    await rejection(manager.getLimiter('A').submit(() => {
      throw new Error('down');
    }));
    const [entry] = await manager.dlq.list();
    await manager.cancelSubscription('A');
    expect((await rejection(manager.dlq.replay(entry!.id))).code).toBe('SUBSCRIPTION_INACTIVE');
    expect(await manager.dlq.get(entry!.id)).toBe(entry);
  });
});

describe('close', () => {
  it('drained close: 1 running and 3 queued all run', async () => {
    manager.registerProfile('p', { rate: { limit: 100, intervalMs: 1000 }, pool: { perUserConcurrency: 1 } });
    await manager.subscribe('A', 'p');
    const hold = gate();
    const ran: number[] = [];
    const limiter = manager.getLimiter('A');
    const runs = [limiter.submit(async () => { await hold.opened; ran.push(0); })];
    for (let i = 1; i < 4; i++) runs.push(limiter.submit(() => { ran.push(i); }));
    const closing = manager.close({ drain: true });
    expect((await rejection(limiter.submit(() => 9))).code).toBe('SHUTTING_DOWN');
    expect((await rejection(manager.getLimiter('Z').check())).code).toBe('SHUTTING_DOWN');
    hold.open();
    expect(await closing).toEqual({ completed: 4, rejected: 0, abandoned: 0 });
    await Promise.all(runs);
    expect(ran).toEqual([0, 1, 2, 3]);
  });

  it('undrained close rejects the 3 queued SHUTTING_DOWN and refunds them', async () => {
    manager.registerProfile('p', { rate: { limit: 100, intervalMs: 1000 }, pool: { perUserConcurrency: 1 }, quota: { limit: 10 } });
    await manager.subscribe('A', 'p');
    const hold = gate();
    const started = gate();
    const limiter = manager.getLimiter('A');
    const first = limiter.submit(() => {
      started.open();
      return hold.opened;
    });
    const queued = [1, 2, 3].map(() => rejection(limiter.submit(() => 1)));
    await started.opened;
    const closing = manager.close({ drain: false });
    expect((await Promise.all(queued)).map((e) => e.code)).toEqual(['SHUTTING_DOWN', 'SHUTTING_DOWN', 'SHUTTING_DOWN']);
    expect((await manager.getSubscription('A'))?.usage).toBe(1);
    hold.open();
    await first;
    expect(await closing).toEqual({ completed: 1, rejected: 3, abandoned: 0 });
  });

  it('close timeout: a task that never settles; close({ timeoutMs: 100 }) settles at 100 ms with 1 abandoned', async () => {
    manager.registerProfile('p', { rate: { limit: 100, intervalMs: 1000 } });
    await manager.subscribe('A', 'p');
    const stuck = rejection(manager.getLimiter('A').submit(() => new Promise(() => {})));
    let report: unknown;
    const closing = manager.close({ timeoutMs: 100 }).then((r) => {
      report = r;
      return since();
    });
    await vi.advanceTimersByTimeAsync(99);
    expect(report).toBeUndefined();
    await vi.advanceTimersByTimeAsync(1);
    expect(await closing).toBe(100);
    expect(report).toEqual({ completed: 0, rejected: 0, abandoned: 1 });
    expect((await stuck).code).toBe('SHUTTING_DOWN');
  });

  it('drained close waits for rate turns and retry backoff', async () => {
    manager.registerProfile('p', { rate: { limit: 1, intervalMs: 1000 }, retry: { attempts: 2, baseMs: 500 } });
    await manager.subscribe('A', 'p');
    const limiter = manager.getLimiter('A');
    let tries = 0;
    const runs = [limiter.submit(() => 1), limiter.submit(() => 2), rejection(limiter.submit(() => { tries++; throw new Error('x'); }))];
    // The first runs at once, before the close; the two others wait for their turns.
    await runs[0];
    const closing = manager.close({ drain: true, timeoutMs: 10_000 });
    await vi.advanceTimersByTimeAsync(5000);
    expect(await closing).toEqual({ completed: 2, rejected: 0, abandoned: 0 });
    await Promise.all(runs);
    expect(tries).toBe(2);
  });
});

describe('subscriptions and tasks', () => {
  it("canceling rejects the user's queued tasks SUBSCRIPTION_INACTIVE and refunds them; running ones finish", async () => {
    manager.registerProfile('p', { rate: { limit: 1, intervalMs: 1000 }, pool: { perUserConcurrency: 1 }, quota: { limit: 10 } });
    await manager.subscribe('A', 'p');
    await manager.subscribe('B', 'p');
    const hold = gate();
    const limiter = manager.getLimiter('A');
    const running = limiter.submit(async () => {
      await hold.opened;
      return 'done';
    });
    const waiting = rejection(limiter.submit(() => 1));
    const other = manager.getLimiter('B').submit(() => 'B');
    await manager.cancelSubscription('A');
    expect((await waiting).code).toBe('SUBSCRIPTION_INACTIVE');
    hold.open();
    await expect(running).resolves.toBe('done');
    await expect(other).resolves.toBe('B');
    expect((await manager.getSubscription('A'))?.usage).toBe(1);
    expect((await rejection(limiter.submit(() => 1))).code).toBe('SUBSCRIPTION_INACTIVE');
  });

  it('status is checked at every submit, not when the handle is taken', async () => {
    manager.registerProfile('p', { rate: { limit: 100, intervalMs: 1000 } });
    await manager.subscribe('A', 'p', { startsAt: t0 + 1000, durationMs: 1000 });
    const limiter = manager.getLimiter('A');
    const notYet = await rejection(limiter.submit(() => 1));
    expect(notYet.code).toBe('SUBSCRIPTION_NOT_STARTED');
    expect(notYet.retryAfterMs).toBe(1000);
    await vi.advanceTimersByTimeAsync(1000);
    await expect(limiter.submit(() => 1)).resolves.toBe(1);
    const events: unknown[] = [];
    manager.on('subscription', (e) => events.push(e));
    await vi.advanceTimersByTimeAsync(1000);
    expect((await rejection(limiter.submit(() => 1))).code).toBe('SUBSCRIPTION_EXPIRED');
    expect(events).toEqual([{ userId: 'A', event: 'expired' }]);
    expect((await manager.getSubscription('A'))?.status).toBe('expired');
    await manager.extendSubscription('A', 5000);
    await expect(limiter.submit(() => 2)).resolves.toBe(2);
    expect((await manager.getSubscription('A'))?.endsAt?.getTime()).toBe(t0 + 2000 + 5000);
    expect((await rejection(manager.getLimiter('nobody').submit(() => 1))).code).toBe('SUBSCRIPTION_NOT_FOUND');
  });
});
