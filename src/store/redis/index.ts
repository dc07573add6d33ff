/**
 * RedisStore: the same Store as MemoryStore, kept in Redis (standalone, client-side shards, or
 * Redis Cluster) so that every process pointed at it sees one world. Every decision is one
 * Lua script call deciding on Redis TIME; see docs/redis.md for the protocol across slots.
 *
 * This file checks the options, wires the parts (one concern per file in this folder; docs/redis.md
 * lists them) and delegates the Store methods to them.
 */
import { invalidConfig } from '../../errors.js';
import type { Profile } from '../../profile.js';
import type {
  AdmitMode,
  AdmitResult,
  DlqQuery,
  FailedTask,
  RateReceipt,
  Store,
  StoreListener,
  SubscribeInput,
  Subscription,
  SweepResult,
  TurnRequest,
  TurnsTaken,
  UserSlot,
} from '../store.js';
import { rejectUnknownOptions } from '../../util/options.js';
import { Admission } from './admission.js';
import { Batches } from './batch.js';
import { Calls } from './calls.js';
import { randomUUID } from 'node:crypto';
import { Clock } from './clock.js';
import { Operations } from './ops.js';
import type { Context } from './context.js';
import { Denials } from './denials.js';
import { DeadLetters } from './dlq.js';
import { Ended } from './ended.js';
import { Handles } from './handles.js';
import { Keys } from './keys.js';
import { Migration } from './migrate.js';
import { Outage } from './outage.js';
import { Presence } from './presence.js';
import type { ScriptClient } from './scripts.js';
import { Subscriptions } from './subscriptions.js';
import { Refunds } from './refunds.js';
import { Turns } from './turns.js';

/** Users whose standing the store remembers by default (see RedisStoreOptions.rememberedUsers). */
const REMEMBERED_USERS = 100_000;

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
  /**
   * Admission decisions that may wait for Redis at once in this process (gathering in a batch or
   * in flight): a bound on memory; default 10,000. Past it an admission fails at once with
   * STORE_UNAVAILABLE ("overloaded"), handled by the outage policy: overload is shed, not queued.
   */
  maxPending?: number;
  /**
   * How long a node's oldest admission call may wait for its answer before new admissions for
   * that node are shed (STORE_UNAVAILABLE "overloaded", under the outage policy): a bound on
   * latency, so that a process offered more than Redis answers sheds the excess instead of
   * building a backlog, while a burst Redis absorbs within it is not shed; default 250 ms.
   */
  maxDelayMs?: number;
  /**
   * How many users' standing (profile, usage, quota, whether the subscription was usable) this
   * process remembers for the outage policies, beyond the users whose limiter handles the
   * manager holds: the most recently answered ones, at most this many and at least the half
   * answered last (they are forgotten half at a time). Default 100,000 (about 20 MB; see
   * docs/redis.md). Under 'fail-open' and 'local', a user this process does not remember fails
   * closed while Redis is unreachable.
   */
  rememberedUsers?: number;
}

/** The state of taskvalve in Redis. taskvalve never closes the client it is given. */
export class RedisStore implements Store {
  private readonly ctx: Context;
  private readonly handles: Handles;
  private readonly denials = new Denials();
  private readonly presence: Presence;
  private readonly ended: Ended;
  private readonly outage: Outage;
  private readonly subscriptions: Subscriptions;
  private readonly admission: Admission;
  private readonly turns: Turns;
  private readonly migration: Migration;
  private readonly deadLetters: DeadLetters;

