/**
 * The HTTP edge's one core, under every adapter: tenant -> cost -> admission -> an answer.
 * Admit mode runs `check(cost)` and lets the request through; govern mode runs the rest of
 * the request as an inline task of the user's limiter (per-user concurrency cap, fair queue),
 * aborted when the client disconnects. Adapters only move headers and bodies.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { ErrorCode, TaskvalveError, invalidConfig, type Refusal } from '../errors.js';
import type { DetailedDecision, Limiter, PeekResult } from '../limiter.js';
import type { Manager } from '../manager.js';
import type { Subscription } from '../store/store.js';
import { BAD_PATH, CostTable, type CostRule } from './costs.js';
import { limitHeaders, policyFormat, seconds, shownRemaining, type Header, type Limits, type PolicyFormat } from './headers.js';
import {
  GONE,
  badPath,
  internalError,
  isSubscriptionCode,
  queueFull,
  quotaExceeded,
  rateLimitExceeded,
  shuttingDown,
  storeUnavailable,
  subscriptionProblem,
  tooCostly,
  unknownTenant,
  type Denial,
} from './problem.js';
import { tenantResolver, type Tenant, type TenantOption, type TenantResolver } from './tenant.js';

/** Options of the HTTP edge (every adapter). `Req` is the request object the adapter hands to a tenant function. */
export interface HttpOptions<Req = IncomingMessage> {
  /** How to find the request's user: `{ header, lookup }`, a function of the request, or `'ip'`. */
  tenant: TenantOption<Req>;
  /**
   * A registered profile for clients known only by address (tenant `'ip'`, or a tenant left
   * unresolved): the address is the user id, subscribed to this profile on first sight.
   * Absent: an unresolved tenant is 401.
   */
  anonymousProfile?: string;
  /** Cost rules; the most specific wins (longest prefix, then method-specific). Default: none. */
  costs?: readonly CostRule[];
  /** Cost of a request no rule matches; default 1. */
  defaultCost?: number;
  /** 'admit' (default): check(cost), then the handler runs as usual. 'govern': the handler runs as an inline task. */
  mode?: 'admit' | 'govern';
  /** Also send X-RateLimit-Limit/-Remaining/-Reset; default false. */
  legacyHeaders?: boolean;
  /** Default false: X-Forwarded-For is ignored. true: its left-most entry; N: N proxies of yours in front. */
  trustProxy?: boolean | number;
  /**
   * The clock the quota policy's `t` is counted on: pass the manager's `clock` if you gave it one
   * (tests); default Date.now. Rate figures come from the manager's decisions and need none.
   */
  clock?: () => number;
  /** Faults behind a 500 (a throwing tenant lookup or handler); default: the manager's 'error' event, if listened to. */
  onError?: (error: unknown) => void;
  /**
   * True: the request passes straight on, with no admission, no charge and no headers (CORS
   * preflights, health checks). Called first, with the adapter's request; a throw is a 500.
   */
  skip?: (req: Req) => boolean;
  /**
   * With `anonymousProfile`: a client known by address alone that has sent nothing (admitted or
   * refused) for this long is deleted (`manager.deleteSubscription`), so that the store does not
   * grow with every address ever seen; back, it is a new anonymous tenant. Counted on `clock`, per
   * process. Default 1 day.
   */
  anonymousTtlMs?: number;
}

/** What an admitted request's handler learns. */
export interface Admission {
  /** The user the request was admitted for (the client address for an anonymous one). */
  readonly userId: string;
  /** The user's profile, the policy named in the headers; undefined if it could not be read. */
  readonly profile: string | undefined;
  /** Units charged. */
  readonly cost: number;
  /** Govern mode: aborted when the client disconnects (or the task is abandoned at shutdown). Admit mode: undefined. */
  readonly signal: AbortSignal | undefined;
}

