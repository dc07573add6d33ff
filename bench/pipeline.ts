/**
 * Section 2: the full submit pipeline with inline no-op tasks. `limiter.submit(() => 1)` across
 * 100 users with a rate no run can reach, 64 calls in flight: admission (subscription, quota,
 * bucket), the fair per-profile queue, the run, metrics and settlement.
 *
 * References: p-queue's `add` (one in-process promise queue, no admission at all; target: at
 * least 2x), and, informative, the least an "admit, then call" wrapper does (floor GCRA check,
 * then the function) and Bottleneck, a popular per-key job scheduler (`Bottleneck.Group` with
 * no limits set, so it only queues and runs).
 */
import Bottleneck from 'bottleneck';
import PQueue from 'p-queue';
import { Manager } from '../src/index.js';
import { FloorLimiter } from './lib/floor.js';
import { compare, expect, fmtRate, inFlight, type Bench, type Plan } from './lib/harness.js';
import { heading, type Row } from './lib/table.js';

const USERS = 100;
const IN_FLIGHT = 64;
const PLAN: Plan = { rounds: 5, warmup: 2, roundMs: 250, probeOps: 5_000 };

const noop = (): number => 1;
const asyncNoop = (): Promise<number> => Promise.resolve(1);

export async function pipeline(log: (line: string) => void): Promise<Row[]> {
  const users = Array.from({ length: USERS }, (_, i) => `tenant-${i}`);
  const manager = new Manager();
  manager.registerProfile('inline', { rate: { limit: 1_000_000, intervalMs: 1000 }, pool: { maxQueue: 100_000 } });
  for (const user of users) await manager.subscribe(user, 'inline');
  const floor = new FloorLimiter(1_000_000, 1000);
  const group = new Bottleneck.Group({ maxConcurrent: null, minTime: 0 });
  const queue = new PQueue(); // its defaults: no concurrency bound, as taskvalve's inline tasks without perUserConcurrency

  // Each bench counts what its tasks returned, as a check that they all ran. Written as
  // `const value = await ...; sum += value`: `sum += await ...` would read `sum` before awaiting.
  let sum = 0;
  const benches: Bench[] = [
    {
      name: 'taskvalve submit(() => 1)',
      async run(ops) {
        sum = 0;
        await inFlight(ops, IN_FLIGHT, async (i) => {
          const value = await manager.getLimiter(users[i % USERS]!).submit<number>(noop);
          sum += value;
        });
        expect(sum === ops, `taskvalve ran ${sum} of ${ops}`);
      },
    },
    {
      name: 'p-queue add(() => 1)',
      async run(ops) {
        sum = 0;
        await inFlight(ops, IN_FLIGHT, async () => {
          const value = await queue.add(noop);
          sum += value ?? 0;
        });
        expect(sum === ops, `p-queue ran ${sum} of ${ops}`);
      },
    },
    {
      name: 'floor check, then call',
      async run(ops) {
        sum = 0;
        await inFlight(ops, IN_FLIGHT, async (i) => {
          if ((await floor.check(users[i % USERS]!)).allowed) sum += noop();
        });
        expect(sum === ops, `floor ran ${sum} of ${ops}`);
      },
    },
    {
      name: 'Bottleneck group.key(user).schedule',
      async run(ops) {
        sum = 0;
        await inFlight(ops, IN_FLIGHT, async (i) => {
          const value = await group.key(users[i % USERS]!).schedule(asyncNoop);
          sum += value;
        });
        expect(sum === ops, `Bottleneck ran ${sum} of ${ops}`);
      },
    },
  ];

  log(`inline tasks, ${IN_FLIGHT} in flight over ${USERS} users:`);
  const m = await compare(benches, PLAN, log);
  await manager.close();
  await group.disconnect(false);

  const tv = m.get('taskvalve submit(() => 1)')!.opsPerSec;
  const fl = m.get('floor check, then call')!.opsPerSec;
  const bn = m.get('Bottleneck group.key(user).schedule')!.opsPerSec;
  const pq = m.get('p-queue add(() => 1)')!.opsPerSec;
  return [
    heading(`submit(() => 1) inline, ${USERS} users, ${IN_FLIGHT} in flight`),
    { measure: 'tasks/s vs p-queue', taskvalve: fmtRate(tv), reference: `p-queue add ${fmtRate(pq)}`, ratio: tv / pq, target: '≥ 2.00', met: tv / pq >= 2 },
    { measure: 'tasks/s vs admit-then-call floor', taskvalve: fmtRate(tv), reference: `floor check + call ${fmtRate(fl)}`, ratio: tv / fl },
    { measure: 'tasks/s vs Bottleneck', taskvalve: fmtRate(tv), reference: `Bottleneck.Group ${fmtRate(bn)}`, ratio: tv / bn },
  ];
}