  constructor(options: RedisStoreOptions) {
    if (options === null || typeof options !== 'object') throw invalidConfig('RedisStore', 'options', options, 'an object');
    rejectUnknownOptions('RedisStore', options, ['client', 'prefix', 'timeoutMs', 'maxPending', 'maxDelayMs', 'rememberedUsers']);
    const prefix = options.prefix ?? 'taskvalve';
    if (typeof prefix !== 'string' || prefix.length === 0 || /[{}]/.test(prefix)) {
      throw invalidConfig('RedisStore', 'prefix', prefix, 'a non-empty string without braces');
    }
    const timeoutMs = options.timeoutMs ?? 1000;
    if (!Number.isSafeInteger(timeoutMs) || timeoutMs <= 0) throw invalidConfig('RedisStore', 'timeoutMs', timeoutMs, 'a positive integer');
    const maxPending = options.maxPending ?? 10_000;
    if (!Number.isSafeInteger(maxPending) || maxPending <= 0) throw invalidConfig('RedisStore', 'maxPending', maxPending, 'a positive integer');
    const maxDelayMs = options.maxDelayMs ?? 250;
    if (!Number.isSafeInteger(maxDelayMs) || maxDelayMs <= 0) throw invalidConfig('RedisStore', 'maxDelayMs', maxDelayMs, 'a positive integer');
    const remembered = options.rememberedUsers ?? REMEMBERED_USERS;
    if (!Number.isSafeInteger(remembered) || remembered <= 0) throw invalidConfig('RedisStore', 'rememberedUsers', remembered, 'a positive integer');
    const clients = Array.isArray(options.client) ? options.client : [options.client];
    if (clients.length === 0 || clients.some((c) => c === null || typeof c !== 'object' || typeof c.evalsha !== 'function')) {
      throw invalidConfig('RedisStore', 'client', options.client, 'an ioredis Redis, an ioredis Cluster, or an array of ioredis Redis');
    }
    const clustered = !Array.isArray(options.client) && (options.client as { isCluster?: boolean }).isCluster === true;
    const keys = new Keys(prefix);
    const calls = new Calls(clients, clustered, timeoutMs);
    const clock = new Clock(calls, timeoutMs);
    const fault = (error: unknown): void => this.ctx.listener.fault?.(error);
    // A call taken back gave units back: refusals remembered for its keys may no longer hold.
    const ops = new Operations(calls, clock, keys, randomUUID(), fault, (undoneKeys) => {
      for (const key of undoneKeys) this.denials.delete(key);
    });
    const ctx: Context = { keys, calls, clock, ops, profiles: new Map(), listener: { expired() {} } };
    const forget = (userId: string, user: string): void => this.forget(userId, user);
    this.ctx = ctx;
    this.handles = new Handles(keys, remembered);
    this.presence = new Presence(ctx);
    this.ended = new Ended(ctx, forget);
    this.outage = new Outage(ctx, this.presence);
    this.subscriptions = new Subscriptions(ctx, this.ended, this.denials, forget);
    this.admission = new Admission(ctx, this.handles, new Batches(ctx, maxPending, maxDelayMs), this.denials, this.outage, this.subscriptions, new Refunds(ctx));
    this.turns = new Turns(ctx, this.handles, this.outage, this.subscriptions);
    this.migration = new Migration(ctx, this.ended);
    this.deadLetters = new DeadLetters(ctx);
  }

  /**
   * @internal Tests only: every script decides at `clock()` (ms) instead of Redis TIME, so that
   * time-dependent cases can move time; undefined returns to Redis TIME.
   */
  setTestClock(clock: (() => number) | undefined): void {
    this.ctx.clock.setTest(clock);
  }

  attach(listener: StoreListener): void {
    this.ctx.listener = listener;
    this.outage.policy = listener.onUnavailable ?? 'fail-closed';
  }

  /**
   * Makes a profile known, and records its configuration (and its shared bucket's) in Redis:
   * processes sharing one Redis with different configurations are warned about, both named.
   */
  async defineProfile(profile: Profile): Promise<void> {
    this.ctx.profiles.set(profile.name, profile);
    return this.presence.define(profile);
  }

  /** Counts this process among the live ones now, and tells how many there are. */
  refreshPresence(): Promise<number> {
    return this.presence.refresh();
  }

  /**
   * Stops the background presence, waiting for its calls still running (the client stays open:
   * it is the caller's, who can quit it once this resolves), and charges back
   * what was admitted under 'local' while Redis was unreachable, trying again until it is
   * charged or `timeoutMs` (default: the store's call timeout) has passed. `owed`: the units of
   * usage left uncharged (0: none).
   */
  async close(timeoutMs = this.ctx.calls.timeoutMs): Promise<{
    /** Units of usage admitted under 'local' while Redis was unreachable and not charged to it. */
    owed: number;
  }> {
    const until = performance.now() + timeoutMs;
    // Presence starts no call of its own from now on; those running end within the timeout.
    const presenceStopped = this.presence.stop(timeoutMs);
    const owed = await this.outage.close(timeoutMs);
    // Calls in doubt are settled, and refunds land, while Redis answers, within what is left of
    // the timeout (past it they go on in the background while the process lives).
    await this.ctx.ops.settled(Math.max(0, until - performance.now()));
    await presenceStopped;
    return { owed };
  }

  subscribe(userId: string, profile: Profile, input: SubscribeInput, _nowMs: number): Promise<Subscription> {
    this.ctx.profiles.set(profile.name, profile);
    // A new record counts as a change too: a handle may still know the profile of a subscription
    // that another process deleted.
    return this.changing(userId, this.subscriptions.subscribe(userId, profile, input));
  }

  getSubscription(userId: string, _nowMs: number): Promise<Subscription | undefined> {
    return this.subscriptions.get(userId);
  }

  extendSubscription(userId: string, ms: number): Promise<Subscription | undefined> {
    return this.changing(userId, this.subscriptions.change(userId, 'extend', ms));
  }

  cancelSubscription(userId: string): Promise<Subscription | undefined> {
    return this.changing(userId, this.subscriptions.change(userId, 'cancel', ''));
  }

  changeProfile(userId: string, profile: Profile): Promise<Subscription | undefined> {
    this.ctx.profiles.set(profile.name, profile);
    return this.changing(userId, this.subscriptions.change(userId, 'change', profile.name, profile));
  }

