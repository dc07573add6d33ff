// Guarantees at the edges that need real worker threads: a module whose import never finishes,
// no head-of-line blocking of inline tasks behind worker tasks, and run timeouts past
// setTimeout's limit. Real timers (these are real threads); every wait is on an event, a
// promise or shared memory, never on a sleep.
import { afterEach, describe, expect, it } from 'vitest';
import { Manager, type PoolConfig } from '../src/index.js';
import { rejection } from './helpers.js';

const TASKS = new URL('./fixtures/tasks.mjs', import.meta.url);
const HANG = new URL('./fixtures/hang.mjs', import.meta.url);
const RATE = { limit: 1000, intervalMs: 1000 };

const managers: Manager[] = [];

afterEach(async () => {
  await Promise.all(managers.splice(0).map((m) => m.close({ drain: false, timeoutMs: 1000 })));
});

async function setup(pool: PoolConfig, filename: URL = TASKS): Promise<Manager> {
  const m = new Manager();
  managers.push(m);
  m.registerProfile('p', { rate: RATE, pool: { filename, maxThreads: 1, ...pool } });
  m.registerProfile('good', { rate: RATE, pool: { filename: TASKS, maxThreads: 1 } });
  await m.subscribe('u', 'p');
  await m.subscribe('g', 'good');
  return m;
}

function shared(cells = 2): Int32Array {
  return new Int32Array(new SharedArrayBuffer(4 * cells));
}

describe('13. worker start-up', () => {
  // The test's own timeout only guards against the hang this guarantee is about.
  it('a worker module whose import never finishes is bounded by the task\'s timeout: TASK_TIMEOUT', { timeout: 10_000 }, async () => {
    const m = await setup({}, HANG);
    const err = await rejection(m.getLimiter('u').submit({ name: 'never' }, { timeoutMs: 300 }));
    expect(err.code).toBe('TASK_TIMEOUT');
  });

  it('pool.taskTimeoutMs bounds it too, and the next task on that pool is bounded as well', { timeout: 10_000 }, async () => {
    const m = await setup({ taskTimeoutMs: 300 }, HANG);
    const u = m.getLimiter('u');
    expect((await rejection(u.submit({ name: 'never' }))).code).toBe('TASK_TIMEOUT');
    expect((await rejection(u.submit({ name: 'never' }))).code).toBe('TASK_TIMEOUT');
  });

  it('while a module never finishes importing, another profile\'s tasks run, and close() settles the waiting caller', { timeout: 10_000 }, async () => {
    const m = await setup({}, HANG);
    const stuck = rejection(m.getLimiter('u').submit({ name: 'never' }));
    expect(await m.getLimiter('g').submit({ name: 'echo', payload: 'other pool' })).toBe('other pool');
    const report = await m.close({ drain: false, timeoutMs: 100 });
    expect((await stuck).code).toBe('SHUTTING_DOWN');
    expect(report.abandoned).toBe(1);
  });
});

describe('14. no head-of-line blocking', () => {
  it('an inline task does not wait behind its user\'s worker task that waits for a thread, when the user has room', async () => {
    const m = await setup({ maxThreads: 1, perUserConcurrency: 2 });
    const u = m.getLimiter('u');
    const state = shared(2);
    const hold = shared(1);
    let firstDone = false;
    const first = u.submit<{ gate: string }>({ name: 'concurrent', payload: { state, gate: hold, label: 'W1' } }).finally(() => {
      firstDone = true;
    });
    const second = u.submit({ name: 'echo', payload: 'W2' });
    // W1 holds the only thread until the gate opens (at most 5 s): the inline task must not wait for it.
    const inline = await u.submit(() => ({ firstDone }));
    expect(inline).toEqual({ firstDone: false });
    Atomics.store(hold, 0, 1);
    Atomics.notify(hold, 0);
    expect((await first).gate).not.toBe('timed-out');
    expect(await second).toBe('W2');
  });
});

describe('5. long delays on worker threads', () => {
  it('a worker task with timeoutMs 3e9 is not timed out early', async () => {
    const m = await setup({});
    expect(await m.getLimiter('u').submit({ name: 'pause', payload: { ms: 50 } }, { timeoutMs: 3e9 })).toBe(50);
  });

  it('a worker pool with taskTimeoutMs 3e9 does not time its tasks out early', async () => {
    const m = await setup({ taskTimeoutMs: 3e9 });
    expect(await m.getLimiter('u').submit({ name: 'pause', payload: { ms: 50 } })).toBe(50);
  });
});

describe('the refund rule for worker attempts that never ran', () => {
  it('a missing export or a payload that cannot be sent gives back the quota and the rate units', async () => {
    const m = new Manager();
    managers.push(m);
    m.registerProfile('slow', { rate: { limit: 4, intervalMs: 400_000 }, quota: { limit: 100 }, pool: { filename: TASKS, maxThreads: 1 } });
    await m.subscribe('u', 'slow');
    const u = m.getLimiter('u');
    expect((await rejection(u.submit({ name: 'no-such-export' }, { cost: 2 }))).code).toBe('INVALID_ARGUMENT');
    expect((await rejection(u.submit({ name: 'echo', payload: () => 1 }, { cost: 3 }))).code).toBe('INVALID_ARGUMENT');
    expect((await m.getSubscription('u'))?.usage).toBe(0);
    // Every unit is back: the whole burst conforms, and not one more.
    expect((await u.check(4)).allowed).toBe(true);
    expect((await u.check(1)).allowed).toBe(false);
  });
});