/**
 * Called once a request is admitted, with its headers, or passed by `skip` (no headers, admission
 * undefined); it returns once its part is done (it may return a promise).
 */
export type Proceed = (headers: readonly Header[], admission: Admission | undefined) => unknown;

const WHERE = 'http options';
const KNOWN = ['tenant', 'anonymousProfile', 'costs', 'defaultCost', 'mode', 'legacyHeaders', 'trustProxy', 'clock', 'onError', 'skip', 'anonymousTtlMs'];
const DAY_MS = 86_400_000;
/** How often an idle server looks for idle anonymous tenants, at most. */
const SWEEP_EVERY_MS = 60_000;
/** Idle tenants a request deletes at most, on its way (an idle server's timer takes the rest). */
const SWEEP_PER_REQUEST = 2;
const NO_HEADERS: readonly Header[] = [];

/** Whole seconds for Retry-After: rounded up, at least 1 on a refusal (0 would invite a retry storm). */
function retrySeconds(ms: number | undefined, fallbackMs: number): number {
  return Math.max(1, seconds(ms ?? fallbackMs));
}

function isThenable(value: unknown): value is PromiseLike<unknown> {
  return value !== null && typeof value === 'object' && typeof (value as { then?: unknown }).then === 'function';
}

/** The path the request was sent to: Express keeps it in originalUrl when it mounts a middleware on a prefix. */
function urlOf(raw: IncomingMessage): string | undefined {
  return (raw as IncomingMessage & { originalUrl?: string }).originalUrl ?? raw.url;
}

function codeOf(error: unknown): string | undefined {
  return error instanceof TaskvalveError ? error.code : undefined;
}

/** Resolves once the response is over: sent, or its connection closed. */
function ended(res: ServerResponse): Promise<void> {
  if (res.writableFinished || res.destroyed) return Promise.resolve();
  return new Promise((resolve) => {
    const done = (): void => {
      res.off('finish', done);
      res.off('close', done);
      resolve();
    };
    res.on('finish', done);
    res.on('close', done);
  });
}

/** Writes a refusal on a node:http response (the node and Express adapters; the core's own 500s). */
export function writeDenial(res: ServerResponse, denial: Denial): void {
  if (denial.body === undefined || res.headersSent) {
    // Nobody to tell, or the handler already began its answer: cut the connection instead.
    if (!res.writableEnded) res.destroy();
    return;
  }
  res.statusCode = denial.status;
  for (const [name, value] of denial.headers) res.setHeader(name, value);
  res.setHeader('Content-Length', Buffer.byteLength(denial.body));
  res.end(denial.body);
}

/**
 * The node:http way to run an edge (the node and Express adapters): headers with setHeader,
 * refusals with {@link writeDenial}, then `next` for an admitted request.
 */
export function handleOnNode<Req>(edge: HttpEdge<Req>, req: Req & IncomingMessage, res: ServerResponse, next: (admission: Admission | undefined) => unknown): Promise<void> {
  return edge.handle(
    req,
    req,
    res,
    (headers, admission) => {
      for (const [name, value] of headers) res.setHeader(name, value);
      return next(admission);
    },
    (denial) => writeDenial(res, denial),
  );
}

