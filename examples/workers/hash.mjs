// Worker module for examples/demo.ts: every named export is a task that taskvalve runs on a
// worker thread with the task's payload. Plain JS, no build step.
import { createHash } from 'node:crypto';

/** Wall-clock ms with sub-ms precision, comparable across threads of one process. */
const now = () => performance.timeOrigin + performance.now();

function digest(size, rounds) {
  let data = Buffer.alloc(size, 7);
  for (let i = 0; i < rounds; i++) data = createHash('sha256').update(data).update(Buffer.alloc(size, i & 0xff)).digest();
  return data.toString('hex');
}

/**
 * Hashes a `size`-byte buffer `rounds` times (CPU bound). Returns the digest with when the
 * run began on this thread and how long it ran, so the caller can tell waiting from running.
 */
export function hash({ size = 64 * 1024, rounds = 50 } = {}) {
  const startedAt = now();
  const hex = digest(size, rounds);
  return { digest: hex.slice(0, 16), startedAt, runMs: now() - startedAt };
}

/** Like hash, but fails with probability `failRate` (after doing half the work). */
export function flaky({ size = 64 * 1024, rounds = 50, failRate = 0.35 } = {}) {
  const startedAt = now();
  digest(size, Math.ceil(rounds / 2));
  if (Math.random() < failRate) {
    const err = new Error('upstream checksum mismatch (simulated)');
    err.code = 'ECHECKSUM';
    throw err;
  }
  const hex = digest(size, Math.floor(rounds / 2));
  return { digest: hex.slice(0, 16), startedAt, runMs: now() - startedAt };
}
