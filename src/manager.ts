/** The Manager: profiles, subscriptions, limiter handles, the dead-letter queue, and close(). */
import { EventEmitter } from 'node:events';
import { Registry } from 'prom-client';
import {
  ErrorCode,
  TaskvalveError,
  invalidArgument,
  invalidConfig,
  profileExists,
  profileNotFound,
  show,
  shuttingDown,
  subscriptionInactive,
  subscriptionNotFound,
  unknownOptions,
} from './errors.js';
import { readOptions, rejectUnknownOptions, unknownKeys } from './util/options.js';
import { DeadLetterQueue } from './dlq.js';
import { Limiter } from './limiter.js';
import { Metrics } from './metrics.js';
import type { TaskEvent } from './task/lifecycle.js';
import { Pipeline, type CloseReport } from './task/pipeline.js';
import { EndedSweep } from './sweep.js';
import { resolveProfile, sameBucket, type Profile, type ProfileConfig } from './profile.js';
export { DeadLetterQueue };
import { MemoryStore } from './store/memory.js';
import type { FailedTask, Store, Subscription } from './store/store.js';

/** A pino-compatible logger. */
export interface Logger {
  /** Routine news. */
  info(obj: unknown, msg?: string): void;
  /** Something an operator should look at. */
  warn(obj: unknown, msg?: string): void;
  /** A fault with no caller to reject. */
  error(obj: unknown, msg?: string): void;
}

/** Options of the {@link Manager}. */
export interface ManagerOptions {
  /** Where state lives; default a new MemoryStore (embedded, one process). */
  store?: Store;
  /** prom-client registry; default a new one per Manager. */
  registry?: Registry;
  /** Prefix of every metric name; default 'taskvalve_'. */
  metricsPrefix?: string;
  /** Milliseconds since the epoch; default Date.now. Must advance with the timers. */
  clock?: () => number;
  /** Default: silent. */
  logger?: Logger;
  /** When the store is unreachable; only 'fail-closed' applies to the embedded store. */
  onStoreUnavailable?: 'fail-closed' | 'fail-open' | 'local';
  /**
   * Canceled and expired subscriptions are deleted this long (ms) after they end, by an
   * incremental background sweep (a 'deleted' subscription event each); default 30 days.
   */
  endedRetentionMs?: number;
}

/** Options of {@link Manager.close}. */
export interface CloseOptions {
  /** true (default): every admitted task runs to its end; false: tasks not started are rejected now. */
  drain?: boolean;
  /** How long to wait for tasks to end (ms); default 30,000. Those still running are abandoned. */
  timeoutMs?: number;
}

/** The events a Manager emits, and what each listener receives. */
export interface ManagerEvents {
  /** A subscription changed. */
  subscription: SubscriptionEvent;
  /** A task moved from one lifecycle state to another. */
  task: TaskEvent;
  /** A task was stored in the dead-letter queue. */
  'dead-letter': FailedTask;
  /** A fault with no caller to reject (a thrown non-Error arrives wrapped in an Error). */
  error: Error;
}

const MANAGER_OPTIONS = ['store', 'registry', 'metricsPrefix', 'clock', 'logger', 'onStoreUnavailable', 'endedRetentionMs'] as const;
const SUBSCRIBE_OPTIONS = ['durationMs', 'startsAt', 'endsAt', 'quota', 'resetUsage'] as const;
const CLOSE_OPTIONS = ['drain', 'timeoutMs'] as const;

/** What {@link Manager.getProfile} tells of a registered profile. */
export interface ProfileView {
  /** The profile's name. */
  readonly name: string;
  /** The rate limit, defaults filled in. */
  readonly rate: {
    /** Units per interval. */
    readonly limit: number;
    /** The interval, in ms. */
    readonly intervalMs: number;
    /** The bucket's capacity in units. */
    readonly burst: number;
    /** The shared bucket's key; undefined: one bucket per user. */
    readonly shared: string | undefined;
  };
  /** Null: no quota. */
  readonly quota: {
    /** Units per period (or for life). */
    readonly limit: number;
    /** The period in ms; null: a lifetime quota. */
    readonly periodMs: number | null;
    /** 'hard' refuses past the limit; 'soft' admits and counts overage. */
    readonly kind: 'hard' | 'soft';
  } | null;
}