/** The decisions of the HTTP edge for one manager and one set of options. */
export class HttpEdge<Req = IncomingMessage> {
  /** 'admit' or 'govern'. */
  readonly mode: 'admit' | 'govern';
  private readonly resolve: TenantResolver<Req>;
  private readonly costs: CostTable;
  private readonly anonymousProfile: string | undefined;
  private readonly legacy: boolean;
  private readonly clock: () => number;
  private readonly report: (error: unknown) => void;
  private readonly skip: ((req: Req) => boolean) | undefined;
  private readonly unknown: Denial;
  private readonly badPath = badPath();
  /** `http_requests_total` counts by profile, then outcome. */
  private readonly outcomes = new Map<string, Map<string, number>>();
  private readonly anonymousTtlMs: number;
  /** Anonymous tenants by when they were last seen, the longest idle first (a touch moves one last). */
  private readonly seen = new Map<string, number>();
  private sweepTimer: NodeJS.Timeout | undefined;
  /** Formatted policies by profile name: registered profiles never change. */
  private readonly formats = new Map<string, PolicyFormat>();
  /** Validates the options (INVALID_CONFIG naming the field); profiles named must be registered first. */
  constructor(
    private readonly manager: Manager,
    options: HttpOptions<Req>,
  ) {
    if (manager === null || typeof manager !== 'object' || typeof manager.getLimiter !== 'function') {
      throw invalidConfig(WHERE, 'manager', manager, 'a taskvalve Manager');
    }
    if (options === null || typeof options !== 'object') throw invalidConfig(WHERE, 'options', options, 'an object');
    for (const key of Object.keys(options)) {
      if (!KNOWN.includes(key)) throw invalidConfig(WHERE, key, (options as unknown as Record<string, unknown>)[key], `one of the known fields (${KNOWN.join(', ')})`);
    }
    const { anonymousProfile, mode = 'admit', legacyHeaders = false, trustProxy = false, clock, onError, skip, anonymousTtlMs = DAY_MS } = options;
    if (anonymousProfile !== undefined && (typeof anonymousProfile !== 'string' || manager.getProfile(anonymousProfile) === undefined)) {
      throw invalidConfig(WHERE, 'anonymousProfile', anonymousProfile, 'the name of a registered profile');
    }
    if (mode !== 'admit' && mode !== 'govern') throw invalidConfig(WHERE, 'mode', mode, "'admit' or 'govern'");
    if (typeof legacyHeaders !== 'boolean') throw invalidConfig(WHERE, 'legacyHeaders', legacyHeaders, 'a boolean');
    if (typeof trustProxy !== 'boolean' && !(Number.isSafeInteger(trustProxy) && trustProxy >= 0)) {
      throw invalidConfig(WHERE, 'trustProxy', trustProxy, 'a boolean or a non-negative integer (proxies of yours in front)');
    }
    if (clock !== undefined && typeof clock !== 'function') throw invalidConfig(WHERE, 'clock', clock, 'a function returning ms');
    if (onError !== undefined && typeof onError !== 'function') throw invalidConfig(WHERE, 'onError', onError, 'a function');
    if (skip !== undefined && typeof skip !== 'function') throw invalidConfig(WHERE, 'skip', skip, 'a function (req) => boolean');
    if (!Number.isSafeInteger(anonymousTtlMs) || anonymousTtlMs <= 0) throw invalidConfig(WHERE, 'anonymousTtlMs', anonymousTtlMs, 'a positive integer (ms)');
    if (options.tenant === undefined) throw invalidConfig(WHERE, 'tenant', undefined, "{ header, lookup }, a function of the request, or 'ip'");
    this.resolve = tenantResolver(options.tenant, trustProxy, anonymousProfile !== undefined);
    this.costs = new CostTable(options.costs, options.defaultCost ?? 1);
    this.anonymousProfile = anonymousProfile;
    this.mode = mode;
    this.legacy = legacyHeaders;
    this.clock = clock ?? Date.now;
    this.report = onError ?? ((error) => {
      if (manager.listenerCount('error') > 0) manager.emit('error', error);
    });
    this.skip = skip;
    this.anonymousTtlMs = anonymousTtlMs;
    this.unknown = unknownTenant(this.resolve.header);
  }

