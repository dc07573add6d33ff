/**
 * The submit pipeline, admit -> (rate wait) -> queue -> run -> settle, and the Limiter handle
 * that users call. Every admitted task ends as a result, a typed rejection, or a dead letter.
 */
import { randomUUID } from 'node:crypto';
import {
  ErrorCode,
  TaskvalveError,
  aborted,
  invalidArgument,
  queueFull,
  quotaExceeded,
  rateLimited,
  show,
  shuttingDown,
  subscriptionExpired,
  subscriptionInactive,
  subscriptionNotFound,
  subscriptionNotStarted,
  taskFailed,
  type Refusal,
} from './errors.js';
import { Executor } from './exec/executor.js';
import { Job, JobState, TaskContext, type InlineTask } from './exec/job.js';
import { WorkerPool, type RunResult } from './exec/pool.js';
import { backoffMs, isRetryable } from './exec/retry.js';
import type { Metrics, Outcome, ProfileStats, RejectReason } from './metrics.js';
import type { Profile } from './profile.js';
import { WaitLines } from './rate/wait-line.js';
import { AdmitMode, Verdict, type AdmitResult, type FailedTask, type Store, type SubscriptionStatus, type UserSlot } from './store/store.js';

/** A task: a named export of the profile's worker module with its payload, or a function run inline. */
export type Task =
  | {
      /** The named export of the profile's worker module to run. */
      name: string;
      /** Its argument (structured-cloned to the worker thread). */
      payload?: unknown;
    }
  | InlineTask;

/** Options of {@link Limiter.submit}. */
export interface SubmitOptions {
  /** Positive integer units, default 1; above the bucket's burst: INVALID_ARGUMENT. */
  cost?: number;
  /** Aborts the task while it waits, is queued, or runs. */
  signal?: AbortSignal;
  /** This task's run timeout in ms (overrides `pool.taskTimeoutMs`). */
  timeoutMs?: number;
  /** false: never wait for the rate, reject RATE_LIMITED at once. */
  wait?: boolean;
  /** Higher runs first among one user's queued tasks; default 0. */
  priority?: number;
  /** Not supported yet: rejected with INVALID_ARGUMENT. */
  idempotencyKey?: string;
  /** Not supported yet: rejected with INVALID_ARGUMENT. */
  orderingKey?: string;
  /** Not supported yet: rejected with INVALID_ARGUMENT. */
  concurrencyKey?: string;
}

/** An admission decision. */
export interface Decision {
  /** True: admitted (and charged). */
  allowed: boolean;
  /** Bucket capacity (burst). */
  limit: number;
  /** Units that still conform now. */
  remaining: number;
  /** 0 when allowed; else ms until the same request would conform. */
  retryAfterMs: number;
  /** Ms until the bucket is full again. */
  resetAfterMs: number;
}

/** A decision with the user's figures at that moment: what rate-limit headers need. */
export interface DetailedDecision extends Decision {
  /** The user's profile. */
  profile: string;
  /** The user's usage after this decision. */
  usage: number;
  /** The quota limit in force, null for none. */
  quotaLimit: number | null;
  /** Ms until the usage period ends (usage resets), null without a period. */
  quotaResetAfterMs: number | null;
}

/** What {@link Limiter.peek} tells. */
export interface PeekResult extends Decision {
  /** Units admitted in the current period. */
  usage: number;
  /** The quota limit in force, null for none. */
  quotaLimit: number | null;
  /** The subscription's status, or 'not_found'. */
  status: SubscriptionStatus | 'not_found';
}

/** What close() reports. */
export interface CloseReport {
  /** Tasks settled by running during the close. */
  completed: number;
  /** Tasks rejected SHUTTING_DOWN without running to their end. */
  rejected: number;
  /** Tasks still running at the timeout (their callers got SHUTTING_DOWN). */
  abandoned: number;
}

