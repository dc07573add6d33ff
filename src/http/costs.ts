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
/** What needs more than one lookup: anything but a plain lower-case absolute path. */
const UNUSUAL = /[?#%A-Z]|\/\/|\/\.|.\/$|^(?!\/)/;
/** A dot segment (`.` or `..`) once decoded: routers would route it as a name. */
const DOT_SEGMENT = /(^|\/)\.\.?(\/|$)/;

/** A request's path that no cost can be given to: it has dot segments (answered 400). */
export const BAD_PATH = -1;

/**
 * A rule's path as the table keys it: percent-decoded, lower case, no empty segments, no
 * trailing slash.
 */
export function normalizePath(path: string): string {
  return collapse(decode(path).toLowerCase());
}

/** The path of a request-target: no query or fragment; the absolute form's path; `*` and junk: `/`. */
function pathOf(url: string): string {
  let path = url;
  const q = path.search(/[?#]/);
  if (q >= 0) path = path.slice(0, q);
  if (path.charCodeAt(0) === 47 /* '/' */) return path;
  // Absolute form (a request through a forward proxy), read as written (a URL parser would
  // resolve its dot segments); `*` (OPTIONS *) and anything else: the root.
  const authority = /^[a-z][a-z0-9+.-]*:\/\/[^/]*/i.exec(path);
  return authority === null ? '/' : path.slice(authority[0].length) || '/';
}

function decode(path: string): string {
  if (!path.includes('%')) return path;
  try {
    return decodeURIComponent(path);
  } catch {
    // Malformed escapes: the raw spelling (a router refuses it or sees it raw too).
    return path;
  }
}

/** No empty segments, no trailing slash. */
function collapse(path: string): string {
  const out = path.includes('//') ? path.replace(/\/{2,}/g, '/') : path;
  return out.length > 1 && out.endsWith('/') ? out.slice(0, -1) : out;
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
      if (typeof path !== 'string' || !path.startsWith('/') || DOT_SEGMENT.test(decode(path))) throw invalidConfig(WHERE, `${field}.path`, path, "a path starting with '/', with no dot segments");
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

  /**
   * The cost of a request, or {@link BAD_PATH}. Routers disagree on a path's spelling: Express
   * matches case-insensitively and does not decode before matching, Fastify decodes, neither
   * collapses doubled slashes, and both route a dot segment as a name (`/v1/images/..` reaches
   * `/v1/images/:id`). So an unusual spelling costs the most of its readings (raw or decoded,
   * slashes collapsed or not), and a path with a dot segment, plain or percent-encoded, is
   * refused: no client needs one (URL parsers remove them before sending).
   */
  costOf(method: string | undefined, url: string | undefined): number {
    const verb = method ?? 'GET';
    const target = url ?? '/';
    if (!UNUSUAL.test(target)) return this.prices.size === 0 ? this.defaultCost : this.lookup(verb, target);
    const raw = pathOf(target).toLowerCase();
    const decoded = decode(raw);
    if (DOT_SEGMENT.test(decoded)) return BAD_PATH;
    if (this.prices.size === 0) return this.defaultCost;
    let cost = this.lookup(verb, collapse(decoded));
    for (const reading of [raw, decoded, collapse(raw)]) cost = Math.max(cost, this.lookup(verb, reading));
    return cost;
  }

  /** The most specific rule's cost for one spelling: one map lookup per path segment. */
  private lookup(verb: string, spelling: string): number {
    let path = spelling.length > 1 && spelling.endsWith('/') ? spelling.slice(0, -1) : spelling;
    for (;;) {
      const prices = this.prices.get(path);
      if (prices !== undefined) {
        const cost = prices.byMethod.get(verb) ?? (verb === 'HEAD' ? prices.byMethod.get('GET') : undefined) ?? prices.any;
        if (cost !== undefined) return cost;
      }
      if (path === '/' || path === '') return this.defaultCost;
      const cut = path.lastIndexOf('/');
      path = cut <= 0 ? '/' : path.slice(0, cut);
    }
  }
}

function isCost(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value > 0;
}
