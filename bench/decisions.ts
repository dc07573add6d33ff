/**
 * Section 1: in-memory admission decisions per second on 10,000 keys (users).
 *
 * Compared, each on its own pre-touched 10,000 keys, allowed (a limit never reached) and
 * denied (a bucket of 1 per hour, already spent):
 *   - the floor: a bare Map + float GCRA (bench/lib/floor.ts);
 *   - taskvalve: `manager.getLimiter(user).check(1)`, users subscribed to a profile with a
 *     dedicated bucket, both with Limiter handles cached in an array beforehand and with
 *     `getLimiter(user)` called on every decision;
 *   - rate-limiter-flexible: `RateLimiterMemory.consume(key)`, which rejects when denied.
 *
 * Two ways of calling: one decision in flight (`await` each), and batches of 256 started
 * together then awaited with Promise.all. Keys are visited in a fixed pseudo-random order.
 * 10,000 users is also exactly what the Manager's Limiter handle cache holds, so getLimiter
 * never evicts here.
 *
 * Each bench has its own loop written out (no shared `op` callback): a callback called from
 * one shared loop with eight different closures turns megamorphic and adds the same few ns to
 * every bench, which would blur the ratios this section is about.
 */
import { RateLimiterMemory, RateLimiterRes } from 'rate-limiter-flexible';
import { Manager, type Decision, type Limiter } from '../src/index.js';
import { FloorLimiter, type FloorDecision } from './lib/floor.js';
import { compare, expect, fmtRate, keyOrder, type Bench, type Measured, type Plan } from './lib/harness.js';
import { atLeast, heading, type Row } from './lib/table.js';

const USERS = 10_000;
const BATCH = 256;
/** Length of the key visiting order (a power of two, indexed with a mask). */
const ORDER = 1 << 16;
const MASK = ORDER - 1;

/** Allowed: more than any run can spend. Denied: 1 per hour, spent before timing. */
const OPEN = { limit: 1_000_000, intervalMs: 1000 } as const;
const CLOSED = { limit: 1, intervalMs: 3_600_000 } as const;

const PLAN: Plan = { rounds: 7, warmup: 2, roundMs: 250, probeOps: 20_000 };


/** A manager with USERS users subscribed to one profile of the given rate. */
async function subscribedManager(rate: { limit: number; intervalMs: number }, users: readonly string[]): Promise<Manager> {
  const manager = new Manager();
  manager.registerProfile('bench', { rate: { ...rate } });
  for (const user of users) await manager.subscribe(user, 'bench');
  return manager;
}

const isRlfDenial = (error: unknown): false => {
  if (error instanceof RateLimiterRes) return false;
  throw error;
};
const yes = (): true => true;

