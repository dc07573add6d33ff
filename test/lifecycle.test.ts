// The task lifecycle through the public API: the `task` event, task_transitions_total, the
// refund rule, terminal states, and the guarantees at its edges that concern the lifecycle
// (a cost that no longer fits, exact turns, listeners, metrics, close escalation, peek, late
// aborts). Fake clock throughout.
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { Manager, MemoryStore, type FailedTask, type TaskEvent, type TaskvalveError } from '../src/index.js';
import { gate, rejection, track, quiet } from './helpers.js';
import { scrape, scrapeSum } from './support/scrape.js';

let manager: Manager;
let t0: number;
const since = () => Date.now() - t0;

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


async function usage(userId: string): Promise<number | undefined> {
  return (await manager.getSubscription(userId))?.usage;
}

describe('the task event', () => {
  it('traces each task from PENDING to its end, with the taskId given, its user, profile and attempt', async () => {
    manager.registerProfile('p', { rate: { limit: 1, intervalMs: 1000 } });
    await manager.subscribe('u', 'p');
    const events = record(manager);
    const u = manager.getLimiter('u');
    const a = u.submit(() => 'a', { taskId: 'A' });
    const b = u.submit(() => 'b', { taskId: 'B' });
    await vi.advanceTimersByTimeAsync(1000);
    expect(await Promise.all([a, b])).toEqual(['a', 'b']);
    expect(path(events, 'A')).toEqual(['PENDING>QUEUED', 'QUEUED>RUNNING', 'RUNNING>SUCCEEDED']);
    expect(path(events, 'B')).toEqual(['PENDING>WAITING_RATE', 'WAITING_RATE>QUEUED', 'QUEUED>RUNNING', 'RUNNING>SUCCEEDED']);
    expect(events.every((e) => e.userId === 'u' && e.profileName === 'p' && e.attempt === 1)).toBe(true);
  });

  it('a retried task goes through RETRY_WAIT with the failure as reason, and its attempts are numbered', async () => {
    manager.registerProfile('r', { rate: { limit: 100, intervalMs: 1000 }, retry: { attempts: 2, baseMs: 100 } });
    await manager.subscribe('u', 'r');
    const events = record(manager);
    let calls = 0;
    const run = manager.getLimiter('u').submit(
      () => {
        calls++;
        if (calls === 1) throw new Error('first try fails');
        return 'second';
      },
      { taskId: 'T' },
    );
    await vi.advanceTimersByTimeAsync(100);
    expect(await run).toBe('second');
    expect(path(events, 'T')).toEqual([
      'PENDING>QUEUED',
      'QUEUED>RUNNING',
      'RUNNING>RETRY_WAIT',
      'RETRY_WAIT>QUEUED',
      'QUEUED>RUNNING',
      'RUNNING>SUCCEEDED',
    ]);
    expect(events.find((e) => e.to === 'RETRY_WAIT')?.reason).toBe('task_failed');
    expect(events.filter((e) => e.to === 'RUNNING').map((e) => e.attempt)).toEqual([1, 2]);
  });

  it('without a taskId, a listened task gets one generated id for all its events, distinct per task', async () => {
    manager.registerProfile('p', { rate: { limit: 100, intervalMs: 1000 } });
    await manager.subscribe('u', 'p');
    const events = record(manager);
    await Promise.all([manager.getLimiter('u').submit(() => 1), manager.getLimiter('u').submit(() => 2)]);
    const ids = [...new Set(events.map((e) => e.id))];
    expect(ids).toHaveLength(2);
    for (const id of ids) {
      expect(id).toMatch(/^[0-9a-f-]{36}$/);
      expect(path(events, id)).toEqual(['PENDING>QUEUED', 'QUEUED>RUNNING', 'RUNNING>SUCCEEDED']);
    }
  });

  it('task_transitions_total counts exactly the transitions the events told', async () => {
    manager.registerProfile('r', { rate: { limit: 1, intervalMs: 1000 }, retry: { attempts: 2, baseMs: 100 } });
    await manager.subscribe('u', 'r');
    const events = record(manager);
    let calls = 0;
    const runs = [0, 1, 2].map(() =>
      manager.getLimiter('u').submit(() => {
        if (++calls === 1) throw new Error('once');
        return calls;
      }),
    );
    await vi.advanceTimersByTimeAsync(10_000);
    await Promise.all(runs);
    const counts = new Map<string, number>();
    for (const e of events) counts.set(`${e.from}>${e.to}`, (counts.get(`${e.from}>${e.to}`) ?? 0) + 1);
    expect(counts.size).toBeGreaterThan(3);
    for (const [step, n] of counts) {
      const [from, to] = step.split('>') as [string, string];
      expect(await scrape(manager, 'taskvalve_task_transitions_total', { profile: 'r', from, to }), step).toBe(n);
    }
    expect(await scrapeSum(manager, 'taskvalve_task_transitions_total')).toBe(events.length);
  });
});

