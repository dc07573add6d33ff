/**
 * taskvalve demo: `npm start` (runs `tsx examples/demo.ts`). No Redis needed.
 *
 * 22 simulated users on three profiles submit CPU tasks (SHA-256 hashing, run on worker threads
 * from examples/workers/hash.mjs) for about 12 seconds:
 *   free  (8 users): one rate bucket shared by every free user ('free-pool', 20/s, burst 10),
 *                    a hard quota, waits at most 2 s for its rate turn
 *   pro   (6 users): a dedicated bucket each (15/s, burst 8), 2 tasks at once per user
 *   trial (8 users): its own small bucket and a 15-unit lifetime hard quota: trial users run out
 * Some tasks are 'flaky' (throw at random; 2 attempts, so some end dead-lettered), some cost
 * more than one unit, and some are submitted with `wait: false` (RATE_LIMITED instead of waiting).
 *
 * While it runs, Prometheus metrics are served on http://127.0.0.1:<PORT>/metrics
 * (PORT from the environment, else an ephemeral port).
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Manager, TaskvalveError, type FailedTask, type ProfileConfig } from '../src/index.js';

const RUN_MS = Number(process.env.DEMO_MS ?? 12_000);
const HASH_WORKER = new URL('./workers/hash.mjs', import.meta.url);
/** Wall-clock ms with sub-ms precision; the worker stamps task starts on the same clock. */
const now = (): number => performance.timeOrigin + performance.now();

type ProfileName = 'free' | 'pro' | 'trial';

const manager = new Manager();

const tiers: Record<ProfileName, ProfileConfig> = {
  free: {
    rate: { limit: 20, intervalMs: 1000, burst: 10, shared: 'free-pool', maxWaitMs: 2000 },
    pool: { filename: HASH_WORKER, maxThreads: 1, maxQueue: 50 },
    quota: { limit: 60, periodMs: 60_000, kind: 'hard' },
    retry: { attempts: 2, baseMs: 50, jitter: 0.5 },
    dlq: { maxEntries: 1000 },
  },
  pro: {
    rate: { limit: 15, intervalMs: 1000, burst: 8 },
    pool: { filename: HASH_WORKER, maxThreads: 2, perUserConcurrency: 2, maxQueue: 100 },
    retry: { attempts: 2, baseMs: 50, jitter: 0.5 },
  },
  trial: {
    rate: { limit: 4, intervalMs: 1000, burst: 4 },
    pool: { filename: HASH_WORKER, maxThreads: 1, maxQueue: 20 },
    quota: { limit: 15, kind: 'hard' },
    retry: { attempts: 2, baseMs: 50 },
  },
};
for (const [name, config] of Object.entries(tiers)) manager.registerProfile(name, config);

/** One tier's settings in two short lines (the demo fits an 80-column terminal). */
function describeTier(name: ProfileName, users: number): string[] {
  const { rate, pool = {}, quota, retry = {} } = tiers[name];
  const perSecond = (rate.limit * 1000) / rate.intervalMs;
  const bucket = rate.shared === undefined ? 'a bucket per user' : `shared bucket '${rate.shared}'`;
  const waits = rate.maxWaitMs === undefined ? '' : `, waits <= ${rate.maxWaitMs / 1000} s`;
  const quotaText = quota === undefined ? 'no quota' : `quota ${quota.limit} ${quota.periodMs === undefined ? 'for life' : `per ${quota.periodMs / 1000} s`}`;
  const perUser = pool.perUserConcurrency === undefined ? '' : `, ${pool.perUserConcurrency} at once per user`;
  return [
    `  ${name.padEnd(6)}${users} users: ${perSecond}/s, burst ${rate.burst ?? rate.limit}, ${bucket}${waits}`,
    `${' '.repeat(8)}${quotaText}; ${pool.maxThreads ?? 1} thread(s)${perUser}; ${retry.attempts ?? 1} attempts`,
  ];
}

// ---- per-user bookkeeping ------------------------------------------------------------------

interface UserStats {
  user: string;
  profile: ProfileName;
  submitted: number;
  completed: number;
  rateLimited: number;
  overQuota: number;
  deadLettered: number;
  other: number;
  /** ms from the submit() call to the start of the (successful) attempt on its worker thread. */
  waits: number[];
}

const users: UserStats[] = [];
const byUser = new Map<string, UserStats>();
const totals = { submitted: 0, completed: 0, rateLimited: 0, overQuota: 0, deadLettered: 0, other: 0, inFlight: 0 };
const otherCodes = new Map<string, number>();

