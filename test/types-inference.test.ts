// 20. Types: submit infers an inline function's result and takes a type parameter for named
// tasks; events are typed. The expectTypeOf lines are checked by the TypeScript compiler: the
// last test compiles this file, so a type that breaks fails `npm test`, not only `npm run typecheck`.
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterEach, describe, expect, expectTypeOf, it } from 'vitest';
import { Manager, type FailedTask, type StateName, type SubscriptionEvent, type TaskEvent } from '../src/index.js';

const managers: Manager[] = [];
afterEach(async () => {
  await Promise.all(managers.splice(0).map((m) => m.close({ drain: false, timeoutMs: 0 })));
});

async function setup(): Promise<Manager> {
  const m = new Manager();
  managers.push(m);
  m.registerProfile('p', { rate: { limit: 100, intervalMs: 1000 } });
  await m.subscribe('u', 'p');
  return m;
}

describe('20. types', () => {
  it('submit infers the result of an inline function, sync or async', async () => {
    const u = (await setup()).getLimiter('u');
    const n = u.submit(() => 42);
    const s = u.submit(async () => 'text');
    const o = u.submit(({ attempt }) => ({ attempt }));
    expectTypeOf(n).toEqualTypeOf<Promise<number>>();
    expectTypeOf(s).toEqualTypeOf<Promise<string>>();
    expectTypeOf(o).toEqualTypeOf<Promise<{ attempt: number }>>();
    expect(await n).toBe(42);
    expect(await s).toBe('text');
    expect(await o).toEqual({ attempt: 1 });
  });

  it('submit takes a type parameter for named tasks, and is unknown without one', async () => {
    const u = (await setup()).getLimiter('u');
    const typed = u.submit<{ n: number }>({ name: 'task', payload: 1 });
    const untyped = u.submit({ name: 'task' });
    expectTypeOf(typed).toEqualTypeOf<Promise<{ n: number }>>();
    expectTypeOf(untyped).toEqualTypeOf<Promise<unknown>>();
    // No pool.filename on this profile: both are refused, which is all this test needs at run time.
    await expect(typed).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    await expect(untyped).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
  });

  it('events are typed: task, subscription, dead-letter and error listeners know their payload', async () => {
    const m = await setup();
    const seen: TaskEvent[] = [];
    m.on('task', (e) => {
      expectTypeOf(e).toEqualTypeOf<TaskEvent>();
      expectTypeOf(e.from).toEqualTypeOf<StateName>();
      expectTypeOf(e.attempt).toEqualTypeOf<number>();
      seen.push(e);
    });
    m.on('subscription', (e) => {
      expectTypeOf(e).toEqualTypeOf<SubscriptionEvent>();
    });
    m.on('dead-letter', (e) => {
      expectTypeOf(e).toEqualTypeOf<FailedTask>();
    });
    m.on('error', (e) => {
      expectTypeOf(e).toEqualTypeOf<Error>();
    });
    // @ts-expect-error a task listener does not receive a number
    m.on('task', (_e: number) => {});
    await m.getLimiter('u').submit(() => 1);
    await new Promise<void>((resolve) => queueMicrotask(resolve));
    expect(seen.map((e) => e.to)).toEqual(['QUEUED', 'RUNNING', 'SUCCEEDED']);
  });

  it('unknown submit options are type errors too', async () => {
    const u = (await setup()).getLimiter('u');
    // @ts-expect-error 'timeout' is not an option (timeoutMs is)
    await expect(u.submit(() => 1, { timeout: 5 })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
  });

  it('this file type-checks (the assertions above hold for the compiler)', { timeout: 60_000 }, async () => {
    const root = fileURLToPath(new URL('..', import.meta.url));
    const tsc = fileURLToPath(new URL('../node_modules/typescript/bin/tsc', import.meta.url));
    const args = [
      tsc,
      '--ignoreConfig',
      '--noEmit',
      '--strict',
      '--skipLibCheck',
      '--target', 'ES2022',
      '--module', 'NodeNext',
      '--moduleResolution', 'NodeNext',
      '--lib', 'ES2024',
      '--types', 'node',
      '--rootDir', '.',
      'test/types-inference.test.ts',
    ];
    const result = await promisify(execFile)(process.execPath, args, { cwd: root }).then(
      () => '',
      (error: { stdout?: string; stderr?: string }) => `${error.stdout ?? ''}${error.stderr ?? ''}`,
    );
    expect(result).toBe('');
  });
});
