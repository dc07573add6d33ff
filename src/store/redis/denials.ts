/**
 * The cache of refusals: a bucket that refused `cost` units until a time refuses at least as
 * much until then (other calls can only fill it further), so a check that would be refused is
 * answered without a round trip. A cached refusal ends no later than Redis's own would: it is
 * measured from when the refused call was sent (no later than Redis decided), over the exact
 * µs the bucket alone refuses (without the units this process's waiting tasks hold, which may
 * leave), rounded down, less a margin for the two clocks' rates.
 */
import type { Profile } from '../../profile.js';
import { remaining as gcraRemaining } from '../../rate/gcra.js';
import { Verdict, type AdmitResult } from '../store.js';

/** A bucket's refusal: until when it stands, when the bucket is full, for how many units, under which rate (local µs). */
export interface Denial {
  untilUs: number;
  fullUs: number;
  cost: number;
  rate: Profile['rate'];
}

/** A user's quota as its latest refusal told it: the limit in force, and when its usage period ends (local µs; Infinity: none). */
interface Quota {
  limit: number | null;
  periodEndUs: number;
}

/** What Redis said of a refused bucket, beyond the AdmitResult: exact µs, or -1 when unknown. */
export interface Refused {
  /** µs (rounded down) the bucket alone refuses the cost; -1: unknown (only ms were given). */
  waitUs: number;
  /** µs (rounded down) until the bucket is full; -1: unknown. */
  fullUs: number;
  /** Units this process's waiting tasks held on the bucket when it was asked. */
  waiting: number;
}

/** Buckets (and users) whose refusal this process remembers at most. */
const MAX_DENIALS = 10_000;

/**
 * How much faster this process's monotonic clock may run than the server's: NTP slews a clock
 * by up to 500 ppm, so two clocks' rates can differ by up to 0.1%. A refusal is cached for that
 * much less than it lasts.
 */
const CLOCK_RATE_MARGIN = 0.001;

/**
 * Refusals of buckets, by bucket key, and the quota figures each user's latest refusal told,
 * by user key (a shared bucket's refusal serves every user of it, each with its own figures).
 */
export class Denials {
  private readonly buckets = new Map<string, Denial>();
  private readonly quotas = new Map<string, Quota>();

  /**
   * The refusal Redis would give now for `cost` units of `user` on the bucket `key` under
   * `profile`, written into `out`, if one is remembered; else undefined (ask Redis). `usage`:
   * the user's as last seen. A user whose quota figures are not known, or whose usage period
   * may have ended since they were told, asks Redis.
   */
  refusal(out: AdmitResult, key: string, user: string, profile: Profile, cost: number, nowUs: number, usage: number): AdmitResult | undefined {
    const denial = this.buckets.get(key);
    if (denial === undefined) return undefined;
    if (nowUs >= denial.untilUs || denial.rate !== profile.rate) {
      this.buckets.delete(key);
      return undefined;
    }
    if (cost < denial.cost) return undefined;
    const quota = this.quotas.get(user);
    if (quota === undefined) return undefined;
    // Until a millisecond before the period ends (Redis tells it in whole ms from its own now).
    if (nowUs >= quota.periodEndUs - 1000) {
      this.quotas.delete(user);
      return undefined;
    }
    const rate = profile.rate;
    out.verdict = Verdict.RATE_LIMITED;
    out.profile = profile;
    out.limit = rate.burst;
    out.usage = usage;
    out.quotaLimit = quota.limit;
    out.quotaResetAfterMs = quota.periodEndUs === Infinity ? -1 : Math.ceil((quota.periodEndUs - nowUs) / 1000);
    // A larger cost than the one refused conforms (cost - refused) emission intervals later.
    const extraUs = ((cost - denial.cost) * rate.T) / rate.d;
    out.retryAfterMs = Math.ceil((denial.untilUs + extraUs - nowUs) / 1000);
    out.resetAfterMs = Math.max(out.retryAfterMs, Math.ceil((denial.fullUs - nowUs) / 1000));
    // At most what refill alone gives back since the refusal (other callers may have taken more).
    out.remaining = Math.max(0, gcraRemaining(Math.round((denial.fullUs - nowUs) * rate.d), 0, rate));
    return out;
  }

  /**
   * Redis refused `cost` units of `user` on the bucket `key` (`out`, filled from its answer) for
   * a call sent at `sentUs`: remembers until when the bucket alone refuses them, and the user's
   * quota figures.
   */
  learn(key: string, user: string, profile: Profile, cost: number, sentUs: number, out: AdmitResult, refused: Refused): void {
    // Bounded: starting afresh costs a round trip per bucket, nothing else.
    if (this.buckets.size >= MAX_DENIALS) this.buckets.clear();
    if (this.quotas.size >= MAX_DENIALS) this.quotas.clear();
    this.quotas.set(user, { limit: out.quotaLimit, periodEndUs: out.quotaResetAfterMs >= 0 ? sentUs + out.quotaResetAfterMs * 1000 : Infinity });
    let waitUs = refused.waitUs;
    let fullUs = refused.fullUs;
    if (waitUs < 0) {
      // Only whole ms are known, rounded up: one less is never late. They count waiting units.
      if (refused.waiting > 0) return;
      waitUs = (out.retryAfterMs - 1) * 1000;
      fullUs = Math.max(0, out.resetAfterMs - 1) * 1000;
    }
    waitUs -= Math.ceil(waitUs * CLOCK_RATE_MARGIN);
    if (waitUs <= 0) return;
    this.buckets.set(key, { untilUs: sentUs + waitUs, fullUs: sentUs + Math.max(waitUs, fullUs), cost, rate: profile.rate });
  }

  /**
   * A bucket's refusal may no longer hold (units came back), or a user's subscription changed:
   * `key` a bucket's key, or a user's (whose own bucket has that key too).
   */
  delete(key: string): void {
    this.buckets.delete(key);
    this.quotas.delete(key);
  }
}
