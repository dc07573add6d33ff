/**
 * taskvalve across processes: `npx tsx examples/cluster-demo.ts [N=4]`.
 *
 * Starts N Node processes (this file again, with --child) that share one Redis. Each one
 * connects its own ioredis client, builds its own Manager over `new RedisStore({ client, prefix })`,
 * registers the same profile (one bucket shared by every user of it: 50 units per 5 s, burst 50)
 * and subscribes its own user. On the parent's 'go' every process submits tasks as fast as the
 * limiter lets it for about 6 s (several loops each; a RATE_LIMITED loop sleeps its retryAfterMs
 * and tries again). The parent then prints what each process got and the total next to what
 * the window allows: burst + elapsed x rate. The processes never talk to each other; only the
 * shared bucket in Redis keeps their sum at the limit.
 *
 * Redis: REDIS_URL (default redis://127.0.0.1:6379). If it does not answer and `redis-server` is
 * on PATH, a throwaway server is started on a free port and stopped at the end. The demo's keys
 * use a fresh prefix and are deleted at the end.
 */
import { fork, spawn, type ChildProcess } from 'node:child_process';
import { createServer } from 'node:net';
import { fileURLToPath } from 'node:url';
import { Redis } from 'ioredis';
import { Manager, RedisStore, TaskvalveError } from '../src/index.js';

const RUN_MS = Number(process.env.DEMO_MS ?? 6_000);
/** Concurrent submit loops per process. */
const LOOPS = 8;
const RATE = { limit: 50, intervalMs: 5_000, burst: 50 } as const;
const SHARED = 'demo-pool';

type ToChild = { type: 'go'; deadline: number };
type FromChild =
  | { type: 'ready'; index: number }
  | { type: 'result'; index: number; units: number; tasks: number; denied: number; firstAt: number; lastAt: number }
  | { type: 'failed'; index: number; message: string };

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

// ---- a child: one process, one client, one Manager ------------------------------------------

async function child(): Promise<void> {
  const index = Number(process.env.TV_DEMO_INDEX);
  const send = (message: FromChild): void => void process.send?.(message);
  const client = new Redis(process.env.TV_DEMO_URL as string, { maxRetriesPerRequest: 1 });
  const manager = new Manager({ store: new RedisStore({ client, prefix: process.env.TV_DEMO_PREFIX as string }) });
  try {
    manager.registerProfile('worker', { rate: { ...RATE, shared: SHARED, onLimit: 'reject' } });
    const user = `worker-${index}`;
    await manager.subscribe(user, 'worker');
    const limiter = manager.getLimiter(user);

    const go = new Promise<ToChild>((resolve) => process.once('message', (m: ToChild) => resolve(m)));
    send({ type: 'ready', index });
    const { deadline } = await go;

    let units = 0;
    let tasks = 0;
    let denied = 0;
    let firstAt = 0;
    let lastAt = 0;
    const loop = async (): Promise<void> => {
      while (Date.now() < deadline) {
        try {
          await limiter.submit(() => Date.now());
          const at = Date.now();
          if (firstAt === 0) firstAt = at;
          lastAt = at;
          units += 1;
          tasks += 1;
        } catch (error) {
          if (!(error instanceof TaskvalveError) || error.code !== 'RATE_LIMITED') throw error;
          denied += 1;
          // Wait for the next unit, but never past the end of the run.
          await sleep(Math.max(1, Math.min(error.retryAfterMs ?? 1, deadline - Date.now())));
        }
      }
    };
    await Promise.all(Array.from({ length: LOOPS }, loop));
    send({ type: 'result', index, units, tasks, denied, firstAt, lastAt });
  } catch (error) {
    send({ type: 'failed', index, message: error instanceof Error ? (error.stack ?? error.message) : String(error) });
  } finally {
    await manager.close({ drain: true, timeoutMs: 2_000 });
    client.disconnect();
    if (process.connected) process.disconnect();
  }
}

// ---- the parent: Redis, N children, the tally --------------------------------------------------

/** Connects once, without retrying; undefined if nothing answers. */
async function tryConnect(url: string): Promise<Redis | undefined> {
  const client = new Redis(url, { lazyConnect: true, connectTimeout: 1_000, maxRetriesPerRequest: 0, retryStrategy: () => null, enableOfflineQueue: false });
  client.on('error', () => {});
  try {
    await client.connect();
    await client.ping();
    return client;
  } catch {
    client.disconnect();
    return undefined;
  }
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => resolve(typeof address === 'object' && address !== null ? address.port : 0));
    });
  });
}

/** A throwaway redis-server (no persistence) on a free port, or undefined if there is none on PATH. */
async function throwawayRedis(): Promise<{ url: string; client: Redis; stop(): Promise<void> } | undefined> {
  const port = await freePort();
  const server = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--daemonize', 'no'], {
    stdio: 'ignore',
  });
  const spawned = await new Promise<boolean>((resolve) => {
    server.once('spawn', () => resolve(true));
    server.once('error', () => resolve(false));
  });
  if (!spawned) return undefined;
  const stop = (): Promise<void> =>
    new Promise((resolve) => {
      if (server.exitCode !== null || server.signalCode !== null) return resolve();
      server.once('exit', () => resolve());
      server.kill('SIGTERM');
    });
  const url = `redis://127.0.0.1:${port}`;
  // Start-up polling: the server has no way to tell us it listens.
  for (let tries = 0; tries < 100; tries++) {
    const client = await tryConnect(url);
    if (client) return { url, client, stop };
    if (server.exitCode !== null) break;
    await sleep(50);
  }
  await stop();
  throw new Error(`the throwaway redis-server on port ${port} did not answer`);
}