manager.on('dead-letter', (entry: FailedTask) => {
  const s = byUser.get(entry.userId);
  if (s !== undefined) s.deadLettered++;
  totals.deadLettered++;
});

const plan: Array<[ProfileName, number, number]> = [
  // profile, users, concurrent submit loops per user
  ['free', 8, 2],
  ['pro', 6, 3],
  ['trial', 8, 1],
];
for (const [profile, count] of plan) {
  for (let i = 1; i <= count; i++) {
    const user = `${profile}-${String(i).padStart(2, '0')}`;
    await manager.subscribe(user, profile);
    const s: UserStats = { user, profile, submitted: 0, completed: 0, rateLimited: 0, overQuota: 0, deadLettered: 0, other: 0, waits: [] };
    users.push(s);
    byUser.set(user, s);
  }
}

// ---- /metrics ------------------------------------------------------------------------------

const server: Server = createServer((req, res) => {
  if (req.method === 'GET' && req.url?.split('?')[0] === '/metrics') {
    manager.registry.metrics().then(
      (body) => {
        res.writeHead(200, { 'content-type': manager.registry.contentType });
        res.end(body);
      },
      (error: unknown) => {
        res.writeHead(500, { 'content-type': 'text/plain' });
        res.end(`scrape failed: ${String(error)}\n`);
      },
    );
    return;
  }
  res.writeHead(404, { 'content-type': 'text/plain' });
  res.end('try /metrics\n');
});
await new Promise<void>((resolve, reject) => {
  server.once('error', reject);
  server.listen(Number(process.env.PORT ?? 0), '127.0.0.1', () => resolve());
});
const metricsUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}/metrics`;
console.log(`taskvalve demo: ${users.length} users on three tiers for ${RUN_MS / 1000} s`);
for (const [profile, count] of plan) for (const line of describeTier(profile, count)) console.log(line);
console.log(`metrics: ${metricsUrl}`);

// ---- the users -----------------------------------------------------------------------------

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));
const pick = <T>(items: readonly T[]): T => items[Math.floor(Math.random() * items.length)] as T;
const started = now();
const deadline = started + RUN_MS;

interface HashResult {
  digest: string;
  startedAt: number;
  runMs: number;
}

/** Submits one task; resolves with extra think time for the caller (backing off when over quota). */
async function one(s: UserStats): Promise<number> {
  const cost = pick([1, 1, 1, 1, 2, 3]);
  const flaky = Math.random() < 0.2;
  const wait = Math.random() >= 0.25; // a quarter of the submissions refuse to wait for the rate
  const task = { name: flaky ? 'flaky' : 'hash', payload: { rounds: 120 * cost + Math.floor(Math.random() * 120) } };
  s.submitted++;
  totals.submitted++;
  totals.inFlight++;
  const submittedAt = now();
  try {
    const result = await manager.getLimiter(s.user).submit<HashResult>(task, { cost, wait });
    s.completed++;
    totals.completed++;
    s.waits.push(Math.max(0, result.startedAt - submittedAt));
  } catch (error) {
    const code = error instanceof TaskvalveError ? error.code : 'UNKNOWN';
    if (code === 'RATE_LIMITED') {
      s.rateLimited++;
      totals.rateLimited++;
    } else if (code === 'QUOTA_EXCEEDED') {
      s.overQuota++;
      totals.overQuota++;
      return 1000; // out of quota: try again later (it never comes back for a trial user)
    } else if (code === 'TASK_FAILED') {
      // dead-lettered: counted by the 'dead-letter' event (stored before this rejection)
    } else {
      s.other++;
      totals.other++;
      otherCodes.set(code, (otherCodes.get(code) ?? 0) + 1);
    }
  } finally {
    totals.inFlight--;
  }
  return 0;
}

async function userLoop(s: UserStats): Promise<void> {
  await sleep(Math.random() * 300);
  while (now() < deadline) {
    const backoff = await one(s);
    await sleep(backoff + 50 + Math.random() * 250); // think time
  }
}

// ---- progress ------------------------------------------------------------------------------

const tty = process.stdout.isTTY === true;
async function gauge(name: string): Promise<number> {
  const metric = manager.registry.getSingleMetric(`taskvalve_${name}`);
  if (metric === undefined) return 0;
  const { values } = await metric.get();
  return values.reduce((sum, v) => sum + v.value, 0);
}
async function progress(final = false): Promise<void> {
  const [running, queued] = await Promise.all([gauge('tasks_running'), gauge('queue_depth')]);
  const waitingForRate = Math.max(0, totals.inFlight - running - queued);
  // At most 79 columns: done/limited/quota/dead are totals so far; run/queue/wait are now.
  const pad = (n: number, width: number): string => String(n).padStart(width);
  const line =
    `${((now() - started) / 1000).toFixed(1).padStart(5)}s done ${pad(totals.completed, 5)} limited ${pad(totals.rateLimited, 4)}` +
    ` quota ${pad(totals.overQuota, 3)} dead ${pad(totals.deadLettered, 3)}  run ${pad(running, 2)} queue ${pad(queued, 3)} wait ${pad(waitingForRate, 3)}`;
  if (tty) process.stdout.write(`\r${line}\x1b[K${final ? '\n' : ''}`);
  else console.log(line);
}
const ticker = setInterval(() => void progress(), tty ? 250 : 1000);

const loops: Promise<void>[] = [];
for (const s of users) {
  const concurrency = plan.find(([p]) => p === s.profile)?.[2] ?? 1;
  for (let i = 0; i < concurrency; i++) loops.push(userLoop(s));
}
await Promise.all(loops);
clearInterval(ticker);
await progress(true);

// ---- report --------------------------------------------------------------------------------

function percentile(sorted: number[], p: number): string {
  if (sorted.length === 0) return '-';
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return (sorted[i] as number).toFixed(1);
}
const header = ['user', 'tier', 'sent', 'done', 'limited', 'quota', 'dead', 'p50 ms', 'p99 ms'];
const rows = users.map((s) => {
  const sorted = [...s.waits].sort((a, b) => a - b);
  return [s.user, s.profile, s.submitted, s.completed, s.rateLimited, s.overQuota, s.deadLettered, percentile(sorted, 50), percentile(sorted, 99)].map(String);
});
const allWaits = users.flatMap((s) => s.waits).sort((a, b) => a - b);
rows.push(
  ['TOTAL', '', totals.submitted, totals.completed, totals.rateLimited, totals.overQuota, totals.deadLettered, percentile(allWaits, 50), percentile(allWaits, 99)].map(String),
);
const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] as string).length)));
const fmt = (cells: string[]): string => cells.map((c, i) => (i < 2 ? c.padEnd(widths[i] as number) : c.padStart(widths[i] as number))).join('  ');
console.log();
console.log(fmt(header));
console.log(widths.map((w) => '-'.repeat(w)).join('  '));
for (const [i, r] of rows.entries()) {
  if (i === rows.length - 1) console.log(widths.map((w) => '-'.repeat(w)).join('  '));
  console.log(fmt(r));
}
console.log(
  [
    'p50/p99 ms: wait from submit() to the start of the successful attempt on its',
    '  worker thread (stamped by the worker): the rate wait, the queue for a thread,',
    '  and for a retried task its failed attempt and backoff. Completed tasks only.',
    'limited: RATE_LIMITED (wait: false, or a turn beyond maxWaitMs);',
    'quota: QUOTA_EXCEEDED; dead: failed both attempts (see manager.dlq).',
  ].join('\n'),
);
if (otherCodes.size > 0) console.log('other rejections:', Object.fromEntries(otherCodes));
console.log(`dead-letter queue holds ${(await manager.dlq.list()).length} entries`);

// A last scrape of our own endpoint, to show what Prometheus sees.
const scrape = await (await fetch(metricsUrl)).text();
console.log('\nfrom /metrics (names without their prefix taskvalve_):');
for (const line of scrape.split('\n')) {
  if (/^taskvalve_(tasks_submitted_total|tasks_rejected_total|dead_letters_total)\{/.test(line) && !line.endsWith(' 0')) console.log(`  ${line.slice('taskvalve_'.length)}`);
}

const report = await manager.close({ drain: true, timeoutMs: 10_000 });
const left = report.completed + report.rejected + report.abandoned;
console.log(
  left === 0
    ? '\nClosed: every task had settled before the close, so there was nothing to drain.'
    : `\nClosed: ${report.completed} task(s) finished while draining, ${report.rejected} rejected, ${report.abandoned} abandoned.`,
);
server.closeAllConnections();
await new Promise<void>((resolve) => server.close(() => resolve()));
console.log(`done in ${((now() - started) / 1000).toFixed(1)} s`);
