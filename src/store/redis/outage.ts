/**
 * What the store does while Redis is unreachable, by the manager's policy: 'fail-closed'
 * (the error stands), 'fail-open' (admit, charge nothing), or 'local' (decide on this process's
 * share of the limits, and charge the usage admitted so once Redis is back).
 */
import { ErrorCode, TaskvalveError } from '../../errors.js';
import type { Profile } from '../../profile.js';
import { conform, makeRate, remaining as gcraRemaining, ticksToMs, type Rate } from '../../rate/gcra.js';
import { Verdict, type AdmitResult, type UnavailablePolicy } from '../store.js';
import type { Context } from './context.js';
import type { Ended } from './ended.js';
import type { Ref } from './handles.js';
import type { Presence } from './presence.js';
import { scripts } from './scripts.js';

/** Whether an error means Redis could not be reached (the policies apply), rather than a refusal. */
function unreachable(error: unknown): boolean {
  return error instanceof TaskvalveError && error.code === ErrorCode.STORE_UNAVAILABLE;
}

export class Outage {
  /** Set by the store's attach(). */
  policy: UnavailablePolicy = 'fail-closed';
  /** 'local' policy: usage admitted while Redis was away, by user id, to charge when it is back. */
  readonly owed = new Map<string, number>();
  /** 'local' policy: buckets of this process's share, by bucket key. */
  private readonly insurance = new Map<string, { rate: Rate; tat: number }>();
  private reconciling: Promise<void> | undefined = undefined;

  /** `presence`: how many processes share the limits under 'local'. */
  constructor(
    private readonly ctx: Context,
    private readonly ended: Ended,
    private readonly presence: Presence,
  ) {}

  /**
   * An admission failed with `error`: rethrow it (it is no outage, the policy is 'fail-closed',
   * or this process has not seen the user in good standing), admit (fail open), or decide
   * locally on this process's share of the limits (remembering the usage to charge later).
   * `bucket`: the key of the user's bucket.
   */
  admit(error: unknown, out: AdmitResult, userId: string, ref: Ref, profile: Profile, cost: number, bucket: string): AdmitResult {
    if (!unreachable(error) || this.policy === 'fail-closed' || !ref.usable) throw error;
    out.profile = profile;
    out.limit = profile.rate.burst;
    out.status = 'active';
    out.startsAt = 0;
    out.endsAt = Infinity;
    out.period = -1;
    out.quotaLimit = profile.quotaLimit;
    out.usage = ref.usage;
    out.retryAfterMs = 0;
    out.resetAfterMs = 0;
    out.remaining = profile.rate.burst;
    if (this.policy === 'fail-open') {
      out.verdict = Verdict.ALLOWED;
      return out;
    }
    const owed = this.owed.get(userId) ?? 0;
    if (profile.quotaHard && profile.quotaLimit !== null && ref.usage + owed + cost > profile.quotaLimit) {
      out.verdict = Verdict.QUOTA_EXCEEDED;
      return out;
    }
    const taken = this.localTake(bucket, profile, cost);
    if (taken < 0) {
      out.verdict = Verdict.RATE_LIMITED;
      out.remaining = 0;
      out.retryAfterMs = -taken;
      return out;
    }
    this.owed.set(userId, owed + cost);
    out.verdict = Verdict.ALLOWED;
    out.usage = ref.usage + owed + cost;
    return out;
  }

  /** A rate turn failed with `error`: rethrow it, or answer as take() does (0: taken, else ms to wait) by the policy. */
  take(error: unknown, bucket: string, profile: Profile, cost: number): number {
    if (this.policy === 'fail-closed' || !unreachable(error)) throw error;
    if (this.policy === 'fail-open') return 0;
    const local = this.localTake(bucket, profile, cost);
    return local > 0 ? 0 : Math.max(1, -local);
  }

  /** Gives back quota admitted without Redis (period -1): this process owes that much less. */
  refund(userId: string, cost: number): void {
    const owed = (this.owed.get(userId) ?? 0) - cost;
    if (owed > 0) this.owed.set(userId, owed);
    else this.owed.delete(userId);
  }

  /**
   * Redis is back: charge the usage admitted locally while it was away (one run at a time). The
   * promise settles once nothing is owed, units admitted locally during the run included.
   */
  reconcile(): Promise<void> {
    if (this.reconciling === undefined && this.owed.size > 0) {
      this.reconciling = this.chargeOwed()
        .finally(() => {
          this.reconciling = undefined;
        })
        // Units owed between the run's last charge and its end: another run.
        .then(() => this.reconcile());
    }
    return this.reconciling ?? Promise.resolve();
  }

  /** A deleted user owes nothing, and its own bucket (key `user`) is gone. */
  forget(userId: string, user: string): void {
    this.insurance.delete(user);
    this.owed.delete(userId);
  }

  /**
   * The 'local' policy's bucket: this process's share (1 / live processes) of the rate and burst,
   * exact GCRA on this process's clock. Positive: taken; negative: minus the ms to wait.
   */
  private localTake(bucket: string, profile: Profile, cost: number): number {
    let entry = this.insurance.get(bucket);
    const share = this.presence.processes;
    const limit = Math.max(1, Math.floor(profile.rate.limit / share));
    const burst = Math.max(1, Math.floor(profile.rate.burst / share));
    if (entry === undefined || entry.rate.limit !== limit || entry.rate.burst !== burst) {
      entry = { rate: makeRate(limit, profile.rate.intervalMs, burst), tat: 0 };
      this.insurance.set(bucket, entry);
    }
    const now = Math.round(performance.now() * 1000) * entry.rate.d;
    if (cost > burst) return -ticksToMs(entry.rate.T * cost, entry.rate);
    const next = conform(entry.tat, now, cost, entry.rate);
    if (next < 0) return -Math.max(1, ticksToMs(-next, entry.rate));
    entry.tat = next;
    return 1 + gcraRemaining(next, now, entry.rate);
  }

  /**
   * Hands each user's owed units to a charge that is sent until it has applied once (ops.ts,
   * mode 'retry'): from then on they are no longer owed here, whatever the charge's first
   * answer, so that no two charges are ever sent for the same units. It walks the live map, so
   * units owed while it runs (a user it already charged, or one it had not reached) are charged
   * in the same run, as they stand when handed over.
   */
  private async chargeOwed(): Promise<void> {
    const { keys, ops } = this.ctx;
    for (const [userId, units] of this.owed) {
      this.owed.delete(userId);
      const user = keys.user(userId);
      try {
        await ops.write(scripts.mutate, [user, this.ended.of(user)], ['charge', units, userId], 'retry');
      } catch {
        // Redis went away again: the charge goes again once it is back (close() waits for it).
      }
    }
    this.insurance.clear();
  }
}
