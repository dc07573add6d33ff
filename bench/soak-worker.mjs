// Worker tasks of the soak (bench/soak.ts): each named export is a task. Each one marks that it
// started in `started` (an Int32Array on shared memory), so that the soak knows which of its
// worker tasks ran, and were charged, whatever their callers were told.
import { BroadcastChannel } from 'node:worker_threads';

// Each worker thread that loads this module says so once: the soak counts the threads its pool
// started (each crash, and each task terminated at its timeout, costs the pool a new one).
const threads = new BroadcastChannel('taskvalve-soak-threads');
threads.postMessage(1);
threads.close();

function mark({ started }) {
  Atomics.store(started, 0, 1);
}

export function ok(payload) {
  mark(payload);
  return 1;
}

export function fail(payload) {
  mark(payload);
  throw new Error('soak: planned failure');
}

export function crash(payload) {
  mark(payload);
  process.exit(3);
}

export function spin(payload) {
  mark(payload);
  const end = Date.now() + payload.ms;
  while (Date.now() < end) {
    // CPU-bound past its timeout: the thread is terminated.
  }
  return 0;
}
