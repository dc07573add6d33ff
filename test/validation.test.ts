// Bad input: a clear TaskvalveError with a code at the earliest point, and nothing lost.
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { Manager, MemoryStore, RedisStore, TaskvalveError, type ProfileConfig } from '../src/index.js';
import { rejection as rejected, thrown } from './helpers.js';

let manager: Manager;
beforeEach(() => {
  manager = new Manager();
});
afterEach(async () => {
  await manager.close();
});

describe('store options', () => {
  // What RedisStore calls of a client; nothing is sent while the options are checked.
  const client = { evalsha: async () => null, eval: async () => null, callBuffer: async () => null, time: async () => ['0', '0'] };

  it('an unknown option name is INVALID_CONFIG naming it, as are bad values', () => {
    const cases: [string, () => unknown, string][] = [
      ['MemoryStore typo', () => new MemoryStore({ maxDeadLeters: 5 } as never), 'maxDeadLeters'],
      ['MemoryStore zero bound', () => new MemoryStore({ maxDeadLetters: 0 }), 'maxDeadLetters'],
      ['RedisStore typo', () => new RedisStore({ client, prefx: 'x' } as never), 'prefx'],
      ['RedisStore timeout typo', () => new RedisStore({ client, timeout: 5 } as never), 'timeout'],
      ['RedisStore no remembered users', () => new RedisStore({ client, rememberedUsers: 0 }), 'rememberedUsers'],
      ['RedisStore fractional remembered users', () => new RedisStore({ client, rememberedUsers: 1.5 }), 'rememberedUsers'],
      ['RedisStore no pending bound', () => new RedisStore({ client, maxPending: 0 }), 'maxPending'],
      ['RedisStore negative delay bound', () => new RedisStore({ client, maxDelayMs: -1 }), 'maxDelayMs'],
      ['RedisStore infinite delay bound', () => new RedisStore({ client, maxDelayMs: Infinity }), 'maxDelayMs'],
    ];
    for (const [label, make, name] of cases) {
      const error = thrown(make);
      expect(error.code, label).toBe('INVALID_CONFIG');
      expect(error.message, label).toContain(name);
    }
    expect(new RedisStore({ client, prefix: 'x', timeoutMs: 5, rememberedUsers: 1, maxPending: 1, maxDelayMs: 1 })).toBeInstanceOf(RedisStore);
    expect(new MemoryStore({ maxDeadLetters: 5 })).toBeInstanceOf(MemoryStore);
  });

  it("MemoryStore's refusals name the store, the option and the rule", () => {
    const cases: [string, () => unknown, string][] = [
      ['null options', () => new MemoryStore(null as never), 'MemoryStore: options must be an object, got null'],
      ['string options', () => new MemoryStore('big' as never), 'MemoryStore: options must be an object, got "big"'],
      ['typo', () => new MemoryStore({ maxDeadLeters: 5 } as never), 'MemoryStore: maxDeadLeters must be one of the known options (maxDeadLetters)'],
      ['zero bound', () => new MemoryStore({ maxDeadLetters: 0 }), 'MemoryStore: maxDeadLetters must be a positive integer, got 0'],
    ];
    for (const [label, make, message] of cases) {
      const error = thrown(make);
      expect(error.code, label).toBe('INVALID_CONFIG');
      expect(error.message, label).toContain(message);
    }
  });

  it('a MemoryStore holds 1024 profile definitions; the next is INVALID_CONFIG', () => {
    const store = new MemoryStore();
    const many = new Manager({ store });
    for (let i = 0; i < 1024; i++) many.registerProfile(`p${i}`, { rate: { limit: 1, intervalMs: 1000 } });
    const error = thrown(() => many.registerProfile('one-more', { rate: { limit: 1, intervalMs: 1000 } }));
    expect(error.code).toBe('INVALID_CONFIG');
    expect(error.message).toContain('MemoryStore: profiles must be at most 1024 profile definitions per store, got 1025');
    expect(many.getProfile('one-more')).toBeUndefined();
    return many.close();
  });
});

