/**
 * The pipeline: the stages wired in order, admission -> rate line -> scheduler -> run ->
 * settle. Each stage hands a task forward; only the lifecycle writes its state. Also what acts
 * on many tasks at once: a user's subscription ending, a profile change, and close().
 */
import {
  aborted,
  costOverBurst,
  invalidArgument,
  queueFull,
  rateLimited,
  show,
  shuttingDown,
  storeFailed,
  ErrorCode,
  TaskvalveError,
} from '../errors.js';
import type { RunResult } from '../exec/pool.js';
import type { Metrics, ProfileStats, RejectReason } from '../metrics.js';
import type { Profile } from '../profile.js';
import { AdmitMode, Verdict, type AdmitResult, type FailedTask, type RateReceipt, type Store } from '../store/store.js';
import { Timer } from '../util/timer.js';
import { denial, parseSubmit, type Decision, type DetailedDecision, type PeekResult, type Submission } from './admission.js';
import { Job } from './job.js';
import { Lifecycle, State, isTerminal, type TaskEvent } from './lifecycle.js';
import { Checks, type UserHandle } from './checks.js';
import { LiveTasks } from './live.js';
import { RateLines, bucketKey } from './rate-line.js';
import { Runner } from './run.js';
import { Scheduler } from './scheduler.js';
import { Settler } from './settle.js';

export type { UserHandle };

/** What close() reports. */
export interface CloseReport {
  /** Tasks that ended during the close otherwise than by it: by running, or by their callers' aborts. */
  completed: number;
  /** Tasks rejected SHUTTING_DOWN without running to their end. */
  rejected: number;
  /** Tasks still running at the timeout (their callers got SHUTTING_DOWN). */
  abandoned: number;
  /**
   * Present only when some are: units of usage admitted while the store was unreachable (the
   * 'local' policy) that could not be charged to it before the timeout.
   */
  owed?: number;
}

/** What the pipeline needs from its manager. */
export interface PipelineContext {
  store: Store;
  clock: () => number;
  metrics: Metrics;
  /** A fault with no caller to reject. */
  fault: (error: unknown) => void;
  /** A dead letter was stored. */
  deadLetter: (entry: FailedTask) => void;
  /** The `task` event's sink while someone listens, else undefined. */
  taskListener: () => ((event: TaskEvent) => void) | undefined;
}

/** The engine behind every Limiter of one manager. */
export class Pipeline {
  private readonly lifecycle: Lifecycle;
  private readonly lines: RateLines;
  private readonly schedulers = new Map<string, Scheduler>();
  private readonly runner: Runner;
  private readonly settler: Settler;
  private readonly checks: Checks;
  /** Tasks whose callers have not been answered yet. */
  private readonly live = new LiveTasks();
  /** The profile last looked up, with its metrics and scheduler: most calls ask for the same one. */
  private recent: Profile | undefined = undefined;
  private recentStats: ProfileStats | undefined = undefined;
  private recentScheduler: Scheduler | undefined = undefined;
  /** Admissions in flight in an asynchronous store. */
  private admitting = 0;
  /** Refunds in flight in an asynchronous store. */
  private readonly calls = new Set<Promise<void>>();
  private closing = false;
  /** During close: whether admitted work still runs to its end (retries included). */
  // Stryker disable next-line BooleanLiteral: draining is read only while closing, and close() sets it first
  private draining = true;
  private report: CloseReport | undefined;
  private drained: (() => void) | undefined;

