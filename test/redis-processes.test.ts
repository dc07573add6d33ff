// Exactness across processes: 4 forked Node processes, each with its own ioredis client and its
// own Manager over RedisStore, contend for one bucket / one quota held in a real redis-server
// (standalone, and a 3-master Redis Cluster). Rounds are driven over IPC with a ready/go barrier,
// so the 4 x 250 operations of a round really race; the totals across processes must be exact.
import type { ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FromChild, Scenario, Target, ToChild } from './fixtures/contender.js';
import { forkTs, stopChild } from './support/child.js';
import { startCluster, startRedis, type RedisClusterHandle, type RedisServer } from './support/redis.js';

const CHILDREN = 4;
const OPS = 250;
const TOTAL = CHILDREN * OPS;
/** A safety net against a hung child, never a synchronisation: every step waits for messages. */
const STEP_TIMEOUT_MS = 15_000;
const FIXTURE = fileURLToPath(new URL('./fixtures/contender.ts', import.meta.url));
const ROOT = fileURLToPath(new URL('..', import.meta.url));

type Done = Extract<FromChild, { type: 'done' }>;
type Inspected = Extract<FromChild, { type: 'inspected' }>;

interface Waiter {
  type: FromChild['type'];
  round: number;
  from: Set<number>;
  got: Map<number, FromChild>;
  resolve(messages: FromChild[]): void;
  reject(error: Error): void;
  timer: NodeJS.Timeout;
}

/** The 4 forked contenders and the message plumbing to them. */
class Contenders {
  readonly children: ChildProcess[] = [];
  private readonly outputs: (() => string)[] = [];
  private readonly waiters = new Set<Waiter>();
  private failure: Error | undefined;

  constructor(count: number) {
    for (let i = 0; i < count; i++) {
      const { child, output } = forkTs(FIXTURE, { cwd: ROOT });
      child.on('message', (message: FromChild) => this.receive(i, message));
      child.on('exit', (code, signal) => {
        if (!this.stopping) this.fail(new Error(`contender ${i} exited (${code ?? signal})`));
      });
      child.on('error', (error) => this.fail(new Error(`contender ${i}: ${error.message}`)));
      this.children.push(child);
      this.outputs.push(output);
    }
  }

  stopping = false;

  private fail(error: Error): void {
    const output = this.outputs.map((o, i) => `--- contender ${i} output ---\n${o()}`).join('\n');
    this.failure ??= new Error(`${error.message}\n${output}`);
    for (const w of this.waiters) {
      clearTimeout(w.timer);
      w.reject(this.failure);
    }
    this.waiters.clear();
  }

  private receive(index: number, message: FromChild): void {
    if (message.type === 'failed') {
      this.fail(new Error(`contender ${index} failed in round ${message.round}: ${message.message}`));
      return;
    }
    const round = 'round' in message ? message.round : -1;
    for (const w of this.waiters) {
      if (w.type !== message.type || w.round !== round || !w.from.has(index)) continue;
      w.got.set(index, message);
      if (w.got.size === w.from.size) {
        clearTimeout(w.timer);
        this.waiters.delete(w);
        w.resolve([...w.from].map((i) => w.got.get(i) as FromChild));
      }
      return;
    }
  }

  send(index: number, message: ToChild): void {
    this.children[index]?.send(message);
  }

  /** Registers the wait before anything is sent, then sends, then resolves with one reply per child. */
  request<T extends FromChild>(type: T['type'], round: number, to: number[], message: (i: number) => ToChild | undefined): Promise<T[]> {
    if (this.failure) return Promise.reject(this.failure);
    const result = new Promise<T[]>((resolve, reject) => {
      const waiter: Waiter = {
        type,
        round,
        from: new Set(to),
        got: new Map(),
        resolve: resolve as (m: FromChild[]) => void,
        reject,
        timer: setTimeout(() => {
          this.waiters.delete(waiter);
          reject(new Error(`no '${type}' from contenders ${to.filter((i) => !waiter.got.has(i)).join(', ')} in round ${round} within ${STEP_TIMEOUT_MS} ms`));
        }, STEP_TIMEOUT_MS),
      };
      this.waiters.add(waiter);
    });
    for (const i of to) {
      const m = message(i);
      if (m !== undefined) this.send(i, m);
    }
    return result;
  }

  all(): number[] {
    return this.children.map((_, i) => i);
  }

  /** 'stop' (close the manager, disconnect), then SIGKILL by pid whoever has not exited. */
  async stop(timeoutMs = 5_000): Promise<void> {
    this.stopping = true;
    for (const w of this.waiters) clearTimeout(w.timer);
    this.waiters.clear();
    await Promise.all(this.children.map((child) => stopChild(child, { type: 'stop' } satisfies ToChild, timeoutMs)));
  }
}

let single: RedisServer | undefined;
let cluster: RedisClusterHandle | undefined;
let contenders: Contenders | undefined;
let rounds = 0;
const runId = Date.now().toString(36);

beforeAll(async () => {
  // Fork first: the children's start-up (tsx, imports) overlaps the servers' start-up.
  contenders = new Contenders(CHILDREN);
  [single, cluster] = await Promise.all([startRedis(), startCluster(3)]);
  const targets: Record<string, Target> = {
    single: { kind: 'single', url: single.url },
    cluster: { kind: 'cluster', nodes: cluster.nodes },
  };
  const c = contenders;
  await c.request('inited', -1, c.all(), (index) => ({ type: 'init', index, targets }));
}, 60_000);