/** What the pipeline needs from its manager. */
export interface PipelineContext {
  store: Store;
  clock: () => number;
  metrics: Metrics;
  /** A fault with no caller to reject. */
  fault: (error: unknown) => void;
  deadLetter: (entry: FailedTask) => void;
}

const EMPTY: SubmitOptions = {};
const REASONS: Partial<Record<number, RejectReason>> = {
  [Verdict.RATE_LIMITED]: 'rate_limited',
  [Verdict.QUOTA_EXCEEDED]: 'quota_exceeded',
  [Verdict.CANCELED]: 'subscription_inactive',
  [Verdict.EXPIRED]: 'subscription_expired',
  [Verdict.NOT_STARTED]: 'subscription_not_started',
  [Verdict.COST_OVER_BURST]: 'invalid_argument',
};
const OUTCOMES: Partial<Record<string, Outcome>> = {
  [ErrorCode.TASK_FAILED]: 'failed',
  [ErrorCode.TASK_TIMEOUT]: 'timeout',
  [ErrorCode.WORKER_CRASHED]: 'crashed',
};

function isCost(cost: unknown): cost is number {
  return typeof cost === 'number' && Number.isSafeInteger(cost) && cost > 0;
}

/** A refused admission's figures (the result object may be reused: copied now). */
function refusalOf(r: AdmitResult, profile: Profile, rated: boolean): Refusal {
  return {
    profile: profile.name,
    usage: r.usage,
    quotaLimit: r.quotaLimit,
    // A quota refusal's retry is the end of its period (0: a lifetime quota, which never renews).
    quotaResetAfterMs: rated ? (r.quotaResetAfterMs >= 0 ? r.quotaResetAfterMs : null) : r.retryAfterMs > 0 ? r.retryAfterMs : null,
    rate: rated ? { limit: r.limit, remaining: r.remaining, resetAfterMs: r.resetAfterMs } : undefined,
  };
}

/** Wraps whatever an inline task threw into an Error (keeping a non-Error as `value`). */
function asError(thrown: unknown): Error {
  if (thrown instanceof Error) return thrown;
  const err = new Error(typeof thrown === 'string' ? thrown : show(thrown));
  (err as Error & { value?: unknown }).value = thrown;
  return err;
}

/** The engine behind every Limiter of one manager. */
export class Pipeline {
  private readonly executors = new Map<string, Executor>();
  private readonly pools = new Map<string, WorkerPool>();
  private readonly lines: WaitLines;
  private readonly live = new Set<Job>();
  private closing = false;
  /** During close: whether admitted work still runs to its end (retries included). */
  private draining = true;
  private report: CloseReport | undefined;
  private drained: (() => void) | undefined;

  constructor(private readonly ctx: PipelineContext) {
    this.lines = new WaitLines(
      (job) => this.take(job),
      (job) => this.queue(job),
      (job, error) => this.fail(job, error instanceof TaskvalveError ? error : new TaskvalveError(ErrorCode.STORE_UNAVAILABLE, `store failed: ${String(error)}`, { cause: error })),
    );
  }

  /** True once close() began: no new work is admitted. */
  get isClosing(): boolean {
    return this.closing;
  }