/** Options of {@link Manager.subscribe}. */
export interface SubscribeOptions {
  /** Length of the subscription from its start; neither this nor endsAt: no end. */
  durationMs?: number;
  /** Default: now. */
  startsAt?: Date | number;
  /** When it ends (a Date or ms); give this or durationMs, not both. */
  endsAt?: Date | number;
  /** Per-user override of the profile's quota limit; null: the profile's. */
  quota?: number | null;
  /** Re-subscribing keeps the period's usage unless this is true. */
  resetUsage?: boolean;
}

/** A subscription change, as the `subscription` event tells it. */
export interface SubscriptionEvent {
  /** The subscriber. */
  userId: string;
  /** What happened. */
  event: 'created' | 'extended' | 'canceled' | 'quota_updated' | 'usage_reset' | 'profile_changed' | 'expired' | 'deleted';
  /** The subscription after the change (absent for 'expired' and 'deleted'). */
  subscription?: Subscription;
}

const SILENT: Logger = { info() {}, warn() {}, error() {} };
const DEFAULT_ENDED_RETENTION_MS = 30 * 24 * 3_600_000;
const MAX_USER_ID = 4096;
const MAX_HANDLES = 10_000;

function checkUserId(userId: unknown): asserts userId is string {
  if (typeof userId !== 'string' || userId.length === 0 || userId.length > MAX_USER_ID) {
    throw invalidArgument(`userId must be a non-empty string of at most ${MAX_USER_ID} characters, got ${show(userId)}`);
  }
}

function checkInt(name: string, value: unknown, min: number): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < min) {
    throw invalidArgument(`${name} must be an integer >= ${min}, got ${show(value)}`);
  }
  return value;
}

/** The largest time a Date holds (ms from the epoch, either way). */
const MAX_DATE_MS = 8.64e15;

function time(name: string, value: unknown): number {
  let ms: unknown;
  try {
    ms = value instanceof Date ? value.getTime() : value;
  } catch (error) {
    throw invalidArgument(`${name} could not be read: ${show(error)}`, error);
  }
  if (typeof ms !== 'number' || !Number.isFinite(ms) || Math.abs(ms) > MAX_DATE_MS) {
    throw invalidArgument(`${name} must be a valid Date or a number of ms within what a Date holds (±${MAX_DATE_MS}), got ${show(value)}`);
  }
  return ms;
}

/** Runs `fn` and turns a synchronous throw into a rejected promise. */
async function attempt<T>(fn: () => T | Promise<T>): Promise<T> {
  return fn();
}

/** close()'s options, checked (throws INVALID_ARGUMENT, also for options that cannot be read). */
function closeOptions(options: CloseOptions): { drain: boolean; timeoutMs: number } {
  if (options === null || typeof options !== 'object') throw invalidArgument(`close options must be an object, got ${show(options)}`);
  let drain: unknown;
  let timeoutMs: unknown;
  let unknown: string[];
  try {
    unknown = unknownKeys(options, CLOSE_OPTIONS);
    drain = options.drain === undefined ? true : options.drain;
    timeoutMs = options.timeoutMs === undefined ? 30_000 : options.timeoutMs;
  } catch (error) {
    throw invalidArgument(`close options could not be read: ${show(error)}`, error);
  }
  if (unknown.length > 0) throw unknownOptions('close', unknown, CLOSE_OPTIONS);
  if (typeof drain !== 'boolean') throw invalidArgument(`drain must be a boolean, got ${show(drain)}`);
  if (typeof timeoutMs !== 'number' || !Number.isSafeInteger(timeoutMs) || timeoutMs < 0) {
    throw invalidArgument(`timeoutMs must be a non-negative integer, got ${show(timeoutMs)}`);
  }
  return { drain, timeoutMs };
}

