// Worker-thread execution: named exports of a profile's pool module run on real Piscina
// threads. Real timers throughout (these are real threads); every wait is on an event, a
// promise or shared memory, never on a sleep. Fixtures: test/fixtures/*.mjs.
import { afterEach, describe, expect, it } from 'vitest';
import { Manager, TaskvalveError, type FailedTask, type PoolConfig, type ProfileConfig } from '../src/index.js';

const TASKS = new URL('./fixtures/tasks.mjs', import.meta.url);
const BROKEN = new URL('./fixtures/broken.mjs', import.meta.url);
const HANGING = new URL('./fixtures/hanging.mjs', import.meta.url);
const RATE = { limit: 1000, intervalMs: 1000 };

const managers: Manager[] = [];

afterEach(async () => {
  // Destroys every thread, whatever the test left running.
  await Promise.all(managers.splice(0).map((m) => m.close({ drain: false, timeoutMs: 1000 })));
});

/** A manager with profile 'p' running test/fixtures/tasks.mjs on one thread, and users subscribed to it. */
async function setup(pool: PoolConfig = {}, extra: Partial<ProfileConfig> = {}, users: string[] = ['u']): Promise<Manager> {
  const m = new Manager();
  managers.push(m);
  m.registerProfile('p', { rate: RATE, pool: { filename: TASKS, maxThreads: 1, ...pool }, ...extra });
  for (const user of users) await m.subscribe(user, 'p');
  return m;
}

/** Int32 cells in shared memory, visible to the worker threads through the payload. */
function shared(cells = 2): Int32Array {
  return new Int32Array(new SharedArrayBuffer(4 * cells));
}

/** Resolves once cells[index] is no longer `value`. */
async function changed(cells: Int32Array, index: number, value: number): Promise<void> {
  const w = Atomics.waitAsync(cells, index, value);
  if (w.async) await w.value;
}

/** The rejection of a promise (a TaskvalveError, so an Error), or a failure if it resolves. */
async function rejection(promise: Promise<unknown>): Promise<TaskvalveError> {
  let value: unknown;
  try {
    value = await promise;
  } catch (error) {
    expect(error).toBeInstanceOf(TaskvalveError);
    expect(error).toBeInstanceOf(Error);
    return error as TaskvalveError;
  }
  throw new Error(`expected a rejection, got a resolution with ${String(value)}`);
}

type Rebuilt = Error & { code?: unknown; [key: string]: unknown };