  /** @param onAdmitted Called once the task is admitted (a dead-letter replay removes its entry then). */
  submit(user: UserSlot & { userId: string }, task: Task, options: SubmitOptions | undefined, onAdmitted?: () => void): Promise<unknown> {
    const userId = user.userId;
    let fn: InlineTask | undefined;
    let name: string | undefined;
    let payload: unknown;
    if (typeof task === 'function') fn = task;
    else if (task !== null && typeof task === 'object' && typeof task.name === 'string' && task.name.length > 0) {
      name = task.name;
      payload = task.payload;
    } else {
      return Promise.reject(invalidArgument(`task must be a function or { name, payload }, got ${show(task)}`));
    }
    const o = options ?? EMPTY;
    if (o === null || typeof o !== 'object') return Promise.reject(invalidArgument(`submit options must be an object, got ${show(o)}`));
    const cost = o.cost ?? 1;
    if (!isCost(cost)) return Promise.reject(invalidArgument(`cost must be a positive integer, got ${show(cost)}`));
    const signal = o.signal;
    if (signal !== undefined && !(signal instanceof AbortSignal)) return Promise.reject(invalidArgument(`signal must be an AbortSignal, got ${show(signal)}`));
    if (o.timeoutMs !== undefined && !isCost(o.timeoutMs)) return Promise.reject(invalidArgument(`timeoutMs must be a positive integer, got ${show(o.timeoutMs)}`));
    if (o.wait !== undefined && typeof o.wait !== 'boolean') return Promise.reject(invalidArgument(`wait must be a boolean, got ${show(o.wait)}`));
    const priority = o.priority ?? 0;
    if (!Number.isFinite(priority)) return Promise.reject(invalidArgument(`priority must be a finite number, got ${show(priority)}`));
    if (o.idempotencyKey !== undefined || o.orderingKey !== undefined || o.concurrencyKey !== undefined) {
      return Promise.reject(invalidArgument('idempotencyKey, orderingKey and concurrencyKey are not supported yet'));
    }
    if (this.closing) return Promise.reject(shuttingDown());
    if (signal?.aborted) return Promise.reject(aborted(signal.reason));
    const now = this.ctx.clock();
    const mode = o.wait === false ? AdmitMode.NOW : AdmitMode.PROFILE;
    let r: AdmitResult | Promise<AdmitResult>;
    try {
      r = this.ctx.store.admit(userId, cost, mode, this.lines.units, now, user);
    } catch (error) {
      return Promise.reject(error);
    }
    if (r instanceof Promise) return r.then((res) => this.admitted(user, res, fn, name, payload, cost, o, now, onAdmitted));
    return this.admitted(user, r, fn, name, payload, cost, o, now, onAdmitted);
  }

  /** Turns an admission into a job, or into the rejection it calls for. */
  private admitted(
    user: UserSlot & { userId: string },
    r: AdmitResult,
    fn: InlineTask | undefined,
    name: string | undefined,
    payload: unknown,
    cost: number,
    o: SubmitOptions,
    now: number,
    onAdmitted: (() => void) | undefined,
  ): Promise<unknown> {
    const userId = user.userId;
    const profile = r.profile;
    if (profile === undefined) return Promise.reject(subscriptionNotFound(userId));
    const stats = this.ctx.metrics.profile(profile.name);
    stats.submitted++;
    if (r.verdict !== Verdict.ALLOWED && r.verdict !== Verdict.QUEUED) {
      return Promise.reject(this.denial(userId, r, cost, stats));
    }
    if (fn === undefined && profile.pool.filename === undefined) {
      this.refund(userId, cost, r.period);
      stats.rejected.invalid_argument++;
      return Promise.reject(invalidArgument(`task ${show(name)}: profile ${show(profile.name)} has no pool.filename to run named tasks`));
    }
    let resolve!: (value: unknown) => void;
    let reject!: (error: unknown) => void;
    const promise = new Promise<unknown>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    const job = new Job(userId, user, profile, name, payload, fn, cost, r.period, o.signal, o.timeoutMs ?? profile.pool.taskTimeoutMs, o.priority ?? 0, now, resolve, reject);
    if (r.verdict === Verdict.ALLOWED) {
      const executor = this.executor(profile);
      if (!executor.hasRoomFor(job, profile.pool.maxQueue)) {
        this.refund(userId, cost, r.period);
        stats.rejected.queue_full++;
        return Promise.reject(queueFull(profile.name, profile.pool.maxQueue));
      }
    }
    if (job.signal?.aborted) {
      // Aborted while a remote store was deciding: it never starts, and is refunded.
      this.refund(userId, cost, r.period);
      stats.rejected.aborted++;
      return Promise.reject(aborted(job.signal.reason));
    }
    this.live.add(job);
    onAdmitted?.();
    if (job.signal !== undefined) {
      job.onAbort = () => this.abort(job);
      job.signal.addEventListener('abort', job.onAbort, { once: true });
    }
    if (r.verdict === Verdict.ALLOWED) this.executor(profile).enqueue(job);
    else this.lines.add(job, r.retryAfterMs);
    return promise;
  }

