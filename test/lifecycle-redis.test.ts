// The lifecycle against an asynchronous store: a real redis-server started here. close() while
// admissions are in flight, and two concurrent replays of one dead letter.
import { Redis } from 'ioredis';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { Manager, RedisStore } from '../src/index.js';
import { rejection } from './helpers.js';
import { startRedis, type RedisServer } from './support/redis.js';

let server: RedisServer;
let client: Redis;
let prefixes = 0;

beforeAll(async () => {
  server = await startRedis();
  client = new Redis({ port: server.port });
});

afterAll(async () => {
  client?.disconnect();
  await server?.stop();
});

function manager(prefix: string): Manager {
  const m = new Manager({ store: new RedisStore({ client, prefix }) });
  m.registerProfile('p', { rate: { limit: 1000, intervalMs: 1000 }, quota: { limit: 1000 }, retry: { attempts: 1 } });
  return m;
}

it('close() during admissions in flight: every caller settles, nothing runs after, the report and the usage account for every task', async () => {
  const prefix = `lc${++prefixes}`;
  const m = manager(prefix);
  await m.subscribe('A', 'p');
  let closed = false;
  let ran = 0;
  let ranAfterClose = 0;
  let settled = 0;
  const calls: Promise<unknown>[] = [];
  for (let i = 0; i < 50; i++) {
    const call = m.getLimiter('A').submit(() => {
      ran++;
      if (closed) ranAfterClose++;
      return i;
    });
    calls.push(call.then(() => settled++, () => settled++));
  }
  // The store has not answered any admission yet: close() must wait for them.
  const report = await m.close({ drain: false, timeoutMs: 5000 });
  closed = true;
  await Promise.resolve();
  expect(settled).toBe(50);
  expect(ranAfterClose).toBe(0);
  expect(report.completed + report.rejected).toBe(50);
  expect(report.completed).toBe(ran);
  // What never started was refunded before close() resolved.
  const check = manager(prefix);
  expect((await check.getSubscription('A'))?.usage).toBe(ran);
  await check.close();
});

it('two concurrent replays of one dead letter run the task once and charge once; the other is refused', async () => {
  const prefix = `lc${++prefixes}`;
  const m = new Manager({ store: new RedisStore({ client, prefix }) });
  m.registerProfile('w', {
    rate: { limit: 1000, intervalMs: 1000 },
    quota: { limit: 1000 },
    pool: { filename: new URL('./fixtures/tasks.mjs', import.meta.url), maxThreads: 1 },
  });
  await m.subscribe('A', 'w');
  expect((await rejection(m.getLimiter('A').submit({ name: 'throwCoded', payload: { message: 'boom' } }))).code).toBe('TASK_FAILED');
  const [entry] = await m.dlq.list();
  expect(entry).toBeDefined();
  const usage = (await m.getSubscription('A'))?.usage;
  const results = await Promise.allSettled([m.dlq.replay(entry!.id), m.dlq.replay(entry!.id)]);
  const refused = results.filter((r) => r.status === 'rejected');
  // One replay ran (and failed again, as the task always does); the other was refused at once.
  expect(refused).toHaveLength(2);
  const codes = refused.map((r) => (r as PromiseRejectedResult).reason.code).sort();
  expect(codes).toEqual(['INVALID_ARGUMENT', 'TASK_FAILED']);
  expect((await m.getSubscription('A'))?.usage).toBe((usage ?? 0) + 1);
  expect(await m.dlq.list()).toHaveLength(1); // the replay's own dead letter
  await m.close();
});
