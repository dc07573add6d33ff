/**
 * `npx tsx bench/redis/script-cost.ts [--aof]`: what redis-server spends on one `check(1)` (the
 * figures of docs/redis.md, "Soak"). A redis-server of its own (`--aof`: syncing every write, as
 * the soak's), 10,000 users, 256 checks in flight; per round of 100,000 checks, the server's CPU
 * (INFO cpu) and the µs of EVALSHA (INFO commandstats, the script's own GET and SET included)
 * per decision, and the decisions per script call. Prints the medians of 5 rounds.
 */
import { Redis } from 'ioredis';
import { Manager, RedisStore, type Limiter } from '../../dist/index.js';
import { startRedis } from '../../test/support/redis.js';
import { commandStats, serverCpuSeconds } from './server.js';

const USERS = 10_000;
const IN_FLIGHT = 256;
const CHECKS = 100_000;
const ROUNDS = 5;

const server = await startRedis({ appendonly: process.argv.includes('--aof') });
const client = new Redis({ port: server.port });
const admin = new Redis({ port: server.port });
const manager = new Manager({ store: new RedisStore({ client }) });
try {
  manager.registerProfile('p', { rate: { limit: 1e6, intervalMs: 1000 }, quota: { limit: 1e12 } });
  const users: Limiter[] = [];
  for (let i = 0; i < USERS; i += 500) {
    const ids = Array.from({ length: 500 }, (_, k) => `u${i + k}`);
    await Promise.all(ids.map((id) => manager.subscribe(id, 'p')));
    users.push(...ids.map((id) => manager.getLimiter(id)));
  }
  const round = async (n: number): Promise<void> => {
    let i = 0;
    const caller = async (): Promise<void> => {
      while (i < n) await users[i++ % USERS]!.check(1);
    };
    await Promise.all(Array.from({ length: IN_FLIGHT }, caller));
  };
  await round(CHECKS); // warm-up
  const cpu: number[] = [];
  const script: number[] = [];
  const perCall: number[] = [];
  for (let r = 0; r < ROUNDS; r++) {
    await admin.config('RESETSTAT');
    const cpu0 = await serverCpuSeconds(admin);
    await round(CHECKS);
    const cpu1 = await serverCpuSeconds(admin);
    const evalsha = (await commandStats(admin)).get('evalsha') ?? { calls: 0, usec: 0 };
    cpu.push(((cpu1 - cpu0) * 1e6) / CHECKS);
    script.push(evalsha.usec / CHECKS);
    perCall.push(CHECKS / Math.max(1, evalsha.calls));
  }
  const median = (a: number[]): string => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)]!.toFixed(2);
  console.log(`redis-server per check(1): CPU ${median(cpu)} µs, EVALSHA ${median(script)} µs; ${median(perCall)} decisions per call (${process.argv.includes('--aof') ? 'appendfsync always' : 'no append-only file'})`);
} finally {
  await manager.close();
  client.disconnect();
  admin.disconnect();
  await server.stop();
}
