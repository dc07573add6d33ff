/**
 * What the store does while Redis is unreachable, by the manager's policy (docs/redis.md, "When
 * Redis is unreachable"):
 * - 'fail-closed': the error stands;
 * - 'fail-open': users this process has seen in good standing are admitted; nothing is charged;
 * - 'local': users with a hard quota fail closed; the others are decided on this process's share
 *   of each bucket (1 / the live processes), which starts empty, so the processes together never
 *   admit more than the bucket's refill over the outage; the units admitted are owed, and
 *   charged back once Redis answers again, to usage and to the buckets.
 * Users this process has never seen in good standing fail closed under every policy.
 */
import { ErrorCode, TaskvalveError, show } from '../../errors.js';
import type { Profile } from '../../profile.js';
import { conform, makeRate, remaining as gcraRemaining, ticksToMs, type Rate } from '../../rate/gcra.js';
import { Verdict, type AdmitResult, type UnavailablePolicy } from '../store.js';
import type { Reply } from './calls.js';
import type { Context } from './context.js';
import type { Ref } from './handles.js';
import { tagOf } from './keys.js';
import type { Presence } from './presence.js';
import { scripts } from './scripts.js';

/** Charge-back calls in flight at most. */
const CHARGE_BACKS_IN_FLIGHT = 64;
/** close(): the pause between two rounds of charge-backs while Redis does not answer. */
const CLOSE_RETRY_MS = 100;
/** Users named at most in the fault that reports units left owed. */
const NAMED = 5;
/** Answers between two sweeps of the local buckets Redis has answered for since. */
const SWEEP_EVERY = 1024;

/** Whether an error means Redis could not be reached (the policies apply), rather than a refusal. */
function unreachable(error: unknown): boolean {
  return error instanceof TaskvalveError && error.code === ErrorCode.STORE_UNAVAILABLE;
}

/** STORE_UNAVAILABLE for a decision the policy cannot make without Redis: `why`, and the outage's own message (its cause). */
function undecided(userId: string, why: string, cause: unknown): TaskvalveError {
  const outage = cause instanceof Error ? ` (${cause.message})` : '';
  return new TaskvalveError(ErrorCode.STORE_UNAVAILABLE, `Redis is unavailable, and user ${show(userId)} cannot be decided without it: ${why}${outage}`, { cause });
}

/** One user's usage admitted under 'local' and not charged yet. */
interface OwedUsage {
  readonly userId: string;
  /** The user's key. */
  readonly user: string;
  units: number;
  /** The token of the usage period the units were admitted in, and the period's length (0: lifetime). */
  period: number;
  periodMs: number;
  /** The key of the user's shared bucket (undefined: the user's own, in the record). */
  readonly shared: string | undefined;
  /** A charge-back of these units is in flight. */
  sending: boolean;
}

/** Units taken from a local bucket and not charged to the Redis bucket yet. */
interface OwedBucket {
  readonly key: string;
  /** A user's own bucket (in the record at `key`) rather than a shared one. */
  readonly own: boolean;
  /** The rate the units were taken under (the profile's, not this process's share of it). */
  readonly d: number;
  readonly T: number;
  /** Its burst tolerance in ticks. */
  readonly tau: number;
  units: number;
  /** Local µs when the earliest local bucket these units came from started (empty). */
  sinceUs: number;
  /** A charge-back of these units is in flight. */
  sending: boolean;
}

/** This process's share of one bucket under 'local'. */
interface LocalBucket {
  /** The profile's rate it is a share of, and the count of live processes it was divided by. */
  readonly of: Rate;
  readonly processes: number;
  readonly rate: Rate;
  /** Local µs when it started, empty; its TAT in ticks of `rate` since then. */
  readonly startUs: number;
  tat: number;
  /** The placement unit of its Redis bucket. */
  readonly unit: number;
}

/** One charge-back call: a user's usage, a bucket's units, or both when they live in one slot. */
interface ChargeBack {
  usage: OwedUsage | undefined;
  bucket: OwedBucket | undefined;
}

