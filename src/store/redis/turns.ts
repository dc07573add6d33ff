/**
 * Rate turns in batches: the waiters of one bucket, in their line's order, in one script call
 * (take_turns.lua), so that a rate line drains at the bucket's rate rather than at one waiter
 * per round trip.
 */
import type { Profile } from '../../profile.js';
import type { TurnRequest, TurnsTaken } from '../store.js';
import type { Reply } from './calls.js';
import type { Context } from './context.js';
import type { Handles } from './handles.js';
import type { Outage } from './outage.js';
import { scripts } from './scripts.js';
import type { Subscriptions } from './subscriptions.js';

export class Turns {
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
    const profile = ref.profile ?? (await this.subscriptions.profileOf(first.userId, ref.user));
    if (!profile) {
      // No such user any more: nothing to limit for the user's waiters (as take() answers).
      let n = 1;
      while (n < waiters.length && (waiters[n] as TurnRequest).userId === first.userId) n++;
      return { taken: n, waitMs: 0, receipts: new Array<undefined>(n).fill(undefined) };
    }
    ref.profile = profile;
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
    for (let i = 0; i < taken && r[2 * i + 2] !== undefined; i++) receipts[i] = { tat: Number(r[2 * i + 2]), epoch: Number(r[2 * i + 3]) };
    const waitMs = taken < costs.length ? Math.max(1, Number(r[1])) : 0;
    return { taken, waitMs, receipts };
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
