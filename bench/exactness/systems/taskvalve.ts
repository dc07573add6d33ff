/**
 * taskvalve, as a user runs it: a Manager over a MemoryStore (one process) or a RedisStore
 * (standalone or Cluster, 'fail-closed'), one profile per round, `getLimiter(user).check(cost)`
 * per attempt. A rate denial answers `{ allowed: false }`, an exhausted quota rejects
 * QUOTA_EXCEEDED (both a denial); any other rejection (STORE_UNAVAILABLE) is a failure its caller sees.
 */
import type { Cluster, Redis } from 'ioredis';
import { Manager, MemoryStore, RedisStore, TaskvalveError, type ProfileConfig, type Store } from '../../../src/index.js';
import type { Limits, Route, Targets } from '../protocol.js';
import { redisClient, usersOf, type Contender, type System } from './system.js';

type Connection = { kind: 'memory'; stores: Map<string, MemoryStore> } | { kind: 'redis'; client: Redis | Cluster };

const DAY_MS = 86_400_000;
const PROFILE = 'p';

/** The round's profile: a bucket refilling one unit a day (none during a round) and/or a lifetime quota. */
function profileOf(limits: Limits): ProfileConfig {
  const rate =
    limits.bucket === undefined
      ? { limit: 1_000_000, intervalMs: 1_000 }
      : { limit: 1, intervalMs: DAY_MS, burst: limits.bucket, ...(limits.users > 1 ? { shared: 'pool' } : {}) };
  return { rate, ...(limits.quota === undefined ? {} : { quota: { limit: limits.quota } }) };
}

function storeOf(connection: Connection, prefix: string): Store {
  if (connection.kind === 'redis') return new RedisStore({ client: connection.client, prefix });
  let store = connection.stores.get(prefix);
  if (store === undefined) {
    store = new MemoryStore();
    connection.stores.set(prefix, store);
  }
  return store;
}

function managerOf(connection: Connection, prefix: string, profile: ProfileConfig): Manager {
  const manager = new Manager({ store: storeOf(connection, prefix), onStoreUnavailable: 'fail-closed' });
  manager.registerProfile(PROFILE, profile);
  return manager;
}

/** A contender checking `cost` units per attempt on `manager`. */
function contender(manager: Manager, cost: number): Contender {
  const incidents: string[] = [];
  manager.on('error', (error) => incidents.push(error.message));
  return {
    incidents,
    attempt: (user) =>
      manager
        .getLimiter(user)
        .check(cost)
        .then(
          (decision) => decision.allowed,
          (error: unknown) => {
            if (error instanceof TaskvalveError && error.code === 'QUOTA_EXCEEDED') return false;
            throw error;
          },
        ),
    // Waits for the calls in doubt to be settled (taken back if their callers were told they failed).
    close: async () => void (await manager.close()),
    // A RedisStore reads the server's clock once, at its first call: here a check of a user nobody subscribed.
    warm: async () => void (await manager.getLimiter('warm-up').check(1).catch(() => undefined)),
  };
}

export const taskvalve: System<Connection> = {
  id: 'taskvalve',
  label: 'taskvalve',
  deployments: ['memory', 'standalone', 'cluster'],

  async connect(route: Route, targets: Targets) {
    return route === 'memory' ? { kind: 'memory', stores: new Map() } : { kind: 'redis', client: await redisClient(route, targets) };
  },

  async disconnect(connection) {
    if (connection.kind === 'redis') connection.client.disconnect();
  },

  async prepare(connection, spec) {
    const manager = managerOf(connection, spec.prefix, profileOf(spec.limits));
    try {
      for (const user of usersOf(spec.limits)) await manager.subscribe(user, PROFILE);
    } finally {
      await manager.close();
    }
  },

  async open(connection, spec) {
    return contender(managerOf(connection, spec.prefix, profileOf(spec.limits)), spec.limits.cost);
  },

  async readBack(connection, spec) {
    const { limits } = spec;
    const manager = managerOf(connection, spec.prefix, profileOf(limits));
    const taken: Record<string, number> = {};
    try {
      // One user's peek shows the bucket it draws from: its own, or the shared one.
      if (limits.bucket !== undefined) taken['bucket'] = limits.bucket - (await manager.getLimiter('u0').peek()).remaining;
      if (limits.quota !== undefined) {
        for (const user of usersOf(limits)) taken[`quota:${user}`] = (await manager.getSubscription(user))?.usage ?? 0;
      }
    } finally {
      await manager.close();
      if (connection.kind === 'memory') connection.stores.delete(spec.prefix);
    }
    return taken;
  },

  async openWide(connection, wide) {
    const manager = managerOf(connection, wide.prefix, { rate: { limit: 1_000_000, intervalMs: 1_000 } });
    for (let i = 0; i < wide.keys; i += 256) {
      await Promise.all(Array.from({ length: Math.min(256, wide.keys - i) }, (_, k) => manager.subscribe(`k${i + k}`, PROFILE)));
    }
    return contender(manager, 1);
  },
};
