/**
 * RedisStore: the same Store as MemoryStore, kept in Redis (standalone, client-side shards, or
 * Redis Cluster) so that every process pointed at it sees one world. Every decision is one
 * Lua script call deciding on Redis TIME; see docs/redis.md for the protocol across slots.
 */
import { randomUUID } from 'node:crypto';
import { ErrorCode, TaskvalveError, invalidArgument, invalidConfig } from '../../errors.js';
import type { Profile } from '../../profile.js';
import { conform, makeRate, remaining as gcraRemaining, ticksToMs, type Rate } from '../../rate/gcra.js';
import {
  AdmitMode,
  Verdict,
  blankResult,
  type AdmitResult,
  type DlqQuery,
  type EndedUser,
  type SweepResult,
  type FailedTask,
  type Store,
  type StoreListener,
  type SubscribeInput,
  type Subscription,
  type UnavailablePolicy,
  type RateReceipt,
  type UserSlot,
} from '../store.js';
import { rejectUnknownOptions } from '../../util/options.js';
import { Keys, endedTags, rendezvous, slotOf, tagOf, unescapeId } from './keys.js';
import { scripts, type Script, type ScriptClient } from './scripts.js';
import { UNKNOWN_RECORD, recordError, unknownRecord } from './record.js';

/** A client taskvalve can use: an ioredis `Redis` or `Cluster` (what the store calls of it). */
export type RedisClientLike = ScriptClient;

/** Options of {@link RedisStore}. */
export interface RedisStoreOptions {
  /** An ioredis `Redis`, an ioredis `Cluster`, or an array of `Redis` (client-side shards, in a stable order; append to grow). */
  client: RedisClientLike | RedisClientLike[];
  /** Prefix of every key; default 'taskvalve'. No braces. */
  prefix?: string;
  /** Every Redis call fails with STORE_UNAVAILABLE past this; default 1,000 ms. */
  timeoutMs?: number;
}

const STATUS = ['active', 'canceled', 'expired'] as const;
const PROFILE_MISMATCH = 9;
const PAST_DEADLINE = 10;
const RESERVED = 11;
/** A process not heard from for this long no longer counts for the 'local' policy's share. */
const PRESENCE_TTL_MS = 15_000;
/** Inline dead letters whose function this process keeps for replay. */
const MAX_INLINE = 10_000;

/** What a limiter handle keeps for this store: its keys and the profile last seen. */
interface Ref {
  store: RedisStore;
  user: string;
  profile: Profile | undefined;
  /** From the latest answer: usage, and whether the subscription was usable (for outages). */
  usage: number;
  usable: boolean;
  /** This store's count of deletions when the handle last caught up with them (see forget). */
  seen: number;
}

type Reply = (string | number | null)[];

function storeUnavailable(cause: unknown): TaskvalveError {
  const message = cause instanceof Error ? cause.message : String(cause);
  return new TaskvalveError(ErrorCode.STORE_UNAVAILABLE, `Redis is unavailable: ${message}`, { cause });
}

/** The state of taskvalve in Redis. taskvalve never closes the client it is given. */
export class RedisStore implements Store {
  private readonly keys: Keys;
  private readonly clients: RedisClientLike[];
  private readonly clustered: boolean;
  private readonly timeoutMs: number;
  private readonly profiles = new Map<string, Profile>();
  private listener: StoreListener = { expired() {} };
  private policy: UnavailablePolicy = 'fail-closed';
  /** This process, among the live ones (for the 'local' policy's share). */
  private readonly id = randomUUID();
  private processes = 1;
  private presence: NodeJS.Timeout | undefined = undefined;
  /** 'local' policy: buckets of this process's share, and usage admitted while Redis was away. */
  private readonly insurance = new Map<string, { rate: Rate; tat: number }>();
  private readonly owed = new Map<string, number>();
  /** Tests only: a fixed time (ms) for every script instead of Redis TIME. */
  private testClock: (() => number) | undefined = undefined;
  constructor(options: RedisStoreOptions) {
    if (options === null || typeof options !== 'object') throw invalidConfig('RedisStore', 'options', options, 'an object');
    rejectUnknownOptions('RedisStore', options, ['client', 'prefix', 'timeoutMs']);
    const prefix = options.prefix ?? 'taskvalve';
    if (typeof prefix !== 'string' || prefix.length === 0 || /[{}]/.test(prefix)) {
      throw invalidConfig('RedisStore', 'prefix', prefix, 'a non-empty string without braces');
    }
    const timeoutMs = options.timeoutMs ?? 1000;
    if (!Number.isSafeInteger(timeoutMs) || timeoutMs <= 0) throw invalidConfig('RedisStore', 'timeoutMs', timeoutMs, 'a positive integer');
    const clients = Array.isArray(options.client) ? options.client : [options.client];
    if (clients.length === 0 || clients.some((c) => c === null || typeof c !== 'object' || typeof c.evalsha !== 'function')) {
      throw invalidConfig('RedisStore', 'client', options.client, 'an ioredis Redis, an ioredis Cluster, or an array of ioredis Redis');
    }
    this.keys = new Keys(prefix);
    this.clients = clients;
    this.clustered = !Array.isArray(options.client) && (options.client as { isCluster?: boolean }).isCluster === true;
    this.timeoutMs = timeoutMs;
  }

  /**
   * @internal Tests only: every script decides at `clock()` (ms) instead of Redis TIME, so that
   * time-dependent cases can move time; undefined returns to Redis TIME.
   */
  setTestClock(clock: (() => number) | undefined): void {
    this.testClock = clock;
  }

  /** The time argument of every script: Redis TIME, or a test's fixed time. */
  private clockArg(): string {
    return this.testClock === undefined ? '+0' : `=${Math.round(this.testClock() * 1000)}`;
  }

  attach(listener: StoreListener): void {
    this.listener = listener;
    this.policy = listener.onUnavailable ?? 'fail-closed';
  }

  /**
   * Makes a profile known, and records its configuration (and its shared bucket's) in Redis:
   * processes sharing one Redis with different configurations are warned about, both named.
   */
  async defineProfile(profile: Profile): Promise<void> {
    this.profiles.set(profile.name, profile);
    const rate = { limit: profile.rate.limit, intervalMs: profile.rate.intervalMs, burst: profile.rate.burst };
    const mine = JSON.stringify({ rate: { ...rate, shared: profile.shared ?? null, onLimit: profile.onLimit }, quota: profile.quotaLimit, periodMs: profile.quotaPeriodMs, hard: profile.quotaHard });
    const records: [string, string][] = [[`profile:${profile.name}`, mine]];
    if (profile.shared !== undefined) records.push([`bucket:${profile.shared}`, JSON.stringify(rate)]);
    for (const [name, config] of records) {
      const before = (await this.run(scripts.profile, [this.keys.profiles()], [name, config])) as unknown as string | null;
      if (before !== null && before !== config) {
        const what = name.replace(':', ' ');
        const message = `configuration drift on ${what}: this process has ${config}, another process sharing this Redis registered ${before}`;
        this.listener.warn?.(message, new TaskvalveError(ErrorCode.INVALID_CONFIG, message));
      }
    }
    this.startPresence();
  }

