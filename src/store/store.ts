/**
 * The Store interface: everything a decision needs lives behind it, so that one process
 * (MemoryStore) and many (a Redis store) answer the same calls. Admission is one atomic
 * operation that sees subscription validity, quota and bucket together.
 *
 * Methods may answer synchronously (a value) or asynchronously (a promise); callers handle
 * both. `nowMs` is the manager's clock; a store may decide on a clock of its own instead.
 */
import type { Profile } from '../profile.js';

/** Status of a subscription. It stays 'active' before `startsAt`. */
export type SubscriptionStatus = 'active' | 'canceled' | 'expired';

/** A user's subscription, as returned by the manager. */
export interface Subscription {
  /** The subscriber. */
  userId: string;
  /** The profile subscribed to. */
  profileName: string;
  /** 'active' (also before startsAt), 'canceled' or 'expired'. */
  status: SubscriptionStatus;
  /** When it starts. */
  startsAt: Date;
  /** When it ends; null: never. */
  endsAt: Date | null;
  /** Units admitted in the current period (or for life without a period). */
  usage: number;
  /** The per-user override of the quota limit, or null. */
  quota: number | null;
  /** The limit in force: the override, else the profile's; null means unlimited. */
  quotaLimit: number | null;
  /** Start of the current quota period, when the profile has one. */
  periodStartedAt?: Date;
}

/** Outcome of {@link Store.admit}. */
export const Verdict = {
  /** Quota and bucket charged: the task may proceed now. */
  ALLOWED: 0,
  /** Quota charged; the task waits for its rate turn on `bucket` (about `waitMs`). */
  QUEUED: 1,
  RATE_LIMITED: 2,
  QUOTA_EXCEEDED: 3,
  NOT_FOUND: 4,
  CANCELED: 5,
  EXPIRED: 6,
  NOT_STARTED: 7,
  COST_OVER_BURST: 8,
} as const;
export type Verdict = (typeof Verdict)[keyof typeof Verdict];

/** `admit` decides on the rate now (check, reject mode, wait: false) or by the profile's onLimit. */
export const AdmitMode = { NOW: 0, PROFILE: 1 } as const;
export type AdmitMode = (typeof AdmitMode)[keyof typeof AdmitMode];

/**
 * The answer of one admission. A synchronous store may reuse one object for every answer:
 * read it before the next call.
 */
export interface AdmitResult {
  verdict: Verdict;
  /** The user's profile (undefined only for NOT_FOUND). */
  profile: Profile | undefined;
  /** Bucket capacity in units. */
  limit: number;
  /** Units that still conform now. */
  remaining: number;
  /** RATE_LIMITED / QUOTA_EXCEEDED / NOT_STARTED: when to retry; QUEUED: estimated wait. */
  retryAfterMs: number;
  /** Until the bucket is full again. */
  resetAfterMs: number;
  /** Usage after this decision. */
  usage: number;
  /** Quota limit in force, null for none. */
  quotaLimit: number | null;
  /** Token of the usage period charged; pass it back to `refund`. */
  period: number;
  /** QUEUED: key of the bucket the task waits on. */
  bucket: string;
  /** The subscription's status ('not_found' without one). */
  status: SubscriptionStatus | 'not_found';
  /** Until the usage period ends (ms), -1 without a period (filled when a decision charges or denies on the rate). */
  quotaResetAfterMs: number;
  /** For messages: the subscription's start and end (ms). */
  startsAt: number;
  endsAt: number;
  /** ALLOWED: {@link RateReceipt.tat} of the units taken, -1 when the store cannot give them back. */
  receiptTat: number;
  /** ALLOWED: {@link RateReceipt.epoch} of the units taken. */
  receiptEpoch: number;
  /** ALLOWED: {@link RateReceipt.refunds} of the units taken. */
  receiptRefunds: number;
}

/**
 * Rate units taken from a bucket, as the store that took them describes them: enough to give
 * back exactly what an attempt that never started still holds, and never more.
 */
export interface RateReceipt {
  /** The bucket's state right after the units were taken (store-specific). */
  readonly tat: number;
  /** The store's time base when they were taken (store-specific). */
  readonly epoch: number;
  /**
   * How many refunds the bucket had had when they were taken (store-specific): a refund reads
   * those made since, to know how far they moved its units.
   */
  readonly refunds: number;
}

/** One waiter of {@link Store.takeTurns}: a task waiting for its rate turn is one. */
export interface TurnRequest {
  /** Whose units. */
  readonly userId: string;
  /** How many. */
  readonly cost: number;
  /** The user's limiter handle, where a store may keep what it knows of the user (as `admit` is given it). */
  readonly slot: UserSlot;
}

