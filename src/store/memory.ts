/**
 * MemoryStore: the embedded store, one process. Every decision is synchronous and therefore
 * atomic. One user's subscription, usage and bucket state sit in one record that one Map
 * lookup finds.
 */
import { invalidArgument, invalidConfig, profileNotFound } from '../errors.js';
import type { Profile } from '../profile.js';
import { MAX_TICKS, conform, convertTat, remaining, ticksToMs, waitFor, type Rate } from '../rate/gcra.js';
import {
  AdmitMode,
  Verdict,
  blankResult,
  type AdmitResult,
  type DlqQuery,
  type FailedTask,
  type Store,
  type StoreListener,
  type SubscribeInput,
  type Subscription,
  type UserSlot,
} from './store.js';
import { rejectUnknownOptions } from '../util/options.js';

const ACTIVE = 0;
const CANCELED = 1;
const EXPIRED = 2;
/** A deleted record: a handle still holding it looks the user up again. */
const DELETED = 3;
const STATUS = ['active', 'canceled', 'expired'] as const;

/** One user: subscription, usage and dedicated bucket. */
class UserRecord {
  constructor(
    public profile: Profile,
    public status: number,
    public startsAt: number,
    /** Infinity: no end. */
    public endsAt: number,
    public usage: number,
    /** Per-user override, or null. */
    public quota: number | null,
    /** Start of the current quota period (ms). */
    public periodStart: number,
    /** Bumped at every usage reset: the refund token. */
    public gen: number,
    /** Dedicated bucket TAT in the profile's ticks; 0 means full. */
    public tat: number,
  ) {}
}

/** A shared bucket. */
class Bucket {
  constructor(
    public readonly rate: Rate,
    public tat: number,
  ) {}
}

/** Options of {@link MemoryStore}. */
export interface MemoryStoreOptions {
  /** Dead letters kept at most across all profiles; default 100,000. */
  maxDeadLetters?: number;
}

/** The default store: state in this process's memory. */
export class MemoryStore implements Store {
  private readonly users = new Map<string, UserRecord>();
  private readonly buckets = new Map<string, Bucket>();
  private readonly profiles = new Map<string, Profile>();
  private readonly dead = new Map<string, FailedTask>();
  private listener: StoreListener = { expired() {} };
  /** Tick epoch in µs; ticks are counted from here so that they stay exact. */
  private epochUs = -1;
  private lastUs = 0;
  /** Largest ticks-per-µs of any known rate: decides when to re-base. */
  private maxD = 1;
  private readonly result: AdmitResult = blankResult();

  private readonly maxDeadLetters: number;

  /** @param options Bounds of the store itself; unknown or invalid options are INVALID_CONFIG. */
  constructor(options: MemoryStoreOptions = {}) {
    if (options === null || typeof options !== 'object') throw invalidConfig('MemoryStore', 'options', options, 'an object');
    rejectUnknownOptions('MemoryStore', options, ['maxDeadLetters']);
    const max = options.maxDeadLetters ?? 100_000;
    if (!Number.isSafeInteger(max) || max <= 0) throw invalidConfig('MemoryStore', 'maxDeadLetters', max, 'a positive integer');
    this.maxDeadLetters = max;
  }

  attach(listener: StoreListener): void {
    this.listener = listener;
  }

  defineProfile(profile: Profile): void {
    this.profiles.set(profile.name, profile);
    if (profile.rate.d > this.maxD) this.maxD = profile.rate.d;
    if (profile.shared !== undefined && !this.buckets.has(profile.shared)) {
      this.buckets.set(profile.shared, new Bucket(profile.rate, 0));
    }
  }

  /** Microseconds since the tick epoch, never going backwards, re-basing when ticks grow large. */
  private micros(nowMs: number): number {
    let us = Math.round(nowMs * 1000);
    if (this.epochUs < 0) this.epochUs = us;
    us -= this.epochUs;
    if (us < this.lastUs) us = this.lastUs;
    if (us * this.maxD > MAX_TICKS / 2) {
      this.rebase(us);
      us = 0;
    }
    this.lastUs = us;
    return us;
  }

  /** Moves the tick epoch to now: every TAT shifts down by the same amount of time (exact). */
  private rebase(shiftUs: number): void {
    this.epochUs += shiftUs;
    for (const rec of this.users.values()) {
      if (rec.tat > 0) rec.tat = Math.max(0, rec.tat - shiftUs * rec.profile.rate.d);
    }
    for (const b of this.buckets.values()) {
      if (b.tat > 0) b.tat = Math.max(0, b.tat - shiftUs * b.rate.d);
    }
  }

