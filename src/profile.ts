/** ProfileConfig: what users register, its validation, and the resolved form the pipeline uses. */
import { availableParallelism } from 'node:os';
import type { ResourceLimits } from 'node:worker_threads';
import { pathToFileURL } from 'node:url';
import { JAVASCRIPT_ONLY, invalidConfig } from './errors.js';
import { MAX_TICKS, makeRate, type Rate } from './rate/gcra.js';

/** How a profile is rate limited. */
export interface RateConfig {
  /** Positive integer: units per interval. */
  limit: number;
  /** Positive integer milliseconds. `limit / intervalMs` is at most 1,000,000 units per second. */
  intervalMs: number;
  /** Bucket capacity in units; default `limit`. */
  burst?: number;
  /** Resource key: one bucket for every user of every profile naming it. Absent: one bucket per user. */
  shared?: string;
  /** For submit: wait for the turn (default, paced exactly) or reject with RATE_LIMITED. */
  onLimit?: 'wait' | 'reject';
  /** In 'wait' mode, a task whose turn is further away than this is rejected at once. Default: no bound. */
  maxWaitMs?: number;
}

/** The worker pool of a profile (one Piscina pool, created on first use). */
export interface PoolConfig {
  /**
   * Worker module whose named exports are the tasks: a path, a `file:` URL string, or a URL, to a
   * JavaScript file (.js, .mjs or .cjs; worker threads cannot load TypeScript). See docs/workers.md.
   */
  filename?: string | URL;
  /** Threads at most; default min(2, CPUs). */
  maxThreads?: number;
  /** Threads kept alive; default 0. */
  minThreads?: number;
  /** Admitted tasks waiting for a thread or a concurrency slot; default 10,000. */
  maxQueue?: number;
  /** Running tasks per user at once (worker and inline); default unbounded. */
  perUserConcurrency?: number;
  /** A running task past it is stopped (its thread terminated); default none. */
  taskTimeoutMs?: number;
  /** Passed to the worker threads. */
  resourceLimits?: ResourceLimits;
}

/** Usage allowance per user. */
export interface QuotaConfig {
  /** Units per period (or for life). */
  limit: number;
  /** Usage resets every period; absent: lifetime. */
  periodMs?: number;
  /** 'hard' (default) rejects with QUOTA_EXCEEDED; 'soft' admits and counts the overage. */
  kind?: 'hard' | 'soft';
}

/** Retries with exponential backoff. */
export interface RetryConfig {
  /** Total tries including the first; default 1 (no retry). */
  attempts?: number;
  /** First delay; default 100 ms. */
  baseMs?: number;
  /** Cap on any delay; default 30,000 ms. */
  maxMs?: number;
  /** Growth per attempt; default 2. */
  multiplier?: number;
  /** 0..1: a delay is drawn uniformly from [delay * (1 - jitter), delay]; default 0. */
  jitter?: number;
}

/** Bounds of the dead-letter queue for this profile's tasks. */
export interface DlqConfig {
  /** Entries kept at most (oldest dropped); default 10,000. */
  maxEntries?: number;
  /** Entries older than this are dropped; default 7 days. */
  retentionMs?: number;
}

/** What a subscription tier allows: its rate, worker pool, quota, retries and dead-letter bounds. */
export interface ProfileConfig {
  /** The rate limit (required). */
  rate: RateConfig;
  /** The worker pool and the per-profile queue; default: no worker module, inline tasks only. */
  pool?: PoolConfig;
  /** A per-user quota; default: none. */
  quota?: QuotaConfig;
  /** Retries of failed attempts; default: one attempt. */
  retry?: RetryConfig;
  /** Bounds of the dead-letter queue for this profile. */
  dlq?: DlqConfig;
}

/** A validated profile with every default filled in. */
export interface Profile {
  readonly name: string;
  readonly rate: Rate;
  /** Bucket key of a shared bucket, or undefined for one bucket per user. */
  readonly shared: string | undefined;
  readonly onLimit: 'wait' | 'reject';
  readonly maxWaitMs: number;
  readonly pool: {
    readonly filename: string | undefined;
    readonly maxThreads: number;
    readonly minThreads: number;
    readonly maxQueue: number;
    readonly perUserConcurrency: number;
    readonly taskTimeoutMs: number;
    readonly resourceLimits: ResourceLimits | undefined;
  };
  /** Null: no quota. */
  readonly quotaLimit: number | null;
  readonly quotaPeriodMs: number;
  readonly quotaHard: boolean;
  readonly retry: Required<RetryConfig>;
  readonly dlq: Required<DlqConfig>;
}

