/**
 * What a limiter handle keeps for the RedisStore (the user's key, the profile and standing last
 * seen), and the deletions and profile changes this process made: a handle whose user was
 * deleted since it last looked forgets what it knew, one whose user was moved to another profile
 * forgets the profile.
 */
import type { Profile } from '../../profile.js';
import type { UserSlot } from '../store.js';
import type { Keys } from './keys.js';

/** Deleted (and moved) users this process remembers at most (past it, every handle forgets what it knew). */
const MAX_MARKED = 10_000;

/** What a limiter handle keeps for this store: its keys and the profile last seen. */
export interface Ref {
  owner: Handles;
  user: string;
  profile: Profile | undefined;
  /** From the latest answer: usage, and whether the subscription was usable (for outages). */
  usage: number;
  usable: boolean;
  /** The count of deletions and profile changes when the handle last caught up with them (see forget). */
  seen: number;
}

/** The handles of one store, and the deletions and profile changes they catch up with. */
export class Handles {
  /**
   * Deletions and profile changes this process made, and by user key the count when the last of
   * each was made (bounded).
   */
  private marks = 0;
  private readonly deleted = new Map<string, number>();
  private readonly changed = new Map<string, number>();
  /** Handles that caught up before this count forget what they knew (a map was cleared). */
  private forgetBefore = 0;

  constructor(private readonly keys: Keys) {}

  /** The handle's state for this store (made and kept in `slot` on first use), caught up with deletions and profile changes. */
  ref(userId: string, slot: UserSlot | undefined): Ref {
    const held = slot?.ref as Ref | undefined;
    if (held !== undefined && held.owner === this) {
      if (held.seen !== this.marks) this.catchUp(held);
      return held;
    }
    const user = this.keys.user(userId);
    const ref: Ref = { owner: this, user, profile: undefined, usage: 0, usable: false, seen: this.marks };
    if (slot !== undefined) slot.ref = ref;
    return ref;
  }

  /** The user with key `user` was deleted: handles forget what they knew of it. */
  forget(user: string): void {
    this.mark(this.deleted, user);
  }

  /**
   * This process moved the user with key `user` to another profile: handles forget the profile
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
  }

  /**
   * A handle whose user this process deleted since it last caught up forgets the profile and
   * standing it saw; one whose user it moved to another profile forgets the profile.
   */
  private catchUp(ref: Ref): void {
    const at = this.deleted.get(ref.user);
    if (ref.seen < this.forgetBefore || (at !== undefined && at > ref.seen)) {
      ref.profile = undefined;
      ref.usage = 0;
      ref.usable = false;
    } else if ((this.changed.get(ref.user) ?? 0) > ref.seen) ref.profile = undefined;
    ref.seen = this.marks;
  }
}
