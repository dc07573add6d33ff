/**
 * Cost rules: a method and a path prefix map to a cost. The longest prefix wins, then a
 * method-specific rule over an any-method one; no rule: the default cost.
 */
import { invalidConfig, show } from '../errors.js';

/** One cost rule of the HTTP edge. */
export interface CostRule {
  /** An HTTP method, any case; absent: every method. A GET rule also prices HEAD (routers answer HEAD with the GET handler). */
  method?: string;
  /** A path prefix, matched on whole segments: `/v1` matches `/v1` and `/v1/images`, never `/v10`. */
  path: string;
  /** Positive integer units charged for a matching request. */
  cost: number;
}

/** The costs of one prefix. */
interface Prices {
  /** The any-method rule's cost, if any. */
  any: number | undefined;
  /** Method-specific costs, by upper-case method. */
  byMethod: Map<string, number>;
}

const WHERE = 'http options';
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
/** What normalizePath has to work on: anything but a plain lower-case absolute path. */
const UNUSUAL = /[?#%A-Z]|\/\/|\/\.|.\/$|^(?!\/)/;

/**
 * The path as the rules see it: no query, percent-decoded, lower case, no empty or dot
 * segments, no trailing slash. Routers accept such spellings as the same route (Express
 * matches case-insensitively by default), so a spelling must never cost less than the route.
 */
export function normalizePath(url: string): string {
  // Most paths are already plain: lower case, no query, escapes, empty or dot segments.
  if (!UNUSUAL.test(url)) return url;
  let path = url;
  const q = path.search(/[?#]/);
  if (q >= 0) path = path.slice(0, q);
  if (path.charCodeAt(0) !== 47 /* '/' */) {
    // Absolute form (a request through a forward proxy), `*` (OPTIONS *), or nothing.
    try {
      path = new URL(path).pathname;
    } catch {
      return '/';
    }
  }
  if (path.includes('%')) {
    try {
      path = decodeURIComponent(path);
    } catch {
      // Malformed escapes: rules see the raw spelling (the router refuses it or sees it raw too).
    }
  }
  path = path.toLowerCase();
  if (path.includes('//') || path.includes('/.')) {
    const out: string[] = [];
    for (const segment of path.split('/')) {
      if (segment === '' || segment === '.') continue;
      if (segment === '..') out.pop();
      else out.push(segment);
    }
    path = `/${out.join('/')}`;
  }
  if (path.length > 1 && path.endsWith('/')) path = path.slice(0, -1);
  return path;
}

/** Compiled cost rules: one map lookup per path segment of the request. */
export class CostTable {
  private readonly prices = new Map<string, Prices>();

  /** Validates the rules: INVALID_CONFIG for a non-positive cost, a bad method or path, or two rules pricing the same method and prefix. */
  constructor(
    rules: readonly CostRule[] | undefined,
    /** Units of a request no rule matches. */
    readonly defaultCost: number,
  ) {
    if (!isCost(defaultCost)) throw invalidConfig(WHERE, 'defaultCost', defaultCost, 'a positive integer');
    if (rules === undefined) return;
    if (!Array.isArray(rules)) throw invalidConfig(WHERE, 'costs', rules, 'an array of { method?, path, cost }');
    const seen = new Map<string, number>();
    rules.forEach((rule: unknown, i) => {
      const field = `costs[${i}]`;
      if (rule === null || typeof rule !== 'object') throw invalidConfig(WHERE, field, rule, 'an object { method?, path, cost }');
      const { method, path, cost, ...extra } = rule as Record<string, unknown>;
      const unknown = Object.keys(extra)[0];
      if (unknown !== undefined) throw invalidConfig(WHERE, `${field}.${unknown}`, extra[unknown], 'one of the known fields (method, path, cost)');
      if (method !== undefined && (typeof method !== 'string' || !TOKEN.test(method))) throw invalidConfig(WHERE, `${field}.method`, method, 'an HTTP method name');
      if (typeof path !== 'string' || !path.startsWith('/')) throw invalidConfig(WHERE, `${field}.path`, path, "a path starting with '/'");
      if (!isCost(cost)) throw invalidConfig(WHERE, `${field}.cost`, cost, 'a positive integer');
      const prefix = normalizePath(path);
      const verb = method?.toUpperCase();
      const key = `${verb ?? '*'} ${prefix}`;
      const before = seen.get(key);
      if (before !== undefined) {
        throw invalidConfig(WHERE, field, rule, `not a duplicate: costs[${before}] already prices ${verb ?? 'any method'} ${prefix} (${show(rules[before])})`);
      }
      seen.set(key, i);
      let prices = this.prices.get(prefix);
      if (prices === undefined) {
        prices = { any: undefined, byMethod: new Map() };
        this.prices.set(prefix, prices);
      }
      if (verb === undefined) prices.any = cost;
      else prices.byMethod.set(verb, cost);
    });
  }

  /** The cost of a request. */
  costOf(method: string | undefined, url: string | undefined): number {
    if (this.prices.size === 0) return this.defaultCost;
    const verb = method ?? 'GET';
    let path = normalizePath(url ?? '/');
    for (;;) {
      const prices = this.prices.get(path);
      if (prices !== undefined) {
        const cost = prices.byMethod.get(verb) ?? (verb === 'HEAD' ? prices.byMethod.get('GET') : undefined) ?? prices.any;
        if (cost !== undefined) return cost;
      }
      if (path === '/') return this.defaultCost;
      const cut = path.lastIndexOf('/');
      path = cut <= 0 ? '/' : path.slice(0, cut);
    }
  }
}

function isCost(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value > 0;
}
