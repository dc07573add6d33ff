/**
 * The floor: the least a per-key GCRA limiter can do in JS. One Map lookup, one plain object
 * per key holding a float TAT in ms, float math, one clock read, and a decision object of the
 * same shape as taskvalve's `Decision` handed back through an already resolved promise (so the
 * caller's `await` costs the same as with any async API). No subscriptions, quotas, exact
 * integer ticks, metrics or validation: everything taskvalve adds is measured against this.
 */

/** GCRA state of one key. */
interface FloorKey {
  /** Theoretical arrival time, ms since the epoch. */
  tat: number;
}

export interface FloorDecision {
  allowed: boolean;
  limit: number;
  remaining: number;
  retryAfterMs: number;
  resetAfterMs: number;
}

export class FloorLimiter {
  private readonly keys = new Map<string, FloorKey>();
  /** Emission interval: ms per unit. */
  private readonly T: number;
  /** Burst tolerance in ms. */
  private readonly tau: number;

  constructor(
    limit: number,
    intervalMs: number,
    private readonly burst: number = limit,
  ) {
    this.T = intervalMs / limit;
    this.tau = burst * this.T;
  }

  /** Keys held (for the memory measure). */
  get size(): number {
    return this.keys.size;
  }

  check(key: string, cost = 1): Promise<FloorDecision> {
    const now = Date.now();
    let state = this.keys.get(key);
    if (state === undefined) {
      state = { tat: now };
      this.keys.set(key, state);
    }
    const tat = state.tat > now ? state.tat : now;
    const next = tat + cost * this.T;
    const over = next - this.tau - now;
    if (over > 0) {
      return Promise.resolve({
        allowed: false,
        limit: this.burst,
        remaining: Math.floor((this.tau - (tat - now)) / this.T),
        retryAfterMs: Math.ceil(over),
        resetAfterMs: Math.ceil(tat - now),
      });
    }
    state.tat = next;
    return Promise.resolve({
      allowed: true,
      limit: this.burst,
      remaining: Math.floor((this.tau - (next - now)) / this.T),
      retryAfterMs: 0,
      resetAfterMs: Math.ceil(next - now),
    });
  }
}
