// deleteSubscription and the lifecycle: a deleted user's waiting tasks are CANCELED
// (SUBSCRIPTION_INACTIVE, refunded), never run, and the 'deleted' event is emitted.
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { Manager } from '../src/index.js';
import { rejection } from './helpers.js';

let manager: Manager;

beforeEach(() => {
  vi.useFakeTimers();
  manager = new Manager({ clock: () => Date.now() });
});

afterEach(async () => {
  const closing = manager.close({ drain: false, timeoutMs: 0 });
  await vi.runAllTimersAsync();
  await closing;
  vi.useRealTimers();
});

describe('deleteSubscription', () => {
  it("removes the subscription, rejects the user's waiting tasks SUBSCRIPTION_INACTIVE (refunded), and emits 'deleted'", async () => {
    manager.registerProfile('p', { rate: { limit: 1, intervalMs: 1000 }, pool: { perUserConcurrency: 1 } });
    await manager.subscribe('u', 'p');
    const events: string[] = [];
    manager.on('subscription', (e) => events.push(e.event));
    const u = manager.getLimiter('u');
    let ran = 0;
    const hold = new Promise(() => {});
    const running = u.submit(() => hold);
    running.catch(() => {});
    const waiting = rejection(u.submit(() => ran++));
    await vi.advanceTimersByTimeAsync(0);
    expect(await manager.deleteSubscription('u')).toBe(true);
    expect((await waiting).code).toBe('SUBSCRIPTION_INACTIVE');
    expect(await manager.getSubscription('u')).toBeUndefined();
    expect((await u.peek()).status).toBe('not_found');
    expect(events).toContain('deleted');
    expect(await manager.deleteSubscription('u')).toBe(false);
    await vi.advanceTimersByTimeAsync(5000);
    expect(ran).toBe(0);
  });
});
