// Worker tasks of the soak (bench/soak.ts): each named export is a task.
export function ok(n) {
  return n;
}

export function fail() {
  throw new Error('soak: planned failure');
}

export function crash() {
  process.exit(3);
}

export function spin({ ms }) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    // CPU-bound past its timeout: the thread is terminated.
  }
  return 0;
}