  /** The error for a denied admission (which wrote nothing). */
  private denial(userId: string, r: AdmitResult, cost: number, stats: ProfileStats): TaskvalveError {
    const reason = REASONS[r.verdict];
    if (reason !== undefined) stats.rejected[reason]++;
    const profile = r.profile as Profile;
    switch (r.verdict) {
      case Verdict.RATE_LIMITED:
        return rateLimited(userId, profile.name, r.retryAfterMs, refusalOf(r, profile, true));
      case Verdict.QUOTA_EXCEEDED:
        return quotaExceeded(userId, r.usage, r.quotaLimit ?? 0, cost, r.retryAfterMs > 0 ? r.retryAfterMs : undefined, refusalOf(r, profile, false));
      case Verdict.CANCELED:
        return subscriptionInactive(userId);
      case Verdict.EXPIRED:
        return subscriptionExpired(userId, r.endsAt);
      case Verdict.NOT_STARTED:
        return subscriptionNotStarted(userId, r.startsAt, this.ctx.clock());
      case Verdict.COST_OVER_BURST:
        return invalidArgument(`cost ${cost} exceeds the burst ${r.limit} of profile ${show(profile.name)}: it could never conform`);
      default:
        return subscriptionNotFound(userId);
    }
  }

  check(user: UserSlot & { userId: string }, cost: number): Promise<Decision> {
    return this.admitNow(user, cost, false);
  }

  /** check(), with the user's profile, usage and quota figures of the same decision. */
  checkDetailed(user: UserSlot & { userId: string }, cost: number): Promise<DetailedDecision> {
    return this.admitNow(user, cost, true) as Promise<DetailedDecision>;
  }

  /** Admission decided now (never waits); the store's result is read before the next call. */
  private admitNow(user: UserSlot & { userId: string }, cost: number, detailed: boolean): Promise<Decision> {
    if (!isCost(cost)) return Promise.reject(invalidArgument(`cost must be a positive integer, got ${show(cost)}`));
    if (this.closing) return Promise.reject(shuttingDown());
    try {
      const r = this.ctx.store.admit(user.userId, cost, AdmitMode.NOW, this.lines.units, this.ctx.clock(), user);
      if (r instanceof Promise) return r.then((res) => this.decide(user.userId, res, cost, detailed));
      return Promise.resolve(this.decide(user.userId, r, cost, detailed));
    } catch (error) {
      return Promise.reject(error);
    }
  }

  /** A check's answer: a decision, or a throw for what is not a rate denial. */
  private decide(userId: string, r: AdmitResult, cost: number, detailed: boolean): Decision {
    if (r.verdict === Verdict.ALLOWED || r.verdict === Verdict.RATE_LIMITED) {
      const allowed = r.verdict === Verdict.ALLOWED;
      if (!allowed && r.profile !== undefined) this.ctx.metrics.profile(r.profile.name).rejected.rate_limited++;
      const retryAfterMs = allowed ? 0 : r.retryAfterMs;
      if (!detailed) return { allowed, limit: r.limit, remaining: r.remaining, retryAfterMs, resetAfterMs: r.resetAfterMs };
      const d: DetailedDecision = {
        allowed,
        limit: r.limit,
        remaining: r.remaining,
        retryAfterMs,
        resetAfterMs: r.resetAfterMs,
        profile: (r.profile as Profile).name,
        usage: r.usage,
        quotaLimit: r.quotaLimit,
        quotaResetAfterMs: r.quotaResetAfterMs >= 0 ? r.quotaResetAfterMs : null,
      };
      return d;
    }
    if (r.profile === undefined) throw subscriptionNotFound(userId);
    throw this.denial(userId, r, cost, this.ctx.metrics.profile(r.profile.name));
  }