  /** Counts this process among the live ones now, and tells how many there are. */
  async refreshPresence(): Promise<number> {
    this.processes = Math.max(1, Number(await this.run(scripts.presence, [this.keys.processes()], [this.id, PRESENCE_TTL_MS, '+0'])));
    return this.processes;
  }

  /** Keeps this process counted among the live ones, every few seconds, in the background. */
  private startPresence(): void {
    if (this.presence !== undefined) return;
    const beat = (): void => {
      this.refreshPresence().catch(() => {});
    };
    beat();
    this.presence = setInterval(beat, PRESENCE_TTL_MS / 3);
    this.presence.unref();
  }

  /** Stops the background presence (the client stays open: it is the caller's). */
  async close(): Promise<void> {
    if (this.presence !== undefined) clearInterval(this.presence);
    this.presence = undefined;
    await this.reconcile();
  }

  /** The client that owns a key's slot. */
  private node(key: string): RedisClientLike {
    if (this.clients.length === 1) return this.clients[0] as RedisClientLike;
    return this.clients[rendezvous(tagOf(key), this.clients.length)] as RedisClientLike;
  }

  /** Whether two keys can be touched by one script call. */
  private together(a: string, b: string): boolean {
    if (this.clustered) return tagOf(a) === tagOf(b);
    return this.clients.length === 1 || this.node(a) === this.node(b);
  }

  /** Runs a script with a deadline: past `timeoutMs` it is reported failed, and Redis refuses it. */
  private run(script: Script, keys: string[], args: (string | number | Buffer)[], binary = false): Promise<Reply> {
    return new Promise<Reply>((resolve, reject) => {
      const call: Call = { at: performance.now() + this.timeoutMs, done: false, fail: reject };
      this.track(call);
      script.run(this.node(keys[0] as string), keys, args, binary).then(
        (reply) => {
          call.done = true;
          resolve(reply as Reply);
        },
        (error: unknown) => {
          call.done = true;
          reject(error instanceof TaskvalveError ? error : (recordError(error) ?? storeUnavailable(error)));
        },
      );
    });
  }

  /**
   * Calls in flight, in the order they were sent: all have the same timeout, so their deadlines
   * come in that order too, and one timer serves them all (a timer per call costs more than the
   * rest of the client's work on a call).
   */
  private readonly calls: Call[] = [];
  private callsHead = 0;
  private sweeper: NodeJS.Timeout | undefined = undefined;

  private track(call: Call): void {
    const calls = this.calls;
    while (this.callsHead < calls.length && (calls[this.callsHead] as Call).done) this.callsHead++;
    if (this.callsHead === calls.length) {
      calls.length = 0;
      this.callsHead = 0;
    } else if (this.callsHead >= 1024 && this.callsHead * 2 >= calls.length) {
      calls.splice(0, this.callsHead);
      this.callsHead = 0;
    }
    calls.push(call);
    if (this.sweeper === undefined) this.armSweeper();
  }

  /** Arms the timer for the oldest call still waiting, if any. */
  private armSweeper(): void {
    const calls = this.calls;
    while (this.callsHead < calls.length && (calls[this.callsHead] as Call).done) this.callsHead++;
    const first = calls[this.callsHead];
    if (first === undefined) return;
    this.sweeper = setTimeout(() => this.sweep(), Math.max(0, Math.ceil(first.at - performance.now())));
    // A call waiting on Redis keeps the process alive through its socket, not through this timer.
    this.sweeper.unref();
  }

  /** Fails every call past its timeout, then waits for the next one's. */
  private sweep(): void {
    this.sweeper = undefined;
    const now = performance.now();
    const calls = this.calls;
    while (this.callsHead < calls.length) {
      const call = calls[this.callsHead] as Call;
      if (!call.done) {
        if (call.at > now) break;
        call.done = true;
        call.fail(storeUnavailable(new Error(`no answer within ${this.timeoutMs} ms`)));
      }
      this.callsHead++;
    }
    this.armSweeper();
  }

  /**
   * The server-time deadline of a call sent now: a script run later than this writes nothing.
   * Zero (no deadline) until the first reply has told us the server's clock.
   */
  private deadline(): number {
    return this.clockKnown && this.testClock === undefined ? Math.round((performance.timeOrigin + performance.now()) * 1000) + this.skewUs + this.timeoutMs * 1000 : 0;
  }

  private clockKnown = false;
  /** Server time minus local time (µs), from the latest reply that carried it. */
  private skewUs = 0;

  private learnClock(serverMs: number): void {
    if (this.testClock !== undefined) return;
    this.skewUs = serverMs * 1000 - Math.round((performance.timeOrigin + performance.now()) * 1000);
    this.clockKnown = true;
  }

  private ref(userId: string, slot: UserSlot | undefined): Ref {
    const held = slot?.ref as Ref | undefined;
    if (held !== undefined && held.store === this) {
      if (held.seen !== this.deletions) this.catchUp(held);
      return held;
    }
    const user = this.keys.user(userId);
    const ref: Ref = { store: this, user, profile: undefined, usage: 0, usable: false, seen: this.deletions };
    if (slot !== undefined) slot.ref = ref;
    return ref;
  }

  private subscription(userId: string, r: Reply): Subscription {
    const [p, s, sa, ea, n, q, ps, , expiredNow, nowMs] = r as [string, number, string, string, string, string, string, string, number, number];
    this.learnClock(Number(nowMs));
    const profile = this.profiles.get(p);
    if (expiredNow === 1) this.listener.expired(userId, p);
    let usage = Number(n);
    let periodStart = Number(ps);
    const period = profile?.quotaPeriodMs ?? 0;
    if (period > 0 && Number(nowMs) >= periodStart + period) {
      periodStart += Math.floor((Number(nowMs) - periodStart) / period) * period;
      usage = 0;
    }
    const quota = Number(q) >= 0 ? Number(q) : null;
    const sub: Subscription = {
      userId,
      profileName: p,
      status: STATUS[Number(s)] ?? 'active',
      startsAt: new Date(Number(sa)),
      endsAt: Number(ea) >= 0 ? new Date(Number(ea)) : null,
      usage,
      quota,
      quotaLimit: quota ?? profile?.quotaLimit ?? null,
    };
    if (period > 0) sub.periodStartedAt = new Date(periodStart);
    return sub;
  }

  async subscribe(userId: string, profile: Profile, input: SubscribeInput, _nowMs: number): Promise<Subscription> {
    this.profiles.set(profile.name, profile);
    this.denials.clear();
    const user = this.keys.user(userId);
    const r = await this.run(scripts.subscribe, [user, this.endedOf(user)], [
      profile.name,
      input.startsAt ?? '',
      input.endsAt === Infinity ? '' : (input.endsAt ?? ''),
      input.durationMs ?? '',
      input.quota ?? '',
      input.resetUsage ? 1 : 0,
      this.clockArg(),
      this.deadline(),
      userId,
    ]);
    late(r);
    if (r[0] === 'DATES') {
      throw invalidArgument(`endsAt (${new Date(Number(r[2])).toISOString()}) must be after startsAt (${new Date(Number(r[1])).toISOString()})`);
    }
    return this.subscription(userId, r);
  }