describe('terminal states are final', () => {
  it('an abort after the result changes nothing: no event, no refund, the result stands', async () => {
    manager.registerProfile('p', { rate: { limit: 100, intervalMs: 1000 }, quota: { limit: 10 } });
    await manager.subscribe('u', 'p');
    const events = record(manager);
    const controller = new AbortController();
    expect(await manager.getLimiter('u').submit(() => 'done', { signal: controller.signal })).toBe('done');
    await vi.advanceTimersByTimeAsync(0);
    const before = events.length;
    controller.abort();
    await vi.advanceTimersByTimeAsync(0);
    expect(events.length).toBe(before);
    expect(await usage('u')).toBe(1);
  });

  it("an inline task's answer after its timeout is counted as late and changes nothing", async () => {
    manager.registerProfile('p', { rate: { limit: 100, intervalMs: 1000 } });
    await manager.subscribe('u', 'p');
    const events = record(manager);
    const late = gate<string>();
    const run = rejection(manager.getLimiter('u').submit(() => late.opened, { timeoutMs: 1000, taskId: 'T' }));
    await vi.advanceTimersByTimeAsync(1000);
    expect((await run).code).toBe('TASK_TIMEOUT');
    const before = path(events, 'T');
    late.open('too late');
    await vi.advanceTimersByTimeAsync(0);
    expect(path(events, 'T')).toEqual(before);
    expect(before.at(-1)).toBe('RUNNING>FAILED');
    expect(await scrape(manager, 'taskvalve_task_late_events_total', { profile: 'p' })).toBe(1);
  });
});

describe('refunds: what was charged for a task that never started comes back, once', () => {
  it('aborted while waiting for its rate turn: the quota and the reserved units come back', async () => {
    manager.registerProfile('p', { rate: { limit: 1, intervalMs: 1000 }, quota: { limit: 10 } });
    await manager.subscribe('u', 'p');
    const u = manager.getLimiter('u');
    await u.check();
    const idle = await u.peek();
    const controller = new AbortController();
    const run = rejection(u.submit(() => 'never', { signal: controller.signal }));
    await vi.advanceTimersByTimeAsync(0);
    expect(await usage('u')).toBe(2);
    expect((await u.peek()).retryAfterMs).toBe(2000);
    controller.abort();
    expect((await run).code).toBe('ABORTED');
    expect(await usage('u')).toBe(1);
    expect(await u.peek()).toEqual(idle);
  });

  it('aborted while queued for a slot: the quota and the rate units it took come back', async () => {
    manager.registerProfile('p', { rate: { limit: 10, intervalMs: 1000 }, quota: { limit: 10 }, pool: { perUserConcurrency: 1 } });
    await manager.subscribe('u', 'p');
    const u = manager.getLimiter('u');
    const hold = gate();
    const first = quiet(u.submit(() => hold.opened));
    await vi.advanceTimersByTimeAsync(0);
    const oneRunning = await u.peek();
    const controller = new AbortController();
    const queued = rejection(u.submit(() => 'never', { signal: controller.signal }));
    await vi.advanceTimersByTimeAsync(0);
    expect(await usage('u')).toBe(2);
    expect((await u.peek()).remaining).toBe(oneRunning.remaining - 1);
    controller.abort();
    expect((await queued).code).toBe('ABORTED');
    expect(await usage('u')).toBe(1);
    expect((await u.peek()).remaining).toBe(oneRunning.remaining);
    hold.open();
    await first;
  });

  it('a task refunded by a cancel is not refunded again by a later abort', async () => {
    manager.registerProfile('p', { rate: { limit: 1, intervalMs: 1000, burst: 5 } });
    await manager.subscribe('u', 'p');
    const u = manager.getLimiter('u');
    await u.check(5);
    const controller = new AbortController();
    const waiting = rejection(u.submit(() => 'never', { cost: 2, signal: controller.signal }));
    await vi.advanceTimersByTimeAsync(0);
    expect(await usage('u')).toBe(7);
    await manager.cancelSubscription('u');
    expect((await waiting).code).toBe('SUBSCRIPTION_INACTIVE');
    expect(await usage('u')).toBe(5);
    controller.abort();
    await vi.advanceTimersByTimeAsync(0);
    expect(await usage('u')).toBe(5);
  });

  it('a task that ran and failed keeps its charge', async () => {
    manager.registerProfile('p', { rate: { limit: 10, intervalMs: 1000 } });
    await manager.subscribe('u', 'p');
    const err = await rejection(
      manager.getLimiter('u').submit(
        () => {
          throw new Error('ran');
        },
        { cost: 3 },
      ),
    );
    expect(err.code).toBe('TASK_FAILED');
    expect(await usage('u')).toBe(3);
  });
});

