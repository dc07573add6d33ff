/** One submitted task on its way through the pipeline: admit -> (wait) -> queue -> run -> settle. */
import type { Profile } from '../profile.js';
import type { DeadTask, UserSlot } from '../store/store.js';

/** Where a job is. */
export const JobState = {
  /** Waiting for its rate turn (holds no slot). */
  WAITING: 0,
  /** Admitted, waiting for a thread or a concurrency slot. */
  QUEUED: 1,
  RUNNING: 2,
  /** Between attempts (holds no slot). */
  BACKOFF: 3,
  DONE: 4,
} as const;
export type JobState = (typeof JobState)[keyof typeof JobState];

/** A task function run inline on the main thread. */
export type InlineTask = (ctx: { signal: AbortSignal; attempt: number }) => unknown;

/**
 * What an inline task receives. Its signal is made on first read: most tasks never look at it,
 * and an AbortController with its signal costs microseconds.
 */
export class TaskContext {
  private controller: AbortController | undefined = undefined;
  private stopped = false;
  private reason: unknown = undefined;

  constructor(
    /** 1-based attempt number. */
    readonly attempt: number,
  ) {}

  /** Aborted when the caller aborts, or the task is abandoned at shutdown. */
  get signal(): AbortSignal {
    if (this.controller === undefined) {
      this.controller = new AbortController();
      if (this.stopped) this.controller.abort(this.reason);
    }
    return this.controller.signal;
  }

  /** Aborts the signal, now or when it is first read. */
  abort(reason?: unknown): void {
    if (this.stopped) return;
    this.stopped = true;
    this.reason = reason;
    this.controller?.abort(reason);
  }
}

/** A job; the pipeline owns every field. */
export class Job {
  state: JobState = JobState.WAITING;
  /** 1-based attempt about to run or running. */
  attempt = 1;
  /** Handed to a thread (worker task) or called (inline task) at least once: no refund. */
  started = false;
  /** Backoff timer. */
  timer: NodeJS.Timeout | undefined = undefined;
  /** Aborts the running attempt: a worker run's controller, or an inline task's context. */
  controller: { abort(reason?: unknown): void } | undefined = undefined;
  firstFailedAt = 0;
  /** Set by the signal listener; removed at settle. */
  onAbort: (() => void) | undefined = undefined;

  constructor(
    readonly userId: string,
    /** The user's limiter handle: lets the store skip finding the user again at each turn. */
    readonly slot: UserSlot,
    readonly profile: Profile,
    /** A worker task's export name, or undefined for an inline task. */
    readonly name: string | undefined,
    readonly payload: unknown,
    readonly fn: InlineTask | undefined,
    readonly cost: number,
    /** Refund token of the usage period charged. */
    readonly period: number,
    readonly signal: AbortSignal | undefined,
    /** Run timeout, 0 for none. */
    readonly timeoutMs: number,
    readonly priority: number,
    /** When admission accepted it (ms, manager clock). */
    readonly admittedAt: number,
    readonly resolve: (value: unknown) => void,
    readonly reject: (error: unknown) => void,
  ) {}

  /** The task as the dead-letter queue records it. */
  get task(): DeadTask {
    return this.fn ?? { name: this.name as string, payload: this.payload };
  }

  /** Bucket key this job's rate turn is taken on. */
  get bucket(): string {
    return this.profile.shared === undefined ? `d:${this.userId}` : `s:${this.profile.shared}`;
  }
}
