// Edges of a task's run, settlement, scheduling and admission, through the public API on the
// MemoryStore (subclassed where a store must answer late or fail): what an inline task's
// failure becomes, late answers, event and dead-letter details, refusal counts, fair slots.
import { afterEach, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { ErrorCode, Manager, MemoryStore, TaskvalveError, type FailedTask, type ProfileConfig, type TaskEvent } from '../src/index.js';
import { gate, rejection, track } from './helpers.js';
import { scrape, scrapeSum } from './support/scrape.js';

let manager: Manager | undefined;
/** The managers' clock (ms): tests move it by hand. */
let now = 1_000_000;

afterEach(async () => {
  await manager?.close({ drain: false, timeoutMs: 0 });
  manager = undefined;
});

/** A manager on a fake clock with profile `p` (a fast rate) and user `u` subscribed. */
async function setup(profile: Partial<ProfileConfig> = {}, store?: MemoryStore): Promise<Manager> {
  now = 1_000_000;
  const m = new Manager({ store, clock: () => now });
  manager = m;
  m.registerProfile('p', { rate: { limit: 1000, intervalMs: 1000 }, ...profile });
  await m.subscribe('u', 'p');
  return m;
}

describe('what an inline task that fails becomes', () => {
  it('a thrown string is the message of the failure, kept as it was thrown', async () => {
    const m = await setup();
    const error = await rejection(
      m.getLimiter('u').submit(() => {
        throw 'plain words';
      }),
    );
    expect(error.code).toBe('TASK_FAILED');
    expect((error.cause as Error).message).toBe('plain words');
    expect((error.cause as Error & { value?: unknown }).value).toBe('plain words');
  });

  it('a thrown object that is not an Error is described in the message', async () => {
    const m = await setup();
    const thrownValue = { reason: 'no funds', amount: 5 };
    const error = await rejection(
      m.getLimiter('u').submit(() => {
        throw thrownValue;
      }),
    );
    expect(error.code).toBe('TASK_FAILED');
    expect((error.cause as Error).message).toBe('{"reason":"no funds","amount":5}');
    expect((error.cause as Error & { value?: unknown }).value).toBe(thrownValue);
  });

  it('a thrown value that cannot even be inspected still fails the task with TASK_FAILED', async () => {
    const m = await setup();
    const { proxy, revoke } = Proxy.revocable({}, {});
    revoke();
    const error = await rejection(
      m.getLimiter('u').submit(() => {
        throw proxy;
      }),
    );
    expect(error.code).toBe('TASK_FAILED');
    expect((error.cause as Error).message).toBe('the task failed with a value that cannot be described');
  });

  it('a returned promise that cannot be adopted fails the task with TASK_FAILED', async () => {
    const m = await setup();
    const hostile = Promise.resolve('never seen');
    Object.defineProperty(hostile, 'constructor', {
      get() {
        throw new Error('no constructor for you');
      },
    });
    const error = await rejection(m.getLimiter('u').submit(() => hostile));
    expect(error.code).toBe('TASK_FAILED');
    expect((error.cause as Error).message).toBe('no constructor for you');
    // The pipeline goes on: the next task runs.
    expect(await m.getLimiter('u').submit(() => 'next')).toBe('next');
  });

  it('a returned function with a then method is a thenable: its rejection fails the task with TASK_FAILED', async () => {
    const m = await setup();
    const thenable = Object.assign(() => 'the function itself', {
      then(_resolve: (value: unknown) => void, reject: (error: unknown) => void) {
        reject(new Error('declined'));
      },
    });
    const error = await rejection(m.getLimiter('u').submit(() => thenable));
    expect(error.code).toBe('TASK_FAILED');
    expect((error.cause as Error).message).toBe('declined');
    expect(await scrape(m, 'taskvalve_tasks_completed_total', { profile: 'p', outcome: 'failed' })).toBe(1);
  });
});

describe('what an inline task that returns becomes', () => {
  for (const value of ['done', null] as const) {
    it(`a task that returns ${String(value)} has succeeded when it returns: an abort it queues on its way out changes nothing`, async () => {
      const m = await setup();
      const controller = new AbortController();
      const result = await m.getLimiter('u').submit(
        () => {
          queueMicrotask(() => controller.abort());
          return value;
        },
        { signal: controller.signal },
      );
      expect(result).toBe(value);
      expect(await scrape(m, 'taskvalve_tasks_completed_total', { profile: 'p', outcome: 'success' })).toBe(1);
      expect(await scrape(m, 'taskvalve_tasks_abandoned_total', { profile: 'p' })).toBe(0);
    });
  }
});

const TASKS = new URL('./fixtures/tasks.mjs', import.meta.url);

/** A gate worker tasks wait on (`concurrent`), opened from this thread. */
function threadGate(): { gate: Int32Array; state: Int32Array; open: () => void } {
  const gate = new Int32Array(new SharedArrayBuffer(4));
  const state = new Int32Array(new SharedArrayBuffer(8));
  return {
    gate,
    state,
    open: () => {
      Atomics.store(gate, 0, 1);
      Atomics.notify(gate, 0);
    },
  };
}

/** The ids of the tasks that started (QUEUED -> RUNNING), in order; `onStart` is told each. */
function starts(m: Manager, onStart: (id: string) => void = () => {}): string[] {
  const out: string[] = [];
  m.on('task', (e: TaskEvent) => {
    if (e.to === 'RUNNING') {
      out.push(e.id);
      onStart(e.id);
    }
  });
  return out;
}

/** Resolves once the task `id` has started. */
function started(m: Manager, id: string): Promise<void> {
  return new Promise((resolve) => {
    const listener = (e: TaskEvent): void => {
      if (e.id === id && e.to === 'RUNNING') {
        m.off('task', listener);
        resolve();
      }
    };
    m.on('task', listener);
  });
}

describe('fair scheduling and slots', () => {
  it('worker tasks of several users take one thread in turns, one at a time', async () => {
    const m = await setup({ pool: { filename: TASKS, maxThreads: 1 } });
    await m.subscribe('v', 'p');
    const order = starts(m);
    // An inline task first: it holds no thread, and gives none back.
    expect(await m.getLimiter('u').submit(() => 'inline')).toBe('inline');
    const { gate, state, open } = threadGate();
    const u = m.getLimiter('u');
    const work = (label: string) => ({ name: 'concurrent', payload: { state, gate, label } });
    const tasks = [
      u.submit(work('A1'), { taskId: 'A1' }),
      u.submit(work('A2'), { taskId: 'A2' }),
      u.submit(work('A3'), { taskId: 'A3' }),
      m.getLimiter('v').submit(work('B1'), { taskId: 'B1' }),
    ];
    await started(m, 'A1');
    expect(await scrape(m, 'taskvalve_tasks_running', { profile: 'p' })).toBe(1);
    expect(await scrape(m, 'taskvalve_queue_depth', { profile: 'p' })).toBe(3);
    open();
    const results = (await Promise.all(tasks)) as { label: string; gate: string }[];
    expect(results.map((r) => r.label)).toEqual(['A1', 'A2', 'A3', 'B1']);
    expect(order.filter((id) => id !== undefined && id.length === 2)).toEqual(['A1', 'A2', 'B1', 'A3']);
    expect(Atomics.load(state, 1)).toBe(1);
  });

  it('with maxQueue 0 a task that finds a free slot still runs; one that would wait is QUEUE_FULL', async () => {
    const m = await setup({ pool: { filename: TASKS, maxThreads: 1, maxQueue: 0 } });
    const u = m.getLimiter('u');
    expect(await u.submit({ name: 'echo', payload: 'worker' })).toBe('worker');
    expect(await u.submit(() => 'inline')).toBe('inline');
    const { gate, state, open } = threadGate();
    const holding = u.submit({ name: 'concurrent', payload: { state, gate, label: 'hold' } }, { taskId: 'hold' });
    await started(m, 'hold');
    // The thread is busy: an inline task needs none, a worker task would have to wait.
    expect(await u.submit(() => 'inline while the thread is busy')).toBe('inline while the thread is busy');
    expect((await rejection(u.submit({ name: 'echo', payload: 'x' }))).code).toBe('QUEUE_FULL');
    open();
    await holding;
  });

  it("a user at their concurrency cap does not keep another user's worker task from a free thread", async () => {
    const m = await setup({ pool: { filename: TASKS, maxThreads: 2, perUserConcurrency: 1, maxQueue: 1 } });
    await m.subscribe('v', 'p');
    const u = m.getLimiter('u');
    const v = m.getLimiter('v');
    // u: one worker task runs, one waits for u's slot (the queue is full); v's task finds a free thread.
    const worker = [u.submit({ name: 'echo', payload: 'u1' }), u.submit({ name: 'echo', payload: 'u2' }), v.submit({ name: 'echo', payload: 'v1' })];
    expect(await Promise.all(worker)).toEqual(['u1', 'u2', 'v1']);
    // The same when u's waiting task is an inline one.
    const release = gate();
    const inline = [u.submit(() => release.opened.then(() => 'i1')), u.submit(() => 'i2'), v.submit({ name: 'echo', payload: 'v2' })];
    expect(await inline[2]).toBe('v2');
    release.open();
    expect(await Promise.all(inline)).toEqual(['i1', 'i2', 'v2']);
  });

  it("a user's worker task waiting for a thread does not start past the user's cap when their inline tasks took it", async () => {
    const m = await setup({ pool: { filename: TASKS, maxThreads: 1, perUserConcurrency: 2 } });
    await m.subscribe('v', 'p');
    const thread = threadGate();
    const order = starts(m);
    const holding = m.getLimiter('v').submit({ name: 'concurrent', payload: { state: thread.state, gate: thread.gate, label: 'v' } }, { taskId: 'hold' });
    await started(m, 'hold');
    const u = m.getLimiter('u');
    const queuedWorker = u.submit({ name: 'echo', payload: 'w' }, { taskId: 'W' });
    const release = gate();
    const i1 = u.submit(() => release.opened.then(() => 'i1'), { taskId: 'I1' });
    const i2 = u.submit(() => release.opened.then(() => 'i2'), { taskId: 'I2' });
    await started(m, 'I2');
    thread.open(); // the thread is free, but u runs two tasks already
    await holding;
    expect(order).not.toContain('W');
    release.open();
    expect(await Promise.all([i1, i2, queuedWorker])).toEqual(['i1', 'i2', 'w']);
    expect(order.slice(-1)).toEqual(['W']);
  });

  it("a user's cap holds for tasks submitted while the user's earlier queued task runs", async () => {
    const m = await setup({ pool: { perUserConcurrency: 1 } });
    const u = m.getLimiter('u');
    const first = gate();
    const second = gate();
    const aStarted = started(m, 'A');
    const bStarted = started(m, 'B');
    const a = u.submit(() => first.opened, { taskId: 'A' });
    const b = u.submit(() => second.opened, { taskId: 'B' });
    await aStarted;
    first.open();
    await a;
    await bStarted;
    // B runs (it waited in the queue); C must wait for it.
    const c = u.submit(() => 'c', { taskId: 'C' });
    expect(await scrape(m, 'taskvalve_queue_depth', { profile: 'p' })).toBe(1);
    expect(await scrape(m, 'taskvalve_tasks_running', { profile: 'p' })).toBe(1);
    second.open();
    expect(await Promise.all([b, c])).toEqual([undefined, 'c']);
  });

  it("a user's task submitted in the turn their slot frees starts after their task already waiting for it", async () => {
    const m = await setup({ pool: { perUserConcurrency: 1 } });
    const order = starts(m);
    const u = m.getLimiter('u');
    const hold = gate();
    const aStarted = started(m, 'A');
    const a = u.submit(() => hold.opened, { taskId: 'A' });
    await aStarted;
    const b = u.submit(() => 'b', { taskId: 'B' });
    // Called in the turn A ends (after A's own end, which frees the slot), before B's dispatch.
    let c: Promise<unknown> | undefined;
    void hold.opened.then(() => {
      c = u.submit(() => 'c', { taskId: 'C' });
    });
    hold.open();
    await a;
    expect(await Promise.all([b, c])).toEqual(['b', 'c']);
    expect(order).toEqual(['A', 'B', 'C']);
  });

  it("a worker task submitted in the turn a user's slot frees does not take the free thread ahead of that user's worker task waiting for it", async () => {
    const m = await setup({ pool: { filename: TASKS, maxThreads: 1, perUserConcurrency: 1 } });
    await m.subscribe('v', 'p');
    const order = starts(m);
    const u = m.getLimiter('u');
    const hold = gate();
    const iStarted = started(m, 'I');
    const i = u.submit(() => hold.opened, { taskId: 'I' });
    await iStarted;
    // The thread is free, but W waits for u's slot, which I holds.
    const w = u.submit({ name: 'echo', payload: 'w' }, { taskId: 'W' });
    // Called in the turn I ends (after I's own end, which frees u's slot), before W's dispatch.
    let v: Promise<unknown> | undefined;
    void hold.opened.then(() => {
      v = m.getLimiter('v').submit({ name: 'echo', payload: 'v' }, { taskId: 'V' });
    });
    hold.open();
    await i;
    expect(await Promise.all([w, v])).toEqual(['w', 'v']);
    expect(order).toEqual(['I', 'W', 'V']);
  });

  it("a user's worker task waiting for a thread does not move their inline tasks ahead of another user's in the turn order", async () => {
    const m = await setup({ pool: { filename: TASKS, maxThreads: 1, perUserConcurrency: 3 } });
    await m.subscribe('v', 'p');
    await m.subscribe('x', 'p');
    const order = starts(m);
    const u = m.getLimiter('u');
    const v = m.getLimiter('v');
    // x's worker task holds the one thread.
    const thread = threadGate();
    const xStarted = started(m, 'X');
    const x = m.getLimiter('x').submit({ name: 'concurrent', payload: { state: thread.state, gate: thread.gate, label: 'x' } }, { taskId: 'X' });
    await xStarted;
    // v runs three tasks (its cap) with a fourth waiting; u runs two. One gate ends them, v's first.
    const first = gate();
    const running = ['V1', 'V2', 'V3'].map((id) => v.submit(() => first.opened, { taskId: id }));
    const waiting = v.submit(() => 'vq', { taskId: 'VQ' });
    const uStarted = started(m, 'U2');
    running.push(...['U1', 'U2'].map((id) => u.submit(() => first.opened, { taskId: id })));
    await uStarted;
    first.open();
    // Before those ends are seen: u queues a worker task (it waits for the thread), takes its
    // last slot with I1, and queues I2. v's slot frees first, so VQ goes before I2.
    const worker = u.submit({ name: 'echo', payload: 'wu' }, { taskId: 'WU' });
    const second = gate();
    const i1 = u.submit(() => second.opened.then(() => 'i1'), { taskId: 'I1' });
    const i2 = u.submit(() => 'i2', { taskId: 'I2' });
    await Promise.all([...running, waiting, i2]);
    expect(order).toEqual(['X', 'V1', 'V2', 'V3', 'U1', 'U2', 'I1', 'VQ', 'I2']);
    second.open();
    thread.open();
    expect(await Promise.all([i1, worker, x])).toEqual(['i1', 'wu', { label: 'x', gate: expect.any(String) }]);
  });

  it("a user's capped tasks that wait, inline or worker, each start once the slot before them is free", async () => {
    const m = await setup({ pool: { filename: TASKS, maxThreads: 1, perUserConcurrency: 1 } });
    const u = m.getLimiter('u');
    const tick = (value: string) => () => Promise.resolve().then(() => value);
    expect(await Promise.all([u.submit(tick('a')), u.submit(tick('b')), u.submit({ name: 'echo', payload: 'c' })])).toEqual(['a', 'b', 'c']);
  });
});

/** A MemoryStore whose dead letters are stored once the test opens its door. */
class HeldDeadLetters extends MemoryStore {
  readonly door = gate();
  override dlqAdd(entry: FailedTask, bounds: { maxEntries: number; retentionMs: number }, nowMs: number): Promise<void> {
    return this.door.opened.then(() => super.dlqAdd(entry, bounds, nowMs));
  }
}

describe('events, dead letters and close', () => {
  it('a task event has a reason only for transitions that have one; a failure is named in lower case', async () => {
    const m = await setup();
    const events: TaskEvent[] = [];
    m.on('task', (e) => events.push(e));
    expect(await m.getLimiter('u').submit(() => 'ok', { taskId: 'ok' })).toBe('ok');
    await rejection(
      m.getLimiter('u').submit(
        () => {
          throw new Error('boom');
        },
        { taskId: 'bad' },
      ),
    );
    const ok = events.filter((e) => e.id === 'ok');
    expect(ok.map((e) => `${e.from}>${e.to}`)).toEqual(['PENDING>QUEUED', 'QUEUED>RUNNING', 'RUNNING>SUCCEEDED']);
    expect(ok.some((e) => 'reason' in e)).toBe(false);
    expect(events.filter((e) => e.id === 'bad').at(-1)).toEqual({ id: 'bad', userId: 'u', profileName: 'p', from: 'RUNNING', to: 'FAILED', attempt: 1, reason: 'task_failed' });
  });

  it('an error whose message, name or stack cannot be read (a Symbol, a getter that throws) fails its caller TASK_FAILED and is dead-lettered, described', async () => {
    const m = await setup();
    const letters: FailedTask[] = [];
    m.on('dead-letter', (entry) => letters.push(entry));
    const hostile = (field: 'message' | 'name' | 'stack', how: 'symbol' | 'getter'): Error => {
      const error = new Error('readable');
      Object.defineProperty(error, field, how === 'symbol' ? { value: Symbol('s') } : { get: () => { throw new Error(`${field} getter`); } });
      return error;
    };
    const cases = [['message', 'symbol'], ['message', 'getter'], ['name', 'symbol'], ['name', 'getter'], ['stack', 'getter']] as const;
    for (const [field, how] of cases) {
      // Thrown at once, and as a rejection.
      for (const fn of [() => { throw hostile(field, how); }, () => Promise.reject(hostile(field, how))]) {
        const error = await rejection(m.getLimiter('u').submit(fn));
        expect(error.code, `${field} ${how}`).toBe('TASK_FAILED');
        expect(typeof error.message).toBe('string');
      }
    }
    await Promise.resolve();
    expect(letters).toHaveLength(10);
    const described = letters.map((l) => [l.error.name, l.error.message]);
    expect(described.filter((_, i) => i % 2 === 0)).toEqual([
      ['Error', 'Symbol(s)'],
      ['Error', 'an error whose message cannot be read'],
      ['Symbol(s)', 'readable'],
      ['Error', 'readable'],
      ['Error', 'readable'],
    ]);
    expect(letters[8]?.error.stack).toBeUndefined();
    expect(await scrape(m, 'taskvalve_tasks_running', { profile: 'p' })).toBe(0);
  });

  it('a dead letter of an error without a stack has no stack field', async () => {
    const m = await setup();
    const letters: FailedTask[] = [];
    m.on('dead-letter', (entry) => letters.push(entry));
    const error = new Error('stackless');
    delete (error as { stack?: string }).stack;
    await rejection(
      m.getLimiter('u').submit(() => {
        throw error;
      }),
    );
    await Promise.resolve();
    expect(letters).toHaveLength(1);
    expect(letters[0]?.error).toEqual({ code: 'TASK_FAILED', name: 'Error', message: 'stackless' });
    expect('stack' in (letters[0]?.error ?? {})).toBe(false);
  });

  it('an abort of a running inline task is no late event; its late answer is one, counted once; no error is reported', async () => {
    const m = await setup();
    const errors: Error[] = [];
    m.on('error', (e) => errors.push(e));
    const controller = new AbortController();
    const hold = gate();
    const running = m.getLimiter('u').submit(() => hold.opened.then(() => 'late'), { signal: controller.signal, taskId: 'T' });
    await started(m, 'T');
    controller.abort();
    expect((await rejection(running)).code).toBe('ABORTED');
    await new Promise((resolve) => setImmediate(resolve));
    expect(await scrape(m, 'taskvalve_task_late_events_total', { profile: 'p' })).toBe(0);
    hold.open();
    await hold.opened;
    await new Promise((resolve) => setImmediate(resolve));
    expect(await scrape(m, 'taskvalve_task_late_events_total', { profile: 'p' })).toBe(1);
    expect(await scrape(m, 'taskvalve_tasks_abandoned_total', { profile: 'p' })).toBe(1);
    expect(errors).toEqual([]);
  });

  it("an inline task's late answer after its timeout is counted once and frees no second slot", async () => {
    const m = await setup({ pool: { perUserConcurrency: 1, taskTimeoutMs: 5 } });
    const hold = gate();
    const u = m.getLimiter('u');
    const slow = u.submit(() => hold.opened.then(() => 'too late'), { taskId: 'slow' });
    expect((await rejection(slow)).code).toBe('TASK_TIMEOUT');
    // The slot is free: one task runs, the next waits for it.
    const next = gate();
    const a = u.submit(() => next.opened, { taskId: 'A' });
    await started(m, 'A');
    hold.open();
    await hold.opened;
    await new Promise((resolve) => setImmediate(resolve));
    const b = u.submit(() => 'b', { taskId: 'B' });
    expect(await scrape(m, 'taskvalve_queue_depth', { profile: 'p' })).toBe(1);
    expect(await scrape(m, 'taskvalve_task_late_events_total', { profile: 'p' })).toBe(1);
    next.open();
    expect(await Promise.all([a, b])).toEqual([undefined, 'b']);
  });

  it("close() counts a failed task whose dead letter is still being stored once, whenever the letter lands", async () => {
    const store = new HeldDeadLetters();
    const m = await setup({}, store);
    const failing = m.getLimiter('u').submit(() => {
      throw new Error('boom');
    });
    const outcome = rejection(failing);
    await new Promise((resolve) => setImmediate(resolve));
    const report = await m.close({ timeoutMs: 0 });
    expect((await outcome).code).toBe('TASK_FAILED');
    store.door.open();
    await store.door.opened;
    await new Promise((resolve) => setImmediate(resolve));
    expect(report).toEqual({ completed: 1, rejected: 0, abandoned: 0 });
  });

  it('close() reaches every task still running, whatever ended before it, and reports no error', async () => {
    const m = await setup();
    const errors: Error[] = [];
    m.on('error', (e) => errors.push(e));
    const u = m.getLimiter('u');
    const holds = [gate(), gate(), gate()];
    const a = track(u.submit(() => holds[0]!.opened, { taskId: 'A' }));
    const b = u.submit(() => holds[1]!.opened.then(() => 'b'), { taskId: 'B' });
    const cStarted = started(m, 'C');
    const c = u.submit(() => holds[2]!.opened.then(() => 'c'), { taskId: 'C' });
    await cStarted;
    // The last two end, the latest first: A, the first, still runs.
    holds[2]!.open();
    expect(await c).toBe('c');
    holds[1]!.open();
    expect(await b).toBe('b');
    const report = await m.close({ drain: false, timeoutMs: 0 });
    holds[0]!.open();
    expect(report).toEqual({ completed: 0, rejected: 0, abandoned: 1 });
    await new Promise((resolve) => setImmediate(resolve));
    expect(a.error?.code).toBe('SHUTTING_DOWN');
    expect(errors).toEqual([]);
  });
});

/** What MemoryStore's admit() gives (a Store may also answer with a promise of it). */
type AdmitResult = ReturnType<MemoryStore['admit']>;

/** A MemoryStore that answers admissions asynchronously, or fails them and peeks outright. */
class MoodyStore extends MemoryStore {
  mood: 'sync' | 'async' | 'throw' = 'sync';
  override admit(...args: Parameters<MemoryStore['admit']>): AdmitResult {
    if (this.mood === 'throw') throw new Error('admit failed');
    const answer = super.admit(...args);
    // A Store may answer with a promise (as the RedisStore does); MemoryStore's own type says it never does.
    if (this.mood === 'async' && !(answer instanceof Promise)) return Promise.resolve({ ...answer }) as unknown as AdmitResult;
    return answer;
  }
  override peek(...args: Parameters<MemoryStore['peek']>): ReturnType<MemoryStore['peek']> {
    if (this.mood === 'throw') throw new Error('peek failed');
    return super.peek(...args);
  }
}

describe('check() and peek()', () => {
  it('check() on a store that answers later gives the same plain decision', async () => {
    const store = new MoodyStore();
    const m = await setup({ rate: { limit: 2, intervalMs: 1000 } }, store);
    store.mood = 'async';
    const u = m.getLimiter('u');
    const first = await u.check();
    expect(Object.keys(first).sort()).toEqual(['allowed', 'limit', 'remaining', 'resetAfterMs', 'retryAfterMs']);
    expect(first).toMatchObject({ allowed: true, limit: 2, remaining: 1, retryAfterMs: 0 });
    await u.check();
    const refused = await u.check();
    expect(Object.keys(refused).sort()).toEqual(['allowed', 'limit', 'remaining', 'resetAfterMs', 'retryAfterMs']);
    expect(refused).toMatchObject({ allowed: false, limit: 2, remaining: 0 });
    expect(refused.retryAfterMs).toBeGreaterThan(0);
    expect(await scrape(m, 'taskvalve_tasks_rejected_total', { profile: 'p', reason: 'rate_limited' })).toBe(1);
  });

  it("a store that fails outright rejects check() and peek() with its error; they never throw", async () => {
    const store = new MoodyStore();
    const m = await setup({}, store);
    store.mood = 'throw';
    const u = m.getLimiter('u');
    let checking: Promise<unknown> | undefined;
    let peeking: Promise<unknown> | undefined;
    expect(() => {
      checking = u.check();
      peeking = u.peek();
    }).not.toThrow();
    await expect(checking).rejects.toThrow('admit failed');
    await expect(peeking).rejects.toThrow('peek failed');
  });

  it('peek() of an unknown user tells nothing of the user peeked before', async () => {
    const m = await setup();
    expect(await m.getLimiter('u').peek()).toMatchObject({ limit: 1000, status: 'active' });
    expect(await m.getLimiter('nobody').peek()).toEqual({
      allowed: false,
      limit: 0,
      remaining: 0,
      retryAfterMs: 0,
      resetAfterMs: 0,
      usage: 0,
      quotaLimit: null,
      status: 'not_found',
    });
  });
});

/** A MemoryStore whose dead letters are never stored: refused later, or at once. */
class LostDeadLetters extends MemoryStore {
  constructor(private readonly how: 'later' | 'now') {
    super();
  }
  override dlqAdd(): Promise<void> {
    if (this.how === 'now') throw new Error('disk full');
    return Promise.reject(new Error('disk full'));
  }
}

/** A MemoryStore whose rate turns fail once `down` is set. */
class FlakyTurns extends MemoryStore {
  down = false;
  override take(...args: Parameters<MemoryStore['take']>): ReturnType<MemoryStore['take']> {
    if (this.down) throw new TaskvalveError(ErrorCode.STORE_UNAVAILABLE, 'store unreachable');
    return super.take(...args);
  }
}

/** A MemoryStore whose admissions are answered once the test opens its door. */
class HeldAdmissions extends MemoryStore {
  readonly door = gate();
  override admit(...args: Parameters<MemoryStore['admit']>): AdmitResult {
    const answer = super.admit(...args);
    if (answer instanceof Promise) return answer;
    const copy = { ...answer };
    return this.door.opened.then(() => copy) as unknown as AdmitResult; // a Store may answer later
  }
}

describe('failures the store could not keep', () => {
  for (const how of ['later', 'now'] as const) {
    it(`a failed task whose dead letter the store refuses (${how}) rejects its caller with its own error, noted`, async () => {
      const m = await setup({}, new LostDeadLetters(how));
      const errors: Error[] = [];
      m.on('error', (e) => errors.push(e));
      const error = await rejection(
        m.getLimiter('u').submit(() => {
          throw new Error('boom');
        }),
      );
      expect(error.code).toBe('TASK_FAILED');
      expect(error.message).toBe('task failed: boom (its dead letter was not stored: disk full)');
      expect((error.cause as Error).message).toBe('boom');
      await Promise.resolve();
      expect(errors.map((e) => e.message)).toEqual(['disk full']);
      expect(await scrape(m, 'taskvalve_dead_letters_total', { profile: 'p' })).toBe(0);
    });
  }

  it('a retry the store cannot re-admit is dead-lettered with its last error, noted, and its caller rejected with it', async () => {
    const store = new FlakyTurns();
    const m = await setup({ retry: { attempts: 2, baseMs: 1 } }, store);
    const error = await rejection(
      m.getLimiter('u').submit(() => {
        store.down = true;
        throw new Error('boom');
      }),
    );
    expect(error.code).toBe('TASK_FAILED');
    expect(error.message).toBe('task failed: boom (not retried: store unreachable)');
    expect((error.cause as Error).message).toBe('boom');
    const [entry] = await m.dlq.list();
    expect(entry?.error).toMatchObject({ code: 'TASK_FAILED', message: 'boom' });
    expect(entry?.attempts).toBe(2);
  });
});

/** A MemoryStore that notes how many tasks still count as running when close() reaches it. */
class ClosingStore extends MemoryStore {
  manager: Manager | undefined;
  runningAtClose: number | undefined;
  lateAtClose: number | undefined;
  async close(): Promise<void> {
    this.runningAtClose = await scrape(this.manager as Manager, 'taskvalve_tasks_running', { profile: 'p' });
    this.lateAtClose = await scrape(this.manager as Manager, 'taskvalve_task_late_events_total', { profile: 'p' });
  }
}

describe('worker runs', () => {
  it("close() ends the run of a worker task still running at its timeout (its thread destroyed) before it closes the store", async () => {
    const store = new ClosingStore();
    const m = await setup({ pool: { filename: TASKS, maxThreads: 1 } }, store);
    store.manager = m;
    const thread = threadGate();
    const holdStarted = started(m, 'hold');
    const holding = rejection(m.getLimiter('u').submit({ name: 'concurrent', payload: { state: thread.state, gate: thread.gate, label: 'hold' } }, { taskId: 'hold' }));
    await holdStarted;
    expect(await m.close({ drain: false, timeoutMs: 0 })).toEqual({ completed: 0, rejected: 0, abandoned: 1 });
    expect((await holding).code).toBe('SHUTTING_DOWN');
    expect(store.runningAtClose).toBe(0);
    thread.open(); // a thread left running would end its task now
  });

  it('a worker task abandoned by close() is no late event, with a signal or without: its thread ends because close() ends it', async () => {
    for (const signal of [undefined, new AbortController().signal]) {
      const store = new ClosingStore();
      const m = await setup({ pool: { filename: TASKS, maxThreads: 1 } }, store);
      store.manager = m;
      const thread = threadGate();
      const holdStarted = started(m, 'hold');
      const holding = rejection(m.getLimiter('u').submit({ name: 'concurrent', payload: { state: thread.state, gate: thread.gate, label: 'hold' } }, { taskId: 'hold', ...(signal === undefined ? {} : { signal }) }));
      await holdStarted;
      expect(await m.close({ drain: false, timeoutMs: 0 })).toEqual({ completed: 0, rejected: 0, abandoned: 1 });
      expect((await holding).code).toBe('SHUTTING_DOWN');
      expect(store.lateAtClose, signal === undefined ? 'without a signal' : 'with a signal').toBe(0);
      thread.open();
    }
  });

  it('a worker error marked not retryable stays so when its dead letter cannot be stored', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'taskvalve-'));
    const file = join(dir, 'refuse.mjs');
    writeFileSync(file, "export function refuse() { const e = new Error('refused'); e.retryable = false; throw e; }\n");
    const m = await setup({ pool: { filename: pathToFileURL(file), maxThreads: 1 }, retry: { attempts: 3, baseMs: 1 } }, new LostDeadLetters('later'));
    m.on('error', () => {});
    const error = await rejection(m.getLimiter('u').submit({ name: 'refuse' }));
    expect(error.code).toBe('TASK_FAILED');
    expect(error.retryable).toBe(false);
    expect(error.message).toBe('task failed: refused (its dead letter was not stored: disk full)');
    await m.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('a worker task admitted after close() gave up waiting for it is refused SHUTTING_DOWN, its quota given back', async () => {
    const store = new HeldAdmissions();
    const m = await setup({ pool: { filename: TASKS, maxThreads: 1 }, quota: { limit: 10, periodMs: 86_400_000 } }, store);
    const late = rejection(m.getLimiter('u').submit({ name: 'echo', payload: 'late' }));
    const report = await m.close({ timeoutMs: 0 });
    store.door.open();
    expect((await late).code).toBe('SHUTTING_DOWN');
    expect(report).toEqual({ completed: 0, rejected: 0, abandoned: 0 });
    expect((await m.getSubscription('u'))?.usage).toBe(0);
    expect(await m.dlq.list()).toEqual([]);
  });

  it("a worker attempt's run time is read from the clock when its answer comes", async () => {
    const m = await setup({ pool: { filename: TASKS, maxThreads: 1 } });
    m.on('task', (e) => {
      if (e.to === 'RUNNING') now += 5_000;
    });
    expect(await m.getLimiter('u').submit({ name: 'echo', payload: 1 })).toBe(1);
    expect(await scrape(m, 'taskvalve_task_run_seconds_sum', { profile: 'p' })).toBe(5);
  });

  it('worker tasks of a profile share its threads: one thread runs them one after another', async () => {
    const m = await setup({ pool: { filename: TASKS, maxThreads: 1 } });
    const u = m.getLimiter('u');
    const first = await u.submit({ name: 'whoami' });
    expect(await u.submit({ name: 'whoami' })).toBe(first);
  });

  it('a crashed worker and a missing export are counted under their outcomes', async () => {
    const m = await setup({ pool: { filename: TASKS, maxThreads: 1 } });
    const counter = new Int32Array(new SharedArrayBuffer(4));
    expect((await rejection(m.getLimiter('u').submit({ name: 'crashTimes', payload: { counter, failures: 1 } }))).code).toBe('WORKER_CRASHED');
    expect((await rejection(m.getLimiter('u').submit({ name: 'noSuchExport' }))).code).toBe('INVALID_ARGUMENT');
    expect(await scrape(m, 'taskvalve_tasks_completed_total', { profile: 'p', outcome: 'crashed' })).toBe(1);
    expect(await scrape(m, 'taskvalve_tasks_completed_total', { profile: 'p', outcome: 'invalid' })).toBe(1);
  });
});