const MAX_UNITS_PER_MS = 1000;
const MAX_INT = Number.MAX_SAFE_INTEGER;

type Check = (value: unknown) => boolean;
const positiveInt: Check = (v) => Number.isSafeInteger(v) && (v as number) > 0;
const nonNegativeInt: Check = (v) => Number.isSafeInteger(v) && (v as number) >= 0;

function object(where: string, field: string, value: unknown, allowed: readonly string[]): Record<string, unknown> {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw invalidConfig(where, field, value, 'an object');
  }
  for (const key of Object.keys(value)) {
    if (!allowed.includes(key)) throw invalidConfig(where, `${field}.${key}`, (value as Record<string, unknown>)[key], `one of the known fields (${allowed.join(', ')})`);
  }
  return value as Record<string, unknown>;
}

function field<T>(where: string, path: string, value: unknown, check: Check, rule: string, fallback: T): T {
  if (value === undefined) return fallback;
  if (!check(value)) throw invalidConfig(where, path, value, rule);
  return value as T;
}

/** What a worker thread can import as it is: Node runs JavaScript, never TypeScript, in workers. */
const JAVASCRIPT = /\.(js|mjs|cjs)$/;

function filenameOf(where: string, value: unknown): string | undefined {
  if (value === undefined) return undefined;
  let href: string;
  if (value instanceof URL) {
    if (value.protocol !== 'file:') throw invalidConfig(where, 'pool.filename', value.href, 'a file: URL');
    href = value.href;
  } else {
    if (typeof value !== 'string' || value.length === 0) throw invalidConfig(where, 'pool.filename', value, 'a path, a file: URL string, or a URL');
    href = value.startsWith('file:') ? new URL(value).href : pathToFileURL(value).href;
  }
  if (!JAVASCRIPT.test(new URL(href).pathname)) {
    throw invalidConfig(where, 'pool.filename', value instanceof URL ? value.href : value, `a JavaScript module (.js, .mjs or .cjs): ${JAVASCRIPT_ONLY}`);
  }
  return href;
}