export class Outage {
  /** Set by the store's attach(). */
  policy: UnavailablePolicy = 'fail-closed';
  /** 'local': usage admitted while Redis was unreachable, by user id, to charge once it answers. */
  private readonly usage = new Map<string, OwedUsage>();
  /** 'local': units taken from local buckets, by bucket key, to charge once Redis answers. */
  private readonly owedBuckets = new Map<string, OwedBucket>();
  /** 'local': this process's share of each bucket, by bucket key. */
  private readonly local = new Map<string, LocalBucket>();
  /** While local buckets exist: when Redis last answered for each placement unit (local µs). */
  private readonly answers = new Map<number, number>();
  private answersSinceSweep = 0;
  private reconciling: Promise<void> | undefined = undefined;
  /** After a round that Redis did not answer in full, no other starts before this (performance.now() ms). */
  private retryAt = 0;

  /** `presence`: how many processes share the limits under 'local'. */
  constructor(
    private readonly ctx: Context,
    private readonly presence: Presence,
  ) {}

  /** Whether anything is owed or decided locally: Redis's answers must then be told ({@link answered}). */
  get active(): boolean {
    return this.local.size > 0 || this.usage.size > 0 || this.owedBuckets.size > 0;
  }

  /**
   * Whether a failed admission is the policy's to decide: never under 'fail-closed', where the
   * error is the caller's as it is (admission then lets it pass without a handler).
   */
  get decides(): boolean {
    return this.policy !== 'fail-closed';
  }

  /**
   * An admission of `ref`'s user failed with `error`: rethrow it (it is no outage, or the policy
   * does not decide), or decide by the policy on the standing last seen (`profile`, bucket key
   * `bucket`). A user not seen in good standing fails closed under every policy.
   */
  admit(error: unknown, out: AdmitResult, userId: string, ref: Ref, profile: Profile | undefined, cost: number, bucket: string): AdmitResult {
    if (!this.decides || !unreachable(error)) throw error;
    if (profile === undefined || !ref.usable) throw undecided(userId, 'this process has not seen its subscription in good standing', error);
    const rate = profile.rate;
    out.profile = profile;
    out.limit = rate.burst;
    out.status = 'active';
    out.startsAt = 0;
    out.endsAt = Infinity;
    // Nothing charged (refunds of it are no-ops); 'local' sets the token of what it owes.
    out.period = -1;
    out.quotaLimit = ref.quota >= 0 ? ref.quota : null;
    out.usage = ref.usage;
    out.retryAfterMs = 0;
    out.resetAfterMs = 0;
    out.remaining = rate.burst;
    if (cost > rate.burst) {
      // As Redis would answer, whatever the bucket holds.
      out.verdict = Verdict.COST_OVER_BURST;
      return out;
    }
    if (this.policy === 'fail-open') {
      out.verdict = Verdict.ALLOWED;
      return out;
    }
    if (profile.quotaHard && ref.quota >= 0) {
      // Each process's view of the remaining quota is stale: shares of it could sum past the limit.
      throw undecided(userId, `its hard quota (${ref.quota}) is decided by Redis alone ('local' never admits against a quota it cannot see)`, error);
    }
    const taken = this.localTake(userId, bucket, rate, cost, error);
    if (taken < 0) {
      out.verdict = Verdict.RATE_LIMITED;
      out.remaining = 0;
      out.retryAfterMs = -taken;
      out.resetAfterMs = -taken;
      return out;
    }
    this.oweBucket(bucket, bucket === ref.user, rate, cost);
    const owed = this.oweUsage(userId, ref, profile, cost);
    out.verdict = Verdict.ALLOWED;
    out.remaining = taken - 1;
    out.usage = ref.usage + owed.units;
    // Refunded through refund(): the token of the usage period the units are owed for.
    out.period = -2 - owed.period;
    return out;
  }