  /** Starts a new usage period if the current one is over. */
  private roll(rec: UserRecord, nowMs: number): void {
    const period = rec.profile.quotaPeriodMs;
    if (period > 0 && nowMs >= rec.periodStart + period) {
      rec.periodStart += Math.floor((nowMs - rec.periodStart) / period) * period;
      rec.usage = 0;
      rec.gen++;
    }
  }

  private quotaLimit(rec: UserRecord): number | null {
    return rec.quota ?? rec.profile.quotaLimit;
  }

  private snapshot(userId: string, rec: UserRecord, nowMs: number): Subscription {
    this.roll(rec, nowMs);
    this.expire(userId, rec, nowMs);
    const sub: Subscription = {
      userId,
      profileName: rec.profile.name,
      status: STATUS[rec.status] ?? 'active',
      startsAt: new Date(rec.startsAt),
      endsAt: rec.endsAt === Infinity ? null : new Date(rec.endsAt),
      usage: rec.usage,
      quota: rec.quota,
      quotaLimit: this.quotaLimit(rec),
    };
    if (rec.profile.quotaPeriodMs > 0) sub.periodStartedAt = new Date(rec.periodStart);
    return sub;
  }

  /** Marks an active subscription past its end as expired, once. */
  private expire(userId: string, rec: UserRecord, nowMs: number): void {
    if (rec.status === ACTIVE && nowMs >= rec.endsAt) {
      rec.status = EXPIRED;
      this.listener.expired(userId, rec.profile.name);
    }
  }

  subscribe(userId: string, profile: Profile, input: SubscribeInput, nowMs: number): Subscription {
    const startsAt = input.startsAt ?? nowMs;
    const endsAt = input.endsAt ?? (input.durationMs === undefined ? Infinity : startsAt + input.durationMs);
    if (endsAt <= startsAt) {
      throw invalidArgument(`endsAt (${new Date(endsAt).toISOString()}) must be after startsAt (${new Date(startsAt).toISOString()})`);
    }
    this.defineProfile(profile);
    const rec = this.users.get(userId);
    if (rec === undefined) {
      const created = new UserRecord(profile, ACTIVE, startsAt, endsAt, 0, input.quota ?? null, startsAt, 0, 0);
      this.users.set(userId, created);
      return this.snapshot(userId, created, nowMs);
    }
    this.switchProfile(rec, profile, nowMs);
    rec.status = ACTIVE;
    rec.startsAt = startsAt;
    rec.endsAt = endsAt;
    rec.quota = input.quota ?? null;
    if (input.resetUsage) this.reset(rec, nowMs);
    return this.snapshot(userId, rec, nowMs);
  }

  getSubscription(userId: string, nowMs: number): Subscription | undefined {
    const rec = this.users.get(userId);
    return rec && this.snapshot(userId, rec, nowMs);
  }

  extendSubscription(userId: string, ms: number, nowMs: number): Subscription | undefined {
    const rec = this.users.get(userId);
    if (rec === undefined) return undefined;
    if (rec.status !== CANCELED && rec.endsAt !== Infinity) {
      rec.endsAt = (rec.endsAt > nowMs ? rec.endsAt : nowMs) + ms;
      rec.status = ACTIVE;
    }
    return this.snapshot(userId, rec, nowMs);
  }

  cancelSubscription(userId: string, nowMs: number): Subscription | undefined {
    const rec = this.users.get(userId);
    if (rec === undefined) return undefined;
    rec.status = CANCELED;
    return this.snapshot(userId, rec, nowMs);
  }

  deleteSubscription(userId: string, _nowMs: number): string | undefined {
    const rec = this.users.get(userId);
    if (rec === undefined) return undefined;
    this.users.delete(userId);
    rec.status = DELETED;
    return rec.profile.name;
  }

  changeProfile(userId: string, profile: Profile, nowMs: number): Subscription | undefined {
    const rec = this.users.get(userId);
    if (rec === undefined) return undefined;
    this.switchProfile(rec, profile, nowMs);
    return this.snapshot(userId, rec, nowMs);
  }

