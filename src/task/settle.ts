/**
 * Stage 5, settle: what an attempt came to. A result resolves the caller; a failure is retried
 * after its backoff (handed back to the pipeline, which re-admits it through the rate) or
 * dead-lettered, and the caller's rejection waits until the dead letter is stored.
 */
import { randomUUID } from 'node:crypto';
import { ErrorCode, TaskvalveError, messageOf, show, textOf } from '../errors.js';
import type { RunResult } from '../exec/pool.js';
import { backoffMs, isRetryable } from '../exec/retry.js';
import type { Metrics, Outcome } from '../metrics.js';
import type { FailedTask, Store } from '../store/store.js';
import { Timer } from '../util/timer.js';
import type { Job } from './job.js';
import { State, type Lifecycle } from './lifecycle.js';

const OUTCOMES: Partial<Record<string, Outcome>> = {
  [ErrorCode.TASK_FAILED]: 'failed',
  [ErrorCode.TASK_TIMEOUT]: 'timeout',
  [ErrorCode.WORKER_CRASHED]: 'crashed',
};

/** A task's failure as its caller gets it, with a note on what became of the task afterwards. */
function noted(error: TaskvalveError, note: string): TaskvalveError {
  return new TaskvalveError(error.code, `${error.message} (${note})`, {
    cause: error.cause,
    ...(error.retryable === undefined ? {} : { retryable: error.retryable }),
  });
}

/**
 * A failure as its dead letter keeps it: the code, and the name, message and stack of what the
 * task threw, read without trusting it (a getter that throws, a Symbol: described, never thrown).
 */
function describe(code: ErrorCode, cause: Error): FailedTask['error'] {
  const out: FailedTask['error'] = {
    code,
    name: textOf(() => cause.name, 'Error'),
    message: messageOf(cause),
  };
  try {
    const stack: unknown = cause.stack;
    if (typeof stack === 'string') out.stack = stack;
  } catch {
    // A stack that cannot be read is left out.
  }
  return out;
}

/** Where settled tasks go. */
export interface SettleOutputs {
  lifecycle: Lifecycle;
  store: Store;
  metrics: Metrics;
  clock: () => number;
  fault: (error: unknown) => void;
  /** The caller's promise settles (exactly once per task); `ran`: with what running it came to. */
  finish(job: Job, ok: boolean, value: unknown, ran: boolean): void;
  /** A dead letter was stored. */
  deadLettered(entry: FailedTask): void;
  /** The backoff is over: re-admit the job through the rate. */
  retry(job: Job): void;
  /** Whether failed attempts may still be retried (not while closing without drain). */
  retrying(): boolean;
}

/** Settles attempts. */
export class Settler {
  constructor(private readonly out: SettleOutputs) {}

  /** An attempt ended (its slot is already free). */
  attempt(job: Job, result: RunResult, startedAt: number, now: number): void {
    const lifecycle = this.out.lifecycle;
    const stats = job.stats;
    stats.run.observe((now - startedAt) / 1000);
    if (result.ok) {
      if (lifecycle.move(job, State.SUCCEEDED)) {
        stats.completed.success++;
        this.out.finish(job, true, result.value, true);
      }
      return;
    }
    const error = result.error;
    // Stopped by its caller or by shutdown, which already settled it: nothing reached the task
    // (what the function answers later is a late event, counted by the run).
    if (error === undefined) return;
    if (job.state !== State.RUNNING) {
      lifecycle.move(job, State.CANCELED); // already settled: counted as late
      return;
    }
    stats.completed[OUTCOMES[error.code] ?? 'invalid']++;
    const reason = error.code.toLowerCase();
    if (result.refund) {
      // It never really ran (no such export, a payload that cannot be cloned, no module).
      lifecycle.unstart(job);
      lifecycle.move(job, State.CANCELED, reason);
      this.out.finish(job, false, error, false);
      return;
    }
    if (job.firstFailedAt === 0) job.firstFailedAt = now;
    const retry = job.profile.retry;
    if (job.attempt < retry.attempts && isRetryable(error) && this.out.retrying()) {
      lifecycle.move(job, State.RETRY_WAIT, reason);
      job.lastError = error;
      job.timer = new Timer(backoffMs(retry, job.attempt + 1), () => {
        job.timer = undefined;
        this.out.retry(job);
      });
      return;
    }
    this.bury(job, error, now);
  }

  /**
   * A retry could not be re-admitted: the store failed (`storeError`). The task ran and failed,
   * so it is charged and not lost: it is dead-lettered with its last attempt's error, which says
   * why it was not retried (STORE_UNAVAILABLE alone would tell its caller it never ran).
   */
  retryLost(job: Job, storeError: TaskvalveError, now: number): void {
    this.bury(job, noted(job.lastError as TaskvalveError, `not retried: ${storeError.message}`), now);
  }

  /** FAILED: stores the dead letter, then rejects the caller. A late abort changes nothing now. */
  private bury(job: Job, error: TaskvalveError, now: number): void {
    const { lifecycle, store, fault } = this.out;
    lifecycle.move(job, State.FAILED, error.code.toLowerCase());
    job.failure = error;
    const cause = error.cause instanceof Error ? error.cause : error;
    const entry: FailedTask = {
      id: randomUUID(),
      userId: job.userId,
      profileName: job.profile.name,
      task: job.task,
      cost: job.cost,
      error: describe(error.code, cause),
      attempts: job.attempt,
      firstFailedAt: new Date(job.firstFailedAt),
      lastFailedAt: new Date(now),
    };
    const stored = (): void => {
      job.stats.deadLetters++;
      this.out.deadLettered(entry);
      this.out.finish(job, false, error, true);
    };
    // The store could not keep the letter: the caller is told so (a store that reports it failed
    // never keeps it later: the RedisStore takes back a letter whose call was in doubt).
    const lost = (storeError: unknown): void => {
      fault(storeError);
      const why = storeError instanceof Error ? messageOf(storeError) : show(storeError);
      this.out.finish(job, false, noted(error, `its dead letter was not stored: ${why}`), true);
    };
    try {
      const added = store.dlqAdd(entry, job.profile.dlq, now);
      if (added instanceof Promise) added.then(stored, lost);
      else stored();
    } catch (storeError) {
      lost(storeError);
    }
  }
}