/** The answer of {@link Store.takeTurns}. */
export interface TurnsTaken {
  /** How many of the leading waiters had their units taken (all of them, in order). */
  taken: number;
  /**
   * With fewer than all taken: ms until the first one not taken conforms, at least 1; Infinity
   * when it never can (its cost exceeds the burst of the user's profile now); 0 when the store
   * stopped before it for another reason (ask again now). 0 when all were taken.
   */
  waitMs: number;
  /** Per waiter taken, in order: how to give its units back, undefined where the store cannot. */
  receipts: (RateReceipt | undefined)[];
}

/** A blank admission result, to fill in. */
export function blankResult(): AdmitResult {
  return {
    verdict: Verdict.ALLOWED,
    profile: undefined,
    limit: 0,
    remaining: 0,
    retryAfterMs: 0,
    resetAfterMs: 0,
    usage: 0,
    quotaLimit: null,
    period: 0,
    bucket: '',
    status: 'active',
    quotaResetAfterMs: -1,
    startsAt: 0,
    endsAt: 0,
    receiptTat: -1,
    receiptEpoch: 0,
    receiptRefunds: 0,
  };
}

/**
 * Options of {@link Store.subscribe}, validated, times in ms. Absent times are the store's own
 * now: a distributed store stamps them from its server's clock.
 */
export interface SubscribeInput {
  startsAt: number | undefined;
  /** Absent with no duration: no end. */
  endsAt: number | undefined;
  durationMs: number | undefined;
  /** Undefined or null: no override. */
  quota: number | null | undefined;
  resetUsage: boolean;
}

/** A task as recorded in the dead-letter queue. */
export type DeadTask =
  | {
      /** The worker module's export that ran. */
      name: string;
      /** What it was given. */
      payload?: unknown;
    }
  | ((ctx: { signal: AbortSignal; attempt: number }) => unknown)
  /** An inline task seen from another process: its function could not travel. */
  | {
      /** Always true: the task was a function. */
      inline: true;
      /** The function's name or source, shortened. */
      description: string;
    };

/** A task that exhausted its attempts. */
export interface FailedTask {
  /** The entry's id (a UUID). */
  id: string;
  /** The user the task ran for. */
  userId: string;
  /** The user's profile then. */
  profileName: string;
  /** The task, for a replay. */
  task: DeadTask;
  /** Units the task was charged. */
  cost: number;
  /** The last attempt's error. */
  error: {
    /** The TaskvalveError code (TASK_FAILED, TASK_TIMEOUT, WORKER_CRASHED). */
    code: string;
    /** The task's own error's name. */
    name: string;
    /** The task's own error's message. */
    message: string;
    /** The task's own error's stack, if it had one. */
    stack?: string;
  };
  /** Attempts made. */
  attempts: number;
  /** When the first attempt failed. */
  firstFailedAt: Date;
  /** When the last attempt failed. */
  lastFailedAt: Date;
}

/** Filters of {@link Store.dlqList}. */
export interface DlqQuery {
  /** At most this many entries (oldest first). */
  limit?: number;
  /** Only this user's entries. */
  userId?: string;
  /** Only this profile's entries. */
  profileName?: string;
}

/**
 * Held by a user's limiter handle: a store may keep a reference to that user's state here and
 * skip its own lookup next time. The store decides what it holds and when it is still valid.
 */
export interface UserSlot {
  ref: unknown;
}

/** A subscription deleted by {@link Store.sweepEnded}. */
export interface EndedUser {
  /** The user whose ended subscription was deleted. */
  userId: string;
  /** The profile it was subscribed to. */
  profileName: string;
}

/** The answer of {@link Store.sweepEnded}. */
export interface SweepResult {
  /** The subscriptions deleted in this call. */
  deleted: EndedUser[];
  /** Work is left for this round: call again now. */
  more: boolean;
}

/** What a store does when its backend cannot be reached. */
export type UnavailablePolicy = 'fail-closed' | 'fail-open' | 'local';

/** What a store tells the manager of on its own, and how the manager wants outages handled. */
export interface StoreListener {
  /** A subscription was seen past its end for the first time. */
  expired(userId: string, profileName: string): void;
  /** A fault with no caller to reject (a failed reconciliation). */
  fault?(error: unknown): void;
  /** Something an operator should see, with the error that describes it (a configuration drift). */
  warn?(message: string, error: unknown): void;
  /** The policy while the backend is unreachable; default 'fail-closed'. */
  onUnavailable?: UnavailablePolicy;
}

type MaybePromise<T> = T | Promise<T>;

/** What taskvalve needs from a place to keep its state. */
export interface Store {
  /** Called once by the manager. */
  attach(listener: StoreListener): void;
  /** Makes a registered profile known (a store may check it against other processes'). */
  defineProfile(profile: Profile): MaybePromise<void>;