  constructor(private readonly ctx: PipelineContext) {
    const { store, metrics, clock, fault } = ctx;
    this.lifecycle = new Lifecycle({
      metrics,
      listener: ctx.taskListener,
      refundQuota: (job) => {
        try {
          this.settled(store.refund(job.userId, job.quota, job.period, clock()));
        } catch (error) {
          fault(error);
        }
      },
      refundRate: (job) => this.untake(job, job.taken as RateReceipt),
      fault,
    });
    const takeTurns = store.takeTurns;
    this.lines = new RateLines({
      fits: (job) => this.fits(job),
      ready: (job) => this.ready(job),
      take: (job, receipt) => this.take(job, receipt),
      takeTurns: takeTurns === undefined ? undefined : (jobs) => takeTurns.call(store, jobs, clock()),
      never: (job) => costOverBurst(job.cost, job.profile.rate.burst, job.profile.name, true),
      granted: (job, receipt) => {
        job.taken = receipt;
        this.queue(job);
      },
      failed: (job, error) => this.storeLost(job, error),
      untake: (job, receipt) => this.untake(job, receipt),
      expired: (job, retryAfterMs) => this.end(job, rateLimited(job.userId, job.profile.name, retryAfterMs)),
      now: clock,
    });
    this.runner = new Runner(fault);
    this.checks = new Checks(store, metrics, clock, this.lines.units);
    this.settler = new Settler({
      lifecycle: this.lifecycle,
      store,
      metrics,
      clock,
      fault,
      finish: (job, ok, value, ran) => this.finish(job, ok, value, ran),
      deadLettered: ctx.deadLetter,
      retry: (job) => this.retry(job),
      retrying: () => this.draining || !this.closing,
    });
  }

  // ---- admission -------------------------------------------------------------------------

  /** @param onStarted Called when the task's first attempt starts (a dead-letter replay keeps its entry until then). */
  submit(user: UserHandle, task: unknown, options: unknown, onStarted?: () => void): Promise<unknown> {
    let s: Submission | TaskvalveError;
    try {
      s = parseSubmit(task, options);
    } catch (error) {
      // Options whose getters throw, or a proxy that refuses to list its keys.
      return Promise.reject(invalidArgument(`submit options could not be read: ${show(error)}`, error));
    }
    if (s instanceof TaskvalveError) return Promise.reject(s);
    if (this.closing) return Promise.reject(shuttingDown());
    if (s.signal?.aborted) return Promise.reject(aborted(s.signal.reason));
    const now = this.ctx.clock();
    let r: AdmitResult | Promise<AdmitResult>;
    try {
      r = this.ctx.store.admit(user.userId, s.cost, s.wait ? AdmitMode.PROFILE : AdmitMode.NOW, this.lines.units, now, user);
    } catch (error) {
      return Promise.reject(error);
    }
    if (!(r instanceof Promise)) return this.admitted(user, s, r, now, onStarted);
    // Asynchronous store: close() waits for this admission's answer (then refunds it).
    this.admitting++;
    return r.then(
      (res) => {
        this.admitting--;
        const out = this.admitted(user, s, res, now, onStarted);
        this.drain();
        return out;
      },
      (error: unknown) => {
        this.admitting--;
        this.drain();
        throw error;
      },
    );
  }

  /** Turns an admission into a task, or into the rejection it calls for. */
  private admitted(user: UserHandle, s: Submission, r: AdmitResult, now: number, onStarted: (() => void) | undefined): Promise<unknown> {
    const profile = r.profile;
    if (profile === undefined) return Promise.reject(denial(user.userId, r, s.cost, undefined, now));
    const stats = this.statsOf(profile);
    stats.submitted++;
    const verdict = r.verdict;
    if (verdict !== Verdict.ALLOWED && verdict !== Verdict.QUEUED) return Promise.reject(denial(user.userId, r, s.cost, stats, now));
    const job = new Job(user.userId, user, s.name, s.payload, s.fn, s.cost, s.signal, s.timeoutMs, s.priority);
    job.id = s.taskId;
    job.profile = profile;
    job.stats = stats;
    job.quota = s.cost;
    job.period = r.period;
    job.admittedAt = now;
    if (verdict === Verdict.ALLOWED && r.receiptTat >= 0) job.taken = { tat: r.receiptTat, epoch: r.receiptEpoch, refunds: r.receiptRefunds };
    const waitMs = r.retryAfterMs;
    const promise = new Promise<unknown>((resolve, reject) => {
      job.resolve = resolve;
      job.reject = reject;
    });
    this.live.add(job);
    // Refusals decided after the store admitted: CANCELED, and the charge goes back by the rule.
    // An admission in flight when close() began: it runs if the close drains.
    if (this.closing && !this.draining) this.end(job, shuttingDown());
    else if (s.fn === undefined && profile.pool.filename === undefined) {
      this.end(job, invalidArgument(`task ${show(s.name)}: profile ${show(profile.name)} has no pool.filename to run named tasks`));
    } else if (s.signal?.aborted) this.end(job, aborted(s.signal.reason));
    else if (verdict === Verdict.ALLOWED && !this.scheduler(profile).hasRoom(job.userId, s.fn !== undefined, profile.pool.maxQueue)) {
      this.end(job, queueFull(profile.name, profile.pool.maxQueue));
    } else {
      job.onStart = onStarted;
      if (s.signal !== undefined) {
        job.onAbort = () => this.abort(job);
        // Stryker disable next-line ObjectLiteral,BooleanLiteral: a signal fires 'abort' once, and the listener is removed when the task ends
        s.signal.addEventListener('abort', job.onAbort, { once: true });
      }
      if (verdict === Verdict.ALLOWED) this.queue(job);
      else {
        job.bucket = r.bucket;
        // Admitted to wait at most maxWaitMs: past it, the line lets the task go (RATE_LIMITED).
        if (profile.maxWaitMs !== Infinity) job.deadline = this.ctx.clock() + profile.maxWaitMs;
        this.lifecycle.move(job, State.WAITING_RATE);
        this.lines.add(job, waitMs);
      }
    }
    return promise;
  }

