/**
 * Who a request is for: a user id from an API key header, from the user's own function, or
 * the client address. The client address comes from the socket unless proxies are trusted.
 */
import type { IncomingMessage } from 'node:http';
import { isIP } from 'node:net';
import { invalidArgument, invalidConfig, show } from '../errors.js';

/** A user id, or undefined when the request names no known user. */
export type MaybeUserId = string | undefined | null;

/**
 * How the HTTP edge finds the user of a request:
 * - `{ header, lookup }`: the header's value (an API key) is looked up; a key the lookup does not
 *   know is an unknown tenant (401), a missing header is an unresolved one;
 * - a function of the request: undefined means unresolved;
 * - `'ip'`: the client address is the user id.
 */
export type TenantOption<Req> =
  | {
      /** The header carrying the API key (any case). */
      header: string;
      /** The user id of a key, or undefined for a key it does not know (sync or async). */
      lookup: (key: string) => MaybeUserId | Promise<MaybeUserId>;
    }
  | ((req: Req) => MaybeUserId | Promise<MaybeUserId>)
  | 'ip';

/** A request's tenant: a user, an anonymous client address, or nobody (401). */
export type Tenant = { userId: string; anonymous: boolean } | undefined;

/** The validated tenant option. */
export interface TenantResolver<Req> {
  (raw: IncomingMessage, req: Req): Tenant | Promise<Tenant>;
  /** The header that carries the API key, for a 401's WWW-Authenticate. */
  readonly header: string | undefined;
}

const WHERE = 'http options';

/**
 * The client's address. `trustProxy` false: the socket's peer (X-Forwarded-For is ignored, so
 * it cannot be spoofed); true: the left-most X-Forwarded-For entry; a number N: the entry N
 * hops from the right of X-Forwarded-For plus the peer (N proxies of yours in front).
 */
export function clientAddress(raw: IncomingMessage, trustProxy: boolean | number): string | undefined {
  const peer = raw.socket?.remoteAddress === undefined ? undefined : canonicalIp(raw.socket.remoteAddress);
  if (trustProxy === false || trustProxy === 0) return peer;
  const forwarded = raw.headers['x-forwarded-for'];
  if (typeof forwarded !== 'string' || forwarded.length === 0) return peer;
  const hops = forwarded.split(',');
  let entry: string | undefined;
  if (trustProxy === true) entry = hops[0];
  else if (trustProxy > hops.length) entry = hops[0];
  else entry = hops[hops.length - trustProxy];
  // A hop a trusted proxy wrote that is no address: its peer is the best known client.
  return (entry === undefined ? undefined : parseHop(entry)) ?? peer;
}

/** One X-Forwarded-For entry as an address: trimmed, port and brackets dropped. */
function parseHop(entry: string): string | undefined {
  let hop = entry.trim();
  if (isIP(hop) !== 0) return canonicalIp(hop);
  if (hop.startsWith('[')) hop = hop.slice(1, hop.indexOf(']'));
  else if (hop.indexOf(':') === hop.lastIndexOf(':')) hop = hop.slice(0, hop.indexOf(':'));
  return isIP(hop) === 0 ? undefined : canonicalIp(hop);
}

/** One spelling per address: IPv4-mapped IPv6 as IPv4, IPv6 in lower case. */
function canonicalIp(address: string): string {
  if (address.startsWith('::ffff:') && isIP(address.slice(7)) === 4) return address.slice(7);
  return address.toLowerCase();
}

/** Validates the tenant option and returns its resolver. */
export function tenantResolver<Req>(
  option: TenantOption<Req>,
  trustProxy: boolean | number,
  anonymous: boolean,
): TenantResolver<Req> {
  const byAddress = (raw: IncomingMessage): Tenant => {
    if (!anonymous) return undefined;
    const address = clientAddress(raw, trustProxy);
    return address === undefined ? undefined : { userId: address, anonymous: true };
  };
  if (option === 'ip') {
    const resolve = (raw: IncomingMessage): Tenant => {
      const address = clientAddress(raw, trustProxy);
      return address === undefined ? undefined : { userId: address, anonymous: true };
    };
    return Object.assign(resolve, { header: undefined });
  }
  if (typeof option === 'function') {
    const pick = option;
    const resolve = (raw: IncomingMessage, req: Req): Tenant | Promise<Tenant> => {
      const found = pick(req);
      if (isThenable(found)) return Promise.resolve(found).then((id) => (isMissing(id) ? byAddress(raw) : known(id)));
      return isMissing(found) ? byAddress(raw) : known(found);
    };
    return Object.assign(resolve, { header: undefined });
  }
  if (option === null || typeof option !== 'object') {
    throw invalidConfig(WHERE, 'tenant', option, "{ header, lookup }, a function of the request, or 'ip'");
  }
  const { header, lookup } = option;
  if (typeof header !== 'string' || !/^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/.test(header)) throw invalidConfig(WHERE, 'tenant.header', header, 'a header name');
  if (typeof lookup !== 'function') throw invalidConfig(WHERE, 'tenant.lookup', lookup, 'a function (key) => userId | undefined');
  const name = header.toLowerCase();
  const resolve = (raw: IncomingMessage): Tenant | Promise<Tenant> => {
    const key = raw.headers[name];
    if (typeof key !== 'string' || key.length === 0) return byAddress(raw);
    // A key was presented: one the lookup does not know is refused, never downgraded to anonymous.
    const found = lookup(key);
    if (isThenable(found)) return Promise.resolve(found).then((id) => (isMissing(id) ? undefined : known(id)));
    return isMissing(found) ? undefined : known(found);
  };
  return Object.assign(resolve, { header: name });
}

function isThenable(value: unknown): value is PromiseLike<MaybeUserId> {
  return value !== null && typeof value === 'object' && typeof (value as { then?: unknown }).then === 'function';
}

function isMissing(id: unknown): id is undefined | null {
  return id === undefined || id === null;
}

/** A user id the user's function returned. */
function known(id: unknown): Tenant {
  if (typeof id !== 'string' || id.length === 0) throw invalidArgument(`the tenant function must return a non-empty string user id or undefined, got ${show(id)}`);
  return { userId: id, anonymous: false };
}