  /**
   * A rate turn on `bucket` failed with `error`: rethrow it, or answer as take() does (0: taken,
   * else ms to wait) by the policy; under 'local' the units taken are owed to the bucket.
   */
  take(error: unknown, userId: string, bucket: string, own: boolean, profile: Profile, cost: number): number {
    if (!this.decides || !unreachable(error)) throw error;
    if (this.policy === 'fail-open') return 0;
    const taken = this.localTake(userId, bucket, profile.rate, cost, error);
    if (taken < 0) return -taken;
    this.oweBucket(bucket, own, profile.rate, cost);
    return 0;
  }

  /**
   * Gives back `cost` units of usage admitted without Redis in the usage period `period` (its
   * token): taken off what the user owes, once no charge-back of it is in flight. Resolves with
   * the part that was charged back already, to refund in Redis under the same token (0: none).
   */
  async refund(userId: string, cost: number, period: number): Promise<number> {
    let owed = this.usage.get(userId);
    while (owed?.sending === true) {
      await this.reconciling;
      owed = this.usage.get(userId);
    }
    // No units owed for that period: they were charged back (or their period is over).
    if (owed === undefined || owed.period !== period) return cost;
    const here = Math.min(owed.units, cost);
    owed.units -= here;
    if (owed.units === 0) this.usage.delete(userId);
    return cost - here;
  }

  /**
   * Redis answered a call on `key` (a user's record or a bucket): a local bucket of its
   * placement unit started before now is stale from here on, and what is owed is charged back.
   */
  answered(key: string): void {
    if (this.local.size > 0) {
      this.answers.set(this.ctx.calls.unitOf(tagOf(key)), this.ctx.clock.localUs());
      if (++this.answersSinceSweep >= SWEEP_EVERY) this.sweep();
    }
    if (this.usage.size > 0 || this.owedBuckets.size > 0) void this.reconcile();
  }

  /**
   * Charges back what is owed: one round at a time, and after a round that Redis did not answer
   * in full, not again before a call's timeout has passed. What fails stays owed for the next.
   */
  reconcile(): Promise<void> {
    if (this.reconciling === undefined && (this.usage.size > 0 || this.owedBuckets.size > 0) && performance.now() >= this.retryAt) {
      this.reconciling = this.chargeBack().finally(() => {
        this.reconciling = undefined;
      });
    }
    return this.reconciling ?? Promise.resolve();
  }

  /**
   * The store closes: charges back what is owed, in rounds, until nothing is or `timeoutMs`
   * has passed. Resolves with the usage units still owed (0: all charged); what is left is also
   * reported as a fault, with the users it belongs to.
   */
  async close(timeoutMs: number): Promise<number> {
    const until = performance.now() + timeoutMs;
    for (;;) {
      await this.reconcile();
      if (this.usage.size === 0 && this.owedBuckets.size === 0) return 0;
      const left = until - performance.now();
      if (left <= 0) break;
      await new Promise((resolve) => setTimeout(resolve, Math.min(left, CLOSE_RETRY_MS)));
    }
    let units = 0;
    for (const owed of this.usage.values()) units += owed.units;
    let rate = 0;
    for (const owed of this.owedBuckets.values()) rate += owed.units;
    const users = [...this.usage.keys()];
    const named = users.slice(0, NAMED).map((id) => show(id)).join(', ') + (users.length > NAMED ? `, and ${users.length - NAMED} more` : '');
    const message = `Redis is unavailable: close() left uncharged ${units} unit(s) of usage admitted without it under 'local'${users.length > 0 ? ` (users ${named})` : ''}, and ${rate} unit(s) taken from buckets`;
    this.ctx.listener.fault?.(new TaskvalveError(ErrorCode.STORE_UNAVAILABLE, message));
    return units;
  }

  /** A deleted user owes nothing, and its own bucket (key `user`) is gone. */
  forget(userId: string, user: string): void {
    this.local.delete(user);
    const usage = this.usage.get(userId);
    if (usage !== undefined && !usage.sending) this.usage.delete(userId);
    const bucket = this.owedBuckets.get(user);
    if (bucket !== undefined && !bucket.sending) this.owedBuckets.delete(user);
  }

