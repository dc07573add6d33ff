/**
 * What this process remembers of each user for the RedisStore: the user's key, and the standing
 * last seen (profile, usage, quota in force, usage period, whether the subscription was usable),
 * which the outage policies decide on. A limiter handle holds its user's entry; the store keeps
 * the most recently answered users' entries too (bounded), so that a user whose handle was
 * dropped from the manager's cache is still known.
 *
 * Every change this process makes to a user's subscription (a deletion included) makes that
 * user's entries forget what they saw, and an answer to a call that began before the change is
 * not learned from (it may predate the change): the entry learns again from the next answer to a
 * call begun after it. A remembered entry forgets at once. An entry only a handle holds (never
 * answered, or no longer remembered) catches up from the changes made since it last looked;
 * those are bounded, and when they were cleared the entry forgets what it may have missed.
 */
import type { Profile } from '../../profile.js';
import type { UserSlot } from '../store.js';
import { Recent } from '../../util/recent.js';
import type { Keys } from './keys.js';

/**
 * Users whose subscription this process changed (or deleted) kept at most for the entries only a
 * handle holds. Past it the record is cleared, and those entries forget what they may have missed.
 */
const MAX_MARKED = 10_000;

/**
 * Users are spread over this many groups (by a hash of their key) to tell, in one comparison
 * per call, whether a deletion or subscription change may concern an entry (see Handles.ref).
 */
const GROUPS = 4096;

/** A user key's group: FNV-1a over its UTF-16 units, folded to GROUPS. */
function groupOf(user: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < user.length; i++) h = Math.imul(h ^ user.charCodeAt(i), 0x01000193);
  return (h >>> 0) % GROUPS;
}

/**
 * The subscription changes this process made: by user key, the count when the user's last one
 * was made, for the entries only a handle holds. Bounded: past MAX_MARKED it is cleared, and an
 * entry up to date only before then may have missed one.
 */
class ChangeRecord {
  private readonly at = new Map<string, number>();
  /** The count when the record was last cleared (0: never). */
  clearedAt = 0;

  add(user: string, count: number): void {
    if (this.at.size >= MAX_MARKED) {
      this.at.clear();
      this.clearedAt = count;
    }
    this.at.set(user, count);
  }

  /** Whether an entry of `user` up to date at count `seen` may have missed a change. */
  missed(user: string, seen: number): boolean {
    return seen < this.clearedAt || (this.at.get(user) ?? 0) > seen;
  }
}

/** What this process knows of one user: its key, and the standing of the latest answer. */
export interface Ref {
  owner: Handles;
  user: string;
  profile: Profile | undefined;
  /** From the latest answer: usage, and whether the subscription was usable (for outages). */
  usage: number;
  usable: boolean;
  /** From the latest answer: the quota limit in force (-1: none), and the usage period's token. */
  quota: number;
  period: number;
  /** The count of subscription changes when the entry was last known to be up to date with them. */
  seen: number;
  /**
   * The count of changes when the entry last forgot what it saw for a change of its user: an
   * answer to a call that began before (see Handles.learns) is not learned from.
   */
  forgotAt: number;
  /** The user's group (see GROUPS). */
  group: number;
  /** The remembered users' turn the entry was last set in (-1: not remembered; see Recent.turn). */
  turn: number;
}

/** The entries of one store: held by limiter handles, the latest answered remembered; and the changes they catch up with. */
export class Handles {
  /** The subscription changes this process made (deletions included), counted. */
  private marks = 0;
  /** By user key, the count when the last change of the user was made (bounded), for the entries only a handle holds. */
  private readonly changes = new ChangeRecord();
  /** Per group of users, the count when the last subscription change in it was made. */
  private readonly groupMarks = new Float64Array(GROUPS);
  /** The users answered most recently, by key: at most `max`, and at least the `max / 2` most recent. */
  private readonly remembered: Recent<string, Ref>;

  /** `max`: how many users' standing the store remembers beyond the handles that hold theirs. */
  constructor(
    private readonly keys: Keys,
    max: number,
  ) {
    // The entries of a generation dropped were told every change until now: up to date, they
    // catch up on their own from here. (Those set again since are remembered still; those
    // released before are caught up from when they were.)
    this.remembered = new Recent(max, (generation, turn) => {
      for (const ref of generation.values()) if (ref.turn === turn) ref.seen = this.marks;
    });
  }