  /** Carries a dedicated bucket over to the new profile's ticks (never gaining capacity). */
  private switchProfile(rec: UserRecord, profile: Profile, nowMs: number): void {
    if (!this.profiles.has(profile.name)) throw profileNotFound(profile.name);
    const from = rec.profile;
    if (from === profile) return;
    if (from.shared === undefined && profile.shared === undefined && rec.tat > 0) {
      rec.tat = convertTat(rec.tat, this.micros(nowMs), from.rate, profile.rate);
    } else {
      rec.tat = 0;
    }
    rec.profile = profile;
  }

  private reset(rec: UserRecord, nowMs: number): void {
    rec.usage = 0;
    rec.gen++;
    if (rec.profile.quotaPeriodMs > 0) this.roll(rec, nowMs);
  }

  resetUsage(userId: string, nowMs: number): Subscription | undefined {
    const rec = this.users.get(userId);
    if (rec === undefined) return undefined;
    this.reset(rec, nowMs);
    return this.snapshot(userId, rec, nowMs);
  }

  setQuota(userId: string, quota: number | null, nowMs: number): Subscription | undefined {
    const rec = this.users.get(userId);
    if (rec === undefined) return undefined;
    rec.quota = quota;
    return this.snapshot(userId, rec, nowMs);
  }

  admit(userId: string, cost: number, mode: AdmitMode, waiting: ReadonlyMap<string, number>, nowMs: number, slot?: UserSlot): AdmitResult {
    const out = this.result;
    // Records are never replaced, so a handle may keep its user's record and skip the lookup
    // (until the record is deleted).
    let rec = slot?.ref as UserRecord | undefined;
    if (rec === undefined || rec.status === DELETED) {
      rec = this.users.get(userId);
      if (slot !== undefined) slot.ref = rec;
    }
    if (rec === undefined) {
      out.verdict = Verdict.NOT_FOUND;
      out.profile = undefined;
      return out;
    }
    const profile = rec.profile;
    const rate = profile.rate;
    out.profile = profile;
    out.limit = rate.burst;
    out.startsAt = rec.startsAt;
    out.endsAt = rec.endsAt;
    if (cost > rate.burst) {
      out.verdict = Verdict.COST_OVER_BURST;
      return out;
    }
    if (rec.status !== ACTIVE) {
      out.verdict = rec.status === CANCELED ? Verdict.CANCELED : Verdict.EXPIRED;
      return out;
    }
    if (nowMs >= rec.endsAt) {
      this.expire(userId, rec, nowMs);
      out.verdict = Verdict.EXPIRED;
      return out;
    }
    if (nowMs < rec.startsAt) {
      out.verdict = Verdict.NOT_STARTED;
      out.retryAfterMs = rec.startsAt - nowMs;
      return out;
    }
    if (profile.quotaPeriodMs > 0) this.roll(rec, nowMs);
    const quotaLimit = rec.quota ?? profile.quotaLimit;
    out.quotaLimit = quotaLimit;
    out.quotaResetAfterMs = profile.quotaPeriodMs > 0 ? rec.periodStart + profile.quotaPeriodMs - nowMs : -1;
    if (quotaLimit !== null && rec.usage + cost > quotaLimit && profile.quotaHard) {
      out.verdict = Verdict.QUOTA_EXCEEDED;
      out.usage = rec.usage;
      out.retryAfterMs = profile.quotaPeriodMs > 0 ? rec.periodStart + profile.quotaPeriodMs - nowMs : 0;
      return out;
    }

    const now = this.micros(nowMs) * rate.d; // first: it may re-base every TAT
    const shared = profile.shared === undefined ? undefined : this.buckets.get(profile.shared);
    const tat = shared === undefined ? rec.tat : shared.tat;
    let ahead = 0;
    let key = '';
    if (waiting.size > 0) {
      key = shared === undefined ? `d:${userId}` : `s:${profile.shared}`;
      ahead = waiting.get(key) ?? 0;
    }
    if (ahead === 0) {
      const next = conform(tat, now, cost, rate);
      if (next > 0) {
        if (shared === undefined) rec.tat = next;
        else shared.tat = next;
        rec.usage += cost;
        out.verdict = Verdict.ALLOWED;
        out.usage = rec.usage;
        out.period = rec.gen;
        out.remaining = remaining(next, now, rate);
        out.retryAfterMs = 0;
        out.resetAfterMs = ticksToMs(next - now, rate);
        return out;
      }
    }
    const waitMs = ticksToMs(waitFor(tat, now, ahead + cost, rate), rate);
    out.remaining = ahead > 0 ? 0 : remaining(tat, now, rate);
    out.resetAfterMs = ticksToMs(tat - now, rate);
    out.retryAfterMs = waitMs;
    out.usage = rec.usage;
    if (mode === AdmitMode.NOW || profile.onLimit === 'reject' || waitMs > profile.maxWaitMs) {
      out.verdict = Verdict.RATE_LIMITED;
      return out;
    }
    rec.usage += cost;
    out.verdict = Verdict.QUEUED;
    out.usage = rec.usage;
    out.period = rec.gen;
    out.bucket = key || (shared === undefined ? `d:${userId}` : `s:${profile.shared}`);
    return out;
  }

