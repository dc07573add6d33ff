/**
 * `npm run bench:http`: requests per second on one route of the example server
 * (examples/http-server.ts, node:http), bare and behind the admit edge, in the same run.
 *
 * Three servers, each in a child process of its own (so the load generator never shares an
 * event loop with a server): the bare route; the edge with 1,000 tenants on the example's
 * 'pro' tier (a rate only: the check's decision holds every header figure); the edge with
 * 1,000 tenants on a bench tier that also has a daily quota (a subscription read per request,
 * for the quota's r and t). Every request is admitted (a 429 would be a cheaper answer: the run
 * fails on any non-2xx). Each round loads the three back to back, in a rotating order; ratios
 * and differences are taken within a round, then the median over the rounds, so that the
 * machine's load of the moment hits all three alike. Target: at least 85% of the bare route's
 * requests per second.
 *
 * Progress goes to stderr; stdout gets the markdown table and the environment.
 */
import autocannon from 'autocannon';
import { fork, type ChildProcess } from 'node:child_process';
import { Agent, request } from 'node:http';
import type { AddressInfo } from 'node:net';
import { availableParallelism, cpus } from 'node:os';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { createApi } from '../examples/http-server.js';
import { atLeast, heading, renderTable, type Row } from './lib/table.js';

const USERS = 1000;
const CONNECTIONS = 32;
/** Latency is timed at a load the server keeps up with, on this process's clock. */
const LATENCY_CONNECTIONS = 4;
const ROUND_S = Number(process.env.BENCH_HTTP_ROUND_S ?? 1.5);
const ROUNDS = Number(process.env.BENCH_HTTP_ROUNDS ?? 20);
/** The edge's path takes seconds of load to be fully optimised by the JIT. */
const WARMUP_S = 8;
const MIN_RATIO = 0.85;
const ROUTE = '/v1/ping';

const VARIANTS = ['bare', 'rate', 'quota'] as const;
type Variant = (typeof VARIANTS)[number];
const keyOf = (i: number): string => `bench-key-${i}`;

const log = (line: string): void => {
  process.stderr.write(`${line}\n`);
};

/** Child side: serve one variant, tell the parent the port, answer CPU-time questions. */
async function serve(variant: Variant): Promise<void> {
  const keys = new Map(Array.from({ length: USERS }, (_, i) => [keyOf(i), `bench-user-${i}`] as const));
  const { manager, server } = await createApi({ admit: variant !== 'bare', keys });
  // A tier like 'pro' with a daily quota that this run never exhausts.
  manager.registerProfile('metered', { rate: { limit: 100, intervalMs: 1000, burst: 200 }, quota: { limit: 1_000_000_000, periodMs: 86_400_000 } });
  for (const userId of keys.values()) await manager.subscribe(userId, variant === 'quota' ? 'metered' : 'pro');
  server.keepAliveTimeout = 60_000;
  server.listen(0, '127.0.0.1', () => process.send?.({ port: (server.address() as AddressInfo).port }));
  // CPU time around each load: the cost per request, steadier than rates on a busy machine.
  process.on('message', () => process.send?.({ cpu: process.cpuUsage() }));
  process.on('disconnect', () => process.exit(0));
}

