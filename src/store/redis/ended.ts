/**
 * The indexes of subscription ends (one per placement unit: the server, a shard, a Cluster slot)
 * and the sweep that deletes, from them, the subscriptions that ended long enough ago.
 */
import type { EndedUser, SweepResult } from '../store.js';
import type { Context, Forget } from './context.js';
import { tagOf } from './keys.js';
import { scripts } from './scripts.js';

/** Ends indexes a sweep call visits at most (a Cluster has one per slot). */
const SWEEP_UNITS = 256;

export class Ended {
  /** Tags of the ends indexes, one per placement unit (computed on first use), and where the sweep goes on. */
  private cursor = 0;

  /** `forget`: what a deletion drops in this process. */
  constructor(
    private readonly ctx: Context,
    private readonly forget: Forget,
  ) {}

  /** The tags of the ends indexes, one per placement unit. */
  tags(): string[] {
    return this.ctx.calls.unitTags();
  }

  /** The ends index of a user's placement unit (its slot on a Cluster, its shard, or the server). */
  of(user: string): string {
    return this.ctx.keys.ended(this.tags()[this.ctx.calls.unitOf(tagOf(user))] as string);
  }

  /**
   * Visits the next SWEEP_UNITS ends indexes (all of them but on a Cluster, which has one per
   * slot): reads each one's due ids, then deletes those still ended, up to `max`. `more` until
   * the round has visited every index.
   */
  async sweep(retentionMs: number, max: number): Promise<SweepResult> {
    const { keys, calls, clock } = this.ctx;
    const tags = this.tags();
    const from = this.cursor;
    const count = Math.min(SWEEP_UNITS, tags.length - from);
    const indexes = tags.slice(from, from + count).map((tag) => keys.ended(tag));
    const due = await Promise.all(indexes.map((index) => calls.run(scripts.sweep, [index], ['due', retentionMs, clock.arg(), max]) as Promise<string[]>));
    const deleted: EndedUser[] = [];
    this.cursor = (from + count) % tags.length;
    for (let i = 0; i < count; i++) {
      const ids = due[i] as string[];
      if (ids.length === 0) continue;
      const room = max - deleted.length;
      if (room < ids.length || ids.length === max) {
        // This index may hold more: the next call starts here.
        this.cursor = from + i;
        if (room === 0) return { deleted, more: true };
      }
      const take = ids.slice(0, room);
      const users = take.map((id) => keys.user(id));
      const r = (await calls.run(scripts.sweep, [indexes[i] as string, ...users], ['delete', retentionMs, clock.arg(), ...take])) as string[];
      for (let k = 0; k < r.length; k += 2) {
        const userId = r[k] as string;
        deleted.push({ userId, profileName: r[k + 1] as string });
        this.forget(userId, keys.user(userId));
      }
      if (this.cursor === from + i) return { deleted, more: true };
    }
    return { deleted, more: this.cursor !== 0 };
  }
}