afterAll(async () => {
  await contenders?.stop();
  await Promise.all([single?.stop(), cluster?.stop()]);
}, 30_000);

interface RoundResult {
  /** Operations admitted, over all processes. */
  admitted: number;
  units: number;
  perProcess: number[];
  /** Rejection codes (and denied checks as RATE_LIMITED), summed over all processes. */
  outcomes: Record<string, number>;
  round: number;
}

/** One round: setup on every child, barrier, 'go' to all at once, collect the 4 reports. */
async function play(target: string, scenario: Scenario): Promise<RoundResult> {
  const c = contenders as Contenders;
  const round = ++rounds;
  const prefix = `rp-${runId}-${round}`;
  // Subscribers first (they must finish subscribing before anyone fires), the others alongside:
  // 'go' is sent only once all of them have answered 'ready'.
  await c.request('ready', round, c.all(), () => ({ type: 'setup', round, target, prefix, scenario }));
  const reports = await c.request<Done>('done', round, c.all(), () => ({ type: 'go', round }));
  const outcomes: Record<string, number> = {};
  for (const r of reports) for (const [code, n] of Object.entries(r.outcomes)) outcomes[code] = (outcomes[code] ?? 0) + n;
  return {
    admitted: reports.reduce((s, r) => s + r.admitted, 0),
    units: reports.reduce((s, r) => s + r.units, 0),
    perProcess: reports.map((r) => r.admitted),
    outcomes,
    round,
  };
}

/** Asks child 0 for the user's subscription and bucket as the store holds them now. */
async function inspect(round: number, userId: string): Promise<Inspected> {
  const c = contenders as Contenders;
  const [answer] = await c.request<Inspected>('inspected', round, [0], () => ({ type: 'inspect', round, userId }));
  return answer as Inspected;
}

const sharedBurst10 = (cost: number, users: number, op: Scenario['op'] = 'submit'): Scenario => ({
  // 10 units, refilling one unit per 6 minutes: nothing refills during the test.
  profile: { rate: { limit: 10, intervalMs: 3_600_000, shared: 'k', onLimit: 'reject' } },
  ops: OPS,
  cost,
  op,
  users,
});

const quota10: Scenario = {
  // A dedicated bucket far bigger than the round: only the quota can say no.
  profile: { rate: { limit: 100_000, intervalMs: 1_000, burst: 5_000, onLimit: 'reject' }, quota: { limit: 10 } },
  ops: OPS,
  cost: 1,
  op: 'submit',
  users: 1,
};

for (const target of ['single', 'cluster'] as const) {
  const label = target === 'single' ? 'standalone redis-server' : '3-master Redis Cluster';
  const repeats = target === 'single' ? 20 : 10;

  describe(`${CHILDREN} processes x ${OPS} concurrent operations on one ${label}`, () => {
    it('shared key, burst 10, no refill: submit admits exactly 10 in total, the rest RATE_LIMITED', async () => {
      const r = await play(target, sharedBurst10(1, CHILDREN));
      expect(r.admitted, `per process: ${r.perProcess.join(', ')}`).toBe(10);
      expect(r.outcomes).toEqual({ RATE_LIMITED: TOTAL - 10 });
      expect((await inspect(r.round, 'u0')).remaining).toBe(0);
    });

    it('shared key, burst 10, cost 3: exactly 3 admitted (9 units), the rest RATE_LIMITED', async () => {
      const r = await play(target, sharedBurst10(3, CHILDREN));
      expect(r.admitted, `per process: ${r.perProcess.join(', ')}`).toBe(3);
      expect(r.units).toBe(9);
      expect(r.outcomes).toEqual({ RATE_LIMITED: TOTAL - 3 });
      expect((await inspect(r.round, 'u0')).remaining).toBe(1);
    });

    it('shared key, burst 10, check(1) by one user from every process: exactly 10 allowed', async () => {
      const r = await play(target, sharedBurst10(1, 1, 'check'));
      expect(r.admitted, `per process: ${r.perProcess.join(', ')}`).toBe(10);
      expect(r.outcomes).toEqual({ RATE_LIMITED: TOTAL - 10 });
      const seen = await inspect(r.round, 'u0');
      expect(seen.usage).toBe(10);
      expect(seen.remaining).toBe(0);
    });

    it('quota 10 for one user: exactly 10 admitted, the rest QUOTA_EXCEEDED, usage 10', async () => {
      const r = await play(target, quota10);
      expect(r.admitted, `per process: ${r.perProcess.join(', ')}`).toBe(10);
      expect(r.outcomes).toEqual({ QUOTA_EXCEEDED: TOTAL - 10 });
      const seen = await inspect(r.round, 'u0');
      expect(seen.usage).toBe(10);
      expect(seen.quotaLimit).toBe(10);
    });

    it(`shared key, cost 1, repeated ${repeats} times: every round admits exactly 10`, async () => {
      const totals: number[] = [];
      const others: Record<string, number>[] = [];
      for (let i = 0; i < repeats; i++) {
        // Alternate one user named from every process and one user per process, both on key 'k'.
        const r = await play(target, sharedBurst10(1, i % 2 === 0 ? CHILDREN : 1));
        totals.push(r.admitted);
        others.push(r.outcomes);
      }
      const over = totals.filter((t) => t > 10).length;
      const under = totals.filter((t) => t < 10).length;
      expect({ over, under, totals }).toEqual({ over: 0, under: 0, totals: Array(repeats).fill(10) });
      expect(others).toEqual(Array(repeats).fill({ RATE_LIMITED: TOTAL - 10 }));
    });
  });
}
