/**
 * The chart's measure, run in one worker process: decisions per second of each system on the
 * standalone server against the number of calls in flight. At each level, `inFlight` loops each
 * await one attempt at a time, over `keys` keys that always admit, for `runMs`; the systems take
 * turns in a rotating order, `repeats` times, and each point is the median of its repeats.
 */
import { median } from '../lib/harness.js';
import type { SystemId, ThroughputPoint, ThroughputRequest } from './protocol.js';
import { system } from './systems/index.js';
import type { Contender } from './systems/system.js';

interface Run {
  answered: number;
  failed: number;
  ms: number;
  error?: string;
}

/** A multiplier coprime with any key count that is not a multiple of it: consecutive attempts hit distant keys. */
const STRIDE = 7_919;

async function run(contender: Contender, inFlight: number, runMs: number, keys: number): Promise<Run> {
  const out: Run = { answered: 0, failed: 0, ms: 0 };
  let next = 0;
  const started = performance.now();
  const deadline = started + runMs;
  const lane = async (): Promise<void> => {
    while (performance.now() < deadline) {
      try {
        await contender.attempt(`k${(next++ * STRIDE) % keys}`);
        out.answered++;
      } catch (error) {
        out.failed++;
        out.error ??= error instanceof Error ? error.message : String(error);
      }
    }
  };
  await Promise.all(Array.from({ length: inFlight }, lane));
  out.ms = performance.now() - started;
  return out;
}

export async function measure(request: ThroughputRequest, connection: (id: SystemId, route: 'standalone') => Promise<unknown>): Promise<ThroughputPoint[]> {
  const { systems, inFlight, runMs, repeats, keys, prefix } = request;
  const opened = new Map<SystemId, Contender>();
  const points: ThroughputPoint[] = [];
  for (const id of systems) {
    try {
      opened.set(id, await system(id).openWide(await connection(id, 'standalone'), { prefix: `${prefix}-${id}`, keys }));
      // Warm-up: scripts loaded, connections and code paths hot.
      await run(opened.get(id) as Contender, 64, Math.min(runMs, 200), keys);
    } catch (error) {
      for (const level of inFlight) points.push({ system: id, inFlight: level, perSec: 0, samples: [], failed: 0, error: error instanceof Error ? error.message : String(error) });
    }
  }
  const live = [...opened.keys()];
  for (const level of inFlight) {
    const runs = new Map<SystemId, Run[]>(live.map((id) => [id, []]));
    for (let r = 0; r < repeats; r++) {
      for (let k = 0; k < live.length; k++) {
        const id = live[(k + r) % live.length] as SystemId;
        runs.get(id)?.push(await run(opened.get(id) as Contender, level, runMs, keys));
      }
    }
    for (const id of live) {
      const done = runs.get(id) ?? [];
      const samples = done.map((d) => (d.answered * 1000) / d.ms);
      const error = done.find((d) => d.error !== undefined)?.error;
      points.push({ system: id, inFlight: level, perSec: median(samples), samples, failed: done.reduce((s, d) => s + d.failed, 0), ...(error === undefined ? {} : { error }) });
    }
  }
  for (const contender of opened.values()) await contender.close();
  return points;
}
