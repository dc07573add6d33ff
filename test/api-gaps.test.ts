// Parts of the public contract (../shared/API.md) the pipeline's lifecycle relies on and that
// are missing: manager.deleteSubscription (CANCELED covers "subscription canceled or deleted")
// and the 'deleted' subscription event.
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterEach, beforeEach, describe, expect, expectTypeOf, it, vi } from 'vitest';
import { Manager, type SubscriptionEvent } from '../src/index.js';
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

/** deleteSubscription as the contract names it (not typed on Manager yet: looked up at run time). */
function deleteSubscription(m: Manager, userId: string): Promise<boolean> {
  return (m as unknown as { deleteSubscription(userId: string): Promise<boolean> }).deleteSubscription(userId);
}

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
    expect(await deleteSubscription(manager, 'u')).toBe(true);
    expect((await waiting).code).toBe('SUBSCRIPTION_INACTIVE');
    expect(await manager.getSubscription('u')).toBeUndefined();
    expect((await u.peek()).status).toBe('not_found');
    expect(events).toContain('deleted');
    expect(await deleteSubscription(manager, 'u')).toBe(false);
    await vi.advanceTimersByTimeAsync(5000);
    expect(ran).toBe(0);
  });

  it("the subscription event's type names 'deleted' (checked by the compiler)", { timeout: 60_000 }, async () => {
    expectTypeOf<'deleted'>().toExtend<SubscriptionEvent['event']>();
    vi.useRealTimers();
    const root = fileURLToPath(new URL('..', import.meta.url));
    const tsc = fileURLToPath(new URL('../node_modules/typescript/bin/tsc', import.meta.url));
    const args = [tsc, '--ignoreConfig', '--noEmit', '--strict', '--skipLibCheck', '--target', 'ES2022', '--module', 'NodeNext', '--moduleResolution', 'NodeNext', '--lib', 'ES2024', '--types', 'node', '--rootDir', '.', 'test/api-gaps.test.ts'];
    const result = await promisify(execFile)(process.execPath, args, { cwd: root }).then(
      () => '',
      (error: { stdout?: string; stderr?: string }) => `${error.stdout ?? ''}${error.stderr ?? ''}`,
    );
    expect(result).toBe('');
  });
});
