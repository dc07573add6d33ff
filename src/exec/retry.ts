/** The retry policy: which failures are retried, and when. */
import { ErrorCode, TaskvalveError } from '../errors.js';
import type { Profile } from '../profile.js';

/** Codes worth another attempt, unless the error says `retryable: false`. */
export function isRetryable(error: TaskvalveError): boolean {
  if (error.retryable === false) return false;
  if (error.code === ErrorCode.TASK_FAILED) {
    const cause = error.cause as { retryable?: unknown } | undefined;
    return cause?.retryable !== false;
  }
  return error.code === ErrorCode.WORKER_CRASHED || error.code === ErrorCode.TASK_TIMEOUT;
}

/**
 * Delay before attempt `next` (2 for the first retry): base * multiplier^(next - 2), capped,
 * then drawn uniformly from [delay * (1 - jitter), delay].
 */
export function backoffMs(retry: Profile['retry'], next: number, random: () => number = Math.random): number {
  const raw = retry.baseMs * retry.multiplier ** (next - 2);
  const capped = Math.min(retry.maxMs, raw);
  return Math.round(retry.jitter === 0 ? capped : capped * (1 - retry.jitter * random()));
}
