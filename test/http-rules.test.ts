// The HTTP edge's pure parts: cost rules, client addresses, and header formatting.
import type { IncomingMessage } from 'node:http';
import { parseList } from 'structured-headers';
import { describe, expect, it } from 'vitest';
import { BAD_PATH, CostTable, normalizePath } from '../src/http/costs.js';
import { limitHeaders, policyFormat, sfString } from '../src/http/headers.js';
import { clientAddress } from '../src/http/tenant.js';
import { thrown } from './helpers.js';

describe('cost rules', () => {
  const table = new CostTable(
    [
      { method: 'POST', path: '/v1/images', cost: 5 },
      { path: '/v1/images', cost: 2 },
      { path: '/v1', cost: 1 },
      { method: 'get', path: '/v1/reports', cost: 10 },
      { method: 'POST', path: '/v1', cost: 3 },
    ],
    7,
  );

  it('the longest prefix wins, then a method-specific rule over an any-method one', () => {
    expect(table.costOf('POST', '/v1/images')).toBe(5);
    expect(table.costOf('GET', '/v1/images')).toBe(2);
    expect(table.costOf('POST', '/v1/images/42/variants')).toBe(5);
    expect(table.costOf('POST', '/v1/other')).toBe(3); // POST /v1 over any-method /v1
    expect(table.costOf('DELETE', '/v1/other')).toBe(1);
    expect(table.costOf('GET', '/v1/reports/q3')).toBe(10);
    expect(table.costOf('PUT', '/v1/reports')).toBe(1); // GET-only rule: falls back to /v1
    expect(table.costOf('GET', '/v2/anything')).toBe(7);
    expect(table.costOf('GET', '/')).toBe(7);
  });

  it('prefixes match whole segments', () => {
    expect(table.costOf('POST', '/v1/imagesX')).toBe(3);
    expect(table.costOf('GET', '/v10')).toBe(7);
    expect(table.costOf('GET', '/v1')).toBe(1);
  });

  it('HEAD is priced as GET (routers answer it with the GET handler) unless a HEAD rule says otherwise', () => {
    expect(table.costOf('HEAD', '/v1/reports')).toBe(10);
    const own = new CostTable([{ method: 'GET', path: '/r', cost: 9 }, { method: 'HEAD', path: '/r', cost: 1 }], 1);
    expect(own.costOf('HEAD', '/r')).toBe(1);
  });

  it('spellings a router accepts for a route never cost less than the route', () => {
    for (const spelling of ['/V1/IMAGES', '/v1/images/', '/v1//images', '/v1/%69mages', '/v1/images?size=large', '/v1/images#frag', 'http://api.example/v1/images', '/v1/images/a%2fb']) {
      expect(table.costOf('POST', spelling), spelling).toBe(5);
    }
    expect(normalizePath('/A//b/')).toBe('/a/b');
    expect(normalizePath('/a/%zz')).toBe('/a/%zz'); // malformed escapes stay as they are
    expect(table.costOf('GET', '/a/%zz')).toBe(7);
    expect(table.costOf('OPTIONS', '*')).toBe(7);
    expect(table.costOf('GET', '')).toBe(7);
  });

  it('a spelling costs the most of its readings: raw or decoded, slashes collapsed or not', () => {
    const t = new CostTable([{ path: '/v1', cost: 9 }, { path: '/v1/cheap', cost: 1 }, { path: '/v1/%zz', cost: 4 }], 2);
    expect(t.costOf('GET', '/v1/cheap')).toBe(1);
    expect(t.costOf('GET', '/v1//cheap')).toBe(9); // a router that does not collapse reaches /v1/*
    expect(t.costOf('GET', '/v1/%63heap')).toBe(9); // one that does not decode reaches /v1/*
    expect(t.costOf('GET', '/v1/cheap/')).toBe(1);
    expect(t.costOf('GET', '//v1/cheap')).toBe(2); // not collapsed, it matches no rule: the default
  });

  it('dot segments, plain or encoded, in any case or mix, give no cost: the edge answers 400', () => {
    for (const path of ['/..', '/.', '/v1/..', '/v1/.', '/v1/./x', '/v1/../x', '/v1/%2e%2e', '/v1/%2E%2e', '/v1/%2e', '/v1/.%2E', '/v1/%2e./x', '/v1/..%2f..', '/v1/..%2F', '/v1/..?x', '/v1/..#x', 'http://h/v1/%2e%2e']) {
      expect(table.costOf('GET', path), path).toBe(BAD_PATH);
    }
    for (const path of ['/v1/...', '/v1/.well-known', '/v1/a.b', '/v1/..a', '/v1/%2e%2e%2e']) expect(table.costOf('GET', path), path).not.toBe(BAD_PATH);
    expect(new CostTable([], 3).costOf('GET', '/v1/%2e%2e')).toBe(BAD_PATH); // with no rules too
  });

  it('no rules: every request costs the default', () => {
    expect(new CostTable(undefined, 3).costOf('GET', '/anything')).toBe(3);
  });

  it('validates at construction: duplicates (after normalizing), non-positive costs, bad methods and paths', () => {
    const cases: Array<[unknown, RegExp]> = [
      [[{ path: '/v1', cost: 1 }, { path: '/V1/', cost: 2 }], /costs\[1\].*costs\[0\] already prices any method \/v1/],
      [[{ method: 'get', path: '/a', cost: 1 }, { method: 'GET', path: '/a', cost: 1 }], /costs\[1\].*GET \/a/],
      [[{ path: '/a', cost: 0 }], /costs\[0\]\.cost must be a positive integer, got 0/],
      [[{ path: '/a', cost: -2 }], /costs\[0\]\.cost/],
      [[{ path: '/a', cost: 1.5 }], /costs\[0\]\.cost/],
      [[{ path: 'a', cost: 1 }], /costs\[0\]\.path/],
      [[{ path: '/a/../b', cost: 1 }], /costs\[0\]\.path.*dot segments/],
      [[{ path: '/a/%2e', cost: 1 }], /costs\[0\]\.path/],
      [[{ method: 'GE T', path: '/a', cost: 1 }], /costs\[0\]\.method/],
      [[{ path: '/a', cost: 1, weight: 2 }], /costs\[0\]\.weight/],
      [[null], /costs\[0\]/],
      [{ path: '/a', cost: 1 }, /costs must be an array/],
    ];
    for (const [rules, message] of cases) {
      const error = thrown(() => new CostTable(rules as never, 1));
      expect(error.code).toBe('INVALID_CONFIG');
      expect(error.message).toMatch(message);
    }
    expect(thrown(() => new CostTable([], 0)).message).toMatch(/defaultCost/);
    // Same path, different methods, and a method rule beside an any-method one: not duplicates.
    expect(() => new CostTable([{ path: '/a', cost: 1 }, { method: 'GET', path: '/a', cost: 2 }, { method: 'POST', path: '/a', cost: 3 }], 1)).not.toThrow();
  });
});