/**
 * Governs work for many users: register profiles, subscribe users, then
 * `await manager.getLimiter(userId).submit(task)`.
 */
export class Manager extends EventEmitter {
  /** The prom-client registry: `await manager.registry.metrics()` is the scrape body. */
  readonly registry: Registry;
  /** Tasks that failed their last attempt. */
  readonly dlq: DeadLetterQueue;
  private readonly store: Store;
  private readonly clock: () => number;
  private readonly logger: Logger;
  private readonly metrics: Metrics;
  private readonly profiles = new Map<string, Profile>();
  private readonly pipeline: Pipeline;
  private readonly handles = new Map<string, Limiter>();
  private closed: Promise<CloseReport> | undefined;
  /** Events waiting to be emitted once the decision that caused them is complete. */
  private readonly queued: Array<[keyof ManagerEvents, unknown]> = [];
  private flushing = false;
  /** Set while someone listens to 'task': transitions then build events, else they cost nothing. */
  private taskSink: ((event: TaskEvent) => void) | undefined = undefined;
  private readonly sweep: EndedSweep;

  constructor(options: ManagerOptions = {}) {
    super();
    if (options === null || typeof options !== 'object') throw invalidConfig('Manager', 'options', options, 'an object');
    const read = readOptions(options, MANAGER_OPTIONS, (error) => new TaskvalveError(ErrorCode.INVALID_CONFIG, `Manager options could not be read: ${show(error)}`, { cause: error }));
    rejectUnknownOptions('Manager', options, MANAGER_OPTIONS);
    options = read.values;
    const policy = options.onStoreUnavailable ?? 'fail-closed';
    if (!['fail-closed', 'fail-open', 'local'].includes(policy)) {
      throw invalidConfig('Manager', 'onStoreUnavailable', policy, "'fail-closed', 'fail-open' or 'local'");
    }
    if (policy !== 'fail-closed' && (options.store === undefined || options.store instanceof MemoryStore)) {
      throw invalidConfig('Manager', 'onStoreUnavailable', policy, "'fail-closed' with the embedded store (it is never unreachable)");
    }
    if (options.store !== undefined && (options.store === null || typeof (options.store as Partial<Store>).admit !== 'function')) {
      throw invalidConfig('Manager', 'store', options.store, 'a Store (a MemoryStore or a RedisStore)');
    }
    if (options.clock !== undefined && typeof options.clock !== 'function') throw invalidConfig('Manager', 'clock', options.clock, 'a function returning ms');
    const prefix = options.metricsPrefix ?? 'taskvalve_';
    if (typeof prefix !== 'string' || !/^[a-zA-Z_:][a-zA-Z0-9_:]*$/.test(prefix)) {
      throw invalidConfig('Manager', 'metricsPrefix', prefix, 'a valid Prometheus metric name prefix');
    }
    const endedRetentionMs = options.endedRetentionMs === undefined ? DEFAULT_ENDED_RETENTION_MS : options.endedRetentionMs;
    if (!Number.isSafeInteger(endedRetentionMs) || endedRetentionMs < 0) {
      throw invalidConfig('Manager', 'endedRetentionMs', endedRetentionMs, 'a non-negative integer (ms)');
    }
    this.store = options.store ?? new MemoryStore();
    this.clock = options.clock ?? Date.now;
    const logger = options.logger === undefined ? SILENT : options.logger;
    if (logger === null || typeof logger !== 'object' || !(['info', 'warn', 'error'] as const).every((level) => typeof logger[level] === 'function')) {
      throw invalidConfig('Manager', 'logger', logger, 'an object with info, warn and error functions (pino-compatible)');
    }
    this.logger = logger;
    this.registry = options.registry ?? new Registry();
    this.metrics = new Metrics(this.registry, prefix);
    this.store.attach({
      // Told from inside the store's decision: emitted once that decision is complete.
      expired: (userId, profileName) => this.tell(userId, profileName, 'expired', undefined, true),
      fault: (error) => this.fault(error),
      warn: (message, error) => {
        this.log('warn', error, message);
        this.fault(error);
      },
      onUnavailable: policy,
    });
    this.pipeline = new Pipeline({
      store: this.store,
      clock: this.clock,
      metrics: this.metrics,
      fault: (error) => this.fault(error),
      deadLetter: (entry) => this.notify('dead-letter', entry),
      taskListener: () => this.taskSink,
    });
    this.dlq = new DeadLetterQueue(this.store, this.clock, {
      replay: (entry, onStarted) => this.replay(entry, onStarted),
      bounds: (entry) => this.profiles.get(entry.profileName)?.dlq,
    });
    this.on('newListener', (event: string | symbol) => {
      if (event === 'task') this.taskSink = (e) => this.later('task', e);
    });
    this.on('removeListener', (event: string | symbol) => {
      if (event === 'task' && this.listenerCount('task') === 0) this.taskSink = undefined;
    });
    this.sweep = new EndedSweep({
      store: this.store,
      clock: this.clock,
      retentionMs: endedRetentionMs,
      deleted: (userId, profileName) => this.deleted(userId, profileName),
      fault: (error) => this.fault(error),
    });
    this.sweep.start();
  }

