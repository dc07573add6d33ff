/**
 * What the Redis section reads from the server and the client socket to say where a decision's
 * time goes: INFO commandstats (calls and µs per command), INFO cpu (server CPU), the socket's
 * byte counters, and process.cpuUsage (client CPU); plus redis-benchmark for server ceilings.
 */
import { spawnSync } from 'node:child_process';
import type { Socket } from 'node:net';
import type { Redis } from 'ioredis';

export interface CommandStat {
  calls: number;
  usec: number;
}

/** INFO commandstats as a map: command -> calls and total µs (script time includes its inner calls). */
export async function commandStats(admin: Redis): Promise<Map<string, CommandStat>> {
  const text = await admin.info('commandstats');
  const out = new Map<string, CommandStat>();
  for (const line of text.split(/\r?\n/)) {
    const m = /^cmdstat_([^:]+):calls=(\d+),usec=(\d+)/.exec(line);
    if (m) out.set(m[1]!, { calls: Number(m[2]), usec: Number(m[3]) });
  }
  return out;
}

/** Server CPU seconds so far (user + sys, every thread). */
export async function serverCpuSeconds(admin: Redis): Promise<number> {
  const text = await admin.info('cpu');
  const num = (name: string): number => Number(new RegExp(`^${name}:([\\d.]+)`, 'm').exec(text)?.[1] ?? NaN);
  return num('used_cpu_user') + num('used_cpu_sys');
}

/** The client's TCP socket (ioredis keeps it as `stream`). */
export function socketOf(client: Redis): Socket {
  return (client as unknown as { stream: Socket }).stream;
}

/** Commands a script may run inside; every other command counted is a round trip of its own. */
const INNER = new Set(['time', 'get', 'set', 'hmget', 'hincrby', 'hset', 'incrby', 'pttl', 'expire']);
/** The measuring connection's own commands. */
const ADMIN = new Set(['info', 'config']);

/** Per-decision cost of one subject, measured over a fixed run. */
export interface Profile {
  ops: number;
  perSec: number;
  /** Top-level commands (round trips) per decision, by command. */
  trips: Map<string, number>;
  /** Commands run inside scripts per decision, by command. */
  inner: Map<string, number>;
  /** Mean µs per call of the script command(s) (EVALSHA), as INFO commandstats reports it. */
  scriptUsecPerCall: number;
  /** Script µs per decision (differs from per call when a call decides many). */
  scriptUsecPerDecision: number;
  serverCpuUs: number;
  clientCpuUs: number;
  bytesOut: number;
  bytesIn: number;
}

/**
 * Runs `run()` (which performs `ops` decisions) with the server's statistics reset and returns
 * the per-decision figures. `clients` are the sockets whose bytes are counted.
 */
export async function profile(admin: Redis, clients: readonly Redis[], ops: number, run: () => Promise<void>): Promise<Profile> {
  await admin.config('RESETSTAT');
  const cpu0 = await serverCpuSeconds(admin);
  const sockets = clients.map(socketOf);
  const out0 = sockets.reduce((s, k) => s + k.bytesWritten, 0);
  const in0 = sockets.reduce((s, k) => s + k.bytesRead, 0);
  const c0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  await run();
  const ns = Number(process.hrtime.bigint() - t0);
  const c1 = process.cpuUsage(c0);
  const out1 = sockets.reduce((s, k) => s + k.bytesWritten, 0);
  const in1 = sockets.reduce((s, k) => s + k.bytesRead, 0);
  const cpu1 = await serverCpuSeconds(admin);
  const stats = await commandStats(admin);
  const trips = new Map<string, number>();
  const inner = new Map<string, number>();
  let scriptCalls = 0;
  let scriptUsec = 0;
  for (const [name, s] of stats) {
    if (ADMIN.has(name)) continue;
    (INNER.has(name) ? inner : trips).set(name, s.calls / ops);
    if (name === 'evalsha' || name === 'eval') {
      scriptCalls += s.calls;
      scriptUsec += s.usec;
    }
  }
  return {
    ops,
    perSec: (ops * 1e9) / ns,
    trips,
    inner,
    scriptUsecPerCall: scriptCalls === 0 ? 0 : scriptUsec / scriptCalls,
    scriptUsecPerDecision: scriptUsec / ops,
    serverCpuUs: ((cpu1 - cpu0) * 1e6) / ops,
    clientCpuUs: (c1.user + c1.system) / ops,
    bytesOut: (out1 - out0) / ops,
    bytesIn: (in1 - in0) / ops,
  };
}

/**
 * `redis-benchmark -p <port> -P 16 -q -n <n> [args]`: requests per second of each test it
 * prints (keyed by the test's name), or undefined when redis-benchmark is missing or fails.
 */
export function redisBenchmark(port: number, n: number, args: readonly string[]): Map<string, number> | undefined {
  const r = spawnSync('redis-benchmark', ['-h', '127.0.0.1', '-p', String(port), '-P', '16', '-q', '-n', String(n), ...args], {
    encoding: 'utf8',
    timeout: 30_000,
  });
  if (r.status !== 0 || typeof r.stdout !== 'string') return undefined;
  const out = new Map<string, number>();
  // -q prints progress lines ending in \r, then "NAME: 123456.78 requests per second, p50=... msec".
  for (const line of r.stdout.split(/[\r\n]+/)) {
    const m = /^(.+?): ([\d.]+) requests per second/.exec(line.trim());
    if (m) out.set(m[1]!, Number(m[2]));
  }
  return out.size > 0 ? out : undefined;
}