describe('worker tasks: results and errors', () => {
  it('resolves with the return value of a named export, structured data included', async () => {
    const m = await setup();
    const u = m.getLimiter('u');
    expect(await u.submit({ name: 'echo', payload: 42 })).toBe(42);
    expect(await u.submit({ name: 'echo', payload: { a: [1, { b: 'c' }], d: null } })).toEqual({ a: [1, { b: 'c' }], d: null });
    expect(await u.submit({ name: 'echo' })).toBeUndefined();
    const value = (await u.submit({ name: 'structured', payload: { n: 7 } })) as Record<string, unknown>;
    expect(value).toEqual({
      n: 7,
      text: 'héllo',
      list: [1, 'two', null, true],
      date: new Date(0),
      map: new Map([['k', { deep: [7] }]]),
      set: new Set([1, 2]),
      big: 12345678901234567890n,
      bytes: new Uint8Array([1, 2, 3]),
      nothing: undefined,
    });
    expect(value.date).toBeInstanceOf(Date);
    expect(value.map).toBeInstanceOf(Map);
  });

  it('a thrown Error is TASK_FAILED with the original name, message, stack, code and own properties as its cause', async () => {
    const m = await setup();
    const err = await rejection(m.getLimiter('u').submit({ name: 'throwCoded', payload: { message: 'card declined' } }));
    expect(err.code).toBe('TASK_FAILED');
    const cause = err.cause as Rebuilt;
    expect(cause).toBeInstanceOf(Error);
    expect(cause.name).toBe('PaymentError');
    expect(cause.message).toBe('card declined');
    expect(cause.stack).toContain('tasks.mjs');
    expect(cause.stack).toContain('throwCoded');
    expect(cause.code).toBe('E_PAYMENT');
    expect(cause.status).toBe(402);
    expect(cause.detail).toEqual({ amount: 5, currency: 'EUR' });
  });

  it('an Error whose message, name, stack, code or cause cannot be read is TASK_FAILED (the thread did not die), described', async () => {
    const m = await setup();
    for (const field of ['message', 'name', 'stack', 'code', 'cause']) {
      const err = await rejection(m.getLimiter('u').submit({ name: 'throwUnreadable', payload: { field } }));
      expect(err.code, field).toBe('TASK_FAILED');
      const cause = err.cause as Rebuilt;
      expect(cause.message, field).toBe(field === 'message' ? 'an error whose message cannot be read' : 'readable');
      expect(cause.name, field).toBe('Error');
    }
  });

  it('a thrown non-Error (a string) is TASK_FAILED with an Error wrapping it as its cause', async () => {
    const m = await setup();
    const err = await rejection(m.getLimiter('u').submit({ name: 'throwString' }));
    expect(err.code).toBe('TASK_FAILED');
    const cause = err.cause as Rebuilt;
    expect(cause).toBeInstanceOf(Error);
    expect(cause.message).toContain('plain string thrown');
  });

  it('a returned value that cannot be cloned (a function) is TASK_FAILED with a DataCloneError cause; the pool keeps working', async () => {
    const m = await setup();
    const u = m.getLimiter('u');
    const err = await rejection(u.submit({ name: 'returnFunction' }));
    expect(err.code).toBe('TASK_FAILED');
    expect(err.cause).toBeInstanceOf(Error);
    expect((err.cause as Error).name).toBe('DataCloneError');
    expect(await u.submit({ name: 'echo', payload: 'still working' })).toBe('still working');
  });
});

describe('worker tasks: invalid tasks are refunded', () => {
  it('a name the module does not export is INVALID_ARGUMENT and the usage is refunded', async () => {
    const m = await setup();
    const u = m.getLimiter('u');
    expect(await u.submit({ name: 'echo', payload: 1 })).toBe(1); // the module is loaded and usage is 1
    const before = (await m.getSubscription('u'))!.usage;
    expect(before).toBe(1);
    const err = await rejection(u.submit({ name: 'noSuchExport', payload: 1 }));
    expect(err.code).toBe('INVALID_ARGUMENT');
    expect(err.message).toContain('noSuchExport');
    expect((await m.getSubscription('u'))!.usage).toBe(before);
  });

  it('a payload that cannot be cloned is INVALID_ARGUMENT, refunded, and the pool keeps working', async () => {
    const m = await setup();
    const u = m.getLimiter('u');
    const before = (await m.getSubscription('u'))!.usage;
    const err = await rejection(u.submit({ name: 'echo', payload: { f: () => 1 } }));
    expect(err.code).toBe('INVALID_ARGUMENT');
    expect((await m.getSubscription('u'))!.usage).toBe(before);
    expect(await u.submit({ name: 'echo', payload: 'after' })).toBe('after');
    expect((await m.getSubscription('u'))!.usage).toBe(before + 1);
  });

  it('a module that fails to import rejects INVALID_CONFIG with its cause, quickly and every time; another profile is unaffected', async () => {
    const m = new Manager();
    managers.push(m);
    m.registerProfile('broken', { rate: RATE, pool: { filename: BROKEN, maxThreads: 1 }, retry: { attempts: 3, baseMs: 10 } });
    m.registerProfile('good', { rate: RATE, pool: { filename: TASKS, maxThreads: 1 } });
    await m.subscribe('b', 'broken');
    await m.subscribe('g', 'good');
    const b = m.getLimiter('b');
    const err = await rejection(b.submit({ name: 'never' }));
    expect(err.code).toBe('INVALID_CONFIG');
    const cause = err.cause as Rebuilt;
    expect(cause).toBeInstanceOf(Error);
    expect(cause.message).toBe('broken at import');
    expect(cause.code).toBe('E_BROKEN_MODULE');
    // Repeated submits (one after another, and together) settle too, the same way.
    expect((await rejection(b.submit({ name: 'never' }))).code).toBe('INVALID_CONFIG');
    const together = await Promise.all([1, 2, 3].map(() => rejection(b.submit({ name: 'never' }))));
    expect(together.map((e) => e.code)).toEqual(['INVALID_CONFIG', 'INVALID_CONFIG', 'INVALID_CONFIG']);
    expect(await m.getLimiter('g').submit({ name: 'echo', payload: 'good pool' })).toBe('good pool');
  });
});

