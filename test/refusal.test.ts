// A refused admission tells what its decision knew (TaskvalveError.refusal): what rate-limit
// headers need, so that a caller answering a 429 makes no second read of the store.
import { describe, expect, it } from 'vitest';
import { Manager } from '../src/index.js';
import { rejection } from './helpers.js';

const T0 = Date.UTC(2030, 0, 1);

describe('TaskvalveError.refusal', () => {
  function setup(): { manager: Manager; clock: { now: number } } {
    const clock = { now: T0 };
    const manager = new Manager({ clock: () => clock.now });
    manager.registerProfile('daily', { rate: { limit: 2, intervalMs: 1000, onLimit: 'reject' }, quota: { limit: 3, periodMs: 60_000 } });
    manager.registerProfile('life', { rate: { limit: 5, intervalMs: 1000 }, quota: { limit: 1 } });
    return { manager, clock };
  }

  it('a rate refusal carries the bucket and the quota as the decision saw them', async () => {
    const { manager, clock } = setup();
    await manager.subscribe('ann', 'daily');
    const ann = manager.getLimiter('ann');
    await ann.check(2);
    clock.now += 100;
    const error = await rejection(ann.submit(() => 1));
    expect(error.code).toBe('RATE_LIMITED');
    expect(error.refusal).toEqual({ profile: 'daily', usage: 2, quotaLimit: 3, quotaResetAfterMs: 59_900, rate: { limit: 2, remaining: 0, resetAfterMs: 900 } });
    await manager.close();
  });

  it('a quota refusal carries the quota and when it renews; the bucket, not read, is undefined', async () => {
    const { manager, clock } = setup();
    await manager.subscribe('ann', 'daily');
    await manager.subscribe('lea', 'life');
    for (let i = 0; i < 3; i++) {
      await manager.getLimiter('ann').check();
      clock.now += 500;
    }
    const periodic = await rejection(manager.getLimiter('ann').checkDetailed());
    expect(periodic.code).toBe('QUOTA_EXCEEDED');
    expect(periodic.refusal).toEqual({ profile: 'daily', usage: 3, quotaLimit: 3, quotaResetAfterMs: 58_500, rate: undefined });
    await manager.getLimiter('lea').check();
    const lifetime = await rejection(manager.getLimiter('lea').submit(() => 1));
    expect(lifetime.refusal).toEqual({ profile: 'life', usage: 1, quotaLimit: 1, quotaResetAfterMs: null, rate: undefined });
    await manager.close();
  });
});
