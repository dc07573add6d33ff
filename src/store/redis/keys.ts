/**
 * Key names and placement. Every key of one tenant shares one hash tag, so one script can touch
 * them all on any topology; ids are escaped so that no two ids collide and none breaks slotting.
 */
import { createHash } from 'node:crypto';

/** A UTF-16 unit that an id keeps as it is in a key. */
const UNSAFE = /[^A-Za-z0-9_.-]/g;

function escapeUnit(unit: string): string {
  const code = unit.charCodeAt(0);
  return code < 256 ? `%${code.toString(16).padStart(2, '0')}` : `%u${code.toString(16).padStart(4, '0')}`;
}

/**
 * Escapes an id for use inside a hash tag: safe characters stay, every other UTF-16 unit becomes
 * `%XX` (below 256) or `%uXXXX`. Injective (`%` itself is escaped), brace-free, any length. An
 * id of safe characters only is returned as it is.
 */
export function escapeId(id: string): string {
  return id.replace(UNSAFE, escapeUnit);
}

/** The id that escapeId(id) stands for. */
export function unescapeId(escaped: string): string {
  return escaped.replace(/%u([0-9a-f]{4})|%([0-9a-f]{2})/g, (_, wide: string | undefined, byte: string | undefined) => String.fromCharCode(parseInt(wide ?? byte ?? '', 16)));
}

/** The keys of one store. */
export class Keys {
  constructor(readonly prefix: string) {}

  /**
   * A user's record. One flat string: built by concatenation it would be a rope of its pieces,
   * several times the size, and every limiter handle and remembered user keeps one.
   */
  user(userId: string): string {
    return [this.prefix, ':{u:', escapeId(userId), '}'].join('');
  }

  /** A shared resource's bucket. */
  shared(name: string): string {
    return `${this.prefix}:{b:${escapeId(name)}}`;
  }

  /** The dead-letter queue's keys (one slot). */
  dlq(part: 'e' | 'o' | 'x' | 'seq'): string {
    return `${this.prefix}:{dlq}:${part}`;
  }

  dlqProfile(profile: string): string {
    return `${this.prefix}:{dlq}:p:${profile}`;
  }

  /** The index of one user's dead letters (the id as it is: the hash tag before it fixes the slot). */
  dlqUser(userId: string): string {
    return `${this.prefix}:{dlq}:u:${userId}`;
  }

  /**
   * An index of subscription ends (a sorted set: user id -> end ms). There is one per placement
   * unit (the server, a shard, a Cluster slot), named by a tag placed on that unit, so that the
   * scripts that change a user's end update the index of the user's unit atomically.
   */
  ended(tag: string): string {
    return `${this.prefix}:{${tag}}:ended`;
  }

  /** A process's operation log on the placement unit that `tag` lands on (see lua/includes/op.lua). */
  ops(tag: string, processId: string): string {
    return `${this.prefix}:{${tag}}:o:${processId}`;
  }

  /** The live processes sharing this store (for the 'local' outage policy's share). */
  processes(): string {
    return `${this.prefix}:{cfg}:processes`;
  }

  /** Where each process records its profiles' configurations, to detect drift. */
  profiles(): string {
    return `${this.prefix}:{cfg}:profiles`;
  }
}

/** The hash tag of a key: what placement depends on. */
export function tagOf(key: string): string {
  const open = key.indexOf('{');
  const close = key.indexOf('}', open + 1);
  return open >= 0 && close > open + 1 ? key.slice(open + 1, close) : key;
}

/**
 * Rendezvous (highest random weight) hashing: the shard whose hash with the tag is highest.
 * Adding a shard moves only the tags it now wins, about 1/N of them.
 */
export function rendezvous(tag: string, shards: number): number {
  let best = 0;
  let bestScore = -1n;
  for (let i = 0; i < shards; i++) {
    const score = createHash('sha1').update(`${i}\0${tag}`).digest().readBigUInt64BE(0);
    if (score > bestScore) {
      bestScore = score;
      best = i;
    }
  }
  return best;
}

/** CRC16/XMODEM of each byte value, as Redis Cluster hashes keys. */
const CRC16 = (() => {
  const table = new Uint16Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i << 8;
    for (let k = 0; k < 8; k++) c = c & 0x8000 ? ((c << 1) ^ 0x1021) & 0xffff : (c << 1) & 0xffff;
    table[i] = c;
  }
  return table;
})();

/** The Redis Cluster slot of a hash tag. */
export function slotOf(tag: string): number {
  let crc = 0;
  for (const byte of Buffer.from(tag, 'utf8')) crc = ((crc << 8) & 0xffff) ^ (CRC16[((crc >> 8) ^ byte) & 0xff] as number);
  return crc % 16384;
}

/** Tags of the ends indexes: for each of `units` placement units, a tag that `place` puts on it. */
export function endedTags(units: number, place: (tag: string) => number): string[] {
  const tags = new Array<string>(units);
  let found = 0;
  for (let i = 0; found < units; i++) {
    const tag = `e:${i}`;
    const unit = place(tag);
    if (tags[unit] === undefined) {
      tags[unit] = tag;
      found++;
    }
  }
  return tags;
}