  /**
   * Decides one request. Admitted (or skipped): calls `proceed` with the headers to set (in govern
   * mode from inside the task, which holds its slot until `proceed` has returned and the response
   * is over). Refused: calls `refuse` with the answer to write. Exactly one of them is called; the
   * promise resolves once that call has returned, and never rejects.
   * @param raw The node:http request (address, headers, method, url).
   * @param req The adapter's request object, given to a tenant function and to `skip`.
   * @param res The node:http response: its close before the end aborts a governed task.
   */
  async handle(raw: IncomingMessage, req: Req, res: ServerResponse, proceed: Proceed, refuse: (denial: Denial) => void): Promise<void> {
    // The hot path of admit mode is this one async frame: every promise hop costs a request
    // measurable time, so there are two at most (the tenant lookup and the check), no wrappers.
    let admitted = false;
    try {
      if (this.skip !== undefined && this.skip(req)) {
        const out = proceed(NO_HEADERS, undefined);
        if (isThenable(out)) await out;
        return;
      }
      const cost = this.costs.costOf(raw.method, urlOf(raw));
      if (cost === BAD_PATH) return this.tell(refuse, this.refused(this.badPath, ''));
      const found = this.resolve(raw, req);
      const tenant = found instanceof Promise ? await found : found;
      if (tenant === undefined) return this.tell(refuse, this.refused(this.unknown, ''));
      const userId = tenant.userId;
      const limiter = this.manager.getLimiter(userId);
      if (this.mode === 'govern') {
        const denial = await this.govern(tenant, limiter, cost, res, proceed);
        if (denial !== undefined) this.tell(refuse, denial);
        return;
      }
      if (this.seen.size > 0) this.sweep(SWEEP_PER_REQUEST);
      let decision: DetailedDecision;
      try {
        decision = await limiter.checkDetailed(cost);
      } catch (error) {
        // A client known by address alone is subscribed on first sight, then decided once more.
        const denial = this.adopts(tenant, error) ? await this.adopt(userId, limiter, cost) : await this.refuse(error, limiter, userId, cost, tenant);
        if (denial !== undefined) return this.tell(refuse, denial);
        try {
          decision = await limiter.checkDetailed(cost);
        } catch (again) {
          return this.tell(refuse, await this.refuse(again, limiter, userId, cost, tenant));
        }
      }
      if (tenant.anonymous) this.touch(userId, decision.profile);
      // One atomic decision carries every figure of the headers: no second read.
      const limits = this.limitsOf(decision.profile, decision, decision);
      if (!decision.allowed) return this.tell(refuse, this.refused(this.rateLimited(limits, decision.retryAfterMs, cost), decision.profile));
      this.count(decision.profile, 'allowed');
      admitted = true;
      const out = proceed(limits === undefined ? NO_HEADERS : limitHeaders(limits, this.legacy), { userId, profile: decision.profile, cost, signal: undefined });
      if (isThenable(out)) await out;
    } catch (error) {
      // A fault of ours, of a user function, or of the handler: a 500 that says nothing of it.
      this.report(error);
      // An admitted request is counted once, as allowed, whatever its handler did.
      this.tell(refuse, admitted ? internalError() : this.refused(internalError(), ''));
    }
  }

  /** Hands a denial to the adapter; a throw there has nowhere else to go but onError. */
  private tell(refuse: (denial: Denial) => void, denial: Denial): void {
    try {
      refuse(denial);
    } catch (error) {
      this.report(error);
    }
  }

  /** Counts an outcome in `http_requests_total`. */
  private count(profile: string, outcome: string): void {
    let counts = this.outcomes.get(profile);
    if (counts === undefined) {
      counts = this.manager.httpOutcomesOf(profile);
      this.outcomes.set(profile, counts);
    }
    counts.set(outcome, (counts.get(outcome) ?? 0) + 1);
  }

  /** A denial, counted under its profile ('' when none is known). */
  private refused(denial: Denial, profile: string | undefined): Denial {
    this.count(profile ?? '', denial.reason);
    return denial;
  }

  /** An anonymous tenant of the anonymous profile was seen now: it is the last to go idle. */
  private touch(userId: string, profile: string | undefined): void {
    if (profile === undefined || profile !== this.anonymousProfile) return;
    this.seen.delete(userId);
    this.seen.set(userId, this.clock());
    this.arm();
  }

