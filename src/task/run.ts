/**
 * Stage 4, run: one attempt of a task, on its profile's worker pool or inline on this thread.
 * An attempt always ends in exactly one call of `done`, which frees its slot: at the result, at
 * the timeout, or when it is stopped. An inline function that ignores its signal may go on
 * running after that, but it holds no slot; it is counted as abandoned, its late answer as late.
 */
import { show, shuttingDown, taskFailed, taskTimeout, type TaskvalveError } from '../errors.js';
import { WorkerPool, type RunResult } from '../exec/pool.js';
import type { ProfileStats } from '../metrics.js';
import type { Profile } from '../profile.js';
import { Timer } from '../util/timer.js';
import { InlineContext, type Job } from './job.js';

/** Wraps whatever an inline task threw into an Error (keeping a non-Error as `value`). */
function asError(thrown: unknown): Error {
  if (thrown instanceof Error) return thrown;
  const err = new Error(typeof thrown === 'string' ? thrown : show(thrown));
  (err as Error & { value?: unknown }).value = thrown;
  return err;
}

function failed(thrown: unknown): RunResult {
  let cause: Error;
  try {
    cause = asError(thrown);
  } catch {
    cause = new Error('the task failed with a value that cannot be described');
  }
  return { ok: false, error: taskFailed(cause), refund: false };
}

// Stryker disable next-line ObjectLiteral,BooleanLiteral: a stopped run's task is already CANCELED: whatever it answers is a late event, counted the same
const STOPPED: RunResult = { ok: false, error: undefined, refund: false };

/** Runs attempts; owns the worker pools (one per profile, created on first use, never after close). */
export class Runner {
  private readonly pools = new Map<string, WorkerPool>();
  private closed = false;

  /** @param fault An error with no caller (a late error from a worker thread). */
  constructor(private readonly fault: (error: unknown) => void) {}

  /** Starts the job's attempt; `done` is called exactly once with what it came to. */
  run(job: Job, done: (job: Job, result: RunResult) => void): void {
    if (job.fn !== undefined) this.inline(job, done);
    else this.worker(job, done);
  }

  private inline(job: Job, done: (job: Job, result: RunResult) => void): void {
    const run = new InlineRun(job, done, job.stats);
    job.stop = run;
    run.start();
  }

  private worker(job: Job, done: (job: Job, result: RunResult) => void): void {
    if (this.closed) {
      done(job, { ok: false, error: shuttingDown(), refund: true });
      return;
    }
    const pool = this.pool(job.profile);
    const controller = job.signal !== undefined ? new AbortController() : undefined;
    if (controller !== undefined) job.stop = { stop: (reason) => controller.abort(reason) };
    pool.run(job.name as string, job.payload, job.timeoutMs, controller, (result) => {
      job.stop = undefined;
      done(job, result);
    });
  }

  private pool(profile: Profile): WorkerPool {
    let pool = this.pools.get(profile.name);
    if (pool === undefined) {
      pool = new WorkerPool(profile, (error) => this.fault(error));
      this.pools.set(profile.name, pool);
    }
    return pool;
  }

  /** No pool is created from now on; every pool's threads are terminated (runs in flight end). */
  async close(): Promise<void> {
    this.closed = true;
    const pools = [...this.pools.values()];
    this.pools.clear();
    await Promise.all(pools.map((pool) => pool.destroy()));
  }
}

/**
 * One inline attempt. It ends once: at its result, at its timeout, or when stopped; a function
 * still running then is abandoned (its signal aborted, its slot freed, its late answer counted).
 * A class rather than closures: an attempt allocates one object.
 */
class InlineRun {
  private over = false;
  private timer: Timer | undefined = undefined;
  private readonly ctx: InlineContext;

  constructor(
    private readonly job: Job,
    private readonly done: (job: Job, result: RunResult) => void,
    private readonly stats: ProfileStats,
  ) {
    this.ctx = new InlineContext(job.attempt);
  }

  start(): void {
    const ms = this.job.timeoutMs;
    if (ms > 0) this.timer = new Timer(ms, () => this.timedOut(ms));
    let out: unknown;
    try {
      out = (this.job.fn as (ctx: InlineContext) => unknown)(this.ctx);
    } catch (error) {
      this.end(failed(error));
      return;
    }
    if (out === null || (typeof out !== 'object' && typeof out !== 'function')) {
      this.end({ ok: true, value: out });
      return;
    }
    // Promise.resolve reads `then` and calls it in a microtask; a getter or a `then` that throws
    // becomes a rejection there, never a throw here.
    let settled: Promise<unknown>;
    try {
      settled = Promise.resolve(out);
    } catch (error) {
      this.end(failed(error));
      return;
    }
    settled.then(
      (value) => this.end({ ok: true, value }),
      (error: unknown) => this.end(failed(error)),
    );
  }

  /** The caller aborted or shutdown abandons it. */
  stop(reason: TaskvalveError): void {
    this.abandon(reason, STOPPED);
  }

  private timedOut(ms: number): void {
    const error = taskTimeout(ms);
    this.abandon(error, { ok: false, error, refund: false });
  }

  private abandon(reason: TaskvalveError, result: RunResult): void {
    if (this.over) return;
    this.ctx.abort(reason);
    this.stats.abandoned++;
    this.end(result);
  }

  private end(result: RunResult): void {
    if (this.over) {
      this.stats.lateEvents++;
      return;
    }
    this.over = true;
    this.timer?.cancel();
    this.job.stop = undefined;
    this.done(this.job, result);
  }
}
