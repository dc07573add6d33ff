/**
 * Every error taskvalve raises is a {@link TaskvalveError} with one of these stable codes.
 * Switch on `error.code`, never on the message.
 */
export const ErrorCode = {
  /** A configuration (profile, manager or HTTP option) failed validation. */
  INVALID_CONFIG: 'INVALID_CONFIG',
  /** A call's argument failed validation (also: a cost above the burst, a missing task export). */
  INVALID_ARGUMENT: 'INVALID_ARGUMENT',
  /** registerProfile: the name is taken. */
  PROFILE_EXISTS: 'PROFILE_EXISTS',
  /** No profile has that name. */
  PROFILE_NOT_FOUND: 'PROFILE_NOT_FOUND',
  /** The user has no subscription. */
  SUBSCRIPTION_NOT_FOUND: 'SUBSCRIPTION_NOT_FOUND',
  /** The subscription was canceled. */
  SUBSCRIPTION_INACTIVE: 'SUBSCRIPTION_INACTIVE',
  /** The subscription has ended. */
  SUBSCRIPTION_EXPIRED: 'SUBSCRIPTION_EXPIRED',
  /** The subscription starts later (`retryAfterMs` until then). */
  SUBSCRIPTION_NOT_STARTED: 'SUBSCRIPTION_NOT_STARTED',
  /** The hard quota has too few units left (`retryAfterMs` when it renews). */
  QUOTA_EXCEEDED: 'QUOTA_EXCEEDED',
  /** The rate does not admit the cost now and the task may not wait (`retryAfterMs`). */
  RATE_LIMITED: 'RATE_LIMITED',
  /** The profile's queue (`pool.maxQueue`) is full. */
  QUEUE_FULL: 'QUEUE_FULL',
  /** The caller's signal aborted the task. */
  ABORTED: 'ABORTED',
  /** The task ran past its timeout and was stopped. */
  TASK_TIMEOUT: 'TASK_TIMEOUT',
  /** The task threw (`cause`: its error). */
  TASK_FAILED: 'TASK_FAILED',
  /** The worker thread died while running the task. */
  WORKER_CRASHED: 'WORKER_CRASHED',
  /** The manager is closing: nothing new is admitted. */
  SHUTTING_DOWN: 'SHUTTING_DOWN',
  /** The store cannot be reached (fail-closed). */
  STORE_UNAVAILABLE: 'STORE_UNAVAILABLE',
} as const;

/** One of the stable error codes in {@link ErrorCode}. */
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

/**
 * What an admission that refused knew, from the decision itself: the figures rate-limit headers
 * need, so that answering a refusal takes no second read of the store.
 */
export interface Refusal {
  /** The user's profile. */
  readonly profile: string;
  /** Units admitted in the current period (the refused request charged nothing). */
  readonly usage: number;
  /** The quota limit in force; null: none. */
  readonly quotaLimit: number | null;
  /** Ms until the usage period ends (usage resets); null without a period. */
  readonly quotaResetAfterMs: number | null;
  /**
   * The bucket as the decision saw it, for a rate refusal. Undefined for a quota refusal: the
   * quota is decided first, and the bucket is not read.
   */
  readonly rate: {
    /** Bucket capacity (burst). */
    readonly limit: number;
    /** Units that conform now (negative after a downgrade below what the bucket holds). */
    readonly remaining: number;
    /** Ms until the bucket is full again. */
    readonly resetAfterMs: number;
  } | undefined;
}

/** Extra fields an error may carry. */
export interface TaskvalveErrorDetails {
  /** For RATE_LIMITED (and QUOTA_EXCEEDED with a period): when a retry can succeed. */
  retryAfterMs?: number;
  /** The underlying error: for TASK_FAILED, the task's own error rebuilt on this thread. */
  cause?: unknown;
  /** False when a retry cannot help; the retry policy honours it. */
  retryable?: boolean;
  /** For RATE_LIMITED and QUOTA_EXCEEDED from an admission: what the decision knew. */
  refusal?: Refusal;
}

/**
 * The codes that answer a call rather than report a mistake in it: a refusal (rate, quota,
 * subscription, queue, shutdown, store), an abort, or what running the task came to. Their errors
 * carry no stack frames: where they were raised is always inside taskvalve (the task's own error,
 * with its stack, is the `cause` of TASK_FAILED), they are routine under load, and capturing a
 * stack costs more than the decision itself (6 µs against 0.5). Errors that report a mistake
 * (INVALID_CONFIG, INVALID_ARGUMENT, PROFILE_EXISTS, PROFILE_NOT_FOUND) keep their stack, which
 * points at the call that made it.
 */
