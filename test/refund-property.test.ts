// Rate units given back for tasks that never started: never more than they still hold. Against
// a naive exact model (fast-check) of the world in which those tasks were never submitted, every
// check() the limiter allows, the model allows too: a refund never makes the bucket fuller than
// if the units had never been taken.
import fc from 'fast-check';
import { expect, it } from 'vitest';
import { ModelBucket } from './support/model-bucket.js';
import { SlotModel } from './support/model-slots.js';
import { Manager } from '../src/index.js';

type Step = { dt: number; op: 'check' | 'queue' | 'abort'; cost: number; pick: number };

const scenario = fc
  .record({ limit: fc.integer({ min: 1, max: 50 }), intervalMs: fc.integer({ min: 1, max: 10_000 }), burst: fc.integer({ min: 2, max: 12 }) })
  .filter((r) => r.limit <= r.intervalMs * 1000)
  .chain((rate) =>
    fc.record({
      rate: fc.constant(rate),
      steps: fc.array(
        fc.record({
          dt: fc.integer({ min: 0, max: Math.max(1, Math.ceil((2 * rate.intervalMs) / rate.limit)) }),
          op: fc.constantFrom<'check' | 'queue' | 'abort'>('check', 'queue', 'abort'),
          cost: fc.integer({ min: 1, max: rate.burst }),
          pick: fc.nat(),
        }),
        { minLength: 1, maxLength: 60 },
      ),
    }),
  );

const turn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

it('every check() allowed after refunds is allowed in a world without the refunded tasks', async () => {
  await fc.assert(
    fc.asyncProperty(scenario, async ({ rate, steps }: { rate: { limit: number; intervalMs: number; burst: number }; steps: Step[] }) => {
      let now = Date.UTC(2026, 0, 1);
      const start = now;
      const manager = new Manager({ clock: () => now });
      manager.registerProfile('p', { rate: { ...rate, onLimit: 'reject' }, pool: { perUserConcurrency: 1 } });
      await manager.subscribe('u', 'p');
      const limiter = manager.getLimiter('u');
      const model = new ModelBucket(BigInt(rate.limit), BigInt(rate.intervalMs) * 1000n, BigInt(rate.burst));
      // A task that holds the user's one slot: everything admitted after it stays queued.
      let release!: () => void;
      const blocker = limiter.submit(() => new Promise<void>((done) => (release = done)));
      model.take(0, 1);
      await turn();
      const pending: { abort: AbortController; settled: Promise<unknown> }[] = [];
      for (const step of steps) {
        now += step.dt;
        const at = now - start;
        if (step.op === 'check') {
          const allowed = (await limiter.check(step.cost)).allowed;
          if (allowed) {
            expect(model.allows(at, step.cost)).toBe(true);
            model.take(at, step.cost);
          }
        } else if (step.op === 'queue') {
          // Admitted (its units taken) and queued behind the blocker, or refused: either way the
          // model never sees it.
          const abort = new AbortController();
          const settled = limiter.submit(() => 0, { cost: step.cost, signal: abort.signal }).catch(() => undefined);
          pending.push({ abort, settled });
          await turn();
        } else if (pending.length > 0) {
          const [p] = pending.splice(step.pick % pending.length, 1);
          p!.abort.abort();
          await p!.settled;
        }
      }
      for (const p of pending) p.abort.abort();
      release();
      await blocker;
      await manager.close();
    }),
    { numRuns: 150 },
  );
});

it('a task queued while the bucket was full, then aborted after its units drained and others were charged, gives nothing back', async () => {
  let now = Date.UTC(2026, 0, 1);
  const manager = new Manager({ clock: () => now });
  manager.registerProfile('p', { rate: { limit: 1, intervalMs: 1000, burst: 2, onLimit: 'reject' }, pool: { perUserConcurrency: 1 } });
  await manager.subscribe('u', 'p');
  const limiter = manager.getLimiter('u');
  let release!: () => void;
  const blocker = limiter.submit(() => new Promise<void>((done) => (release = done))); // 1 unit
  await turn();
  const abort = new AbortController();
  const queued = limiter.submit(() => 0, { signal: abort.signal }).catch((e: { code: string }) => e.code); // 1 unit, queued
  await turn();
  now += 5000; // both units drained long ago: the bucket is full again
  expect((await limiter.check(2)).allowed).toBe(true); // empty again, by units the queued task never held
  abort.abort();
  expect(await queued).toBe('ABORTED');
  // Giving back the queued task's unit now would give back one of the check's.
  expect((await limiter.check(1)).allowed).toBe(false);
  release();
  await blocker;
  await manager.close();
});

// Many tasks queued and aborted in random order, little time between steps: refunds whose
// slots others' refunds have moved.
const crowded = fc
  .record({ limit: fc.integer({ min: 1, max: 50 }), intervalMs: fc.integer({ min: 1, max: 10_000 }), burst: fc.integer({ min: 3, max: 16 }) })
  .filter((r) => r.limit <= r.intervalMs * 1000)
  .chain((rate) =>
    fc.record({
      rate: fc.constant(rate),
      steps: fc.array(
        fc.record({
          dt: fc.integer({ min: 0, max: Math.max(1, Math.ceil(rate.intervalMs / rate.limit / 2)) }),
          op: fc.constantFrom<'check' | 'queue' | 'abort'>('check', 'queue', 'queue', 'queue', 'abort', 'abort'),
          cost: fc.integer({ min: 1, max: Math.min(3, rate.burst) }),
          pick: fc.nat(),
        }),
        { minLength: 1, maxLength: 50 },
      ),
    }),
  );