export async function decisions(log: (line: string) => void): Promise<Row[]> {
  const users = Array.from({ length: USERS }, (_, i) => `user-${String(i).padStart(5, '0')}`);
  const order = keyOrder(USERS);

  // --- set-up: every key exists (and, for "denied", is spent) before anything is timed ---
  const tvOpen = await subscribedManager(OPEN, users);
  const tvClosed = await subscribedManager(CLOSED, users);
  const openHandles: Limiter[] = users.map((u) => tvOpen.getLimiter(u));
  const closedHandles: Limiter[] = users.map((u) => tvClosed.getLimiter(u));
  const floorOpen = new FloorLimiter(OPEN.limit, OPEN.intervalMs);
  const floorClosed = new FloorLimiter(CLOSED.limit, CLOSED.intervalMs);
  const rlfOpen = new RateLimiterMemory({ points: 1_000_000_000, duration: 3600 });
  const rlfClosed = new RateLimiterMemory({ points: 1, duration: 3600 });
  for (let i = 0; i < USERS; i++) {
    const user = users[i]!;
    expect((await openHandles[i]!.check(1)).allowed, 'taskvalve open bucket allows');
    expect((await closedHandles[i]!.check(1)).allowed, 'taskvalve closed bucket allows its first unit');
    await floorOpen.check(user);
    await floorClosed.check(user);
    await rlfOpen.consume(user);
    await rlfClosed.consume(user);
  }

  const tvBatch: Promise<Decision>[] = new Array<Promise<Decision>>(BATCH);
  const floorBatch: Promise<FloorDecision>[] = new Array<Promise<FloorDecision>>(BATCH);
  const rlfBatch: Promise<boolean>[] = new Array<Promise<boolean>>(BATCH);

  /** Seq benches check their allowed count: all of them, or none. */
  const tally = (name: string, allowed: number, ops: number, wantAllowed: boolean): void =>
    expect(allowed === (wantAllowed ? ops : 0), `${name}: ${allowed} of ${ops} allowed`);

  const seq: Bench[] = [
    {
      name: 'floor allowed, seq',
      async run(ops) {
        let allowed = 0;
        for (let i = 0; i < ops; i++) if ((await floorOpen.check(users[order[i & MASK]!]!)).allowed) allowed++;
        tally(this.name, allowed, ops, true);
      },
    },
    {
      name: 'floor denied, seq',
      async run(ops) {
        let allowed = 0;
        for (let i = 0; i < ops; i++) if ((await floorClosed.check(users[order[i & MASK]!]!)).allowed) allowed++;
        tally(this.name, allowed, ops, false);
      },
    },
    {
      name: 'taskvalve allowed, cached handles, seq',
      async run(ops) {
        let allowed = 0;
        for (let i = 0; i < ops; i++) if ((await openHandles[order[i & MASK]!]!.check(1)).allowed) allowed++;
        tally(this.name, allowed, ops, true);
      },
    },
    {
      name: 'taskvalve allowed, getLimiter, seq',
      async run(ops) {
        let allowed = 0;
        for (let i = 0; i < ops; i++) if ((await tvOpen.getLimiter(users[order[i & MASK]!]!).check(1)).allowed) allowed++;
        tally(this.name, allowed, ops, true);
      },
    },
    {
      name: 'taskvalve denied, cached handles, seq',
      async run(ops) {
        let allowed = 0;
        for (let i = 0; i < ops; i++) if ((await closedHandles[order[i & MASK]!]!.check(1)).allowed) allowed++;
        tally(this.name, allowed, ops, false);
      },
    },
    {
      name: 'taskvalve denied, getLimiter, seq',
      async run(ops) {
        let allowed = 0;
        for (let i = 0; i < ops; i++) if ((await tvClosed.getLimiter(users[order[i & MASK]!]!).check(1)).allowed) allowed++;
        tally(this.name, allowed, ops, false);
      },
    },
    {
      name: 'RLF allowed, seq',
      async run(ops) {
        let allowed = 0;
        for (let i = 0; i < ops; i++) {
          try {
            await rlfOpen.consume(users[order[i & MASK]!]!);
            allowed++;
          } catch (error) {
            isRlfDenial(error);
          }
        }
        tally(this.name, allowed, ops, true);
      },
    },
    {
      name: 'RLF denied, seq',
      async run(ops) {
        let allowed = 0;
        for (let i = 0; i < ops; i++) {
          try {
            await rlfClosed.consume(users[order[i & MASK]!]!);
            allowed++;
          } catch (error) {
            isRlfDenial(error);
          }
        }
        tally(this.name, allowed, ops, false);
      },
    },
  ];

  const batched: Bench[] = [
    {
      name: 'floor allowed, batch',
      step: BATCH,
      async run(ops) {
        let allowed = 0;
        for (let i = 0; i < ops; i += BATCH) {
          for (let j = 0; j < BATCH; j++) floorBatch[j] = floorOpen.check(users[order[(i + j) & MASK]!]!);
          for (const d of await Promise.all(floorBatch)) if (d.allowed) allowed++;
        }
        tally(this.name, allowed, ops, true);
      },
    },
    {
      name: 'floor denied, batch',
      step: BATCH,
      async run(ops) {
        let allowed = 0;
        for (let i = 0; i < ops; i += BATCH) {
          for (let j = 0; j < BATCH; j++) floorBatch[j] = floorClosed.check(users[order[(i + j) & MASK]!]!);
          for (const d of await Promise.all(floorBatch)) if (d.allowed) allowed++;
        }
        tally(this.name, allowed, ops, false);
      },
    },
    {
      name: 'taskvalve allowed, cached handles, batch',
      step: BATCH,
      async run(ops) {
        let allowed = 0;
        for (let i = 0; i < ops; i += BATCH) {
          for (let j = 0; j < BATCH; j++) tvBatch[j] = openHandles[order[(i + j) & MASK]!]!.check(1);
          for (const d of await Promise.all(tvBatch)) if (d.allowed) allowed++;
        }
        tally(this.name, allowed, ops, true);
      },
    },
    {
      name: 'taskvalve allowed, getLimiter, batch',
      step: BATCH,
      async run(ops) {
        let allowed = 0;
        for (let i = 0; i < ops; i += BATCH) {
          for (let j = 0; j < BATCH; j++) tvBatch[j] = tvOpen.getLimiter(users[order[(i + j) & MASK]!]!).check(1);
          for (const d of await Promise.all(tvBatch)) if (d.allowed) allowed++;
        }
        tally(this.name, allowed, ops, true);
      },
    },
    {
      name: 'taskvalve denied, cached handles, batch',
      step: BATCH,
      async run(ops) {
        let allowed = 0;
        for (let i = 0; i < ops; i += BATCH) {
          for (let j = 0; j < BATCH; j++) tvBatch[j] = closedHandles[order[(i + j) & MASK]!]!.check(1);
          for (const d of await Promise.all(tvBatch)) if (d.allowed) allowed++;
        }
        tally(this.name, allowed, ops, false);
      },
    },
    {
      name: 'taskvalve denied, getLimiter, batch',
      step: BATCH,
      async run(ops) {
        let allowed = 0;
        for (let i = 0; i < ops; i += BATCH) {
          for (let j = 0; j < BATCH; j++) tvBatch[j] = tvClosed.getLimiter(users[order[(i + j) & MASK]!]!).check(1);
          for (const d of await Promise.all(tvBatch)) if (d.allowed) allowed++;
        }
        tally(this.name, allowed, ops, false);
      },
    },
    {
      name: 'RLF allowed, batch',
      step: BATCH,
      async run(ops) {
        let allowed = 0;
        for (let i = 0; i < ops; i += BATCH) {
          for (let j = 0; j < BATCH; j++) rlfBatch[j] = rlfOpen.consume(users[order[(i + j) & MASK]!]!).then(yes, isRlfDenial);
          for (const ok of await Promise.all(rlfBatch)) if (ok) allowed++;
        }
        tally(this.name, allowed, ops, true);
      },
    },
    {
      name: 'RLF denied, batch',
      step: BATCH,
      async run(ops) {
        let allowed = 0;
        for (let i = 0; i < ops; i += BATCH) {
          for (let j = 0; j < BATCH; j++) rlfBatch[j] = rlfClosed.consume(users[order[(i + j) & MASK]!]!).then(yes, isRlfDenial);
          for (const ok of await Promise.all(rlfBatch)) if (ok) allowed++;
        }
        tally(this.name, allowed, ops, false);
      },
    },
  ];

  log('decisions, one in flight (await each):');
  const s = await compare(seq, PLAN, log);
  log(`decisions, batches of ${BATCH} (Promise.all):`);
  const b = await compare(batched, PLAN, log);

  await tvOpen.close();
  await tvClosed.close();

  return [...rowsFor(s, 'seq'), ...rowsFor(b, 'batch')];
}