describe('registerProfile', () => {
  const base: ProfileConfig = { rate: { limit: 10, intervalMs: 1000 } };
  const bad: [string, unknown, string, string][] = [
    ['missing rate', {}, 'rate', 'undefined'],
    ['zero limit', { rate: { limit: 0, intervalMs: 1000 } }, 'rate.limit', '0'],
    ['fractional limit', { rate: { limit: 1.5, intervalMs: 1000 } }, 'rate.limit', '1.5'],
    ['NaN interval', { rate: { limit: 1, intervalMs: NaN } }, 'rate.intervalMs', 'NaN'],
    ['over a million per second', { rate: { limit: 2_000_001, intervalMs: 2000 } }, 'rate.limit', '2000001'],
    ['negative burst', { rate: { limit: 1, intervalMs: 1000, burst: -1 } }, 'rate.burst', '-1'],
    ['empty shared key', { rate: { limit: 1, intervalMs: 1000, shared: '' } }, 'rate.shared', '""'],
    ['bad onLimit', { rate: { limit: 1, intervalMs: 1000, onLimit: 'drop' } }, 'rate.onLimit', '"drop"'],
    ['unknown rate field', { rate: { limit: 1, intervalMs: 1000, brust: 5 } }, 'rate.brust', '5'],
    ['unknown top field', { ...base, queue: {} }, 'profile.queue', '{}'],
    ['minThreads over maxThreads', { ...base, pool: { maxThreads: 1, minThreads: 2 } }, 'pool.minThreads', '2'],
    ['zero perUserConcurrency', { ...base, pool: { perUserConcurrency: 0 } }, 'pool.perUserConcurrency', '0'],
    ['non-file URL', { ...base, pool: { filename: new URL('https://example.com/x.js') } }, 'pool.filename', 'https://example.com/x.js'],
    ['quota without limit', { ...base, quota: {} }, 'quota.limit', 'undefined'],
    ['bad quota kind', { ...base, quota: { limit: 1, kind: 'loose' } }, 'quota.kind', '"loose"'],
    ['jitter above 1', { ...base, retry: { jitter: 2 } }, 'retry.jitter', '2'],
    ['zero attempts', { ...base, retry: { attempts: 0 } }, 'retry.attempts', '0'],
    ['multiplier below 1', { ...base, retry: { multiplier: 0.5 } }, 'retry.multiplier', '0.5'],
    ['zero dlq entries', { ...base, dlq: { maxEntries: 0 } }, 'dlq.maxEntries', '0'],
  ];
  for (const [label, config, field, value] of bad) {
    it(`${label}: INVALID_CONFIG naming ${field} and ${value}`, () => {
      const err = thrown(() => manager.registerProfile('p', config as ProfileConfig));
      expect(err.code).toBe('INVALID_CONFIG');
      expect(err.message).toContain(field);
      expect(err.message).toContain(value);
      expect(err.message).toContain('"p"');
    });
  }

  it('a duplicate name is PROFILE_EXISTS; a failed registration leaves nothing behind', () => {
    expect(() => manager.registerProfile('p', { rate: { limit: 0, intervalMs: 1 } })).toThrow(TaskvalveError);
    manager.registerProfile('p', base);
    expect(thrown(() => manager.registerProfile('p', base)).code).toBe('PROFILE_EXISTS');
  });

  it('profiles naming one shared bucket must give it the same rate and burst', () => {
    manager.registerProfile('a', { rate: { limit: 10, intervalMs: 1000, shared: 'gpu' } });
    manager.registerProfile('b', { rate: { limit: 10, intervalMs: 1000, shared: 'gpu', onLimit: 'reject' } });
    const err = thrown(() => manager.registerProfile('c', { rate: { limit: 20, intervalMs: 1000, shared: 'gpu' } }));
    expect(err.code).toBe('INVALID_CONFIG');
    expect(err.message).toContain('"gpu"');
  });

  it('the Manager validates its own options', () => {
    expect(thrown(() => new Manager({ onStoreUnavailable: 'fail-open' })).code).toBe('INVALID_CONFIG');
    expect(thrown(() => new Manager({ onStoreUnavailable: 'sometimes' as never })).code).toBe('INVALID_CONFIG');
    expect(thrown(() => new Manager({ store: {} as never })).code).toBe('INVALID_CONFIG');
    expect(thrown(() => new Manager({ metricsPrefix: '9bad' })).code).toBe('INVALID_CONFIG');
    expect(thrown(() => new Manager({ clock: 5 as never })).code).toBe('INVALID_CONFIG');
    expect(thrown(() => new Manager({ endedRetentionMs: null as never })).code).toBe('INVALID_CONFIG');
    for (const logger of [{}, 5, null, { info() {}, warn() {} }]) {
      const err = thrown(() => new Manager({ logger: logger as never }));
      expect(err.code).toBe('INVALID_CONFIG');
      expect(err.message).toContain('logger');
    }
  });

  it('options whose getters throw are a TaskvalveError with a code, never the getter\'s own error', async () => {
    const hostile = <T extends object>(key: string, base: T = {} as T): T =>
      Object.defineProperty({ ...base }, key, {
        enumerable: true,
        get() {
          throw new Error(`${key} getter`);
        },
      });
    expect(thrown(() => new Manager(hostile('store'))).code).toBe('INVALID_CONFIG');
    const m = new Manager();
    expect(thrown(() => m.registerProfile('p', hostile('rate'))).code).toBe('INVALID_CONFIG');
    m.registerProfile('p', { rate: { limit: 10, intervalMs: 1000 } });
    expect((await rejected(m.subscribe('u', 'p', hostile('quota')))).code).toBe('INVALID_ARGUMENT');
    const date = new Date(0);
    date.getTime = () => {
      throw new Error('getTime');
    };
    expect((await rejected(m.subscribe('u', 'p', { startsAt: date }))).code).toBe('INVALID_ARGUMENT');
    expect((await rejected(m.dlq.list(hostile('limit')))).code).toBe('INVALID_ARGUMENT');
    await m.close();
  });

  it('a logger that throws never crashes the process: the fault it was told of is dropped', async () => {
    const told: string[] = [];
    const logger = {
      info() {},
      warn() {},
      error(_: unknown, message?: string) {
        told.push(message ?? '');
        throw new Error('the logger is broken');
      },
    };
    const m = new Manager({ logger });
    m.registerProfile('p', { rate: { limit: 10, intervalMs: 1000 } });
    await m.subscribe('u', 'p');
    // A task listener that throws is a fault with no caller: with no 'error' listener it goes to the logger.
    m.on('task', () => {
      throw new Error('listener broke');
    });
    expect(await m.getLimiter('u').submit(() => 'ran')).toBe('ran');
    expect(told.length).toBeGreaterThan(0);
    await m.close();
  });
});