  resetUsage(userId: string): Promise<Subscription | undefined> {
    return this.changing(userId, this.subscriptions.change(userId, 'reset', ''));
  }

  setQuota(userId: string, quota: number | null): Promise<Subscription | undefined> {
    return this.changing(userId, this.subscriptions.change(userId, 'quota', quota ?? ''));
  }

  /**
   * A change of the user's subscription by this process, once it is applied or has failed (it
   * may have applied): the user's entries forget the standing they saw
   * (what the outage policies decide on, and the profile whose bucket rate turns take from) until
   * an admission begun after the change answers. A canceled subscription or a quota set here is
   * never decided without Redis on what an earlier answer said.
   */
  private async changing<T>(userId: string, change: Promise<T>): Promise<T> {
    try {
      return await change;
    } finally {
      this.handles.subscriptionChanged(this.ctx.keys.user(userId));
    }
  }

  /**
   * Deletes the user's record, then the user's dead letters (also when there was no record: a
   * retry completes a delete). Applied, the store forgets the user (forget(), as for a sweep's
   * deletion); failed, the user's entries forget what they saw all the same (see changing).
   */
  async deleteSubscription(userId: string): Promise<string | undefined> {
    let profileName: string | undefined;
    try {
      profileName = await this.subscriptions.delete(userId);
    } catch (error) {
      this.handles.subscriptionChanged(this.ctx.keys.user(userId));
      throw error;
    }
    await this.deadLetters.forget([userId]);
    return profileName;
  }

  /**
   * Visits the next SWEEP_UNITS ends indexes (all of them but on a Cluster, which has one per
   * slot): reads each one's due ids, then deletes those still ended, up to `max`. `more` until
   * the round has visited every index.
   */
  async sweepEnded(_nowMs: number, retentionMs: number, max: number): Promise<SweepResult> {
    const result = await this.ended.sweep(retentionMs, max);
    await this.deadLetters.forget(result.deleted.map((d) => d.userId));
    return result;
  }

  admit(userId: string, cost: number, mode: AdmitMode, waiting: ReadonlyMap<string, number>, _nowMs: number, slot?: UserSlot): Promise<AdmitResult> {
    return this.admission.admit(userId, cost, mode, waiting, slot);
  }

  take(userId: string, cost: number, _nowMs: number, slot?: UserSlot, receipt?: { value: RateReceipt | undefined }): Promise<number> {
    return this.turns.one(userId, cost, slot, receipt);
  }

  /** Rate turns for the waiters of one bucket in one script call (take_turns.lua), in their order. */
  takeTurns(waiters: readonly TurnRequest[], _nowMs: number): Promise<TurnsTaken> {
    return this.turns.take(waiters);
  }

  /**
   * Gives back rate units taken for an attempt that never started, as far as the bucket still
   * holds them (give_back.lua). The receipt is the bucket's TAT right after they were taken:
   * `tat` whole µs, `epoch` leftover ticks.
   */
  refundRate(userId: string, cost: number, receipt: RateReceipt, _nowMs: number, slot?: UserSlot): Promise<void> {
    return this.admission.refundRate(userId, cost, receipt, slot);
  }

  refund(userId: string, cost: number, period: number, _nowMs: number): Promise<void> {
    return this.admission.refund(userId, cost, period);
  }

  peek(userId: string, _nowMs: number, waiting?: ReadonlyMap<string, number>): Promise<AdmitResult> {
    return this.admission.peek(userId, waiting);
  }

  /**
   * Moves keys to the shard that owns them now, after shards were appended to `client`:
   * `previous` is the array of shards before (a prefix of the current one). Run it once, from a
   * process that registered every profile, after deploying the larger array everywhere; until
   * a tenant's keys have moved, that tenant is not found (its calls fail closed), and nothing is
   * over-spent. A tenant that was charged on the new shard in the meantime keeps both charges of
   * the current usage period (earlier periods' usage is over), and the fuller bucket. Each key
   * arrives atomically; an interrupted run can be run again (docs/redis.md, "Sharding").
   * Returns the number of keys moved.
   */
  migrate(previous: RedisClientLike[]): Promise<number> {
    return this.migration.run(previous);
  }

  dlqAdd(entry: FailedTask, bounds: { maxEntries: number; retentionMs: number }, nowMs: number): Promise<void> {
    return this.deadLetters.add(entry, bounds, nowMs);
  }

  dlqList(query: DlqQuery, _nowMs: number): Promise<FailedTask[]> {
    return this.deadLetters.list(query);
  }

  dlqGet(id: string, _nowMs: number): Promise<FailedTask | undefined> {
    return this.deadLetters.get(id);
  }

  dlqRemove(id: string): Promise<boolean> {
    return this.deadLetters.remove(id);
  }

  /** Drops what this process keeps for a deleted user: owed usage, refusals, handles' knowledge. */
  private forget(userId: string, user: string): void {
    this.handles.forget(user);
    this.denials.delete(user);
    this.outage.forget(userId, user);
  }
}