  /** Creates or replaces a user's subscription. */
  subscribe(userId: string, profile: Profile, input: SubscribeInput, nowMs: number): MaybePromise<Subscription>;
  /** The user's subscription, or undefined. */
  getSubscription(userId: string, nowMs: number): MaybePromise<Subscription | undefined>;
  /** Undefined when the user has no subscription. */
  extendSubscription(userId: string, ms: number, nowMs: number): MaybePromise<Subscription | undefined>;
  /** Marks the subscription canceled; undefined when the user has none. */
  cancelSubscription(userId: string, nowMs: number): MaybePromise<Subscription | undefined>;
  /** Moves the user to another profile, usage kept; undefined when the user has none. */
  changeProfile(userId: string, profile: Profile, nowMs: number): MaybePromise<Subscription | undefined>;
  /** Sets the period's usage to 0; undefined when the user has none. */
  resetUsage(userId: string, nowMs: number): MaybePromise<Subscription | undefined>;
  /** Sets the per-user quota override (null: the profile's); undefined when the user has none. */
  setQuota(userId: string, quota: number | null, nowMs: number): MaybePromise<Subscription | undefined>;
  /**
   * Removes everything the store holds for the user: subscription, usage, own bucket, and any
   * state a handle or a cache keeps for them (a handle used afterwards finds no subscription).
   * Resolves with the deleted subscription's profile name, undefined if there was none.
   */
  deleteSubscription(userId: string, nowMs: number): MaybePromise<string | undefined>;

  /**
   * Deletes subscriptions that ended (canceled: at the cancel; expired: at their end) at least
   * `retentionMs` before `nowMs`, oldest end first, at most `max` per call. The work of a call
   * is bounded (by `max`, and by a store's own share of its index per call), never by the
   * number of users. `more`: call again now, this call left work (a sweep round ends when a
   * call answers false).
   */
  sweepEnded(nowMs: number, retentionMs: number, max: number): MaybePromise<SweepResult>;

  /**
   * One atomic admission of `cost` units for `userId`: subscription status, quota, and bucket.
   * `waiting` holds the units this process has queued per bucket key: a new request never
   * overtakes them. Denials write nothing.
   */
  admit(userId: string, cost: number, mode: AdmitMode, waiting: ReadonlyMap<string, number>, nowMs: number, slot?: UserSlot): MaybePromise<AdmitResult>;
  /**
   * Takes `cost` units from the user's bucket if they conform: 0 when taken, else ms to wait;
   * Infinity when they never can (the cost exceeds the bucket of the user's profile now).
   * When taken, a store that can give units back returns how in `receipt.value`.
   */
  take(userId: string, cost: number, nowMs: number, slot?: UserSlot, receipt?: { value: RateReceipt | undefined }): MaybePromise<number>;
  /**
   * Optional: rate turns for waiters of one bucket (all on the same bucket key), in one atomic
   * step. Takes each waiter's units in order while they conform and stops at the first that
   * does not, so that nobody is overtaken. A store that answers each `take` with a round trip
   * implements it so that a rate line drains at the bucket's rate, not at one waiter per round
   * trip; without it, the line calls `take` once per waiter.
   */
  takeTurns?(waiters: readonly TurnRequest[], nowMs: number): MaybePromise<TurnsTaken>;
  /** Gives back quota charged for a task that never started (no-op if the period moved on). */
  refund(userId: string, cost: number, period: number, nowMs: number): MaybePromise<void>;
  /**
   * Gives back rate units taken for an attempt that never started: as much of them as the
   * bucket still holds, so that the bucket is never fuller than if they had never been taken.
   */
  refundRate?(userId: string, cost: number, receipt: RateReceipt, nowMs: number, slot?: UserSlot): MaybePromise<void>;
  /**
   * The decision `check(1)` would make on the rate now, without changing anything, counting
   * `waiting` units that this process's tasks waiting for their turn on the bucket have reserved.
   */
  peek(userId: string, nowMs: number, waiting?: ReadonlyMap<string, number>): MaybePromise<AdmitResult>;

  /**
   * Stores a dead letter; the profile's oldest go past `maxEntries`, and entries past their
   * `retentionMs` are never returned again. The cost of an add and of a list with a limit does
   * not grow with the number of entries held.
   */
  dlqAdd(entry: FailedTask, bounds: { maxEntries: number; retentionMs: number }, nowMs: number): MaybePromise<void>;
  /** Oldest first. */
  dlqList(query: DlqQuery, nowMs: number): MaybePromise<FailedTask[]>;
  /** Undefined once the entry is past its profile's retention. */
  dlqGet(id: string, nowMs: number): MaybePromise<FailedTask | undefined>;
  /** Removes a dead letter; true if it existed. */
  dlqRemove(id: string): MaybePromise<boolean>;
  /**
   * Called by Manager.close(): stops background work (never closes a client it was given), and
   * settles within `timeoutMs` what it still owes its backend. `owed`: units of usage admitted
   * while the backend was unreachable that it could not charge (see CloseReport.owed).
   */
  close?(
    timeoutMs: number,
  ): MaybePromise<void | {
    /** Units of usage admitted while the backend was unreachable and not charged to it. */
    owed: number;
  }>;
}