describe('worker tasks: thread failures', () => {
  it('process.exit() inside a task is WORKER_CRASHED; the next task on the same pool succeeds', async () => {
    const m = await setup();
    const u = m.getLimiter('u');
    const err = await rejection(u.submit({ name: 'exitProcess' }));
    expect(err.code).toBe('WORKER_CRASHED');
    expect(await u.submit({ name: 'echo', payload: 'next' })).toBe('next');
  });

  it('an error thrown after the task returned: the task resolves, an unrelated task still succeeds, the manager emits it as an error event', async () => {
    const m = await setup();
    const u = m.getLimiter('u');
    const faults: unknown[] = [];
    const late = new Promise<unknown>((resolve) => {
      m.on('error', (error: unknown) => {
        faults.push(error);
        resolve(error);
      });
    });
    const first = u.submit({ name: 'lateThrow' });
    // Runs on the same (only) thread while the late error fires there.
    const second = u.submit({ name: 'pause', payload: { ms: 100 } });
    expect(await first).toBe('returned before the late error');
    expect(await second).toBe(100);
    const error = (await late) as Error;
    expect(error).toBeInstanceOf(Error);
    expect(error.message).toBe('late');
    expect(await u.submit({ name: 'echo', payload: 'after' })).toBe('after');
    expect(faults).toHaveLength(1);
  });

  it("an idle thread's event loop keeps running: a timer a task left behind fires with no further task", async () => {
    const m = await setup();
    const cell = shared(1);
    expect(await m.getLimiter('u').submit({ name: 'lateWrite', payload: { cell, ms: 20 } })).toBe('returned');
    await changed(cell, 0, 0); // no other task is submitted: only the idle thread's own loop can write it
    expect(Atomics.load(cell, 0)).toBe(1);
  });

  it('a thread that dies outside any task is an error event, never a crash of the process; the pool recovers', async () => {
    const m = await setup({ resourceLimits: { maxOldGenerationSizeMb: 16 } });
    const fault = new Promise<Error>((resolve) => m.once('error', resolve));
    expect(await m.getLimiter('u').submit({ name: 'lateExhaustHeap' })).toBe('returned');
    expect(await fault).toBeInstanceOf(Error);
    expect(await m.getLimiter('u').submit({ name: 'echo', payload: 'recovered' })).toBe('recovered');
  });

  it('heap exhaustion under resourceLimits is WORKER_CRASHED; the pool recovers', async () => {
    const m = await setup({ resourceLimits: { maxOldGenerationSizeMb: 16 } });
    const u = m.getLimiter('u');
    const err = await rejection(u.submit({ name: 'exhaustHeap' }));
    expect(err.code).toBe('WORKER_CRASHED');
    expect(await u.submit({ name: 'echo', payload: 'recovered' })).toBe('recovered');
  });
});