  check(user: UserHandle, cost: number): Promise<Decision> {
    return this.checks.decide(user, cost, false, this.closing);
  }

  /** check(), with the user's profile, usage and quota figures of the same decision. */
  checkDetailed(user: UserHandle, cost: number): Promise<DetailedDecision> {
    return this.checks.decide(user, cost, true, this.closing) as Promise<DetailedDecision>;
  }

  peek(userId: string): Promise<PeekResult> {
    return this.checks.peek(userId);
  }

  // ---- rate line -------------------------------------------------------------------------

  /** Whether a job's cost still fits its profile's burst: throws when it does not. */
  private fits(job: Job): void {
    const profile = job.profile;
    // Stryker disable next-line BooleanLiteral: never thrown: admission and profileChanged leave no task whose cost exceeds its profile's burst
    if (job.cost > profile.rate.burst) throw costOverBurst(job.cost, profile.rate.burst, profile.name, true);
  }

  /**
   * Whether a job whose units were just taken may go on: throws for a cost over the burst, and
   * for a first attempt the queue has no room for (judged at its turn, when its units conform,
   * not before: a waiter behind the head never leaves for a queue that is full before its turn).
   */
  private ready(job: Job): void {
    this.fits(job);
    const profile = job.profile;
    if (job.attempt === 1 && !this.scheduler(profile).hasRoom(job.userId, job.fn !== undefined, profile.pool.maxQueue)) {
      throw queueFull(profile.name, profile.pool.maxQueue);
    }
  }

  /** A job's rate turn: refuses a job whose cost no longer fits, else takes its units if they conform (see conforming()). */
  private take(job: Job, receipt: { value: RateReceipt | undefined }): number | Promise<number> {
    this.fits(job);
    const wait = this.ctx.store.take(job.userId, job.cost, this.ctx.clock(), job.slot, receipt);
    if (typeof wait === 'number') return this.conforming(job, wait, receipt.value);
    return wait.then((ms) => this.conforming(job, ms, receipt.value));
  }

  /**
   * A wait the store gave; Infinity: the units can never conform (the profile changed
   * elsewhere). Units taken (0) for a job still waiting that may not go on (ready()) are given
   * back, and it leaves with the reason; for a job that left meanwhile the line gives them back.
   */
  private conforming(job: Job, ms: number, receipt: RateReceipt | undefined): number {
    if (ms === Infinity) throw costOverBurst(job.cost, job.profile.rate.burst, job.profile.name, true);
    if (ms === 0 && job.state === State.WAITING_RATE) {
      try {
        this.ready(job);
      } catch (error) {
        if (receipt !== undefined) this.untake(job, receipt);
        throw error;
      }
    }
    return ms;
  }

  /** Rate units to give back, gathered in this run of code (see untake). */
  private untakes: { job: Job; receipt: RateReceipt }[] | undefined = undefined;