  /** Listens to one of the manager's {@link ManagerEvents}. */
  override on<K extends keyof ManagerEvents>(event: K, listener: (payload: ManagerEvents[K]) => void): this;
  override on(event: 'newListener' | 'removeListener', listener: (event: string | symbol, listener: (...args: unknown[]) => void) => void): this;
  override on(event: string | symbol, listener: (...args: never[]) => void): this {
    return super.on(event, listener as (...args: unknown[]) => void);
  }

  /** Listens once to one of the manager's {@link ManagerEvents}. */
  override once<K extends keyof ManagerEvents>(event: K, listener: (payload: ManagerEvents[K]) => void): this;
  override once(event: string | symbol, listener: (...args: never[]) => void): this {
    return super.once(event, listener as (...args: unknown[]) => void);
  }

  /** Stops listening. */
  override off<K extends keyof ManagerEvents>(event: K, listener: (payload: ManagerEvents[K]) => void): this;
  override off(event: string | symbol, listener: (...args: never[]) => void): this {
    return super.off(event, listener as (...args: unknown[]) => void);
  }

  /**
   * Calls each listener of `event`; one that throws does not stop the others nor the operation
   * that emitted: its error goes to 'error' (or the logger, for an 'error' listener).
   */
  private notify(event: keyof ManagerEvents, payload: unknown): void {
    for (const listener of this.rawListeners(event) as Array<(payload: unknown) => void>) {
      try {
        listener.call(this, payload);
      } catch (error) {
        if (event === 'error') this.log('error', error, 'taskvalve: an error listener threw');
        else this.fault(error);
      }
    }
  }

  /** Emits once the current decision is complete (in a microtask), in order. */
  private later(event: keyof ManagerEvents, payload: unknown): void {
    this.queued.push([event, payload]);
    if (this.flushing) return;
    this.flushing = true;
    queueMicrotask(() => {
      for (let i = 0; i < this.queued.length; i++) {
        const [name, value] = this.queued[i]!;
        this.notify(name, value);
      }
      this.queued.length = 0;
      this.flushing = false;
    });
  }