  /** An idle server's sweep: bounded and unref'd (it never holds the process open); none while nobody is tracked. */
  private arm(): void {
    if (this.sweepTimer !== undefined || this.seen.size === 0) return;
    this.sweepTimer = setTimeout(() => {
      this.sweepTimer = undefined;
      this.sweep(Infinity);
    }, Math.min(this.anonymousTtlMs, SWEEP_EVERY_MS));
    this.sweepTimer.unref();
  }

  /** Deletes up to `budget` anonymous tenants idle for anonymousTtlMs, the longest idle first. */
  private sweep(budget: number): void {
    const now = this.clock();
    for (const [userId, seenAt] of this.seen) {
      if (budget-- <= 0 || now - seenAt < this.anonymousTtlMs) break;
      this.seen.delete(userId);
      void this.forget(userId);
    }
    this.arm();
  }

  /** Deletes an idle anonymous tenant, if it is still an active subscription to the anonymous profile (a ban stays). */
  private async forget(userId: string): Promise<void> {
    try {
      const sub = await this.manager.getSubscription(userId);
      if (sub?.status === 'active' && sub.profileName === this.anonymousProfile) await this.manager.deleteSubscription(userId);
    } catch (error) {
      this.report(error);
    }
  }

  /** True when this tenant may be subscribed to the anonymous profile on first sight. */
  private adopts(tenant: NonNullable<Tenant>, error: unknown): boolean {
    return tenant.anonymous && this.anonymousProfile !== undefined && codeOf(error) === ErrorCode.SUBSCRIPTION_NOT_FOUND;
  }

  /** Subscribes an anonymous client on first sight; the refusal if that fails (a store outage is a 503). */
  private async adopt(userId: string, limiter: Limiter, cost: number): Promise<Denial | undefined> {
    try {
      await this.manager.subscribe(userId, this.anonymousProfile as string);
      return undefined;
    } catch (error) {
      return this.refuse(error, limiter, userId, cost);
    }
  }

  private async govern(tenant: NonNullable<Tenant>, limiter: Limiter, cost: number, res: ServerResponse, proceed: Proceed): Promise<Denial | undefined> {
    const userId = tenant.userId;
    if (this.seen.size > 0) this.sweep(SWEEP_PER_REQUEST);
    const controller = new AbortController();
    // A response closed before it finished: the client went away.
    const hangUp = (): void => {
      if (!res.writableFinished) controller.abort();
    };
    if (res.destroyed) hangUp();
    else res.once('close', hangUp);
    let started = false;
    // Never throws: a failure here must not be retried or dead-lettered as a task failure.
    const task = async (ctx: { signal: AbortSignal }): Promise<void> => {
      started = true;
      const signal = ctx.signal;
      const snap = await this.snapshot(limiter, userId);
      const limits = snap === undefined ? undefined : this.limits(snap.sub, snap.peek.remaining, snap.peek.resetAfterMs);
      const headers = limits === undefined ? NO_HEADERS : limitHeaders(limits, this.legacy);
      const profile = snap?.sub?.profileName;
      this.count(profile ?? '', 'allowed');
      if (tenant.anonymous) this.touch(userId, profile);
      const failed = await this.proceed(proceed, headers, { userId, profile, cost, signal });
      if (failed !== undefined) writeDenial(res, failed);
      await ended(res);
    };
    try {
      try {
        await limiter.submit(task, { cost, signal: controller.signal });
      } catch (error) {
        if (started || !this.adopts(tenant, error)) throw error;
        // A failure to subscribe (a store outage) is refused below, like the submit's own.
        await this.manager.subscribe(userId, this.anonymousProfile as string);
        await limiter.submit(task, { cost, signal: controller.signal });
      }
      return undefined;
    } catch (error) {
      // Once started, the response is the handler's: an abort or a shutdown only ends the task.
      if (started) return undefined;
      return this.refuse(error, limiter, userId, cost, tenant);
    } finally {
      res.off('close', hangUp);
    }
  }

