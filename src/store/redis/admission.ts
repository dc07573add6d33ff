/**
 * Admissions on Redis: admit (one script call through the batches, or the reserve / take /
 * refund protocol when the bucket lives in another slot), the refunds of
 * quota and rate units, and peek. A refusal this process remembers is answered without a round
 * trip; a call that fails for want of Redis goes to the outage policy.
 */
import { TaskvalveError, ErrorCode } from '../../errors.js';
import type { Profile } from '../../profile.js';
import { AdmitMode, Verdict, blankResult, type AdmitResult, type RateReceipt, type UserSlot } from '../store.js';
import type { Answer, Batches } from './batch.js';
import { notThisCall, storeUnavailable, type Reply } from './calls.js';
import { PROFILE_MISMATCH, RESERVED, STATUS, UNKNOWN_RECORD } from './codes.js';
import { unknownRecord } from './record.js';
import type { Context } from './context.js';
import type { Denials } from './denials.js';
import type { Handles, Ref } from './handles.js';
import type { Outage } from './outage.js';
import type { Refunds } from './refunds.js';
import { scripts } from './scripts.js';
import { small } from '../../util/small.js';
import type { Subscriptions } from './subscriptions.js';
import { parseTakes } from './turns.js';

/** The key under which this process counts the units waiting on a user's bucket. */
function waitKey(userId: string, profile: Profile): string {
  return profile.shared === undefined ? `d:${userId}` : `s:${profile.shared}`;
}

/** Units this process's waiting tasks hold on a user's bucket. */
function waitingAhead(waiting: ReadonlyMap<string, number>, userId: string, profile: Profile): number {
  return waiting.size === 0 ? 0 : (waiting.get(waitKey(userId, profile)) ?? 0);
}

/** One admission's question, as its script calls (up to three, while the profile changes under it) see it. */
class Asking {
  constructor(
    readonly userId: string,
    readonly ref: Ref,
    readonly cost: number,
    readonly mode: AdmitMode,
    readonly waiting: ReadonlyMap<string, number>,
    readonly out: AdmitResult,
    /** When it was asked (this process's µs): a refusal learned from it dates from then. */
    readonly sentUs: number,
    /** The count of subscription changes when it was asked: its answer may predate a later one (Handles.learns). */
    readonly began: number,
  ) {}
}

export class Admission {
  constructor(
    private readonly ctx: Context,
    private readonly handles: Handles,
    private readonly batches: Batches,
    private readonly denials: Denials,
    private readonly outage: Outage,
    private readonly subscriptions: Subscriptions,
    private readonly refunds: Refunds,
  ) {}

  admit(userId: string, cost: number, mode: AdmitMode, waiting: ReadonlyMap<string, number>, slot: UserSlot | undefined): Promise<AdmitResult> {
    const ref = this.handles.ref(userId, slot);
    const out = blankResult();
    // The profile this handle saw last; unknown at first: the script resolves it by name.
    const profile = ref.profile;
    const sentUs = this.ctx.clock.localUs();
    if (profile !== undefined && cost <= profile.rate.burst && !(mode === AdmitMode.PROFILE && profile.onLimit === 'wait')) {
      const refused = this.denials.refusal(out, this.bucketOf(ref, profile), ref.user, profile, cost, sentUs, ref.usage);
      if (refused !== undefined) return Promise.resolve(refused);
    }
    return this.attempt(new Asking(userId, ref, cost, mode, waiting, out, sentUs, this.handles.now), profile, 0);
  }

  /**
   * One script call for an admission (a callback on its batch's answers, not an async function:
   * a decision allocates less without an async frame of its own and its await).
   */
  private attempt(a: Asking, profile: Profile | undefined, tries: number): Promise<AdmitResult> {
    let answers: Promise<Answer[]>;
    try {
      answers = this.decide(a.userId, a.ref, profile, a.cost, a.mode, a.waiting);
    } catch (error) {
      // Failed before any call: the same way as a call that failed.
      answers = Promise.reject(error);
    }
    const at = this.at;
    const answer = (all: Answer[]): AdmitResult | Promise<AdmitResult> => this.answered(a, all[at] as Answer, tries);
    // A failed call's error passes to the caller as it is, without a handler that would only
    // throw it again, unless the outage policy decides.
    if (!this.outage.decides) return answers.then(answer);
    return answers.then(answer, (error: unknown) => this.unanswered(a, error));
  }