  /** Registers a profile; validates every field (INVALID_CONFIG naming it), PROFILE_EXISTS on a duplicate. */
  registerProfile(name: string, config: ProfileConfig): void {
    if (typeof name !== 'string' || name.length === 0) throw invalidConfig('registerProfile', 'name', name, 'a non-empty string');
    if (this.profiles.has(name)) throw profileExists(name);
    let profile: Profile;
    try {
      profile = resolveProfile(name, config);
    } catch (error) {
      if (error instanceof TaskvalveError) throw error;
      throw new TaskvalveError(ErrorCode.INVALID_CONFIG, `profile ${show(name)}: its config could not be read: ${show(error)}`, { cause: error });
    }
    if (profile.shared !== undefined) {
      for (const other of this.profiles.values()) {
        if (other.shared === profile.shared && !sameBucket(other, profile)) {
          throw invalidConfig(
            `profile ${JSON.stringify(name)}`,
            'rate',
            config.rate,
            `the rate and burst that profile ${JSON.stringify(other.name)} gives shared bucket ${JSON.stringify(profile.shared)} (limit ${other.rate.limit} per ${other.rate.intervalMs} ms, burst ${other.rate.burst})`,
          );
        }
      }
    }
    const defined = this.store.defineProfile(profile);
    if (defined instanceof Promise) defined.catch((error: unknown) => this.fault(error));
    this.profiles.set(name, profile);
  }

  /**
   * A registered profile's rate and quota, defaults filled in (a frozen copy), or undefined if
   * no profile has that name. For callers that describe a profile, e.g. the HTTP edge's headers.
   */
  getProfile(name: string): ProfileView | undefined {
    const p = this.profiles.get(name);
    if (p === undefined) return undefined;
    const { limit, intervalMs, burst } = p.rate;
    const quota =
      p.quotaLimit === null
        ? null
        : Object.freeze({ limit: p.quotaLimit, periodMs: p.quotaPeriodMs > 0 ? p.quotaPeriodMs : null, kind: p.quotaHard ? ('hard' as const) : ('soft' as const) });
    return Object.freeze({ name: p.name, rate: Object.freeze({ limit, intervalMs, burst, shared: p.shared }), quota });
  }

  private profile(name: unknown): Profile {
    const profile = typeof name === 'string' ? this.profiles.get(name) : undefined;
    if (profile === undefined) throw profileNotFound(String(name));
    return profile;
  }

  /** Subscribes a user (or re-subscribes: new profile and dates, same period usage unless resetUsage). */
  subscribe(userId: string, profileName: string, options: SubscribeOptions = {}): Promise<Subscription> {
    return attempt(async () => {
      checkUserId(userId);
      const profile = this.profile(profileName);
      if (options === null || typeof options !== 'object') throw invalidArgument(`subscribe options must be an object, got ${show(options)}`);
      const read = readOptions(options, SUBSCRIBE_OPTIONS, (error) => invalidArgument(`subscribe options could not be read: ${show(error)}`, error));
      if (read.unknown.length > 0) throw unknownOptions('subscribe', read.unknown, SUBSCRIBE_OPTIONS);
      options = read.values;
      const startsAt = options.startsAt === undefined ? undefined : time('startsAt', options.startsAt);
      if (options.durationMs !== undefined && options.endsAt !== undefined) throw invalidArgument('give durationMs or endsAt, not both');
      const durationMs = options.durationMs === undefined ? undefined : checkInt('durationMs', options.durationMs, 1);
      const endsAt = options.endsAt === undefined ? undefined : time('endsAt', options.endsAt);
      if (durationMs !== undefined) time('startsAt + durationMs', (startsAt ?? this.clock()) + durationMs);
      const quota = options.quota === undefined || options.quota === null ? options.quota : checkInt('quota', options.quota, 0);
      if (options.resetUsage !== undefined && typeof options.resetUsage !== 'boolean') throw invalidArgument(`resetUsage must be a boolean, got ${show(options.resetUsage)}`);
      const input = { startsAt, endsAt, durationMs, quota, resetUsage: options.resetUsage === true };
      const sub = await this.store.subscribe(userId, profile, input, this.clock());
      // A re-subscription may move the user to another profile: their waiting tasks follow it.
      this.pipeline.profileChanged(userId, profile);
      this.tell(userId, profile.name, 'created', sub);
      return sub;
    });
  }

