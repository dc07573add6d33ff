/**
 * The Prometheus series of the public contract (docs/reference, Manager.registry): names with the prefix, label values and
 * counts after a known workload, the exposition format as promtool sees it, and registries that
 * do not clash between managers.
 */
import { spawn } from 'node:child_process';
import { Registry } from 'prom-client';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { Manager, TaskvalveError } from '../src/index.js';

// ---- exposition-format helpers ---------------------------------------------------------------

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

function parse(text: string): Sample[] {
  const samples: Sample[] = [];
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$/.exec(line);
    if (m === null) throw new Error(`unparsable sample line: ${line}`);
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[l[1] as string] = l[2] as string;
    samples.push({ name: m[1] as string, labels, value: Number(m[3]) });
  }
  return samples;
}

/** The value of the one sample with exactly these labels, or undefined. */
function valueOf(samples: Sample[], name: string, labels: Record<string, string>): number | undefined {
  const want = JSON.stringify(Object.entries(labels).sort());
  const hits = samples.filter((s) => s.name === name && JSON.stringify(Object.entries(s.labels).sort()) === want);
  expect(hits.length, `${name}${JSON.stringify(labels)} appears at most once`).toBeLessThanOrEqual(1);
  return hits[0]?.value;
}

function typeOf(text: string, name: string): string | undefined {
  return new RegExp(`^# TYPE ${name} (\\w+)$`, 'm').exec(text)?.[1];
}

/** Runs `promtool check metrics` on the scrape body. */
function promtool(body: string): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn('/usr/bin/promtool', ['check', 'metrics'], { stdio: ['pipe', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (d: Buffer) => (output += d.toString()));
    child.stderr.on('data', (d: Buffer) => (output += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, output }));
    child.stdin.end(body);
  });
}

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'resolved';
  } catch (error) {
    expect(error).toBeInstanceOf(TaskvalveError);
    return (error as TaskvalveError).code;
  }
}

// ---- a known workload --------------------------------------------------------------------------

/**
 * Four profiles, each producing a known set of numbers:
 *   quota  : 4 submits against a hard quota of 3 -> 3 success, 1 quota_exceeded; 2 users
 *            subscribed ('created' x2), one canceled ('canceled' x1) then deleted ('deleted' x1)
 *   strict : 2 per s, burst 1, dedicated. A runs at once, B waits its turn (500 ms),
 *            C (wait: false) -> rate_limited
 *   flaky  : one task that always throws, 2 attempts -> failed x2, 1 dead letter
 *   slow   : perUserConcurrency 1, two 2-s tasks: one runs while the other is queued
 */
async function workload(manager: Manager, scrapes: { during?: string }): Promise<void> {
  manager.registerProfile('quota', { rate: { limit: 100, intervalMs: 1000 }, quota: { limit: 3, kind: 'hard' } });
  manager.registerProfile('strict', { rate: { limit: 2, intervalMs: 1000, burst: 1 } });
  manager.registerProfile('flaky', {
    rate: { limit: 100, intervalMs: 1000 },
    retry: { attempts: 2, baseMs: 100 },
    dlq: { maxEntries: 10 },
  });
  manager.registerProfile('slow', { rate: { limit: 100, intervalMs: 1000 }, pool: { perUserConcurrency: 1 } });

  await manager.subscribe('q1', 'quota');
  await manager.subscribe('q2', 'quota');
  await manager.cancelSubscription('q2');
  await manager.deleteSubscription('q2');
  await manager.subscribe('s1', 'strict');
  await manager.subscribe('f1', 'flaky');
  await manager.subscribe('w1', 'slow');

  // quota: 3 admitted, the 4th over the hard quota
  const q = manager.getLimiter('q1');
  for (let i = 0; i < 3; i++) expect(await q.submit(() => i)).toBe(i);
  expect(await codeOf(q.submit(() => 'over'))).toBe('QUOTA_EXCEEDED');

  // strict: A now, B after 500 ms, C refused at once
  const s = manager.getLimiter('s1');
  const a = s.submit(() => 'A');
  const b = s.submit(() => 'B');
  const c = codeOf(s.submit(() => 'C', { wait: false }));
  expect(await c).toBe('RATE_LIMITED');
  expect(await a).toBe('A');
  await vi.advanceTimersByTimeAsync(500);
  expect(await b).toBe('B');

  // flaky: fails, backs off 100 ms, fails again, dead-lettered
  const failing = codeOf(
    manager.getLimiter('f1').submit(() => {
      throw new Error('boom');
    }),
  );
  await vi.advanceTimersByTimeAsync(1000);
  expect(await failing).toBe('TASK_FAILED');
  expect(await manager.dlq.list({ profileName: 'flaky' })).toHaveLength(1);

  // slow: one running, one queued behind the user's concurrency slot
  const w = manager.getLimiter('w1');
  const job = (): Promise<string> => new Promise((resolve) => setTimeout(() => resolve('slow'), 2000));
  const w1 = w.submit(job);
  const w2 = w.submit(job);
  scrapes.during = await manager.registry.metrics();
  await vi.advanceTimersByTimeAsync(4000);
  expect(await Promise.all([w1, w2])).toEqual(['slow', 'slow']);
}

