/**
 * `npx tsx bench/soak-lean.ts [--rate R] [--seconds S] [--aof]`: the soak's decision mix on a
 * RedisStore, driven by a lean loop, to tell what the store costs from what the soak's own
 * bookkeeping, user rotation and worker threads add (docs/redis.md, "Soak").
 * 10,000 users; per 40 decisions 36 check(1) and one inline submit of each kind the soak has
 * (succeeds, throws, outlives its 40 ms timeout, and one more that outlives it); retries and
 * dead letters as the soak's profile has them. No worker tasks, no rotation, no kill. Prints the
 * main thread's busy share and µs per decision, the event-loop p99, and the server's µs per
 * decision (INFO commandstats: EVALSHA, scripts' own commands included).
 */
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { Redis } from 'ioredis';
import { Manager, RedisStore, type Limiter } from '../dist/index.js';
import { startRedis } from '../test/support/redis.js';

const args = process.argv.slice(2);
const flag = (name: string, fallback: number): number => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? Number(args[i + 1]) : fallback;
};
const RATE = flag('rate', 50_000);
const SECONDS = flag('seconds', 10);

const server = await startRedis({ appendonly: args.includes('--aof') });
const client = new Redis({ port: server.port });
const manager = new Manager({ store: new RedisStore({ client }), onStoreUnavailable: 'fail-closed' });
manager.registerProfile('p', { rate: { limit: 1_000_000, intervalMs: 1000 }, quota: { limit: 1e9 }, retry: { attempts: 2, baseMs: 5, maxMs: 20 }, dlq: { maxEntries: 1000, retentionMs: 5000 } });
manager.on('error', () => {});
const users: Limiter[] = [];
for (let i = 0; i < 10_000; i += 500) {
  const ids = Array.from({ length: 500 }, (_, k) => `lean-${i + k}`);
  await Promise.all(ids.map((id) => manager.subscribe(id, 'p')));
  users.push(...ids.map((id) => manager.getLimiter(id)));
}
const tasks = [() => 1, () => Promise.reject(new Error('planned')), () => new Promise((r) => setTimeout(r, 80)), () => new Promise((r) => setTimeout(r, 80))];
let inFlight = 0;
let failed = 0;
const done = (): void => void inFlight--;
const fail = (): void => {
  inFlight--;
  failed++;
};

async function run(seconds: number): Promise<{ decisions: number; busy: number; usPerDecision: number; p99Ms: number }> {
  const lag = monitorEventLoopDelay({ resolution: 10 });
  lag.enable();
  const t0 = performance.now();
  const elu0 = performance.eventLoopUtilization();
  let i = 0;
  while (performance.now() - t0 < seconds * 1000) {
    const due = Math.floor(((performance.now() - t0) / 1000) * RATE);
    for (; i < due; i++) {
      const user = users[i % users.length]!;
      const k = i % 40;
      inFlight++;
      if (k < 36) user.check(1).then(done, fail);
      else user.submit(tasks[k - 36]!, { timeoutMs: 40 }).then(done, fail);
    }
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  while (inFlight > 0) await new Promise((resolve) => setTimeout(resolve, 10));
  lag.disable();
  const elu = performance.eventLoopUtilization(elu0);
  return { decisions: i, busy: Number(elu.utilization.toFixed(3)), usPerDecision: Number(((elu.active * 1000) / i).toFixed(1)), p99Ms: Number((lag.percentile(99) / 1e6).toFixed(1)) };
}

await run(3); // warm-up
await client.config('RESETSTAT');
failed = 0;
const r = await run(SECONDS);
const stats = await client.info('commandstats');
const evalsha = /cmdstat_evalsha:calls=(\d+),usec=(\d+)/.exec(stats);
const serverUs = evalsha === null ? 0 : Number(evalsha[2]) / r.decisions;
process.stdout.write(`${JSON.stringify({ rate: RATE, seconds: SECONDS, aof: args.includes('--aof'), ...r, failed, serverUsPerDecision: Number(serverUs.toFixed(1)) }, null, 2)}\n`);
await manager.close();
client.disconnect();
await server.stop();
