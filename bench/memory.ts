/**
 * Section 4 (child process): heap bytes per idle key. Run with `--expose-gc`; bench/index.ts
 * spawns `node --expose-gc --import tsx bench/memory.ts` and reads the JSON line it prints.
 *
 * For each structure: collect garbage, read heapUsed, fill KEYS keys the way a user would,
 * collect garbage again, and divide the growth by KEYS. The key strings are made before the
 * baseline and kept alive throughout, so only what each structure adds is counted.
 *   - taskvalve: a Manager on a MemoryStore, KEYS users subscribed to a profile with a
 *     dedicated bucket, each touched by `check(1)` (includes the bounded Limiter handle cache);
 *   - floor: a Map of plain `{ tat }` objects (bench/lib/floor.ts), one check per key;
 *   - RLF: RateLimiterMemory, one consume per key (it keeps a record and an unref'd timer per key).
 * Each is measured ROUNDS times from scratch; the median is printed.
 */
import { RateLimiterMemory } from 'rate-limiter-flexible';
import { Manager } from '../src/index.js';
import { FloorLimiter } from './lib/floor.js';
import { median } from './lib/harness.js';

const KEYS = 200_000;
const ROUNDS = 3;

/** What the child prints: bytes per key, by structure. */
export interface MemoryReport {
  keys: number;
  taskvalve: number;
  floor: number;
  rlf: number;
  /** Every round, bytes per key. */
  samples: { taskvalve: number[]; floor: number[]; rlf: number[] };
}

/** Full collections until heapUsed settles. */
function settle(): number {
  const gc = globalThis.gc;
  if (gc === undefined) throw new Error('bench/memory.ts needs node --expose-gc');
  let used = Number.POSITIVE_INFINITY;
  for (let i = 0; i < 5; i++) {
    gc();
    const now = process.memoryUsage().heapUsed;
    if (Math.abs(used - now) < 4096) return now;
    used = now;
  }
  return used;
}

/** Bytes per key that `fill` keeps alive in the structure it returns; `dispose` then frees it. */
async function perKey<T>(fill: () => Promise<T>, dispose: (held: T) => Promise<unknown>): Promise<number> {
  const before = settle();
  const held = await fill();
  const after = settle();
  await dispose(held);
  return (after - before) / KEYS;
}

async function main(): Promise<void> {
  const keys = Array.from({ length: KEYS }, (_, i) => `user-${String(i).padStart(6, '0')}`);
  const samples = { taskvalve: [] as number[], floor: [] as number[], rlf: [] as number[] };
  for (let r = 0; r < ROUNDS; r++) {
    samples.taskvalve.push(
      await perKey(async () => {
        const manager = new Manager();
        manager.registerProfile('bench', { rate: { limit: 10, intervalMs: 1000 } });
        for (const key of keys) await manager.subscribe(key, 'bench');
        for (const key of keys) await manager.getLimiter(key).check(1);
        return manager;
      }, (manager) => manager.close()),
    );
    samples.floor.push(
      await perKey(async () => {
        const floor = new FloorLimiter(10, 1000);
        for (const key of keys) await floor.check(key);
        return floor;
      }, async () => {}),
    );
    samples.rlf.push(
      await perKey(async () => {
        const rlf = new RateLimiterMemory({ points: 10, duration: 3600 });
        for (const key of keys) await rlf.consume(key);
        return rlf;
      }, async (rlf) => {
        // Its timers would keep the records alive into the next round.
        for (const key of keys) await rlf.delete(key);
      }),
    );
  }
  const report: MemoryReport = {
    keys: KEYS,
    taskvalve: median(samples.taskvalve),
    floor: median(samples.floor),
    rlf: median(samples.rlf),
    samples,
  };
  process.stdout.write(`${JSON.stringify(report)}\n`);
}

await main();
