/**
 * The scenarios of the exactness bench: the limits each round runs against, how the attempts
 * come, which fault (if any) hits the round, and what an exact limiter admits. Also the ledgers
 * (the counts a system keeps: one bucket, one quota per user) through which charges are read
 * back and compared with what callers were told.
 */
import type { Deployment, Limits, Load } from './protocol.js';

export type ScenarioId = 'one-key' | 'weighted' | 'quota' | 'composite' | 'proxy-faults' | 'kill';

/** A fault hitting a round: the fault proxy (lost replies, resets), or kill -9 and restart. */
export type FaultKind = 'proxy' | 'kill';

export interface Scenario {
  id: ScenarioId;
  /** One line for the table's heading. */
  title: string;
  limits: Limits;
  /** The load of one worker process when `processes` take part. */
  load(processes: number): Load;
  fault?: FaultKind;
  /** true: played for every process count of the plan; false: for the largest only. */
  sweep: boolean;
  /** Where it runs (faults: the append-only standalone server, which the proxy fronts and kill -9 hits). */
  deployments: readonly Deployment[];
}

/** Concurrent attempts per process in a burst, and lanes per process in a stream. */
export const ATTEMPTS = 250;
/** The quota of the fault rounds, and the attempts per second all their processes offer together. */
export const FAULT_QUOTA = 2_000;
export const FAULT_OFFERED_PER_SEC = 2_000;

const everywhere: readonly Deployment[] = ['memory', 'standalone', 'cluster'];
const burst = (): Load => ({ kind: 'burst', attempts: ATTEMPTS });
/** Lanes that together offer FAULT_OFFERED_PER_SEC attempts per second, whatever the process count. */
const stream = (processes: number): Load => ({ kind: 'stream', lanes: ATTEMPTS, paceMs: Math.round((processes * ATTEMPTS * 1000) / FAULT_OFFERED_PER_SEC) });

export const SCENARIOS: readonly Scenario[] = [
  {
    id: 'one-key',
    title: `one key: burst 10, no refill, N processes x ${ATTEMPTS} concurrent attempts of 1 unit`,
    limits: { bucket: 10, users: 1, cost: 1 },
    load: burst,
    sweep: true,
    deployments: everywhere,
  },
  {
    id: 'weighted',
    title: `weighted: cost 3 on one key of burst 10 (3 calls fit), N x ${ATTEMPTS} concurrent attempts`,
    limits: { bucket: 10, users: 1, cost: 3 },
    load: burst,
    sweep: false,
    deployments: everywhere,
  },
  {
    id: 'quota',
    title: `per-user quota: one user's quota of 10 across N processes x ${ATTEMPTS} concurrent attempts`,
    limits: { quota: 10, users: 1, cost: 1 },
    load: burst,
    sweep: false,
    deployments: everywhere,
  },
  {
    id: 'composite',
    title: `composite: a shared bucket of 10 plus a quota of 3 for each of 4 users (keys in different slots), N x ${ATTEMPTS} attempts`,
    limits: { bucket: 10, quota: 3, users: 4, cost: 1 },
    load: burst,
    sweep: false,
    deployments: everywhere,
  },
  {
    id: 'proxy-faults',
    title: `faults through the proxy: replies dropped, then every connection reset, mid-round; quota ${FAULT_QUOTA.toLocaleString('en-US')}, ${FAULT_OFFERED_PER_SEC.toLocaleString('en-US')} attempts/s offered`,
    limits: { quota: FAULT_QUOTA, users: 1, cost: 1 },
    load: stream,
    fault: 'proxy',
    sweep: false,
    deployments: ['standalone'],
  },
  {
    id: 'kill',
    title: `kill -9 of the append-only server mid-round, restarted; quota ${FAULT_QUOTA.toLocaleString('en-US')}, ${FAULT_OFFERED_PER_SEC.toLocaleString('en-US')} attempts/s offered`,
    limits: { quota: FAULT_QUOTA, users: 1, cost: 1 },
    load: stream,
    fault: 'kill',
    sweep: false,
    deployments: ['standalone'],
  },
];

export function scenario(id: ScenarioId): Scenario {
  const found = SCENARIOS.find((s) => s.id === id);
  if (found === undefined) throw new Error(`no scenario '${id}'`);
  return found;
}

/** The user of a worker's i-th attempt: round-robin over the users, offset by the worker's index. */
export function userOf(limits: Limits, index: number, i: number): string {
  return `u${(index + i) % limits.users}`;
}

/** The ledger names an admitted attempt of `user` is charged to, with their capacities in units. */
export function ledgersOf(limits: Limits, user: string): { name: string; capacity: number }[] {
  const out: { name: string; capacity: number }[] = [];
  if (limits.bucket !== undefined) out.push({ name: 'bucket', capacity: limits.bucket });
  if (limits.quota !== undefined) out.push({ name: `quota:${user}`, capacity: limits.quota });
  return out;
}

/** Every ledger of a round with its capacity. */
export function capacities(limits: Limits): Map<string, number> {
  const out = new Map<string, number>();
  for (let u = 0; u < limits.users; u++) for (const l of ledgersOf(limits, `u${u}`)) out.set(l.name, l.capacity);
  return out;
}

/** The calls an exact limiter admits when every user keeps asking: what the tightest limit lets through. */
export function expectedAdmitted(limits: Limits): number {
  const byBucket = limits.bucket === undefined ? Infinity : Math.floor(limits.bucket / limits.cost);
  const byQuota = limits.quota === undefined ? Infinity : Math.floor(limits.quota / limits.cost) * limits.users;
  return Math.min(byBucket, byQuota);
}

/** The plan of a run: process counts, rounds. */
export interface Plan {
  processes: readonly number[];
  /** Rounds of each steady-state row. */
  rounds: number;
  /** Rounds of each fault row. */
  faultRounds: number;
}

export const FULL: Plan = { processes: [1, 2, 4, 8], rounds: 20, faultRounds: 5 };
export const QUICK: Plan = { processes: [1, 2, 4], rounds: 3, faultRounds: 1 };