  peek(userId: string): Promise<PeekResult> {
    const toPeek = (r: AdmitResult): PeekResult => ({
      allowed: r.verdict === Verdict.ALLOWED,
      limit: r.profile === undefined ? 0 : r.limit,
      remaining: r.profile === undefined ? 0 : r.remaining,
      retryAfterMs: r.profile === undefined ? 0 : r.retryAfterMs,
      resetAfterMs: r.profile === undefined ? 0 : r.resetAfterMs,
      usage: r.profile === undefined ? 0 : r.usage,
      quotaLimit: r.profile === undefined ? null : r.quotaLimit,
      status: r.status,
    });
    try {
      const r = this.ctx.store.peek(userId, this.ctx.clock());
      return r instanceof Promise ? r.then(toPeek) : Promise.resolve(toPeek(r));
    } catch (error) {
      return Promise.reject(error);
    }
  }

  /** The executor of a profile, created on first use. */
  executor(profile: Profile): Executor {
    let executor = this.executors.get(profile.name);
    if (executor === undefined) {
      const created = new Executor(profile.pool.maxThreads, profile.pool.perUserConcurrency, (job) => this.run(job));
      const stats = this.ctx.metrics.profile(profile.name);
      stats.queueDepth = () => created.queued;
      stats.running = () => created.running;
      this.executors.set(profile.name, created);
      executor = created;
    }
    return executor;
  }

  private pool(profile: Profile): WorkerPool {
    let pool = this.pools.get(profile.name);
    if (pool === undefined) {
      pool = new WorkerPool(profile, (error) => this.ctx.fault(error));
      this.pools.set(profile.name, pool);
    }
    return pool;
  }

  /** A job's rate turn: refuses a first attempt the queue has no room for, else takes its units. */
  private take(job: Job): number | Promise<number> {
    if (job.attempt === 1) {
      const executor = this.executor(job.profile);
      const max = job.profile.pool.maxQueue;
      if (!executor.hasRoomFor(job, max)) throw queueFull(job.profile.name, max);
    }
    return this.ctx.store.take(job.userId, job.cost, this.ctx.clock(), job.slot);
  }

  /** A job whose units are taken goes to its profile's fair queue. */
  private queue(job: Job): void {
    this.executor(job.profile).enqueue(job);
  }

  /** Starts a job's attempt (called by the executor). */
  private run(job: Job): void {
    const stats = this.ctx.metrics.profile(job.profile.name);
    const startedAt = this.ctx.clock();
    if (!job.started) {
      job.started = true;
      stats.wait.observe((startedAt - job.admittedAt) / 1000);
    }
    if (job.fn !== undefined) {
      const ctx = new TaskContext(job.attempt);
      job.controller = ctx;
      let out: unknown;
      try {
        out = job.fn(ctx);
      } catch (error) {
        this.ran(job, { ok: false, error: taskFailed(asError(error)), refund: false }, startedAt);
        return;
      }
      if (out !== null && typeof out === 'object' && typeof (out as { then?: unknown }).then === 'function') {
        (out as PromiseLike<unknown>).then(
          (value) => this.ran(job, { ok: true, value }, startedAt),
          (error: unknown) => this.ran(job, { ok: false, error: taskFailed(asError(error)), refund: false }, startedAt),
        );
      } else {
        this.ran(job, { ok: true, value: out }, startedAt);
      }
      return;
    }
    const controller = job.signal !== undefined ? new AbortController() : undefined;
    job.controller = controller;
    this.pool(job.profile).run(job.name as string, job.payload, job.timeoutMs, controller, (result) => this.ran(job, result, startedAt));
  }