  /**
   * The user's entry for this store: the one `slot` holds, else the remembered one, else a new
   * one (remembered from its first answer on); kept in `slot`, up to date with the changes.
   */
  ref(userId: string, slot: UserSlot | undefined): Ref {
    const held = slot?.ref as Ref | undefined;
    if (held !== undefined && held.owner === this) {
      this.upToDate(held);
      return held;
    }
    const user = this.keys.user(userId);
    let ref = this.remembered.get(user);
    if (ref === undefined) {
      ref = { owner: this, user, profile: undefined, usage: 0, usable: false, quota: -1, period: 0, seen: this.marks, forgotAt: 0, group: groupOf(user), turn: -1 };
    }
    if (slot !== undefined) slot.ref = ref;
    return ref;
  }

  /**
   * Whether a subscription change made since the entry was last up to date may concern it: one in
   * its group of users, or the record's clearing. (Most changes concern other users: the entry's
   * own are looked up only then.)
   */
  private stale(ref: Ref): boolean {
    const seen = ref.seen;
    return seen !== this.marks && ((this.groupMarks[ref.group] as number) > seen || seen < this.changes.clearedAt);
  }

  /** The count of changes so far: a call notes it as it begins (see learns). */
  get now(): number {
    return this.marks;
  }

  /**
   * Whether the answer to a call of the entry's user that began at `began` (see now) may teach
   * the entry what it says: not when the entry forgot what it saw for a change made since (the
   * answer may predate the change).
   */
  learns(ref: Ref, began: number): boolean {
    this.upToDate(ref);
    return ref.forgotAt <= began;
  }

  /** An entry not remembered catches up with the changes it may have missed (a remembered one is told of them). */
  private upToDate(ref: Ref): void {
    if (this.stale(ref) && !this.remembered.holds(ref.turn)) this.catchUp(ref);
  }

  /**
   * The entry's user was just answered, to a call that began at `began`: keep the entry among the
   * remembered users (the least recently answered go first, half the bound at a time), and say
   * whether the answer may teach it what it says (as learns).
   */
  answered(ref: Ref, began: number): boolean {
    const remembered = this.remembered;
    // Set in the current turn: remembered, so told of every change directly.
    if (ref.turn !== remembered.turn) {
      this.upToDate(ref);
      // Another entry of the same user (a handle kept one while it was not remembered) gives way:
      // up to date until now, it catches up on its own from here.
      const other = remembered.get(ref.user);
      if (other !== undefined && other !== ref) this.release(other);
      remembered.set(ref.user, ref);
      ref.turn = remembered.turn;
    }
    return ref.forgotAt <= began;
  }

  /** The user with key `user` was deleted: entries forget what they knew of it, and it is no longer remembered. */
  forget(user: string): void {
    const ref = this.subscriptionChanged(user);
    if (ref === undefined) return;
    this.remembered.delete(user);
    this.release(ref);
  }

  /**
   * This process changed the subscription of the user with key `user` (subscribed it, moved it to
   * another profile, canceled or extended it, set its quota, reset its usage, deleted it), or
   * may have (the call failed): entries forget what they saw, so the outage policies decide
   * nothing for the user until an admission begun after the change answers, and the next call
   * that needs the profile reads it again (a rate turn included, which takes from the bucket of
   * the profile it knows). Answers the remembered entry, if any.
   */
  subscriptionChanged(user: string): Ref | undefined {
    this.marks++;
    this.changes.add(user, this.marks);
    this.groupMarks[groupOf(user)] = this.marks;
    const ref = this.remembered.get(user);
    if (ref !== undefined) this.unlearn(ref);
    return ref;
  }

  /** A remembered entry no longer is: up to date now, it catches up on its own from here. */
  private release(ref: Ref): void {
    ref.turn = -1;
    ref.seen = this.marks;
  }

  /** An entry whose user this process changed since it was last up to date forgets what it saw. */
  private catchUp(ref: Ref): void {
    if (this.changes.missed(ref.user, ref.seen)) this.unlearn(ref);
    ref.seen = this.marks;
  }

  /** The entry forgets all it saw, and answers to calls begun until now (see learns). */
  private unlearn(ref: Ref): void {
    ref.profile = undefined;
    ref.usage = 0;
    ref.usable = false;
    ref.quota = -1;
    ref.period = 0;
    ref.forgotAt = this.marks;
  }
}
