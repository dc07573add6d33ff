// Memory over time: users who subscribe, work and go leave nothing behind. Measured in a child
// process run with --expose-gc (test/fixtures/heap.ts), so that full collections are exact.
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';

const run = promisify(execFile);
const root = fileURLToPath(new URL('..', import.meta.url));

async function heapAfter(scenario: 'deleted' | 'swept' | 'unknown'): Promise<{ users: number; perUser: number }> {
  const { stdout } = await run(process.execPath, ['--expose-gc', '--import', 'tsx', 'test/fixtures/heap.ts', scenario], { cwd: root, maxBuffer: 1 << 20 });
  return JSON.parse(stdout.trim().split('\n').pop() as string) as { users: number; perUser: number };
}

describe('200,000 users subscribed, used and gone return the heap to its baseline (within 20 B per user)', () => {
  it('deleted with deleteSubscription', async () => {
    const r = await heapAfter('deleted');
    expect(r.users).toBe(200_000);
    expect(r.perUser).toBeLessThan(20);
  }, 120_000);

  it('never subscribed, each checked once (refused): only the bounded cache of limiter handles remains', async () => {
    const r = await heapAfter('unknown');
    expect(r.users).toBe(200_000);
    expect(r.perUser).toBeLessThan(20);
  }, 120_000);

  it('ended, then swept past their retention', async () => {
    const r = await heapAfter('swept');
    expect(r.users).toBe(200_000);
    expect(r.perUser).toBeLessThan(20);
  }, 120_000);
});