describe('2. a cost that no longer fits after a profile change', () => {
  beforeEach(() => {
    manager.registerProfile('big', { rate: { limit: 1, intervalMs: 1000, burst: 5 }, retry: { attempts: 2, baseMs: 60_000 } });
    manager.registerProfile('small', { rate: { limit: 1, intervalMs: 1000, burst: 2 } });
  });

  it('a task waiting for its rate turn settles at once INVALID_ARGUMENT naming the new burst, refunded', async () => {
    await manager.subscribe('u', 'big');
    const u = manager.getLimiter('u');
    await u.check(5);
    const waiting = track(u.submit(() => 'never', { cost: 3 }));
    await vi.advanceTimersByTimeAsync(0);
    expect(await usage('u')).toBe(8);
    await manager.changeProfile('u', 'small');
    await vi.advanceTimersByTimeAsync(0);
    expect(waiting.settled).toBe(true);
    expect(waiting.error?.code).toBe('INVALID_ARGUMENT');
    expect(waiting.error?.message).toMatch(/burst 2\b/);
    expect(await usage('u')).toBe(5);
  });

  it('a task waiting to retry settles at once INVALID_ARGUMENT naming the new burst; it ran once, charged once', async () => {
    await manager.subscribe('u', 'big');
    let calls = 0;
    const run = track(
      manager.getLimiter('u').submit(
        () => {
          calls++;
          throw new Error('fails');
        },
        { cost: 3 },
      ),
    );
    await vi.advanceTimersByTimeAsync(0);
    expect(calls).toBe(1);
    await manager.changeProfile('u', 'small');
    await vi.advanceTimersByTimeAsync(0);
    expect(run.settled).toBe(true);
    expect(run.error?.code).toBe('INVALID_ARGUMENT');
    expect(run.error?.message).toMatch(/burst 2\b/);
    await vi.advanceTimersByTimeAsync(120_000);
    expect(calls).toBe(1);
    expect(await usage('u')).toBe(3);
  });

  it('re-subscribing to a profile with a smaller burst is a profile change too: the waiting task settles at once, naming the new burst', async () => {
    await manager.subscribe('u', 'big');
    const u = manager.getLimiter('u');
    await u.check(5);
    const waiting = track(u.submit(() => 'never', { cost: 3 }));
    await vi.advanceTimersByTimeAsync(0);
    await manager.subscribe('u', 'small');
    await vi.advanceTimersByTimeAsync(0);
    expect(waiting.settled).toBe(true);
    await vi.advanceTimersByTimeAsync(10_000);
    expect(waiting.error?.code).toBe('INVALID_ARGUMENT');
    expect(waiting.error?.message).toMatch(/burst 2\b/);
    expect(await usage('u')).toBe(5);
  });
});

