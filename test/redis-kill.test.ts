// kill -9 of an append-only Redis under load, for each outage policy: two forked processes, each
// with its own ioredis client (default options), RedisStore and Manager, keep thousands of calls
// in flight over a few hundred users while the server is killed and restarted, twice. Once the load has
// stopped and the Managers are closed (calls in doubt settled, 'local' charges landed), every
// user's usage in Redis equals exactly what the callers were told was charged: no phantom charge
// for a call reported failed, no charge missing for a call reported admitted.
import type { ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Redis } from 'ioredis';
import { Manager, RedisStore, type ProfileConfig } from '../src/index.js';
import type { Counts, FromChild, Policy, Setup, ToChild } from './fixtures/kill-load.js';
import { forkTs, stopChild } from './support/child.js';
import { startRedis, type RedisServer } from './support/redis.js';

const FIXTURE = fileURLToPath(new URL('./fixtures/kill-load.ts', import.meta.url));
const ROOT = fileURLToPath(new URL('..', import.meta.url));
const PROCESSES = 2;
/** Calls each process keeps in flight. */
const LANES = 2_000;
const USERS = 300;
/** A safety net against a hung child, never a synchronisation: every step waits for a message. */
const STEP_TIMEOUT_MS = 20_000;

// One task at a time per user, and a short queue behind: some admitted tasks never start
// (QUEUE_FULL), and their quota is refunded.
const pool = { perUserConcurrency: 1, maxQueue: 20 };
const PROFILES: Record<string, ProfileConfig> = {
  // Its own bucket per user, small enough that the load is often refused; a quota far away.
  solo: { rate: { limit: 50, intervalMs: 1_000, burst: 20, onLimit: 'reject' }, quota: { limit: 1_000_000, periodMs: 86_400_000 }, pool },
  // One bucket for all its users, submits wait their turn (rate turns, and units given back for
  // tasks that never start); a hard lifetime quota the load reaches.
  pooled: { rate: { limit: 2_000, intervalMs: 1_000, burst: 100, shared: 'pool', onLimit: 'wait', maxWaitMs: 100 }, quota: { limit: 30 }, pool },
};
/**
 * Under 'local' a hard quota is decided by Redis alone (it fails closed): the solo users' quota
 * is soft there, so that 'local' has admissions of its own to charge back; the pooled users'
 * hard quota stays and must hold.
 */
const profilesFor = (policy: Policy): Record<string, ProfileConfig> =>
  policy === 'local' ? { ...PROFILES, solo: { ...(PROFILES.solo as ProfileConfig), quota: { limit: 1_000_000, periodMs: 86_400_000, kind: 'soft' } } } : PROFILES;
const users = Array.from({ length: USERS }, (_, i) => `u${i}`);
const profileOf = (i: number): string => (i % 3 === 2 ? 'pooled' : 'solo');

/** One forked load process and the messages it sent, awaited by type. */
class Child {
  private readonly process: ChildProcess;
  private readonly output: () => string;
  private readonly waiters = new Map<string, { resolve(m: FromChild): void; reject(e: Error): void; timer: NodeJS.Timeout }>();
  private failure: Error | undefined;
  private exiting = false;

  constructor(readonly index: number) {
    ({ child: this.process, output: this.output } = forkTs(FIXTURE, { cwd: ROOT }));
    this.process.on('message', (message: FromChild) => this.receive(message));
    this.process.on('exit', (code, signal) => {
      if (!this.exiting) this.fail(`exited (${code ?? signal})`);
    });
  }

  private fail(why: string): void {
    this.failure ??= new Error(`load process ${this.index} ${why}\n--- its output ---\n${this.output()}`);
    for (const w of this.waiters.values()) {
      clearTimeout(w.timer);
      w.reject(this.failure);
    }
    this.waiters.clear();
  }

  private receive(message: FromChild): void {
    if (message.type === 'failed') return this.fail(`failed in round ${message.round}: ${message.message}`);
    const key = `${message.type}:${message.round}`;
    const waiter = this.waiters.get(key);
    if (waiter === undefined) return this.fail(`sent '${key}' unasked`);
    clearTimeout(waiter.timer);
    this.waiters.delete(key);
    waiter.resolve(message);
  }

  /** Registers the wait for `type` in `round`, then sends `message`. */
  ask<T extends FromChild['type']>(type: T, round: number, message?: ToChild): Promise<Extract<FromChild, { type: T }>> {
    if (this.failure) return Promise.reject(this.failure);
    const answer = new Promise<FromChild>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters.delete(`${type}:${round}`);
        reject(new Error(`no '${type}' from load process ${this.index} in round ${round} within ${STEP_TIMEOUT_MS} ms`));
      }, STEP_TIMEOUT_MS);
      this.waiters.set(`${type}:${round}`, { resolve, reject, timer });
    });
    if (message !== undefined) this.send(message);
    return answer as Promise<Extract<FromChild, { type: T }>>;
  }

  send(message: ToChild): void {
    this.process.send(message);
  }

  /** Asks it to leave; SIGKILL by pid if it has not within 5 s. */
  async stop(): Promise<void> {
    this.exiting = true;
    await stopChild(this.process, { type: 'exit' } satisfies ToChild);
  }
}