const ANSWERS: ReadonlySet<string> = new Set<ErrorCode>([
  ErrorCode.SUBSCRIPTION_NOT_FOUND,
  ErrorCode.SUBSCRIPTION_INACTIVE,
  ErrorCode.SUBSCRIPTION_EXPIRED,
  ErrorCode.SUBSCRIPTION_NOT_STARTED,
  ErrorCode.QUOTA_EXCEEDED,
  ErrorCode.RATE_LIMITED,
  ErrorCode.QUEUE_FULL,
  ErrorCode.ABORTED,
  ErrorCode.TASK_TIMEOUT,
  ErrorCode.TASK_FAILED,
  ErrorCode.WORKER_CRASHED,
  ErrorCode.SHUTTING_DOWN,
  ErrorCode.STORE_UNAVAILABLE,
]);

/**
 * Sets `Error.stackTraceLimit` to 0, so that errors made until {@link restoreStacks} capture no
 * frames; returns the limit to restore, or -1 where it cannot be set (frozen intrinsics, as
 * under `node --frozen-intrinsics`: errors are then made with their stacks, as any other).
 */
function dropStacks(): number {
  const limit = Error.stackTraceLimit;
  try {
    Error.stackTraceLimit = 0;
    return limit;
  } catch {
    return -1;
  }
}

/** Puts back the limit {@link dropStacks} replaced. */
function restoreStacks(limit: number): void {
  if (limit !== -1) Error.stackTraceLimit = limit;
}

/** What `make` returns, the errors it makes carrying no stack frames (where the limit can be set). */
export function stackless<T>(make: () => T): T {
  const limit = dropStacks();
  try {
    return make();
  } finally {
    restoreStacks(limit);
  }
}

/** The one error class of taskvalve: `instanceof Error`, with a stable `code`. */
export class TaskvalveError extends Error {
  /** Stable, switchable code. */
  readonly code: ErrorCode;
  /** Milliseconds until a retry can succeed, where that is known. */
  readonly retryAfterMs?: number;
  /** False when retrying cannot help. */
  readonly retryable?: boolean;
  /** RATE_LIMITED and QUOTA_EXCEEDED from an admission: the decision's figures (what headers need). */
  readonly refusal?: Refusal;

  constructor(code: ErrorCode, message: string, details?: TaskvalveErrorDetails) {
    const options = details?.cause === undefined ? undefined : { cause: details.cause };
    if (ANSWERS.has(code)) {
      // stackless() cannot wrap a super() call: the same two steps, inline.
      const limit = dropStacks();
      try {
        super(message, options);
      } finally {
        restoreStacks(limit);
      }
    } else {
      super(message, options);
    }
    this.name = 'TaskvalveError';
    this.code = code;
    if (details?.retryAfterMs !== undefined) this.retryAfterMs = details.retryAfterMs;
    if (details?.retryable !== undefined) this.retryable = details.retryable;
    if (details?.refusal !== undefined) this.refusal = details.refusal;
  }
}

/** Quotes a user-supplied value for an error message, short and unambiguous. */
export function show(value: unknown): string {
  try {
    if (typeof value === 'string') return JSON.stringify(value.length > 80 ? `${value.slice(0, 77)}...` : value);
    if (typeof value === 'function') return `function ${value.name || '(anonymous)'}`;
    if (typeof value === 'bigint') return `${value}n`;
    if (value === null || typeof value !== 'object') return String(value);
    if (value instanceof Date) return Number.isNaN(value.getTime()) ? 'an invalid Date' : value.toISOString();
    // An error says what it is in its message (as JSON it is `{}`).
    if (value instanceof Error) {
      const text = `${value.name}: ${value.message}`;
      return text.length > 80 ? `${text.slice(0, 77)}...` : text;
    }
    const json = JSON.stringify(value);
    if (json === undefined) return Object.prototype.toString.call(value);
    return json.length > 80 ? `${json.slice(0, 77)}...` : json;
  } catch {
    // A proxy or a getter that throws on every read: nothing more can be said of it.
    return 'a value that cannot be described';
  }
}

/**
 * A property of something a task threw, as text, read without trusting it: a getter that
 * throws, a Symbol or any other non-string gives `fallback` (a non-string described).
 */
export function textOf(read: () => unknown, fallback: string): string {
  try {
    const value = read();
    if (typeof value === 'string') return value;
    return value === undefined ? fallback : show(value);
  } catch {
    return fallback;
  }
}

/** An error's message, read without trusting it (see textOf). */
export function messageOf(error: Error): string {
  return textOf(() => error.message, 'an error whose message cannot be read');
}

/** Why a worker module cannot be TypeScript, in the words errors use. */
export const JAVASCRIPT_ONLY = 'a worker module must be JavaScript that Node runs as it is (compile TypeScript first)';

/** A config field failed validation at registration. */
export function invalidConfig(where: string, field: string, value: unknown, rule: string): TaskvalveError {
  return new TaskvalveError(ErrorCode.INVALID_CONFIG, `${where}: ${field} must be ${rule}, got ${show(value)}`);
}