  /**
   * Gives back rate units an attempt took and never used. Those given back in one run of code
   * (a close, an abort many tasks listen to) go in a microtask, latest charge first. A store
   * gives back exactly in any order (a bucket logs its refunds, see refund-log.ts), but its log
   * is bounded, and past it this order is the one that stays exact: each refund's slot then
   * lies before every slot given back before it.
   */
  private untake(job: Job, receipt: RateReceipt): void {
    if (this.ctx.store.refundRate === undefined) return;
    if (this.untakes === undefined) {
      this.untakes = [];
      this.settled(Promise.resolve().then(() => this.untakeAll()));
    }
    this.untakes.push({ job, receipt });
  }

  private async untakeAll(): Promise<void> {
    const refund = this.ctx.store.refundRate;
    const untakes = this.untakes ?? [];
    this.untakes = undefined;
    if (refund === undefined) return;
    // Within one bucket, later charges have later receipts (the TAT, then its leftover ticks).
    untakes.sort((a, b) => b.receipt.tat - a.receipt.tat || b.receipt.epoch - a.receipt.epoch);
    const now = this.ctx.clock();
    const calls: Promise<void>[] = [];
    for (const { job, receipt } of untakes) {
      try {
        const result = refund.call(this.ctx.store, job.userId, job.cost, receipt, now, job.slot);
        if (result instanceof Promise) calls.push(result.catch((error: unknown) => this.ctx.fault(error)));
      } catch (error) {
        this.ctx.fault(error);
      }
    }
    await Promise.all(calls);
  }

  // ---- scheduler and run -----------------------------------------------------------------

  /** The metrics of a profile (the last one asked for is kept at hand). */
  private statsOf(profile: Profile): ProfileStats {
    if (profile !== this.recent) this.remember(profile);
    return this.recentStats as ProfileStats;
  }

  /** The scheduler of a profile, created on first use (the last one asked for is kept at hand). */
  private scheduler(profile: Profile): Scheduler {
    if (profile !== this.recent) this.remember(profile);
    return this.recentScheduler as Scheduler;
  }

  private remember(profile: Profile): void {
    this.recent = profile;
    this.recentStats = this.ctx.metrics.profile(profile.name);
    this.recentScheduler = this.schedulerOf(profile);
  }

  private schedulerOf(profile: Profile): Scheduler {
    let scheduler = this.schedulers.get(profile.name);
    if (scheduler === undefined) {
      const created = new Scheduler(profile.pool.maxThreads, profile.pool.perUserConcurrency, this.ctx.clock, (job, now) => this.run(job, created, now));
      const stats = this.ctx.metrics.profile(profile.name);
      stats.queueDepth = () => created.queued;
      stats.running = () => created.running;
      this.schedulers.set(profile.name, created);
      scheduler = created;
    }
    return scheduler;
  }

  /** Units taken: to the profile's fair queue. */
  private queue(job: Job): void {
    this.lifecycle.move(job, State.QUEUED);
    this.scheduler(job.profile).enqueue(job);
  }

  private run(job: Job, scheduler: Scheduler, startedAt: number): void {
    if (job.attempt === 1) {
      job.stats.wait.observe((startedAt - job.admittedAt) / 1000);
      job.onStart?.();
    }
    this.lifecycle.move(job, State.RUNNING);
    this.runner.run(job, (ran: Job, result: RunResult) => {
      scheduler.finish(ran);
      // Read when the answer comes, synchronous or not: a synchronous task ran for as long as it took.
      this.settler.attempt(ran, result, startedAt, this.ctx.clock());
    });
  }

  /** Re-admits a job after its backoff: through the rate again (the rate line's own take), ahead of nothing. */
  private retry(job: Job): void {
    if (job.state !== State.RETRY_WAIT) return;
    job.attempt++;
    const key = bucketKey(job.profile, job.userId);
    job.bucket = key;
    if (this.lines.units.has(key)) {
      this.lifecycle.move(job, State.WAITING_RATE);
      this.lines.add(job, 0);
      return;
    }
    // Stryker disable next-line ObjectLiteral: value reads undefined either way
    const receipt: { value: RateReceipt | undefined } = { value: undefined };
    const go = (ms: number): void => {
      if (job.state !== State.RETRY_WAIT) {
        if (ms === 0 && receipt.value !== undefined) this.untake(job, receipt.value);
        return;
      }
      if (ms === 0) {
        job.taken = receipt.value;
        this.queue(job);
      } else {
        this.lifecycle.move(job, State.WAITING_RATE);
        this.lines.add(job, ms);
      }
    };
    const fail = (error: unknown): void => this.storeLost(job, error);
    try {
      const wait = this.take(job, receipt);
      if (typeof wait === 'number') go(wait);
      else wait.then(go, fail);
    } catch (error) {
      fail(error);
    }
  }

