/**
 * Graceful shutdown: wire SIGTERM / SIGINT to `manager.close({ drain: true, timeoutMs })`.
 *
 *   npx tsx examples/sigterm.ts              # runs until you press Ctrl-C (or `kill <pid>`)
 *   npx tsx examples/sigterm.ts --self-test  # queues some tasks, sends itself SIGTERM, exits 0
 *
 * On the first signal, admission stops (new submits reject SHUTTING_DOWN) and every admitted
 * task, including those still waiting for their rate turn, runs to its end within the drain
 * timeout; then the close report is logged and the process exits on its own. A second signal
 * while draining exits at once.
 */
import { Manager, TaskvalveError, type CloseReport } from '../src/index.js';

const SELF_TEST = process.argv.includes('--self-test');
const DRAIN_TIMEOUT_MS = 10_000;

const manager = new Manager();
// An I/O-bound profile (inline tasks): 5 tasks per second, 2 running at once per user.
manager.registerProfile('api', {
  rate: { limit: 5, intervalMs: 1000, burst: 2 },
  pool: { perUserConcurrency: 2 },
});
await manager.subscribe('alice', 'api');
const limiter = manager.getLimiter('alice');

const log = (msg: string): void => console.log(`[${new Date().toISOString().slice(11, 23)}] ${msg}`);
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

// ---- the shutdown wiring (the part to copy) ---------------------------------------------

let closing: Promise<CloseReport> | undefined;
let completedBeforeSignal = 0;
function shutdown(signal: NodeJS.Signals): void {
  if (closing !== undefined) {
    log(`${signal} again while draining: exiting now`);
    process.exit(130);
  }
  completedBeforeSignal = completed;
  log(`${signal}: no new work; draining admitted tasks (up to ${DRAIN_TIMEOUT_MS} ms)`);
  // Never let a stuck drain keep the process alive past the timeout (plus a margin).
  setTimeout(() => {
    log('drain did not finish in time: exiting');
    process.exit(1);
  }, DRAIN_TIMEOUT_MS + 5_000).unref();
  closing = manager.close({ drain: true, timeoutMs: DRAIN_TIMEOUT_MS });
  closing.then(
    (report) => {
      log(`closed: ${JSON.stringify(report)}`);
      // Nothing else holds the event loop: the process exits by itself with process.exitCode.
    },
    (error: unknown) => {
      log(`close failed: ${String(error)}`);
      process.exitCode = 1;
    },
  );
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);

// ---- the application: a producer submitting work until shutdown --------------------------

let submitted = 0;
let completed = 0;
let refused = 0;
const pending = new Set<Promise<void>>();

/** A pretend request to a downstream service, about 300 ms. */
const fetchReport = (n: number) => async ({ signal }: { signal: AbortSignal }): Promise<string> => {
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(resolve, 300);
    signal.addEventListener('abort', () => {
      clearTimeout(timer);
      reject(signal.reason);
    });
  });
  return `report #${n}`;
};

function submitOne(): void {
  const n = ++submitted;
  const p = limiter.submit<string>(fetchReport(n)).then(
    (value) => {
      completed++;
      log(`  done: ${value}`);
    },
    (error: unknown) => {
      refused++;
      log(`  task #${n} refused: ${error instanceof TaskvalveError ? error.code : String(error)}`);
    },
  );
  pending.add(p);
  void p.finally(() => pending.delete(p));
}

log(`pid ${process.pid}: submitting tasks${SELF_TEST ? ' (self-test: SIGTERM after 8 submissions)' : '; press Ctrl-C to stop'}`);
while (closing === undefined) {
  submitOne();
  if (SELF_TEST && submitted === 8) {
    // 8 tasks at 5/s with burst 2: most of them still wait for their rate turn now.
    log('self-test: sending SIGTERM to myself');
    process.kill(process.pid, 'SIGTERM');
  }
  await sleep(SELF_TEST ? 20 : 150);
}

// After close() began, submits reject SHUTTING_DOWN at once:
try {
  await limiter.submit(() => 'too late');
} catch (error) {
  log(`a submit after the signal: ${error instanceof TaskvalveError ? error.code : String(error)}`);
}

const report = await closing;
await Promise.all(pending);
log(`submitted ${submitted}, completed ${completed}, refused ${refused}`);

if (SELF_TEST) {
  // Every task admitted before the signal ran to its end; the drain ran those not done yet.
  const ok =
    completed === submitted &&
    refused === 0 &&
    completedBeforeSignal + report.completed === submitted &&
    report.completed > 0 &&
    report.abandoned === 0 &&
    report.rejected === 0;
  log(ok ? 'self-test passed' : `self-test FAILED: ${JSON.stringify({ submitted, completed, refused, report })}`);
  if (!ok) process.exitCode = 1;
}
