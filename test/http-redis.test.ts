// The HTTP edge unchanged on a RedisStore: the node:http adapter's scenarios against a real
// redis-server started here (each test on its own key prefix, on the test's fake clock).
import { createServer, type IncomingMessage } from 'node:http';
import { Redis } from 'ioredis';
import { afterAll, beforeAll } from 'vitest';
import { nodeHandler, type HttpOptions } from '../src/http/index.js';
import { RedisStore, type Manager } from '../src/index.js';
import { describeAdapter, listen, type Route, type Served } from './http.contract.js';
import { startRedis, type RedisServer } from './support/redis.js';

let server: RedisServer;
let client: Redis;
let prefixes = 0;

beforeAll(async () => {
  server = await startRedis();
  client = new Redis({ port: server.port });
});

afterAll(async () => {
  client?.disconnect();
  await server?.stop();
});

function serve(manager: Manager, options: HttpOptions<never>, route: Route): Promise<Served> {
  const handler = nodeHandler(manager, options as HttpOptions<IncomingMessage>, async (req, res, admission) => {
    res.end(await route({ method: req.method ?? 'GET', path: (req.url ?? '/').split('?')[0] as string, admission }));
  });
  return listen(createServer(handler));
}

describeAdapter('node:http on RedisStore', serve, (clock) => {
  const store = new RedisStore({ client, prefix: `http${++prefixes}` });
  store.setTestClock(clock);
  return store;
});