it('in any order, refunds give back exactly what the charges still hold: every decision after them is the slot model\'s', async () => {
  await fc.assert(
    fc.asyncProperty(crowded, async ({ rate, steps }: { rate: { limit: number; intervalMs: number; burst: number }; steps: Step[] }) => {
      let now = Date.UTC(2026, 0, 1);
      const start = now;
      const manager = new Manager({ clock: () => now });
      manager.registerProfile('p', { rate: { ...rate, onLimit: 'reject' }, pool: { perUserConcurrency: 1 } });
      await manager.subscribe('u', 'p');
      const limiter = manager.getLimiter('u');
      const admitted = new Set<string>();
      manager.on('task', (e) => e.to === 'QUEUED' && admitted.add(e.id));
      const model = new SlotModel(BigInt(rate.limit), BigInt(rate.intervalMs) * 1000n, BigInt(rate.burst));
      let release!: () => void;
      const blocker = limiter.submit(() => new Promise<void>((done) => (release = done)));
      model.take(0, 1);
      await turn();
      const pending: { id: string; abort: AbortController; settled: Promise<unknown> }[] = [];
      let n = 0;
      for (const step of steps) {
        now += step.dt;
        const at = now - start;
        if (step.op === 'check') {
          expect({ at, check: step.cost, allowed: (await limiter.check(step.cost)).allowed }).toEqual({ at, check: step.cost, allowed: model.take(at, step.cost) });
        } else if (step.op === 'queue') {
          const id = `t${n++}`;
          const abort = new AbortController();
          const settled = limiter.submit(() => 0, { cost: step.cost, signal: abort.signal, taskId: id }).catch(() => undefined);
          await turn();
          expect({ at, queued: id, admitted: admitted.has(id) }).toEqual({ at, queued: id, admitted: model.take(at, step.cost, id) });
          if (admitted.has(id)) pending.push({ id, abort, settled });
        } else if (pending.length > 0) {
          const [p] = pending.splice(step.pick % pending.length, 1);
          p!.abort.abort();
          await p!.settled;
          await turn();
          model.giveBack(at, p!.id);
        }
        const { remaining, resetAfterMs } = await limiter.peek();
        expect({ at, remaining, resetAfterMs }).toEqual({ at, ...model.peek(at) });
      }
      for (const p of pending) p.abort.abort();
      release();
      await blocker;
      await manager.close();
    }),
    { numRuns: 300 },
  );
});

it('more refunds than a bucket remembers one by one (its log folds): never more back than the charges held, and exact latest or earliest charge first', async () => {
  const order = fc.constantFrom<'latest' | 'earliest' | 'random'>('latest', 'earliest', 'random');
  await fc.assert(
    fc.asyncProperty(fc.integer({ min: 33, max: 60 }), order, fc.array(fc.nat(), { minLength: 60, maxLength: 60 }), fc.array(fc.integer({ min: 0, max: 400 }), { minLength: 60, maxLength: 60 }), async (count, how, picks, gaps) => {
      let now = Date.UTC(2026, 0, 1);
      const start = now;
      const manager = new Manager({ clock: () => now });
      // 1 unit per second, room for 100.
      manager.registerProfile('p', { rate: { limit: 1, intervalMs: 1000, burst: 100, onLimit: 'reject' }, pool: { perUserConcurrency: 1 } });
      await manager.subscribe('u', 'p');
      const limiter = manager.getLimiter('u');
      const model = new SlotModel(1n, 1_000_000n, 100n);
      let release!: () => void;
      const blocker = limiter.submit(() => new Promise<void>((done) => (release = done)));
      model.take(0, 1);
      await turn();
      const tasks: { id: string; abort: AbortController; settled: Promise<unknown> }[] = [];
      for (let i = 0; i < count; i++) {
        const abort = new AbortController();
        const id = `t${i}`;
        tasks.push({ id, abort, settled: limiter.submit(() => 0, { signal: abort.signal, taskId: id }).catch(() => undefined) });
        model.take(0, 1, id);
      }
      await turn();
      for (let k = 0; tasks.length > 0; k++) {
        const at = tasks.length - 1;
        const [task] = tasks.splice(how === 'latest' ? at : how === 'earliest' ? 0 : (picks[k] as number) % tasks.length, 1);
        now += gaps[k] as number;
        // Whole ms, and a unit of 1000 ms: the bucket's end is a whole ms, which peek() tells exactly.
        const before = (await limiter.peek()).resetAfterMs;
        const modelBefore = model.peek(now - start).resetAfterMs;
        task!.abort.abort();
        await task!.settled;
        await turn();
        model.giveBack(now - start, task!.id);
        const after = await limiter.peek();
        const right = model.peek(now - start);
        // Never emptier than the slots say; and while the two agree, this refund gave back exactly what its charge still held.
        expect(after.resetAfterMs).toBeGreaterThanOrEqual(right.resetAfterMs);
        if (before === modelBefore) expect(before - after.resetAfterMs).toBeLessThanOrEqual(modelBefore - right.resetAfterMs);
        if (how !== 'random') expect({ how, k, remaining: after.remaining, resetAfterMs: after.resetAfterMs }).toEqual({ how, k, ...right });
      }
      release();
      await blocker;
      await manager.close();
    }),
    { numRuns: 120 },
  );
});