  /** An attempt ended: settle, retry, or dead-letter. */
  private ran(job: Job, result: RunResult, startedAt: number): void {
    const stats = this.ctx.metrics.profile(job.profile.name);
    this.executor(job.profile).finish(job);
    stats.run.observe((this.ctx.clock() - startedAt) / 1000);
    job.controller = undefined;
    if (job.state === JobState.DONE) return; // settled meanwhile: aborted or abandoned
    if (result.ok) {
      stats.completed.success++;
      this.settle(job, true, result.value, true);
      return;
    }
    const error = result.error;
    if (error === undefined) {
      stats.completed.aborted++;
      this.settle(job, false, aborted(job.signal?.reason), true);
      return;
    }
    stats.completed[OUTCOMES[error.code] ?? 'invalid']++;
    if (result.refund) {
      this.refund(job.userId, job.cost, job.period);
      this.settle(job, false, error, true);
      return;
    }
    const now = this.ctx.clock();
    if (job.firstFailedAt === 0) job.firstFailedAt = now;
    if (job.attempt < job.profile.retry.attempts && isRetryable(error) && (this.draining || !this.closing)) {
      job.attempt++;
      job.state = JobState.BACKOFF;
      job.timer = setTimeout(() => this.retry(job), backoffMs(job.profile.retry, job.attempt));
      return;
    }
    this.bury(job, error, now);
  }

  /** Re-admits a job after its backoff: through the rate again, ahead of nothing. */
  private retry(job: Job): void {
    job.timer = undefined;
    if (job.state !== JobState.BACKOFF) return;
    if (this.lines.units.has(job.bucket)) {
      this.lines.add(job, 0);
      return;
    }
    let wait: number | Promise<number>;
    try {
      wait = this.ctx.store.take(job.userId, job.cost, this.ctx.clock(), job.slot);
    } catch (error) {
      this.fail(job, error);
      return;
    }
    const go = (ms: number): void => {
      if (job.state !== JobState.BACKOFF) return;
      if (ms === 0) this.queue(job);
      else this.lines.add(job, ms);
    };
    if (typeof wait === 'number') go(wait);
    else wait.then(go, (error: unknown) => this.fail(job, error));
  }

  /** Stores the dead letter, then rejects the caller. */
  private bury(job: Job, error: TaskvalveError, now: number): void {
    const cause = error.cause instanceof Error ? error.cause : error;
    const entry: FailedTask = {
      id: randomUUID(),
      userId: job.userId,
      profileName: job.profile.name,
      task: job.task,
      cost: job.cost,
      error: { code: error.code, name: cause.name, message: cause.message, ...(cause.stack === undefined ? {} : { stack: cause.stack }) },
      attempts: job.attempt,
      firstFailedAt: new Date(job.firstFailedAt),
      lastFailedAt: new Date(now),
    };
    const stats = this.ctx.metrics.profile(job.profile.name);
    const done = (): void => {
      stats.deadLetters++;
      this.ctx.deadLetter(entry);
      this.settle(job, false, error, true);
    };
    job.state = JobState.BACKOFF; // holds no slot while the letter is stored
    try {
      const stored = this.ctx.store.dlqAdd(entry, job.profile.dlq, now);
      if (stored instanceof Promise) {
        stored.then(done, (storeError: unknown) => {
          this.ctx.fault(storeError);
          this.settle(job, false, error, true);
        });
      } else done();
    } catch (storeError) {
      this.ctx.fault(storeError);
      this.settle(job, false, error, true);
    }
  }

  /** A job leaves before running: refund what it was charged if it never started. */
  private fail(job: Job, error: unknown): void {
    if (job.state === JobState.DONE) return;
    if (!job.started) this.refund(job.userId, job.cost, job.period);
    const code = error instanceof TaskvalveError ? error.code.toLowerCase() : 'store_unavailable';
    const stats = this.ctx.metrics.profile(job.profile.name);
    if (code in stats.rejected) stats.rejected[code as RejectReason]++;
    if (this.report !== undefined && code === 'shutting_down') this.report.rejected++;
    this.settle(job, false, error, false);
  }

  /** Takes a job out of wherever it waits (not running). */
  private withdraw(job: Job): void {
    if (job.state === JobState.WAITING) this.lines.remove(job);
    else if (job.state === JobState.QUEUED) this.executor(job.profile).dequeued();
    else if (job.state === JobState.BACKOFF && job.timer !== undefined) {
      clearTimeout(job.timer);
      job.timer = undefined;
    }
  }