  /** The user's subscription, or undefined if there is none. */
  getSubscription(userId: string): Promise<Subscription | undefined> {
    return attempt(() => {
      checkUserId(userId);
      return this.store.getSubscription(userId, this.clock());
    });
  }

  /** Extends from endsAt if still ahead, else from now; no end stays no end; canceled stays canceled. */
  extendSubscription(userId: string, ms: number): Promise<Subscription> {
    return this.mutate(userId, 'extended', async () => {
      checkInt('ms', ms, 1);
      // The new end must be a time a Date holds: from endsAt while ahead, else from now.
      const sub = await this.store.getSubscription(userId, this.clock());
      if (sub !== undefined && sub.endsAt !== null) time('the extended end', Math.max(sub.endsAt.getTime(), this.clock()) + ms);
      return this.store.extendSubscription(userId, ms, this.clock());
    });
  }

  /** Cancels; the user's tasks not yet started are rejected SUBSCRIPTION_INACTIVE and refunded. */
  async cancelSubscription(userId: string): Promise<Subscription> {
    const sub = await this.mutate(userId, 'canceled', () => this.store.cancelSubscription(userId, this.clock()));
    this.pipeline.rejectWaiting(userId, subscriptionInactive(userId));
    return sub;
  }

  /**
   * Removes everything the store holds for the user (subscription, usage, own bucket); the
   * user's tasks not yet started are rejected SUBSCRIPTION_INACTIVE and refunded. Resolves true
   * if the user had a subscription.
   */
  deleteSubscription(userId: string): Promise<boolean> {
    return attempt(async () => {
      checkUserId(userId);
      const profileName = await this.store.deleteSubscription(userId, this.clock());
      this.deleted(userId, profileName);
      return profileName !== undefined;
    });
  }

  /** A user's subscription is gone (deleted, or swept after it ended): nothing of theirs waits on. */
  private deleted(userId: string, profileName: string | undefined): void {
    this.handles.delete(userId);
    this.pipeline.rejectWaiting(userId, subscriptionInactive(userId));
    if (profileName !== undefined) this.tell(userId, profileName, 'deleted');
  }

  /**
   * Moves a user to another profile (upgrade or downgrade); usage is kept. Their tasks waiting
   * for a rate turn or a retry follow the new profile; one whose cost exceeds the new burst ends
   * INVALID_ARGUMENT, refunded.
   */
  async changeProfile(userId: string, profileName: string): Promise<Subscription> {
    let profile: Profile | undefined;
    const sub = await this.mutate(userId, 'profile_changed', () => {
      profile = this.profile(profileName);
      return this.store.changeProfile(userId, profile, this.clock());
    });
    if (profile !== undefined) this.pipeline.profileChanged(userId, profile);
    return sub;
  }

  /** Sets the user's usage in the current period back to 0. */
  resetUsage(userId: string): Promise<Subscription> {
    return this.mutate(userId, 'usage_reset', () => this.store.resetUsage(userId, this.clock()));
  }

  /** Sets the per-user quota limit; null returns to the profile's. */
  updateSubscriptionQuota(userId: string, quota: number | null): Promise<Subscription> {
    return this.mutate(userId, 'quota_updated', () =>
      this.store.setQuota(userId, quota === null ? null : checkInt('quota', quota, 0), this.clock()),
    );
  }

  private mutate(
    userId: string,
    event: SubscriptionEvent['event'],
    change: () => Subscription | undefined | Promise<Subscription | undefined>,
  ): Promise<Subscription> {
    return attempt(async () => {
      checkUserId(userId);
      const sub = await change();
      if (sub === undefined) throw subscriptionNotFound(userId);
      this.tell(userId, sub.profileName, event, sub);
      return sub;
    });
  }

