// The HTTP edge's behaviour, run against each adapter (node:http, Express, Fastify) with a real
// server on a free loopback port and the real fetch client. A fake clock (the manager's `clock`)
// makes every r, t and Retry-After exact; no test waits on time.
import { request as httpRequest, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { parseList } from 'structured-headers';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Manager, MemoryStore, TaskvalveError, ErrorCode, type Store } from '../src/index.js';
import type { Admission, HttpOptions } from '../src/http/index.js';
import { QUOTA_EXCEEDED_TYPE, PROBLEM_TYPE_PREFIX } from '../src/http/index.js';
import { gate } from './helpers.js';

/** What a route does with an admitted request; the adapter answers 200 with the returned text. */
export type Route = (request: { method: string; path: string; admission: Admission | undefined }) => string | Promise<string>;

/** A running server. */
export interface Served {
  url: string;
  close(): Promise<void>;
}

/**
 * Starts a server of one adapter on 127.0.0.1, port 0, with `route` behind the edge. `mount`: the
 * edge and the route are mounted on this path prefix, as the framework does it (Express
 * `app.use(prefix, ...)`, a Fastify prefix); node:http has no mounting and ignores it.
 */
export type Serve = (manager: Manager, options: HttpOptions<never>, route: Route, mount?: string) => Promise<Served>;

/** Listens on a free loopback port; close() drops kept-alive connections too. */
export async function listen(server: Server): Promise<Served> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/**
 * One request sent as written: the path goes on the wire verbatim (fetch would resolve dot
 * segments before sending, which is exactly what an attacker does not do).
 */
export function send(url: string, method: string, path: string, headers: Record<string, string> = {}): Promise<{ status: number; headers: IncomingHttpHeaders; body: string }> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: hostname, port, method, path, headers: { connection: 'close', ...headers } }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (body += chunk));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

/** A store that counts the calls the manager makes on it, by method name. */
export function counted<S extends Store>(store: S): { store: S; calls: Map<string, number> } {
  const calls = new Map<string, number>();
  const proxy = new Proxy(store, {
    get(target, name, receiver) {
      const value = Reflect.get(target, name, receiver) as unknown;
      if (typeof value !== 'function' || typeof name !== 'string') return value;
      return (...args: unknown[]) => {
        calls.set(name, (calls.get(name) ?? 0) + 1);
        return (value as (...a: unknown[]) => unknown).apply(target, args);
      };
    },
  });
  return { store: proxy, calls };
}

/** The calls a store received that read or decide (setup such as attach and defineProfile left out). */
export function decisions(calls: Map<string, number>): Record<string, number> {
  return Object.fromEntries([...calls].filter(([name]) => !['attach', 'defineProfile', 'close', 'setTestClock'].includes(name)));
}

export const T0 = Date.UTC(2030, 0, 1);
const DAY = 86_400_000;

/** A manager on a fake clock, with the profiles the scenarios use, and its keys. */
export function world(store?: Store | ((clock: () => number) => Store)): { manager: Manager; clock: { now: number }; keys: Map<string, string> } {
  const clock = { now: T0 };
  const made = typeof store === 'function' ? store(() => clock.now) : store;
  const manager = new Manager({ clock: () => clock.now, ...(made === undefined ? {} : { store: made }) });
  // 10 units per minute (one every 6 s), a daily quota of 100.
  manager.registerProfile('free', { rate: { limit: 10, intervalMs: 60_000 }, quota: { limit: 100, periodMs: DAY } });
  manager.registerProfile('tiny', { rate: { limit: 100, intervalMs: 1000 }, quota: { limit: 3, periodMs: 3_600_000 } });
  manager.registerProfile('public', { rate: { limit: 3, intervalMs: 3000 } });
  manager.registerProfile('solo', { rate: { limit: 1000, intervalMs: 1000, onLimit: 'reject' }, pool: { perUserConcurrency: 1 } });
  manager.registerProfile('big', { rate: { limit: 50, intervalMs: 50_000 } });
  manager.registerProfile('grün "plan"', { rate: { limit: 1, intervalMs: 1000, onLimit: 'reject' }, quota: { limit: 2 } });
  const keys = new Map([
    ['key-alice', 'alice'],
    ['key-tina', 'tina'],
    ['key-carl', 'carl'],
    ['key-eve', 'eve'],
    ['key-nora', 'nora'],
    ['key-olga', 'olga'],
    ['key-sam', 'sam'],
    ['key-ghost', 'ghost'],
    ['key-uwe', 'uwe'],
  ]);
  return { manager, clock, keys };
}

/** The structured list of a header, parsed by a real structured-field parser, params as objects. */
export function list(value: string | null): Array<[unknown, Record<string, unknown>]> {
  expect(value).not.toBeNull();
  return parseList(value as string).map(([item, params]) => [item, Object.fromEntries(params)]);
}

