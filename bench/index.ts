/**
 * `npm run bench`: taskvalve against references, every ratio measured in this one run.
 *
 *   1. admission decisions per second on 10,000 users (bench/decisions.ts)
 *   2. inline no-op tasks per second through the full submit pipeline (bench/pipeline.ts)
 *   3. trivial worker-thread tasks per second against raw Piscina (bench/pool.ts)
 *   4. heap bytes per idle key, in a child process run with --expose-gc (bench/memory.ts)
 *
 * Progress goes to stderr; stdout gets the markdown table (to paste into the README), the
 * environment it was measured on, and the run time.
 */
import { spawnSync } from 'node:child_process';
import { availableParallelism, cpus } from 'node:os';
import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';
import { decisions } from './decisions.js';
import type { MemoryReport } from './memory.js';
import { pipeline } from './pipeline.js';
import { pool } from './pool.js';
import { heading, renderTable, type Row } from './lib/table.js';

const MAX_BYTES_PER_KEY = 128;

const log = (line: string): void => {
  process.stderr.write(`${line}\n`);
};

/** Runs bench/memory.ts in a child with --expose-gc and returns its report. */
function memoryReport(): MemoryReport {
  const script = fileURLToPath(new URL('./memory.ts', import.meta.url));
  const root = fileURLToPath(new URL('..', import.meta.url));
  const child = spawnSync(process.execPath, ['--expose-gc', '--import', 'tsx', script], { cwd: root, encoding: 'utf8' });
  if (child.status !== 0) throw new Error(`bench/memory.ts failed (${child.status ?? child.signal}):\n${child.stderr}`);
  const last = child.stdout.trim().split('\n').pop() ?? '';
  return JSON.parse(last) as MemoryReport;
}

function memoryRows(m: MemoryReport): Row[] {
  const bytes = (n: number): string => `${Math.round(n)} B`;
  return [
    heading(`heap per idle key, ${m.keys / 1000}k subscribed users with a touched dedicated bucket`),
    {
      measure: 'bytes/key vs bare Map+GCRA',
      taskvalve: bytes(m.taskvalve),
      reference: `Map+GCRA ${bytes(m.floor)}`,
      ratio: m.taskvalve / m.floor,
      target: `≤ ${MAX_BYTES_PER_KEY} B`,
      met: m.taskvalve <= MAX_BYTES_PER_KEY,
    },
    {
      measure: 'bytes/key vs RLF',
      taskvalve: bytes(m.taskvalve),
      reference: `RateLimiterMemory ${bytes(m.rlf)}`,
      ratio: m.taskvalve / m.rlf,
    },
  ];
}

async function main(): Promise<void> {
  const t0 = performance.now();
  const rows: Row[] = [];
  log('taskvalve bench: ops/s are medians of interleaved timed rounds after calibration and warm-up');
  rows.push(...(await decisions(log)));
  rows.push(...(await pipeline(log)));
  rows.push(...(await pool(log)));
  log('memory (child process, --expose-gc):');
  const mem = memoryReport();
  for (const name of ['taskvalve', 'floor', 'rlf'] as const) {
    log(`  ${name.padEnd(10)} ${mem[name].toFixed(1)} B/key   rounds: ${mem.samples[name].map((b) => b.toFixed(1)).join(', ')}`);
  }
  rows.push(...memoryRows(mem));
  const seconds = (performance.now() - t0) / 1000;

  const cpu = cpus()[0]?.model.trim() ?? 'unknown CPU';
  process.stdout.write(
    [
      renderTable(rows),
      '',
      `Node ${process.version}, ${cpu}, ${availableParallelism()} cores. Rates are medians of 5 to 7 timed rounds (after calibration`,
      'and 2 warm-up rounds), interleaved with the reference they are compared with, in the same process; memory is the median',
      'of 3 fills in a child run with --expose-gc. Floor = bare Map + float GCRA; RLF = rate-limiter-flexible RateLimiterMemory;',
      'Bottleneck (informative) paces its jobs with timers, so it is no throughput peer.',
      '',
      `Run time: ${seconds.toFixed(1)} s. Targets met: ${rows.filter((r) => r.met === true).length} of ${rows.filter((r) => r.met !== undefined).length}.`,
      '',
    ].join('\n'),
  );
}

if (process.argv[2] === 'redis') await (await import('./redis.js')).main(); else await main(); // npm run bench -- redis
