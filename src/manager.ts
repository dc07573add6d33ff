/** The Manager: profiles, subscriptions, limiter handles, the dead-letter queue, and close(). */
import { EventEmitter } from 'node:events';
import { Registry } from 'prom-client';
import {
  invalidArgument,
  invalidConfig,
  profileExists,
  profileNotFound,
  show,
  shuttingDown,
  subscriptionInactive,
  subscriptionNotFound,
} from './errors.js';
import { Limiter, Pipeline, type CloseReport, type Task } from './limiter.js';
import { Metrics } from './metrics.js';
import { EndedSweep } from './sweep.js';
import { resolveProfile, sameBucket, type Profile, type ProfileConfig } from './profile.js';
import { MemoryStore } from './store/memory.js';
import type { DlqQuery, FailedTask, Store, Subscription } from './store/store.js';

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

function time(name: string, value: unknown): number {
  const ms = value instanceof Date ? value.getTime() : value;
  if (typeof ms !== 'number' || !Number.isFinite(ms)) throw invalidArgument(`${name} must be a Date or a number of ms, got ${show(value)}`);
  return ms;
}

/** Runs `fn` and turns a synchronous throw into a rejected promise. */
async function attempt<T>(fn: () => T | Promise<T>): Promise<T> {
  return fn();
}

/**
 * The dead-letter queue: tasks that failed their last attempt, oldest first. Bounded per profile
 * by `dlq.maxEntries` and `dlq.retentionMs`.
 */
export class DeadLetterQueue {
  /** @internal */
  constructor(
    private readonly store: Store,
    private readonly clock: () => number,
    private readonly replayer: (entry: FailedTask) => Promise<unknown>,
  ) {}

  /** Entries, oldest first, optionally filtered. */
  list(query: DlqQuery = {}): Promise<FailedTask[]> {
    return attempt(() => {
      if (query.limit !== undefined) checkInt('limit', query.limit, 0);
      return this.store.dlqList(query, this.clock());
    });
  }

  /** One entry by id, or undefined. */
  get(id: string): Promise<FailedTask | undefined> {
    return attempt(() => this.store.dlqGet(id));
  }

  /** True if the entry existed. */
  remove(id: string): Promise<boolean> {
    return attempt(() => this.store.dlqRemove(id));
  }

  /** Resubmits the task through the full pipeline; the entry is removed once the replay is admitted. */
  async replay(id: string): Promise<unknown> {
    const entry = await this.store.dlqGet(id);
    if (entry === undefined) throw invalidArgument(`no dead letter with id ${show(id)}`);
    return this.replayer(entry);
  }
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
  private readonly sweep: EndedSweep;

  constructor(options: ManagerOptions = {}) {
    super();
    if (options === null || typeof options !== 'object') throw invalidConfig('Manager', 'options', options, 'an object');
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
    const endedRetentionMs = options.endedRetentionMs ?? DEFAULT_ENDED_RETENTION_MS;
    if (!Number.isSafeInteger(endedRetentionMs) || endedRetentionMs < 0) {
      throw invalidConfig('Manager', 'endedRetentionMs', endedRetentionMs, 'a non-negative integer (ms)');
    }
    this.store = options.store ?? new MemoryStore();
    this.clock = options.clock ?? (() => Date.now());
    this.logger = options.logger ?? SILENT;
    this.registry = options.registry ?? new Registry();
    this.metrics = new Metrics(this.registry, prefix);
    this.store.attach({
      expired: (userId, profileName) => this.tell(userId, profileName, 'expired'),
      fault: (error) => this.fault(error),
      warn: (message, error) => {
        this.logger.warn({ err: error }, message);
        this.fault(error);
      },
      onUnavailable: policy,
    });
    this.pipeline = new Pipeline({
      store: this.store,
      clock: this.clock,
      metrics: this.metrics,
      fault: (error) => this.fault(error),
      deadLetter: (entry) => this.emit('dead-letter', entry),
    });
    this.dlq = new DeadLetterQueue(this.store, this.clock, (entry) => this.replay(entry));
    this.sweep = new EndedSweep({
      store: this.store,
      clock: this.clock,
      retentionMs: endedRetentionMs,
      deleted: (userId, profileName) => this.deleted(userId, profileName),
      fault: (error) => this.fault(error),
    });
    this.sweep.start();
  }

