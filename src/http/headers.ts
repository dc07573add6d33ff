/**
 * RateLimit-Policy and RateLimit as structured-field lists (draft-ietf-httpapi-ratelimit-headers-11),
 * the legacy X-RateLimit-* trio, and Retry-After. Pure formatting: no I/O, no clock.
 */
import type { ProfileView } from '../manager.js';

/** A response header: name and value. */
export type Header = readonly [name: string, value: string];

/** A profile's policies, formatted once (profiles never change once registered). */
export interface PolicyFormat {
  /** The rate policy's name (the profile's), as a denial cites it in `violated-policies`. */
  readonly rateName: string;
  /** The quota policy's name: `<profile>-quota`. */
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
  /** Units the bucket admits now, and seconds until its window ends (t). */
  readonly rate: { readonly remaining: number; readonly seconds: number };
  /** The quota in force for this user, if any; seconds undefined for a lifetime quota. */
  readonly quota: { readonly limit: number; readonly remaining: number; readonly seconds: number | undefined } | undefined;
}

/** Whole seconds, rounded up: a client that waits them is never early. */
export function seconds(ms: number): number {
  return ms <= 0 ? 0 : Math.ceil(ms / 1000);
}

/**
 * An sf-string (RFC 9651 §3.3.3): printable ASCII with `"` and `\` escaped. Other characters
 * cannot appear in one; they are percent-encoded so that any profile name gives a valid field.
 */
export function sfString(value: string): string {
  let out = '"';
  for (const char of value) {
    const code = char.codePointAt(0) as number;
    if (code === 0x22 || code === 0x5c) out += `\\${char}`;
    else if (code >= 0x20 && code <= 0x7e && char !== '%') out += char;
    else out += encodeURIComponent(char);
  }
  return `${out}"`;
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
    rateName: profile.name,
    quotaName,
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
  let policy = format.ratePolicy;
  let state = `${format.rateItem};r=${rate.remaining};t=${rate.seconds}`;
  if (quota !== undefined) {
    policy += `, ${format.quotaItem};q=${quota.limit}${format.quotaWindow}`;
    state += `, ${format.quotaItem};r=${quota.remaining}${quota.seconds === undefined ? '' : `;t=${quota.seconds}`}`;
  }
  const headers: Header[] = [
    ['RateLimit-Policy', policy],
    ['RateLimit', state],
  ];
  if (legacy) {
    // One policy fits the legacy trio: the one closest to exhaustion.
    const byQuota = quota !== undefined && quota.remaining < rate.remaining;
    headers.push(
      ['X-RateLimit-Limit', String(byQuota ? quota.limit : format.burst)],
      ['X-RateLimit-Remaining', String(byQuota ? quota.remaining : rate.remaining)],
    );
    // A lifetime quota never resets: no Reset rather than a false one.
    const reset = byQuota ? quota.seconds : rate.seconds;
    if (reset !== undefined) headers.push(['X-RateLimit-Reset', String(reset)]);
  }
  return headers;
}