  async getSubscription(userId: string, _nowMs: number): Promise<Subscription | undefined> {
    const r = await this.run(scripts.read, [this.keys.user(userId)], [this.clockArg()]);
    return r === null ? undefined : this.subscription(userId, r);
  }

  private async mutate(userId: string, op: string, value: string | number): Promise<Subscription | undefined> {
    this.denials.clear(); // a change of profile, quota or status: refusals are decided anew
    const user = this.keys.user(userId);
    const r = await this.run(scripts.mutate, [user, this.endedOf(user)], [op, value, this.clockArg(), this.deadline(), userId]);
    late(r);
    return r === null ? undefined : this.subscription(userId, r);
  }

  extendSubscription(userId: string, ms: number): Promise<Subscription | undefined> {
    return this.mutate(userId, 'extend', ms);
  }

  cancelSubscription(userId: string): Promise<Subscription | undefined> {
    return this.mutate(userId, 'cancel', '');
  }

  changeProfile(userId: string, profile: Profile): Promise<Subscription | undefined> {
    this.profiles.set(profile.name, profile);
    return this.mutate(userId, 'change', profile.name);
  }

  resetUsage(userId: string): Promise<Subscription | undefined> {
    return this.mutate(userId, 'reset', '');
  }

  setQuota(userId: string, quota: number | null): Promise<Subscription | undefined> {
    return this.mutate(userId, 'quota', quota ?? '');
  }

  async deleteSubscription(userId: string): Promise<string | undefined> {
    const user = this.keys.user(userId);
    const r = (await this.run(scripts.delete, [user, this.endedOf(user)], [this.clockArg(), this.deadline(), userId])) as Reply | string | null;
    if (Array.isArray(r)) late(r);
    this.forget(userId, user);
    return typeof r === 'string' ? r : undefined;
  }

  /** Tags of the ends indexes, one per placement unit (computed on first use), and where the sweep goes on. */
  private endedTagList: string[] | undefined = undefined;
  private sweepCursor = 0;

  private endedTags(): string[] {
    if (this.endedTagList === undefined) {
      const n = this.clients.length;
      this.endedTagList = this.clustered ? endedTags(16384, slotOf) : endedTags(n, (tag) => (n === 1 ? 0 : rendezvous(tag, n)));
    }
    return this.endedTagList;
  }

  /** The ends index of a user's placement unit (its slot on a Cluster, its shard, or the server). */
  private endedOf(user: string): string {
    const tags = this.endedTags();
    const tag = tagOf(user);
    const unit = this.clustered ? slotOf(tag) : this.clients.length === 1 ? 0 : rendezvous(tag, this.clients.length);
    return this.keys.ended(tags[unit] as string);
  }

  /**
   * Visits the next SWEEP_UNITS ends indexes (all of them but on a Cluster, which has one per
   * slot): reads each one's due ids, then deletes those still ended, up to `max`. `more` until
   * the round has visited every index.
   */
  async sweepEnded(_nowMs: number, retentionMs: number, max: number): Promise<SweepResult> {
    const tags = this.endedTags();
    const from = this.sweepCursor;
    const count = Math.min(SWEEP_UNITS, tags.length - from);
    const indexes = tags.slice(from, from + count).map((tag) => this.keys.ended(tag));
    const due = await Promise.all(indexes.map((index) => this.run(scripts.sweep, [index], ['due', retentionMs, this.clockArg(), max]) as Promise<string[]>));
    const deleted: EndedUser[] = [];
    this.sweepCursor = (from + count) % tags.length;
    for (let i = 0; i < count; i++) {
      const ids = due[i] as string[];
      if (ids.length === 0) continue;
      const room = max - deleted.length;
      if (room < ids.length || ids.length === max) {
        // This index may hold more: the next call starts here.
        this.sweepCursor = from + i;
        if (room === 0) return { deleted, more: true };
      }
      const take = ids.slice(0, room);
      const users = take.map((id) => this.keys.user(id));
      const r = (await this.run(scripts.sweep, [indexes[i] as string, ...users], ['delete', retentionMs, this.clockArg(), ...take])) as string[];
      for (let k = 0; k < r.length; k += 2) {
        const userId = r[k] as string;
        deleted.push({ userId, profileName: r[k + 1] as string });
        this.forget(userId, this.keys.user(userId));
      }
      if (this.sweepCursor === from + i) return { deleted, more: true };
    }
    return { deleted, more: this.sweepCursor !== 0 };
  }

  /** Deletions this process made, and by user key the count when each was made (bounded). */
  private deletions = 0;
  private readonly deleted = new Map<string, number>();
  /** Handles that caught up before this count forget what they knew (the map was cleared). */
  private forgetBefore = 0;

  /** Drops what this process keeps for a deleted user: owed usage, refusals, handles' knowledge. */
  private forget(userId: string, user: string): void {
    this.deletions++;
    if (this.deleted.size >= MAX_DENIALS) {
      this.deleted.clear();
      this.forgetBefore = this.deletions;
    }
    this.deleted.set(user, this.deletions);
    this.denials.delete(user);
    this.insurance.delete(user);
    this.owed.delete(userId);
  }

  /** A handle whose user this process deleted since it last caught up forgets the profile and standing it saw. */
  private catchUp(ref: Ref): void {
    const at = this.deleted.get(ref.user);
    if (ref.seen < this.forgetBefore || (at !== undefined && at > ref.seen)) {
      ref.profile = undefined;
      ref.usage = 0;
      ref.usable = false;
    }
    ref.seen = this.deletions;
  }

  /** The profile a user's record names, read once per handle (then kept up to date by admit's replies). */
  private async profileOf(userId: string, ref: Ref): Promise<Profile | undefined | null> {
    const r = await this.run(scripts.read, [ref.user], [this.clockArg()]);
    if (r === null) return null;
    // Read through subscription(): the read may record that the subscription ended (the event fires once).
    return this.profiles.get(this.subscription(userId, r).profileName);
  }


