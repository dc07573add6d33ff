/** One submitted task on its way through the pipeline, and what an inline task receives. */
import type { TaskvalveError } from '../errors.js';
import type { ProfileStats } from '../metrics.js';
import type { Profile } from '../profile.js';
import type { DeadTask, RateReceipt, UserSlot } from '../store/store.js';
import type { Timer } from '../util/timer.js';
import { State } from './lifecycle.js';

/** A task function run inline on the main thread. */
export type InlineTask<R = unknown> = (ctx: TaskContext) => R;

/** What an inline task receives. */
export interface TaskContext {
  /** Aborted when the caller aborts, the task times out, or it is abandoned at shutdown. */
  readonly signal: AbortSignal;
  /** 1-based attempt number. */
  readonly attempt: number;
}

/**
 * An inline task's context. Its signal is made on first read: most tasks never look at it, and
 * an AbortController with its signal costs microseconds.
 */
export class InlineContext implements TaskContext {
  private controller: AbortController | undefined = undefined;
  private stopped = false;
  private reason: unknown = undefined;

  constructor(readonly attempt: number) {}

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

/** A task's record. Its state is written only by the lifecycle; the stages own the other fields. */
export class Job {
  state: State = State.PENDING;
  /** Given by the caller, or generated when a `task` listener first needs it. */
  id: string | undefined;
  /** 1-based attempt about to run or running. */
  attempt = 1;
  /** An attempt began (a worker task handed to a thread, an inline task called): quota is spent. */
  started = false;
  /** Quota units charged and not given back; 0 when none. */
  quota = 0;
  /** Refund token of the usage period charged. */
  period = 0;
  /** Rate units taken for the attempt about to run, until it starts (given back if it never does). */
  taken: RateReceipt | undefined = undefined;
  /** The running attempt's rate units, until it is known to have begun (a worker attempt that never ran gives them back). */
  spent: RateReceipt | undefined = undefined;
  /** The profile in force: a profile change reaches a task that waits for its turn or a retry. */
  profile!: Profile;
  /** The metrics of its profile. */
  stats!: ProfileStats;
  /** Key of the bucket whose line the task waits in. */
  // Stryker disable next-line StringLiteral: set before any read: a task joins a line with its bucket's key
  bucket = '';
  /** Holds a slot it took at once, to start at the next dispatch (the scheduler's). */
  reserved = false;
  /** Backoff timer between attempts. */
  timer: Timer | undefined = undefined;
  /** Stops the running attempt (set while it runs and can be stopped). */
  stop: { stop(reason: TaskvalveError): void } | undefined = undefined;
  firstFailedAt = 0;
  /** The error of its last failed attempt, once one failed and it waits to retry. */
  lastError: TaskvalveError | undefined = undefined;
  /** FAILED: the error its caller gets once the dead letter is stored. */
  failure: TaskvalveError | undefined = undefined;
  /** When admission accepted it (ms, manager clock). */
  admittedAt = 0;
  /** A first attempt admitted to wait for its turn: by when the turn must come (ms, manager clock; Infinity: no bound). */
  deadline = Infinity;
  /** Called when the first attempt starts (a dead-letter replay's entry goes then). */
  onStart: (() => void) | undefined = undefined;
  /** Listens to the caller's signal; removed when the task ends. */
  onAbort: (() => void) | undefined = undefined;
  /** In its pipeline's list of tasks whose callers wait (src/task/live.ts). */
  // Stryker disable next-line BooleanLiteral: a job is added to the live list, which sets it, right after it is made and before any read
  live = false;
  prevLive: Job | undefined = undefined;
  nextLive: Job | undefined = undefined;
  resolve!: (value: unknown) => void;
  reject!: (error: unknown) => void;

  constructor(
    readonly userId: string,
    /** The user's limiter handle: lets the store skip finding the user again at each turn. */
    readonly slot: UserSlot,
    /** A worker task's export name, or undefined for an inline task. */
    readonly name: string | undefined,
    readonly payload: unknown,
    readonly fn: InlineTask | undefined,
    readonly cost: number,
    readonly signal: AbortSignal | undefined,
    /** This task's own run timeout, 0 for the profile's. */
    readonly ownTimeoutMs: number,
    readonly priority: number,
  ) {}

  /** Run timeout in ms, 0 for none. */
  get timeoutMs(): number {
    return this.ownTimeoutMs > 0 ? this.ownTimeoutMs : this.profile.pool.taskTimeoutMs;
  }

  /** The task as the dead-letter queue records it. */
  get task(): DeadTask {
    return this.fn ?? { name: this.name as string, payload: this.payload };
  }
}
