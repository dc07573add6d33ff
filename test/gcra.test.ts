// The pure GCRA module against its vectors, and the limiter against a naive exact model (fast-check).
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import vectors from './vectors/gcra.json' with { type: 'json' };
import { Manager, type Limiter } from '../src/index.js';
import { conform, makeRate, remaining, ticksToMs } from '../src/rate/gcra.js';
import { ModelBucket } from './support/model-bucket.js';

describe('GCRA vectors', () => {
  for (const c of vectors.cases) {
    it(c.name, () => {
      const rate = makeRate(c.rate.limit, c.rate.intervalMs, c.rate.burst);
      let tat = 0;
      for (const step of c.steps) {
        const now = step.at * 1000 * rate.d;
        const next = conform(tat, now, step.cost, rate);
        const allowed = next > 0;
        if (allowed) tat = next;
        expect({ at: step.at, allowed, remaining: remaining(tat, now, rate), retryAfterMs: allowed ? 0 : ticksToMs(-next, rate) }).toEqual({
          at: step.at,
          allowed: step.allowed,
          remaining: step.remaining,
          retryAfterMs: step.retryAfterMs,
        });
      }
    });
  }
});

const scenario = fc
  .record({
    limit: fc.integer({ min: 1, max: 2000 }),
    intervalMs: fc.integer({ min: 1, max: 120_000 }),
    burst: fc.integer({ min: 1, max: 40 }),
  })
  .filter((r) => r.limit <= r.intervalMs * 1000)
  .chain((rate) =>
    fc.record({
      rate: fc.constant(rate),
      steps: fc.array(fc.record({ dt: fc.integer({ min: 0, max: Math.max(1, Math.ceil((2 * rate.intervalMs) / rate.limit)) }), cost: fc.integer({ min: 1, max: rate.burst }) }), {
        minLength: 1,
        maxLength: 120,
      }),
    }),
  );

type RateArgs = { limit: number; intervalMs: number; burst: number };

/**
 * Replays steps against a fresh manager and the model; `decide` asks the limiter. Returns the
 * admitted requests (ms from the start, cost).
 */
async function replay(
  rate: RateArgs,
  steps: { dt: number; cost: number }[],
  decide: (limiter: Limiter, cost: number) => Promise<boolean>,
): Promise<{ at: number; cost: number }[]> {
  let now = Date.UTC(2026, 0, 1);
  const start = now;
  const manager = new Manager({ clock: () => now });
  manager.registerProfile('p', { rate: { ...rate, onLimit: 'reject' } });
  await manager.subscribe('u', 'p');
  const limiter = manager.getLimiter('u');
  const model = new ModelBucket(BigInt(rate.limit), BigInt(rate.intervalMs) * 1000n, BigInt(rate.burst));
  const admitted: { at: number; cost: number }[] = [];
  for (const step of steps) {
    now += step.dt;
    const allowed = await decide(limiter, step.cost);
    expect(allowed).toBe(model.take(now - start, step.cost));
    if (allowed) admitted.push({ at: now - start, cost: step.cost });
  }
  await manager.close();
  return admitted;
}

describe('the limiter against a naive exact model', () => {
  it('check() admits exactly what the model admits, and never more than burst + elapsed x rate in any window', async () => {
    await fc.assert(
      fc.asyncProperty(scenario, async ({ rate, steps }) => {
        const admitted = await replay(rate, steps, async (limiter, cost) => (await limiter.check(cost)).allowed);
        // Window property in exact integers: (units - burst) * intervalMs <= elapsed * limit.
        for (let i = 0; i < admitted.length; i++) {
          let units = 0;
          for (let j = i; j < admitted.length; j++) {
            units += admitted[j]!.cost;
            const elapsed = admitted[j]!.at - admitted[i]!.at;
            expect((units - rate.burst) * rate.intervalMs).toBeLessThanOrEqual(elapsed * rate.limit);
          }
        }
      }),
      { numRuns: 300 },
    );
  });

  it('submit in reject mode agrees with the model too', async () => {
    await fc.assert(
      fc.asyncProperty(scenario, async ({ rate, steps }) => {
        await replay(rate, steps, (limiter, cost) => limiter.submit<boolean>(() => true, { cost }).catch(() => false));
      }),
      { numRuns: 100 },
    );
  });
});

describe('exact over a long run', () => {
  it('a prime limit per second (1/999983 µs ticks) stays exact across days of clock, through re-basing', async () => {
    let now = Date.UTC(2026, 0, 1);
    const manager = new Manager({ clock: () => now });
    manager.registerProfile('p', { rate: { limit: 999_983, intervalMs: 1000, burst: 999_983 } });
    await manager.subscribe('u', 'p');
    const limiter = manager.getLimiter('u');
    for (let day = 0; day < 10; day++) {
      now += 86_400_000 + 17;
      expect(await limiter.check(999_983)).toMatchObject({ allowed: true, remaining: 0 });
      expect(await limiter.check(1)).toMatchObject({ allowed: false, retryAfterMs: 1 });
      now += 1000;
      // One full second refills the bucket exactly: all of it, not one unit more.
      expect(await limiter.check(999_983)).toMatchObject({ allowed: true, remaining: 0 });
      now += 999;
      expect((await limiter.check(999_983)).allowed).toBe(false);
      // 999 ms refill 999 x 999.983 = 998,983.017 units.
      expect(await limiter.check(998_983)).toMatchObject({ allowed: true, remaining: 0 });
      expect((await limiter.check(1)).allowed).toBe(false);
    }
    await manager.close();
  });
});