  /**
   * A call that failed: the outage policy decides (or the error is the caller's), on the standing
   * the entry holds now and the profile it learned with it, not the profile the call began with:
   * an answer since, to a call begun after a change here, may have taught the entry another one.
   */
  private unanswered(a: Asking, error: unknown): AdmitResult {
    const profile = a.ref.profile;
    return this.outage.admit(error, a.out, a.userId, a.ref, profile, a.cost, profile === undefined ? a.ref.user : this.bucketOf(a.ref, profile));
  }

  /** The script's answer to an admission. */
  private answered(a: Asking, answer: Answer, tries: number): AdmitResult | Promise<AdmitResult> {
    const { ref, out, userId } = a;
    if (this.outage.active) this.outage.answered(ref.user);
    const r = answer.reply;
    if (r[0] === Verdict.NOT_FOUND) {
      ref.usable = false;
      return this.notFound(out);
    }
    if (r[0] === UNKNOWN_RECORD) throw unknownRecord(ref.user, r[1] as number, r[2] as number);
    if (r[0] === PROFILE_MISMATCH) {
      const current = this.ctx.profiles.get(String(r[11]));
      if (current === undefined) throw this.unknownProfile(userId);
      if (tries >= 2) throw storeUnavailable(new Error(`the profile of user ${userId} keeps changing`));
      return this.attempt(a, current, tries + 1);
    }
    const profile = answer.profile ?? this.ctx.profiles.get(String(r[11]));
    if (profile === undefined) throw this.unknownProfile(userId);
    this.fill(out, userId, profile, r);
    // The standing the outage policies decide on, unless this process changed the subscription
    // since the call began: the answer may predate the change.
    if (this.handles.answered(ref, a.began)) {
      ref.profile = profile;
      ref.usage = out.usage;
      ref.usable = out.verdict <= Verdict.QUOTA_EXCEEDED;
      ref.quota = out.quotaLimit ?? -1;
      ref.period = out.period;
    }
    if (profile.shared !== undefined && this.outage.active) this.outage.answered(this.bucketOf(ref, profile));
    if (out.verdict === Verdict.RATE_LIMITED) {
      // admit.lua tells the exact µs (-1 from the protocol across slots: whole ms only).
      const held = waitingAhead(a.waiting, userId, profile);
      this.denials.learn(this.bucketOf(ref, profile), ref.user, profile, a.cost, a.sentUs, out, { waitUs: r[9] as number, fullUs: r[10] as number, waiting: held });
    }
    return out;
  }

  /** Gives back rate units, as far as the bucket still holds them (refunds.ts). */
  async refundRate(userId: string, cost: number, receipt: RateReceipt, slot: UserSlot | undefined): Promise<void> {
    // With the user's handle the profile is known and the call goes at once (so that it lands
    // before any later call on this connection).
    const ref = this.handles.ref(userId, slot);
    const profile = ref.profile ?? (await this.subscriptions.profileOf(userId, ref.user));
    if (!profile) return;
    const rate = profile.rate;
    const bucket = this.bucketOf(ref, profile);
    // A refund that gets no answer is not lost: it is sent again until it has applied once (ops.ts).
    await this.refunds.rate(bucket, profile.shared === undefined, rate, cost, receipt);
    // A refusal remembered for this bucket may no longer hold.
    this.denials.delete(bucket);
  }

  /**
   * Gives back quota charged for a task that never started. A negative period: admitted without
   * Redis, -1 under 'fail-open' (nothing was charged), -2 - token under 'local' (what is still
   * owed is given back here, the rest in Redis under that token).
   */
  async refund(userId: string, cost: number, period: number): Promise<void> {
    if (period === -1) return;
    if (period < 0) {
      period = -2 - period;
      cost = await this.outage.refund(userId, cost, period);
      if (cost === 0) return;
    }
    // Sent before any later call (refunds.ts): the generation token alone decides; a refund
    // into a period that has since ended changes nothing visible, as that usage resets at the
    // next decision. A refund that gets no answer is not lost: it is sent again until it has
    // applied once (ops.ts).
    await this.refunds.quota(this.ctx.keys.user(userId), cost, period, 0);
  }