let server: RedisServer;
let children: Child[] = [];

beforeAll(async () => {
  // Fork first: the children's start-up (tsx, imports) overlaps the server's.
  children = Array.from({ length: PROCESSES }, (_, i) => new Child(i));
  server = await startRedis({ appendonly: true });
}, 30_000);

afterAll(async () => {
  await Promise.all(children.map((c) => c.stop()));
  await server?.stop();
}, 30_000);

/**
 * A Manager of the test's own, straight on Redis (fail-closed), for the given round's prefix. It
 * is not under test: a long timeout keeps its calls from failing on a busy machine.
 */
function direct(prefix: string, policy: Policy): { manager: Manager; client: Redis } {
  const client = new Redis(server.url);
  const manager = new Manager({ store: new RedisStore({ client, prefix, timeoutMs: 15_000 }) });
  for (const [name, config] of Object.entries(profilesFor(policy))) manager.registerProfile(name, config);
  return { manager, client };
}

async function closeDirect({ manager, client }: { manager: Manager; client: Redis }): Promise<void> {
  await manager.close();
  await client.quit();
}

const sum = (values: number[]): number => values.reduce((a, b) => a + b, 0);

let rounds = 0;

/** One round under `policy`: load, kill -9 and restart twice, more load, stop; answers each process's report and every user's usage. */
async function play(policy: Policy) {
  const round = ++rounds;
  const prefix = `kill-${policy}`;
  const admin = direct(prefix, policy);
  await Promise.all(users.map((user, i) => admin.manager.subscribe(user, profileOf(i))));
  await closeDirect(admin);

  const setup: Setup = { type: 'setup', round, url: server.url, prefix, policy, profiles: profilesFor(policy), users, lanes: LANES };
  await Promise.all(children.map((c) => c.ask('ready', round, setup)));
  await Promise.all(children.map((c) => c.ask('loaded', round, { type: 'go', round, allowed: 2_000 })));
  // Killed while both processes have their calls in flight: the server is busy. Then killed again
  // as soon as it answers, while the processes settle what the first kill left in doubt (and
  // 'local' charges what it admitted meanwhile); then the load runs on.
  for (const after of [50, 2_000]) {
    await server.kill();
    await Promise.all(children.map((c) => c.ask('cut', round, { type: 'killed', round, without: 200 })));
    await server.restart();
    await Promise.all(children.map((c) => c.ask('resumed', round, { type: 'restarted', round, allowed: after })));
  }
  const reports = await Promise.all(children.map((c) => c.ask('done', round, { type: 'stop', round })));

  const reader = direct(prefix, policy);
  const usage = await Promise.all(users.map(async (user) => (await reader.manager.getSubscription(user))?.usage));
  await closeDirect(reader);
  const told = users.map((user) => sum(reports.map((r) => r.told[user] ?? 0)));
  return { reports, usage, told };
}

/** Adds two processes' counts. */
function total(counts: Counts[]): Omit<Counts, 'faults'> & { faults: number } {
  const refused: Record<string, number> = {};
  for (const c of counts) for (const [code, n] of Object.entries(c.refused)) refused[code] = (refused[code] ?? 0) + n;
  const add = (field: keyof Omit<Counts, 'refused' | 'faults'>): number => sum(counts.map((c) => c[field]));
  return {
    calls: add('calls'),
    allowed: add('allowed'),
    withoutRedis: add('withoutRedis'),
    failed: add('failed'),
    failedInOutage: add('failedInOutage'),
    withoutRedisInOutage: add('withoutRedisInOutage'),
    refused,
    faults: sum(counts.map((c) => c.faults.length)),
  };
}

describe(`kill -9 of an append-only Redis under load: ${PROCESSES} processes x ${LANES} calls in flight over ${USERS} users`, () => {
  for (const policy of ['fail-closed', 'fail-open', 'local'] as const) {
    it(`${policy}: every user's usage equals exactly what callers were told was charged`, async ({ annotate }) => {
      const { reports, usage, told } = await play(policy);
      const counts = total(reports.map((r) => r.counts));
      const figures = `${policy}: ${JSON.stringify(counts)}, usage ${sum(usage.map((u) => u ?? 0))}, told ${sum(told)}`;
      await annotate(figures);

      // Zero phantom charges and zero missing, user by user.
      const wrong = users.flatMap((user, i) => (usage[i] === told[i] ? [] : [{ user, usage: usage[i], told: told[i] }]));
      expect(wrong, figures).toEqual([]);
      // Not vacuous: the load was charged, and calls went without Redis while it was away.
      expect(counts.allowed).toBeGreaterThan(0);
      if (policy === 'fail-closed') expect(counts.failedInOutage).toBeGreaterThan(0);
      else expect(counts.withoutRedisInOutage).toBeGreaterThan(0);
      // Every rejection is a refusal or the outage's error: nothing else reached a caller.
      const codes = Object.keys(counts.refused).filter((code) => !['RATE_LIMITED', 'QUOTA_EXCEEDED', 'QUEUE_FULL'].includes(code));
      expect(codes, figures).toEqual([]);
    }, 60_000);
  }
});
