/**
 * MemoryStore: the embedded store, one process. Every decision is synchronous and therefore
 * atomic. One user's subscription, usage and bucket state sit in one record that one Map
 * lookup finds.
 */
import { invalidArgument, invalidConfig, profileNotFound } from '../errors.js';
import type { Profile } from '../profile.js';
import { MAX_TICKS, conform, convertTat, remaining, ticksToMs, waitFor, type Rate } from '../rate/gcra.js';
import { RefundLog, giveBack, voidLog } from '../rate/refund-log.js';
import {
  AdmitMode,
  Verdict,
  blankResult,
  type AdmitResult,
  type DlqQuery,
  type EndedUser,
  type SweepResult,
  type FailedTask,
  type RateReceipt,
  type Store,
  type StoreListener,
  type SubscribeInput,
  type Subscription,
  type UserSlot,
} from './store.js';
import { rejectUnknownOptions } from '../util/options.js';
import { small } from '../util/small.js';
import { DeadLetters } from './dead-letters.js';
import { EndedIndex } from './ended-index.js';

const ACTIVE = 0;
const CANCELED = 1;
const EXPIRED = 2;
/** A deleted record: a handle still holding it looks the user up again. */
const DELETED = 3;
const STATUS = ['active', 'canceled', 'expired'] as const;
/**
 * A record's state packs three small numbers into 31 bits, which V8 keeps in the field itself
 * as a small integer (31 bits, signed: bit 30 is repeated as the sign). Once any record's
 * state is a heap number, every record of the shape holds its state in a heap number of its
 * own: 16 bytes more per user and a check about 18% slower. Bits 0-9 are its profile's number
 * in the store's table, bits 10-11 the status, bits 12-30 the usage generation (the refund
 * token, bumped at every usage reset; it wraps after 2^19 resets, and a token only has to
 * differ from recent ones). It is only ever computed with integer and bitwise operations,
 * never from a division or a constant that is a heap number.
 */
const MAX_PROFILES = 1024;
const PROFILE_BITS = MAX_PROFILES - 1;
const STATUS_SHIFT = 10;
const GENERATION_SHIFT = 12;
const GENERATION = 1 << GENERATION_SHIFT;
/** Usage generations before the token wraps (2^19). */
const GENERATIONS = 1 << 19;

/** The low 31 bits of `x`, as a small integer (bit 30 repeated as the sign). */
function fold(x: number): number {
  return (x << 1) >> 1;
}

/**
 * One user: subscription, usage and dedicated bucket. Kept small, since every subscribed user
 * has one: status, generation and profile share one integer, the quota override and the
 * cancel time wait in `more` until set, and times are ms since the store's origin, so that
 * the times of a process's first weeks are small integers, kept in the field itself rather
 * than in a 16-byte heap number (docs/store.md).
 */
class UserRecord {
  constructor(
    /** Profile, status and usage generation (see MAX_PROFILES). */
    public state: number,
    public usage: number,
    /** Dedicated bucket TAT in the profile's ticks; 0 means full. */
    public tat: number,
    /** Since the origin. */
    public startsAt: number,
    /** Start of the current quota period, since the origin. */
    public periodStart: number,
    /** Since the origin; null: no end. */
    public endsAt: number | null,
    /** The quota override and the cancel time: null while neither is set. */
    public more: More | null,
  ) {}
}

/** What most subscriptions never set. */
class More {
  /** Per-user override of the quota, or null. */
  quota: number | null = null;
  /** When the subscription was canceled, since the origin; NaN while it is not. */
  canceledAt = Number.NaN;
}

function statusOf(rec: UserRecord): number {
  return (rec.state >> STATUS_SHIFT) & 3;
}

function setStatus(rec: UserRecord, status: number): void {
  rec.state = (rec.state & ~(3 << STATUS_SHIFT)) | (status << STATUS_SHIFT);
}

/** The refund token of the record's current usage. */
function generationOf(rec: UserRecord): number {
  return (rec.state >>> GENERATION_SHIFT) & (GENERATIONS - 1);
}

/** Starts a new usage generation: refunds of charges made before it change nothing. */
function bumpGeneration(rec: UserRecord): void {
  rec.state = fold(rec.state + GENERATION);
}

