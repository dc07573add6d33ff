/** The Limiter: the thin handle on one user's admission and tasks that users hold. */
import type { Decision, DetailedDecision, PeekResult, SubmitOptions } from './task/admission.js';
import type { InlineTask } from './task/job.js';
import type { Pipeline } from './task/pipeline.js';

export type { Decision, DetailedDecision, PeekResult, SubmitOptions, Task } from './task/admission.js';

/** A cheap handle on one user's admission and tasks; the subscription is checked at every use. */
export class Limiter {
  /** @internal The store's reference to this user's state. */
  ref: unknown = undefined;
  /** @internal The metrics of the profile this user's last refusal was counted under. */
  stats: unknown = undefined;

  /** @internal */
  constructor(
    private readonly pipeline: Pipeline,
    /** The user this handle acts for. */
    readonly userId: string,
  ) {}

  /**
   * Admits and runs a task: checks the subscription, charges the quota, waits for (or is
   * refused) the rate, queues fairly, runs, retries, and dead-letters. Resolves with the
   * task's return value (an inline function's, awaited); rejects with a {@link TaskvalveError}.
   */
  submit<F extends InlineTask>(task: F, options?: SubmitOptions): Promise<Awaited<ReturnType<F>>>;
  /** A named export of the profile's worker module; `R` is what it resolves with. */
  submit<R = unknown>(task: { name: string; payload?: unknown }, options?: SubmitOptions): Promise<R>;
  submit(task: unknown, options?: SubmitOptions): Promise<unknown> {
    return this.pipeline.submit(this, task, options);
  }

  /**
   * Admission without a task, decided now (never waits). Allowed: charges quota and bucket.
   * A rate denial resolves `{ allowed: false }` and changes nothing; an exhausted hard quota
   * and subscription problems reject with their codes.
   */
  check(cost = 1): Promise<Decision> {
    return this.pipeline.check(this, cost);
  }

  /**
   * check(cost), answering also with the user's profile, usage, quota limit and time to the end
   * of the usage period, all of the same atomic decision (what rate-limit headers need).
   */
  checkDetailed(cost = 1): Promise<DetailedDecision> {
    return this.pipeline.checkDetailed(this, cost);
  }

  /**
   * What check(1) would say on the rate now, counting units that waiting tasks have reserved,
   * with usage and status; changes nothing, never rejects for subscription state.
   */
  peek(): Promise<PeekResult> {
    return this.pipeline.peek(this.userId);
  }
}
