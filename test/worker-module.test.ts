// What a worker module is: JavaScript that Node runs as it is (.js, .mjs, .cjs), whose named
// exports are the tasks. A TypeScript module is refused at registerProfile, plainly; a .js file
// that Node cannot load fails its tasks with the same plain word. The documented example runs.
import { afterEach, describe, expect, it } from 'vitest';
import { Manager } from '../src/index.js';
import { rejection, thrown } from './helpers.js';

const RATE = { limit: 1000, intervalMs: 1000 };

describe('worker modules', () => {
  let manager: Manager | undefined;
  afterEach(async () => {
    await manager?.close({ drain: false, timeoutMs: 0 });
    manager = undefined;
  });

  it('a TypeScript module is refused at registerProfile: a worker module must be JavaScript', () => {
    manager = new Manager();
    const m = manager;
    let n = 0;
    for (const filename of ['./tasks.ts', '/srv/app/tasks.mts', '/srv/app/tasks.cts', 'file:///srv/app/tasks.tsx', new URL('./fixtures/tasks.ts', import.meta.url), '/srv/app/tasks']) {
      const error = thrown(() => m.registerProfile(`p${n++}`, { rate: RATE, pool: { filename } }));
      expect(error.code, String(filename)).toBe('INVALID_CONFIG');
      expect(error.message, String(filename)).toMatch(/pool\.filename must be a JavaScript module \(\.js, \.mjs or \.cjs\): a worker module must be JavaScript that Node runs as it is \(compile TypeScript first\), got .*tasks/);
    }
    for (const filename of ['/srv/app/tasks.js', '/srv/app/tasks.mjs', '/srv/app/tasks.cjs', new URL('./fixtures/tasks.mjs', import.meta.url)]) {
      expect(() => m.registerProfile(`ok${n++}`, { rate: RATE, pool: { filename } }), String(filename)).not.toThrow();
    }
  });

  it('a .js module that Node cannot load fails its task with INVALID_CONFIG saying it must be JavaScript', async () => {
    manager = new Manager();
    manager.registerProfile('ts', { rate: RATE, pool: { filename: new URL('./fixtures/typescript-in.js', import.meta.url), maxThreads: 1 } });
    await manager.subscribe('u', 'ts');
    const error = await rejection(manager.getLimiter('u').submit({ name: 'double', payload: 2 }));
    expect(error.code).toBe('INVALID_CONFIG');
    expect(error.message).toMatch(/typescript-in\.js failed to import: .*a worker module must be JavaScript that Node runs as it is/);
    expect((await manager.getSubscription('u'))?.usage).toBe(0); // refunded: it never ran
  });

  it("the documented example module's tasks run on a worker thread", async () => {
    manager = new Manager();
    manager.registerProfile('text', { rate: RATE, pool: { filename: new URL('../examples/workers/text.mjs', import.meta.url), maxThreads: 1 } });
    await manager.subscribe('u', 'text');
    const limiter = manager.getLimiter('u');
    expect(await limiter.submit({ name: 'digest', payload: { text: 'abc' } })).toBe('ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
    expect(await limiter.submit({ name: 'words', payload: 'one two  three' })).toBe(3);
    const failed = await rejection(limiter.submit({ name: 'words', payload: 42 }));
    expect(failed.code).toBe('TASK_FAILED');
    expect((failed.cause as Error).name).toBe('TypeError');
  });
});