describe('call arguments', () => {
  beforeEach(async () => {
    manager.registerProfile('p', { rate: { limit: 10, intervalMs: 1000 }, quota: { limit: 100 } });
    await manager.subscribe('u', 'p');
  });

  it('costs that are NaN, negative, fractional or too large are INVALID_ARGUMENT; nothing is charged', async () => {
    const limiter = manager.getLimiter('u');
    for (const cost of [NaN, -1, 0, 1.5, '2', 11, Number.MAX_SAFE_INTEGER + 2]) {
      expect((await rejected(limiter.submit(() => 1, { cost: cost as number }))).code).toBe('INVALID_ARGUMENT');
      expect((await rejected(limiter.check(cost as number))).code).toBe('INVALID_ARGUMENT');
    }
    expect((await manager.getSubscription('u'))?.usage).toBe(0);
  });

  it('an empty or non-string user id throws INVALID_ARGUMENT from getLimiter; promise methods reject', async () => {
    expect(thrown(() => manager.getLimiter('')).code).toBe('INVALID_ARGUMENT');
    expect(thrown(() => manager.getLimiter(42 as never)).code).toBe('INVALID_ARGUMENT');
    expect((await rejected(manager.subscribe('', 'p'))).code).toBe('INVALID_ARGUMENT');
    expect((await rejected(manager.getSubscription(''))).code).toBe('INVALID_ARGUMENT');
  });

  it('an unknown profile is PROFILE_NOT_FOUND', async () => {
    expect((await rejected(manager.subscribe('v', 'nope'))).code).toBe('PROFILE_NOT_FOUND');
  });

  it('subscribe options are checked', async () => {
    expect((await rejected(manager.subscribe('v', 'p', { durationMs: -5 }))).code).toBe('INVALID_ARGUMENT');
    expect((await rejected(manager.subscribe('v', 'p', { durationMs: 5, endsAt: Date.now() + 9 }))).code).toBe('INVALID_ARGUMENT');
    expect((await rejected(manager.subscribe('v', 'p', { startsAt: 'soon' as never }))).code).toBe('INVALID_ARGUMENT');
    expect((await rejected(manager.subscribe('v', 'p', { quota: -1 }))).code).toBe('INVALID_ARGUMENT');
    expect((await rejected(manager.subscribe('v', 'p', { endsAt: Date.now() - 1 }))).code).toBe('INVALID_ARGUMENT');
    expect(await manager.getSubscription('v')).toBeUndefined();
  });

  it('a task that is neither a function nor { name } is INVALID_ARGUMENT; so are bad options', async () => {
    const limiter = manager.getLimiter('u');
    for (const task of [null, 5, 'name', {}, { name: '' }, { payload: 1 }]) {
      expect((await rejected(limiter.submit(task as never))).code).toBe('INVALID_ARGUMENT');
    }
    expect((await rejected(limiter.submit(() => 1, { signal: {} as never }))).code).toBe('INVALID_ARGUMENT');
    expect((await rejected(limiter.submit(() => 1, { timeoutMs: 0 }))).code).toBe('INVALID_ARGUMENT');
    expect((await rejected(limiter.submit(() => 1, { wait: 'no' as never }))).code).toBe('INVALID_ARGUMENT');
    expect((await rejected(limiter.submit(() => 1, { priority: Infinity }))).code).toBe('INVALID_ARGUMENT');
    expect((await rejected(limiter.submit(() => 1, { idempotencyKey: 'k' }))).code).toBe('INVALID_ARGUMENT');
    expect((await manager.getSubscription('u'))?.usage).toBe(0);
  });

  it("each bad submit argument is INVALID_ARGUMENT whose message names what was wrong, before anything is charged", async () => {
    const limiter = manager.getLimiter('u');
    const cases: [string, unknown, unknown, string][] = [
      ['no task', undefined, undefined, 'task must be a function or { name, payload }'],
      ['null task', null, undefined, 'task must be a function or { name, payload }'],
      ['number task', 5, undefined, 'task must be a function or { name, payload }'],
      ['empty name', { name: '' }, undefined, 'task must be a function or { name, payload }'],
      ['no name', { payload: 1 }, undefined, 'task must be a function or { name, payload }'],
      ['null options', () => 1, null, 'submit options must be an object'],
      ['string options', () => 1, 'fast', 'submit options must be an object'],
      ['unknown option', () => 1, { costs: 2 }, 'submit: unknown option "costs"'],
      ['fractional cost', () => 1, { cost: 1.5 }, 'cost must be a positive integer'],
      ['signal', () => 1, { signal: {} }, 'signal must be an AbortSignal'],
      ['timeout', () => 1, { timeoutMs: 0 }, 'timeoutMs must be a positive integer'],
      ['wait', () => 1, { wait: 'no' }, 'wait must be a boolean'],
      ['priority', () => 1, { priority: '1' }, 'priority must be a finite number'],
      ['infinite priority', () => 1, { priority: Infinity }, 'priority must be a finite number'],
      ['empty taskId', () => 1, { taskId: '' }, 'taskId must be a non-empty string of at most 1024 characters'],
      ['numeric taskId', () => 1, { taskId: 7 }, 'taskId must be a non-empty string'],
      ['long taskId', () => 1, { taskId: 'x'.repeat(1025) }, 'taskId must be a non-empty string'],
      ['idempotencyKey', () => 1, { idempotencyKey: 'k' }, 'not supported yet'],
      ['orderingKey', () => 1, { orderingKey: 'k' }, 'not supported yet'],
      ['concurrencyKey', () => 1, { concurrencyKey: 'k' }, 'not supported yet'],
    ];
    for (const [label, task, options, message] of cases) {
      const error = await rejected(limiter.submit(task as never, options as never));
      expect(error.code, label).toBe('INVALID_ARGUMENT');
      expect(error.message, label).toContain(message);
    }
    for (const check of [() => limiter.check(0), () => limiter.checkDetailed(2.5)]) {
      expect((await rejected(check())).message).toContain('cost must be a positive integer');
    }
    expect((await manager.getSubscription('u'))?.usage).toBe(0);
    const ids: string[] = [];
    manager.on('task', (event) => ids.push(event.id));
    const longest = 'x'.repeat(1024);
    expect(await limiter.submit(() => 'ran', { taskId: longest })).toBe('ran');
    expect(new Set(ids)).toEqual(new Set([longest]));
  });

  it('a named task on a profile without pool.filename is INVALID_ARGUMENT and refunded', async () => {
    const err = await rejected(manager.getLimiter('u').submit({ name: 'work' }));
    expect(err.code).toBe('INVALID_ARGUMENT');
    expect(err.message).toContain('pool.filename');
    expect((await manager.getSubscription('u'))?.usage).toBe(0);
  });

  it('close arguments are checked', async () => {
    const other = new Manager();
    expect((await rejected(other.close({ timeoutMs: -1 }))).code).toBe('INVALID_ARGUMENT');
    // null is a value, not "not given": it is refused, not taken for the default.
    expect((await rejected(other.close({ timeoutMs: null as never }))).code).toBe('INVALID_ARGUMENT');
    expect((await rejected(other.close({ drain: null as never }))).code).toBe('INVALID_ARGUMENT');
    await other.close();
  });

  it('null for a submit option is refused, not taken for the default; an invalid Date is named as such', async () => {
    const limiter = manager.getLimiter('u');
    expect((await rejected(limiter.submit(() => 1, { cost: null as never }))).code).toBe('INVALID_ARGUMENT');
    expect((await rejected(limiter.submit(() => 1, { priority: null as never }))).code).toBe('INVALID_ARGUMENT');
    const err = await rejected(manager.subscribe('v', 'p', { startsAt: new Date(Number.NaN) }));
    expect(err.code).toBe('INVALID_ARGUMENT');
    expect(err.message).toContain('got an invalid Date');
  });
});