async function parent(): Promise<void> {
  const n = Number(process.argv.slice(2).find((a) => /^\d+$/.test(a)) ?? 4);
  if (!Number.isSafeInteger(n) || n < 1) throw new Error(`N must be a positive integer, got ${n}`);
  const wanted = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
  let client = await tryConnect(wanted);
  let url = wanted;
  let throwaway: Awaited<ReturnType<typeof throwawayRedis>> = undefined;
  if (client === undefined) {
    throwaway = await throwawayRedis();
    if (throwaway === undefined) throw new Error(`no Redis answers at ${wanted}, and redis-server is not on PATH to start one`);
    ({ url, client } = throwaway);
    console.log(`${wanted} did not answer: started a throwaway redis-server at ${url}`);
  }
  const prefix = `taskvalve-demo-${process.pid}-${Date.now().toString(36)}`;
  console.log(`Redis ${url}, key prefix ${prefix}`);
  console.log(`${n} processes share bucket '${SHARED}': ${RATE.limit} units per ${RATE.intervalMs} ms, burst ${RATE.burst}; ${LOOPS} submit loops each, ${RUN_MS} ms\n`);

  const children: ChildProcess[] = [];
  let start = 0;
  try {
    const results = await new Promise<Extract<FromChild, { type: 'result' }>[]>((resolve, reject) => {
      const ready = new Set<number>();
      const results: Extract<FromChild, { type: 'result' }>[] = [];
      for (let index = 0; index < n; index++) {
        const c = fork(fileURLToPath(import.meta.url), ['--child'], {
          execArgv: ['--import', 'tsx'],
          env: { ...process.env, TV_DEMO_URL: url, TV_DEMO_PREFIX: prefix, TV_DEMO_INDEX: String(index) },
          stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
        });
        children.push(c);
        c.on('exit', (code) => {
          if (!results.some((r) => r.index === index)) reject(new Error(`process ${index} exited (${code}) without a result`));
        });
        c.on('message', (m: FromChild) => {
          if (m.type === 'failed') reject(new Error(`process ${m.index} failed: ${m.message}`));
          else if (m.type === 'ready') {
            ready.add(m.index);
            if (ready.size === n) {
              // Everyone is subscribed and waiting: start them together.
              start = Date.now();
              for (const each of children) each.send({ type: 'go', deadline: start + RUN_MS } satisfies ToChild);
            }
          } else if (m.type === 'result') {
            results.push(m);
            if (results.length === n) resolve(results.sort((a, b) => a.index - b.index));
          }
        });
      }
    });

    // The window: from 'go' (before any admission) to the last admission seen (after Redis
    // decided it), so every decision lies inside it and the bound below is a true upper bound.
    const last = Math.max(...results.map((r) => r.lastAt));
    const elapsed = last - start;
    const perMs = RATE.limit / RATE.intervalMs;
    const allowed = RATE.burst + Math.floor(elapsed * perMs);
    const total = results.reduce((s, r) => s + r.units, 0);
    const pad = (s: string | number, w: number): string => String(s).padStart(w);
    console.log(`${'process'.padEnd(16)} ${pad('admitted', 9)} ${pad('denied', 8)}`);
    for (const r of results) console.log(`${`#${r.index} (pid ${children[r.index]?.pid})`.padEnd(16)} ${pad(r.units, 9)} ${pad(r.denied, 8)}`);
    console.log(`${'total'.padEnd(16)} ${pad(total, 9)} ${pad(results.reduce((s, r) => s + r.denied, 0), 8)}`);
    console.log(
      `\nfrom 'go' to the last admission: ${elapsed} ms; the bucket allows burst + elapsed x rate = ${RATE.burst} + ${elapsed} ms x ${RATE.limit}/${RATE.intervalMs} ms = ${allowed} units`,
    );
    console.log(`admitted ${total} of ${allowed} allowed: ${total <= allowed ? (total >= allowed - n ? 'at the limit, never over' : 'under the limit') : 'OVER THE LIMIT'}`);
    if (total > allowed) process.exitCode = 1;
  } finally {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    // Remove the demo's keys (a SCAN, not KEYS, in case this is a shared server).
    let cursor = '0';
    do {
      const [next, keys] = await client.scan(cursor, 'MATCH', `${prefix}:*`, 'COUNT', 500);
      if (keys.length > 0) await client.del(...keys);
      cursor = next;
    } while (cursor !== '0');
    client.disconnect();
    await throwaway?.stop();
  }
}

if (process.argv.includes('--child')) {
  await child();
} else {
  try {
    await parent();
  } catch (error) {
    console.error(error instanceof Error ? error.message : error);
    process.exitCode = 1;
  }
}