  async admit(userId: string, cost: number, mode: AdmitMode, waiting: ReadonlyMap<string, number>, _nowMs: number, slot?: UserSlot): Promise<AdmitResult> {
    const ref = this.ref(userId, slot);
    const out = blankResult();
    // The profile this handle saw last; unknown at first: the script resolves it by name.
    let profile = ref.profile;
    const sentUs = this.localUs();
    if (profile !== undefined && cost <= profile.rate.burst && !(mode === AdmitMode.PROFILE && profile.onLimit === 'wait')) {
      const denial = this.cachedDenial(ref, profile, cost, sentUs);
      if (denial !== undefined) return this.deniedLocally(out, ref, profile, denial, sentUs);
    }
    for (let attempt = 0; attempt < 3; attempt++) {
      let answer: Answer;
      try {
        answer = await this.decide(userId, ref, profile, cost, mode, waiting);
      } catch (error) {
        if (profile === undefined) throw error;
        return this.withoutRedis(error, out, userId, ref, profile, cost);
      }
      if (this.owed.size > 0) void this.reconcile();
      const r = answer.reply;
      if (r[0] === Verdict.NOT_FOUND) {
        ref.usable = false;
        return this.notFound(out);
      }
      if (r[0] === UNKNOWN_RECORD) throw unknownRecord(ref.user, r[1] as number, r[2] as number);
      if (r[0] === PROFILE_MISMATCH) {
        profile = this.profiles.get(String(r[11]));
        if (profile === undefined) throw this.unknownProfile(userId);
        continue;
      }
      profile = answer.profile ?? this.profiles.get(String(r[11]));
      if (profile === undefined) throw this.unknownProfile(userId);
      ref.profile = profile;
      this.fill(out, userId, ref, profile, r);
      if (out.verdict === Verdict.RATE_LIMITED && out.retryAfterMs > 0) {
        this.rememberDenial(ref, profile, { untilUs: sentUs + out.retryAfterMs * 1000, fullUs: sentUs + out.resetAfterMs * 1000, cost, rate: profile.rate });
      }
      return out;
    }
    throw storeUnavailable(new Error(`the profile of user ${userId} keeps changing`));
  }

  /** Local time in µs: a test's clock when set (it is then what the scripts decide on), else a monotonic one. */
  private localUs(): number {
    return this.testClock === undefined ? performance.now() * 1000 : this.testClock() * 1000;
  }

  /**
   * A bucket that refused `cost` units until a time refuses at least as much until then: other
   * calls can only fill it further, and buckets are never given back. Measured from when the
   * refused call was sent (no later than the server decided), a cached refusal can only end
   * early, never late: it under-admits nothing the server would admit.
   */
  private cachedDenial(ref: Ref, profile: Profile, cost: number, nowUs: number): Denial | undefined {
    const key = this.bucketOf(ref, profile);
    const denial = this.denials.get(key);
    if (denial === undefined) return undefined;
    if (nowUs >= denial.untilUs || denial.rate !== profile.rate) {
      this.denials.delete(key);
      return undefined;
    }
    return cost >= denial.cost ? denial : undefined;
  }

  private rememberDenial(ref: Ref, profile: Profile, denial: Denial): void {
    // Bounded: starting afresh costs a round trip per bucket, nothing else.
    if (this.denials.size >= MAX_DENIALS) this.denials.clear();
    this.denials.set(this.bucketOf(ref, profile), denial);
  }

  /** A refusal answered from the cache of refusals: no round trip. */
  private deniedLocally(out: AdmitResult, ref: Ref, profile: Profile, denial: Denial, nowUs: number): AdmitResult {
    const rate = profile.rate;
    out.verdict = Verdict.RATE_LIMITED;
    out.profile = profile;
    out.limit = rate.burst;
    out.usage = ref.usage;
    out.quotaLimit = profile.quotaLimit;
    out.retryAfterMs = Math.ceil((denial.untilUs - nowUs) / 1000);
    out.resetAfterMs = Math.max(out.retryAfterMs, Math.ceil((denial.fullUs - nowUs) / 1000));
    // At most what refill alone gives back since the refusal (other callers may have taken more).
    out.remaining = Math.max(0, gcraRemaining(Math.round((denial.fullUs - nowUs) * rate.d), 0, rate));
    return out;
  }

  private notFound(out: AdmitResult): AdmitResult {
    out.verdict = Verdict.NOT_FOUND;
    out.profile = undefined;
    out.status = 'not_found';
    return out;
  }

  private unknownProfile(userId: string): TaskvalveError {
    return new TaskvalveError(ErrorCode.PROFILE_NOT_FOUND, `user ${JSON.stringify(userId)} is subscribed to a profile this process has not registered`);
  }

  /** The key holding a user's bucket: the user's record, or the shared bucket's key. */
  private bucketOf(ref: Ref, profile: Profile): string {
    return profile.shared === undefined ? ref.user : this.keys.shared(profile.shared);
  }

  /**
   * Queues one decision for the admission script of its node (its slot on a Cluster). Decisions
   * queued in one turn of the event loop go in one call, up to MAX_BATCH: the server runs the
   * script once, reads TIME once, each profile's parameters travel once, and the round trip is
   * shared. `profile` undefined: the script picks the user's profile by name.
   */
  private async batched(user: string, bucket: string, profile: Profile | undefined, cost: number, waiting: number, flags: number): Promise<Answer> {
    const key = this.clustered ? tagOf(user) : this.node(user);
    let group = this.groups.get(key);
    if (group === undefined) {
      group = { inFlight: 0, pending: undefined };
      this.groups.set(key, group);
    }
    let batch = group.pending;
    if (batch === undefined) {
      batch = newBatch();
      group.pending = batch;
    }
    let expected = 0;
    if (profile !== undefined) expected = this.profileIndex(batch, profile);
    else if (!batch.all) {
      batch.all = true;
      for (const p of this.profiles.values()) this.profileIndex(batch, p);
    }
    if (bucket === user) {
      batch.keys.push(user);
      batch.decisions.push(expected, flags, cost, waiting);
    } else {
      batch.keys.push(user, bucket);
      batch.decisions.push(expected, flags | OWN_KEY, cost, waiting);
    }
    const at = batch.size++;
    // Send at once while the node has room (no added latency when calls are few); otherwise the
    // decision waits in the batch for the next call to return.
    if (group.inFlight < MAX_IN_FLIGHT || batch.size >= MAX_BATCH) this.send(key, group);
    return (await batch.answers)[at] as Answer;
  }

  /** A profile's 1-based place in a batch's table, added on first use. */
  private profileIndex(batch: Batch, profile: Profile): number {
    let i = batch.index.get(profile);
    if (i === undefined) {
      batch.profiles.push(profile);
      i = batch.profiles.length;
      batch.index.set(profile, i);
    }
    return i;
  }

  /** Sends a group's pending batch; when a call returns, the next batch (if any) goes. */
  private send(key: unknown, group: Group): void {
    const batch = group.pending;
    if (batch === undefined) return;
    group.pending = undefined;
    group.inFlight++;
    const args: (string | number | Buffer)[] = [this.deadline(), this.clockArg(), batch.profiles.length];
    for (const p of batch.profiles) for (const field of profileFields(p)) args.push(field);
    const d = batch.decisions;
    if (batch.size === 1) {
      // One decision travels as text: a Buffer argument costs ioredis more than it saves here.
      args.push(d[0]! * 8 + d[1]!, d[2]!, d[3]!);
    } else {
      const records = Buffer.allocUnsafe(batch.size * 19);
      for (let i = 0, at = 0; i < d.length; i += 4, at += 19) {
        records.writeUInt16LE(d[i]!, at);
        records.writeUInt8(d[i + 1]!, at + 2);
        records.writeDoubleLE(d[i + 2]!, at + 3);
        records.writeDoubleLE(d[i + 3]!, at + 11);
      }
      args.push(records);
    }
    this.run(scripts.admit, batch.keys, args, true).then(
      (reply) => {
        this.sent(key, group);
        batch.settle.resolve(parseAnswers(reply as unknown as Buffer | number, batch));
      },
      (error: unknown) => {
        this.sent(key, group);
        batch.settle.reject(error);
      },
    );
  }