describe('4. exact turns', () => {
  it('a cost-1 waiter behind an aborted cost-3 waiter starts at 1 s, not at the departed head\'s 3 s', async () => {
    manager.registerProfile('p', { rate: { limit: 1, intervalMs: 1000, burst: 3 } });
    await manager.subscribe('u', 'p');
    const u = manager.getLimiter('u');
    await u.check(3);
    const controller = new AbortController();
    const starts: number[] = [];
    const big = rejection(u.submit(() => starts.push(-1), { cost: 3, signal: controller.signal }));
    const small = quiet(u.submit(() => starts.push(since())));
    await vi.advanceTimersByTimeAsync(0);
    controller.abort();
    expect((await big).code).toBe('ABORTED');
    await vi.advanceTimersByTimeAsync(5000);
    await small;
    expect(starts).toEqual([1000]);
  });

  it("on a shared bucket, when the head's subscription is canceled, the next user's cost-1 task starts at 1 s", async () => {
    manager.registerProfile('s', { rate: { limit: 1, intervalMs: 1000, burst: 3, shared: 'line' } });
    await manager.subscribe('A', 's');
    await manager.subscribe('B', 's');
    await manager.getLimiter('A').check(3);
    const starts: number[] = [];
    const head = rejection(manager.getLimiter('A').submit(() => starts.push(-1), { cost: 3 }));
    const next = quiet(manager.getLimiter('B').submit(() => starts.push(since())));
    await vi.advanceTimersByTimeAsync(0);
    await manager.cancelSubscription('A');
    expect((await head).code).toBe('SUBSCRIPTION_INACTIVE');
    await vi.advanceTimersByTimeAsync(5000);
    await next;
    expect(starts).toEqual([1000]);
  });

  it('after an upgrade, waiting tasks start at the new rate\'s times', async () => {
    manager.registerProfile('slow', { rate: { limit: 1, intervalMs: 10_000 } });
    manager.registerProfile('fast', { rate: { limit: 1, intervalMs: 1000 } });
    await manager.subscribe('u', 'slow');
    const starts: number[] = [];
    const runs = [0, 1, 2].map(() => quiet(manager.getLimiter('u').submit(() => starts.push(since()))));
    await vi.advanceTimersByTimeAsync(0);
    await manager.changeProfile('u', 'fast');
    await vi.advanceTimersByTimeAsync(30_000);
    await Promise.all(runs);
    expect(starts).toEqual([0, 1000, 2000]);
  });

  it('after a downgrade, waiting tasks wait for the new rate\'s times (never earlier)', async () => {
    manager.registerProfile('slow', { rate: { limit: 1, intervalMs: 10_000 } });
    manager.registerProfile('fast', { rate: { limit: 1, intervalMs: 1000 } });
    await manager.subscribe('u', 'fast');
    const starts: number[] = [];
    const runs = [0, 1, 2].map(() => quiet(manager.getLimiter('u').submit(() => starts.push(since()))));
    await vi.advanceTimersByTimeAsync(0);
    await manager.changeProfile('u', 'slow');
    await vi.advanceTimersByTimeAsync(30_000);
    await Promise.all(runs);
    expect(starts).toEqual([0, 10_000, 20_000]);
  });
});

describe('maxWaitMs bounds the wait in the line', () => {
  it('after a downgrade, a waiting task whose turn moves past its maxWaitMs leaves at its deadline, RATE_LIMITED and refunded; one within it starts on the new rate', async () => {
    manager.registerProfile('fast', { rate: { limit: 1, intervalMs: 1000, maxWaitMs: 2500 }, quota: { limit: 10 } });
    manager.registerProfile('slow', { rate: { limit: 1, intervalMs: 2000, maxWaitMs: 2500 }, quota: { limit: 10 } });
    await manager.subscribe('u', 'fast');
    const u = manager.getLimiter('u');
    const starts: number[] = [];
    const first = quiet(u.submit(() => starts.push(since())));
    const second = quiet(u.submit(() => starts.push(since())));
    let leftAt = -1;
    // Admitted to wait 2 s (within 2.5 s); after the downgrade its turn would be at 4 s.
    const third = rejection(u.submit(() => starts.push(-1)).finally(() => (leftAt = since())));
    await vi.advanceTimersByTimeAsync(0);
    await manager.changeProfile('u', 'slow');
    await vi.advanceTimersByTimeAsync(5000);
    const err = await third;
    expect(err.code).toBe('RATE_LIMITED');
    expect(leftAt).toBe(2500);
    expect(err.retryAfterMs).toBe(1500);
    await Promise.all([first, second]);
    expect(starts).toEqual([0, 2000]);
    expect(await usage('u')).toBe(2);
  });

  it('a task whose turn comes exactly at its deadline starts', async () => {
    manager.registerProfile('edge', { rate: { limit: 1, intervalMs: 1000, maxWaitMs: 1000 } });
    await manager.subscribe('u', 'edge');
    const u = manager.getLimiter('u');
    await u.check(1);
    const run = u.submit(() => since());
    await vi.advanceTimersByTimeAsync(1000);
    expect(await run).toBe(1000);
  });

  it('a retry waits for its turn without a deadline: maxWaitMs bounds the wait of an admission', async () => {
    manager.registerProfile('r', { rate: { limit: 1, intervalMs: 1000, maxWaitMs: 1500 }, retry: { attempts: 2, baseMs: 1, maxMs: 1, jitter: 0 } });
    await manager.subscribe('u', 'r');
    const u = manager.getLimiter('u');
    await u.check(1);
    const starts: number[] = [];
    // Admitted to wait 1 s (within 1.5 s); it fails once, and its retry waits for the next unit.
    const run = u.submit(() => {
      starts.push(since());
      if (starts.length === 1) throw new Error('once');
      return 'ok';
    });
    await vi.advanceTimersByTimeAsync(5000);
    expect(await run).toBe('ok');
    // The retry waited about a second for its unit, past the task's 1.5 s from admission.
    expect(starts).toEqual([1000, 2000]);
  });
});

