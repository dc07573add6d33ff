// The background sweep of ended subscriptions, through the Manager, on a fake clock.
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { Manager, type SubscriptionEvent } from '../src/index.js';
import { thrown } from './helpers.js';

const DAY = 86_400_000;
let manager: Manager;
let events: SubscriptionEvent[];

function start(endedRetentionMs?: number): void {
  manager = new Manager({ clock: () => Date.now(), ...(endedRetentionMs === undefined ? {} : { endedRetentionMs }) });
  manager.registerProfile('p', { rate: { limit: 100, intervalMs: 1000 } });
  events = [];
  manager.on('subscription', (e: SubscriptionEvent) => {
    if (e.event === 'deleted') events.push(e);
  });
}

beforeEach(() => {
  vi.useFakeTimers();
});

afterEach(async () => {
  await manager.close({ drain: false, timeoutMs: 0 });
  vi.useRealTimers();
});

describe('ended subscriptions are deleted endedRetentionMs after they end', () => {
  it('by default 30 days after: a canceled and an expired user, never an active one; each emits deleted and is counted', async () => {
    start();
    await manager.subscribe('canceled', 'p');
    await manager.subscribe('expired', 'p', { durationMs: DAY });
    await manager.subscribe('active', 'p');
    await manager.cancelSubscription('canceled');
    await vi.advanceTimersByTimeAsync(30 * DAY - 1);
    expect(events).toEqual([]);
    // The sweep runs every 5 minutes at most: both are gone within one round past their time.
    await vi.advanceTimersByTimeAsync(DAY + 300_000);
    expect(events.map((e) => e.userId).sort()).toEqual(['canceled', 'expired']);
    expect(await manager.getSubscription('canceled')).toBeUndefined();
    expect(await manager.getSubscription('expired')).toBeUndefined();
    expect(await manager.getSubscription('active')).toMatchObject({ status: 'active' });
    const metrics = await manager.registry.metrics();
    expect(metrics).toContain('taskvalve_subscription_events_total{profile="p",event="deleted"} 2');
  });

  it('a retention longer than setTimeout can wait (40 days) neither fires early nor late', async () => {
    start(40 * DAY);
    await manager.subscribe('u', 'p', { durationMs: 1000 });
    await vi.advanceTimersByTimeAsync(40 * DAY);
    expect(events).toEqual([]);
    await vi.advanceTimersByTimeAsync(1000 + 300_000);
    expect(events).toEqual([{ userId: 'u', event: 'deleted' }]);
  });

  it('a retention of 0 deletes within a second of the end; extending in time keeps the user', async () => {
    start(0);
    await manager.subscribe('short', 'p', { durationMs: 5000 });
    await manager.subscribe('kept', 'p', { durationMs: 5000 });
    await vi.advanceTimersByTimeAsync(4000);
    await manager.extendSubscription('kept', 60_000);
    await vi.advanceTimersByTimeAsync(2000);
    expect(events).toEqual([{ userId: 'short', event: 'deleted' }]);
  });

  it('stops at close(): nothing is deleted afterwards and no timer is left', async () => {
    start(0);
    await manager.subscribe('u', 'p', { durationMs: 1000 });
    await manager.close();
    expect(vi.getTimerCount()).toBe(0);
    await vi.advanceTimersByTimeAsync(10_000);
    expect(events).toEqual([]);
  });

  it('endedRetentionMs must be a non-negative integer: INVALID_CONFIG naming it', () => {
    start();
    for (const bad of [-1, 1.5, '1', Number.NaN, 2 ** 60]) {
      const error = thrown(() => new Manager({ endedRetentionMs: bad as number }));
      expect(error.code).toBe('INVALID_CONFIG');
      expect(error.message).toContain('endedRetentionMs');
    }
  });
});