/** Validates a ProfileConfig and fills in its defaults. Throws INVALID_CONFIG naming the field and value. */
export function resolveProfile(name: string, config: unknown): Profile {
  const where = `profile ${JSON.stringify(name)}`;
  const top = object(where, 'profile', config, ['rate', 'pool', 'quota', 'retry', 'dlq']);

  const r = object(where, 'rate', top.rate, ['limit', 'intervalMs', 'burst', 'shared', 'onLimit', 'maxWaitMs']);
  const limit = field<number>(where, 'rate.limit', r.limit, positiveInt, 'a positive integer', NaN);
  if (r.limit === undefined) throw invalidConfig(where, 'rate.limit', undefined, 'a positive integer');
  const intervalMs = field<number>(where, 'rate.intervalMs', r.intervalMs, positiveInt, 'a positive integer (milliseconds)', NaN);
  if (r.intervalMs === undefined) throw invalidConfig(where, 'rate.intervalMs', undefined, 'a positive integer (milliseconds)');
  if (limit > intervalMs * MAX_UNITS_PER_MS) {
    throw invalidConfig(where, 'rate.limit', limit, `at most 1,000,000 units per second (${intervalMs * MAX_UNITS_PER_MS} per ${intervalMs} ms)`);
  }
  const burst = field<number>(where, 'rate.burst', r.burst, positiveInt, 'a positive integer', limit);
  const rate = makeRate(limit, intervalMs, burst);
  if (rate.tau > MAX_TICKS / 4) {
    throw invalidConfig(where, 'rate.burst', burst, 'small enough that burst × interval stays exact (lower burst or intervalMs)');
  }
  const shared = field<string | undefined>(where, 'rate.shared', r.shared, (v) => typeof v === 'string' && v.length > 0, 'a non-empty string', undefined);
  const onLimit = field<'wait' | 'reject'>(where, 'rate.onLimit', r.onLimit, (v) => v === 'wait' || v === 'reject', "'wait' or 'reject'", 'wait');
  const maxWaitMs = field<number>(where, 'rate.maxWaitMs', r.maxWaitMs, nonNegativeInt, 'a non-negative integer (milliseconds)', Infinity);

  const p = top.pool === undefined ? {} : object(where, 'pool', top.pool, ['filename', 'maxThreads', 'minThreads', 'maxQueue', 'perUserConcurrency', 'taskTimeoutMs', 'resourceLimits']);
  const maxThreads = field<number>(where, 'pool.maxThreads', p.maxThreads, positiveInt, 'a positive integer', Math.min(2, availableParallelism()));
  const minThreads = field<number>(where, 'pool.minThreads', p.minThreads, nonNegativeInt, 'a non-negative integer', 0);
  if (minThreads > maxThreads) throw invalidConfig(where, 'pool.minThreads', minThreads, `at most pool.maxThreads (${maxThreads})`);
  const resourceLimits = p.resourceLimits === undefined ? undefined : object(where, 'pool.resourceLimits', p.resourceLimits, ['maxOldGenerationSizeMb', 'maxYoungGenerationSizeMb', 'codeRangeSizeMb', 'stackSizeMb']);
  if (resourceLimits) {
    for (const [k, v] of Object.entries(resourceLimits)) field(where, `pool.resourceLimits.${k}`, v, (x) => typeof x === 'number' && x > 0, 'a positive number', 0);
  }
  const pool = {
    filename: filenameOf(where, p.filename),
    maxThreads,
    minThreads,
    maxQueue: field<number>(where, 'pool.maxQueue', p.maxQueue, nonNegativeInt, 'a non-negative integer', 10_000),
    perUserConcurrency: field<number>(where, 'pool.perUserConcurrency', p.perUserConcurrency, positiveInt, 'a positive integer', Infinity),
    taskTimeoutMs: field<number>(where, 'pool.taskTimeoutMs', p.taskTimeoutMs, positiveInt, 'a positive integer (milliseconds)', 0),
    resourceLimits: resourceLimits as ResourceLimits | undefined,
  };

  let quotaLimit: number | null = null;
  let quotaPeriodMs = 0;
  let quotaHard = true;
  if (top.quota !== undefined) {
    const q = object(where, 'quota', top.quota, ['limit', 'periodMs', 'kind']);
    if (q.limit === undefined) throw invalidConfig(where, 'quota.limit', undefined, 'a non-negative integer');
    quotaLimit = field<number>(where, 'quota.limit', q.limit, (v) => nonNegativeInt(v) && (v as number) <= MAX_INT, 'a non-negative integer', 0);
    quotaPeriodMs = field<number>(where, 'quota.periodMs', q.periodMs, positiveInt, 'a positive integer (milliseconds)', 0);
    quotaHard = field<'hard' | 'soft'>(where, 'quota.kind', q.kind, (v) => v === 'hard' || v === 'soft', "'hard' or 'soft'", 'hard') === 'hard';
  }

  const t = top.retry === undefined ? {} : object(where, 'retry', top.retry, ['attempts', 'baseMs', 'maxMs', 'multiplier', 'jitter']);
  const retry = {
    attempts: field<number>(where, 'retry.attempts', t.attempts, (v) => positiveInt(v) && (v as number) <= 1000, 'an integer from 1 to 1000', 1),
    baseMs: field<number>(where, 'retry.baseMs', t.baseMs, nonNegativeInt, 'a non-negative integer (milliseconds)', 100),
    maxMs: field<number>(where, 'retry.maxMs', t.maxMs, nonNegativeInt, 'a non-negative integer (milliseconds)', 30_000),
    multiplier: field<number>(where, 'retry.multiplier', t.multiplier, (v) => typeof v === 'number' && Number.isFinite(v) && v >= 1, 'a finite number >= 1', 2),
    jitter: field<number>(where, 'retry.jitter', t.jitter, (v) => typeof v === 'number' && v >= 0 && v <= 1, 'a number from 0 to 1', 0),
  };

  const q = top.dlq === undefined ? {} : object(where, 'dlq', top.dlq, ['maxEntries', 'retentionMs']);
  const dlq = {
    maxEntries: field<number>(where, 'dlq.maxEntries', q.maxEntries, positiveInt, 'a positive integer', 10_000),
    retentionMs: field<number>(where, 'dlq.retentionMs', q.retentionMs, positiveInt, 'a positive integer (milliseconds)', 7 * 24 * 3600_000),
  };

  return { name, rate, shared, onLimit, maxWaitMs, pool, quotaLimit, quotaPeriodMs, quotaHard, retry, dlq };
}

/** Two profiles naming one shared bucket must give it one rate. */
export function sameBucket(a: Profile, b: Profile): boolean {
  return a.rate.limit === b.rate.limit && a.rate.intervalMs === b.rate.intervalMs && a.rate.burst === b.rate.burst;
}
