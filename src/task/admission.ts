/**
 * Stage 1, admission: a submit's arguments checked, then the store's one atomic decision
 * (subscription, cost against the burst, quota, bucket) read into a verdict. Also the answers
 * of check(), checkDetailed() and peek(), which are admissions without a task.
 */
import {
  costOverBurst,
  invalidArgument,
  quotaExceeded,
  rateLimited,
  show,
  subscriptionExpired,
  subscriptionInactive,
  subscriptionNotFound,
  subscriptionNotStarted,
  unknownOptions,
  type Refusal,
  type TaskvalveError,
} from '../errors.js';
import { unknownKeys } from '../util/options.js';
import type { ProfileStats, RejectReason } from '../metrics.js';
import type { Profile } from '../profile.js';
import { Verdict, type AdmitResult, type SubscriptionStatus } from '../store/store.js';
import type { InlineTask } from './job.js';

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
  /** This task's run timeout in ms (overrides `pool.taskTimeoutMs`), inline tasks included. */
  timeoutMs?: number;
  /** false: never wait for the rate, reject RATE_LIMITED at once. */
  wait?: boolean;
  /** Higher runs first among one user's queued tasks; default 0. */
  priority?: number;
  /** The id this task's `task` events carry; default: generated when someone listens. */
  taskId?: string;
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
  /** The user's usage in the current period. */
  usage: number;
  /** The quota limit in force, null for none. */
  quotaLimit: number | null;
  /** The subscription's status, or 'not_found'. */
  status: SubscriptionStatus | 'not_found';
}

/** A submit's arguments, checked. */
export interface Submission {
  fn: InlineTask | undefined;
  name: string | undefined;
  payload: unknown;
  cost: number;
  signal: AbortSignal | undefined;
  timeoutMs: number;
  /** false: decide the rate now. */
  wait: boolean;
  priority: number;
  taskId: string | undefined;
}

const SUBMIT_OPTIONS = ['cost', 'signal', 'timeoutMs', 'wait', 'priority', 'taskId', 'idempotencyKey', 'orderingKey', 'concurrencyKey'] as const;
const MAX_TASK_ID = 1024;

/** Whether a value is a positive safe integer. */
export function isCount(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value > 0;
}

const NO_OPTIONS: Submission = {
  fn: undefined,
  name: undefined,
  payload: undefined,
  cost: 1,
  signal: undefined,
  timeoutMs: 0,
  wait: true,
  priority: 0,
  taskId: undefined,
};

/** Checks submit's arguments: a Submission, or the INVALID_ARGUMENT error they call for. */
export function parseSubmit(task: unknown, options: unknown): Submission | TaskvalveError {
  let fn: InlineTask | undefined;
  let name: string | undefined;
  let payload: unknown;
  if (typeof task === 'function') fn = task as InlineTask;
  else if (task !== null && typeof task === 'object' && typeof (task as { name?: unknown }).name === 'string' && (task as { name: string }).name.length > 0) {
    name = (task as { name: string }).name;
    payload = (task as { payload?: unknown }).payload;
  } else {
    return invalidArgument(`task must be a function or { name, payload }, got ${show(task)}`);
  }
  if (options === undefined) return fn !== undefined ? { ...NO_OPTIONS, fn } : { ...NO_OPTIONS, name, payload };
  if (options === null || typeof options !== 'object') return invalidArgument(`submit options must be an object, got ${show(options)}`);
  const o = options as SubmitOptions;
  const unknown = unknownKeys(o, SUBMIT_OPTIONS);
  if (unknown.length > 0) return unknownOptions('submit', unknown, SUBMIT_OPTIONS);
  const cost = o.cost === undefined ? 1 : o.cost;
  if (!isCount(cost)) return invalidArgument(`cost must be a positive integer, got ${show(cost)}`);
  const signal = o.signal;
  if (signal !== undefined && !(signal instanceof AbortSignal)) return invalidArgument(`signal must be an AbortSignal, got ${show(signal)}`);
  if (o.timeoutMs !== undefined && !isCount(o.timeoutMs)) return invalidArgument(`timeoutMs must be a positive integer, got ${show(o.timeoutMs)}`);
  if (o.wait !== undefined && typeof o.wait !== 'boolean') return invalidArgument(`wait must be a boolean, got ${show(o.wait)}`);
  const priority = o.priority === undefined ? 0 : o.priority;
  // Stryker disable next-line ConditionalExpression: Number.isFinite is false for every non-number, so the typeof test alone never decides
  if (typeof priority !== 'number' || !Number.isFinite(priority)) return invalidArgument(`priority must be a finite number, got ${show(priority)}`);
  const taskId = o.taskId;
  if (taskId !== undefined && (typeof taskId !== 'string' || taskId.length === 0 || taskId.length > MAX_TASK_ID)) {
    return invalidArgument(`taskId must be a non-empty string of at most ${MAX_TASK_ID} characters, got ${show(taskId)}`);
  }
  if (o.idempotencyKey !== undefined || o.orderingKey !== undefined || o.concurrencyKey !== undefined) {
    return invalidArgument('idempotencyKey, orderingKey and concurrencyKey are not supported yet');
  }
  return { fn, name, payload, cost, signal, timeoutMs: o.timeoutMs ?? 0, wait: o.wait !== false, priority, taskId };
}