/** The record's `more`, created when one of its fields is first set. */
function more(rec: UserRecord): More {
  if (rec.more === null) rec.more = new More();
  return rec.more;
}

/** Drops `more` once its fields are back to their defaults. */
function tidy(rec: UserRecord): void {
  const m = rec.more;
  if (m !== null && m.quota === null && Number.isNaN(m.canceledAt)) rec.more = null;
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
  private listener: StoreListener = { expired() {} };
  /** Tick epoch in µs; ticks are counted from here so that they stay exact. */
  private epochUs = -1;
  private lastUs = 0;
  /** Largest ticks-per-µs of any known rate: decides when to re-base. */
  private maxD = 1;
  /** Re-bases so far: a receipt from an earlier time base is not honoured (never over-refunds). */
  private rebases = 0;
  /** Records created so far (wrapping): a new record's first usage generation. */
  private births = 0;
  /** Rate refunds so far, across buckets: a receipt holds the count at its charge (see refund-log.ts). */
  private refunds = 0;
  /** What each bucket (a user's record, or a shared bucket) remembers of its refunds, once it has had one. */
  private readonly logs = new WeakMap<UserRecord | Bucket, RefundLog>();
  private readonly result: AdmitResult = blankResult();

  private readonly letters: DeadLetters;

  /** @param options Bounds of the store itself; unknown or invalid options are INVALID_CONFIG. */
  constructor(options: MemoryStoreOptions = {}) {
    if (options === null || typeof options !== 'object') throw invalidConfig('MemoryStore', 'options', options, 'an object');
    rejectUnknownOptions('MemoryStore', options, ['maxDeadLetters']);
    const max = options.maxDeadLetters ?? 100_000;
    if (!Number.isSafeInteger(max) || max <= 0) throw invalidConfig('MemoryStore', 'maxDeadLetters', max, 'a positive integer');
    this.letters = new DeadLetters(max);
  }

  attach(listener: StoreListener): void {
    this.listener = listener;
  }

  /** Profiles by their number in records' state, and numbers by profile. */
  private readonly table: Profile[] = [];
  private readonly numbers = new Map<Profile, number>();

  private profileOf(rec: UserRecord): Profile {
    return this.table[rec.state & PROFILE_BITS] as Profile;
  }

  private numberOf(profile: Profile): number {
    const n = this.numbers.get(profile);
    if (n === undefined) throw profileNotFound(profile.name);
    return n;
  }

  defineProfile(profile: Profile): void {
    if (!this.numbers.has(profile)) {
      if (this.table.length >= MAX_PROFILES) throw invalidConfig('MemoryStore', 'profiles', this.table.length + 1, `at most ${MAX_PROFILES} profile definitions per store`);
      this.numbers.set(profile, this.table.length);
      this.table.push(profile);
    }
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
    // Stryker disable next-line UpdateOperator: receipts compare epochs only for equality (the refund order's tie-break between epochs only moves refunds that give nothing back)
    this.rebases++;
    for (const rec of this.users.values()) {
      if (rec.tat > 0) rec.tat = Math.max(0, rec.tat - shiftUs * this.profileOf(rec).rate.d);
    }
    for (const b of this.buckets.values()) {
      if (b.tat > 0) b.tat = Math.max(0, b.tat - shiftUs * b.rate.d);
    }
  }

  /** Ends of subscriptions (since the origin), for sweepEnded. */
  private readonly ended = new EndedIndex();

  /** The store's origin: records keep times as ms since it (set by the first subscription). */
  private origin = Number.NaN;

  /** `ms` as a record keeps it. */
  private since(ms: number): number {
    return small(ms - this.origin);
  }

  /** Starts a new usage period if the current one is over (`t` since the origin). */
  private roll(rec: UserRecord, t: number): void {
    const period = this.profileOf(rec).quotaPeriodMs;
    if (period > 0 && t >= rec.periodStart + period) {
      rec.periodStart = small(rec.periodStart + Math.floor((t - rec.periodStart) / period) * period);
      rec.usage = 0;
      bumpGeneration(rec);
    }
  }

  private snapshot(userId: string, rec: UserRecord, nowMs: number): Subscription {
    const profile = this.profileOf(rec);
    const t = this.since(nowMs);
    this.roll(rec, t);
    this.expire(userId, rec, t);
    const quota = rec.more?.quota ?? null;
    const sub: Subscription = {
      userId,
      profileName: profile.name,
      // Stryker disable next-line StringLiteral: a record in the map is never DELETED, the one status without a name
      status: STATUS[statusOf(rec)] ?? 'active',
      startsAt: new Date(rec.startsAt + this.origin),
      endsAt: rec.endsAt === null ? null : new Date(rec.endsAt + this.origin),
      usage: rec.usage,
      quota,
      quotaLimit: quota ?? profile.quotaLimit,
    };
    if (profile.quotaPeriodMs > 0) sub.periodStartedAt = new Date(rec.periodStart + this.origin);
    return sub;
  }

  /** Marks an active subscription past its end as expired, once. */
  private expire(userId: string, rec: UserRecord, t: number): void {
    if (statusOf(rec) === ACTIVE && rec.endsAt !== null && t >= rec.endsAt) {
      setStatus(rec, EXPIRED);
      this.listener.expired(userId, this.profileOf(rec).name);
    }
  }

  subscribe(userId: string, profile: Profile, input: SubscribeInput, nowMs: number): Subscription {
    const startsAt = input.startsAt ?? nowMs;
    const endsAt = input.endsAt ?? (input.durationMs === undefined ? Infinity : startsAt + input.durationMs);
    if (endsAt <= startsAt) {
      throw invalidArgument(`endsAt (${new Date(endsAt).toISOString()}) must be after startsAt (${new Date(startsAt).toISOString()})`);
    }
    this.defineProfile(profile);
    if (Number.isNaN(this.origin)) this.origin = Math.floor(nowMs);
    const start = this.since(startsAt);
    const end = endsAt === Infinity ? null : this.since(endsAt);
    let rec = this.users.get(userId);
    if (rec === undefined) {
      // Each new record starts a usage generation of its own: a refund of a charge made before
      // the user was deleted and subscribed again never lands on the new subscription's usage.
      this.births = (this.births + 1) & (GENERATIONS - 1);
      rec = new UserRecord(fold(this.numberOf(profile) + (ACTIVE << STATUS_SHIFT) + this.births * GENERATION), 0, 0, start, start, end, null);
      this.users.set(userId, rec);
    } else {
      this.switchProfile(rec, profile, nowMs);
      setStatus(rec, ACTIVE);
      rec.startsAt = start;
      rec.endsAt = end;
      if (rec.more !== null) rec.more.canceledAt = Number.NaN;
      if (input.resetUsage) this.reset(rec, nowMs);
    }
    if ((input.quota ?? null) !== null || rec.more !== null) more(rec).quota = input.quota ?? null;
    tidy(rec);
    if (end !== null) this.ended.add(end, userId);
    return this.snapshot(userId, rec, nowMs);
  }

  getSubscription(userId: string, nowMs: number): Subscription | undefined {
    const rec = this.users.get(userId);
    return rec && this.snapshot(userId, rec, nowMs);
  }

  extendSubscription(userId: string, ms: number, nowMs: number): Subscription | undefined {
    const rec = this.users.get(userId);
    if (rec === undefined) return undefined;
    if (statusOf(rec) !== CANCELED && rec.endsAt !== null) {
      const t = this.since(nowMs);
      rec.endsAt = small((rec.endsAt > t ? rec.endsAt : t) + ms);
      this.ended.add(rec.endsAt, userId);
      setStatus(rec, ACTIVE);
    }
    return this.snapshot(userId, rec, nowMs);
  }

  cancelSubscription(userId: string, nowMs: number): Subscription | undefined {
    const rec = this.users.get(userId);
    if (rec === undefined) return undefined;
    if (statusOf(rec) !== CANCELED) {
      const t = this.since(nowMs);
      more(rec).canceledAt = t;
      this.ended.add(t, userId);
    }
    setStatus(rec, CANCELED);
    return this.snapshot(userId, rec, nowMs);
  }

  deleteSubscription(userId: string, _nowMs: number): string | undefined {
    const rec = this.users.get(userId);
    if (rec === undefined) {
      this.letters.forget(userId);
      return undefined;
    }
    return this.remove(userId, rec);
  }

  /**
   * Deletes a record and the user's dead letters; its index entries go stale and are dropped
   * when reached. Returns its profile's name.
   */
  private remove(userId: string, rec: UserRecord): string {
    this.users.delete(userId);
    this.letters.forget(userId);
    setStatus(rec, DELETED);
    return this.profileOf(rec).name;
  }

  /**
   * Takes index entries in order of end while they are due, each checked against its user's
   * record (a later change may have moved the end, or removed it): at most `max` entries.
   */
  sweepEnded(nowMs: number, retentionMs: number, max: number): SweepResult {
    const deleted: EndedUser[] = [];
    const cutoff = this.since(nowMs) - retentionMs;
    const index = this.ended;
    for (let taken = 0; taken < max && index.peek() <= cutoff; taken++) {
      const userId = index.take();
      const rec = this.users.get(userId);
      if (rec !== undefined && this.endedAt(rec) <= cutoff) deleted.push({ userId, profileName: this.remove(userId, rec) });
    }
    return { deleted, more: index.peek() <= cutoff };
  }

  /** When the subscription ended, since the origin (a cancel ends it then); Infinity while it runs on. */
  private endedAt(rec: UserRecord): number {
    // Stryker disable next-line OptionalChaining: a canceled record always has its More (cancel sets canceledAt, and tidy() keeps it while set)
    if (statusOf(rec) === CANCELED) return rec.more?.canceledAt ?? Number.NaN;
    return rec.endsAt ?? Infinity;
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
    const from = this.profileOf(rec);
    if (from === profile) return;
    const us = this.micros(nowMs);
    if (from.shared === undefined && profile.shared === undefined && rec.tat > 0) {
      rec.tat = convertTat(rec.tat, us, from.rate, profile.rate);
    } else {
      rec.tat = 0;
    }
    // Its ticks mean something else now: receipts from before give nothing back.
    const log = this.logs.get(rec);
    if (log !== undefined) voidLog(log, us * profile.rate.d, ++this.refunds);
    rec.state = (rec.state & ~PROFILE_BITS) | this.numberOf(profile);
  }

  private reset(rec: UserRecord, nowMs: number): void {
    rec.usage = 0;
    bumpGeneration(rec);
    // Stryker disable next-line ConditionalExpression,EqualityOperator: roll() checks the period itself, and every reset is followed by a snapshot, which rolls
    if (this.profileOf(rec).quotaPeriodMs > 0) this.roll(rec, this.since(nowMs));
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
    if (quota !== null || rec.more !== null) more(rec).quota = quota;
    tidy(rec);
    return this.snapshot(userId, rec, nowMs);
  }

  /** A refusal for the subscription's dates: they go with it, for the message. */
  private dated(out: AdmitResult, rec: UserRecord, verdict: Verdict): AdmitResult {
    out.verdict = verdict;
    out.startsAt = rec.startsAt + this.origin;
    out.endsAt = rec.endsAt === null ? Infinity : rec.endsAt + this.origin;
    return out;
  }

  admit(userId: string, cost: number, mode: AdmitMode, waiting: ReadonlyMap<string, number>, nowMs: number, slot?: UserSlot): AdmitResult {
    const out = this.result;
    // Records are never replaced, so a handle may keep its user's record and skip the lookup
    // (until the record is deleted).
    let rec = slot?.ref as UserRecord | undefined;
    if (rec === undefined || statusOf(rec) === DELETED) {
      rec = this.users.get(userId);
      // Stryker disable next-line ConditionalExpression,EqualityOperator: the Manager always passes a slot, and slot.ref only saves a lookup that finds the same record
      if (slot !== undefined) slot.ref = rec;
    }
    if (rec === undefined) {
      out.verdict = Verdict.NOT_FOUND;
      out.profile = undefined;
      return out;
    }
    const profile = this.profileOf(rec);
    const rate = profile.rate;
    out.profile = profile;
    out.limit = rate.burst;
    if (cost > rate.burst) return this.dated(out, rec, Verdict.COST_OVER_BURST);
    const status = statusOf(rec);
    if (status !== ACTIVE) return this.dated(out, rec, status === CANCELED ? Verdict.CANCELED : Verdict.EXPIRED);
    const t = this.since(nowMs);
    if (rec.endsAt !== null && t >= rec.endsAt) {
      this.expire(userId, rec, t);
      return this.dated(out, rec, Verdict.EXPIRED);
    }
    if (t < rec.startsAt) {
      // Stryker disable next-line ArithmeticOperator: a NOT_STARTED refusal takes its wait from startsAt; this field is not read for that verdict
      out.retryAfterMs = rec.startsAt - t;
      return this.dated(out, rec, Verdict.NOT_STARTED);
    }
    const period = profile.quotaPeriodMs;
    if (period > 0) this.roll(rec, t);
    const quotaLimit = rec.more?.quota ?? profile.quotaLimit;
    out.quotaLimit = quotaLimit;
    out.quotaResetAfterMs = period > 0 ? rec.periodStart + period - t : -1;
    if (quotaLimit !== null && rec.usage + cost > quotaLimit && profile.quotaHard) {
      out.verdict = Verdict.QUOTA_EXCEEDED;
      out.usage = rec.usage;
      out.retryAfterMs = period > 0 ? rec.periodStart + period - t : 0;
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
    // Allowed when its units and those waiting tasks reserved conform together: it takes nothing
    // they need (their turn takes them), so it overtakes nobody.
    if (ahead === 0 || conform(tat, now, ahead + cost, rate) > 0) {
      const next = conform(tat, now, cost, rate);
      if (next > 0) {
        if (shared === undefined) rec.tat = next;
        else shared.tat = next;
        rec.usage += cost;
        const held = ahead === 0 ? next : next + ahead * rate.T;
        out.verdict = Verdict.ALLOWED;
        out.usage = rec.usage;
        out.period = generationOf(rec);
        out.remaining = remaining(held, now, rate);
        out.retryAfterMs = 0;
        out.resetAfterMs = ticksToMs(held - now, rate);
        out.receiptTat = next;
        out.receiptEpoch = this.epochOf(rec, profile);
        out.receiptRefunds = this.refunds;
        return out;
      }
    }
    const waitMs = ticksToMs(waitFor(tat, now, ahead + cost, rate), rate);
    // Units reserved by waiting tasks are as good as taken (as peek counts them).
    const reserved = ahead > 0 ? Math.max(tat, now) + ahead * rate.T : tat;
    out.remaining = Math.max(0, remaining(reserved, now, rate));
    out.resetAfterMs = ticksToMs(reserved - now, rate);
    out.retryAfterMs = waitMs;
    out.usage = rec.usage;
    if (mode === AdmitMode.NOW || profile.onLimit === 'reject' || waitMs > profile.maxWaitMs) {
      out.verdict = Verdict.RATE_LIMITED;
      return out;
    }
    rec.usage += cost;
    out.verdict = Verdict.QUEUED;
    out.usage = rec.usage;
    out.period = generationOf(rec);
    out.bucket = key || (shared === undefined ? `d:${userId}` : `s:${profile.shared}`);
    return out;
  }

  take(userId: string, cost: number, nowMs: number, slot?: UserSlot, receipt?: { value: RateReceipt | undefined }): number {
    let rec = slot?.ref as UserRecord | undefined;
    if (rec === undefined || statusOf(rec) === DELETED) rec = this.users.get(userId);
    if (rec === undefined) return 0;
    const profile = this.profileOf(rec);
    const rate = profile.rate;
    if (cost > rate.burst) return Infinity;
    const shared = profile.shared === undefined ? undefined : this.buckets.get(profile.shared);
    const now = this.micros(nowMs) * rate.d;
    const next = conform(shared === undefined ? rec.tat : shared.tat, now, cost, rate);
    if (next < 0) return ticksToMs(-next, rate);
    if (shared === undefined) rec.tat = next;
    else shared.tat = next;
    if (receipt !== undefined) receipt.value = { tat: next, epoch: this.epochOf(rec, profile), refunds: this.refunds };
    return 0;
  }

  /**
   * A receipt's time base: the re-bases so far and, for a user's own bucket, the profile whose
   * ticks it counts in (a receipt of another time base or rate gives nothing back).
   */
  private epochOf(rec: UserRecord, profile: Profile): number {
    // The record's state holds its profile's number: no lookup on an admission's path.
    return this.rebases * MAX_PROFILES + (profile.shared === undefined ? rec.state & PROFILE_BITS : 0);
  }

  /**
   * Gives back what an attempt's units still hold of the bucket, in whatever order attempts are
   * given back: the part of their slot still ahead of now, where the refunds since have moved it
   * (see refund-log.ts). The bucket is never emptier than if they had never been taken.
   */
  refundRate(userId: string, cost: number, receipt: RateReceipt, nowMs: number): void {
    const rec = this.users.get(userId);
    if (rec === undefined) return;
    const profile = this.profileOf(rec);
    const rate = profile.rate;
    const now = this.micros(nowMs) * rate.d; // first: it may re-base every TAT
    if (receipt.epoch !== this.epochOf(rec, profile)) return;
    const shared = profile.shared === undefined ? undefined : this.buckets.get(profile.shared);
    const bucket = shared ?? rec;
    let log = this.logs.get(bucket);
    if (log === undefined) {
      log = new RefundLog();
      this.logs.set(bucket, log);
    }
    const tat = giveBack(log, bucket.tat, now, receipt.tat, receipt.refunds, cost, rate, this.refunds + 1);
    if (tat === bucket.tat) return;
    this.refunds++;
    bucket.tat = tat;
  }

  refund(userId: string, cost: number, period: number, nowMs: number): void {
    const rec = this.users.get(userId);
    if (rec === undefined) return;
    this.roll(rec, this.since(nowMs));
    if (generationOf(rec) === period) rec.usage = Math.max(0, rec.usage - cost);
  }

  peek(userId: string, nowMs: number, waiting?: ReadonlyMap<string, number>): AdmitResult {
    const out = this.result;
    const rec = this.users.get(userId);
    if (rec === undefined) {
      out.verdict = Verdict.NOT_FOUND;
      out.profile = undefined;
      out.status = 'not_found';
      return out;
    }
    const t = this.since(nowMs);
    this.roll(rec, t);
    this.expire(userId, rec, t);
    const profile = this.profileOf(rec);
    out.profile = profile;
    const rate = profile.rate;
    const now = this.micros(nowMs) * rate.d; // first: it may re-base every TAT
    const shared = profile.shared === undefined ? undefined : this.buckets.get(profile.shared);
    const ahead = waiting === undefined || waiting.size === 0 ? 0 : (waiting.get(shared === undefined ? `d:${userId}` : `s:${profile.shared}`) ?? 0);
    // Units reserved by waiting tasks are as good as taken: count them into the TAT.
    const own = shared === undefined ? rec.tat : shared.tat;
    const tat = ahead > 0 ? Math.max(own, now) + ahead * rate.T : own;
    const wait = waitFor(tat, now, 1, rate);
    out.verdict = wait === 0 ? Verdict.ALLOWED : Verdict.RATE_LIMITED;
    out.limit = rate.burst;
    out.remaining = Math.max(0, remaining(tat, now, rate));
    out.retryAfterMs = ticksToMs(wait, rate);
    out.resetAfterMs = ticksToMs(tat - now, rate);
    out.usage = rec.usage;
    out.quotaLimit = rec.more?.quota ?? profile.quotaLimit;
    // Stryker disable next-line StringLiteral: a record in the map is never DELETED, the one status without a name
    out.status = STATUS[statusOf(rec)] ?? 'active';
    return out;
  }

  dlqAdd(entry: FailedTask, bounds: { maxEntries: number; retentionMs: number }, nowMs: number): void {
    this.letters.add(entry, bounds, nowMs);
  }

  dlqList(query: DlqQuery, nowMs: number): FailedTask[] {
    return this.letters.list(query, nowMs);
  }

  dlqGet(id: string, nowMs: number): FailedTask | undefined {
    return this.letters.get(id, nowMs);
  }

  dlqRemove(id: string): boolean {
    return this.letters.remove(id);
  }
}
