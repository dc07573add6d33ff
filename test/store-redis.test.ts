// The Store contract on RedisStore: one standalone server, two client-side shards, and a real
// 3-master Redis Cluster, all started here on loopback.
import { Cluster, Redis } from 'ioredis';
import { afterAll, beforeAll } from 'vitest';
import { RedisStore, type Store } from '../src/index.js';
import { storeContract } from './store.contract.js';
import { startCluster, startRedis, type RedisClusterHandle, type RedisServer } from './support/redis.js';

let single: RedisServer;
let shards: RedisServer[];
let cluster: RedisClusterHandle;
let prefixes = 0;

beforeAll(async () => {
  [single, cluster, ...shards] = await Promise.all([startRedis(), startCluster(3), startRedis(), startRedis()]);
}, 60_000);

afterAll(async () => {
  await Promise.all([single?.stop(), cluster?.stop(), ...(shards ?? []).map((s) => s.stop())]);
});

/** Each test gets its own key prefix, so nothing needs flushing between tests. */
function fresh(client: RedisStore['constructor'] extends never ? never : ConstructorParameters<typeof RedisStore>[0]['client'], clock: () => number): RedisStore {
  const store = new RedisStore({ client, prefix: `t${++prefixes}` });
  store.setTestClock(clock);
  return store;
}

const clients = new WeakMap<Store, { disconnect(): void }[]>();

storeContract('RedisStore, standalone', {
  async make(clock) {
    const client = new Redis({ port: single.port, lazyConnect: false });
    const store = fresh(client, clock);
    clients.set(store, [client]);
    return store;
  },
  async release(store) {
    for (const c of clients.get(store) ?? []) c.disconnect();
  },
});

storeContract('RedisStore, 2 client-side shards', {
  async make(clock) {
    const list = shards.map((s) => new Redis({ port: s.port }));
    const store = fresh(list, clock);
    clients.set(store, list);
    return store;
  },
  async release(store) {
    for (const c of clients.get(store) ?? []) c.disconnect();
  },
});

storeContract('RedisStore, 3-master Redis Cluster', {
  async make(clock) {
    const client = new Cluster(cluster.nodes);
    const store = fresh(client, clock);
    clients.set(store, [client]);
    return store;
  },
  async release(store) {
    for (const c of clients.get(store) ?? []) c.disconnect();
  },
});
