/**
 * What every system of the bench (taskvalve and its peers) provides to a worker process: a
 * connection kept across rounds, and per round a contender that makes admission attempts; plus
 * the reading back of what each ledger holds once a round is over.
 */
import { Cluster, Redis } from 'ioredis';
import type { Deployment, Limits, Route, RoundSpec, SystemId, Targets } from '../protocol.js';

/** One process's side of one round. */
export interface Contender {
  /** One admission attempt for `user`: true admitted, false denied; rejects when its caller is told it failed. */
  attempt(user: string): Promise<boolean>;
  /** Ends the round: attempts still waiting are dropped; what the round holds is released (calls in doubt settled). */
  close(): Promise<void>;
  /** Errors the system reported with no caller to reject (e.g. a limiter's 'error' event). */
  readonly incidents: string[];
  /** Pays what a running process has paid long ago (before the start barrier), touching no ledger of the round. */
  warm?(): Promise<void>;
}

/** What the chart's measure opens: `keys` keys that always admit. */
export interface Wide {
  prefix: string;
  keys: number;
}

export interface System<C> {
  id: SystemId;
  /** Its name in the table. */
  label: string;
  deployments: readonly Deployment[];
  /** A connection for one route, kept by the worker for every round that uses it. */
  connect(route: Route, targets: Targets): Promise<C>;
  disconnect(connection: C): Promise<void>;
  /** Run once per round, by one process on a direct route, before any process opens the round. */
  prepare?(connection: C, spec: RoundSpec): Promise<void>;
  open(connection: C, spec: RoundSpec): Promise<Contender>;
  /** Units each ledger holds as taken (see scenarios.ts, ledgersOf), read on a direct route after every process closed the round. */
  readBack(connection: C, spec: RoundSpec): Promise<Record<string, number>>;
  /** For the throughput chart. */
  openWide(connection: C, wide: Wide): Promise<Contender>;
}

/** An ioredis client for a route (default options), ready; its errors are expected under faults and ignored. */
export async function redisClient(route: Route, targets: Targets): Promise<Redis | Cluster> {
  let client: Redis | Cluster;
  if (route === 'cluster') {
    if (targets.cluster === undefined) throw new Error('no cluster to connect to');
    client = new Cluster(targets.cluster);
  } else {
    const target = route === 'proxied' ? targets.proxied : targets.standalone;
    if (target === undefined || route === 'memory') throw new Error(`no redis-server for route '${route}'`);
    client = new Redis({ host: target.host, port: target.port });
  }
  client.on('error', () => {});
  if (client.status !== 'ready') await new Promise<void>((resolve, reject) => {
    client.once('ready', () => resolve());
    client.once('end', () => reject(new Error(`connection to ${route} ended before it was ready`)));
  });
  return client;
}

/** connect() and disconnect() of a system that drives one ioredis client (default options) per route. */
export const ioredisConnection: Pick<System<Redis | Cluster>, 'connect' | 'disconnect'> = {
  connect: redisClient,
  async disconnect(client) {
    client.disconnect();
  },
};

/** Where a route's server is, for a library that builds its own clients. */
export function serverOf(route: Route, targets: Targets): { host: string; port: number } | { host: string; port: number }[] {
  const found = route === 'cluster' ? targets.cluster : route === 'proxied' ? targets.proxied : route === 'standalone' ? targets.standalone : undefined;
  if (found === undefined) throw new Error(`no server for route '${route}'`);
  return found;
}

/** Every user of a round. */
export function usersOf(limits: Limits): string[] {
  return Array.from({ length: limits.users }, (_, u) => `u${u}`);
}

