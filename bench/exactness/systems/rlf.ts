/**
 * rate-limiter-flexible's RateLimiterRedis (ioredis, default options): a fixed window of `points`
 * per `duration` (a day here: no reset during a round), `consume(key, cost)` per attempt. A
 * bucket and a quota together are its union of limiters, `RateLimiterUnion`, which consumes
 * from each limiter and rejects if any one rejects. A union consumes the same key on each
 * limiter, so the shared bucket is a RateLimiterRedis whose key is the resource's whatever the
 * user (`getKey` overridden). A rejection with a RateLimiterRes is a denial; with an Error, a failure.
 */
import type { Cluster, Redis } from 'ioredis';
import { RateLimiterRedis, RateLimiterRes, RateLimiterUnion } from 'rate-limiter-flexible';
import type { Limits, RoundSpec } from '../protocol.js';
import { ioredisConnection, usersOf, type Contender, type System } from './system.js';

const DAY_S = 86_400;

/** One bucket for every user of the resource. */
class SharedLimiter extends RateLimiterRedis {
  override getKey(): string {
    return `${this.keyPrefix}:pool`;
  }
}

interface Limiters {
  bucket?: RateLimiterRedis;
  quota?: RateLimiterRedis;
}

function limitersOf(client: Redis | Cluster, spec: RoundSpec): Limiters {
  const { limits, prefix } = spec;
  const options = (points: number, keyPrefix: string) => ({ storeClient: client, useRedisPackage: false, points, duration: DAY_S, keyPrefix });
  const out: Limiters = {};
  if (limits.bucket !== undefined) {
    const Kind = limits.users > 1 ? SharedLimiter : RateLimiterRedis;
    out.bucket = new Kind(options(limits.bucket, `${prefix}-bucket`));
  }
  if (limits.quota !== undefined) out.quota = new RateLimiterRedis(options(limits.quota, `${prefix}-quota`));
  return out;
}

/** A rejection's verdict: a denial (false), or the failure rethrown. */
function denied(rejection: unknown): false {
  if (rejection instanceof RateLimiterRes) return false;
  // A union rejects with an object of the rejecting limiters' rejections, by key prefix.
  if (rejection !== null && typeof rejection === 'object' && !(rejection instanceof Error)) {
    const failure = Object.values(rejection).find((r) => !(r instanceof RateLimiterRes));
    if (failure === undefined) return false;
    throw failure;
  }
  throw rejection;
}

function consumer(limiters: Limiters, limits: Pick<Limits, 'cost'>): Contender {
  const both = limiters.bucket !== undefined && limiters.quota !== undefined ? new RateLimiterUnion(limiters.bucket, limiters.quota) : undefined;
  const single = limiters.bucket ?? limiters.quota;
  if (single === undefined) throw new Error('rate-limiter-flexible: no limit to enforce');
  return {
    incidents: [],
    attempt: (user) => (both ?? single).consume(user, limits.cost).then(() => true, denied),
    close: async () => {},
  };
}

export const rlf: System<Redis | Cluster> = {
  id: 'rlf',
  label: 'RateLimiterRedis',
  deployments: ['standalone', 'cluster'],
  ...ioredisConnection,
  async open(client, spec) {
    return consumer(limitersOf(client, spec), spec.limits);
  },
  async readBack(client, spec) {
    const { bucket, quota } = limitersOf(client, spec);
    const taken: Record<string, number> = {};
    if (bucket !== undefined) taken['bucket'] = (await bucket.get('u0'))?.consumedPoints ?? 0;
    if (quota !== undefined) for (const user of usersOf(spec.limits)) taken[`quota:${user}`] = (await quota.get(user))?.consumedPoints ?? 0;
    return taken;
  },
  async openWide(client, wide) {
    const bucket = new RateLimiterRedis({ storeClient: client, useRedisPackage: false, points: 1_000_000_000, duration: DAY_S, keyPrefix: `${wide.prefix}-open` });
    return consumer({ bucket }, { cost: 1 });
  },
};
