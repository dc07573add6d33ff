/**
 * bottleneck's Redis datastore through ioredis (`datastore: 'ioredis'`, one
 * `Bottleneck.IORedisConnection` per process, ids without hash tags as its README shows): a
 * limiter with a `reservoir` (no refresh during a round) per limit, every process's limiter of
 * one id sharing its state in Redis; one attempt is `schedule({ weight: cost }, job)`. bottleneck
 * never denies: a job that does not fit waits in its process's queue. So an attempt is admitted
 * when its job runs, fails when its promise rejects, and is left unanswered when the round ends
 * with it still queued. A bucket and a quota together: the user's limiter chained to the shared one.
 */
import Bottleneck from 'bottleneck';
import type { RoundSpec } from '../protocol.js';
import { serverOf, usersOf, type Contender, type System } from './system.js';

type Connection = Bottleneck.IORedisConnection;

/** A limiter's 'error' listener that keeps the message. */
const keepIn = (incidents: string[]) => (error: unknown): void => void incidents.push(error instanceof Error ? error.message : String(error));

interface Limiters {
  bucket?: Bottleneck;
  quota: Map<string, Bottleneck>;
  all: Bottleneck[];
}

/** The round's limiters, ready (their settings are written by the first process to create them). */
async function limitersOf(connection: Connection, spec: RoundSpec, incidents: string[]): Promise<Limiters> {
  const { limits, prefix } = spec;
  const all: Bottleneck[] = [];
  const make = (id: string, reservoir: number): Bottleneck => {
    const limiter = new Bottleneck({ id, datastore: 'ioredis', connection, reservoir });
    limiter.on('error', keepIn(incidents));
    all.push(limiter);
    return limiter;
  };
  const bucket = limits.bucket === undefined ? undefined : make(`${prefix}-bucket`, limits.bucket);
  const quota = new Map<string, Bottleneck>();
  if (limits.quota !== undefined) {
    for (const user of usersOf(limits)) {
      const limiter = make(`${prefix}-quota-${user}`, limits.quota);
      if (bucket !== undefined) limiter.chain(bucket);
      quota.set(user, limiter);
    }
  }
  try {
    await Promise.all(all.map((l) => l.ready()));
  } catch (error) {
    await stopAll(all);
    throw error;
  }
  return { ...(bucket === undefined ? {} : { bucket }), quota, all };
}

async function stopAll(limiters: Bottleneck[]): Promise<void> {
  await Promise.all(limiters.map((l) => l.stop({ dropWaitingJobs: true }).catch(() => undefined)));
}

function scheduler(limiters: Limiters, cost: number, incidents: string[]): Contender {
  const admitted = (): Promise<true> => Promise.resolve(true);
  return {
    incidents,
    attempt: (user) => {
      const limiter = limiters.quota.get(user) ?? limiters.bucket;
      if (limiter === undefined) return Promise.reject(new Error(`bottleneck: no limiter for ${user}`));
      return limiter.schedule({ weight: cost }, admitted);
    },
    close: () => stopAll(limiters.all),
  };
}

export const bottleneck: System<Connection> = {
  id: 'bottleneck',
  label: 'bottleneck',
  deployments: ['standalone', 'cluster'],

  async connect(route, targets) {
    const server = serverOf(route, targets);
    const connection = Array.isArray(server) ? new Bottleneck.IORedisConnection({ clusterNodes: server }) : new Bottleneck.IORedisConnection({ clientOptions: server });
    connection.on('error', () => {}); // faults are the point; each limiter reports its own
    return connection;
  },

  async disconnect(connection) {
    await connection.disconnect(false).catch(() => undefined);
  },

  async open(connection, spec) {
    const incidents: string[] = [];
    return scheduler(await limitersOf(connection, spec, incidents), spec.limits.cost, incidents);
  },

  async readBack(connection, spec) {
    const { limits } = spec;
    const limiters = await limitersOf(connection, spec, []);
    const taken: Record<string, number> = {};
    try {
      if (limiters.bucket !== undefined && limits.bucket !== undefined) taken['bucket'] = limits.bucket - ((await limiters.bucket.currentReservoir()) ?? 0);
      for (const [user, limiter] of limiters.quota) taken[`quota:${user}`] = (limits.quota ?? 0) - ((await limiter.currentReservoir()) ?? 0);
    } finally {
      await stopAll(limiters.all);
    }
    return taken;
  },

  async openWide(connection, wide) {
    // One limiter without limits: every job is registered and freed in Redis, none waits.
    const limiter = new Bottleneck({ id: `${wide.prefix}-open`, datastore: 'ioredis', connection });
    const incidents: string[] = [];
    limiter.on('error', keepIn(incidents));
    await limiter.ready();
    return scheduler({ bucket: limiter, quota: new Map(), all: [limiter] }, 1, incidents);
  },
};
