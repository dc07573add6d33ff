/**
 * What this process remembers of each user for the RedisStore: the user's key, and the standing
 * last seen (profile, usage, quota in force, usage period, whether the subscription was usable),
 * which the outage policies decide on. A limiter handle holds its user's entry; the store keeps
 * the most recently answered users' entries too (bounded), so that a user whose handle was
 * dropped from the manager's cache is still known. Deletions and profile changes this process
 * made are caught up with: an entry whose user was deleted since it last looked forgets what it
 * knew, one whose user was moved to another profile forgets the profile.
 */
import type { Profile } from '../../profile.js';
import type { UserSlot } from '../store.js';
import { Recent } from '../../util/recent.js';
import type { Keys } from './keys.js';

/** Deleted (and moved) users this process remembers at most (past it, every handle forgets what it knew). */
const MAX_MARKED = 10_000;

/**
 * Users are spread over this many groups (by a hash of their key) to tell, in one comparison
 * per call, whether a deletion or profile change may concern an entry (see Handles.ref).
 */
const GROUPS = 4096;

/** A user key's group: FNV-1a over its UTF-16 units, folded to GROUPS. */
function groupOf(user: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < user.length; i++) h = Math.imul(h ^ user.charCodeAt(i), 0x01000193);
  return (h >>> 0) % GROUPS;
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
  /** The count of deletions and profile changes when the entry last caught up with them (see forget). */
  seen: number;
  /** The user's group (see GROUPS). */
  group: number;
  /** The remembered users' turn the entry was last set in (-1: none; see Recent.turn). */
  turn: number;
}

/** The entries of one store: held by limiter handles, the latest answered remembered; and the deletions they catch up with. */
export class Handles {
  /**
   * Deletions and profile changes this process made, and by user key the count when the last of
   * each was made (bounded).
   */
  private marks = 0;
  private readonly deleted = new Map<string, number>();
  private readonly changed = new Map<string, number>();
  /** Per group of users, the count when the last deletion or profile change in it was made. */
  private readonly groupMarks = new Float64Array(GROUPS);
  /** Entries that caught up before this count forget what they knew (a map was cleared). */
  private forgetBefore = 0;
  /** The users answered most recently, by key: at most `max`, and at least the `max / 2` most recent. */
  private readonly remembered: Recent<string, Ref>;

  /** `max`: how many users' standing the store remembers beyond the handles that hold theirs. */
  constructor(
    private readonly keys: Keys,
    max: number,
  ) {
    this.remembered = new Recent(max);
  }

  /**
   * The user's entry for this store: the one `slot` holds, else the remembered one, else a new
   * one (remembered from its first answer on); kept in `slot`, caught up with deletions.
   */
  ref(userId: string, slot: UserSlot | undefined): Ref {
    const held = slot?.ref as Ref | undefined;
    if (held !== undefined && held.owner === this) {
      if (this.stale(held)) this.catchUp(held);
      return held;
    }
    const user = this.keys.user(userId);
    let ref = this.remembered.get(user);
    if (ref === undefined) {
      ref = { owner: this, user, profile: undefined, usage: 0, usable: false, quota: -1, period: 0, seen: this.marks, group: groupOf(user), turn: -1 };
    } else if (this.stale(ref)) this.catchUp(ref);
    if (slot !== undefined) slot.ref = ref;
    return ref;
  }

  /**
   * Whether a deletion or profile change made since the entry last caught up may concern it:
   * one in its group of users, or the maps' clearing. (Most changes concern other users: the
   * entry's own are looked up only then.)
   */
  private stale(ref: Ref): boolean {
    const seen = ref.seen;
    return seen !== this.marks && ((this.groupMarks[ref.group] as number) > seen || seen < this.forgetBefore);
  }

  /** The entry was just answered: keep it among the remembered users (the least recently answered go first, half the bound at a time). */
  answered(ref: Ref): void {
    const remembered = this.remembered;
    if (ref.turn === remembered.turn) return;
    remembered.set(ref.user, ref);
    ref.turn = remembered.turn;
  }

  /** The user with key `user` was deleted: entries forget what they knew of it. */
  forget(user: string): void {
    const ref = this.remembered.get(user);
    if (ref !== undefined) ref.turn = -1;
    this.remembered.delete(user);
    this.mark(this.deleted, user);
  }

  /**
   * This process moved the user with key `user` to another profile: entries forget the profile
   * they saw, and the next call that needs it reads it again (a rate turn included, which takes
   * from the bucket of the profile it knows).
   */
  reprofiled(user: string): void {
    this.mark(this.changed, user);
  }

  private mark(map: Map<string, number>, user: string): void {
    this.marks++;
    if (map.size >= MAX_MARKED) {
      map.clear();
      this.forgetBefore = this.marks;
    }
    map.set(user, this.marks);
    this.groupMarks[groupOf(user)] = this.marks;
  }

  /**
   * An entry whose user this process deleted since it last caught up forgets the profile and
   * standing it saw; one whose user it moved to another profile forgets the profile.
   */
  private catchUp(ref: Ref): void {
    const at = this.deleted.get(ref.user);
    if (ref.seen < this.forgetBefore || (at !== undefined && at > ref.seen)) {
      ref.profile = undefined;
      ref.usage = 0;
      ref.usable = false;
      ref.quota = -1;
      ref.period = 0;
    } else if ((this.changed.get(ref.user) ?? 0) > ref.seen) ref.profile = undefined;
    ref.seen = this.marks;
  }
}