/** Parent side: a child serving `variant`, and its URL. */
function start(variant: Variant): Promise<{ child: ChildProcess; url: string }> {
  const child = fork(fileURLToPath(import.meta.url), ['--serve', variant], { execArgv: ['--import', 'tsx'], stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
  return new Promise((resolve, reject) => {
    child.once('message', (m) => resolve({ child, url: `http://127.0.0.1:${(m as { port: number }).port}` }));
    child.once('exit', (code) => reject(new Error(`the ${variant} server exited (${code})`)));
  });
}

/** The child's CPU time so far, in microseconds (user + system). */
function cpuOf(child: ChildProcess): Promise<number> {
  return new Promise((resolve) => {
    child.once('message', (m) => {
      const { user, system } = (m as { cpu: NodeJS.CpuUsage }).cpu;
      resolve(user + system);
    });
    child.send('cpu');
  });
}

/** Throughput: autocannon, one prebuilt request per key, cycled on every connection. */
async function load(url: string, seconds: number): Promise<{ rps: number; total: number }> {
  const requests = Array.from({ length: USERS }, (_, i) => ({ method: 'GET' as const, path: ROUTE, headers: { 'x-api-key': keyOf(i) } }));
  const result = await autocannon({ url, connections: CONNECTIONS, duration: seconds, requests });
  if (result.non2xx > 0 || result.errors > 0 || result.timeouts > 0) {
    throw new Error(`${url}: ${result.non2xx} non-2xx, ${result.errors} errors, ${result.timeouts} timeouts`);
  }
  return { rps: result.requests.average, total: result.requests.total };
}

/** Latency: a closed loop of sequential requests on a few keep-alive connections, each one timed (ms). */
async function latency(url: string, seconds: number): Promise<{ p50: number; p99: number }> {
  const agent = new Agent({ keepAlive: true, maxSockets: LATENCY_CONNECTIONS });
  const target = new URL(ROUTE, url);
  const times: number[] = [];
  const end = performance.now() + seconds * 1000;
  let next = 0;
  const once = (): Promise<void> =>
    new Promise((resolve, reject) => {
      const t = performance.now();
      const req = request(target, { agent, headers: { 'x-api-key': keyOf(next++ % USERS) } }, (res) => {
        res.resume();
        res.on('end', () => {
          if (res.statusCode !== 200) reject(new Error(`${url}: status ${res.statusCode}`));
          times.push(performance.now() - t);
          resolve();
        });
      });
      req.on('error', reject);
      req.end();
    });
  await Promise.all(
    Array.from({ length: LATENCY_CONNECTIONS }, async () => {
      while (performance.now() < end) await once();
    }),
  );
  agent.destroy();
  times.sort((a, b) => a - b);
  const at = (q: number): number => times[Math.min(times.length - 1, Math.floor(q * times.length))] as number;
  return { p50: at(0.5), p99: at(0.99) };
}

function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? (sorted[mid] as number) : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2;
}

interface Round {
  rps: number;
  /** Server CPU microseconds per request, during the throughput load. */
  cpu: number;
  /** Milliseconds, from the latency loop. */
  p50: number;
  p99: number;
}

async function main(): Promise<void> {
  const t0 = performance.now();
  const servers = {} as Record<Variant, { child: ChildProcess; url: string }>;
  for (const v of VARIANTS) servers[v] = await start(v);
  try {
    log(`warm-up: ${WARMUP_S} s per server`);
    for (const v of VARIANTS) await load(servers[v].url, WARMUP_S);
    const rounds = { bare: [], rate: [], quota: [] } as Record<Variant, Round[]>;
    for (let r = 0; r < ROUNDS; r++) {
      const order = VARIANTS.map((_, i) => VARIANTS[(i + r) % VARIANTS.length] as Variant);
      const round = {} as Record<Variant, Round>;
      for (const v of order) {
        const before = await cpuOf(servers[v].child);
        const { rps, total } = await load(servers[v].url, ROUND_S);
        round[v] = { rps, cpu: ((await cpuOf(servers[v].child)) - before) / total, p50: 0, p99: 0 };
      }
      for (const v of order) Object.assign(round[v], await latency(servers[v].url, ROUND_S / 2));
      for (const v of VARIANTS) rounds[v].push(round[v]);
      log(`round ${r + 1}/${ROUNDS}: ${VARIANTS.map((v) => `${v} ${Math.round(round[v].rps)} req/s ${round[v].cpu.toFixed(1)} µs p99 ${round[v].p99.toFixed(3)} ms`).join(' | ')}`);
    }

    const of = (v: Variant, f: (x: Round) => number): number => median(rounds[v].map(f));
    const vsBare = (v: Variant, f: (x: Round, bare: Round) => number): number => median(rounds[v].map((x, i) => f(x, rounds.bare[i] as Round)));
    const k = (n: number): string => `${(n / 1000).toFixed(1)} k/s`;
    const us = (ms: number): string => `${Math.round(ms * 1000)} µs`;
    const signed = (ms: number): string => `${ms >= 0 ? '+' : '−'}${us(Math.abs(ms))}`;
    const rows: Row[] = [];
    const tiers: Array<[Exclude<Variant, 'bare'>, string]> = [
      ['rate', "tier 'pro' (a rate, no quota)"],
      ['quota', 'a tier with a rate and a daily quota'],
    ];
    for (const [v, title] of tiers) {
      rows.push(
        heading(`GET ${ROUTE}, example server (node:http), ${USERS} tenants on ${title}: admit edge vs bare route`),
        atLeast({ measure: `requests/s, ${CONNECTIONS} connections`, taskvalve: k(of(v, (x) => x.rps)), reference: `bare ${k(of('bare', (x) => x.rps))}`, ratio: vsBare(v, (x, b) => x.rps / b.rps) }, MIN_RATIO),
        {
          measure: 'server CPU per request',
          taskvalve: `${of(v, (x) => x.cpu).toFixed(1)} µs (+${vsBare(v, (x, b) => x.cpu - b.cpu).toFixed(1)} µs)`,
          reference: `bare ${of('bare', (x) => x.cpu).toFixed(1)} µs`,
          ratio: vsBare(v, (x, b) => b.cpu / x.cpu),
        },
        { measure: `p99 latency, ${LATENCY_CONNECTIONS} connections`, taskvalve: `${us(of(v, (x) => x.p99))} (${signed(vsBare(v, (x, b) => x.p99 - b.p99))})`, reference: `bare ${us(of('bare', (x) => x.p99))}` },
        { measure: `p50 latency, ${LATENCY_CONNECTIONS} connections`, taskvalve: `${us(of(v, (x) => x.p50))} (${signed(vsBare(v, (x, b) => x.p50 - b.p50))})`, reference: `bare ${us(of('bare', (x) => x.p50))}` },
      );
    }
    console.log(renderTable(rows));
    console.log(
      `\nNode ${process.version}, ${cpus()[0]?.model ?? 'unknown CPU'}, ${availableParallelism()} cores. ${ROUNDS} rounds of ${ROUND_S} s loads per server ` +
        `(back to back, rotating order) after ${WARMUP_S} s of warm-up each; figures are medians over the rounds, ratios and differences ` +
        `taken within a round first. Servers in child processes, the clients (autocannon; node:http for latency, timed with performance.now ` +
        `in a closed loop of half a round, below saturation) in this one.`,
    );
    const targets = rows.filter((r) => r.met !== undefined);
    console.log(`\nRun time: ${((performance.now() - t0) / 1000).toFixed(1)} s. Targets met: ${targets.filter((r) => r.met).length} of ${targets.length}.`);
  } finally {
    for (const v of VARIANTS) servers[v].child.disconnect();
  }
}

const serving = process.argv.indexOf('--serve');
if (serving >= 0) await serve(process.argv[serving + 1] as Variant);
else await main();