  /** Runs the admitted request's part; a throw becomes a 500 (or a cut connection if the answer had begun). */
  private async proceed(proceed: Proceed, headers: readonly Header[], admission: Admission): Promise<Denial | undefined> {
    try {
      await proceed(headers, admission);
      return undefined;
    } catch (error) {
      this.report(error);
      return internalError();
    }
  }

  /**
   * The answer to a refused admission, counted. A rate or quota refusal is answered from the
   * error's own figures (no store call), and keeps an anonymous tenant seen.
   */
  private async refuse(error: unknown, limiter: Limiter, userId: string, cost: number, tenant?: NonNullable<Tenant>): Promise<Denial> {
    const code = codeOf(error);
    const retryAfterMs = error instanceof TaskvalveError ? error.retryAfterMs : undefined;
    const refusal = error instanceof TaskvalveError ? error.refusal : undefined;
    if (tenant?.anonymous === true && refusal !== undefined) this.touch(userId, refusal.profile);
    switch (code) {
      case ErrorCode.RATE_LIMITED:
        return this.refused(this.rateLimited(this.limitsOfRefusal(refusal), retryAfterMs ?? 0, cost), refusal?.profile);
      case ErrorCode.QUOTA_EXCEEDED:
        return this.refused(this.quotaExceeded(this.limitsOfRefusal(refusal), retryAfterMs, cost), refusal?.profile);
      case ErrorCode.INVALID_ARGUMENT: {
        // The only invalid argument a validated cost can meet: more than the bucket ever holds.
        const snap = await this.snapshot(limiter, userId);
        const format = snap?.sub === undefined ? undefined : this.format(snap.sub.profileName);
        return this.refused(tooCostly(cost, format?.rateName, format?.burst), snap?.sub?.profileName);
      }
      case ErrorCode.STORE_UNAVAILABLE:
        return this.refused(storeUnavailable(retrySeconds(retryAfterMs, 1000)), '');
      case ErrorCode.SHUTTING_DOWN:
        return this.refused(shuttingDown(), '');
      case ErrorCode.QUEUE_FULL:
        return this.refused(queueFull(1), '');
      case ErrorCode.ABORTED:
        return this.refused(GONE, '');
      default:
        if (code !== undefined && isSubscriptionCode(code)) {
          const known = await this.manager.getSubscription(userId).catch(() => undefined);
          const when = code === ErrorCode.SUBSCRIPTION_EXPIRED ? known?.endsAt : code === ErrorCode.SUBSCRIPTION_NOT_STARTED ? known?.startsAt : undefined;
          const headers: Header[] = code === ErrorCode.SUBSCRIPTION_NOT_STARTED && retryAfterMs !== undefined ? [['Retry-After', String(retrySeconds(retryAfterMs, 0))]] : [];
          return this.refused(subscriptionProblem(code, when, headers), known?.profileName);
        }
        this.report(error);
        return this.refused(internalError(), '');
    }
  }

  /** 429 for the rate policy. Its t is Retry-After: the draft wants no Retry-After earlier than the window's end. */
  private rateLimited(limits: Limits | undefined, retryAfterMs: number, cost: number): Denial {
    const wait = retrySeconds(retryAfterMs, 1000);
    const headers: Header[] = [['Retry-After', String(wait)]];
    if (limits?.rate === undefined) return rateLimitExceeded(undefined, `This request costs ${cost} units; retry in ${wait} s.`, headers);
    const shown: Limits = { ...limits, rate: { remaining: limits.rate.remaining, seconds: wait } };
    const detail = `Policy "${limits.format.rateName}" admits ${shownRemaining(limits.rate.remaining)} units now; this request costs ${cost}. Retry in ${wait} s.`;
    return rateLimitExceeded(limits.format.rateName, detail, [...limitHeaders(shown, this.legacy), ...headers]);
  }

