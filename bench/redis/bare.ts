/**
 * The bare reference of the Redis section: the least a one-decision GCRA can do on Redis.
 * One EVALSHA: TIME, GET the key's TAT (µs), compute, SET it back with PX (only when
 * allowed), answer one integer. No subscription, quota, exact ticks, rate change, deadline or
 * profile check: everything taskvalve's admit.lua adds is measured against this.
 *
 * Also a micro-batched twin (one EVALSHA decides every key of a batch, one TIME for all) and a
 * tiny batcher that gathers the calls of one event-loop turn: a prototype of the suggested
 * optimisation, to show what it is worth on this machine.
 */
import { createHash } from 'node:crypto';
import type { Redis } from 'ioredis';

/**
 * KEYS[1] the bucket; ARGV[1] T (µs per unit), ARGV[2] tau (µs, burst × T).
 * Reply: 1 + remaining when allowed (>= 1), minus the retry ms when denied (<= -1).
 */
export const BARE_LUA = `
local t = redis.call('TIME')
local now = t[1] * 1000000 + t[2]
local T, tau = tonumber(ARGV[1]), tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local nxt = tat + T
if nxt - now > tau then
  return -math.ceil((nxt - now - tau) / 1000)
end
redis.call('SET', KEYS[1], string.format('%.0f', nxt), 'PX', math.ceil((nxt - now) / 1000) + 1)
return 1 + math.floor((tau - (nxt - now)) / T)
`;

/** The same decision for every key of KEYS (one TIME); reply: one integer per key, as above. */
export const BATCH_LUA = `
local t = redis.call('TIME')
local now = t[1] * 1000000 + t[2]
local T, tau = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {}
for i = 1, #KEYS do
  local key = KEYS[i]
  local tat = tonumber(redis.call('GET', key)) or now
  if tat < now then tat = now end
  local nxt = tat + T
  if nxt - now > tau then
    out[i] = -math.ceil((nxt - now - tau) / 1000)
  else
    redis.call('SET', key, string.format('%.0f', nxt), 'PX', math.ceil((nxt - now) / 1000) + 1)
    out[i] = 1 + math.floor((tau - (nxt - now)) / T)
  end
end
return out
`;

export const sha1 = (text: string): string => createHash('sha1').update(text).digest('hex');

/** Loads both scripts on the client's server; returns their SHAs. */
export async function loadBare(client: Redis): Promise<{ single: string; batch: string }> {
  const single = (await client.script('LOAD', BARE_LUA)) as string;
  const batch = (await client.script('LOAD', BATCH_LUA)) as string;
  if (single !== sha1(BARE_LUA) || batch !== sha1(BATCH_LUA)) throw new Error('bare scripts: unexpected SHA');
  return { single, batch };
}

interface Waiter {
  resolve(value: number): void;
  reject(error: unknown): void;
}

/**
 * Gathers the checks made in one event-loop turn (flushed from setImmediate, i.e. after the
 * I/O callback that resolved the previous replies and its microtasks) and sends them as
 * EVALSHA calls of at most `max` keys each. Several chunks of one turn are pipelined.
 */
export class MicroBatcher {
  private keys: string[] = [];
  private waiters: Waiter[] = [];
  private scheduled = false;
  /** Calls sent and decisions in them, for the profile. */
  calls = 0;
  decisions = 0;

  constructor(
    private readonly client: Redis,
    private readonly sha: string,
    private readonly args: readonly string[],
    readonly max: number,
  ) {}

  check(key: string): Promise<number> {
    if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(this.flush);
    }
    this.keys.push(key);
    return new Promise<number>((resolve, reject) => {
      this.waiters.push({ resolve, reject });
    });
  }

  private readonly flush = (): void => {
    this.scheduled = false;
    const keys = this.keys;
    const waiters = this.waiters;
    this.keys = [];
    this.waiters = [];
    for (let at = 0; at < keys.length; at += this.max) {
      const k = keys.slice(at, at + this.max);
      const w = waiters.slice(at, at + this.max);
      this.calls++;
      this.decisions += k.length;
      (this.client.evalsha(this.sha, k.length, ...k, ...this.args) as Promise<number[]>).then(
        (r) => {
          for (let i = 0; i < w.length; i++) w[i]!.resolve(r[i]!);
        },
        (error: unknown) => {
          for (const x of w) x.reject(error);
        },
      );
    }
  };
}