describe('worker tasks: stopping a running task', () => {
  it('pool.taskTimeoutMs stops a CPU-bound loop with TASK_TIMEOUT; the thread is replaced and the next task succeeds', async () => {
    const m = await setup({ taskTimeoutMs: 300 });
    const u = m.getLimiter('u');
    const started = shared(2);
    const err = await rejection(u.submit({ name: 'spin', payload: { started } }));
    expect(err.code).toBe('TASK_TIMEOUT');
    expect(Atomics.load(started, 0)).toBe(1); // it did run
    const next = await u.submit({ name: 'whoami' });
    expect(typeof next).toBe('number');
    expect(next).not.toBe(Atomics.load(started, 1));
  });

  it('a module whose import never finishes is bounded by the task timeout (TASK_TIMEOUT); another profile keeps working', async () => {
    const m = await setup();
    m.registerProfile('hang', { rate: RATE, pool: { filename: HANGING, maxThreads: 1, taskTimeoutMs: 300 } });
    await m.subscribe('h', 'hang');
    const first = await rejection(m.getLimiter('h').submit({ name: 'never' }));
    expect(first.code).toBe('TASK_TIMEOUT');
    // A task's own timeout bounds it too, and the next thread (importing anew) is bounded again.
    expect((await rejection(m.getLimiter('h').submit({ name: 'never' }, { timeoutMs: 200 }))).code).toBe('TASK_TIMEOUT');
    expect(typeof (await m.getLimiter('u').submit({ name: 'whoami' }))).toBe('number');
  });

  it('submit timeoutMs overrides the profile taskTimeoutMs, longer and shorter', async () => {
    const m = new Manager();
    managers.push(m);
    m.registerProfile('short', { rate: RATE, pool: { filename: TASKS, maxThreads: 1, taskTimeoutMs: 300 } });
    m.registerProfile('long', { rate: RATE, pool: { filename: TASKS, maxThreads: 1, taskTimeoutMs: 60_000 } });
    await m.subscribe('s', 'short');
    await m.subscribe('l', 'long');
    // Longer: a 700 ms task under a 300 ms profile timeout completes with timeoutMs 10 s.
    const longer = m.getLimiter('s').submit({ name: 'block', payload: { ms: 700 } }, { timeoutMs: 10_000 });
    // Shorter: an endless loop under a 60 s profile timeout is stopped by timeoutMs 200.
    const shorter = rejection(m.getLimiter('l').submit({ name: 'spin', payload: {} }, { timeoutMs: 200 }));
    expect((await shorter).code).toBe('TASK_TIMEOUT');
    expect(await longer).toBe(700);
  });

  it('an AbortSignal aborted while a CPU-bound task runs rejects ABORTED at once; its thread is stopped and the next task succeeds', async () => {
    const m = await setup();
    const u = m.getLimiter('u');
    const counter = shared(1);
    const started = shared(2);
    const controller = new AbortController();
    const run = rejection(u.submit({ name: 'spin', payload: { counter, started } }, { signal: controller.signal }));
    await changed(started, 0, 0); // the loop is running
    const spinner = Atomics.load(started, 1);
    controller.abort(new Error('caller gave up'));
    const err = await run;
    expect(err.code).toBe('ABORTED');
    // The next task runs on a new thread (maxThreads 1: the spinning one is gone).
    const next = await u.submit({ name: 'whoami' });
    expect(next).not.toBe(spinner);
    // And the loop no longer turns: it notifies on every increment, so any turn ends this wait early.
    const snapshot = Atomics.load(counter, 0);
    const w = Atomics.waitAsync(counter, 0, snapshot, 300);
    expect(w.async ? await w.value : w.value).toBe('timed-out');
  });
});

