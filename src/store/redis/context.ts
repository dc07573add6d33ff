/** What the parts of the RedisStore share: set up once by the store, passed to each part. */
import type { Profile } from '../../profile.js';
import type { StoreListener } from '../store.js';
import type { Calls } from './calls.js';
import type { Clock } from './clock.js';
import type { Keys } from './keys.js';
import type { Operations } from './ops.js';

export interface Context {
  readonly keys: Keys;
  readonly calls: Calls;
  readonly clock: Clock;
  /** Calls that write: at most once, settled when in doubt. */
  readonly ops: Operations;
  /** The profiles this process knows, by name. */
  readonly profiles: Map<string, Profile>;
  /** Who hears of expiries, faults and drift (set by the store's attach()). */
  listener: StoreListener;
}

/** Drops what this process keeps for a deleted user (`user`: the user's key). */
export type Forget = (userId: string, user: string) => void;