/** A call argument failed validation. */
export function invalidArgument(message: string, cause?: unknown): TaskvalveError {
  return new TaskvalveError(ErrorCode.INVALID_ARGUMENT, message, cause === undefined ? { retryable: false } : { cause, retryable: false });
}

export function profileExists(name: string): TaskvalveError {
  return new TaskvalveError(ErrorCode.PROFILE_EXISTS, `profile ${show(name)} is already registered`);
}

export function profileNotFound(name: string): TaskvalveError {
  return new TaskvalveError(ErrorCode.PROFILE_NOT_FOUND, `profile ${show(name)} is not registered`);
}

export function subscriptionNotFound(userId: string): TaskvalveError {
  return new TaskvalveError(ErrorCode.SUBSCRIPTION_NOT_FOUND, `user ${show(userId)} has no subscription`);
}

export function subscriptionInactive(userId: string): TaskvalveError {
  return new TaskvalveError(ErrorCode.SUBSCRIPTION_INACTIVE, `subscription of user ${show(userId)} is canceled`);
}

export function subscriptionExpired(userId: string, endsAt: number): TaskvalveError {
  return new TaskvalveError(
    ErrorCode.SUBSCRIPTION_EXPIRED,
    `subscription of user ${show(userId)} expired at ${new Date(endsAt).toISOString()}`,
  );
}

export function subscriptionNotStarted(userId: string, startsAt: number, now: number): TaskvalveError {
  return new TaskvalveError(
    ErrorCode.SUBSCRIPTION_NOT_STARTED,
    `subscription of user ${show(userId)} starts at ${new Date(startsAt).toISOString()}`,
    { retryAfterMs: Math.max(0, startsAt - now) },
  );
}

export function quotaExceeded(userId: string, usage: number, limit: number, cost: number, retryAfterMs?: number, refusal?: Refusal): TaskvalveError {
  return new TaskvalveError(
    ErrorCode.QUOTA_EXCEEDED,
    `user ${show(userId)} is over quota: usage ${usage} + cost ${cost} > limit ${limit}`,
    retryAfterMs === undefined ? { refusal } : { retryAfterMs, refusal },
  );
}

export function rateLimited(userId: string, profileName: string, retryAfterMs: number, refusal?: Refusal): TaskvalveError {
  return new TaskvalveError(
    ErrorCode.RATE_LIMITED,
    `user ${show(userId)} (profile ${show(profileName)}) is rate limited; retry after ${retryAfterMs} ms`,
    { retryAfterMs, refusal },
  );
}

export function queueFull(profileName: string, maxQueue: number): TaskvalveError {
  return new TaskvalveError(ErrorCode.QUEUE_FULL, `queue of profile ${show(profileName)} is full (maxQueue ${maxQueue})`);
}

export function aborted(reason?: unknown): TaskvalveError {
  return new TaskvalveError(ErrorCode.ABORTED, 'task was aborted', reason === undefined ? undefined : { cause: reason });
}

export function taskTimeout(timeoutMs: number): TaskvalveError {
  return new TaskvalveError(ErrorCode.TASK_TIMEOUT, `task ran past its timeout of ${timeoutMs} ms and was stopped`);
}

export function taskFailed(cause: Error, retryable?: boolean): TaskvalveError {
  return new TaskvalveError(
    ErrorCode.TASK_FAILED,
    `task failed: ${messageOf(cause)}`,
    retryable === undefined ? { cause } : { cause, retryable },
  );
}

export function workerCrashed(cause: unknown): TaskvalveError {
  const detail = cause instanceof Error ? cause.message : String(cause);
  return new TaskvalveError(ErrorCode.WORKER_CRASHED, `worker thread died while running the task: ${detail}`, { cause });
}

export function shuttingDown(): TaskvalveError {
  return new TaskvalveError(ErrorCode.SHUTTING_DOWN, 'manager is shutting down; no new work is admitted');
}

/** A cost that can never conform: above the burst of the user's profile (now, after a change). */
export function costOverBurst(cost: number, burst: number, profileName: string, changed = false): TaskvalveError {
  return invalidArgument(
    `cost ${cost} exceeds the burst ${burst} of profile ${show(profileName)}${changed ? ' (the profile changed while the task waited)' : ''}: it could never conform`,
  );
}

/** Options with names nobody reads: a typo must not be ignored silently. */
export function unknownOptions(where: string, names: string[], known: readonly string[]): TaskvalveError {
  return invalidArgument(`${where}: unknown option${names.length > 1 ? 's' : ''} ${names.map((n) => show(n)).join(', ')} (known: ${known.join(', ')})`);
}

/** Wraps a store's failure that is not already a TaskvalveError. */
export function storeFailed(error: unknown): TaskvalveError {
  return error instanceof TaskvalveError ? error : new TaskvalveError(ErrorCode.STORE_UNAVAILABLE, `store failed: ${String(error)}`, { cause: error });
}