describe('a request that takes nothing the line needs', () => {
  it('a check while a task waits is allowed once its unit and the waiting units conform together, before the turn has run', async () => {
    let skew = 0;
    const m = new Manager({ clock: () => Date.now() + skew });
    m.registerProfile('p', { rate: { limit: 1, intervalMs: 1000, burst: 2 } });
    await m.subscribe('u', 'p');
    const u = m.getLimiter('u');
    await u.check(2);
    const starts: number[] = [];
    const waiting = quiet(u.submit(() => starts.push(since() + skew)));
    await vi.advanceTimersByTimeAsync(0);
    // The store's time moves 2 s on; the line's timer (1 s) has not fired yet.
    skew = 2000;
    expect((await u.check(1)).allowed).toBe(true);
    // The unit left is the waiting task's.
    expect(await u.check(1)).toMatchObject({ allowed: false, remaining: 0 });
    await vi.advanceTimersByTimeAsync(1000);
    await waiting;
    expect(starts).toEqual([3000]);
    await m.close();
  });
});

describe('9. listeners cannot break the machine', () => {
  it("a subscription listener that throws does not stop a cancel: queued tasks are still rejected; the error goes to 'error'", async () => {
    manager.registerProfile('p', { rate: { limit: 1, intervalMs: 1000 } });
    await manager.subscribe('u', 'p');
    const errors: Error[] = [];
    manager.on('error', (e) => errors.push(e));
    manager.on('subscription', (e) => {
      if (e.event === 'canceled') throw new Error('listener broke');
    });
    const u = manager.getLimiter('u');
    await u.check();
    const waiting = rejection(u.submit(() => 'never'));
    await vi.advanceTimersByTimeAsync(0);
    await manager.cancelSubscription('u');
    expect((await waiting).code).toBe('SUBSCRIPTION_INACTIVE');
    expect(await usage('u')).toBe(1);
    expect(errors.map((e) => e.message)).toEqual(['listener broke']);
  });

  it("a task listener that throws does not stop the task; each error goes to 'error'", async () => {
    manager.registerProfile('p', { rate: { limit: 100, intervalMs: 1000 } });
    await manager.subscribe('u', 'p');
    const errors: Error[] = [];
    manager.on('error', (e) => errors.push(e));
    manager.on('task', (e) => {
      throw new Error(`listener broke at ${e.to}`);
    });
    expect(await manager.getLimiter('u').submit(() => 'fine')).toBe('fine');
    await vi.advanceTimersByTimeAsync(0);
    expect(errors.map((e) => e.message)).toEqual(['listener broke at QUEUED', 'listener broke at RUNNING', 'listener broke at SUCCEEDED']);
  });

  it('an expired event whose listener calls check() for another user does not change the decision that emitted it', async () => {
    manager.registerProfile('p', { rate: { limit: 100, intervalMs: 1000 } });
    await manager.subscribe('X', 'p', { durationMs: 1000 });
    await manager.subscribe('Y', 'p');
    const reentrant: Promise<unknown>[] = [];
    manager.on('subscription', (e) => {
      if (e.event === 'expired') reentrant.push(manager.getLimiter('Y').check());
    });
    await vi.advanceTimersByTimeAsync(1000);
    const err = await rejection(manager.getLimiter('X').check());
    expect(err.code).toBe('SUBSCRIPTION_EXPIRED');
    expect(reentrant).toHaveLength(1);
    expect(await reentrant[0]).toMatchObject({ allowed: true });
    expect(await usage('X')).toBe(0);
    expect(await usage('Y')).toBe(1);
  });

  it("a task listener that calls check() and submit() on every event corrupts no decision: every count is exact", async () => {
    manager.registerProfile('p', { rate: { limit: 1000, intervalMs: 1000 }, quota: { limit: 1000 } });
    await manager.subscribe('A', 'p');
    await manager.subscribe('B', 'p');
    const side: Promise<unknown>[] = [];
    let eventsOfA = 0;
    manager.on('task', (e) => {
      if (e.userId !== 'A') return;
      eventsOfA++;
      side.push(manager.getLimiter('B').check());
      if (e.to === 'SUCCEEDED') side.push(manager.getLimiter('B').submit(() => 'b'));
    });
    const results = await Promise.all([0, 1, 2, 3, 4].map((i) => manager.getLimiter('A').submit(() => i)));
    await vi.advanceTimersByTimeAsync(0);
    await Promise.all(side);
    expect(results).toEqual([0, 1, 2, 3, 4]);
    expect(eventsOfA).toBe(15);
    expect(await usage('A')).toBe(5);
    expect(await usage('B')).toBe(15 + 5);
  });

  it("a dead-letter listener that replays the entry at once: the caller gets TASK_FAILED, the replay runs once", async () => {
    manager.registerProfile('p', { rate: { limit: 100, intervalMs: 1000 } });
    await manager.subscribe('u', 'p');
    let calls = 0;
    const replays: Promise<unknown>[] = [];
    manager.on('dead-letter', (entry) => replays.push(manager.dlq.replay(entry.id)));
    const err = await rejection(
      manager.getLimiter('u').submit(() => {
        if (++calls === 1) throw new Error('first time');
        return 'replayed';
      }),
    );
    expect(err.code).toBe('TASK_FAILED');
    expect(replays).toHaveLength(1);
    expect(await replays[0]).toBe('replayed');
    expect(calls).toBe(2);
    expect(await manager.dlq.list()).toEqual([]);
  });
});