  /** Counts and emits a subscription change; `later`: once the store's decision is complete. */
  private tell(userId: string, profileName: string, event: SubscriptionEvent['event'], subscription?: Subscription, later = false): void {
    this.metrics.profile(profileName).subscriptionEvent(event);
    const payload: SubscriptionEvent = subscription === undefined ? { userId, event } : { userId, event, subscription };
    if (later) this.later('subscription', payload);
    else this.notify('subscription', payload);
  }

  /**
   * @internal The HTTP edge's decision counts of a profile ('' when none is known), by outcome:
   * the `http_requests_total` series.
   */
  httpOutcomesOf(profile: string): Map<string, number> {
    return this.metrics.httpOutcomesOf(profile);
  }

  /** A cheap handle for one user (from a bounded cache); every call checks the subscription anew. */
  getLimiter(userId: string): Limiter {
    let limiter = this.handles.get(userId);
    if (limiter === undefined) {
      checkUserId(userId);
      limiter = new Limiter(this.pipeline, userId);
      // Bounded: starting afresh is O(1) amortised (deleting the oldest key of a Map is not).
      if (this.handles.size >= MAX_HANDLES) this.handles.clear();
      this.handles.set(userId, limiter);
    }
    return limiter;
  }

  /** Resubmits a claimed dead letter's task; `onStarted` once its first attempt starts. */
  private replay(entry: FailedTask, onStarted: () => void): Promise<unknown> {
    if (this.closed !== undefined) return Promise.reject(shuttingDown());
    if (typeof entry.task !== 'function' && 'inline' in entry.task) {
      return Promise.reject(invalidArgument(`dead letter ${entry.id} is an inline task (${entry.task.description}); a function cannot travel between processes, so it can only be replayed by the process where it failed`));
    }
    return this.pipeline.submit(this.getLimiter(entry.userId), entry.task, { cost: entry.cost }, onStarted);
  }

  /** A fault with no caller: the 'error' event if someone listens, else the logger. */
  private fault(error: unknown): void {
    if (this.listenerCount('error') > 0) this.notify('error', error instanceof Error ? error : new Error(show(error), { cause: error }));
    else this.log('error', error, 'taskvalve: fault with no caller');
  }

  /** Writes to the logger; a logger that throws has nowhere to report to, and is never let crash the process. */
  private log(level: 'warn' | 'error', error: unknown, message: string): void {
    try {
      this.logger[level]({ err: error }, message);
    } catch {
      // The logger failed: nothing more can be told.
    }
  }

  /**
   * Stops admission (SHUTTING_DOWN from then on); with drain, every admitted task runs to its
   * end within timeoutMs, else tasks not started are rejected and refunded; then waits for
   * running tasks up to the timeout and destroys the pools. Never closes a client it was given.
   * Last, the store settles within what is left of the timeout what it owes its backend (a
   * RedisStore under 'local': what it admitted while Redis was unreachable); the report's
   * `owed` counts the units of usage it could not charge.
   */
  close(options: CloseOptions = {}): Promise<CloseReport> {
    let drain: boolean;
    let timeoutMs: number;
    try {
      ({ drain, timeoutMs } = closeOptions(options));
    } catch (error) {
      return Promise.reject(error);
    }
    if (this.closed === undefined) {
      this.sweep.stop();
      const until = performance.now() + timeoutMs;
      this.closed = this.pipeline.close(drain, timeoutMs).then(async (report) => {
        // What the store still owes its backend is settled within what is left of the timeout.
        const store = await this.store.close?.(Math.max(0, Math.round(until - performance.now())));
        if (store !== undefined && store.owed > 0) report.owed = store.owed;
        this.metrics.unregister();
        return report;
      });
    } else if (!drain) {
      // A second close can escalate a draining one: what has not started is rejected now.
      this.pipeline.escalate();
    }
    return this.closed;
  }
}