describe('client address', () => {
  function request(peer: string | undefined, forwarded?: string): IncomingMessage {
    return { socket: { remoteAddress: peer }, headers: forwarded === undefined ? {} : { 'x-forwarded-for': forwarded } } as unknown as IncomingMessage;
  }

  it('untrusted proxies: the socket peer, whatever X-Forwarded-For claims', () => {
    expect(clientAddress(request('10.0.0.2', '1.2.3.4'), false)).toBe('10.0.0.2');
    expect(clientAddress(request('10.0.0.2', '1.2.3.4'), 0)).toBe('10.0.0.2');
  });

  it('trustProxy true: the left-most entry; N: N hops from the right', () => {
    const req = request('10.0.0.2', '6.6.6.6, 203.0.113.9, 10.0.0.1');
    expect(clientAddress(req, true)).toBe('6.6.6.6');
    expect(clientAddress(req, 1)).toBe('10.0.0.1');
    expect(clientAddress(req, 2)).toBe('203.0.113.9');
    expect(clientAddress(req, 9)).toBe('6.6.6.6');
    expect(clientAddress(request('10.0.0.2'), 1)).toBe('10.0.0.2');
  });

  it('one spelling per address; an entry that is no address falls back to the peer', () => {
    expect(clientAddress(request('::ffff:127.0.0.1'), false)).toBe('127.0.0.1');
    expect(clientAddress(request('10.0.0.2', '203.0.113.9:5123'), 1)).toBe('203.0.113.9');
    expect(clientAddress(request('10.0.0.2', '[2001:DB8::1]:443'), 1)).toBe('2001:db8::1');
    expect(clientAddress(request('10.0.0.2', '2001:db8::2'), 1)).toBe('2001:db8::2');
    expect(clientAddress(request('10.0.0.2', 'unknown'), 1)).toBe('10.0.0.2');
    expect(clientAddress(request(undefined), false)).toBeUndefined();
  });
});

describe('header formatting', () => {
  const view = (name: string, rate: { limit: number; intervalMs: number; burst: number }, quota: { limit: number; periodMs: number | null } | null = null) =>
    ({ name, rate: { ...rate, shared: undefined }, quota: quota && { ...quota, kind: 'hard' as const } });

  it("the rate policy's q is the burst and w the seconds to refill it, rounded up", () => {
    expect(policyFormat(view('a', { limit: 10, intervalMs: 60_000, burst: 10 })).ratePolicy).toBe('"a";q=10;w=60');
    expect(policyFormat(view('b', { limit: 10, intervalMs: 1000, burst: 20 })).ratePolicy).toBe('"b";q=20;w=2');
    expect(policyFormat(view('c', { limit: 10, intervalMs: 500, burst: 10 })).ratePolicy).toBe('"c";q=10;w=1');
    expect(policyFormat(view('d', { limit: 3, intervalMs: 1000, burst: 2 })).ratePolicy).toBe('"d";q=2;w=1');
  });

  it('profile names become valid sf-strings, whatever their characters', () => {
    for (const name of ['plain', 'with "quotes" and \\', 'grün 100%', 'tab\there', '日本']) {
      const [item] = parseList(sfString(name))[0] as [unknown, unknown];
      expect(typeof item).toBe('string');
      if (/^[\x20-\x7e]*$/.test(name) && !name.includes('%')) expect(item).toBe(name);
    }
    expect(sfString('grün')).toBe('"gr%C3%BCn"');
  });

  it('lists both policies; a lifetime quota has no w and no t; legacy headers follow the closest to exhaustion', () => {
    const format = policyFormat(view('p', { limit: 5, intervalMs: 1000, burst: 5 }, { limit: 50, periodMs: null }));
    const headers = new Map(limitHeaders({ format, rate: { remaining: 4, seconds: 1 }, quota: { limit: 50, remaining: 2, seconds: undefined } }, true));
    expect(parseList(headers.get('RateLimit-Policy') as string).map(([n, p]) => [n, Object.fromEntries(p)])).toEqual([
      ['p', { q: 5, w: 1 }],
      ['p-quota', { q: 50 }],
    ]);
    expect(parseList(headers.get('RateLimit') as string).map(([n, p]) => [n, Object.fromEntries(p)])).toEqual([
      ['p', { r: 4, t: 1 }],
      ['p-quota', { r: 2 }],
    ]);
    expect([headers.get('X-RateLimit-Limit'), headers.get('X-RateLimit-Remaining'), headers.get('X-RateLimit-Reset')]).toEqual(['50', '2', undefined]);
  });
});
