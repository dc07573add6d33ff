/**
 * Rate turns in batches. The waiters of one bucket, in their line's order, go in one script
 * call (take_turns.lua), so that a rate line drains at the bucket's rate rather than at one
 * waiter per round trip. A lone turn (a retry's) gathers with the others of its placement unit
 * that arrive while one is in flight, into one take.lua call (gather.ts).
 */
import type { Profile } from '../../profile.js';
import type { RateReceipt, TurnRequest, TurnsTaken, UserSlot } from '../store.js';
import type { Reply } from './calls.js';
import type { Context } from './context.js';
import { Gather } from './gather.js';
import type { Handles } from './handles.js';
import { tagOf } from './keys.js';
import type { Outage } from './outage.js';
import { scripts } from './scripts.js';
import type { Subscriptions } from './subscriptions.js';

/** Numbers take.lua answers per turn. */
const PER_TURN = 7;

/** A lone turn on its way to Redis: its bucket, and its six arguments of take.lua. */
interface Turn {
  bucket: string;
  args: (string | number)[];
}

/**
 * take.lua's reply for `n` turns: six numbers per turn (taken, wait ms, remaining, reset ms,
 * receipt µs or -1, receipt ticks), then the call's sequence number. Undefined when the reply
 * is not this call's (see ops.ts).
 */
export function parseTakes(reply: Reply, n: number, seq: number): number[][] | undefined {
  if (!Array.isArray(reply) || reply.length !== n * PER_TURN + 1 || Number(reply[n * PER_TURN]) !== seq) return undefined;
  const out: number[][] = new Array(n);
  for (let i = 0; i < n; i++) out[i] = (reply.slice(i * PER_TURN, (i + 1) * PER_TURN) as unknown[]).map(Number);
  return out;
}

export class Turns {
  /** Lone turns, per placement unit. */
  private readonly lone = new Gather<number, Turn, number[]>((_, turns) => this.send(turns));

  constructor(
    private readonly ctx: Context,
    private readonly handles: Handles,
    private readonly outage: Outage,
    private readonly subscriptions: Subscriptions,
  ) {}

  /**
   * Takes the waiters' units in order while they conform. The bucket and its rate are those of
   * the first waiter's profile; the call carries the waiters after it that this process knows
   * to be on that bucket with a cost that fits, up to the first that is not (it is asked for in
   * a later call: the answer then says `waitMs` 0).
   */
  async take(waiters: readonly TurnRequest[]): Promise<TurnsTaken> {
    const first = waiters[0];
    if (first === undefined) return { taken: 0, waitMs: 0, receipts: [] };
    const ref = this.handles.ref(first.userId, first.slot);
    const began = this.handles.now;
    const profile = ref.profile ?? (await this.subscriptions.profileOf(first.userId, ref.user));
    if (!profile) {
      // No such user any more: nothing to limit for the user's waiters (as take() answers).
      let n = 1;
      while (n < waiters.length && (waiters[n] as TurnRequest).userId === first.userId) n++;
      return { taken: n, waitMs: 0, receipts: new Array<undefined>(n).fill(undefined) };
    }
    // Unless this process changed the subscription meanwhile (the read may predate the change).
    if (this.handles.learns(ref, began)) ref.profile = profile;
    const rate = profile.rate;
    if (first.cost > rate.burst) return { taken: 0, waitMs: Infinity, receipts: [] };
    const costs = [first.cost];
    for (let i = 1; i < waiters.length; i++) {
      const w = waiters[i] as TurnRequest;
      if (!this.follows(w, first.userId, profile)) break;
      costs.push(w.cost);
    }
    const shared = profile.shared !== undefined;
    const bucket = shared ? this.ctx.keys.shared(profile.shared as string) : ref.user;
    let r: Reply;
    try {
      r = await this.ctx.ops.write(scripts.takeTurns, [bucket], [shared ? 's' : 'h', rate.d, rate.T, rate.tau, ...costs], 'undo');
    } catch (error) {
      return this.unreachable(error, first.userId, bucket, profile, costs);
    }
    const taken = Number(r[0]);
    const receipts: TurnsTaken['receipts'] = new Array<undefined>(taken).fill(undefined);
    for (let i = 0; i < taken && r[3 * i + 2] !== undefined; i++) receipts[i] = { tat: Number(r[3 * i + 2]), epoch: Number(r[3 * i + 3]), refunds: Number(r[3 * i + 4]) };
    const waitMs = taken < costs.length ? Math.max(1, Number(r[1])) : 0;
    return { taken, waitMs, receipts };
  }

  /** A lone rate turn (a retry's): 0 when taken, else ms to wait (Infinity: never). */
  async one(userId: string, cost: number, slot: UserSlot | undefined, receipt: { value: RateReceipt | undefined } | undefined): Promise<number> {
    const ref = this.handles.ref(userId, slot);
    const began = this.handles.now;
    const profile = ref.profile ?? (await this.subscriptions.profileOf(userId, ref.user));
    if (!profile) return 0;
    if (this.handles.learns(ref, began)) ref.profile = profile;
    const rate = profile.rate;
    if (cost > rate.burst) return Infinity;
    const shared = profile.shared !== undefined;
    const bucket = shared ? this.ctx.keys.shared(profile.shared as string) : ref.user;
    let r: number[];
    try {
      r = await this.lone.add(this.ctx.calls.unitOf(tagOf(bucket)), { bucket, args: [shared ? 's' : 'h', rate.d, rate.T, rate.tau, cost, 0] });
    } catch (error) {
      return this.outage.take(error, userId, bucket, !shared, profile, cost);
    }
    if (this.outage.active) this.outage.answered(bucket);
    if (r[0] !== 1) return Math.max(1, r[1] as number);
    // The bucket's TAT right after, as whole µs and leftover ticks, and its refunds so far: what refundRate takes back.
    if (receipt !== undefined && (r[4] as number) >= 0) receipt.value = { tat: r[4] as number, epoch: r[5] as number, refunds: r[6] as number };
    return 0;
  }

  /** One take.lua call for the lone turns of one placement unit, applied together at most once. */
  private async send(turns: Turn[]): Promise<number[][]> {
    const keys: string[] = [];
    const args: (string | number)[] = ['take'];
    for (const t of turns) {
      keys.push(t.bucket);
      for (const a of t.args) args.push(a);
    }
    let out: number[][] | undefined;
    const fits = (reply: Reply, seq: number): boolean => (out = parseTakes(reply, turns.length, seq)) !== undefined;
    await this.ctx.ops.write(scripts.take, keys, args, 'undo', false, fits);
    return out as number[][];
  }

  /** Whether a waiter after the first is known here to take from the same bucket, at a cost that fits. */
  private follows(w: TurnRequest, userId: string, profile: Profile): boolean {
    if (w.cost > profile.rate.burst) return false;
    if (profile.shared === undefined) return w.userId === userId;
    // Profiles naming one shared bucket give it one rate (checked when they are registered).
    return this.handles.ref(w.userId, w.slot).profile?.shared === profile.shared;
  }

  /** The call failed: by the outage policy, each waiter in order as a lone take would be answered. */
  private unreachable(error: unknown, userId: string, bucket: string, profile: Profile, costs: number[]): TurnsTaken {
    const receipts: undefined[] = [];
    for (const cost of costs) {
      const waitMs = this.outage.take(error, userId, bucket, profile.shared === undefined, profile, cost);
      if (waitMs > 0) return { taken: receipts.length, waitMs, receipts };
      receipts.push(undefined);
    }
    return { taken: receipts.length, waitMs: 0, receipts };
  }
}