/** The rows of one calling mode: taskvalve against the floor and against RLF, per handle style. */
function rowsFor(m: Map<string, Measured>, mode: 'seq' | 'batch'): Row[] {
  const get = (name: string): number => m.get(`${name}, ${mode}`)!.opsPerSec;
  const floor = { allowed: get('floor allowed'), denied: get('floor denied') };
  const rlf = { allowed: get('RLF allowed'), denied: get('RLF denied') };
  const rows: Row[] = [heading(mode === 'seq' ? 'check(1), 10,000 users, one in flight' : `check(1), 10,000 users, batches of ${BATCH}`)];
  for (const how of ['getLimiter', 'cached handles'] as const) {
    const label = how === 'getLimiter' ? 'getLimiter(user).check' : 'cached handle.check';
    for (const outcome of ['allowed', 'denied'] as const) {
      const tv = get(`taskvalve ${outcome}, ${how}`);
      // Targets: getLimiter(user) at least 0.8 of the floor, a cached handle 1.0 when allowed;
      // at least 2x RateLimiterMemory allowed and 6x denied.
      const vsFloor = { measure: `${label}, ${outcome}, vs floor`, taskvalve: fmtRate(tv), reference: `Map+GCRA ${fmtRate(floor[outcome])}`, ratio: tv / floor[outcome] };
      rows.push(
        how === 'getLimiter' ? atLeast(vsFloor, 0.8) : outcome === 'allowed' ? atLeast(vsFloor, 1.0) : vsFloor,
        atLeast({ measure: `${label}, ${outcome}, vs RLF`, taskvalve: fmtRate(tv), reference: `RLF consume ${fmtRate(rlf[outcome])}`, ratio: tv / rlf[outcome] }, outcome === 'allowed' ? 2 : 6),
      );
    }
  }
  return rows;
}
