// Guarantees at the edges on a RedisStore (an asynchronous store, a real redis-server): close()
// against admissions in flight, replay once, and a late abort while the dead letter is stored.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Manager, RedisStore, TaskvalveError } from '../src/index.js';
import { rejection } from './helpers.js';
import { startRedis, type RedisServer } from './support/redis.js';

const TASKS = new URL('./fixtures/tasks.mjs', import.meta.url);
let server: RedisServer;
const open: Array<() => Promise<void>> = [];
let prefixes = 0;

beforeAll(async () => {
  server = await startRedis();
}, 60_000);

afterAll(async () => {
  await server?.stop();
});

afterEach(async () => {
  for (const close of open.splice(0)) await close();
});

/** A manager on a fresh prefix of the test server, closed and disconnected after the test. */
async function setup(profile: Parameters<Manager['registerProfile']>[1] = { rate: { limit: 1000, intervalMs: 1000 }, quota: { limit: 100 } }): Promise<Manager> {
  const client = new Redis({ port: server.port });
  const manager = new Manager({ store: new RedisStore({ client, prefix: `edge${++prefixes}` }) });
  open.push(async () => {
    await manager.close({ drain: false, timeoutMs: 1000 });
    client.disconnect();
  });
  manager.registerProfile('p', profile);
  await manager.subscribe('u', 'p');
  return manager;
}

describe('6. close() against admissions in flight (RedisStore)', () => {
  it('close({ drain: false }) right after submits: every caller gets SHUTTING_DOWN, nothing runs, the report counts them, the quota is refunded', async () => {
    const manager = await setup();
    const u = manager.getLimiter('u');
    let ran = 0;
    const runs = Array.from({ length: 5 }, () => rejection(u.submit(() => ran++)));
    const report = await manager.close({ drain: false });
    const errors = await Promise.all(runs);
    expect(errors.map((e) => e.code)).toEqual(Array(5).fill('SHUTTING_DOWN'));
    expect(report).toEqual({ completed: 0, rejected: 5, abandoned: 0 });
    // One more round trip on the same client: whatever was still on its way has arrived.
    expect((await manager.getSubscription('u'))?.usage).toBe(0);
    expect(ran).toBe(0);
  });

  it('close() (drain) right after submits: the tasks the store admits run to their end before close resolves (as on MemoryStore), and nothing runs after', async () => {
    const manager = await setup();
    const u = manager.getLimiter('u');
    let ran = 0;
    const runs = Array.from({ length: 5 }, (_, i) => u.submit(() => (ran++, i)));
    const answers = Promise.allSettled(runs);
    const report = await manager.close();
    expect((await answers).map((a) => (a.status === 'fulfilled' ? a.value : (a.reason as TaskvalveError).code))).toEqual([0, 1, 2, 3, 4]);
    expect(ran).toBe(5);
    expect(report).toEqual({ completed: 5, rejected: 0, abandoned: 0 });
    await manager.getSubscription('u');
    expect(ran).toBe(5);
  });

  it('a worker task admitted while close() drains runs on its pool and settles; close resolves after it', async () => {
    const manager = await setup({ rate: { limit: 1000, intervalMs: 1000 }, pool: { filename: TASKS, maxThreads: 1 } });
    const run = manager.getLimiter('u').submit({ name: 'echo', payload: 'in flight' });
    let settled = false;
    void run.then(
      () => (settled = true),
      () => (settled = true),
    );
    const report = await manager.close();
    expect(settled).toBe(true);
    expect(await run.catch((e: TaskvalveError) => e.code)).toBe('in flight');
    expect(report).toEqual({ completed: 1, rejected: 0, abandoned: 0 });
  });

  it('check() and peek() in flight at close() settle, and later calls reject SHUTTING_DOWN', async () => {
    const manager = await setup();
    const u = manager.getLimiter('u');
    const inFlight = [u.check(), u.peek(), u.checkDetailed()];
    await manager.close({ drain: false });
    const outcomes = await Promise.allSettled(inFlight);
    for (const o of outcomes) if (o.status === 'rejected') expect(o.reason).toBeInstanceOf(TaskvalveError);
    expect((await rejection(u.check())).code).toBe('SHUTTING_DOWN');
    expect((await rejection(u.submit(() => 1))).code).toBe('SHUTTING_DOWN');
  });
});

describe('3. replay once (RedisStore)', () => {
  it('two concurrent replays of one entry: one runs, the other rejects with a TaskvalveError; charged once; the entry is gone', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'taskvalve-replay-'));
    try {
      const manager = await setup({ rate: { limit: 1000, intervalMs: 1000 }, quota: { limit: 100 }, pool: { filename: TASKS, maxThreads: 1 } });
      const flag = join(dir, 'flag');
      expect((await rejection(manager.getLimiter('u').submit({ name: 'failUnlessFile', payload: { path: flag } }))).code).toBe('TASK_FAILED');
      const [entry] = await manager.dlq.list();
      expect((await manager.getSubscription('u'))?.usage).toBe(1);
      writeFileSync(flag, 'x');
      const outcomes = await Promise.allSettled([manager.dlq.replay(entry!.id), manager.dlq.replay(entry!.id)]);
      expect(outcomes.filter((o) => o.status === 'fulfilled').map((o) => (o as PromiseFulfilledResult<unknown>).value)).toEqual(['file found']);
      const rejected = outcomes.filter((o): o is PromiseRejectedResult => o.status === 'rejected');
      expect(rejected).toHaveLength(1);
      expect(rejected[0]!.reason).toBeInstanceOf(TaskvalveError);
      expect((await manager.getSubscription('u'))?.usage).toBe(2);
      expect(await manager.dlq.list()).toEqual([]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('19. an abort after the end changes nothing (RedisStore)', () => {
  it('an abort while the dead letter is being stored: the caller gets TASK_FAILED and the entry exists', async () => {
    const manager = await setup({ rate: { limit: 1000, intervalMs: 1000 } });
    const controller = new AbortController();
    manager.on('task', (e) => {
      if (e.to === 'FAILED') controller.abort();
    });
    const err = await rejection(
      manager.getLimiter('u').submit(
        () => {
          throw new Error('last attempt');
        },
        { signal: controller.signal },
      ),
    );
    expect(controller.signal.aborted).toBe(true);
    expect(err.code).toBe('TASK_FAILED');
    expect(await manager.dlq.list()).toHaveLength(1);
  });
});

describe('a dead letter of a worker task, on Redis', () => {
  it('keeps a payload JSON cannot write (a BigInt, a SharedArrayBuffer) as the worker received it', async () => {
    const manager = await setup({ rate: { limit: 1000, intervalMs: 1000 }, pool: { filename: TASKS }, retry: { attempts: 1 } });
    const reported: unknown[] = [];
    manager.on('error', (error) => reported.push(error));
    const payload = { message: 'boom', n: 10n, shared: new Int32Array(new SharedArrayBuffer(4)) };
    const error = await rejection(manager.getLimiter('u').submit({ name: 'throwCoded', payload }));
    expect(error.code).toBe('TASK_FAILED');
    expect(error.message).toBe('task failed: boom');
    expect(reported).toEqual([]);
    const [letter] = await manager.dlq.list();
    expect(letter?.task).toEqual({ name: 'throwCoded', payload });
  });
});
