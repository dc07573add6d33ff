/**
 * RateLimit-Policy and RateLimit as structured-field lists (draft-ietf-httpapi-ratelimit-headers-11),
 * the legacy X-RateLimit-* trio, and Retry-After. Pure formatting: no I/O, no clock.
 */
import type { ProfileView } from '../manager.js';

/** A response header: name and value. */
export type Header = readonly [name: string, value: string];

/** A profile's policies, formatted once (profiles never change once registered). */
export interface PolicyFormat {
  /** The rate policy's name (the profile's) as a parser of the headers reads it: a denial cites it so in `violated-policies`. */
  readonly rateName: string;
  /** The quota policy's name, `<profile>-quota`, likewise. */
  readonly quotaName: string;
  /** The rate policy's name as an sf-string: `"free"`. */
  readonly rateItem: string;
  /** The rate policy's RateLimit-Policy member: `"free";q=<burst>;w=<s>`. */
  readonly ratePolicy: string;
  /** The quota policy's name as an sf-string: `"free-quota"`. */
  readonly quotaItem: string;
  /** `;w=<period s>`, or '' for a lifetime quota. */
  readonly quotaWindow: string;
  /** Bucket capacity: the rate policy's q. */
  readonly burst: number;
  /** The quota's period, or null for a lifetime quota (or none). */
  readonly quotaPeriodMs: number | null;
}

/** What a response tells of the client's limits now. */
export interface Limits {
  readonly format: PolicyFormat;
  /**
   * Units the bucket admits now (shown as 0 when below: after a downgrade the bucket may hold
   * more than the new burst), and seconds until its window ends (t). Undefined when the decision
   * did not read the bucket (a quota refusal): RateLimit then names the quota policy only.
   */
  readonly rate: { readonly remaining: number; readonly seconds: number } | undefined;
  /** The quota in force for this user, if any; seconds undefined for a lifetime quota. */
  readonly quota: { readonly limit: number; readonly remaining: number; readonly seconds: number | undefined } | undefined;
}

/** Draft 11's r, a non-negative integer: a bucket holding more than a new, smaller burst (after a downgrade) admits 0. */
export function shownRemaining(units: number): number {
  return Math.max(0, units);
}

/** Whole seconds, rounded up: a client that waits them is never early. */
export function seconds(ms: number): number {
  return ms <= 0 ? 0 : Math.ceil(ms / 1000);
}

/**
 * A name as an sf-string can carry it (RFC 9651 §3.3.3: printable ASCII only): other
 * characters, and `%`, are percent-encoded. This is the name a parser of the header reads back.
 */
export function headerName(value: string): string {
  let out = '';
  for (const char of value) {
    const code = char.codePointAt(0) as number;
    out += code >= 0x20 && code <= 0x7e && char !== '%' ? char : encodeURIComponent(char);
  }
  return out;
}

/** An sf-string of any name: {@link headerName}, quoted, with `"` and `\` escaped. */
export function sfString(value: string): string {
  return `"${headerName(value).replace(/["\\]/g, '\\$&')}"`;
}

/**
 * The policies of a profile. The rate policy's q is the bucket's capacity (burst) and w the
 * seconds in which the bucket refills it (`burst × intervalMs / limit`, the interval itself when
 * burst = limit), rounded up: an advertised rate is never faster than the real one.
 */
export function policyFormat(profile: ProfileView): PolicyFormat {
  const { limit, intervalMs, burst } = profile.rate;
  const window = Math.max(1, Math.ceil((burst * intervalMs) / limit / 1000));
  const rateItem = sfString(profile.name);
  const quotaName = `${profile.name}-quota`;
  const periodMs = profile.quota?.periodMs ?? null;
  return {
    rateName: headerName(profile.name),
    quotaName: headerName(quotaName),
    rateItem,
    ratePolicy: `${rateItem};q=${burst};w=${window}`,
    quotaItem: sfString(quotaName),
    quotaWindow: periodMs === null ? '' : `;w=${Math.max(1, seconds(periodMs))}`,
    burst,
    quotaPeriodMs: periodMs,
  };
}

/** RateLimit-Policy and RateLimit (and the legacy trio when asked). */
export function limitHeaders(limits: Limits, legacy: boolean): Header[] {
  const { format, rate, quota } = limits;
  // Draft 11: r is a non-negative integer.
  const remaining = rate === undefined ? 0 : shownRemaining(rate.remaining);
  let policy = format.ratePolicy;
  let state = rate === undefined ? '' : `${format.rateItem};r=${remaining};t=${rate.seconds}`;
  if (quota !== undefined) {
    policy += `, ${format.quotaItem};q=${quota.limit}${format.quotaWindow}`;
    state += `${state === '' ? '' : ', '}${format.quotaItem};r=${quota.remaining}${quota.seconds === undefined ? '' : `;t=${quota.seconds}`}`;
  }
  const headers: Header[] = [['RateLimit-Policy', policy]];
  if (state !== '') headers.push(['RateLimit', state]);
  if (legacy && (rate !== undefined || quota !== undefined)) {
    // One policy fits the legacy trio: the one closest to exhaustion.
    const byQuota = quota !== undefined && (rate === undefined || quota.remaining < remaining);
    headers.push(
      ['X-RateLimit-Limit', String(byQuota ? quota.limit : format.burst)],
      ['X-RateLimit-Remaining', String(byQuota ? quota.remaining : remaining)],
    );
    // A lifetime quota never resets: no Reset rather than a false one.
    const reset = byQuota ? quota.seconds : rate?.seconds;
    if (reset !== undefined) headers.push(['X-RateLimit-Reset', String(reset)]);
  }
  return headers;
}