  /** What check(1) would decide on the rate now, without charging anything. */
  async peek(userId: string, waiting: ReadonlyMap<string, number> | undefined): Promise<AdmitResult> {
    const { calls, clock } = this.ctx;
    const ref = this.handles.ref(userId, undefined);
    const out = blankResult();
    const profile = await this.subscriptions.profileOf(userId, ref.user);
    if (profile === null) return this.notFound(out);
    if (profile === undefined) throw this.unknownProfile(userId);
    const rate = profile.rate;
    const bucket = this.bucketOf(ref, profile);
    let r: Reply | null;
    let tail: Reply;
    if (profile.shared === undefined || calls.together(ref.user, bucket)) {
      const keys = profile.shared === undefined ? [ref.user] : [ref.user, bucket];
      r = await this.subscriptions.read(keys, [clock.arg(), rate.d, rate.T, rate.tau]);
      if (r === null) return this.notFound(out);
      tail = r.slice(10);
    } else {
      r = await this.subscriptions.read([ref.user], [clock.arg()]);
      if (r === null) return this.notFound(out);
      // A peek has sequence number 0, which its reply ends with (take.lua).
      const t = parseTakes(await calls.run(scripts.take, [bucket], [0, 0, 0, clock.arg(), 'peek', 's', rate.d, rate.T, rate.tau, 1, 0]), 1, 0)?.[0];
      if (t === undefined) throw notThisCall('peek');
      tail = [t[2] ?? 0, t[0] === 1 ? 0 : (t[1] ?? 0), t[3] ?? 0];
    }
    const sub = this.subscriptions.parse(userId, r);
    let remaining = Number(tail[0]);
    let retryAfterMs = Number(tail[1]);
    let resetAfterMs = Number(tail[2]);
    const ahead = waiting === undefined || waiting.size === 0 ? 0 : (waiting.get(waitKey(userId, profile)) ?? 0);
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

  /** The place of decide()'s answer among the answers it gave: read it right after the call. */
  private at = 0;

  /**
   * One admission: one script call, or the reserve / take / refund protocol across slots. Gives
   * the answers of the call that carried it, its own at `this.at` (most decisions share their
   * batch's promise, see Batches.add).
   */
  private decide(userId: string, ref: Ref, profile: Profile | undefined, cost: number, mode: AdmitMode, waiting: ReadonlyMap<string, number>): Promise<Answer[]> {
    const flags = mode === AdmitMode.PROFILE ? 1 : 0;
    const batches = this.batches;
    let answers: Promise<Answer[]>;
    if (profile === undefined) {
      answers = batches.add(ref.user, ref.user, undefined, cost, 0, flags);
    } else {
      const bucket = this.bucketOf(ref, profile);
      const ahead = waitingAhead(waiting, userId, profile);
      if (!this.ctx.calls.together(ref.user, bucket)) {
        this.at = 0;
        return this.across(ref, profile, bucket, cost, ahead, flags).then((answer) => [answer]);
      }
      answers = batches.add(ref.user, bucket, profile, cost, ahead, flags);
    }
    this.at = batches.at;
    return answers;
  }

  /**
   * An admission whose bucket lives in another slot than the user's record: reserve the quota,
   * then take from the bucket, and give the reservation back if the bucket says no
   * (docs/redis.md).
   */
  private async across(ref: Ref, profile: Profile, bucket: string, cost: number, ahead: number, flags: number): Promise<Answer> {
    const rate = profile.rate;
    const batches = this.batches;
    const reservedAnswers = batches.add(ref.user, ref.user, profile, cost, ahead, flags | 2);
    const reservedAt = batches.at;
    const reserved = (await reservedAnswers)[reservedAt] as Answer;
    if (reserved.reply[0] !== RESERVED) return reserved;
    const [, usage, period, , , , , periodLeft, limit] = reserved.reply as [number, number, number, number, number, number, number, number, number];
    let taken: number[] | undefined;
    try {
      const fits = (reply: Reply, seq: number): boolean => (taken = parseTakes(reply, 1, seq)?.[0]) !== undefined;
      await this.ctx.ops.write(scripts.take, [bucket], ['take', 's', rate.d, rate.T, rate.tau, cost, ahead], 'undo', false, fits);
    } catch (error) {
      await this.refundReserved(ref, cost, period);
      throw error;
    }
    const [ok, waitMs, remaining, resetMs, receiptMs, receiptTicks, receiptRefunds] = taken as [number, number, number, number, number, number, number];
    if (ok === 1) return { reply: [Verdict.ALLOWED, usage, period, remaining, 0, resetMs, 0, periodLeft, limit, receiptMs, receiptTicks, receiptRefunds], profile };
    const queue = flags === 1 && profile.onLimit === 'wait';
    if (queue && (profile.maxWaitMs === Infinity || waitMs <= profile.maxWaitMs)) {
      return { reply: [Verdict.QUEUED, usage, period, remaining, waitMs, resetMs, 0, periodLeft, limit, -1, 0, 0], profile };
    }
    await this.refundReserved(ref, cost, period);
    return { reply: [Verdict.RATE_LIMITED, usage - cost, period, remaining, waitMs, resetMs, 0, periodLeft, limit, -1, 0, 0], profile };
  }

  /** Gives a reservation back; a refund that fails is sent again until it lands (ops.ts), so its failure is not the caller's. */
  private async refundReserved(ref: Ref, cost: number, period: number): Promise<void> {
    await this.refunds.quota(ref.user, cost, period, ref.profile?.quotaPeriodMs ?? 0);
  }

  /** Copies a script's reply into the result object. */
  private fill(out: AdmitResult, userId: string, profile: Profile, reply: Reply): AdmitResult {
    // Every field of an admission's answer is a number (the name, at 11, is read elsewhere), a
    // heap number as read from the reply: those that are integers are made small (util/small.ts).
    const r = reply as number[];
    const verdict = small(r[0] as number);
    out.verdict = verdict as Verdict;
    out.profile = profile;
    out.limit = profile.rate.burst;
    out.usage = small(r[1] as number);
    if (verdict <= Verdict.RATE_LIMITED) {
      // Compact: { verdict, usage, period, remaining, retry, reset, profile index, period left,
      // quota limit, receipt ms, receipt ticks, receipt refunds }.
      out.period = r[2] as number;
      out.receiptTat = verdict === Verdict.ALLOWED && r[9] !== undefined ? (r[9] as number) : -1;
      out.receiptEpoch = verdict === Verdict.ALLOWED ? small((r[10] as number | undefined) ?? 0) : 0;
      out.receiptRefunds = verdict === Verdict.ALLOWED ? small((r[11] as number | undefined) ?? 0) : 0;
      out.remaining = small(r[3] as number);
      out.retryAfterMs = small(r[4] as number);
      out.resetAfterMs = small(r[5] as number);
      out.quotaResetAfterMs = small(r[7] as number);
      out.quotaLimit = (r[8] as number) >= 0 ? small(r[8] as number) : null;
      out.status = 'active';
      out.startsAt = 0;
      out.endsAt = Infinity;
    } else {
      out.quotaLimit = (r[2] as number) >= 0 ? small(r[2] as number) : null;
      out.period = r[3] as number;
      out.remaining = small(r[4] as number);
      out.retryAfterMs = small(r[5] as number);
      out.resetAfterMs = small(r[6] as number);
      out.startsAt = r[7] as number;
      out.endsAt = (r[8] as number) >= 0 ? (r[8] as number) : Infinity;
      out.status = STATUS[r[9] as number] ?? 'active';
      if (r[10] === 1) this.ctx.listener.expired(userId, profile.name);
    }
    if (verdict === Verdict.QUEUED) out.bucket = waitKey(userId, profile);
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
    return profile.shared === undefined ? ref.user : this.ctx.keys.shared(profile.shared);
  }
}