  /** A group's call returned: its next batch goes, if one gathered. */
  private sent(key: unknown, group: Group): void {
    group.inFlight--;
    if (group.pending !== undefined) this.send(key, group);
    else if (group.inFlight === 0) this.groups.delete(key);
  }

  /** One admission: one script call, or the reserve / take / refund protocol across slots. */
  private async decide(userId: string, ref: Ref, profile: Profile | undefined, cost: number, mode: AdmitMode, waiting: ReadonlyMap<string, number>): Promise<Answer> {
    const flags = mode === AdmitMode.PROFILE ? 1 : 0;
    if (profile === undefined) return this.batched(ref.user, ref.user, undefined, cost, 0, flags);
    const rate = profile.rate;
    const bucket = this.bucketOf(ref, profile);
    const ahead = waiting.size === 0 ? 0 : (waiting.get(profile.shared === undefined ? `d:${userId}` : `s:${profile.shared}`) ?? 0);
    if (this.together(ref.user, bucket)) return this.batched(ref.user, bucket, profile, cost, ahead, flags);
    // The bucket lives elsewhere: reserve the quota, then take from the bucket, and give the
    // reservation back if the bucket says no (docs/redis.md).
    const reserved = await this.batched(ref.user, ref.user, profile, cost, ahead, flags | 2);
    if (reserved.reply[0] !== RESERVED) return reserved;
    const [, usage, period, , , , , periodLeft, limit] = reserved.reply as [number, number, number, number, number, number, number, number, number];
    let taken: Reply;
    try {
      taken = await this.run(scripts.take, [bucket], ['s', rate.d, rate.T, rate.tau, cost, ahead, this.deadline(), this.clockArg(), 'take']);
    } catch (error) {
      await this.refundReserved(ref, cost, period);
      throw error;
    }
    const [ok, waitMs, remaining, resetMs, receiptMs, receiptTicks] = taken as [number, number, number, number, number, number];
    if (ok === 1) return { reply: [Verdict.ALLOWED, usage, period, remaining, 0, resetMs, 0, periodLeft, limit, receiptMs, receiptTicks], profile };
    const queue = flags === 1 && profile.onLimit === 'wait';
    if (ok === 0 && queue && (profile.maxWaitMs === Infinity || waitMs <= profile.maxWaitMs)) {
      return { reply: [Verdict.QUEUED, usage, period, remaining, waitMs, resetMs, 0, periodLeft, limit, -1, 0], profile };
    }
    await this.refundReserved(ref, cost, period);
    return { reply: [ok === -1 ? PAST_DEADLINE : Verdict.RATE_LIMITED, usage - cost, period, remaining, waitMs, resetMs, 0, periodLeft, limit, -1, 0], profile };
  }

  private async refundReserved(ref: Ref, cost: number, period: number): Promise<void> {
    await this.run(scripts.refund, [ref.user], [cost, period, ref.profile?.quotaPeriodMs ?? 0, this.clockArg()]);
  }

  /** Copies a script's reply into the result object. */
  private fill(out: AdmitResult, userId: string, ref: Ref, profile: Profile, reply: Reply): AdmitResult {
    // Every field of an admission's answer is a number (the name, at 11, is read elsewhere).
    const r = reply as number[];
    const verdict = r[0] as number;
    if (verdict === PAST_DEADLINE) throw pastDeadline();
    out.verdict = verdict as Verdict;
    out.profile = profile;
    out.limit = profile.rate.burst;
    out.usage = r[1] as number;
    if (verdict <= Verdict.RATE_LIMITED) {
      // Compact: { verdict, usage, period, remaining, retry, reset, profile index, period left,
      // quota limit, receipt ms, receipt ticks }.
      out.period = r[2] as number;
      out.receiptTat = verdict === Verdict.ALLOWED && r[9] !== undefined ? (r[9] as number) : -1;
      out.receiptEpoch = (r[10] as number | undefined) ?? 0;
      out.remaining = r[3] as number;
      out.retryAfterMs = r[4] as number;
      out.resetAfterMs = r[5] as number;
      out.quotaResetAfterMs = r[7] as number;
      out.quotaLimit = (r[8] as number) >= 0 ? (r[8] as number) : null;
      out.status = 'active';
      out.startsAt = 0;
      out.endsAt = Infinity;
    } else {
      out.quotaLimit = (r[2] as number) >= 0 ? (r[2] as number) : null;
      out.period = r[3] as number;
      out.remaining = r[4] as number;
      out.retryAfterMs = r[5] as number;
      out.resetAfterMs = r[6] as number;
      out.startsAt = r[7] as number;
      out.endsAt = (r[8] as number) >= 0 ? (r[8] as number) : Infinity;
      out.status = STATUS[r[9] as number] ?? 'active';
      if (r[10] === 1) this.listener.expired(userId, profile.name);
    }
    if (verdict === Verdict.QUEUED) out.bucket = profile.shared === undefined ? `d:${userId}` : `s:${profile.shared}`;
    ref.usage = out.usage;
    ref.usable = verdict <= Verdict.QUOTA_EXCEEDED;
    return out;
  }

  async take(userId: string, cost: number, _nowMs: number, slot?: UserSlot, receipt?: { value: RateReceipt | undefined }): Promise<number> {
    const ref = this.ref(userId, slot);
    const profile = ref.profile ?? (await this.profileOf(userId, ref));
    if (!profile) return 0;
    ref.profile = profile;
    const rate = profile.rate;
    if (cost > rate.burst) return Infinity;
    const bucket = this.bucketOf(ref, profile);
    let r: Reply;
    try {
      r = await this.run(scripts.take, [bucket], [profile.shared === undefined ? 'h' : 's', rate.d, rate.T, rate.tau, cost, 0, this.deadline(), this.clockArg(), 'take']);
      if (Number(r[0]) === -1) throw pastDeadline();
    } catch (error) {
      if (this.policy === 'fail-closed' || !(error instanceof TaskvalveError) || error.code !== ErrorCode.STORE_UNAVAILABLE) throw error;
      if (this.policy === 'fail-open') return 0;
      const local = this.localTake(bucket, profile, cost);
      return local > 0 ? 0 : Math.max(1, -local);
    }
    if (Number(r[0]) !== 1) return Math.max(1, Number(r[1]));
    // The bucket's TAT right after, as whole µs and leftover ticks: what refundRate takes back.
    if (receipt !== undefined && r[4] !== undefined) receipt.value = { tat: Number(r[4]), epoch: Number(r[5]) };
    return 0;
  }