describe('15. metrics tell the truth', () => {
  it('every admitted task reaches exactly one counted terminal transition; running aborts are counted as aborted', async () => {
    manager.registerProfile('p', { rate: { limit: 1000, intervalMs: 1000 }, pool: { perUserConcurrency: 1, maxQueue: 1 } });
    manager.registerProfile('slow', { rate: { limit: 1, intervalMs: 1000, burst: 1 } });
    for (const u of ['u1', 'u2', 'u3', 'u4', 'u5']) await manager.subscribe(u, 'p');
    await manager.subscribe('w', 'slow');
    const L = (u: string) => manager.getLimiter(u);

    expect(await L('u1').submit(() => 'ok')).toBe('ok');
    expect((await rejection(L('u2').submit(() => Promise.reject(new Error('bad'))))).code).toBe('TASK_FAILED');
    const timedOut = rejection(L('u3').submit(() => new Promise(() => {}), { timeoutMs: 100 }));
    await vi.advanceTimersByTimeAsync(100);
    expect((await timedOut).code).toBe('TASK_TIMEOUT');

    const stop = new AbortController();
    const running = rejection(L('u4').submit(() => new Promise(() => {}), { signal: stop.signal }));
    await vi.advanceTimersByTimeAsync(0);
    stop.abort();
    expect((await running).code).toBe('ABORTED');

    const hold = gate();
    const a = quiet(L('u5').submit(() => hold.opened.then(() => 'A')));
    const leave = new AbortController();
    const b = rejection(L('u5').submit(() => 'B', { signal: leave.signal }));
    await vi.advanceTimersByTimeAsync(0);
    const c = rejection(L('u5').submit(() => 'C'));
    expect((await c).code).toBe('QUEUE_FULL');
    leave.abort();
    expect((await b).code).toBe('ABORTED');
    hold.open();
    expect(await a).toBe('A');

    await L('w').check();
    const wait = new AbortController();
    const w = rejection(L('w').submit(() => 'W', { signal: wait.signal }));
    await vi.advanceTimersByTimeAsync(0);
    wait.abort();
    expect((await w).code).toBe('ABORTED');
    await vi.advanceTimersByTimeAsync(0);

    const admitted = 8;
    expect(await scrapeSum(manager, 'taskvalve_tasks_submitted_total')).toBe(admitted);
    const terminal = async (to: string) => scrapeSum(manager, 'taskvalve_task_transitions_total', { to });
    expect(await terminal('SUCCEEDED')).toBe(2);
    expect(await terminal('FAILED')).toBe(2);
    expect(await terminal('CANCELED')).toBe(4);
    expect(await scrape(manager, 'taskvalve_tasks_completed_total', { profile: 'p', outcome: 'success' })).toBe(2);
    expect(await scrape(manager, 'taskvalve_tasks_completed_total', { profile: 'p', outcome: 'failed' })).toBe(1);
    expect(await scrape(manager, 'taskvalve_tasks_completed_total', { profile: 'p', outcome: 'timeout' })).toBe(1);
    expect(await scrape(manager, 'taskvalve_tasks_completed_total', { profile: 'p', outcome: 'aborted' })).toBe(1);
    expect(await scrape(manager, 'taskvalve_tasks_rejected_total', { profile: 'p', reason: 'queue_full' })).toBe(1);
    expect(await scrape(manager, 'taskvalve_dead_letters_total', { profile: 'p' })).toBe(2);
    expect(await scrapeSum(manager, 'taskvalve_queue_depth')).toBe(0);
    expect(await scrapeSum(manager, 'taskvalve_tasks_running')).toBe(0);
  });

  it('check() denials and submit() denials each count once in tasks_rejected_total, by reason; only submits count as submitted', async () => {
    manager.registerProfile('p', { rate: { limit: 1, intervalMs: 1000 }, quota: { limit: 2 } });
    await manager.subscribe('u', 'p');
    const u = manager.getLimiter('u');
    const rejected = (reason: string) => scrape(manager, 'taskvalve_tasks_rejected_total', { profile: 'p', reason });
    expect((await u.check()).allowed).toBe(true);
    expect((await u.check()).allowed).toBe(false);
    expect(await rejected('rate_limited')).toBe(1);
    expect((await rejection(u.submit(() => 1, { wait: false }))).code).toBe('RATE_LIMITED');
    expect(await rejected('rate_limited')).toBe(2);
    await vi.advanceTimersByTimeAsync(1000);
    expect((await u.check()).allowed).toBe(true);
    expect((await rejection(u.check())).code).toBe('QUOTA_EXCEEDED');
    expect(await rejected('quota_exceeded')).toBe(1);
    expect((await rejection(u.submit(() => 1))).code).toBe('QUOTA_EXCEEDED');
    expect(await rejected('quota_exceeded')).toBe(2);
    expect(await scrape(manager, 'taskvalve_tasks_submitted_total', { profile: 'p' })).toBe(2);
  });
});