  /**
   * Takes `cost` units from this process's share of the bucket `key` (rate `of`): 1 / the live
   * processes of its rate and of its burst, started empty when first used in this outage, exact
   * GCRA on this process's clock. Positive: taken, 1 + the units left; negative: minus the ms
   * to wait. Fails closed when the share is unknown or cannot ever hold `cost`.
   */
  private localTake(userId: string, key: string, of: Rate, cost: number, error: unknown): number {
    if (!this.presence.counted) throw undecided(userId, 'this process has not counted the live processes sharing the bucket yet', error);
    const processes = this.presence.processes;
    const burst = Math.floor(of.burst / processes);
    if (cost > burst) throw undecided(userId, `this process's share of the bucket (${burst} of ${of.burst} units, among ${processes} live processes) cannot hold ${cost}`, error);
    const nowUs = this.ctx.clock.localUs();
    let bucket = this.local.get(key);
    if (bucket === undefined || bucket.of !== of || bucket.processes !== processes || (this.answers.get(bucket.unit) ?? -Infinity) >= bucket.startUs) {
      // Empty at first: what it admits is what it refills, so the processes' shares never add a
      // burst on top of a bucket that others may have spent.
      const rate = makeRate(of.limit, of.intervalMs * processes, burst);
      bucket = { of, processes, rate, startUs: nowUs, tat: rate.tau, unit: this.ctx.calls.unitOf(tagOf(key)) };
      this.local.set(key, bucket);
    }
    const rate = bucket.rate;
    const now = Math.floor(nowUs - bucket.startUs) * rate.d;
    const next = conform(bucket.tat, now, cost, rate);
    if (next < 0) return -Math.max(1, ticksToMs(-next, rate));
    bucket.tat = next;
    return 1 + gcraRemaining(next, now, rate);
  }

  /** `cost` units taken from the local share of bucket `key`: owed to the Redis bucket. */
  private oweBucket(key: string, own: boolean, rate: Rate, cost: number): void {
    const startUs = (this.local.get(key) as LocalBucket).startUs;
    let owed = this.owedBuckets.get(key);
    if (owed === undefined || ((owed.d !== rate.d || owed.T !== rate.T) && !owed.sending)) {
      // (Units owed under a rate that has changed since are charged under the new one.)
      owed = { key, own, d: rate.d, T: rate.T, tau: rate.tau, units: owed?.units ?? 0, sinceUs: owed?.sinceUs ?? startUs, sending: false };
      this.owedBuckets.set(key, owed);
    }
    owed.units += cost;
    owed.sinceUs = Math.min(owed.sinceUs, startUs);
  }

  /** `cost` units of `ref`'s usage admitted without Redis: owed. Returns what the user owes now. */
  private oweUsage(userId: string, ref: Ref, profile: Profile, cost: number): OwedUsage {
    let owed = this.usage.get(userId);
    if (owed === undefined) {
      owed = { userId, user: ref.user, units: 0, period: ref.period, periodMs: profile.quotaPeriodMs, shared: profile.shared === undefined ? undefined : this.ctx.keys.shared(profile.shared), sending: false };
      this.usage.set(userId, owed);
    } else if (owed.period !== ref.period && !owed.sending) {
      // Redis answered in another usage period since: what was owed for the earlier one is moot
      // (that period's usage is over; the charge-back would find it so).
      owed.units = 0;
      owed.period = ref.period;
      owed.periodMs = profile.quotaPeriodMs;
    }
    owed.units += cost;
    return owed;
  }

  /** Drops local buckets whose Redis has answered since they started (they would start afresh anyway). */
  private sweep(): void {
    this.answersSinceSweep = 0;
    for (const [key, bucket] of this.local) {
      if ((this.answers.get(bucket.unit) ?? -Infinity) >= bucket.startUs) this.local.delete(key);
    }
    if (this.local.size === 0) this.answers.clear();
  }