  /**
   * Gives back rate units taken for an attempt that never started, as far as the bucket still
   * holds them (refund_rate.lua). The receipt is the bucket's TAT right after they were taken:
   * `tat` whole µs, `epoch` leftover ticks.
   */
  async refundRate(userId: string, cost: number, receipt: RateReceipt, _nowMs: number, slot?: UserSlot): Promise<void> {
    // With the user's handle the profile is known and the call goes at once (so that it lands
    // before any later call on this connection).
    const ref = this.ref(userId, slot);
    const profile = ref.profile ?? (await this.profileOf(userId, ref));
    if (!profile) return;
    const rate = profile.rate;
    const bucket = this.bucketOf(ref, profile);
    await this.run(scripts.refundRate, [bucket], [profile.shared === undefined ? 'h' : 's', rate.d, rate.T, cost, receipt.tat, receipt.epoch, this.clockArg()]);
    // A refusal remembered for this bucket may no longer hold.
    this.denials.delete(bucket);
  }

  /**
   * Redis is unreachable: fail closed (rethrow), fail open (admit, charge nothing), or decide
   * locally on this process's share of the limits, remembering the usage to charge later.
   * Only users this process has seen in good standing are admitted without Redis.
   */
  private withoutRedis(error: unknown, out: AdmitResult, userId: string, ref: Ref, profile: Profile, cost: number): AdmitResult {
    const down = error instanceof TaskvalveError && error.code === ErrorCode.STORE_UNAVAILABLE;
    if (!down || this.policy === 'fail-closed' || !ref.usable) throw error;
    out.profile = profile;
    out.limit = profile.rate.burst;
    out.status = 'active';
    out.startsAt = 0;
    out.endsAt = Infinity;
    out.period = -1;
    out.quotaLimit = profile.quotaLimit;
    out.usage = ref.usage;
    out.retryAfterMs = 0;
    out.resetAfterMs = 0;
    out.remaining = profile.rate.burst;
    if (this.policy === 'fail-open') {
      out.verdict = Verdict.ALLOWED;
      return out;
    }
    const owed = this.owed.get(userId) ?? 0;
    if (profile.quotaHard && profile.quotaLimit !== null && ref.usage + owed + cost > profile.quotaLimit) {
      out.verdict = Verdict.QUOTA_EXCEEDED;
      return out;
    }
    const taken = this.localTake(this.bucketOf(ref, profile), profile, cost);
    if (taken < 0) {
      out.verdict = Verdict.RATE_LIMITED;
      out.remaining = 0;
      out.retryAfterMs = -taken;
      return out;
    }
    this.owed.set(userId, owed + cost);
    out.verdict = Verdict.ALLOWED;
    out.usage = ref.usage + owed + cost;
    return out;
  }

  /**
   * The 'local' policy's bucket: this process's share (1 / live processes) of the rate and burst,
   * exact GCRA on this process's clock. Positive: taken; negative: minus the ms to wait.
   */
  private localTake(bucket: string, profile: Profile, cost: number): number {
    let entry = this.insurance.get(bucket);
    const share = this.processes;
    const limit = Math.max(1, Math.floor(profile.rate.limit / share));
    const burst = Math.max(1, Math.floor(profile.rate.burst / share));
    if (entry === undefined || entry.rate.limit !== limit || entry.rate.burst !== burst) {
      entry = { rate: makeRate(limit, profile.rate.intervalMs, burst), tat: 0 };
      this.insurance.set(bucket, entry);
    }
    const now = Math.round(performance.now() * 1000) * entry.rate.d;
    if (cost > burst) return -ticksToMs(entry.rate.T * cost, entry.rate);
    const next = conform(entry.tat, now, cost, entry.rate);
    if (next < 0) return -Math.max(1, ticksToMs(-next, entry.rate));
    entry.tat = next;
    return 1 + gcraRemaining(next, now, entry.rate);
  }

  private reconciling: Promise<void> | undefined = undefined;
  /** Refusals of buckets, by bucket key: until when (local µs), for how many units, under which rate. */
  private readonly denials = new Map<string, Denial>();
  /** Admission calls per node (per slot on a Cluster): in flight, and the batch gathering. */
  private readonly groups = new Map<unknown, Group>();

  /** Redis is back: charge the usage admitted locally while it was away (one run at a time). */
  private reconcile(): Promise<void> {
    if (this.reconciling === undefined && this.owed.size > 0) {
      this.reconciling = this.chargeOwed().finally(() => {
        this.reconciling = undefined;
      });
    }
    return this.reconciling ?? Promise.resolve();
  }

  private async chargeOwed(): Promise<void> {
    try {
      for (const [userId, units] of [...this.owed]) {
        const user = this.keys.user(userId);
        late(await this.run(scripts.mutate, [user, this.endedOf(user)], ['charge', units, this.clockArg(), this.deadline(), userId]));
        const left = (this.owed.get(userId) ?? 0) - units;
        if (left > 0) this.owed.set(userId, left);
        else this.owed.delete(userId);
      }
      this.insurance.clear();
    } catch (error) {
      this.listener.fault?.(error);
    }
  }

  async refund(userId: string, cost: number, period: number, _nowMs: number): Promise<void> {
    if (period < 0) {
      // Admitted without Redis: give back what this process owes instead.
      const owed = (this.owed.get(userId) ?? 0) - cost;
      if (owed > 0) this.owed.set(userId, owed);
      else this.owed.delete(userId);
      return;
    }
    // One call, sent at once (so it lands before any later read on this connection): the
    // generation token alone decides; a refund into a period that has since ended changes
    // nothing visible, as that usage resets at the next decision.
    await this.run(scripts.refund, [this.keys.user(userId)], [cost, period, 0, this.clockArg()]);
  }

  async peek(userId: string, _nowMs: number, waiting?: ReadonlyMap<string, number>): Promise<AdmitResult> {
    const ref = this.ref(userId, undefined);
    const out = blankResult();
    const profile = await this.profileOf(userId, ref);
    if (profile === null) return this.notFound(out);
    if (profile === undefined) throw this.unknownProfile(userId);
    const rate = profile.rate;
    const bucket = this.bucketOf(ref, profile);
    let r: Reply | null;
    let tail: Reply;
    if (profile.shared === undefined || this.together(ref.user, bucket)) {
      const keys = profile.shared === undefined ? [ref.user] : [ref.user, bucket];
      r = await this.run(scripts.read, keys, [this.clockArg(), rate.d, rate.T, rate.tau]);
      if (r === null) return this.notFound(out);
      tail = r.slice(10);
    } else {
      r = await this.run(scripts.read, [ref.user], [this.clockArg()]);
      if (r === null) return this.notFound(out);
      const t = await this.run(scripts.take, [bucket], ['s', rate.d, rate.T, rate.tau, 1, 0, 0, this.clockArg(), 'peek']);
      tail = [t[2] ?? 0, t[0] === 1 ? 0 : (t[1] ?? 0), t[3] ?? 0];
    }
    const sub = this.subscription(userId, r);
    let remaining = Number(tail[0]);
    let retryAfterMs = Number(tail[1]);
    let resetAfterMs = Number(tail[2]);
    const ahead = waiting === undefined || waiting.size === 0 ? 0 : (waiting.get(profile.shared === undefined ? `d:${userId}` : `s:${profile.shared}`) ?? 0);
    if (ahead > 0) {
      // Units this process's waiting tasks have reserved are as good as taken. The wait is
      // rounded so that it is never early (up to one unit's time late).
      const unitMs = rate.intervalMs / rate.limit;
      const short = ahead + 1 - remaining;
      if (short > 0) retryAfterMs = Math.max(retryAfterMs, Math.ceil(short * unitMs));
      remaining = Math.max(0, remaining - ahead);
      resetAfterMs += Math.ceil(ahead * unitMs);
    }
    out.verdict = remaining >= 1 && retryAfterMs === 0 ? Verdict.ALLOWED : Verdict.RATE_LIMITED;
    out.profile = profile;
    out.limit = rate.burst;
    out.remaining = remaining;
    out.retryAfterMs = retryAfterMs;
    out.resetAfterMs = resetAfterMs;
    out.usage = sub.usage;
    out.quotaLimit = sub.quotaLimit;
    out.status = sub.status;
    return out;
  }