describe('16. inline tasks never start inside submit()', () => {
  it('the code after submit() in the same tick runs first, from the top level, from inside a task and from a task listener', async () => {
    manager.registerProfile('p', { rate: { limit: 100, intervalMs: 1000 } });
    await manager.subscribe('u', 'p');
    const u = manager.getLimiter('u');
    const order: string[] = [];
    const top = u.submit(() => order.push('top task'));
    order.push('after top submit');
    await top;
    expect(order).toEqual(['after top submit', 'top task']);

    order.length = 0;
    await u.submit(async () => {
      const inner = u.submit(() => order.push('inner task'));
      order.push('after inner submit');
      await inner;
    });
    expect(order).toEqual(['after inner submit', 'inner task']);

    order.length = 0;
    const fromListener: Promise<unknown>[] = [];
    manager.once('task', () => {
      fromListener.push(u.submit(() => order.push('listener task')));
      order.push('after listener submit');
    });
    await u.submit(() => 'trigger');
    await Promise.all(fromListener);
    expect(order).toEqual(['after listener submit', 'listener task']);
  });
});

describe('17. a second close() can escalate', () => {
  it('close({ drain: false }) during a draining close rejects what has not started, now; the running task completes', async () => {
    manager.registerProfile('slow', { rate: { limit: 1, intervalMs: 10_000 } });
    manager.registerProfile('r', { rate: { limit: 100, intervalMs: 1000 }, retry: { attempts: 3, baseMs: 60_000 } });
    await manager.subscribe('u', 'slow');
    await manager.subscribe('v', 'r');
    const hold = gate();
    const running = quiet(manager.getLimiter('u').submit(() => hold.opened.then(() => 'ran')));
    const waiting = [0, 1].map(() => track(manager.getLimiter('u').submit(() => 'never')));
    const retrying = track(
      manager.getLimiter('v').submit(() => {
        throw new Error('retry me');
      }),
    );
    await vi.advanceTimersByTimeAsync(0);
    const first = manager.close();
    await vi.advanceTimersByTimeAsync(0);
    expect([...waiting, retrying].some((t) => t.settled)).toBe(false);
    const second = manager.close({ drain: false });
    await vi.advanceTimersByTimeAsync(0);
    for (const t of [...waiting, retrying]) {
      expect(t.settled).toBe(true);
      expect(t.error?.code).toBe('SHUTTING_DOWN');
    }
    hold.open();
    expect(await running).toBe('ran');
    const report = await first;
    expect(report).toEqual({ completed: 1, rejected: 3, abandoned: 0 });
    expect(await second).toEqual(report);
  });
});

