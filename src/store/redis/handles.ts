/**
 * What this process remembers of each user for the RedisStore: the user's key, and the standing
 * last seen (profile, usage, quota in force, usage period, whether the subscription was usable),
 * which the outage policies decide on. A limiter handle holds its user's entry; the store keeps
 * the most recently answered users' entries too (bounded), so that a user whose handle was
 * dropped from the manager's cache is still known.
 *
 * Deletions and other subscription changes this process makes reach every entry of that user by
 * its next call: an entry whose user was deleted forgets what it knew, one whose subscription
 * was changed (its profile, status, dates, quota or usage) forgets the profile, and with it the
 * standing the outage policies would decide on (an answer read in between, to a call begun
 * before the change, included). A remembered entry is marked at once with what it must forget. An entry
 * only a handle holds (never answered, or no longer remembered) catches up from the deletions
 * and changes made since it last looked; those are bounded, and when they were cleared the
 * entry forgets what it may have missed.
 */
import type { Profile } from '../../profile.js';
import type { UserSlot } from '../store.js';
import { Recent } from '../../util/recent.js';
import type { Keys } from './keys.js';

/**
 * Deleted users, and users whose subscription this process changed otherwise, kept at most (each)
 * for the entries only a handle holds. Past it the map is cleared, and those entries forget what
 * they may have missed: all they knew for deletions, the profile for other changes (a new record
 * counts as one: see RedisStore.subscribe).
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
 * Changes of one kind this process made (deletions, or other subscription changes): by user key,
 * the count when the user's last one was made, for the entries only a handle holds. Bounded:
 * past MAX_MARKED it is cleared, and an entry up to date only before then may have missed one.
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
  /** The count of deletions and subscription changes when the entry was last known to be up to date with them. */
  seen: number;
  /** The user's group (see GROUPS). */
  group: number;
  /** The remembered users' turn the entry was last set in (-1: not remembered; see Recent.turn). */
  turn: number;
  /**
   * What the entry must forget on its next call (Forget): a deletion or subscription change this
   * process made while it was remembered. Kept until then, so that an answer read after the
   * change, to a call that began before it, is forgotten too.
   */
  pending: Forget;
}

/** What an entry must forget: nothing, its profile, or all it knew. */
type Forget = 0 | 1 | 2;
const Forget = { NOTHING: 0, PROFILE: 1, ALL: 2 } as const;

/** The entries of one store: held by limiter handles, the latest answered remembered; and the deletions they catch up with. */
export class Handles {
  /**
   * Deletions and subscription changes this process made, and by user key the count when the last of
   * each was made (bounded), for the entries only a handle holds.
   */
  private marks = 0;
  private readonly deleted = new ChangeRecord();
  private readonly changed = new ChangeRecord();
  /** Per group of users, the count when the last deletion or subscription change in it was made. */
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
   * one (remembered from its first answer on); kept in `slot`, up to date with deletions.
   */
  ref(userId: string, slot: UserSlot | undefined): Ref {
    const held = slot?.ref as Ref | undefined;
    if (held !== undefined && held.owner === this) {
      if (held.pending !== Forget.NOTHING) applyPending(held);
      this.upToDate(held);
      return held;
    }
    const user = this.keys.user(userId);
    let ref = this.remembered.get(user);
    if (ref === undefined) {
      ref = { owner: this, user, profile: undefined, usage: 0, usable: false, quota: -1, period: 0, seen: this.marks, group: groupOf(user), turn: -1, pending: Forget.NOTHING };
    } else if (ref.pending !== Forget.NOTHING) applyPending(ref);
    if (slot !== undefined) slot.ref = ref;
    return ref;
  }

  /**
   * Whether a deletion or subscription change made since the entry was last up to date may concern
   * it: one in its group of users, or the maps' clearing. (Most changes concern other users: the
   * entry's own are looked up only then.)
   */
  private stale(ref: Ref): boolean {
    const seen = ref.seen;
    return seen !== this.marks && ((this.groupMarks[ref.group] as number) > seen || seen < this.changed.clearedAt || seen < this.deleted.clearedAt);
  }

  /** An entry not remembered catches up with the changes it may have missed (a remembered one is told of them). */
  private upToDate(ref: Ref): void {
    if (this.stale(ref) && !this.remembered.holds(ref.turn)) this.catchUp(ref);
  }

  /** The entry was just answered: keep it among the remembered users (the least recently answered go first, half the bound at a time). */
  answered(ref: Ref): void {
    const remembered = this.remembered;
    if (ref.turn === remembered.turn) return;
    this.upToDate(ref);
    // Another entry of the same user (a handle kept one while it was not remembered) gives way:
    // up to date until now, it catches up on its own from here.
    const other = remembered.get(ref.user);
    if (other !== undefined && other !== ref) this.release(other);
    remembered.set(ref.user, ref);
    ref.turn = remembered.turn;
  }

  /** The user with key `user` was deleted: entries forget what they knew of it. */
  forget(user: string): void {
    this.mark(this.deleted, user);
    const ref = this.remembered.get(user);
    if (ref === undefined) return;
    ref.pending = Forget.ALL;
    this.remembered.delete(user);
    this.release(ref);
  }

  /**
   * This process changed the subscription of the user with key `user` (subscribed it again,
   * moved it to another profile, canceled or extended it, set its quota or reset its usage), or
   * may have (the call failed): entries forget the profile they saw, so the outage policies
   * decide nothing for the user until an admission answers for it again, and the next call that
   * needs the profile reads it again (a rate turn included, which takes from the bucket of the
   * profile it knows).
   */
  subscriptionChanged(user: string): void {
    this.mark(this.changed, user);
    const ref = this.remembered.get(user);
    if (ref !== undefined && ref.pending === Forget.NOTHING) ref.pending = Forget.PROFILE;
  }

  /** A remembered entry no longer is: up to date now, it catches up on its own from here. */
  private release(ref: Ref): void {
    ref.turn = -1;
    ref.seen = this.marks;
  }

  private mark(record: ChangeRecord, user: string): void {
    this.marks++;
    record.add(user, this.marks);
    this.groupMarks[groupOf(user)] = this.marks;
  }

  /**
   * An entry whose user this process deleted since it was last up to date forgets the profile
   * and standing it saw; one whose subscription it changed otherwise forgets the profile.
   */
  private catchUp(ref: Ref): void {
    if (this.deleted.missed(ref.user, ref.seen)) unlearn(ref, Forget.ALL);
    else if (this.changed.missed(ref.user, ref.seen)) unlearn(ref, Forget.PROFILE);
    ref.seen = this.marks;
  }
}

/** The entry forgets what a change made while it was remembered calls for. */
function applyPending(ref: Ref): void {
  unlearn(ref, ref.pending);
  ref.pending = Forget.NOTHING;
}

/** The entry forgets its profile, or all it saw. */
function unlearn(ref: Ref, what: Forget): void {
  ref.profile = undefined;
  if (what !== Forget.ALL) return;
  ref.usage = 0;
  ref.usable = false;
  ref.quota = -1;
  ref.period = 0;
}
