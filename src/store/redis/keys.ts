/**
 * Key names and placement. Every key of one tenant shares one hash tag, so one script can touch
 * them all on any topology; ids are escaped so that no two ids collide and none breaks slotting.
 */
import { createHash } from 'node:crypto';

const SAFE = /^[A-Za-z0-9_.-]$/;

/**
 * Escapes an id for use inside a hash tag: safe characters stay, every other UTF-16 unit becomes
 * `%XX` (below 256) or `%uXXXX`. Injective (`%` itself is escaped), brace-free, any length.
 */
export function escapeId(id: string): string {
  let out = '';
  for (let i = 0; i < id.length; i++) {
    const ch = id[i] as string;
    if (SAFE.test(ch)) {
      out += ch;
      continue;
    }
    const code = id.charCodeAt(i);
    out += code < 256 ? `%${code.toString(16).padStart(2, '0')}` : `%u${code.toString(16).padStart(4, '0')}`;
  }
  return out;
}

/** The keys of one store. */
export class Keys {
  constructor(readonly prefix: string) {}

  /** A user's subscription hash. */
  user(userId: string): string {
    return `${this.prefix}:{u:${escapeId(userId)}}`;
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