describe('18. peek counts waiting tasks', () => {
  it('peek tells the wait and the time to full that the waiting tasks reserve', async () => {
    manager.registerProfile('p', { rate: { limit: 1, intervalMs: 1000 } });
    await manager.subscribe('u', 'p');
    const u = manager.getLimiter('u');
    await u.check();
    const runs = [0, 1].map(() => quiet(u.submit(() => 'later')));
    await vi.advanceTimersByTimeAsync(0);
    expect(await u.peek()).toMatchObject({ allowed: false, limit: 1, remaining: 0, retryAfterMs: 3000, resetAfterMs: 3000, usage: 3 });
    await vi.advanceTimersByTimeAsync(500);
    expect(await u.peek()).toMatchObject({ allowed: false, remaining: 0, retryAfterMs: 2500, resetAfterMs: 2500 });
    await vi.advanceTimersByTimeAsync(1500);
    await Promise.all(runs);
    expect(await u.peek()).toMatchObject({ allowed: false, retryAfterMs: 1000, resetAfterMs: 1000 });
  });

  it('peek answers what check(1) answers at the same moment while tasks wait, resetAfterMs included', async () => {
    manager.registerProfile('p', { rate: { limit: 1, intervalMs: 1000 } });
    await manager.subscribe('u', 'p');
    const u = manager.getLimiter('u');
    await u.check();
    const runs = [0, 1].map(() => quiet(u.submit(() => 'later')));
    await vi.advanceTimersByTimeAsync(0);
    const { usage: _u, quotaLimit: _q, status: _s, ...peeked } = await u.peek();
    const checked = await u.check(1);
    expect(checked).toEqual(peeked);
    await vi.advanceTimersByTimeAsync(2000);
    await Promise.all(runs);
  });
});

/** A MemoryStore whose dead letters are stored only when the test opens the gate. */
class SlowDeadLetters extends MemoryStore {
  readonly door = gate();
  override dlqAdd(entry: FailedTask, bounds: { maxEntries: number; retentionMs: number }, nowMs: number): Promise<void> {
    return this.door.opened.then(() => super.dlqAdd(entry, bounds, nowMs));
  }
}

describe('19. an abort after the end changes nothing', () => {
  it('an abort that arrives while the dead letter is being stored is too late: TASK_FAILED, and the entry exists', async () => {
    await manager.close();
    const store = new SlowDeadLetters();
    manager = new Manager({ store, clock: () => Date.now() });
    manager.registerProfile('p', { rate: { limit: 100, intervalMs: 1000 } });
    await manager.subscribe('u', 'p');
    const controller = new AbortController();
    manager.on('task', (e) => {
      if (e.to === 'FAILED') controller.abort();
    });
    const run = track(
      manager.getLimiter('u').submit(
        () => {
          throw new Error('last attempt fails');
        },
        { signal: controller.signal },
      ),
    );
    await vi.advanceTimersByTimeAsync(0);
    expect(controller.signal.aborted).toBe(true);
    expect(run.settled).toBe(false);
    store.door.open();
    await vi.advanceTimersByTimeAsync(0);
    expect(run.error?.code).toBe('TASK_FAILED');
    expect(await manager.dlq.list()).toHaveLength(1);
    // The abort reached a task already ended: counted as a late event.
    expect(await scrape(manager, 'taskvalve_task_late_events_total', { profile: 'p' })).toBe(1);
  });

  it("close's timeout while the dead letter is being stored: the caller gets TASK_FAILED, never SHUTTING_DOWN beside a stored entry", async () => {
    await manager.close();
    const store = new SlowDeadLetters();
    manager = new Manager({ store, clock: () => Date.now() });
    manager.registerProfile('p', { rate: { limit: 100, intervalMs: 1000 } });
    await manager.subscribe('u', 'p');
    const run = track(
      manager.getLimiter('u').submit(() => {
        throw new Error('last attempt fails');
      }),
    );
    await vi.advanceTimersByTimeAsync(0);
    const closing = manager.close({ timeoutMs: 1000 });
    await vi.advanceTimersByTimeAsync(1000);
    await closing;
    store.door.open();
    await vi.advanceTimersByTimeAsync(0);
    expect(run.settled).toBe(true);
    expect(await manager.dlq.list()).toHaveLength(1);
    expect(run.error?.code).toBe('TASK_FAILED');
  });
});

