/**
 * What a limiter handle keeps for the RedisStore (the user's key, the profile and standing last
 * seen), and the deletions this process made: a handle whose user was deleted since it last
 * looked forgets what it knew.
 */
import type { Profile } from '../../profile.js';
import type { UserSlot } from '../store.js';
import type { Keys } from './keys.js';

/** Deleted users this process remembers at most (past it, every handle forgets what it knew). */
const MAX_DELETED = 10_000;

/** What a limiter handle keeps for this store: its keys and the profile last seen. */
export interface Ref {
  owner: Handles;
  user: string;
  profile: Profile | undefined;
  /** From the latest answer: usage, and whether the subscription was usable (for outages). */
  usage: number;
  usable: boolean;
  /** The count of deletions when the handle last caught up with them (see forget). */
  seen: number;
}

/** The handles of one store, and the deletions they catch up with. */
export class Handles {
  /** Deletions this process made, and by user key the count when each was made (bounded). */
  private deletions = 0;
  private readonly deleted = new Map<string, number>();
  /** Handles that caught up before this count forget what they knew (the map was cleared). */
  private forgetBefore = 0;

  constructor(private readonly keys: Keys) {}

  /** The handle's state for this store (made and kept in `slot` on first use), caught up with deletions. */
  ref(userId: string, slot: UserSlot | undefined): Ref {
    const held = slot?.ref as Ref | undefined;
    if (held !== undefined && held.owner === this) {
      if (held.seen !== this.deletions) this.catchUp(held);
      return held;
    }
    const user = this.keys.user(userId);
    const ref: Ref = { owner: this, user, profile: undefined, usage: 0, usable: false, seen: this.deletions };
    if (slot !== undefined) slot.ref = ref;
    return ref;
  }

  /** The user with key `user` was deleted: handles forget what they knew of it. */
  forget(user: string): void {
    this.deletions++;
    if (this.deleted.size >= MAX_DELETED) {
      this.deleted.clear();
      this.forgetBefore = this.deletions;
    }
    this.deleted.set(user, this.deletions);
  }

  /** A handle whose user this process deleted since it last caught up forgets the profile and standing it saw. */
  private catchUp(ref: Ref): void {
    const at = this.deleted.get(ref.user);
    if (ref.seen < this.forgetBefore || (at !== undefined && at > ref.seen)) {
      ref.profile = undefined;
      ref.usage = 0;
      ref.usable = false;
    }
    ref.seen = this.deletions;
  }
}
