/**
 * The faults that hit a round, from the parent, timed from the round's start:
 *
 * - `proxy`: the workers reach the append-only server through the fault proxy
 *   (test/support/fault-proxy.ts). FAULT_AT_MS into the round, the replies of the next limiter
 *   commands are dropped (the commands run on Redis; the connections stay open); half-way through
 *   the fault every connection is reset (ioredis reconnects and re-sends what it has no answer
 *   for); at its end the proxy heals, resetting any connection still short of a reply.
 * - `kill`: FAULT_AT_MS into the round the server is killed with SIGKILL while calls are in
 *   flight, and FAULT_FOR_MS later it is restarted on the same port and directory (its
 *   append-only file, written with `appendfsync always`, replayed).
 *
 * Each resolves, with what it did, once the fault is over.
 */
import type { FaultProxy } from '../../test/support/fault-proxy.js';
import type { RedisServer } from '../../test/support/redis.js';
import type { FaultKind } from './scenarios.js';

export const FAULT_AT_MS = 300;
export const FAULT_FOR_MS = 300;
/** Replies the proxy drops per round. */
const DROPPED = 32;
/** The commands limiters decide with (not the subscriber connection's, not ioredis's own). */
const DECIDING = new Set(['EVALSHA', 'EVAL', 'GET', 'SET']);

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));
const until = (epochMs: number): Promise<void> => sleep(Math.max(0, epochMs - Date.now()));

/** What the faults act on: the append-only server, and the proxy in front of it. */
export interface Stage {
  server: RedisServer;
  proxy?: FaultProxy;
}

async function throughProxy(proxy: FaultProxy, at: number): Promise<string> {
  await until(at + FAULT_AT_MS);
  const lost = proxy.dropReplies(DROPPED, { match: (request) => DECIDING.has(request.command) });
  await Promise.race([lost.done, sleep(FAULT_FOR_MS / 2)]);
  const reset = proxy.reset();
  await until(at + FAULT_AT_MS + FAULT_FOR_MS);
  proxy.heal();
  const dropped = await lost.done;
  return `${dropped} replies dropped, ${reset} connections reset`;
}

async function killAndRestart(server: RedisServer, at: number): Promise<string> {
  await until(at + FAULT_AT_MS);
  const pid = server.pid;
  await server.kill();
  await until(at + FAULT_AT_MS + FAULT_FOR_MS);
  const restarting = performance.now();
  await server.restart();
  return `pid ${pid} killed, restarted in ${Math.round(performance.now() - restarting)} ms`;
}

/** The fault of a scenario, ready to strike a round that starts at `at` (epoch ms). */
export function striker(kind: FaultKind, stage: Stage): (at: number) => Promise<string> {
  if (kind === 'kill') return (at) => killAndRestart(stage.server, at);
  const { proxy } = stage;
  if (proxy === undefined) throw new Error('the proxy faults need the fault proxy');
  return (at) => throughProxy(proxy, at);
}