  // ---- leaving ---------------------------------------------------------------------------

  /**
   * Ends a task that is not running with `error`: takes it out of whichever stage holds it and
   * moves it to CANCELED (which refunds by the rule), then rejects its caller.
   */
  private end(job: Job, error: TaskvalveError): void {
    const state = job.state;
    if (isTerminal(state)) return;
    if (state === State.RUNNING) {
      this.stop(job, error);
      return;
    }
    const reason = error.code.toLowerCase();
    if (!this.lifecycle.move(job, State.CANCELED, reason)) return;
    this.withdraw(job, state);
    const stats = job.stats;
    if (reason in stats.rejected) stats.rejected[reason as RejectReason]++;
    if (this.report !== undefined && reason === 'shutting_down') this.report.rejected++;
    this.finish(job, false, error, false);
  }

  /**
   * The store failed a task's rate turn. A first attempt never ran: it is CANCELED (refunded). A
   * retry ran before: it is FAILED with its last attempt's error, dead-lettered.
   */
  private storeLost(job: Job, error: unknown): void {
    const state = job.state;
    const failure = storeFailed(error);
    if (failure.code !== ErrorCode.STORE_UNAVAILABLE || job.lastError === undefined || (state !== State.RETRY_WAIT && state !== State.WAITING_RATE)) {
      this.end(job, failure);
      return;
    }
    this.settler.retryLost(job, failure, this.ctx.clock());
    this.withdraw(job, state);
  }

  /** Takes a task that has just left `state` (for a terminal one) out of the stage that held it. */
  private withdraw(job: Job, state: State): void {
    if (state === State.WAITING_RATE) this.lines.remove(job);
    else if (state === State.QUEUED) this.scheduler(job.profile).withdraw(job);
    else if (state === State.RETRY_WAIT) job.timer?.cancel();
  }

  /** Stops a running task now: its caller gets `error`, its slot is freed when the run really ends. */
  private stop(job: Job, error: TaskvalveError): void {
    if (!this.lifecycle.move(job, State.CANCELED, error.code.toLowerCase())) return;
    job.stats.completed.aborted++;
    job.stop?.stop(error);
    this.finish(job, false, error, false);
  }

  /**
   * The caller's signal fired. Its listener stays until the caller is answered: an abort that
   * reaches a task already ended (its dead letter being stored) changes nothing and is counted.
   */
  private abort(job: Job): void {
    if (isTerminal(job.state)) {
      job.stats.lateEvents++;
      return;
    }
    // Stryker disable next-line OptionalChaining: abort() is called only by the listener on the task's signal
    this.end(job, aborted(job.signal?.reason));
  }

  /**
   * Answers the caller, once. During close() every task is counted once: one the close rejects
   * or abandons (SHUTTING_DOWN) as such, any other as completed (by running, or by its caller's
   * abort). `ran`: the answer is what running the task came to.
   */
  private finish(job: Job, ok: boolean, value: unknown, ran: boolean): void {
    if (!this.live.delete(job)) return;
    if (job.onAbort !== undefined) {
      // Stryker disable next-line OptionalChaining: onAbort is set only for a task with a signal
      job.signal?.removeEventListener('abort', job.onAbort);
      job.onAbort = undefined;
    }
    // Stryker disable next-line OptionalChaining: an answer that is not what running came to (ran false) is always an error
    if (this.report !== undefined && (ran || (value as TaskvalveError | undefined)?.code !== ErrorCode.SHUTTING_DOWN)) this.report.completed++;
    if (ok) job.resolve(value);
    else job.reject(value);
    this.drain();
  }

  private drain(): void {
    if (this.live.size === 0 && this.admitting === 0) this.drained?.();
  }

  /** A store call whose answer nobody awaits (a refund): its failure is a fault; close() waits for it. */
  private settled(result: void | Promise<void>): void {
    if (!(result instanceof Promise)) return;
    const call = result.catch((error: unknown) => this.ctx.fault(error));
    this.calls.add(call);
    // Stryker disable next-line ArrowFunction: a settled call left in the set only costs memory: close() finds it settled at once
    void call.then(() => this.calls.delete(call));
  }