describe('bounded memory', () => {
  it('the handle cache is bounded; a handle taken again still works', async () => {
    manager.registerProfile('p', { rate: { limit: 10, intervalMs: 1000 } });
    await manager.subscribe('u0', 'p');
    const first = manager.getLimiter('u0');
    for (let i = 1; i <= 20_000; i++) manager.getLimiter(`u${i}`);
    // (How much the cache holds is measured in test/heap.test.ts.)
    expect((await manager.getLimiter('u0').check()).allowed).toBe(true);
    expect((await first.check()).allowed).toBe(true);
  });


});

describe('error stacks', () => {
  it("a refusal carries no stack frames, a mistake's stack points at the call, and a failed task keeps its own", async () => {
    manager.registerProfile('p', { rate: { limit: 1, intervalMs: 60_000, onLimit: 'reject' } });
    await manager.subscribe('u', 'p');
    await manager.getLimiter('u').check(1);
    const limited = await rejected(manager.getLimiter('u').submit(() => 1));
    expect(limited.code).toBe('RATE_LIMITED');
    expect(limited.stack).toBe(`TaskvalveError: ${limited.message}`);
    const missing = await rejected(manager.getLimiter('nobody').check(1));
    expect(missing.code).toBe('SUBSCRIPTION_NOT_FOUND');
    expect(missing.stack).not.toContain('\n    at ');
    const mistake = await rejected(manager.getLimiter('u').check(-1));
    expect(mistake.code).toBe('INVALID_ARGUMENT');
    expect(mistake.stack).toContain('validation.test.ts');
    manager.registerProfile('f', { rate: { limit: 10, intervalMs: 1000 }, retry: { attempts: 1 } });
    await manager.subscribe('v', 'f');
    const failed = await rejected(manager.getLimiter('v').submit(() => {
      throw new Error('own');
    }));
    expect(failed.code).toBe('TASK_FAILED');
    expect((failed.cause as Error).stack).toContain('validation.test.ts');
    // The limit is the process's own again afterwards.
    expect(new Error('x').stack).toContain('\n    at ');
  });

  it('where the stack limit cannot be set (frozen intrinsics), every caller is still answered, its errors with their stacks', async () => {
    manager.registerProfile('p', { rate: { limit: 1, intervalMs: 60_000, onLimit: 'reject' } });
    manager.registerProfile('q', { rate: { limit: 100, intervalMs: 1000 }, retry: { attempts: 1 } });
    await manager.subscribe('u', 'p');
    await manager.subscribe('v', 'q');
    await manager.getLimiter('u').check(1);
    const own = Object.getOwnPropertyDescriptor(Error, 'stackTraceLimit') as PropertyDescriptor;
    Object.defineProperty(Error, 'stackTraceLimit', { ...own, writable: false });
    try {
      const limited = await rejected(manager.getLimiter('u').submit(() => 1));
      expect(limited.code).toBe('RATE_LIMITED');
      expect(limited.stack).toContain('\n    at ');
      const failed = await rejected(manager.getLimiter('v').submit(() => {
        throw new Error('own');
      }));
      expect(failed.code).toBe('TASK_FAILED');
      const late = await rejected(manager.getLimiter('v').submit(() => new Promise(() => {}), { timeoutMs: 5 }));
      expect(late.code).toBe('TASK_TIMEOUT');
      const aborted = await rejected(manager.getLimiter('v').submit(() => new Promise(() => {}), { signal: AbortSignal.abort() }));
      expect(aborted.code).toBe('ABORTED');
    } finally {
      Object.defineProperty(Error, 'stackTraceLimit', own);
    }
  });
});
