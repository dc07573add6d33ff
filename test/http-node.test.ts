// The node:http adapter: the shared contract, plus what only a bare handler wrapper owns
// (its handler's failures).
import { createServer, type IncomingMessage } from 'node:http';
import { afterEach, describe, expect, it } from 'vitest';
import { nodeHandler, PROBLEM_TYPE_PREFIX } from '../src/http/index.js';
import type { HttpOptions } from '../src/http/index.js';
import type { Manager } from '../src/index.js';
import { describeAdapter, listen, problem, world, type Route, type Served } from './http.contract.js';

function serve(manager: Manager, options: HttpOptions<never>, route: Route): Promise<Served> {
  const handler = nodeHandler(manager, options as HttpOptions<IncomingMessage>, async (req, res, admission) => {
    const body = await route({ method: req.method ?? 'GET', path: (req.url ?? '/').split('?')[0] as string, admission });
    res.end(body);
  });
  return listen(createServer(handler));
}

describeAdapter('node:http', serve);

describe('node:http adapter', () => {
  let served: Served | undefined;
  afterEach(async () => {
    await served?.close();
    served = undefined;
  });

  it('a handler that throws before answering is a 500 without its message; after answering, the connection is cut', async () => {
    const { manager, keys } = world();
    await manager.subscribe('alice', 'free');
    const faults: unknown[] = [];
    const handler = nodeHandler(manager, { tenant: { header: 'x-api-key', lookup: (k) => keys.get(k) }, onError: (e) => faults.push(e) }, async (req, res) => {
      if (req.url === '/late') {
        res.writeHead(200);
        res.write('partial');
      }
      throw new Error('secret: handler exploded');
    });
    served = await listen(createServer(handler));
    const res = await fetch(`${served.url}/early`, { headers: { 'x-api-key': 'key-alice' } });
    expect(res.status).toBe(500);
    expect(await problem(res)).toMatchObject({ type: `${PROBLEM_TYPE_PREFIX}internal-error` });
    // The answer had begun: the client sees a broken response, never a 200 that looks whole.
    await expect(fetch(`${served.url}/late`, { headers: { 'x-api-key': 'key-alice' } }).then((late) => late.text())).rejects.toThrow();
    expect(faults).toHaveLength(2);
    await manager.close({ drain: false, timeoutMs: 0 });
  });

  it("a rate-only user's headers follow a change of profile or quota at once (no stale policy)", async () => {
    const { manager, keys, clock } = world();
    manager.registerProfile('open', { rate: { limit: 5, intervalMs: 5000 } });
    await manager.subscribe('alice', 'open');
    served = await listen(createServer(nodeHandler(manager, { tenant: { header: 'x-api-key', lookup: (k) => keys.get(k) }, clock: () => clock.now }, (req, res) => res.end('ok'))));
    const get = async (): Promise<[string | null, string | null]> => {
      const res = await fetch(`${served?.url}/x`, { headers: { 'x-api-key': 'key-alice' } });
      await res.arrayBuffer();
      return [res.headers.get('ratelimit-policy'), res.headers.get('ratelimit')];
    };
    expect(await get()).toEqual(['"open";q=5;w=5', '"open";r=4;t=1']);
    expect(await get()).toEqual(['"open";q=5;w=5', '"open";r=3;t=2']);
    await manager.updateSubscriptionQuota('alice', 50);
    expect(await get()).toEqual(['"open";q=5;w=5, "open-quota";q=50', '"open";r=2;t=3, "open-quota";r=47']);
    await manager.changeProfile('alice', 'free');
    expect((await get())[0]).toBe('"free";q=10;w=60, "free-quota";q=50;w=86400');
    await manager.close({ drain: false, timeoutMs: 0 });
  });

  it('rejects a missing handler and bad options at construction with INVALID_CONFIG', () => {
    const { manager } = world();
    expect(() => nodeHandler(manager, { tenant: 'ip' }, undefined as never)).toThrow(expect.objectContaining({ code: 'INVALID_CONFIG' }));
    expect(() => nodeHandler(manager, { tenant: 'ip', mode: 'queue' as never }, () => {})).toThrow(/mode/);
    expect(() => nodeHandler(manager, { tenant: 'ip', trustProxy: -1 }, () => {})).toThrow(/trustProxy/);
    expect(() => nodeHandler(manager, { tenant: 'ip', anonymousProfile: 'nope' }, () => {})).toThrow(/anonymousProfile/);
    expect(() => nodeHandler(manager, { tenant: 'ip', trustproxy: true } as never, () => {})).toThrow(/trustproxy/);
    expect(() => nodeHandler(manager, { tenant: { header: 'x api', lookup: () => undefined } }, () => {})).toThrow(/tenant.header/);
    expect(() => nodeHandler(manager, { tenant: 42 as never }, () => {})).toThrow(/tenant/);
    expect(() => nodeHandler(manager, { tenant: 'ip', costs: [{ path: '/v1', cost: 0 }] }, () => {})).toThrow(/costs\[0\]\.cost/);
    expect(() => nodeHandler(manager, { tenant: 'ip', skip: true as never }, () => {})).toThrow(/skip/);
    for (const ttl of [0, -1, 1.5, '1d', Infinity]) expect(() => nodeHandler(manager, { tenant: 'ip', anonymousTtlMs: ttl as never }, () => {})).toThrow(/anonymousTtlMs/);
  });
});