  /** 429 for the quota policy; Retry-After when the quota renews (a lifetime quota never does). */
  private quotaExceeded(limits: Limits | undefined, retryAfterMs: number | undefined, cost: number): Denial {
    const renews = retryAfterMs !== undefined && retryAfterMs > 0;
    const wait = renews ? retrySeconds(retryAfterMs, 0) : undefined;
    const headers: Header[] = wait === undefined ? [] : [['Retry-After', String(wait)]];
    if (limits?.quota === undefined) {
      return quotaExceeded(undefined, `This request costs ${cost} units, more than the quota has left.`, headers);
    }
    const quota = { ...limits.quota, seconds: wait ?? limits.quota.seconds };
    const name = limits.format.quotaName;
    const detail = `Quota "${name}" has ${quota.remaining} units left; this request costs ${cost}. ${wait === undefined ? 'It does not renew.' : `It renews in ${wait} s.`}`;
    return quotaExceeded(name, detail, [...limitHeaders({ ...limits, quota }, this.legacy), ...headers]);
  }

  /** The user's limits now, for headers; undefined if they cannot be read (headers are a courtesy). */
  private async snapshot(limiter: Limiter, userId: string): Promise<Snapshot | undefined> {
    try {
      const [peek, sub] = await Promise.all([limiter.peek(), this.manager.getSubscription(userId)]);
      return { peek, sub };
    } catch (error) {
      this.report(error);
      return undefined;
    }
  }

  /** The headers' figures from a refusal's own (undefined without them). */
  private limitsOfRefusal(refusal: Refusal | undefined): Limits | undefined {
    return refusal === undefined ? undefined : this.limitsOf(refusal.profile, refusal.rate, refusal);
  }

  /**
   * The headers' figures from one decision (admit mode, or a refusal's): the bucket's, when the
   * decision read it, and the quota's.
   */
  private limitsOf(
    profile: string,
    rate: { remaining: number; resetAfterMs: number } | undefined,
    q: { usage: number; quotaLimit: number | null; quotaResetAfterMs: number | null },
  ): Limits | undefined {
    const format = this.format(profile);
    if (format === undefined) return undefined;
    const quota =
      q.quotaLimit === null
        ? undefined
        : {
            limit: q.quotaLimit,
            remaining: Math.max(0, q.quotaLimit - q.usage),
            seconds: q.quotaResetAfterMs === null || format.quotaPeriodMs === null ? undefined : seconds(q.quotaResetAfterMs),
          };
    return { format, rate: rate === undefined ? undefined : { remaining: rate.remaining, seconds: seconds(rate.resetAfterMs) }, quota };
  }

  private limits(sub: Subscription | undefined, remaining: number, resetAfterMs: number): Limits | undefined {
    if (sub === undefined) return undefined;
    const format = this.format(sub.profileName);
    if (format === undefined) return undefined;
    let quota: Limits['quota'];
    if (sub.quotaLimit !== null) {
      const start = sub.periodStartedAt?.getTime();
      const left = format.quotaPeriodMs === null || start === undefined ? undefined : start + format.quotaPeriodMs - this.clock();
      quota = { limit: sub.quotaLimit, remaining: Math.max(0, sub.quotaLimit - sub.usage), seconds: left === undefined ? undefined : seconds(left) };
    }
    return { format, rate: { remaining, seconds: seconds(resetAfterMs) }, quota };
  }

  private format(profileName: string): PolicyFormat | undefined {
    let format = this.formats.get(profileName);
    if (format === undefined) {
      const profile = this.manager.getProfile(profileName);
      if (profile === undefined) return undefined;
      format = policyFormat(profile);
      this.formats.set(profileName, format);
    }
    return format;
  }
}

/** A user's rate and subscription, read together. */
interface Snapshot {
  peek: PeekResult;
  sub: Subscription | undefined;
}