describe('worker tasks: retries and the dead-letter queue', () => {
  const retry = { attempts: 3, baseMs: 10 };

  it('a task that fails twice then succeeds resolves after 3 attempts', async () => {
    const m = await setup({}, { retry });
    const counter = shared(1);
    expect(await m.getLimiter('u').submit({ name: 'failTimes', payload: { counter, failures: 2 } })).toBe(3);
    expect(Atomics.load(counter, 0)).toBe(3);
    expect(await m.dlq.list()).toEqual([]);
  });

  it('a task whose thread dies twice then succeeds resolves after 3 attempts (WORKER_CRASHED is retried)', async () => {
    const m = await setup({}, { retry });
    const counter = shared(1);
    expect(await m.getLimiter('u').submit({ name: 'crashTimes', payload: { counter, failures: 2 } })).toBe(3);
    expect(Atomics.load(counter, 0)).toBe(3);
  });

  it('a task that always fails is TASK_FAILED after 3 attempts and dead-lettered; replaying it once it succeeds resolves and removes the entry', async () => {
    const m = await setup({}, { retry });
    const counter = shared(1);
    const flag = shared(1);
    const payload = { counter, flag };
    const letters: FailedTask[] = [];
    m.on('dead-letter', (entry: FailedTask) => letters.push(entry));
    const err = await rejection(m.getLimiter('u').submit({ name: 'failUnlessFlag', payload }));
    expect(err.code).toBe('TASK_FAILED');
    expect((err.cause as Rebuilt).code).toBe('E_FLAG');
    expect(Atomics.load(counter, 0)).toBe(3);

    const list = await m.dlq.list();
    expect(list).toHaveLength(1);
    const entry = list[0]!;
    expect(entry.attempts).toBe(3);
    expect(entry.userId).toBe('u');
    expect(entry.profileName).toBe('p');
    expect(entry.task).toEqual({ name: 'failUnlessFlag', payload });
    expect(entry.error.code).toBe('TASK_FAILED');
    expect(entry.error.name).toBe('TypeError');
    expect(entry.error.message).toBe('flag is not set');
    expect(entry.error.stack).toContain('tasks.mjs');
    expect(entry.id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
    expect(entry.lastFailedAt.getTime()).toBeGreaterThanOrEqual(entry.firstFailedAt.getTime());
    expect(letters.map((l) => l.id)).toEqual([entry.id]);

    Atomics.store(flag, 0, 1); // the task succeeds from now on
    expect(await m.dlq.replay(entry.id)).toBe('replayed');
    expect(Atomics.load(counter, 0)).toBe(4);
    expect(await m.dlq.get(entry.id)).toBeUndefined();
    expect(await m.dlq.list()).toEqual([]);
  });
});

describe('worker tasks: fairness and per-user concurrency', () => {
  it('one thread: user A submits 20 quick tasks, then user B one; B completes before A\'s third', async () => {
    const m = await setup({ maxThreads: 1, perUserConcurrency: 1 }, {}, ['A', 'B']);
    const order: string[] = [];
    const runs: Promise<unknown>[] = [];
    const record = (label: string) => (value: unknown) => {
      expect(value).toBe(label);
      order.push(label);
    };
    for (let i = 1; i <= 20; i++) runs.push(m.getLimiter('A').submit({ name: 'echo', payload: `A${i}` }).then(record(`A${i}`)));
    runs.push(m.getLimiter('B').submit({ name: 'echo', payload: 'B1' }).then(record('B1')));
    await Promise.all(runs);
    expect(order).toHaveLength(21);
    expect(order.indexOf('B1')).toBeGreaterThanOrEqual(0);
    expect(order.indexOf('B1')).toBeLessThan(order.indexOf('A3'));
    expect(order.filter((l) => l !== 'B1')).toEqual(Array.from({ length: 20 }, (_, i) => `A${i + 1}`));
  });

  it('perUserConcurrency 1 with two threads: a user never runs two tasks at once, and another user runs meanwhile', async () => {
    const m = await setup({ maxThreads: 2, perUserConcurrency: 1 }, {}, ['A', 'B']);
    const stateA = shared(2);
    const gate = shared(1);
    const a = [1, 2, 3].map((i) => m.getLimiter('A').submit({ name: 'concurrent', payload: { state: stateA, gate, label: `A${i}` } }));
    // A1 holds its thread until this task (which needs the second thread) opens the gate.
    const b = m.getLimiter('B').submit({ name: 'openGate', payload: { gate } });
    expect(await b).toBe('opened');
    const results = (await Promise.all(a)) as { label: string; gate: string }[];
    expect(results.map((r) => r.label)).toEqual(['A1', 'A2', 'A3']);
    // No A task waited out its 5 s: B's task ran while A's first one held a thread.
    for (const r of results) expect(r.gate).not.toBe('timed-out');
    expect(Atomics.load(stateA, 1)).toBe(1);
  });
});