  /** One round: every owed amount not in flight goes in one charge-back call, a bounded number at once. */
  private async chargeBack(): Promise<void> {
    const round: ChargeBack[] = [];
    for (const usage of this.usage.values()) {
      if (usage.sending) continue;
      // With the user's own bucket or its shared bucket when that lives in the same slot.
      let bucket = this.owedBuckets.get(usage.shared ?? usage.user);
      if (bucket !== undefined && (bucket.sending || (!bucket.own && !this.ctx.calls.together(usage.user, bucket.key)))) bucket = undefined;
      usage.sending = true;
      if (bucket !== undefined) bucket.sending = true;
      round.push({ usage, bucket });
    }
    for (const bucket of this.owedBuckets.values()) {
      if (bucket.sending) continue;
      bucket.sending = true;
      round.push({ usage: undefined, bucket });
    }
    let failed = 0;
    let lastFailure: unknown;
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < round.length) {
        const call = round[next++] as ChargeBack;
        try {
          await this.settle(call);
        } catch (error) {
          if (unreachable(error)) {
            failed++;
            lastFailure = error;
          } else this.ctx.listener.fault?.(error);
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(CHARGE_BACKS_IN_FLIGHT, round.length) }, worker));
    if (failed > 0) {
      this.retryAt = performance.now() + this.ctx.calls.timeoutMs;
      const message = `Redis is unavailable: ${failed} of ${round.length} charge-back(s) of what was admitted under 'local' failed; they stay owed and are sent again when Redis answers`;
      this.ctx.listener.fault?.(new TaskvalveError(ErrorCode.STORE_UNAVAILABLE, message, { cause: lastFailure }));
    }
  }

  /**
   * Sends one charge-back, then takes the units it carried off what is owed (units owed
   * meanwhile stay). When Redis was unreachable everything stays owed; a refusal that no retry
   * can change (a user's record of another layout) drops the units, and is thrown to be told.
   */
  private async settle(call: ChargeBack): Promise<void> {
    const usageUnits = call.usage?.units ?? 0;
    const bucketUnits = call.bucket?.units ?? 0;
    let refused: unknown;
    try {
      await this.send(call, usageUnits, bucketUnits);
    } catch (error) {
      if (unreachable(error)) throw error;
      refused = error;
    } finally {
      if (call.usage !== undefined) call.usage.sending = false;
      if (call.bucket !== undefined) call.bucket.sending = false;
    }
    const usage = call.usage;
    if (usage !== undefined) {
      usage.units = Math.max(0, usage.units - usageUnits);
      if (usage.units === 0 && this.usage.get(usage.userId) === usage) this.usage.delete(usage.userId);
    }
    const bucket = call.bucket;
    if (bucket !== undefined) {
      bucket.units -= bucketUnits;
      if (bucket.units <= 0 && this.owedBuckets.get(bucket.key) === bucket) this.owedBuckets.delete(bucket.key);
    }
    if (refused !== undefined) throw refused;
  }

  /**
   * The one place a charge-back is sent (charge_back.lua): `usageUnits` of the user's usage and
   * `bucketUnits` of its bucket, in one call, at most once (ops.ts): a call whose outcome is
   * unknown is taken back if it applied (mode 'undo'), so that sending the units again in a
   * later round never charges them twice.
   */
  private send(call: ChargeBack, usageUnits: number, bucketUnits: number): Promise<Reply> {
    const { ops, clock } = this.ctx;
    const { usage, bucket } = call;
    const keys: string[] = [];
    if (usage !== undefined) keys.push(usage.user);
    let kind = '';
    if (bucket !== undefined) {
      kind = bucket.own ? 'h' : 's';
      if (keys[0] !== bucket.key) keys.push(bucket.key);
    }
    const ageUs = bucket === undefined ? 0 : Math.max(0, Math.floor(clock.localUs() - bucket.sinceUs));
    return ops.write(scripts.chargeBack, keys, [
      usageUnits,
      usage?.period ?? 0,
      usage?.periodMs ?? 0,
      kind,
      bucket?.d ?? 0,
      bucket?.T ?? 0,
      bucketUnits,
      ageUs,
      bucket?.tau ?? 0,
    ], 'undo');
  }
}
