/**
 * The cache of refusals: a bucket that refused `cost` units until a time refuses at least as
 * much until then (other calls can only fill it further, and buckets are never given back), so
 * a check that would be refused is answered without a round trip.
 */
import type { Profile } from '../../profile.js';
import { remaining as gcraRemaining } from '../../rate/gcra.js';
import { Verdict, type AdmitResult } from '../store.js';

/** A bucket's refusal: until when it stands, when the bucket is full, for how many units, under which rate. */
export interface Denial {
  untilUs: number;
  fullUs: number;
  cost: number;
  rate: Profile['rate'];
}

/** Buckets whose refusal this process remembers at most. */
const MAX_DENIALS = 10_000;

/** Refusals of buckets, by bucket key: until when (local µs), for how many units, under which rate. */
export class Denials {
  private readonly denials = new Map<string, Denial>();

  /**
   * The refusal that stands for `cost` units on the bucket `key` under `profile` at `nowUs`, if
   * any. Measured from when the refused call was sent (no later than the server decided), a
   * cached refusal can only end early, never late: it under-admits nothing the server would admit.
   */
  standing(key: string, profile: Profile, cost: number, nowUs: number): Denial | undefined {
    const denial = this.denials.get(key);
    if (denial === undefined) return undefined;
    if (nowUs >= denial.untilUs || denial.rate !== profile.rate) {
      this.denials.delete(key);
      return undefined;
    }
    return cost >= denial.cost ? denial : undefined;
  }

  remember(key: string, denial: Denial): void {
    // Bounded: starting afresh costs a round trip per bucket, nothing else.
    if (this.denials.size >= MAX_DENIALS) this.denials.clear();
    this.denials.set(key, denial);
  }

  /** A refusal answered from the cache (no round trip); `usage`: the user's as last seen. */
  answer(out: AdmitResult, usage: number, profile: Profile, denial: Denial, nowUs: number): AdmitResult {
    const rate = profile.rate;
    out.verdict = Verdict.RATE_LIMITED;
    out.profile = profile;
    out.limit = rate.burst;
    out.usage = usage;
    out.quotaLimit = profile.quotaLimit;
    out.retryAfterMs = Math.ceil((denial.untilUs - nowUs) / 1000);
    out.resetAfterMs = Math.max(out.retryAfterMs, Math.ceil((denial.fullUs - nowUs) / 1000));
    // At most what refill alone gives back since the refusal (other callers may have taken more).
    out.remaining = Math.max(0, gcraRemaining(Math.round((denial.fullUs - nowUs) * rate.d), 0, rate));
    return out;
  }

  /** A bucket's refusal may no longer hold (units came back, its user was deleted). */
  delete(key: string): void {
    this.denials.delete(key);
  }

  /** A change of profile, quota or status: refusals are decided anew. */
  clear(): void {
    this.denials.clear();
  }
}
