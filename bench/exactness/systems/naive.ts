/**
 * The negative control: a limiter as it is often first written. For each limit it GETs the
 * count, and if every count plus the cost fits, SETs each count plus the cost: read, compute,
 * write, with nothing making the three one step. Calls that read before another's write both
 * fit, so under real concurrency it admits more than its limits. A bench that does not see this
 * limiter over-admit does not produce overlap, and proves nothing about the others.
 */
import type { Cluster, Redis } from 'ioredis';
import type { Limits, RoundSpec } from '../protocol.js';
import { ledgersOf } from '../scenarios.js';
import { ioredisConnection, usersOf, type Contender, type System } from './system.js';

/** A ledger's counter key. */
const keyOf = (prefix: string, ledger: string): string => `naive:${prefix}:${ledger}`;

/** A counter as read: a reply that is no count (a reply paired with the wrong call after a fault) fails the call. */
function count(reply: string | null): number {
  const n = Number(reply ?? 0);
  if (!Number.isSafeInteger(n)) throw new Error(`not a count: ${String(reply).slice(0, 40)}`);
  return n;
}

function counters(client: Redis | Cluster, prefix: string, limits: Limits): Contender {
  return {
    incidents: [],
    async attempt(user) {
      const ledgers = ledgersOf(limits, user);
      const counts: number[] = [];
      for (const ledger of ledgers) counts.push(count(await client.get(keyOf(prefix, ledger.name))));
      if (ledgers.some((ledger, i) => (counts[i] as number) + limits.cost > ledger.capacity)) return false;
      for (const [i, ledger] of ledgers.entries()) await client.set(keyOf(prefix, ledger.name), String((counts[i] as number) + limits.cost));
      return true;
    },
    close: async () => {},
  };
}

export const naive: System<Redis | Cluster> = {
  id: 'naive',
  label: 'naive GET+SET',
  deployments: ['standalone', 'cluster'],
  ...ioredisConnection,
  async open(client, spec: RoundSpec) {
    return counters(client, spec.prefix, spec.limits);
  },
  async readBack(client, spec) {
    const taken: Record<string, number> = {};
    for (const user of usersOf(spec.limits)) {
      for (const ledger of ledgersOf(spec.limits, user)) taken[ledger.name] = count(await client.get(keyOf(spec.prefix, ledger.name)));
    }
    return taken;
  },
  async openWide(client, wide) {
    return counters(client, wide.prefix, { quota: Number.MAX_SAFE_INTEGER, users: wide.keys, cost: 1 });
  },
};
