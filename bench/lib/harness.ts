/**
 * Measurement helpers: calibrated rounds, warm-up, interleaving and medians.
 *
 * Every benchmark of one comparison runs in the same process, round after round in turn
 * (A B C, B C A, C A B, ...), so that JIT warm-up, GC pressure and CPU frequency drift hit
 * each of them alike; the reported figure is the median of the timed rounds.
 */
import { performance } from 'node:perf_hooks';

/** One thing to time: `run(ops)` performs `ops` operations and resolves when they are all done. */
export interface Bench {
  readonly name: string;
  run(ops: number): Promise<void>;
  /** Op counts are rounded to a multiple of this (e.g. the batch size); default 1. */
  readonly step?: number;
}

/** Timing plan of one comparison. */
export interface Plan {
  /** Timed rounds per bench (the median is kept). */
  rounds: number;
  /** Untimed rounds first, after calibration. */
  warmup: number;
  /** Target duration of one round in ms (op counts are calibrated to it). */
  roundMs: number;
  /** Ops of the calibration run. */
  probeOps: number;
}

/** The outcome of one bench. */
export interface Measured {
  readonly name: string;
  /** Median operations per second over the timed rounds. */
  readonly opsPerSec: number;
  /** Every timed round, ops per second, in run order. */
  readonly samples: readonly number[];
  /** Ops per round after calibration. */
  readonly ops: number;
}

export function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

/** Runs `ops` operations of `bench` and returns ops per second. */
async function timed(bench: Bench, ops: number): Promise<number> {
  const t0 = performance.now();
  await bench.run(ops);
  const ms = performance.now() - t0;
  return (ops * 1000) / ms;
}

function roundTo(n: number, step: number): number {
  return Math.max(step, Math.round(n / step) * step);
}

/**
 * Calibrates each bench to about `plan.roundMs` per round, warms them up, then runs the timed
 * rounds interleaved (rotating the order each round) and returns the medians by name.
 */
export async function compare(benches: readonly Bench[], plan: Plan, log: (line: string) => void): Promise<Map<string, Measured>> {
  const ops = new Map<Bench, number>();
  for (const bench of benches) {
    const step = bench.step ?? 1;
    const probe = roundTo(plan.probeOps, step);
    const rate = await timed(bench, probe);
    ops.set(bench, roundTo((rate * plan.roundMs) / 1000, step));
  }
  for (let w = 0; w < plan.warmup; w++) {
    for (const bench of benches) await bench.run(ops.get(bench)!);
  }
  const samples = new Map<Bench, number[]>(benches.map((b) => [b, []]));
  for (let r = 0; r < plan.rounds; r++) {
    for (let k = 0; k < benches.length; k++) {
      const bench = benches[(k + r) % benches.length]!;
      samples.get(bench)!.push(await timed(bench, ops.get(bench)!));
    }
  }
  const out = new Map<string, Measured>();
  for (const bench of benches) {
    const s = samples.get(bench)!;
    const m: Measured = { name: bench.name, opsPerSec: median(s), samples: s, ops: ops.get(bench)! };
    out.set(bench.name, m);
    log(`  ${bench.name.padEnd(44)} ${fmtRate(m.opsPerSec).padStart(12)}   rounds: ${s.map(fmtRate).join(', ')}`);
  }
  return out;
}

/**
 * Keeps `width` calls in flight until `total` have been made: each of `width` lanes awaits its
 * call, then starts the next. For work whose per-call cost dwarfs one closure call.
 */
export async function inFlight(total: number, width: number, op: (i: number) => Promise<unknown>): Promise<void> {
  let next = 0;
  const lane = async (): Promise<void> => {
    while (next < total) await op(next++);
  };
  await Promise.all(Array.from({ length: Math.min(width, total) }, lane));
}

/** 1234567 -> "1.23 M/s". */
export function fmtRate(perSec: number): string {
  if (perSec >= 1e6) return `${(perSec / 1e6).toFixed(2)} M/s`;
  if (perSec >= 1e3) return `${(perSec / 1e3).toFixed(1)} k/s`;
  return `${perSec.toFixed(0)} /s`;
}

/** Fails the benchmark loudly when its set-up does not do what it claims (e.g. allowed vs denied). */
export function expect(condition: boolean, message: string): void {
  if (!condition) throw new Error(`benchmark set-up broken: ${message}`);
}

/** A deterministic pseudo-random visiting order over `users` keys (xorshift32), 2^16 long. */
export function keyOrder(users: number): Uint16Array {
  const order = new Uint16Array(1 << 16);
  let x = 0x9e3779b9;
  for (let i = 0; i < order.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    order[i] = (x >>> 0) % users;
  }
  return order;
}