describe('retries', () => {
  it('a retry that waits in the queue and is aborted there leaves the queue empty', async () => {
    const m = await setup({ pool: { perUserConcurrency: 1 }, retry: { attempts: 2, baseMs: 1 } });
    const u = m.getLimiter('u');
    const controller = new AbortController();
    const requeued = new Promise<void>((resolve) =>
      m.on('task', (e) => {
        if (e.id === 'J' && e.attempt === 2 && e.to === 'QUEUED') resolve();
      }),
    );
    const j = rejection(
      u.submit(
        () => {
          throw new Error('first attempt fails');
        },
        { taskId: 'J', signal: controller.signal },
      ),
    );
    const hold = gate();
    const blocker = u.submit(() => hold.opened, { taskId: 'B' });
    await requeued;
    expect(await scrape(m, 'taskvalve_queue_depth', { profile: 'p' })).toBe(1);
    controller.abort();
    expect((await j).code).toBe('ABORTED');
    expect(await scrape(m, 'taskvalve_queue_depth', { profile: 'p' })).toBe(0);
    hold.open();
    await blocker;
  });
});

describe('timers', () => {
  it("a running task's timeout keeps the process alive while it waits", async () => {
    const m = await setup();
    const timeouts = (): number => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
    const before = timeouts();
    const hold = gate();
    const startedT = started(m, 'T');
    const task = m.getLimiter('u').submit(() => hold.opened.then(() => 'done'), { taskId: 'T', timeoutMs: 60_000 });
    await startedT;
    expect(timeouts()).toBe(before + 1);
    hold.open();
    expect(await task).toBe('done');
    expect(timeouts()).toBe(before);
  });
});

