/**
 * Moving keys to the shard that owns them now, after shards were appended to a RedisStore's
 * client array (see RedisStore.migrate, and docs/redis.md "Sharding" for what is atomic).
 *
 * Each key is copied (DUMP), restored next to its new place under a temporary name, and then
 * migrate.lua, in one step on the new shard, makes it the key or merges it into the one there
 * and records its arrival; only then is it deleted where it was. A run interrupted anywhere can
 * run again: a copy that already arrived is recognised and not counted twice.
 */
import { createHash } from 'node:crypto';
import { ErrorCode, TaskvalveError, invalidArgument } from '../../errors.js';
import type { Context } from './context.js';
import type { Ended } from './ended.js';
import { endedTags, rendezvous, tagOf, unescapeId } from './keys.js';
import { recordError } from './record.js';
import { scripts, type ScriptClient } from './scripts.js';

/** What migrate() needs of a shard: an ioredis `Redis`. */
interface MigrationClient extends ScriptClient {
  scan(cursor: string, ...args: (string | number)[]): Promise<[string, string[]]>;
  dumpBuffer(key: string): Promise<Buffer | null>;
  pttl(key: string): Promise<number>;
  restore(key: string, ttl: number, value: Buffer, replace: 'REPLACE'): Promise<unknown>;
  del(key: string): Promise<number>;
  exists(key: string): Promise<number>;
  zscore(key: string, member: string): Promise<string | null>;
  zadd(key: string, score: string, member: string): Promise<unknown>;
  zrem(key: string, member: string): Promise<unknown>;
  zunionstore(destination: string, count: number, ...keys: string[]): Promise<unknown>;
}

/** Suffixes of the keys a move uses next to a key on its new shard: its restored copy, the record of its arrival. */
const COPY = ':~copy';
const ARRIVAL = ':~arrived';

/** How long a restored copy lives if a run stops before it is merged (ms): a day. */
const COPY_TTL_MS = 86_400_000;

/** What became of a key on its new shard. */
type Outcome = 'moved' | 'merged';

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
          if (tag.startsWith('e:') || key.endsWith(COPY) || key.endsWith(ARRIVAL)) continue;
          const to = rendezvous(tag, shards.length);
          if (to === from) continue;
          const target = shards[to] as MigrationClient;
          const outcome = await this.arrive(key, tag, source, target);
          if (outcome === undefined) continue;
          if (tag.startsWith('u:')) await this.moveEnd(unescapeId(tag.slice(2)), oldIndex, source, this.ended.of(key), target, outcome);
          await source.del(key);
          moved++;
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

  /**
   * A moved user's entry in the ends index: it goes with the user, unless the user has a record
   * on its new shard already (that subscription stands, with its own entry).
   */
  private async moveEnd(userId: string, oldIndex: string, source: MigrationClient, newIndex: string, target: MigrationClient, outcome: Outcome): Promise<void> {
    const score = await source.zscore(oldIndex, userId);
    if (score === null) return;
    if (outcome === 'moved') await target.zadd(newIndex, score, userId);
    await source.zrem(oldIndex, userId);
  }

  /** Copies `key` to its new shard, where it becomes the key or is merged into it; undefined: the key is gone. */
  private async arrive(key: string, tag: string, source: MigrationClient, target: MigrationClient): Promise<Outcome | undefined> {
    const [dump, ttl] = await Promise.all([source.dumpBuffer(key), source.pttl(key)]);
    if (dump === null) return undefined;
    await target.restore(key + COPY, COPY_TTL_MS, dump, 'REPLACE');
    const kind = tag.startsWith('u:') ? 'user' : tag.startsWith('b:') ? 'shared' : 'other';
    const args: string[] = [kind, createHash('sha1').update(dump).digest('hex'), String(ttl > 0 ? ttl : -1), this.ctx.clock.arg()];
    if (kind === 'user') {
      for (const p of this.ctx.profiles.values()) args.push(p.name, `${p.rate.d}:${p.rate.T}:${p.quotaPeriodMs}`);
    }
    try {
      return (await scripts.migrate.run(target, [key, key + COPY, key + ARRIVAL], args)) as Outcome;
    } catch (error) {
      const message = error instanceof Error ? error.message : '';
      if (message.startsWith('TASKVALVE_PROFILE ')) {
        const name = message.slice('TASKVALVE_PROFILE '.length);
        throw new TaskvalveError(ErrorCode.PROFILE_NOT_FOUND, `migrate(): the record ${key} names profile ${JSON.stringify(name)}, which this process has not registered; register every profile, then run migrate() again`);
      }
      throw recordError(error) ?? error;
    }
  }
}
