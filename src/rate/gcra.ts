/**
 * GCRA (the generic cell rate algorithm) in exact integer arithmetic: pure math, no I/O, no
 * clock of its own. Its Lua twin must pass the same vectors (`test/vectors/gcra.json`).
 *
 * One integer of state per key: the theoretical arrival time (TAT). Time is counted in ticks
 * of 1/d microsecond, d chosen so that the emission interval `T = intervalMs * 1000 / limit`
 * microseconds is a whole number of ticks. Every quantity is then an integer and the math
 * never drifts, whatever the limit/interval pair (3 per second, 1 per 10 s, ...).
 */

/** A rate prepared for exact arithmetic. */
export interface Rate {
  /** Units per interval. */
  readonly limit: number;
  /** Interval in milliseconds. */
  readonly intervalMs: number;
  /** Bucket capacity in units. */
  readonly burst: number;
  /** Ticks per microsecond. */
  readonly d: number;
  /** Emission interval: ticks per unit. */
  readonly T: number;
  /** Burst tolerance in ticks: `burst * T`. */
  readonly tau: number;
}

/** Largest tick value the math may reach: stays exact in a double with room for sums. */
export const MAX_TICKS = 2 ** 52;

function gcd(a: number, b: number): number {
  while (b !== 0) [a, b] = [b, a % b];
  return a;
}

/** Prepares a rate. Callers validate that the inputs are positive integers first. */
export function makeRate(limit: number, intervalMs: number, burst: number): Rate {
  const us = intervalMs * 1000;
  const g = gcd(us, limit);
  const d = limit / g;
  const T = us / g;
  return { limit, intervalMs, burst, d, T, tau: burst * T };
}

/**
 * Decides whether `cost` units conform at `now` (both in ticks).
 * Allowed: returns the new TAT (always > 0). Denied: returns minus the ticks to wait until
 * the same request would conform (always < 0). A denial must write nothing.
 */
export function conform(tat: number, now: number, cost: number, rate: Rate): number {
  const next = (tat > now ? tat : now) + cost * rate.T;
  const over = next - rate.tau - now;
  return over <= 0 ? next : -over;
}

/**
 * Ticks from `now` until `units` units (possibly more than the burst, to estimate a place in a
 * queue) would conform. Zero when they conform now.
 */
export function waitFor(tat: number, now: number, units: number, rate: Rate): number {
  const over = (tat > now ? tat : now) + units * rate.T - rate.tau - now;
  return over > 0 ? over : 0;
}

/** Whole units that would conform at `now`. */
export function remaining(tat: number, now: number, rate: Rate): number {
  const used = tat > now ? tat - now : 0;
  return Math.floor((rate.tau - used) / rate.T);
}

/** Converts ticks to whole milliseconds, rounded up (never earlier than the bucket allows). */
export function ticksToMs(ticks: number, rate: Rate): number {
  return ticks <= 0 ? 0 : Math.ceil(ticks / (rate.d * 1000));
}

/**
 * Re-expresses a TAT of one rate in another (a profile change), keeping the units in use:
 * a bucket that had `n` units outstanding still has `n`, rounded up, so that a change can
 * never admit more than the old state allowed. `nowUs` is in microseconds since the epoch
 * of the ticks.
 */
export function convertTat(tat: number, nowUs: number, from: Rate, to: Rate): number {
  const ahead = tat - nowUs * from.d;
  if (ahead <= 0) return 0;
  // units in use = ahead / from.T; in the new ticks: units * to.T (exact in BigInt, rare path).
  const num = BigInt(ahead) * BigInt(to.T);
  const den = BigInt(from.T);
  const aheadTo = Number((num + den - 1n) / den);
  return nowUs * to.d + aheadTo;
}
