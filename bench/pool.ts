/**
 * Section 3: trivial worker-thread tasks per second, taskvalve against raw Piscina, 64 in
 * flight, 2 threads each, both warm (threads started, module imported) before timing.
 *
 * taskvalve: `limiter.submit({ name: 'noop' })` on a profile whose pool runs
 * bench/fixtures/noop.mjs; its threads load workers/task-worker.js, which imports that module
 * and calls the named export. Raw: `new Piscina({ filename: noop.mjs, ... }).run(null,
 * { name: 'noop' })`, the same function with nothing around it.
 */
import { Piscina } from 'piscina';
import { Manager } from '../src/index.js';
import { compare, expect, fmtRate, inFlight, type Bench, type Plan } from './lib/harness.js';
import { atLeast, heading, type Row } from './lib/table.js';

const THREADS = 2;
const IN_FLIGHT = 64;
const USERS = 100;
const NOOP = new URL('./fixtures/noop.mjs', import.meta.url);
const PLAN: Plan = { rounds: 7, warmup: 2, roundMs: 500, probeOps: 2_000 };

export async function pool(log: (line: string) => void): Promise<Row[]> {
  const users = Array.from({ length: USERS }, (_, i) => `tenant-${i}`);
  const manager = new Manager();
  manager.registerProfile('workers', {
    rate: { limit: 1_000_000, intervalMs: 1000 },
    pool: { filename: NOOP, maxThreads: THREADS, minThreads: THREADS, maxQueue: 100_000 },
  });
  for (const user of users) await manager.subscribe(user, 'workers');
  const raw = new Piscina({ filename: NOOP.href, maxThreads: THREADS, minThreads: THREADS, atomics: 'disabled' });

  let sum = 0;
  /** taskvalve's task, and Piscina's run options naming the same export. */
  const task = { name: 'noop' } as const;
  const named = { name: 'noop' } as const;
  const benches: Bench[] = [
    {
      name: 'taskvalve submit({ name: noop })',
      async run(ops) {
        sum = 0;
        await inFlight(ops, IN_FLIGHT, async (i) => {
          const value = await manager.getLimiter(users[i % USERS]!).submit<number>(task);
          sum += value;
        });
        expect(sum === ops, `taskvalve ran ${sum} of ${ops}`);
      },
    },
    {
      name: 'raw Piscina run(null, { name: noop })',
      async run(ops) {
        sum = 0;
        await inFlight(ops, IN_FLIGHT, async () => {
          const value = (await raw.run(null, named)) as number;
          sum += value;
        });
        expect(sum === ops, `Piscina ran ${sum} of ${ops}`);
      },
    },
  ];

  log(`worker tasks, ${IN_FLIGHT} in flight, ${THREADS} threads:`);
  const m = await compare(benches, PLAN, log);
  await manager.close();
  await raw.destroy();

  const tv = m.get('taskvalve submit({ name: noop })')!.opsPerSec;
  const pi = m.get('raw Piscina run(null, { name: noop })')!.opsPerSec;
  return [
    heading(`submit({ name: 'noop' }) on a worker pool, ${THREADS} threads, ${IN_FLIGHT} in flight`),
    atLeast(
      {
        measure: 'tasks/s vs raw Piscina, same threads',
        taskvalve: fmtRate(tv),
        reference: `Piscina.run ${fmtRate(pi)}`,
        ratio: tv / pi,
      },
      0.9,
    ),
  ];
}