/** A problem+json body; checks the media type and that nothing internal leaks. */
export async function problem(res: Response): Promise<Record<string, unknown>> {
  expect(res.headers.get('content-type')).toBe('application/problem+json');
  const text = await res.text();
  expect(text).not.toMatch(/\bat (async )?\S+ \(|\.(ts|js|mjs):\d+/); // no stack frame, no source file
  expect(text).not.toMatch(/TaskvalveError|user "|secret/);
  const body = JSON.parse(text) as Record<string, unknown>;
  expect(body.status).toBe(res.status);
  expect(typeof body.title).toBe('string');
  expect(typeof body.detail).toBe('string');
  return body;
}

/** A store that decides admissions but whose writes fail as an unreachable store's would. */
export class WriteOutageStore extends MemoryStore {
  override subscribe(): never {
    throw new TaskvalveError(ErrorCode.STORE_UNAVAILABLE, 'store unreachable: connect ECONNREFUSED 10.0.0.7:6379 (secret)', { retryAfterMs: 1500 });
  }
}

/** A store whose every admission fails as an unreachable store would. */
export class OutageStore extends MemoryStore {
  override admit(): never {
    throw new TaskvalveError(ErrorCode.STORE_UNAVAILABLE, 'store unreachable: connect ECONNREFUSED 10.0.0.7:6379 (secret)', { retryAfterMs: 2500 });
  }
}

/**
 * The scenarios, on one adapter. `store` makes each test's store on the test's fake clock
 * (default: a MemoryStore): the edge works unchanged on a RedisStore.
 */
export function describeAdapter(name: string, serve: Serve, store?: (clock: () => number) => Store): void {
  describe(`HTTP edge over ${name}`, () => {
    let served: Served | undefined;
    let w: ReturnType<typeof world>;
    const lookup = (key: string) => w.keys.get(key);
    const echo: Route = ({ admission }) => `ok ${admission?.userId ?? '-'}`;

    beforeEach(() => {
      w = world(store);
    });

    afterEach(async () => {
      await served?.close();
      served = undefined;
      await w.manager.close({ drain: false, timeoutMs: 0 });
    });

    async function start(options: Partial<HttpOptions<never>>, route: Route = echo, manager = w.manager, mount?: string): Promise<string> {
      served = await serve(manager, { tenant: { header: 'x-api-key', lookup }, clock: () => w.clock.now, ...options } as HttpOptions<never>, route, mount);
      return served.url;
    }

    /** A second world on a store that counts its calls (the same kind of store as the suite's). */
    function countedWorld(): { world: ReturnType<typeof world>; calls: Map<string, number> } {
      let calls = new Map<string, number>();
      const made = world((clock) => {
        const c = counted(store === undefined ? new MemoryStore() : store(clock));
        calls = c.calls;
        return c.store;
      });
      return { world: made, calls };
    }

    const costs = [
      { method: 'POST', path: '/v1/images', cost: 5 },
      { path: '/v1', cost: 1 },
    ];

    it('allowed: RateLimit-Policy and RateLimit carry the profile, exact r and t across a sequence', async () => {
      await w.manager.subscribe('alice', 'free');
      const url = await start({ costs });
      const key = { 'x-api-key': 'key-alice' };

      let res = await fetch(`${url}/v1/ping`, { headers: key });
      expect(res.status).toBe(200);
      expect(await res.text()).toBe('ok alice');
      expect(list(res.headers.get('ratelimit-policy'))).toEqual([
        ['free', { q: 10, w: 60 }],
        ['free-quota', { q: 100, w: 86_400 }],
      ]);
      expect(list(res.headers.get('ratelimit'))).toEqual([
        ['free', { r: 9, t: 6 }],
        ['free-quota', { r: 99, t: 86_400 }],
      ]);
      expect(res.headers.get('x-ratelimit-limit')).toBeNull();

      res = await fetch(`${url}/v1/images`, { method: 'POST', headers: key, body: 'x' });
      expect(res.status).toBe(200);
      expect(list(res.headers.get('ratelimit'))).toEqual([
        ['free', { r: 4, t: 36 }],
        ['free-quota', { r: 94, t: 86_400 }],
      ]);

      w.clock.now += 10_000; // 26 s of the window used, then one more unit
      res = await fetch(`${url}/v1/ping`, { headers: key });
      expect(list(res.headers.get('ratelimit'))).toEqual([
        ['free', { r: 4, t: 32 }],
        ['free-quota', { r: 93, t: 86_390 }],
      ]);

      w.clock.now += 1_500; // 36.5 s of the window in use: r rounds down, t rounds up
      res = await fetch(`${url}/v1/ping`, { headers: key });
      expect(list(res.headers.get('ratelimit'))).toEqual([
        ['free', { r: 3, t: 37 }],
        ['free-quota', { r: 92, t: 86_389 }],
      ]);
    });

    it('mounted on a prefix, rules match the full path (Express originalUrl, a Fastify prefix)', async () => {
      await w.manager.subscribe('alice', 'free');
      const url = await start({ costs: [{ method: 'POST', path: '/v1/render', cost: 3 }, { path: '/v1', cost: 1 }] }, echo, w.manager, '/v1');
      const res = await fetch(`${url}/v1/render`, { method: 'POST', headers: { 'x-api-key': 'key-alice' } });
      expect(res.status).toBe(200);
      expect(list(res.headers.get('ratelimit'))[0]).toEqual(['free', { r: 7, t: 18 }]);
      expect((await w.manager.getSubscription('alice'))?.usage).toBe(3);
    });

    it('dot segments, plain or percent-encoded in any case, are refused with 400 and charge nothing, mounted or not', async () => {
      await w.manager.subscribe('alice', 'free');
      const key = { 'x-api-key': 'key-alice' };
      for (const mount of [undefined, '/v1']) {
        const url = await start({ costs }, echo, w.manager, mount);
        for (const path of ['/v1/images/..', '/v1/images/%2e%2e', '/v1/images/%2E%2e', '/v1/images/.', '/v1/images/%2e', '/v1/images/.%2E', '/v1/images/..%2f..', '/v1/images/..%2F', '/v1/./images/42', '/v1/x/../images', '/v1/images/../?q=1']) {
          const res = await send(url, 'POST', path, key);
          expect(res.status, `${mount} ${path}`).toBe(400);
          expect(res.headers['content-type'], path).toBe('application/problem+json');
          expect(JSON.parse(res.body), path).toMatchObject({ type: `${PROBLEM_TYPE_PREFIX}bad-path`, status: 400 });
        }
        await served?.close();
        served = undefined;
      }
      expect((await w.manager.getSubscription('alice'))?.usage).toBe(0);
    });

    it('doubled slashes and other spellings cost at least what the route they may reach costs', async () => {
      await w.manager.subscribe('alice', 'free');
      w.manager.registerProfile('wide', { rate: { limit: 100, intervalMs: 1000 } });
      await w.manager.changeProfile('alice', 'wide');
      const url = await start({ costs: [{ method: 'POST', path: '/v1/images', cost: 5 }, { path: '/v1/cheap', cost: 1 }, { path: '/v1', cost: 3 }] });
      const key = { 'x-api-key': 'key-alice' };
      let usage = 0;
      // A router that collapses slashes (or decodes, or ignores case) reaches /v1/images or
      // /v1/cheap; one that does not reaches no route, or a catch-all under /v1: the most of both.
      for (const [path, cost] of [['/v1//images/42', 5], ['//v1/images/42', 5], ['/v1/images//42', 5], ['/V1/Images/42', 5], ['/v1/%69mages/42', 5], ['/v1//cheap', 3], ['/v1/cheap', 1]] as const) {
        const res = await send(url, 'POST', path, key);
        usage += cost;
        expect(res.status, path).toBe(200);
        expect((await w.manager.getSubscription('alice'))?.usage, path).toBe(usage);
      }
    });

    it('r is never negative: a downgrade below what the bucket holds shows r=0 on the 429', async () => {
      await w.manager.subscribe('alice', 'big');
      const url = await start({ costs: [{ path: '/bulk', cost: 50 }] });
      const key = { 'x-api-key': 'key-alice' };
      expect(list((await fetch(`${url}/bulk`, { headers: key })).headers.get('ratelimit'))[0]).toEqual(['big', { r: 0, t: 50 }]);
      await w.manager.changeProfile('alice', 'free');
      for (const path of ['/x', '/x']) {
        const res = await fetch(`${url}${path}`, { headers: key });
        expect(res.status).toBe(429);
        const [name, params] = list(res.headers.get('ratelimit'))[0] as [unknown, Record<string, number>];
        expect(name).toBe('free');
        expect(params.r).toBe(0);
        expect(params.t).toBeGreaterThan(0);
        expect((await problem(res)).detail).not.toMatch(/-\d/);
      }
    });

    it('rate and quota refusals keep the registered type, have distinct titles, and name policies as the headers do', async () => {
      await w.manager.subscribe('uwe', 'grün "plan"');
      const url = await start({});
      const key = { 'x-api-key': 'key-uwe' };
      const first = await fetch(`${url}/x`, { headers: key });
      const rateName = list(first.headers.get('ratelimit'))[0]?.[0];
      const quotaName = list(first.headers.get('ratelimit'))[1]?.[0];
      expect([rateName, quotaName]).toEqual(['gr%C3%BCn "plan"', 'gr%C3%BCn "plan"-quota']);
      const rate = await fetch(`${url}/x`, { headers: key });
      expect(rate.status).toBe(429);
      const rateBody = await problem(rate);
      expect(rateBody).toMatchObject({ type: QUOTA_EXCEEDED_TYPE, title: 'Rate limit exceeded', 'violated-policies': [rateName] });
      w.clock.now += 1000;
      expect((await fetch(`${url}/x`, { headers: key })).status).toBe(200);
      w.clock.now += 1000;
      const quota = await fetch(`${url}/x`, { headers: key });
      expect(quota.status).toBe(429);
      const quotaBody = await problem(quota);
      expect(quotaBody).toMatchObject({ type: QUOTA_EXCEEDED_TYPE, title: 'Quota exceeded', 'violated-policies': [quotaName] });
      expect(list(quota.headers.get('ratelimit')).map(([n]) => n)).toContain(quotaName);
    });

    it('skip(req) passes a request through with no admission and no headers: a CORS preflight without a key', async () => {
      await w.manager.subscribe('alice', 'free');
      const seen: Array<Admission | undefined> = [];
      const url = await start({ skip: (req: { method?: string }) => req.method === 'OPTIONS' } as Partial<HttpOptions<never>>, ({ admission }) => {
        seen.push(admission);
        return 'passed';
      });
      const preflight = await fetch(`${url}/v1/images`, { method: 'OPTIONS', headers: { origin: 'https://app.example', 'access-control-request-method': 'POST' } });
      expect(preflight.status).toBe(200);
      expect(await preflight.text()).toBe('passed');
      expect(preflight.headers.get('ratelimit')).toBeNull();
      expect(preflight.headers.get('ratelimit-policy')).toBeNull();
      const keyed = await fetch(`${url}/v1/images`, { method: 'OPTIONS', headers: { 'x-api-key': 'key-alice' } });
      expect(keyed.status).toBe(200);
      await keyed.arrayBuffer();
      expect(seen).toEqual([undefined, undefined]);
      expect((await w.manager.getSubscription('alice'))?.usage).toBe(0);
      expect((await fetch(`${url}/v1/images`)).status).toBe(401); // what is not skipped is admitted as before
    });

    it('a throwing skip is a 500 that says nothing of it; the fault goes to onError', async () => {
      const faults: unknown[] = [];
      const url = await start({ skip: () => { throw new Error('secret: skip exploded'); }, onError: (error: unknown) => faults.push(error) } as Partial<HttpOptions<never>>);
      const res = await fetch(`${url}/x`, { headers: { 'x-api-key': 'key-alice' } });
      expect(res.status).toBe(500);
      await problem(res);
      expect(faults).toHaveLength(1);
    });

    it('503 with Retry-After when the first-sight subscription of an anonymous client fails on a store outage (admit and govern)', async () => {
      const down = world(new WriteOutageStore());
      try {
        for (const mode of ['admit', 'govern'] as const) {
          const url = await start({ tenant: 'ip', anonymousProfile: 'public', mode } as Partial<HttpOptions<never>>, echo, down.manager);
          const res = await fetch(`${url}/x`);
          expect(res.status, mode).toBe(503);
          expect(res.headers.get('retry-after'), mode).toBe('2');
          expect(await problem(res), mode).toMatchObject({ type: `${PROBLEM_TYPE_PREFIX}store-unavailable` });
          await served?.close();
          served = undefined;
        }
      } finally {
        await down.manager.close({ drain: false, timeoutMs: 0 });
      }
    });

    it('a 429, rate or quota, admit or govern, costs no store call beyond the admission itself', async () => {
      const { world: cw, calls } = countedWorld();
      try {
        await cw.manager.subscribe('alice', 'free');
        await cw.manager.subscribe('tina', 'tiny');
        await cw.manager.subscribe('sam', 'solo');
        for (const mode of ['admit', 'govern'] as const) {
          const url = await start({ mode, costs: [{ path: '/big', cost: 1000 }] }, echo, cw.manager);
          const cases: Array<[string, string, number]> = mode === 'admit' ? [['key-alice', '/x', 10], ['key-tina', '/x', 3]] : [['key-sam', '/big', 1], ['key-tina', '/x', 0]];
          for (const [key, path, allowed] of cases) {
            for (let i = 0; i < allowed; i++) await (await fetch(`${url}${path}`, { headers: { 'x-api-key': key } })).arrayBuffer();
            calls.clear();
            const res = await fetch(`${url}${path}`, { headers: { 'x-api-key': key } });
            expect(res.status, `${mode} ${key}`).toBe(429);
            expect(res.headers.get('ratelimit'), `${mode} ${key}`).not.toBeNull();
            await res.arrayBuffer();
            expect(decisions(calls), `${mode} ${key}`).toEqual({ admit: 1 });
          }
          await served?.close();
          served = undefined;
        }
      } finally {
        await cw.manager.close({ drain: false, timeoutMs: 0 });
      }
    });

    it('counts its decisions in metrics by profile and outcome, with no per-tenant label', async () => {
      await w.manager.subscribe('alice', 'free');
      await w.manager.subscribe('tina', 'tiny');
      const url = await start({ costs });
      for (let i = 0; i < 2; i++) await (await fetch(`${url}/v1/images`, { method: 'POST', headers: { 'x-api-key': 'key-alice' } })).arrayBuffer();
      await (await fetch(`${url}/v1/images`, { method: 'POST', headers: { 'x-api-key': 'key-alice' } })).arrayBuffer();
      for (let i = 0; i < 4; i++) await (await fetch(`${url}/x`, { headers: { 'x-api-key': 'key-tina' } })).arrayBuffer();
      await (await fetch(`${url}/x`)).arrayBuffer();
      await send(url, 'GET', '/v1/images/..', { 'x-api-key': 'key-alice' });
      const scrape = await w.manager.registry.metrics();
      const series = scrape.split('\n').filter((line) => line.startsWith('taskvalve_http_requests_total{'));
      expect(series.sort()).toEqual([
        'taskvalve_http_requests_total{profile="",outcome="bad_path"} 1',
        'taskvalve_http_requests_total{profile="",outcome="unknown_tenant"} 1',
        'taskvalve_http_requests_total{profile="free",outcome="allowed"} 2',
        'taskvalve_http_requests_total{profile="free",outcome="rate_limited"} 1',
        'taskvalve_http_requests_total{profile="tiny",outcome="allowed"} 3',
        'taskvalve_http_requests_total{profile="tiny",outcome="quota_exceeded"} 1',
      ]);
      expect(scrape).not.toMatch(/alice|tina|127\.0\.0\.1/);
    });

    it('anonymous tenants idle for anonymousTtlMs are deleted; active, refused, keyed and banned ones are kept', async () => {
      w.manager.registerProfile('guest', { rate: { limit: 100, intervalMs: 1000 }, quota: { limit: 2 } });
      await w.manager.subscribe('alice', 'free');
      const url = await start({ anonymousProfile: 'guest', anonymousTtlMs: 60_000, trustProxy: 1 } as Partial<HttpOptions<never>>);
      const from = (address: string): Record<string, string> => ({ 'x-forwarded-for': address });
      const get = async (headers: Record<string, string>): Promise<number> => {
        const res = await fetch(`${url}/x`, { headers });
        await res.arrayBuffer();
        return res.status;
      };
      for (const address of ['10.0.0.1', '10.0.0.2', '10.0.0.3', '10.0.0.4']) expect(await get(from(address))).toBe(200);
      expect(await get(from('10.0.0.3'))).toBe(200); // its lifetime quota of 2 is spent
      await w.manager.cancelSubscription('10.0.0.4'); // a ban: never lifted by idling
      expect(await get({ 'x-api-key': 'key-alice' })).toBe(200);
      w.clock.now += 30_000;
      expect(await get(from('10.0.0.2'))).toBe(200); // active
      expect(await get(from('10.0.0.3'))).toBe(429); // refused, but seen: a refused client cannot idle its quota back
      const deleted: string[] = [];
      w.manager.on('subscription', (e: { userId: string; event: string }) => {
        if (e.event === 'deleted') deleted.push(e.userId);
      });
      w.clock.now += 30_000; // 10.0.0.1 and 10.0.0.4 idle for 60 s
      // Requests sweep the longest idle tenants first, a few each.
      for (let i = 0; i < 2; i++) expect(await get({ 'x-api-key': 'key-alice' })).toBe(200);
      await until(async () => deleted.length === 1 && (await w.manager.getSubscription('10.0.0.4')) !== undefined);
      expect(deleted).toEqual(['10.0.0.1']);
      expect(await w.manager.getSubscription('10.0.0.1')).toBeUndefined();
      expect((await w.manager.getSubscription('10.0.0.2'))?.status).toBe('active');
      expect((await w.manager.getSubscription('10.0.0.3'))?.usage).toBe(2);
      expect((await w.manager.getSubscription('10.0.0.4'))?.status).toBe('canceled');
      expect((await w.manager.getSubscription('alice'))?.status).toBe('active');
      // The deleted address, back, is a new anonymous tenant.
      const back = await fetch(`${url}/x`, { headers: from('10.0.0.1') });
      expect(list(back.headers.get('ratelimit'))[1]).toEqual(['guest-quota', { r: 1 }]);
    });

    it('an idle server deletes idle anonymous tenants on its own timer', async () => {
      const url = await start({ tenant: 'ip', anonymousProfile: 'public', anonymousTtlMs: 1, clock: Date.now } as Partial<HttpOptions<never>>);
      const deleted = new Promise<string>((resolve) => w.manager.on('subscription', (e: { userId: string; event: string }) => e.event === 'deleted' && resolve(e.userId)));
      expect((await fetch(`${url}/x`)).status).toBe(200);
      expect(await deleted).toBe('127.0.0.1');
      expect(await w.manager.getSubscription('127.0.0.1')).toBeUndefined();
    });

    it('rate-limited: 429, Retry-After rounded up and never early, problem+json naming the policy', async () => {
      await w.manager.subscribe('alice', 'free');
      const url = await start({ costs });
      const key = { 'x-api-key': 'key-alice' };
      for (let i = 0; i < 2; i++) expect((await fetch(`${url}/v1/images`, { method: 'POST', headers: key })).status).toBe(200);

      let res = await fetch(`${url}/v1/ping`, { headers: key });
      expect(res.status).toBe(429);
      expect(res.headers.get('retry-after')).toBe('6');
      expect(list(res.headers.get('ratelimit'))).toEqual([
        ['free', { r: 0, t: 6 }],
        ['free-quota', { r: 90, t: 86_400 }],
      ]);
      const body = await problem(res);
      expect(body).toMatchObject({ type: QUOTA_EXCEEDED_TYPE, status: 429, 'violated-policies': ['free'] });

      w.clock.now += 5_001; // 999 ms left: still a whole second
      res = await fetch(`${url}/v1/ping`, { headers: key });
      expect(res.status).toBe(429);
      expect(res.headers.get('retry-after')).toBe('1');
      await res.arrayBuffer();

      w.clock.now += 998; // 1 ms left: still refused, still 1 s
      res = await fetch(`${url}/v1/ping`, { headers: key });
      expect(res.status).toBe(429);
      expect(res.headers.get('retry-after')).toBe('1');
      await res.arrayBuffer();

      w.clock.now += 1; // exactly when the bucket allows
      res = await fetch(`${url}/v1/ping`, { headers: key });
      expect(res.status).toBe(200);
      expect(list(res.headers.get('ratelimit'))[0]).toEqual(['free', { r: 0, t: 60 }]);

      // A costly request is refused while the bucket holds fewer units than it costs.
      w.clock.now += 12_000;
      res = await fetch(`${url}/v1/images`, { method: 'POST', headers: key });
      expect(res.status).toBe(429);
      expect(res.headers.get('retry-after')).toBe('18');
      expect(list(res.headers.get('ratelimit'))[0]).toEqual(['free', { r: 2, t: 18 }]);
      expect(await problem(res)).toMatchObject({ 'violated-policies': ['free'] });
    });

    it('over quota: 429 naming the quota policy, Retry-After when the period renews', async () => {
      await w.manager.subscribe('tina', 'tiny');
      const url = await start({});
      const key = { 'x-api-key': 'key-tina' };
      for (let i = 0; i < 3; i++) expect((await fetch(`${url}/a`, { headers: key })).status).toBe(200);
      w.clock.now += 600_000;
      const res = await fetch(`${url}/a`, { headers: key });
      expect(res.status).toBe(429);
      expect(res.headers.get('retry-after')).toBe('3000');
      expect(list(res.headers.get('ratelimit-policy'))).toEqual([
        ['tiny', { q: 100, w: 1 }],
        ['tiny-quota', { q: 3, w: 3600 }],
      ]);
      // The quota is decided before the bucket, which the refusal does not read: RateLimit names the quota alone.
      expect(list(res.headers.get('ratelimit'))).toEqual([['tiny-quota', { r: 0, t: 3000 }]]);
      expect(await problem(res)).toMatchObject({ type: QUOTA_EXCEEDED_TYPE, status: 429, 'violated-policies': ['tiny-quota'] });
    });

    it('subscription problems: 403 saying canceled, expired or not started (with Retry-After), or none', async () => {
      await w.manager.subscribe('carl', 'free');
      await w.manager.cancelSubscription('carl');
      await w.manager.subscribe('eve', 'free', { endsAt: T0 - 1000, startsAt: T0 - DAY });
      await w.manager.subscribe('nora', 'free', { startsAt: T0 + 90_500 });
      const url = await start({});
      const cases: Array<[string, string, string | null]> = [
        ['key-carl', 'subscription-inactive', null],
        ['key-eve', 'subscription-expired', null],
        ['key-nora', 'subscription-not-started', '91'],
        ['key-ghost', 'subscription-not-found', null],
      ];
      for (const [key, slug, retryAfter] of cases) {
        const res = await fetch(`${url}/x`, { headers: { 'x-api-key': key } });
        expect(res.status, key).toBe(403);
        expect(res.headers.get('retry-after'), key).toBe(retryAfter);
        expect(res.headers.get('ratelimit'), key).toBeNull();
        expect(await problem(res), key).toMatchObject({ type: `${PROBLEM_TYPE_PREFIX}${slug}`, status: 403 });
      }
      const expired = await fetch(`${url}/x`, { headers: { 'x-api-key': 'key-eve' } });
      expect((await problem(expired)).detail).toContain(new Date(T0 - 1000).toISOString());
    });

    it('unknown tenant: 401 for a missing or unknown key, even with an anonymous profile', async () => {
      const url = await start({ anonymousProfile: 'public' });
      let res = await fetch(`${url}/x`, { headers: { 'x-api-key': 'key-nobody' } });
      expect(res.status).toBe(401);
      expect(res.headers.get('www-authenticate')).toBe('ApiKey header="x-api-key"');
      expect(await problem(res)).toMatchObject({ type: `${PROBLEM_TYPE_PREFIX}unknown-tenant` });
      await served?.close();

      const strict = await start({});
      res = await fetch(`${strict}/x`);
      expect(res.status).toBe(401);
      await problem(res);
    });

    it('an unresolved tenant with an anonymous profile is its address, subscribed on first sight', async () => {
      const url = await start({ anonymousProfile: 'public' });
      for (const r of [2, 1, 0]) {
        const res = await fetch(`${url}/x`);
        expect(res.status).toBe(200);
        expect(await res.text()).toBe('ok 127.0.0.1');
        expect(list(res.headers.get('ratelimit'))).toEqual([['public', { r, t: 3 - r }]]);
      }
      expect((await fetch(`${url}/x`)).status).toBe(429);
      expect((await w.manager.getSubscription('127.0.0.1'))?.profileName).toBe('public');
    });

    it("X-Forwarded-For cannot change the tenant when proxies are not trusted (the default)", async () => {
      const url = await start({ tenant: 'ip', anonymousProfile: 'public' });
      const spoofs = ['203.0.113.1', '203.0.113.2', '198.51.100.7, 203.0.113.3'];
      const remaining: number[] = [];
      for (const spoof of spoofs) {
        const res = await fetch(`${url}/x`, { headers: { 'x-forwarded-for': spoof } });
        expect(await res.text()).toBe('ok 127.0.0.1');
        remaining.push(list(res.headers.get('ratelimit'))[0]?.[1].r as number);
      }
      expect(remaining).toEqual([2, 1, 0]);
      const res = await fetch(`${url}/x`, { headers: { 'x-forwarded-for': '203.0.113.99' } });
      expect(res.status).toBe(429);
      await res.arrayBuffer();
      for (const spoof of ['203.0.113.1', '203.0.113.2', '198.51.100.7', '203.0.113.3', '203.0.113.99']) {
        expect(await w.manager.getSubscription(spoof)).toBeUndefined();
      }
    });

    it('trustProxy N takes the client N hops from the right; what the client wrote further left is ignored', async () => {
      const url = await start({ tenant: 'ip', anonymousProfile: 'public', trustProxy: 1 });
      // The client claims 6.6.6.6; the one trusted proxy appended the address it saw.
      const res = await fetch(`${url}/x`, { headers: { 'x-forwarded-for': '6.6.6.6, 203.0.113.9' } });
      expect(await res.text()).toBe('ok 203.0.113.9');
      expect(await w.manager.getSubscription('6.6.6.6')).toBeUndefined();
      await served?.close();

      const trusting = await start({ tenant: 'ip', anonymousProfile: 'public', trustProxy: true });
      const left = await fetch(`${trusting}/x`, { headers: { 'x-forwarded-for': '192.0.2.4, 203.0.113.9' } });
      expect(await left.text()).toBe('ok 192.0.2.4');
    });

    it('store unavailable: 503 with Retry-After, nothing of the store error in the body', async () => {
      const down = world(new OutageStore());
      await down.manager.subscribe('alice', 'free');
      try {
        const url = await start({}, echo, down.manager);
        const res = await fetch(`${url}/x`, { headers: { 'x-api-key': 'key-alice' } });
        expect(res.status).toBe(503);
        expect(res.headers.get('retry-after')).toBe('3');
        const body = await problem(res);
        expect(body).toMatchObject({ type: `${PROBLEM_TYPE_PREFIX}store-unavailable` });
        expect(JSON.stringify(body)).not.toMatch(/ECONNREFUSED|6379/);
      } finally {
        await served?.close();
        served = undefined;
        await down.manager.close({ drain: false, timeoutMs: 0 });
      }
    });

    it('a failing tenant lookup is a 500 without its message; the fault goes to onError', async () => {
      const faults: unknown[] = [];
      const url = await start({
        tenant: { header: 'x-api-key', lookup: async () => Promise.reject(new Error('secret: db password wrong')) },
        onError: (error) => faults.push(error),
      });
      const res = await fetch(`${url}/x`, { headers: { 'x-api-key': 'k' } });
      expect(res.status).toBe(500);
      expect(await problem(res)).toMatchObject({ type: `${PROBLEM_TYPE_PREFIX}internal-error` });
      expect(faults).toHaveLength(1);
      expect((faults[0] as Error).message).toContain('db password');
    });

    it('legacy headers on request: X-RateLimit-* for the policy closest to exhaustion', async () => {
      await w.manager.subscribe('tina', 'tiny');
      const url = await start({ legacyHeaders: true });
      const res = await fetch(`${url}/x`, { headers: { 'x-api-key': 'key-tina' } });
      expect(res.status).toBe(200);
      expect(res.headers.get('x-ratelimit-limit')).toBe('3');
      expect(res.headers.get('x-ratelimit-remaining')).toBe('2');
      expect(res.headers.get('x-ratelimit-reset')).toBe('3600');
    });

    it('govern: the handler runs as a task, with the headers, within the per-user concurrency cap', async () => {
      await w.manager.subscribe('sam', 'solo');
      const order: string[] = [];
      const release = gate();
      const firstIn = gate();
      const url = await start({ mode: 'govern' }, async ({ path, admission }) => {
        order.push(`start ${path}`);
        expect(admission?.signal).toBeInstanceOf(AbortSignal);
        if (path === '/first') {
          firstIn.open();
          await release.opened;
        }
        order.push(`end ${path}`);
        return path;
      });
      const key = { 'x-api-key': 'key-sam' };
      const first = fetch(`${url}/first`, { headers: key });
      await firstIn.opened;
      const second = fetch(`${url}/second`, { headers: key });
      await until(async () => (await queueDepth(w.manager, 'solo')) === 1);
      expect(order).toEqual(['start /first']);
      release.open();
      const [a, b] = await Promise.all([first, second]);
      expect([await a.text(), await b.text()]).toEqual(['/first', '/second']);
      expect(order).toEqual(['start /first', 'end /first', 'start /second', 'end /second']);
      expect(list(b.headers.get('ratelimit'))).toEqual([['solo', { r: 998, t: 1 }]]);
    });

    it('govern: a client that disconnects aborts the running handler through its signal', async () => {
      await w.manager.subscribe('sam', 'solo');
      const running = gate();
      const aborted = gate<unknown>();
      const url = await start({ mode: 'govern' }, async ({ path, admission }) => {
        if (path !== '/slow') return 'fast';
        const signal = admission?.signal as AbortSignal;
        running.open();
        await new Promise<void>((resolve) => signal.addEventListener('abort', () => resolve(), { once: true }));
        aborted.open(signal.reason);
        return 'too late';
      });
      const client = new AbortController();
      const request = fetch(`${url}/slow`, { headers: { 'x-api-key': 'key-sam' }, signal: client.signal }).catch((error: unknown) => error);
      await running.opened;
      client.abort();
      await aborted.opened;
      expect(await request).toBeInstanceOf(Error);
      // The slot is free again: the next request runs.
      const next = await fetch(`${url}/fast`, { headers: { 'x-api-key': 'key-sam' } });
      expect(next.status).toBe(200);
      await next.arrayBuffer();
    });

    it('govern: a client that disconnects while its task is queued leaves the queue, refunded, its handler never called', async () => {
      await w.manager.subscribe('sam', 'solo');
      const called: string[] = [];
      const release = gate();
      const firstIn = gate();
      const url = await start({ mode: 'govern' }, async ({ path }) => {
        called.push(path);
        if (path === '/first') {
          firstIn.open();
          await release.opened;
        }
        return path;
      });
      const key = { 'x-api-key': 'key-sam' };
      const first = fetch(`${url}/first`, { headers: key });
      await firstIn.opened;
      const client = new AbortController();
      const queued = fetch(`${url}/queued`, { headers: key, signal: client.signal }).catch((error: unknown) => error);
      await until(async () => (await queueDepth(w.manager, 'solo')) === 1);
      client.abort();
      await until(async () => (await queueDepth(w.manager, 'solo')) === 0);
      expect(await queued).toBeInstanceOf(Error);
      // Refunded: the queued request's unit comes back (a remote store answers on its own time).
      await until(async () => (await w.manager.getSubscription('sam'))?.usage === 1);
      release.open();
      expect(await (await first).text()).toBe('/first');
      expect(called).toEqual(['/first']);
    });

    it('govern: refusals are the same answers as in admit mode', async () => {
      await w.manager.subscribe('tina', 'tiny');
      await w.manager.subscribe('carl', 'free');
      await w.manager.cancelSubscription('carl');
      const url = await start({ mode: 'govern' });
      for (let i = 0; i < 3; i++) expect((await fetch(`${url}/a`, { headers: { 'x-api-key': 'key-tina' } })).status).toBe(200);
      const over = await fetch(`${url}/a`, { headers: { 'x-api-key': 'key-tina' } });
      expect(over.status).toBe(429);
      expect(await problem(over)).toMatchObject({ 'violated-policies': ['tiny-quota'] });
      const canceled = await fetch(`${url}/a`, { headers: { 'x-api-key': 'key-carl' } });
      expect(canceled.status).toBe(403);
      expect(await problem(canceled)).toMatchObject({ type: `${PROBLEM_TYPE_PREFIX}subscription-inactive` });
    });
  });
}

/** The profile's queued tasks, as the metrics tell. */
export async function queueDepth(manager: Manager, profile: string): Promise<number> {
  const metric = manager.registry.getSingleMetric('taskvalve_queue_depth');
  const values = (await metric?.get())?.values ?? [];
  return values.find((v) => v.labels.profile === profile)?.value ?? 0;
}

/** Waits for a condition the server reaches on its own (checked once per event-loop turn). */
export async function until(condition: () => Promise<boolean>): Promise<void> {
  while (!(await condition())) await new Promise((resolve) => setImmediate(resolve));
}