describe('order and run time', () => {
  it("a user's default-priority task goes ahead of their negative-priority ones waiting, and behind their higher ones", async () => {
    const m = await setup({ pool: { perUserConcurrency: 1 } });
    const u = m.getLimiter('u');
    const held = gate();
    const blocker = u.submit(() => held.opened);
    const order: string[] = [];
    const task = (label: string) => () => {
      order.push(label);
    };
    const tasks = [
      u.submit(task('low'), { priority: -1 }),
      u.submit(task('normal')),
      u.submit(task('high'), { priority: 5 }),
      u.submit(task('lower'), { priority: -2 }),
      u.submit(task('normal 2')),
    ];
    held.open();
    await Promise.all([blocker, ...tasks]);
    expect(order).toEqual(['high', 'normal', 'normal 2', 'low', 'lower']);
  });

  it('a synchronous inline task is timed for as long as it ran, in the metric and in its dead letter', async () => {
    const m = await setup();
    const u = m.getLimiter('u');
    expect(
      await u.submit(() => {
        now += 5000;
        return 1;
      }),
    ).toBe(1);
    expect(await scrapeSum(m, 'taskvalve_task_run_seconds_sum', { profile: 'p' })).toBe(5);
    const failed = await rejection(
      u.submit(() => {
        now += 2000;
        throw new Error('after two seconds');
      }),
    );
    expect(failed.code).toBe('TASK_FAILED');
    const [letter] = await m.dlq.list();
    expect(letter?.lastFailedAt.getTime()).toBe(now);
    expect(letter?.firstFailedAt.getTime()).toBe(now);
  });
});
