/**
 * Admissions without a task: check() and checkDetailed() decide now and never wait; peek()
 * changes nothing. They share admission's store call and verdicts, and respect the units that
 * tasks waiting in the rate line have reserved.
 */
import { TaskvalveError, invalidArgument, show, shuttingDown } from '../errors.js';
import type { Metrics, ProfileStats } from '../metrics.js';
import type { Profile } from '../profile.js';
import { AdmitMode, Verdict, type AdmitResult, type Store, type UserSlot } from '../store/store.js';
import { decision, isCount, peekResult, type Decision, type PeekResult } from './admission.js';

/** A user's limiter handle as the pipeline sees it. */
export interface UserHandle extends UserSlot {
  readonly userId: string;
  /** The metrics of the profile its last refusal was counted under (kept by checks). */
  stats: unknown;
}

/** check(), checkDetailed() and peek() for one pipeline. */
export class Checks {
  /**
   * @param waiting Units reserved per bucket by the tasks waiting for their turn (the rate line's).
   */
  constructor(
    private readonly store: Store,
    private readonly metrics: Metrics,
    private readonly clock: () => number,
    private readonly waiting: ReadonlyMap<string, number>,
  ) {}

  /** Admission decided now (never waits); the store's answer is read before the next call. */
  decide(user: UserHandle, cost: number, detailed: boolean, closing: boolean): Promise<Decision> {
    // Stryker disable next-line ConditionalExpression: the cost-1 shortcut only skips isCount(1), which is true
    if (cost !== 1 && !isCount(cost)) return Promise.reject(invalidArgument(`cost must be a positive integer, got ${show(cost)}`));
    if (closing) return Promise.reject(shuttingDown());
    const now = this.clock();
    let r: AdmitResult | Promise<AdmitResult>;
    try {
      r = this.store.admit(user.userId, cost, AdmitMode.NOW, this.waiting, now, user);
    } catch (error) {
      return Promise.reject(error);
    }
    // The answer (or the refusal thrown) is the callback's value: no promise of its own to adopt.
    if (r instanceof Promise) return r.then((res) => this.answer(user, res, cost, detailed, now));
    try {
      return Promise.resolve(this.answer(user, r, cost, detailed, now));
    } catch (error) {
      return Promise.reject(error);
    }
  }

  /** The metrics of a user's profile, kept on the handle: refusals repeat. */
  private statsOf(user: UserHandle, profile: Profile): ProfileStats {
    const kept = user.stats as ProfileStats | undefined;
    if (kept !== undefined && kept.profile === profile.name) return kept;
    const stats = this.metrics.profile(profile.name);
    user.stats = stats;
    return stats;
  }

  /** A store's answer as check() tells it; a refusal that is an error is thrown. */
  private answer(user: UserHandle, r: AdmitResult, cost: number, detailed: boolean, now: number): Decision {
    // Stryker disable next-line ConditionalExpression,BlockStatement: a fast path: decision() builds the same answers and counts the same refusal
    if (!detailed) {
      // The two common answers, built directly.
      // Stryker disable next-line ConditionalExpression: a fast path: decision() builds the same answer
      if (r.verdict === Verdict.ALLOWED) return { allowed: true, limit: r.limit, remaining: r.remaining, retryAfterMs: 0, resetAfterMs: r.resetAfterMs };
      // Stryker disable next-line ConditionalExpression,BlockStatement: a fast path: decision() builds the same answer and counts the same refusal
      if (r.verdict === Verdict.RATE_LIMITED) {
        this.statsOf(user, r.profile as Profile).rejected.rate_limited++;
        return { allowed: false, limit: r.limit, remaining: r.remaining, retryAfterMs: r.retryAfterMs, resetAfterMs: r.resetAfterMs };
      }
    }
    // Stryker disable next-line ConditionalExpression: an allowed decision counts nothing, so looking its stats up changes nothing
    const stats = r.verdict === Verdict.ALLOWED || r.profile === undefined ? undefined : this.metrics.profile(r.profile.name);
    const d = decision(user.userId, r, cost, detailed, stats, now);
    if (d instanceof TaskvalveError) throw d;
    return d;
  }

  /** What check(1) would say now, counting the units waiting tasks reserved; changes nothing. */
  peek(userId: string): Promise<PeekResult> {
    try {
      const r = this.store.peek(userId, this.clock(), this.waiting);
      return r instanceof Promise ? r.then(peekResult) : Promise.resolve(peekResult(r));
    } catch (error) {
      return Promise.reject(error);
    }
  }
}