  /** Registers a profile; validates every field (INVALID_CONFIG naming it), PROFILE_EXISTS on a duplicate. */
  registerProfile(name: string, config: ProfileConfig): void {
    if (typeof name !== 'string' || name.length === 0) throw invalidConfig('registerProfile', 'name', name, 'a non-empty string');
    if (this.profiles.has(name)) throw profileExists(name);
    const profile = resolveProfile(name, config);
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
      const startsAt = options.startsAt === undefined ? undefined : time('startsAt', options.startsAt);
      if (options.durationMs !== undefined && options.endsAt !== undefined) throw invalidArgument('give durationMs or endsAt, not both');
      const durationMs = options.durationMs === undefined ? undefined : checkInt('durationMs', options.durationMs, 1);
      const endsAt = options.endsAt === undefined ? undefined : time('endsAt', options.endsAt);
      const quota = options.quota === undefined || options.quota === null ? options.quota : checkInt('quota', options.quota, 0);
      if (options.resetUsage !== undefined && typeof options.resetUsage !== 'boolean') throw invalidArgument(`resetUsage must be a boolean, got ${show(options.resetUsage)}`);
      const input = { startsAt, endsAt, durationMs, quota, resetUsage: options.resetUsage === true };
      const sub = await this.store.subscribe(userId, profile, input, this.clock());
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
    return this.mutate(userId, 'extended', () => this.store.extendSubscription(userId, checkInt('ms', ms, 1), this.clock()));
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

  /** Moves a user to another profile (upgrade or downgrade); usage is kept. */
  changeProfile(userId: string, profileName: string): Promise<Subscription> {
    return this.mutate(userId, 'profile_changed', () => this.store.changeProfile(userId, this.profile(profileName), this.clock()));
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

  private tell(userId: string, profileName: string, event: SubscriptionEvent['event'], subscription?: Subscription): void {
    this.metrics.profile(profileName).subscriptionEvent(event);
    this.emit('subscription', subscription === undefined ? { userId, event } : { userId, event, subscription });
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

  private replay(entry: FailedTask): Promise<unknown> {
    if (this.closed !== undefined) return Promise.reject(shuttingDown());
    if (typeof entry.task !== 'function' && 'inline' in entry.task) {
      return Promise.reject(invalidArgument(`dead letter ${entry.id} is an inline task (${entry.task.description}); a function cannot travel between processes, so it can only be replayed by the process where it failed`));
    }
    // The entry goes once the replay is admitted; a refusal at admission keeps it.
    return this.pipeline.submit(this.getLimiter(entry.userId), entry.task as Task, { cost: entry.cost }, () => {
      const removed = this.store.dlqRemove(entry.id);
      if (removed instanceof Promise) removed.catch((error: unknown) => this.fault(error));
    });
  }

  /** A fault with no caller: the 'error' event if someone listens, else the logger. */
  private fault(error: unknown): void {
    if (this.listenerCount('error') > 0) this.emit('error', error);
    else this.logger.error({ err: error }, 'taskvalve: fault with no caller');
  }

  /**
   * Stops admission (SHUTTING_DOWN from then on); with drain, every admitted task runs to its
   * end within timeoutMs, else tasks not started are rejected and refunded; then waits for
   * running tasks up to the timeout and destroys the pools. Never closes a client it was given.
   */
  close(options: { drain?: boolean; timeoutMs?: number } = {}): Promise<CloseReport> {
    if (this.closed === undefined) {
      const drain = options.drain ?? true;
      const timeoutMs = options.timeoutMs ?? 30_000;
      if (typeof drain !== 'boolean') return Promise.reject(invalidArgument(`drain must be a boolean, got ${show(drain)}`));
      if (!Number.isSafeInteger(timeoutMs) || timeoutMs < 0) return Promise.reject(invalidArgument(`timeoutMs must be a non-negative integer, got ${show(timeoutMs)}`));
      this.sweep.stop();
      this.closed = this.pipeline.close(drain, timeoutMs).then(async (report) => {
        await this.store.close?.();
        return report;
      });
    }
    return this.closed;
  }
}
