// How tasks settle, checked so that each test fails when its guarantee breaks: the dead letter
// is stored before the caller hears, a caller's signal keeps no listener once its task ended,
// only what never started is refunded, and the queue's room is counted exactly.
import { getEventListeners } from 'node:events';
import { afterEach, beforeEach, expect, it, vi } from 'vitest';
import { Manager, MemoryStore, type FailedTask } from '../src/index.js';
import { gate, rejection } from './helpers.js';

/** A real MemoryStore whose dead letters are stored 50 ms after they are handed over. */
class SlowDeadLetters extends MemoryStore {
  override dlqAdd(entry: FailedTask, bounds: { maxEntries: number; retentionMs: number }, nowMs: number): Promise<void> {
    return new Promise((resolve) => setTimeout(() => resolve(super.dlqAdd(entry, bounds, nowMs)), 50));
  }
}

let manager: Manager;

beforeEach(() => {
  vi.useFakeTimers();
});

afterEach(async () => {
  const closing = manager.close({ drain: false, timeoutMs: 0 });
  await vi.runAllTimersAsync();
  await closing;
  vi.useRealTimers();
});

it('the caller is rejected only once its dead letter is stored, even by a store that takes its time', async () => {
  manager = new Manager({ store: new SlowDeadLetters() });
  manager.registerProfile('p', { rate: { limit: 100, intervalMs: 1000 } });
  await manager.subscribe('A', 'p');
  let rejectedAt = -1;
  const t0 = Date.now();
  const failing = manager.getLimiter('A').submit(() => {
    throw new Error('boom');
  });
  failing.catch(() => (rejectedAt = Date.now() - t0));
  await vi.advanceTimersByTimeAsync(49);
  expect(rejectedAt).toBe(-1);
  await vi.advanceTimersByTimeAsync(1);
  expect((await rejection(failing)).code).toBe('TASK_FAILED');
  expect(rejectedAt).toBe(50);
  expect(await manager.dlq.list()).toHaveLength(1);
});

it("a long-lived signal keeps no listener of taskvalve's once its tasks ended, however they ended", async () => {
  manager = new Manager();
  manager.registerProfile('p', { rate: { limit: 1, intervalMs: 1000 }, pool: { perUserConcurrency: 1 }, retry: { attempts: 1 } });
  await manager.subscribe('A', 'p');
  const shared = new AbortController();
  const limiter = manager.getLimiter('A');
  const calls = [
    limiter.submit(() => 'ok', { signal: shared.signal }),
    limiter.submit(() => Promise.reject(new Error('no')), { signal: shared.signal }),
    limiter.submit(() => 'waited', { signal: shared.signal }),
  ];
  const outcomes = Promise.allSettled(calls);
  await vi.advanceTimersByTimeAsync(5000);
  expect((await outcomes).map((o) => o.status)).toEqual(['fulfilled', 'rejected', 'fulfilled']);
  expect(getEventListeners(shared.signal, 'abort')).toHaveLength(0);
});

it('only what never started is refunded: a running task aborted stays charged, a queued one does not', async () => {
  manager = new Manager();
  manager.registerProfile('p', { rate: { limit: 100, intervalMs: 1000 }, pool: { perUserConcurrency: 1 }, quota: { limit: 100 } });
  await manager.subscribe('A', 'p');
  const running = new AbortController();
  const queued = new AbortController();
  const started = gate();
  const limiter = manager.getLimiter('A');
  const first = rejection(
    limiter.submit(
      ({ signal }) => {
        started.open();
        return new Promise((_, reject) => signal.addEventListener('abort', () => reject(new Error('stopped'))));
      },
      { signal: running.signal },
    ),
  );
  const second = rejection(limiter.submit(() => 2, { signal: queued.signal }));
  await started.opened;
  expect((await manager.getSubscription('A'))?.usage).toBe(2);
  queued.abort();
  running.abort();
  expect([(await first).code, (await second).code]).toEqual(['ABORTED', 'ABORTED']);
  expect((await manager.getSubscription('A'))?.usage).toBe(1);
});

it('the queue counts its room exactly: tasks that left free their places at once', async () => {
  manager = new Manager();
  manager.registerProfile('p', { rate: { limit: 1000, intervalMs: 1000 }, pool: { perUserConcurrency: 1, maxQueue: 2 } });
  await manager.subscribe('A', 'p');
  const hold = gate();
  const limiter = manager.getLimiter('A');
  const first = limiter.submit(() => hold.opened);
  const aborters = [new AbortController(), new AbortController()];
  const left = aborters.map((a) => rejection(limiter.submit(() => 0, { signal: a.signal })));
  expect((await rejection(limiter.submit(() => 0))).code).toBe('QUEUE_FULL');
  for (const a of aborters) a.abort();
  expect((await Promise.all(left)).map((e) => e.code)).toEqual(['ABORTED', 'ABORTED']);
  // Two places free again: two more are queued, a third is refused.
  const again = [limiter.submit(() => 1), limiter.submit(() => 2)];
  expect((await rejection(limiter.submit(() => 3))).code).toBe('QUEUE_FULL');
  const scrape = await manager.registry.metrics();
  expect(scrape).toMatch(/taskvalve_queue_depth\{profile="p"\} 2/);
  hold.open();
  expect(await Promise.all([first, ...again])).toEqual([undefined, 1, 2]);
});

it("close's report counts every task in flight once, one its caller aborts during the close included", async () => {
  manager = new Manager();
  manager.registerProfile('p', { rate: { limit: 1000, intervalMs: 1000 }, pool: { perUserConcurrency: 1 } });
  await manager.subscribe('A', 'p');
  const started = gate();
  const hold = gate();
  const aborter = new AbortController();
  const limiter = manager.getLimiter('A');
  const first = limiter.submit(() => {
    started.open();
    return hold.opened;
  });
  const second = rejection(limiter.submit(() => 2, { signal: aborter.signal }));
  await started.opened;
  const closing = manager.close({ drain: true, timeoutMs: 1000 });
  aborter.abort();
  expect((await second).code).toBe('ABORTED');
  hold.open();
  await first;
  expect(await closing).toEqual({ completed: 2, rejected: 0, abandoned: 0 });
});