  /** The caller's signal fired. */
  private abort(job: Job): void {
    const error = aborted(job.signal?.reason);
    if (job.state === JobState.RUNNING) {
      job.controller?.abort(job.signal?.reason);
      this.settle(job, false, error, false);
      return;
    }
    this.withdraw(job);
    this.fail(job, error);
  }

  /** Rejects a user's jobs that have not started (a canceled subscription). */
  rejectWaiting(userId: string, error: TaskvalveError): void {
    for (const job of this.live) {
      if (job.userId !== userId || job.started) continue;
      if (job.state === JobState.WAITING || job.state === JobState.QUEUED) {
        this.withdraw(job);
        this.fail(job, error);
      }
    }
  }

  private refund(userId: string, cost: number, period: number): void {
    try {
      const done = this.ctx.store.refund(userId, cost, period, this.ctx.clock());
      if (done instanceof Promise) done.catch((error: unknown) => this.ctx.fault(error));
    } catch (error) {
      this.ctx.fault(error);
    }
  }

  /** Ends a job: its caller's promise settles exactly once. */
  private settle(job: Job, ok: boolean, value: unknown, ran: boolean): void {
    if (job.state === JobState.DONE) return;
    job.state = JobState.DONE;
    this.live.delete(job);
    if (job.onAbort !== undefined) job.signal?.removeEventListener('abort', job.onAbort);
    if (ran && this.report !== undefined) this.report.completed++;
    if (ok) job.resolve(value);
    else job.reject(value);
    if (this.live.size === 0) this.drained?.();
  }

  /** Stops admission, drains or rejects what waits, waits for what runs, then destroys the pools. */
  async close(drain: boolean, timeoutMs: number): Promise<CloseReport> {
    this.closing = true;
    this.draining = drain;
    const report: CloseReport = { completed: 0, rejected: 0, abandoned: 0 };
    this.report = report;
    if (!drain) {
      for (const job of [...this.live]) {
        if (job.state === JobState.RUNNING) continue;
        this.withdraw(job);
        this.fail(job, shuttingDown());
      }
    }
    if (this.live.size > 0) {
      let timer: NodeJS.Timeout | undefined;
      await new Promise<void>((resolve) => {
        this.drained = resolve;
        timer = setTimeout(resolve, timeoutMs);
      });
      clearTimeout(timer);
      this.drained = undefined;
    }
    for (const job of [...this.live]) {
      if (job.state === JobState.RUNNING) {
        report.abandoned++;
        job.controller?.abort(shuttingDown());
        this.settle(job, false, shuttingDown(), false);
      } else {
        this.withdraw(job);
        this.fail(job, shuttingDown());
      }
    }
    this.lines.clear();
    await Promise.all([...this.pools.values()].map((pool) => pool.destroy()));
    this.pools.clear();
    return report;
  }
}

/** A cheap handle on one user's admission and tasks; status is checked at every use. */
export class Limiter implements UserSlot {
  /** @internal The store's reference to this user's state. */
  ref: unknown = undefined;

  /** @internal */
  constructor(
    private readonly pipeline: Pipeline,
    /** The user this handle acts for. */
    readonly userId: string,
  ) {}

  /**
   * Admits and runs a task: checks the subscription, charges the quota, waits for (or is
   * refused) the rate, queues fairly, runs, retries, and dead-letters. Resolves with the
   * task's return value; rejects with a {@link TaskvalveError}.
   */
  submit<R = unknown>(task: Task, options?: SubmitOptions): Promise<R> {
    return this.pipeline.submit(this, task, options) as Promise<R>;
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

  /** What check(1) would say on the rate now, with usage and status; changes nothing, never rejects for subscription state. */
  peek(): Promise<PeekResult> {
    return this.pipeline.peek(this.userId);
  }
}
