/**
 * Subscriptions in Redis: create or replace, read, change (extend, cancel, change profile, reset
 * usage, set the quota), delete; and a subscription script's reply read into a Subscription.
 */
import { invalidArgument } from '../../errors.js';
import type { Profile } from '../../profile.js';
import type { SubscribeInput, Subscription } from '../store.js';
import { notThisCall, type Reply } from './calls.js';
import { STATUS } from './codes.js';
import type { Context, Forget } from './context.js';
import type { Denials } from './denials.js';
import type { Ended } from './ended.js';
import { scripts } from './scripts.js';

/** The rate a user's own bucket is carried over to (d, T), or '' for a profile with a shared bucket (see gcra_carry in gcra.lua). */
function ownRate(profile: Profile): (string | number)[] {
  return profile.shared === undefined ? [profile.rate.d, profile.rate.T] : ['', ''];
}

/** A change mutate.lua makes to an existing subscription. */
export type Change = 'extend' | 'cancel' | 'change' | 'reset' | 'quota';

export class Subscriptions {
  /** `forget`: what a deletion drops in this process. */
  constructor(
    private readonly ctx: Context,
    private readonly ended: Ended,
    private readonly denials: Denials,
    private readonly forget: Forget,
  ) {}

  /** A subscription script's reply (see user_reply in subscription.lua). */
  parse(userId: string, r: Reply): Subscription {
    const [p, s, sa, ea, n, q, ps, , expiredNow, nowMs] = r as [string, number, string, string, string, string, string, string, number, number];
    const profile = this.ctx.profiles.get(p);
    if (expiredNow === 1) this.ctx.listener.expired(userId, p);
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

  /** Creates or replaces the user's subscription. */
  async subscribe(userId: string, profile: Profile, input: SubscribeInput): Promise<Subscription> {
    const { keys, ops } = this.ctx;
    const user = keys.user(userId);
    // What this process remembers of the user's refusals goes (their quota figures, and their
    // own bucket's refusal); a shared bucket's refusal stands: a subscription does not change it.
    this.denials.delete(user);
    const r = await ops.write(
      scripts.subscribe,
      [user, this.ended.of(user)],
      [profile.name, input.startsAt ?? '', input.endsAt === Infinity ? '' : (input.endsAt ?? ''), input.durationMs ?? '', input.quota ?? '', input.resetUsage ? 1 : 0, userId, ...ownRate(profile)],
      'keep',
    );
    if (r[0] === 'DATES') {
      throw invalidArgument(`endsAt (${new Date(Number(r[2])).toISOString()}) must be after startsAt (${new Date(Number(r[1])).toISOString()})`);
    }
    return this.parse(userId, r);
  }

  async get(userId: string): Promise<Subscription | undefined> {
    const r = await this.read([this.ctx.keys.user(userId)], [this.ctx.clock.arg()]);
    return r === null ? undefined : this.parse(userId, r);
  }

  /**
   * read.lua on `keys`: its reply without the user's key it ends with, null when there is no
   * subscription. A reply that does not end with the key is another call's (a reply was lost on
   * a connection that stayed open): the read fails.
   */
  async read(keys: string[], args: (string | number)[]): Promise<Reply | null> {
    const r = await this.ctx.calls.run(scripts.read, keys, args);
    if (!Array.isArray(r) || r[r.length - 1] !== keys[0]) throw notThisCall('read');
    r.pop();
    return r.length === 0 ? null : r;
  }

  /** The profile a user's record names, read once per handle (then kept up to date by admit's replies); null: no record. */
  async profileOf(userId: string, user: string): Promise<Profile | undefined | null> {
    const r = await this.read([user], [this.ctx.clock.arg()]);
    if (r === null) return null;
    // Read through parse(): the read may record that the subscription ended (the event fires once).
    return this.ctx.profiles.get(this.parse(userId, r).profileName);
  }

  /** One change to an existing subscription (see mutate.lua); undefined when there is none. `profile`: the one a 'change' moves to. */
  async change(userId: string, op: Change, value: string | number, profile?: Profile): Promise<Subscription | undefined> {
    const { keys, ops } = this.ctx;
    const user = keys.user(userId);
    this.denials.delete(user); // a change of profile, quota or status: the user's refusals are decided anew
    const r = await ops.write(scripts.mutate, [user, this.ended.of(user)], [op, value, userId, ...(profile === undefined ? [] : ownRate(profile))], 'keep');
    return r.length === 0 ? undefined : this.parse(userId, r);
  }

  /** Deletes a user's record; the deleted subscription's profile name, undefined if there was none. */
  async delete(userId: string): Promise<string | undefined> {
    const { keys, ops } = this.ctx;
    const user = keys.user(userId);
    const r = await ops.write(scripts.delete, [user, this.ended.of(user)], [userId], 'keep');
    this.forget(userId, user);
    return typeof r[0] === 'string' ? r[0] : undefined;
  }
}