const REASONS: Partial<Record<number, RejectReason>> = {
  [Verdict.RATE_LIMITED]: 'rate_limited',
  [Verdict.QUOTA_EXCEEDED]: 'quota_exceeded',
  [Verdict.CANCELED]: 'subscription_inactive',
  [Verdict.EXPIRED]: 'subscription_expired',
  [Verdict.NOT_STARTED]: 'subscription_not_started',
  [Verdict.COST_OVER_BURST]: 'invalid_argument',
};

/** What a refusing decision knew: the figures rate-limit headers need, with no second read. */
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

/** The error of a denied admission (which wrote nothing), counted in `stats` when given. */
export function denial(userId: string, r: AdmitResult, cost: number, stats: ProfileStats | undefined, nowMs: number): TaskvalveError {
  const reason = REASONS[r.verdict];
  // Stryker disable next-line LogicalOperator,ConditionalExpression: a store gives a profile for every verdict but NOT_FOUND, so stats and a reason are given together or not at all
  if (stats !== undefined && reason !== undefined) stats.rejected[reason]++;
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
      return subscriptionNotStarted(userId, r.startsAt, nowMs);
    case Verdict.COST_OVER_BURST:
      return costOverBurst(cost, r.limit, profile.name);
    default:
      return subscriptionNotFound(userId);
  }
}

/**
 * A check's answer: a decision (allowed, or denied on the rate), or the error for anything else.
 * Every refusal is counted in `tasks_rejected_total`, as a submit's would be.
 */
export function decision(userId: string, r: AdmitResult, cost: number, detailed: boolean, stats: ProfileStats | undefined, nowMs: number): Decision | TaskvalveError {
  if (r.verdict !== Verdict.ALLOWED && r.verdict !== Verdict.RATE_LIMITED) {
    // Stryker disable next-line ConditionalExpression: only NOT_FOUND comes without a profile, and denial() answers it with the same error
    if (r.profile === undefined) return subscriptionNotFound(userId);
    return denial(userId, r, cost, stats, nowMs);
  }
  const allowed = r.verdict === Verdict.ALLOWED;
  // Stryker disable next-line LogicalOperator: stats are given only for a refusal, so an allowed decision never has them
  if (!allowed && stats !== undefined) stats.rejected.rate_limited++;
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

/** What peek() tells from the store's answer. */
export function peekResult(r: AdmitResult): PeekResult {
  const found = r.profile !== undefined;
  return {
    allowed: r.verdict === Verdict.ALLOWED,
    limit: found ? r.limit : 0,
    remaining: found ? r.remaining : 0,
    retryAfterMs: found ? r.retryAfterMs : 0,
    resetAfterMs: found ? r.resetAfterMs : 0,
    usage: found ? r.usage : 0,
    quotaLimit: found ? r.quotaLimit : null,
    status: r.status,
  };
}
