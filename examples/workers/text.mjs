// A worker module (docs/workers.md): plain JavaScript that Node runs as it is. Each named export
// is a task; it gets the task's payload and returns (or resolves with) a value that can be cloned.
import { createHash } from 'node:crypto';

/** CPU-bound: a SHA-256 digest of `text`, repeated `rounds` times. */
export function digest({ text, rounds = 1 }) {
  let out = text;
  for (let i = 0; i < rounds; i++) out = createHash('sha256').update(out).digest('hex');
  return out;
}

/** Async works too; an Error thrown here reaches the caller as TASK_FAILED with this error as cause. */
export async function words(text) {
  if (typeof text !== 'string') throw new TypeError('words: text must be a string');
  return text.split(/\s+/).filter(Boolean).length;
}