  /**
   * Moves keys to the shard that owns them now, after shards were appended to `client`:
   * `previous` is the array of shards before (a prefix of the current one). Run it once after
   * deploying the larger array; until a tenant's keys have moved, that tenant is not found
   * (its calls fail closed), and nothing is over-spent. A tenant that was charged on the new
   * shard in the meantime keeps both charges (usage is added, the fuller bucket wins).
   * Returns the number of keys moved.
   */
  async migrate(previous: RedisClientLike[]): Promise<number> {
    const shards = this.clients as unknown as MigrationClient[];
    if (!Array.isArray(previous) || previous.length > shards.length || previous.some((c, i) => c !== (shards[i] as unknown))) {
      throw invalidArgument('migrate(previous): previous must be the shards before, a prefix of the current array');
    }
    // The ends indexes were placed for the shards before; each user's entry follows the user.
    const n = previous.length;
    const before = endedTags(n, (tag) => (n === 1 ? 0 : rendezvous(tag, n)));
    let moved = 0;
    for (let from = 0; from < n; from++) {
      const source = shards[from] as MigrationClient;
      const oldIndex = this.keys.ended(before[from] as string);
      let cursor = '0';
      do {
        const [next, keys] = await source.scan(cursor, 'MATCH', `${this.keys.prefix}:{*`, 'COUNT', 500);
        cursor = next;
        for (const key of keys) {
          const tag = tagOf(key);
          if (tag.startsWith('e:')) continue;
          const to = rendezvous(tag, shards.length);
          if (to === from) continue;
          const target = shards[to] as MigrationClient;
          if (!(await this.moveKey(key, source, target))) continue;
          moved++;
          if (tag.startsWith('u:')) await this.moveEnd(unescapeId(tag.slice(2)), oldIndex, source, this.endedOf(key), target);
        }
      } while (cursor !== '0');
      // Users that stayed: their entries join the index this shard has now.
      const newIndex = this.keys.ended(this.endedTags()[from] as string);
      if (newIndex !== oldIndex && (await source.exists(oldIndex)) === 1) {
        // Both can hold a user changed since the new shards went live: the later end stands.
        await source.zunionstore(newIndex, 2, newIndex, oldIndex, 'AGGREGATE', 'MAX');
        await source.del(oldIndex);
      }
    }
    return moved;
  }

  /** A moved user's entry in the ends index goes with it. */
  private async moveEnd(userId: string, oldIndex: string, source: MigrationClient, newIndex: string, target: MigrationClient): Promise<void> {
    const score = await source.zscore(oldIndex, userId);
    if (score === null) return;
    await target.zadd(newIndex, score, userId);
    await source.zrem(oldIndex, userId);
  }

  private async moveKey(key: string, source: MigrationClient, target: MigrationClient): Promise<boolean> {
    const [dump, ttl] = await Promise.all([source.dumpBuffer(key), source.pttl(key)]);
    if (dump === null) return false;
    try {
      await target.restore(key, ttl > 0 ? ttl : 0, dump);
    } catch (error) {
      if (!String((error as Error).message).startsWith('BUSYKEY')) throw error;
      await this.merge(key, source, target);
    }
    await source.del(key);
    return true;
  }

  /** Both shards hold the key: keep both charges for a user, the fuller state for a bucket. */
  private async merge(key: string, source: MigrationClient, target: MigrationClient): Promise<void> {
    if (tagOf(key).startsWith('u:')) {
      const r = (await scripts.read.run(source as unknown as ScriptClient, [key], [this.clockArg()])) as Reply | null;
      const usage = r === null ? 0 : Number(r[4]);
      // A charge leaves the ends index alone: the id argument is not read.
      if (usage > 0) await this.run(scripts.mutate, [key, this.endedOf(key)], ['charge', usage, this.clockArg(), 0, '']);
    } else if ((await source.type(key)) === 'string') {
      const [a, b] = await Promise.all([source.get(key), target.get(key)]);
      const tat = (v: string | null): number => (v === null ? -Infinity : Number(v.split(':')[0]));
      if (tat(a) > tat(b)) await target.set(key, a as string, 'PX', Math.max(1, await source.pttl(key)));
    }
  }

  private dlqKeys(): string[] {
    return [this.keys.dlq('e'), this.keys.dlq('o'), this.keys.dlq('x'), this.keys.dlq('seq')];
  }

  async dlqAdd(entry: FailedTask, bounds: { maxEntries: number; retentionMs: number }, _nowMs: number): Promise<void> {
    if (typeof entry.task === 'function') {
      this.inline.set(entry.id, entry.task);
      if (this.inline.size > MAX_INLINE) this.inline.delete(this.inline.keys().next().value as string);
    }
    const json = JSON.stringify(serialiseEntry(entry));
    await this.run(scripts.dlq, [...this.dlqKeys(), this.keys.dlqProfile(entry.profileName)], ['add', entry.id, json, bounds.maxEntries, bounds.retentionMs, this.clockArg()]);
  }

  async dlqList(query: DlqQuery, _nowMs: number): Promise<FailedTask[]> {
    const keys = this.dlqKeys();
    if (query.profileName !== undefined) keys.push(this.keys.dlqProfile(query.profileName));
    const r = (await this.run(scripts.dlq, keys, ['list', query.limit ?? -1, query.userId ?? '', this.clockArg()])) as string[];
    return r.map((json) => this.restore(JSON.parse(json) as StoredEntry));
  }

  async dlqGet(id: string, _nowMs: number): Promise<FailedTask | undefined> {
    const json = (await this.run(scripts.dlq, this.dlqKeys(), ['get', id, this.clockArg()])) as unknown as string | null;
    return json === null ? undefined : this.restore(JSON.parse(json) as StoredEntry);
  }

  async dlqRemove(id: string): Promise<boolean> {
    const removed = (await this.run(scripts.dlq, this.dlqKeys(), ['remove', id, this.clockArg()])) as unknown as number;
    this.inline.delete(id);
    return removed === 1;
  }