/** What the workload must show, under `prefix`. */
function expectWorkload(text: string, during: string, prefix: string): void {
  const m = parse(text);
  const n = (name: string, labels: Record<string, string>): number | undefined => valueOf(m, prefix + name, labels);

  expect(typeOf(text, `${prefix}tasks_submitted_total`)).toBe('counter');
  expect(typeOf(text, `${prefix}tasks_rejected_total`)).toBe('counter');
  expect(typeOf(text, `${prefix}tasks_completed_total`)).toBe('counter');
  expect(typeOf(text, `${prefix}dead_letters_total`)).toBe('counter');
  expect(typeOf(text, `${prefix}subscription_events_total`)).toBe('counter');
  expect(typeOf(text, `${prefix}task_wait_seconds`)).toBe('histogram');
  expect(typeOf(text, `${prefix}task_run_seconds`)).toBe('histogram');
  expect(typeOf(text, `${prefix}queue_depth`)).toBe('gauge');
  expect(typeOf(text, `${prefix}tasks_running`)).toBe('gauge');

  // submitted: every submission that reached a profile, admitted or not
  expect(n('tasks_submitted_total', { profile: 'quota' })).toBe(4);
  expect(n('tasks_submitted_total', { profile: 'strict' })).toBe(3);
  expect(n('tasks_submitted_total', { profile: 'flaky' })).toBe(1);
  expect(n('tasks_submitted_total', { profile: 'slow' })).toBe(2);

  // rejected, by reason (the error code in lower case)
  expect(n('tasks_rejected_total', { profile: 'quota', reason: 'quota_exceeded' })).toBe(1);
  expect(n('tasks_rejected_total', { profile: 'strict', reason: 'rate_limited' })).toBe(1);
  expect(n('tasks_rejected_total', { profile: 'quota', reason: 'rate_limited' }) ?? 0).toBe(0);
  expect(n('tasks_rejected_total', { profile: 'strict', reason: 'quota_exceeded' }) ?? 0).toBe(0);
  const rejected = m.filter((s) => s.name === `${prefix}tasks_rejected_total`);
  expect(rejected.reduce((sum, s) => sum + s.value, 0)).toBe(2);
  for (const s of rejected) expect(Object.keys(s.labels).sort()).toEqual(['profile', 'reason']);

  // completed, by outcome: the failing task's two attempts both count as 'failed'
  expect(n('tasks_completed_total', { profile: 'quota', outcome: 'success' })).toBe(3);
  expect(n('tasks_completed_total', { profile: 'strict', outcome: 'success' })).toBe(2);
  expect(n('tasks_completed_total', { profile: 'slow', outcome: 'success' })).toBe(2);
  expect(n('tasks_completed_total', { profile: 'flaky', outcome: 'failed' })).toBe(2);
  expect(n('tasks_completed_total', { profile: 'flaky', outcome: 'success' }) ?? 0).toBe(0);

  expect(n('dead_letters_total', { profile: 'flaky' })).toBe(1);
  expect(n('dead_letters_total', { profile: 'quota' }) ?? 0).toBe(0);

  expect(n('subscription_events_total', { profile: 'quota', event: 'created' })).toBe(2);
  expect(n('subscription_events_total', { profile: 'quota', event: 'canceled' })).toBe(1);
  expect(n('subscription_events_total', { profile: 'quota', event: 'deleted' })).toBe(1);
  expect(n('subscription_events_total', { profile: 'strict', event: 'created' })).toBe(1);
  expect(n('subscription_events_total', { profile: 'flaky', event: 'created' })).toBe(1);
  expect(n('subscription_events_total', { profile: 'slow', event: 'created' })).toBe(1);

  // wait: admission -> first start. strict: A 0 s, B 0.5 s. slow: 0 s and 2 s.
  expect(n('task_wait_seconds_count', { profile: 'strict' })).toBe(2);
  expect(n('task_wait_seconds_sum', { profile: 'strict' })).toBeCloseTo(0.5, 2);
  expect(n('task_wait_seconds_bucket', { profile: 'strict', le: '0.1' })).toBe(1);
  expect(n('task_wait_seconds_bucket', { profile: 'strict', le: '1' })).toBe(2);
  expect(n('task_wait_seconds_bucket', { profile: 'strict', le: '+Inf' })).toBe(2);
  expect(n('task_wait_seconds_count', { profile: 'quota' })).toBe(3);
  expect(n('task_wait_seconds_count', { profile: 'flaky' })).toBe(1); // first start only
  expect(n('task_wait_seconds_count', { profile: 'slow' })).toBe(2);
  expect(n('task_wait_seconds_sum', { profile: 'slow' })).toBeCloseTo(2, 3);

  // run: every attempt. slow: two runs of 2 s.
  expect(n('task_run_seconds_count', { profile: 'flaky' })).toBe(2);
  expect(n('task_run_seconds_count', { profile: 'slow' })).toBe(2);
  expect(n('task_run_seconds_sum', { profile: 'slow' })).toBeCloseTo(4, 3);
  expect(n('task_run_seconds_bucket', { profile: 'slow', le: '1' })).toBe(0);
  expect(n('task_run_seconds_bucket', { profile: 'slow', le: '5' })).toBe(2);

  // gauges: at the end nothing runs or waits; during the slow pair, one ran and one was queued
  expect(n('tasks_running', { profile: 'slow' })).toBe(0);
  expect(n('queue_depth', { profile: 'slow' })).toBe(0);
  const d = parse(during);
  expect(valueOf(d, `${prefix}tasks_running`, { profile: 'slow' })).toBe(1);
  expect(valueOf(d, `${prefix}queue_depth`, { profile: 'slow' })).toBe(1);

  // no per-user label anywhere (cardinality)
  for (const s of m) {
    expect(s.name.startsWith(prefix), s.name).toBe(true);
    expect(Object.keys(s.labels).some((k) => /user/i.test(k)), `${s.name} has a user label`).toBe(false);
  }
}

