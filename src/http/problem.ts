/**
 * The HTTP edge's refusals: a status, headers, and an application/problem+json body (RFC 9457)
 * written here from known facts. A TaskvalveError's message, stack or cause never reaches a
 * body: a client learns what it can act on, nothing of the server's insides.
 */
import type { Header } from './headers.js';

/** A refused request: what the adapter writes instead of running the handler. */
export interface Denial {
  /** The HTTP status. */
  readonly status: number;
  /** Why, as the `outcome` label of `http_requests_total` says it: `rate_limited`, `unknown_tenant`, ... */
  readonly reason: string;
  /** Every header of the answer, Content-Type included. */
  readonly headers: readonly Header[];
  /** The problem+json text; undefined when nobody is left to read it (the client went away). */
  readonly body: string | undefined;
}

/** The IANA problem type of draft-ietf-httpapi-ratelimit-headers for a quota policy exceeded. */
export const QUOTA_EXCEEDED_TYPE = 'https://iana.org/assignments/http-problem-types#quota-exceeded';
/** Prefix of taskvalve's own problem types: `urn:taskvalve:problem:subscription-expired`, ... */
export const PROBLEM_TYPE_PREFIX = 'urn:taskvalve:problem:';

const CONTENT_TYPE: Header = ['Content-Type', 'application/problem+json'];

function problem(status: number, reason: string, type: string, title: string, detail: string, headers: readonly Header[] = [], extra?: Record<string, unknown>): Denial {
  const body = JSON.stringify({ type, title, status, detail, ...extra });
  return { status, reason, headers: [...headers, CONTENT_TYPE], body };
}

function own(slug: string): string {
  return PROBLEM_TYPE_PREFIX + slug;
}

/** 401: no tenant could be found for the request. `header`: the API key header, for the challenge RFC 9110 asks of a 401. */
export function unknownTenant(header: string | undefined): Denial {
  const challenge: Header[] = header === undefined ? [] : [['WWW-Authenticate', `ApiKey header="${header}"`]];
  const detail = header === undefined ? 'The request does not identify a known client.' : `The ${header} header is missing or not a known key.`;
  return problem(401, 'unknown_tenant', own('unknown-tenant'), 'Unknown tenant', detail, challenge);
}

/** 400: a path with dot segments, which routers would route as names (`/v1/images/..`). */
export function badPath(): Denial {
  return problem(400, 'bad_path', own('bad-path'), 'Bad path', 'The request path has a dot segment ("." or ".."), plain or percent-encoded.');
}

/**
 * 429 for the rate policy: the draft's registered problem type, titled apart from a quota's.
 * `violated`: the policy's name as the headers spell it (undefined: it could not be read).
 */
export function rateLimitExceeded(violated: string | undefined, detail: string, headers: readonly Header[]): Denial {
  return problem(429, 'rate_limited', QUOTA_EXCEEDED_TYPE, 'Rate limit exceeded', detail, headers, { 'violated-policies': violated === undefined ? [] : [violated] });
}

/** 429 for the quota policy (same type, its own title); `violated` as for {@link rateLimitExceeded}. */
export function quotaExceeded(violated: string | undefined, detail: string, headers: readonly Header[]): Denial {
  return problem(429, 'quota_exceeded', QUOTA_EXCEEDED_TYPE, 'Quota exceeded', detail, headers, { 'violated-policies': violated === undefined ? [] : [violated] });
}

/** The subscription problems, by the code that tells them apart. */
const SUBSCRIPTION = {
  SUBSCRIPTION_NOT_FOUND: ['subscription-not-found', 'No subscription', 'This client has no subscription.'],
  SUBSCRIPTION_INACTIVE: ['subscription-inactive', 'Subscription inactive', 'The subscription was canceled.'],
  SUBSCRIPTION_EXPIRED: ['subscription-expired', 'Subscription expired', 'The subscription has ended.'],
  SUBSCRIPTION_NOT_STARTED: ['subscription-not-started', 'Subscription not started', 'The subscription has not started yet.'],
} as const;

/** The error codes that are subscription problems (403). */
export type SubscriptionCode = keyof typeof SUBSCRIPTION;

/** True for a code with a 403 subscription answer. */
export function isSubscriptionCode(code: string): code is SubscriptionCode {
  return Object.hasOwn(SUBSCRIPTION, code);
}

/** 403: the subscription does not allow the request now; the type and detail say which problem. */
export function subscriptionProblem(code: SubscriptionCode, when: Date | null | undefined, headers: readonly Header[]): Denial {
  const [slug, title, detail] = SUBSCRIPTION[code];
  let said: string = detail;
  if (when != null && code === 'SUBSCRIPTION_EXPIRED') said = `The subscription ended at ${when.toISOString()}.`;
  if (when != null && code === 'SUBSCRIPTION_NOT_STARTED') said = `The subscription starts at ${when.toISOString()}.`;
  return problem(403, slug.replaceAll('-', '_'), own(slug), title, said, headers);
}

/** 403: the request costs more units than the policy's bucket can ever hold. */
export function tooCostly(cost: number, policy: string | undefined, burst: number | undefined): Denial {
  const detail = policy === undefined || burst === undefined
    ? `This request costs ${cost} units, more than the policy admits at once.`
    : `This request costs ${cost} units; policy "${policy}" admits at most ${burst} at once.`;
  return problem(403, 'cost_exceeds_capacity', own('cost-exceeds-capacity'), 'Request too costly', detail);
}

/** 503: the store that decides admission cannot be reached (the manager fails closed). */
export function storeUnavailable(retrySeconds: number): Denial {
  return problem(503, 'store_unavailable', own('store-unavailable'), 'Service unavailable', 'Admission cannot be decided right now; retry later.', [['Retry-After', String(retrySeconds)]]);
}

/** 503: the server is shutting down and admits nothing new. */
export function shuttingDown(): Denial {
  return problem(503, 'shutting_down', own('shutting-down'), 'Service unavailable', 'The server is shutting down; retry later.');
}

/** 503: the profile's queue of admitted work is full. */
export function queueFull(retrySeconds: number): Denial {
  return problem(503, 'queue_full', own('queue-full'), 'Service unavailable', 'The server is at capacity; retry later.', [['Retry-After', String(retrySeconds)]]);
}

/** 500: anything else. The fault goes to the edge's onError, never into the body. */
export function internalError(): Denial {
  return problem(500, 'internal_error', own('internal-error'), 'Internal server error', 'The request could not be processed.');
}

/** The client went away: nothing to write. */
export const GONE: Denial = { status: 499, reason: 'client_gone', headers: [], body: undefined };
