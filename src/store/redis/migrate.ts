/**
 * Moving keys to the shard that owns them now, after shards were appended to a RedisStore's
 * client array (see RedisStore.migrate).
 */
import { invalidArgument } from '../../errors.js';
import type { Reply } from './calls.js';
import type { Context } from './context.js';
import type { Ended } from './ended.js';
import { endedTags, rendezvous, tagOf, unescapeId } from './keys.js';
import { scripts, type ScriptClient } from './scripts.js';

/** What migrate() needs of a shard: an ioredis `Redis`. */
interface MigrationClient {
  scan(cursor: string, ...args: (string | number)[]): Promise<[string, string[]]>;
  dumpBuffer(key: string): Promise<Buffer | null>;
  pttl(key: string): Promise<number>;
  restore(key: string, ttl: number, value: Buffer): Promise<unknown>;
  del(key: string): Promise<number>;
  type(key: string): Promise<string>;
  get(key: string): Promise<string | null>;
  set(key: string, value: string, px: 'PX', ms: number): Promise<unknown>;
  exists(key: string): Promise<number>;
  zscore(key: string, member: string): Promise<string | null>;
  zadd(key: string, score: string, member: string): Promise<unknown>;
  zrem(key: string, member: string): Promise<unknown>;
  zunionstore(destination: string, count: number, ...keys: string[]): Promise<unknown>;
}

export class Migration {
  constructor(
    private readonly ctx: Context,
    private readonly ended: Ended,
  ) {}

  /** Moves every key whose shard changed; `previous`: the shards before. Returns the number of keys moved. */
  async run(previous: ScriptClient[]): Promise<number> {
    const keys = this.ctx.keys;
    const shards = this.ctx.calls.clients as unknown as MigrationClient[];
    if (!Array.isArray(previous) || previous.length > shards.length || previous.some((c, i) => c !== (shards[i] as unknown))) {
      throw invalidArgument('migrate(previous): previous must be the shards before, a prefix of the current array');
    }
    // The ends indexes were placed for the shards before; each user's entry follows the user.
    const n = previous.length;
    const before = endedTags(n, (tag) => (n === 1 ? 0 : rendezvous(tag, n)));
    let moved = 0;
    for (let from = 0; from < n; from++) {
      const source = shards[from] as MigrationClient;
      const oldIndex = keys.ended(before[from] as string);
      let cursor = '0';
      do {
        const [next, found] = await source.scan(cursor, 'MATCH', `${keys.prefix}:{*`, 'COUNT', 500);
        cursor = next;
        for (const key of found) {
          const tag = tagOf(key);
          if (tag.startsWith('e:')) continue;
          const to = rendezvous(tag, shards.length);
          if (to === from) continue;
          const target = shards[to] as MigrationClient;
          if (!(await this.moveKey(key, source, target))) continue;
          moved++;
          if (tag.startsWith('u:')) await this.moveEnd(unescapeId(tag.slice(2)), oldIndex, source, this.ended.of(key), target);
        }
      } while (cursor !== '0');
      // Users that stayed: their entries join the index this shard has now.
      const newIndex = keys.ended(this.ended.tags()[from] as string);
      if (newIndex !== oldIndex && (await source.exists(oldIndex)) === 1) {
        // Both can hold a user changed since the new shards went live: the later end stands.
        await source.zunionstore(newIndex, 2, newIndex, oldIndex, 'AGGREGATE', 'MAX');
        await source.del(oldIndex);
      }
    }
    return moved;
  }

  /** A moved user's entry in the ends index goes with it. */
  private async moveEnd(userId: string, oldIndex: string, source: MigrationClient, newIndex: string, target: MigrationClient): Promise<void> {
    const score = await source.zscore(oldIndex, userId);
    if (score === null) return;
    await target.zadd(newIndex, score, userId);
    await source.zrem(oldIndex, userId);
  }

  private async moveKey(key: string, source: MigrationClient, target: MigrationClient): Promise<boolean> {
    const [dump, ttl] = await Promise.all([source.dumpBuffer(key), source.pttl(key)]);
    if (dump === null) return false;
    try {
      await target.restore(key, ttl > 0 ? ttl : 0, dump);
    } catch (error) {
      if (!String((error as Error).message).startsWith('BUSYKEY')) throw error;
      await this.merge(key, source, target);
    }
    await source.del(key);
    return true;
  }

  /** Both shards hold the key: keep both charges for a user, the fuller state for a bucket. */
  private async merge(key: string, source: MigrationClient, target: MigrationClient): Promise<void> {
    const { clock } = this.ctx;
    if (tagOf(key).startsWith('u:')) {
      const r = (await scripts.read.run(source as unknown as ScriptClient, [key], [clock.arg()])) as Reply | null;
      const usage = r === null ? 0 : Number(r[4]);
      // A charge leaves the ends index alone: the id argument is not read.
      if (usage > 0) await this.ctx.ops.write(scripts.mutate, [key, this.ended.of(key)], ['charge', usage, ''], 'retry');
    } else if ((await source.type(key)) === 'string') {
      const [a, b] = await Promise.all([source.get(key), target.get(key)]);
      const tat = (v: string | null): number => (v === null ? -Infinity : Number(v.split(':')[0]));
      if (tat(a) > tat(b)) await target.set(key, a as string, 'PX', Math.max(1, await source.pttl(key)));
    }
  }
}