  /** Ends a user's tasks that have not started (a subscription canceled or deleted). */
  rejectWaiting(userId: string, error: TaskvalveError): void {
    for (const job of this.live.snapshot()) {
      if (job.userId !== userId || job.started) continue;
      const state = job.state;
      if (state === State.WAITING_RATE || state === State.QUEUED) this.end(job, error);
    }
  }

  /**
   * A user moved to another profile: their tasks waiting for a turn or a retry follow it. A
   * cost above the new burst ends the task (INVALID_ARGUMENT, refunded by the rule); the rate
   * lines concerned decide their heads' times anew.
   */
  profileChanged(userId: string, profile: Profile): void {
    const touched = new Set<string>();
    for (const job of this.live.snapshot()) {
      if (job.userId !== userId) continue;
      const state = job.state;
      if (state !== State.WAITING_RATE && state !== State.RETRY_WAIT) continue;
      job.stats = this.statsOf(profile);
      if (state === State.RETRY_WAIT) {
        job.profile = profile;
        if (job.cost > profile.rate.burst) this.end(job, costOverBurst(job.cost, profile.rate.burst, profile.name, true));
        continue;
      }
      touched.add(job.bucket);
      if (job.cost > profile.rate.burst) {
        job.profile = profile;
        this.end(job, costOverBurst(job.cost, profile.rate.burst, profile.name, true));
        continue;
      }
      const key = bucketKey(profile, userId);
      if (key !== job.bucket) {
        this.lines.remove(job); // still WAITING_RATE: leaves its old line, joins the new one
        job.profile = profile;
        job.bucket = key;
        this.lines.add(job, 0);
        touched.add(key);
      } else job.profile = profile;
    }
    for (const key of touched) this.lines.refresh(key);
  }

  // ---- close -----------------------------------------------------------------------------

  /** Stops admission, drains or rejects what waits, waits for what runs, then stops the pools. */
  async close(drain: boolean, timeoutMs: number): Promise<CloseReport> {
    this.closing = true;
    this.draining = drain;
    const report: CloseReport = { completed: 0, rejected: 0, abandoned: 0 };
    this.report = report;
    if (!drain) this.escalate();
    if (this.live.size > 0 || this.admitting > 0) {
      let timer: Timer | undefined;
      await new Promise<void>((resolve) => {
        this.drained = resolve;
        timer = new Timer(timeoutMs, resolve);
      });
      // Stryker disable next-line OptionalChaining: the promise's executor runs at once, so the timer is set
      timer?.cancel();
      this.drained = undefined;
    }
    // Past the drain (or its timeout) nothing new starts: an admission the store answers from
    // now on is SHUTTING_DOWN, and its charge goes back.
    this.draining = false;
    for (const job of this.live.snapshot()) {
      if (job.state === State.RUNNING) {
        report.abandoned++;
        this.stop(job, shuttingDown());
      } else if (isTerminal(job.state)) {
        // FAILED, its dead letter still in flight in the store: the caller hears its own error now.
        this.finish(job, false, job.failure ?? shuttingDown(), true);
      } else this.end(job, shuttingDown());
    }
    this.lines.clear();
    await this.runner.close();
    // Refunds sent for what never started land before close() resolves (within the timeout).
    if (this.calls.size > 0) {
      let timer: Timer | undefined;
      await Promise.race([Promise.all([...this.calls]), new Promise<void>((resolve) => (timer = new Timer(timeoutMs, resolve)))]);
      // Stryker disable next-line OptionalChaining: the promise's executor runs at once, so the timer is set
      timer?.cancel();
    }
    // The report is what close() saw: an admission the store answers later (SHUTTING_DOWN) is not in it.
    this.report = undefined;
    return report;
  }

  /** Closing without drain (or a second close that asks for it): what has not started is rejected now. */
  escalate(): void {
    this.draining = false;
    for (const job of this.live.snapshot()) {
      if (job.state !== State.RUNNING && !isTerminal(job.state)) this.end(job, shuttingDown());
    }
  }
}