  take(userId: string, cost: number, nowMs: number, slot?: UserSlot): number {
    let rec = slot?.ref as UserRecord | undefined;
    if (rec === undefined || rec.status === DELETED) rec = this.users.get(userId);
    if (rec === undefined) return 0;
    const rate = rec.profile.rate;
    const shared = rec.profile.shared === undefined ? undefined : this.buckets.get(rec.profile.shared);
    const now = this.micros(nowMs) * rate.d;
    const next = conform(shared === undefined ? rec.tat : shared.tat, now, cost, rate);
    if (next < 0) return ticksToMs(-next, rate);
    if (shared === undefined) rec.tat = next;
    else shared.tat = next;
    return 0;
  }

  refund(userId: string, cost: number, period: number, nowMs: number): void {
    const rec = this.users.get(userId);
    if (rec === undefined) return;
    this.roll(rec, nowMs);
    if (rec.gen === period) rec.usage = Math.max(0, rec.usage - cost);
  }

  peek(userId: string, nowMs: number): AdmitResult {
    const out = this.result;
    const rec = this.users.get(userId);
    out.profile = rec?.profile;
    if (rec === undefined) {
      out.verdict = Verdict.NOT_FOUND;
      out.status = 'not_found';
      return out;
    }
    this.roll(rec, nowMs);
    this.expire(userId, rec, nowMs);
    const rate = rec.profile.rate;
    const now = this.micros(nowMs) * rate.d; // first: it may re-base every TAT
    const shared = rec.profile.shared === undefined ? undefined : this.buckets.get(rec.profile.shared);
    const tat = shared === undefined ? rec.tat : shared.tat;
    const wait = waitFor(tat, now, 1, rate);
    out.verdict = wait === 0 ? Verdict.ALLOWED : Verdict.RATE_LIMITED;
    out.limit = rate.burst;
    out.remaining = remaining(tat, now, rate);
    out.retryAfterMs = ticksToMs(wait, rate);
    out.resetAfterMs = ticksToMs(tat - now, rate);
    out.usage = rec.usage;
    out.quotaLimit = this.quotaLimit(rec);
    out.status = STATUS[rec.status] ?? 'active';
    return out;
  }

  dlqAdd(entry: FailedTask, bounds: { maxEntries: number; retentionMs: number }, nowMs: number): void {
    this.dead.set(entry.id, entry);
    this.prune(nowMs);
    let ofProfile = 0;
    for (const e of this.dead.values()) if (e.profileName === entry.profileName) ofProfile++;
    for (const [id, e] of this.dead) {
      if (ofProfile <= bounds.maxEntries) break;
      if (e.profileName === entry.profileName) {
        this.dead.delete(id);
        ofProfile--;
      }
    }
    const cap = this.maxDeadLetters;
    for (const id of this.dead.keys()) {
      if (this.dead.size <= cap) break;
      this.dead.delete(id);
    }
  }

  /** Drops entries past their profile's retention. */
  private prune(nowMs: number): void {
    for (const [id, e] of this.dead) {
      const retention = this.profiles.get(e.profileName)?.dlq.retentionMs ?? Infinity;
      if (e.lastFailedAt.getTime() + retention <= nowMs) this.dead.delete(id);
    }
  }

  dlqList(query: DlqQuery, nowMs: number): FailedTask[] {
    this.prune(nowMs);
    const out: FailedTask[] = [];
    const limit = query.limit ?? Infinity;
    for (const e of this.dead.values()) {
      if (out.length >= limit) break;
      if (query.userId !== undefined && e.userId !== query.userId) continue;
      if (query.profileName !== undefined && e.profileName !== query.profileName) continue;
      out.push(e);
    }
    return out;
  }

  dlqGet(id: string): FailedTask | undefined {
    return this.dead.get(id);
  }

  dlqRemove(id: string): boolean {
    return this.dead.delete(id);
  }
}
