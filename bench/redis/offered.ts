/**
 * Offered load on a RedisStore: decisions arrive at a steady rate whatever the answers (open
 * loop, as requests reach a server), not one per answer. It shows what a closed-loop bench
 * cannot: whether the process stays responsive at the rate it is offered, what it sheds, and how
 * soon service is back after Redis is killed (SIGKILL) and restarted.
 *
 *   - 10,000 users with a rate and a quota (each allowed check charges both);
 *   - `RATE` check(1) per second, issued every millisecond for what is due (so a late timer
 *     issues a burst, as a server's backlog of requests would), over `SECONDS` seconds;
 *   - the event loop's delay (p99), the answers per second, the decisions shed for overload;
 *   - then the server is killed and restarted while the load goes on: the seconds from the
 *     restart until a second's answers are back at 90% of the rate offered.
 */
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';
import { Redis } from 'ioredis';
import { Manager, RedisStore, TaskvalveError } from '../../src/index.js';
import { startRedis } from '../../test/support/redis.js';
import type { Row } from '../lib/table.js';

const USERS = 10_000;
const RATE = 50_000;
const SECONDS = 5;
const TARGET_P99_MS = 50;
const TARGET_BACK_S = 5;

/** What one run of offered load came to. */
interface Outcome {
  answered: number;
  shed: number;
  failed: number;
  /** Failures by code (shed ones aside). */
  codes: Record<string, number>;
  p99Ms: number;
  /** Answers that were not errors, per whole second since the start. */
  perSecond: number[];
}

/** Offers `rate` check(1)/s for `ms`; `during(elapsedMs)` is called every tick (to kill and restart). */
async function offer(manager: Manager, users: readonly string[], rate: number, ms: number, during?: (elapsedMs: number) => void): Promise<Outcome> {
  const limiters = users.map((u) => manager.getLimiter(u));
  const out: Outcome = { answered: 0, shed: 0, failed: 0, codes: {}, p99Ms: 0, perSecond: [] };
  const loop = monitorEventLoopDelay({ resolution: 1 });
  const t0 = performance.now();
  let issued = 0;
  let settled = 0;
  const ok = (): void => {
    settled++;
    out.answered++;
    const s = Math.floor((performance.now() - t0) / 1000);
    out.perSecond[s] = (out.perSecond[s] ?? 0) + 1;
  };
  const failed = (error: unknown): void => {
    settled++;
    if (error instanceof TaskvalveError && error.message.includes('overloaded')) out.shed++;
    else {
      out.failed++;
      const code = error instanceof TaskvalveError ? error.code : 'UNKNOWN';
      out.codes[code] = (out.codes[code] ?? 0) + 1;
    }
  };
  loop.enable();
  for (;;) {
    const elapsed = performance.now() - t0;
    if (elapsed >= ms) break;
    during?.(elapsed);
    const due = Math.floor((elapsed / 1000) * rate);
    for (; issued < due; issued++) limiters[issued % limiters.length]!.check(1).then(ok, failed);
    await new Promise((resolve) => setTimeout(resolve, 1));
  }
  loop.disable();
  out.p99Ms = loop.percentile(99) / 1e6;
  // Every call answers (shed, failed by its timeout, or decided): wait for the stragglers.
  while (settled < issued) await new Promise((resolve) => setTimeout(resolve, 10));
  return out;
}

/** Rows of the offered-load measure: event-loop p99 under load, and service back after a restart. */
export async function offeredSection(log: (line: string) => void): Promise<Row[]> {
  // Append-only, so that the users' subscriptions survive the kill.
  const server = await startRedis({ appendonly: true });
  const client = new Redis({ port: server.port });
  client.on('error', () => {}); // the server is killed on purpose
  const manager = new Manager({ store: new RedisStore({ client }), onStoreUnavailable: 'fail-closed' });
  manager.on('error', () => {});
  try {
    manager.registerProfile('offered', { rate: { limit: 1_000_000, intervalMs: 1000 }, quota: { limit: 1_000_000_000 } });
    const users = Array.from({ length: USERS }, (_, i) => `offered-${i}`);
    for (let i = 0; i < USERS; i += 500) await Promise.all(users.slice(i, i + 500).map((u) => manager.subscribe(u, 'offered')));
    log(`offered load: ${RATE.toLocaleString('en-US')} check(1)/s over ${USERS.toLocaleString('en-US')} users for ${SECONDS} s, then a kill -9 and restart ...`);
    await offer(manager, users, RATE, 1000); // warm-up
    const steady = await offer(manager, users, RATE, SECONDS * 1000);
    const answeredPerS = steady.answered / SECONDS;
    log(`  steady: ${Math.round(answeredPerS).toLocaleString('en-US')} answered/s, ${steady.shed} shed, ${steady.failed} failed, event-loop p99 ${steady.p99Ms.toFixed(1)} ms`);

    let restartedAt = -1;
    let phase = 0;
    const start = performance.now();
    const faulted = await offer(manager, users, RATE, 12_000, (elapsed) => {
      if (phase === 0 && elapsed >= 2000) {
        phase = 1;
        void server
          .kill()
          .then(() => server.restart())
          .then(() => (restartedAt = performance.now() - start));
      }
    });
    let back = Number.NaN;
    if (restartedAt >= 0) {
      const from = Math.ceil(restartedAt / 1000);
      for (let s = from; s < faulted.perSecond.length; s++) {
        if ((faulted.perSecond[s] ?? 0) >= 0.9 * RATE) {
          back = s + 1 - restartedAt / 1000;
          break;
        }
      }
    }
    log(`  after a kill -9 and restart: service back ${Number.isNaN(back) ? 'not within the run' : `${back.toFixed(1)} s after the restart`}; ${faulted.shed} shed, ${faulted.failed} failed ${JSON.stringify(faulted.codes)}; answers per second ${faulted.perSecond.join(' ')}`);
    return [
      {
        measure: `event-loop p99 at ${RATE.toLocaleString('en-US')} offered check(1)/s (open loop, 10,000 users, rate + quota)`,
        taskvalve: `${steady.p99Ms.toFixed(1)} ms`,
        reference: `${Math.round(answeredPerS).toLocaleString('en-US')} answered/s, ${steady.shed.toLocaleString('en-US')} shed`,
        target: `≤ ${TARGET_P99_MS} ms`,
        met: steady.p99Ms <= TARGET_P99_MS,
      },
      {
        measure: `service back after kill -9 and restart of Redis, at ${RATE.toLocaleString('en-US')} offered/s`,
        taskvalve: Number.isNaN(back) ? 'not back' : `${back.toFixed(1)} s`,
        reference: `${faulted.failed.toLocaleString('en-US')} failed, ${faulted.shed.toLocaleString('en-US')} shed meanwhile`,
        target: `≤ ${TARGET_BACK_S} s`,
        met: !Number.isNaN(back) && back <= TARGET_BACK_S,
      },
    ];
  } finally {
    await manager.close({ drain: false, timeoutMs: 5_000 });
    client.disconnect();
    await server.stop();
  }
}
