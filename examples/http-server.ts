/**
 * A small API behind taskvalve's HTTP edge: two tiers, API keys, cost rules, and /metrics.
 *
 *   npx tsx examples/http-server.ts              # listens on 127.0.0.1:3000 (PORT=... to change)
 *   curl -i -H 'x-api-key: demo-free' localhost:3000/v1/ping
 *   curl -i -X POST -H 'x-api-key: demo-pro' localhost:3000/v1/images
 *   curl -s localhost:3000/metrics | grep taskvalve_
 *   npx tsx examples/http-server.ts --self-test  # starts, sends a few requests, prints the answers, exits
 *
 * Tiers: 'free' is 10 units a minute with 100 a day; 'pro' is 100 units a second (bursts of
 * 200) with no daily cap. POST /v1/images costs 5 units, everything else under /v1 costs 1.
 * /metrics is outside the edge: a scraper is no tenant.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { fileURLToPath } from 'node:url';
import { Manager } from '../src/index.js';
import { nodeHandler, type Admission, type HttpOptions } from '../src/http/index.js';

/** The demo's API keys: key -> user id. A real API looks its keys up in its own store. */
export const DEMO_KEYS = new Map([
  ['demo-free', 'ada'],
  ['demo-pro', 'bob'],
]);

/** The API's routes, unaware of rate limits. */
function routes(req: IncomingMessage, res: ServerResponse, admission?: Admission): void {
  const path = (req.url ?? '/').split('?')[0];
  let status = 200;
  let body: unknown;
  if (req.method === 'GET' && path === '/v1/ping') body = { pong: true, user: admission?.userId ?? null };
  else if (req.method === 'POST' && path === '/v1/images') body = { id: Math.random().toString(36).slice(2, 10), cost: admission?.cost ?? null };
  else {
    status = 404;
    body = { error: 'not found' };
  }
  const text = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text) });
  res.end(text);
}

/** Options of {@link createApi}. */
export interface ApiOptions {
  /** false: the same routes without the edge (the benchmark's baseline). Default true. */
  admit?: boolean;
  /** API key -> user id; default {@link DEMO_KEYS}, whose users are subscribed here. */
  keys?: ReadonlyMap<string, string>;
}

/** Builds the API: a manager with the two tiers, and a node:http server (not yet listening). */
export async function createApi(options: ApiOptions = {}): Promise<{ manager: Manager; server: Server }> {
  const manager = new Manager();
  manager.registerProfile('free', { rate: { limit: 10, intervalMs: 60_000 }, quota: { limit: 100, periodMs: 86_400_000 } });
  manager.registerProfile('pro', { rate: { limit: 100, intervalMs: 1000, burst: 200 } });
  const keys = options.keys ?? DEMO_KEYS;
  if (options.keys === undefined) {
    await manager.subscribe('ada', 'free');
    await manager.subscribe('bob', 'pro');
  }

  const edge: HttpOptions = {
    tenant: { header: 'x-api-key', lookup: (key) => keys.get(key) },
    costs: [
      { method: 'POST', path: '/v1/images', cost: 5 },
      { path: '/v1', cost: 1 },
    ],
  };
  const admitted = nodeHandler(manager, edge, routes);
  const server = createServer((req, res) => {
    if (req.url === '/metrics') {
      void manager.registry.metrics().then((text) => {
        res.writeHead(200, { 'Content-Type': manager.registry.contentType });
        res.end(text);
      });
    } else if (options.admit === false) routes(req, res);
    else admitted(req, res);
  });
  return { manager, server };
}

/** Starts, sends a few requests, prints status and rate headers of each, and stops. */
async function selfTest(): Promise<void> {
  const { manager, server } = await createApi();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const show = async (label: string, init: RequestInit & { path: string }): Promise<void> => {
    const res = await fetch(base + init.path, init);
    const headers = ['ratelimit-policy', 'ratelimit', 'retry-after', 'content-type'].map((h) => [h, res.headers.get(h)]).filter(([, v]) => v !== null);
    console.log(`${label}\n  ${res.status} ${headers.map(([h, v]) => `${h}: ${v}`).join('\n      ')}\n  ${await res.text()}`);
  };
  await show('GET /v1/ping as free', { path: '/v1/ping', headers: { 'x-api-key': 'demo-free' } });
  await show('POST /v1/images as free (5 units)', { path: '/v1/images', method: 'POST', headers: { 'x-api-key': 'demo-free' } });
  await show('POST /v1/images as free again', { path: '/v1/images', method: 'POST', headers: { 'x-api-key': 'demo-free' } });
  await show('GET /v1/ping as pro', { path: '/v1/ping', headers: { 'x-api-key': 'demo-pro' } });
  await show('GET /v1/ping with an unknown key', { path: '/v1/ping', headers: { 'x-api-key': 'nope' } });
  const metrics = await (await fetch(`${base}/metrics`)).text();
  console.log(`GET /metrics\n  ${metrics.split('\n').filter((l) => l.startsWith('taskvalve_subscription_events_total')).join('\n  ')}`);
  server.close();
  await manager.close();
}

if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === process.argv[1]) {
  if (process.argv.includes('--self-test')) {
    await selfTest();
  } else {
    const { manager, server } = await createApi();
    const port = Number(process.env.PORT ?? 3000);
    server.listen(port, '127.0.0.1', () => console.log(`listening on http://127.0.0.1:${port} (keys: ${[...DEMO_KEYS.keys()].join(', ')})`));
    const stop = (): void => {
      server.close();
      void manager.close({ drain: true, timeoutMs: 5000 });
    };
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  }
}