  /** Inline task functions of this process's dead letters: a function cannot travel. */
  private readonly inline = new Map<string, FailedTask['task']>();

  private restore(stored: StoredEntry): FailedTask {
    const { task, firstFailedAt, lastFailedAt, ...rest } = stored;
    const fn = this.inline.get(stored.id);
    return {
      ...rest,
      task: fn ?? (task.inline ? { inline: true, description: task.description ?? 'a function' } : { name: task.name as string, payload: task.payload }),
      firstFailedAt: new Date(firstFailedAt),
      lastFailedAt: new Date(lastFailedAt),
    };
  }
}

/** A script's reply for one decision, with the profile it was decided on when known. */
interface Answer {
  reply: Reply;
  profile: Profile | undefined;
}

/** Decisions bound for one admission script call. */
interface Batch {
  /** Per decision: the user's key, then its bucket's when the bucket has a key of its own. */
  keys: string[];
  /** Per decision: expected profile index, flags (with OWN_KEY), cost, units waiting ahead. */
  decisions: number[];
  size: number;
  /** The profiles' table of this call (each travels once). */
  profiles: Profile[];
  index: Map<Profile, number>;
  /** Every registered profile is in the table (a decision for a user of unknown profile). */
  all: boolean;
  /** Every decision's answer, in order, once the call returns. */
  answers: Promise<Answer[]>;
  settle: { resolve(answers: Answer[]): void; reject(error: unknown): void };
}

function newBatch(): Batch {
  const batch = { keys: [], decisions: [], size: 0, profiles: [], index: new Map(), all: false } as unknown as Batch;
  batch.answers = new Promise<Answer[]>((resolve, reject) => {
    batch.settle = { resolve, reject };
  });
  // A batch whose call fails rejects every decision's await; none is left unhandled.
  batch.answers.catch(() => {});
  return batch;
}

/**
 * The admission script's reply, one binary record per decision (see admit.lua): compact ones of
 * 11 doubles, full ones of 11 doubles and the profile's name; or the integer PAST_DEADLINE.
 */
function parseAnswers(reply: Buffer | number, batch: Batch): Answer[] {
  const answers: Answer[] = new Array(batch.size);
  if (typeof reply === 'number') {
    const late: Reply = [PAST_DEADLINE];
    for (let i = 0; i < batch.size; i++) answers[i] = { reply: late, profile: undefined };
    return answers;
  }
  let at = 0;
  for (let i = 0; i < batch.size; i++) {
    const verdict = reply.readDoubleLE(at);
    const compact = verdict <= Verdict.RATE_LIMITED || verdict === RESERVED;
    const fields = 11;
    const r: Reply = new Array(fields);
    for (let k = 0; k < fields; k++, at += 8) r[k] = reply.readDoubleLE(at);
    if (!compact) {
      const length = reply.readUInt32LE(at);
      r.push(reply.toString('utf8', at + 4, at + 4 + length));
      at += 4 + length;
    }
    // Compact replies name the profile by its place in this batch's table.
    const index = compact ? (r[6] as number) : 0;
    answers[i] = { reply: r, profile: index > 0 ? batch.profiles[index - 1] : undefined };
  }
  return answers;
}

/** A Redis call in flight: when it times out, and how to fail it then. */
interface Call {
  at: number;
  done: boolean;
  fail(error: unknown): void;
}

/** Admission calls of one node: those in flight, and the batch gathering behind them. */
interface Group {
  inFlight: number;
  pending: Batch | undefined;
}

/** Admission calls in flight per node before decisions gather into batches. */
const MAX_IN_FLIGHT = 2;

const fieldsOf = new WeakMap<Profile, string[]>();

/** A profile's parameters as the admission script reads them (computed once per profile, as text). */
function profileFields(p: Profile): string[] {
  let fields = fieldsOf.get(p);
  if (fields === undefined) {
    const r = p.rate;
    const bits = (p.quotaHard ? 1 : 0) + (p.onLimit === 'wait' ? 2 : 0) + (p.shared === undefined ? 0 : 4);
    const maxWait = p.maxWaitMs === Infinity ? -1 : p.maxWaitMs;
    fields = [p.name, [r.d, r.T, r.tau, r.burst, p.quotaLimit ?? -1, p.quotaPeriodMs, bits, maxWait].join(':')];
    fieldsOf.set(p, fields);
  }
  return fields;
}

/** A bucket's refusal: until when it stands, when the bucket is full, for how many units, under which rate. */
interface Denial {
  untilUs: number;
  fullUs: number;
  cost: number;
  rate: Profile['rate'];
}

/** Buckets whose refusal this process remembers at most. */
const MAX_DENIALS = 10_000;

/** Added to a decision's flags when its bucket has a key of its own (then sent after the user's). */
const OWN_KEY = 4;

/** Ends indexes a sweep call visits at most (a Cluster has one per slot). */
const SWEEP_UNITS = 256;

/** Decisions per admission script call at most. */
const MAX_BATCH = 64;

/** What migrate() needs of a shard: an ioredis `Redis`. */
interface MigrationClient {
  scan(cursor: string, ...args: (string | number)[]): Promise<[string, string[]]>;
  dumpBuffer(key: string): Promise<Buffer | null>;
  pttl(key: string): Promise<number>;
  restore(key: string, ttl: number, value: Buffer): Promise<unknown>;
  del(key: string): Promise<number>;
  type(key: string): Promise<string>;
  get(key: string): Promise<string | null>;
  set(key: string, value: string, px: 'PX', ms: number): Promise<unknown>;
  exists(key: string): Promise<number>;
  zscore(key: string, member: string): Promise<string | null>;
  zadd(key: string, score: string, member: string): Promise<unknown>;
  zrem(key: string, member: string): Promise<unknown>;
  zunionstore(destination: string, count: number, ...keys: string[]): Promise<unknown>;
}

/** A script reached Redis after its deadline and wrote nothing: the call failed. */
function pastDeadline(): TaskvalveError {
  return storeUnavailable(new Error('the call reached Redis after its deadline and was refused'));
}

/** A script that ran past its deadline wrote nothing: the call failed. */
function late(r: Reply | null): void {
  if (r !== null && r[0] === 'LATE') throw pastDeadline();
}


/** A dead letter as JSON. */
interface StoredEntry extends Omit<FailedTask, 'task' | 'firstFailedAt' | 'lastFailedAt'> {
  task: { inline?: boolean; description?: string; name?: string; payload?: unknown };
  firstFailedAt: number;
  lastFailedAt: number;
}

function serialiseEntry(entry: FailedTask): StoredEntry {
  const t = entry.task;
  const task =
    typeof t === 'function'
      ? { inline: true, description: t.name ? `function ${t.name}` : 'an anonymous function' }
      : 'inline' in t
        ? { inline: true, description: t.description }
        : { name: t.name, payload: t.payload };
  return { ...entry, task, firstFailedAt: entry.firstFailedAt.getTime(), lastFailedAt: entry.lastFailedAt.getTime() };
}