// ---- tests -----------------------------------------------------------------------------------

describe('metrics', () => {
  const managers: Manager[] = [];
  const make = (options?: ConstructorParameters<typeof Manager>[0]): Manager => {
    const manager = new Manager(options);
    managers.push(manager);
    return manager;
  };

  beforeEach(() => {
    vi.useFakeTimers();
    vi.setSystemTime(new Date('2030-01-01T00:00:00Z'));
  });

  afterEach(async () => {
    await Promise.all(managers.splice(0).map((m) => m.close({ drain: false, timeoutMs: 0 })));
    vi.useRealTimers();
  });

  it("counts the workload under the default prefix 'taskvalve_', and promtool accepts the scrape", async () => {
    const manager = make();
    const scrapes: { during?: string } = {};
    await workload(manager, scrapes);
    const text = await manager.registry.metrics();
    expectWorkload(text, scrapes.during as string, 'taskvalve_');
    expect(manager.registry.contentType).toMatch(/^text\/plain/);

    vi.useRealTimers();
    for (const body of [text, scrapes.during as string]) {
      const { code, output } = await promtool(body);
      expect(output).toBe('');
      expect(code).toBe(0);
    }
  });

  it('uses a custom metricsPrefix for every series, and promtool accepts it', async () => {
    const manager = make({ metricsPrefix: 'acme_jobs_' });
    const scrapes: { during?: string } = {};
    await workload(manager, scrapes);
    const text = await manager.registry.metrics();
    expectWorkload(text, scrapes.during as string, 'acme_jobs_');
    expect(text).not.toContain('taskvalve_');

    vi.useRealTimers();
    const { code, output } = await promtool(text);
    expect(output).toBe('');
    expect(code).toBe(0);
  });

  it("counts every refusal under its reason and the user's current profile, from submit, check and checkDetailed alike", async () => {
    const manager = make();
    manager.registerProfile('p', { rate: { limit: 1, intervalMs: 1000, burst: 2 } });
    manager.registerProfile('q', { rate: { limit: 1, intervalMs: 1000, burst: 2 } });
    const now = Date.now();
    await manager.subscribe('canceled', 'p');
    await manager.cancelSubscription('canceled');
    await manager.subscribe('expired', 'p', { durationMs: 1000 });
    await manager.subscribe('later', 'p', { startsAt: now + 60_000 });
    await manager.subscribe('busy', 'p');
    await vi.advanceTimersByTimeAsync(2000);

    const refusals: [string, () => Promise<unknown>, string][] = [
      ['canceled submit', () => manager.getLimiter('canceled').submit(() => 1), 'SUBSCRIPTION_INACTIVE'],
      ['canceled check', () => manager.getLimiter('canceled').check(), 'SUBSCRIPTION_INACTIVE'],
      ['expired submit', () => manager.getLimiter('expired').submit(() => 1), 'SUBSCRIPTION_EXPIRED'],
      ['expired check', () => manager.getLimiter('expired').checkDetailed(), 'SUBSCRIPTION_EXPIRED'],
      ['not started submit', () => manager.getLimiter('later').submit(() => 1), 'SUBSCRIPTION_NOT_STARTED'],
      ['cost over the burst', () => manager.getLimiter('busy').submit(() => 1, { cost: 3 }), 'INVALID_ARGUMENT'],
      ['unknown user check', () => manager.getLimiter('nobody').check(), 'SUBSCRIPTION_NOT_FOUND'],
      ['unknown user checkDetailed', () => manager.getLimiter('nobody').checkDetailed(), 'SUBSCRIPTION_NOT_FOUND'],
    ];
    for (const [label, call, code] of refusals) expect(await codeOf(call()), label).toBe(code);

    const busy = manager.getLimiter('busy');
    expect((await busy.check(2)).allowed).toBe(true);
    expect((await busy.check()).allowed).toBe(false);
    expect((await busy.checkDetailed()).allowed).toBe(false);
    await manager.changeProfile('busy', 'q');
    expect((await busy.check()).allowed).toBe(false);

    const s = parse(await manager.registry.metrics());
    const rejected = (profile: string, reason: string): number => valueOf(s, 'taskvalve_tasks_rejected_total', { profile, reason }) ?? 0;
    expect(rejected('p', 'subscription_inactive')).toBe(2);
    expect(rejected('p', 'subscription_expired')).toBe(2);
    expect(rejected('p', 'subscription_not_started')).toBe(1);
    expect(rejected('p', 'invalid_argument')).toBe(1);
    expect(rejected('p', 'rate_limited')).toBe(2);
    expect(rejected('q', 'rate_limited')).toBe(1);
    const all = s.filter((x) => x.name === 'taskvalve_tasks_rejected_total');
    expect(all.reduce((sum, x) => sum + x.value, 0)).toBe(9);
    // An unknown user has no profile to label: no series says it is counted.
    expect(all.filter((x) => x.labels.reason === 'subscription_not_found')).toEqual([]);
  });

  it('lists every series, with HELP and TYPE, before any task ran', async () => {
    const manager = make();
    const text = await manager.registry.metrics();
    for (const name of [
      'tasks_submitted_total',
      'tasks_rejected_total',
      'tasks_completed_total',
      'dead_letters_total',
      'subscription_events_total',
      'task_wait_seconds',
      'task_run_seconds',
      'queue_depth',
      'tasks_running',
    ]) {
      expect(text).toMatch(new RegExp(`^# HELP taskvalve_${name} \\S`, 'm'));
      expect(text).toMatch(new RegExp(`^# TYPE taskvalve_${name} \\w+$`, 'm'));
    }
    vi.useRealTimers();
    expect((await promtool(text)).code).toBe(0);
  });

  it('gives two managers their own default registries, with no clash and no cross-talk', async () => {
    const one = make();
    const two = make();
    expect(one.registry).not.toBe(two.registry);
    await workload(one, {});
    two.registerProfile('quota', { rate: { limit: 100, intervalMs: 1000 } });
    await two.subscribe('z', 'quota');
    await two.getLimiter('z').submit(() => 1);

    const a = parse(await one.registry.metrics());
    const b = parse(await two.registry.metrics());
    expect(valueOf(a, 'taskvalve_tasks_submitted_total', { profile: 'quota' })).toBe(4);
    expect(valueOf(b, 'taskvalve_tasks_submitted_total', { profile: 'quota' })).toBe(1);
    expect(valueOf(b, 'taskvalve_tasks_submitted_total', { profile: 'strict' })).toBeUndefined();
    expect(valueOf(b, 'taskvalve_subscription_events_total', { profile: 'quota', event: 'created' })).toBe(1);
    expect(valueOf(b, 'taskvalve_dead_letters_total', { profile: 'flaky' })).toBeUndefined();
    expect(valueOf(b, 'taskvalve_task_wait_seconds_count', { profile: 'quota' })).toBe(1);
  });

  it('lets two managers with different prefixes share one given registry', async () => {
    const registry = new Registry();
    const one = make({ registry, metricsPrefix: 'one_' });
    const two = make({ registry, metricsPrefix: 'two_' });
    expect(one.registry).toBe(registry);
    expect(two.registry).toBe(registry);
    for (const [m, n] of [
      [one, 2],
      [two, 3],
    ] as const) {
      m.registerProfile('p', { rate: { limit: 100, intervalMs: 1000 } });
      await m.subscribe('u', 'p');
      for (let i = 0; i < n; i++) await m.getLimiter('u').submit(() => i);
    }
    const text = await registry.metrics();
    const s = parse(text);
    expect(valueOf(s, 'one_tasks_completed_total', { profile: 'p', outcome: 'success' })).toBe(2);
    expect(valueOf(s, 'two_tasks_completed_total', { profile: 'p', outcome: 'success' })).toBe(3);
    vi.useRealTimers();
    expect((await promtool(text)).code).toBe(0);
  });
});
