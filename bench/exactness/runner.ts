/**
 * The parent's side of a round: the worker processes (real child processes, forked with
 * `--import tsx`, reused across rounds), the start barrier, and the round's course.
 *
 * A round: worker 0 prepares it (subscriptions) on a direct route; every worker opens its
 * contender and answers 'ready'; once all have, each is sent one start time a little ahead, and
 * all fire at that instant (the barrier). The round ends once every worker has had an answer to
 * each attempt (or, in a stream, every lane has met a denial) and the round's fault is over, or
 * when no attempt has been answered anywhere for a while (bottleneck leaves jobs queued); then
 * every worker closes its contender and reports, and worker 0 reads the ledgers back on a direct route.
 */
import type { ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { forkTs, stopChild } from '../../test/support/child.js';
import type { FromWorker, RoundSpec, Targets, ThroughputPoint, ThroughputRequest, ToWorker, WorkerReport } from './protocol.js';
import { expectedAdmitted } from './scenarios.js';

const WORKER = fileURLToPath(new URL('./worker.ts', import.meta.url));
const ROOT = fileURLToPath(new URL('../..', import.meta.url));
/** A safety net against a hung worker, never a synchronisation: every step waits for messages. */
const STEP_TIMEOUT_MS = 60_000;
/** How far ahead the common start time is set: enough for every worker to receive it. */
const START_AHEAD_MS = 40;
/** No attempt answered anywhere for this long (the fault over): the round is over. */
const STALL_MS = 500;
/** The same after a fault: well past ioredis's reconnection backoff (up to 2 s between tries) on a busy machine. */
const STALL_AFTER_FAULT_MS = 5_000;
/** The longest a round's attempts may run. */
const ROUND_LIMIT_MS = 20_000;
/**
 * A round whose callers were told this many times the expected count is cut short: its
 * over-admission is certain, and its figure a lower bound (a naive limiter under a stream can
 * otherwise admit for minutes before its lagging count reaches the limit).
 */
export const CUT_AT = 2;
const CHECK_MS = 25;

type Reply<T> = { ok: true; message: T } | { ok: false; error: string };

interface Waiter {
  type: FromWorker['type'];
  round: number;
  replies: Map<number, Reply<FromWorker>>;
  from: number[];
  resolve(replies: Reply<FromWorker>[]): void;
  timer: NodeJS.Timeout;
}

/** The worker processes and the message plumbing to them. */
export class Workers {
  private readonly children: ChildProcess[] = [];
  private readonly waiters = new Set<Waiter>();
  private readonly listeners = new Set<(index: number, message: FromWorker) => void>();
  private stopping = false;

  constructor(readonly count: number) {
    for (let i = 0; i < count; i++) {
      const { child, output } = forkTs(WORKER, { cwd: ROOT, serialization: 'advanced' });
      child.on('message', (message: FromWorker) => this.receive(i, message));
      child.on('exit', (code, signal) => {
        if (!this.stopping) this.lost(i, `worker ${i} exited (${code ?? signal})\n${output()}`);
      });
      this.children.push(child);
    }
  }

  /** Called with every message that no request waits for (progress, settled). */
  listen(listener: (index: number, message: FromWorker) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private receive(index: number, message: FromWorker): void {
    const round = 'round' in message ? message.round : -1;
    for (const w of this.waiters) {
      if (!w.from.includes(index) || w.replies.has(index) || w.round !== round) continue;
      if (message.type === 'failed') this.reply(w, index, { ok: false, error: message.message });
      else if (message.type === w.type) this.reply(w, index, { ok: true, message });
      else continue;
      return;
    }
    for (const listener of this.listeners) listener(index, message);
  }

  private reply(w: Waiter, index: number, reply: Reply<FromWorker>): void {
    w.replies.set(index, reply);
    if (w.replies.size < w.from.length) return;
    clearTimeout(w.timer);
    this.waiters.delete(w);
    w.resolve(w.from.map((i) => w.replies.get(i) as Reply<FromWorker>));
  }

  /** A worker is gone: whatever waits for it gets a failure. */
  private lost(index: number, why: string): void {
    for (const w of [...this.waiters]) if (w.from.includes(index) && !w.replies.has(index)) this.reply(w, index, { ok: false, error: why });
  }

  /** Sends `message(i)` to each worker of `to` and resolves with each one's reply of `type` (or its failure), in order. */
  request<T extends FromWorker>(type: T['type'], round: number, to: readonly number[], message: (i: number) => ToWorker): Promise<Reply<T>[]> {
    if (to.length === 0) return Promise.resolve([]);
    const replies = new Promise<Reply<FromWorker>[]>((resolve) => {
      const waiter: Waiter = {
        type,
        round,
        replies: new Map(),
        from: [...to],
        resolve,
        timer: setTimeout(() => {
          for (const i of to) if (!waiter.replies.has(i)) this.reply(waiter, i, { ok: false, error: `no '${type}' from worker ${i} within ${STEP_TIMEOUT_MS} ms` });
        }, STEP_TIMEOUT_MS),
      };
      this.waiters.add(waiter);
    });
    for (const i of to) this.send(i, message(i));
    return replies as Promise<Reply<T>[]>;
  }

  send(index: number, message: ToWorker): void {
    const child = this.children[index];
    if (child?.connected) child.send(message);
  }

  /** Tells every worker to leave; SIGKILL by pid for any still there after 5 s. */
  async stop(): Promise<void> {
    this.stopping = true;
    await Promise.all(this.children.map((child) => stopChild(child, { type: 'exit' } satisfies ToWorker)));
  }
}

/** The first failure among replies, or their messages. */
function settle<T>(replies: Reply<T>[]): { ok: true; messages: T[] } | { ok: false; error: string } {
  const failed = replies.find((r) => !r.ok);
  if (failed !== undefined && !failed.ok) return { ok: false, error: failed.error };
  return { ok: true, messages: replies.map((r) => (r as { ok: true; message: T }).message) };
}

export async function init(workers: Workers, targets: Targets): Promise<void> {
  const all = Array.from({ length: workers.count }, (_, i) => i);
  const ok = settle(await workers.request('inited', -1, all, () => ({ type: 'init', targets })));
  if (!ok.ok) throw new Error(`worker start-up failed: ${ok.error}`);
}

/** How a round ended: every attempt answered, nothing answered any more, or cut short (see CUT_AT). */
export type End = 'answered' | 'stalled' | 'cut';

/** What a round gave: every worker's report and the ledgers read back, or why it could not be played. */
export type Played =
  | { ok: true; reports: WorkerReport[]; taken: Record<string, number>; slots: number; end: End; fault: string | undefined }
  | { ok: false; error: string };

/**
 * Plays one round on workers 0 to `spec.processes - 1`. `strike(at)` (if any) hits the round
 * relative to its start time and resolves, with what it did, once it is over.
 */
export async function play(workers: Workers, spec: Omit<RoundSpec, 'index'>, strike?: (at: number) => Promise<string>): Promise<Played> {
  const { round } = spec;
  const to = Array.from({ length: spec.processes }, (_, i) => i);
  const specOf = (index: number): RoundSpec => ({ ...spec, index });

  const prepared = settle(await workers.request('prepared', round, [0], () => ({ type: 'prepare', spec: specOf(0) })));
  if (!prepared.ok) return prepared;
  const ready = await workers.request('ready', round, to, (i) => ({ type: 'setup', spec: specOf(i) }));
  const setUp = settle(ready);
  if (!setUp.ok) {
    // Those that opened the round close it again.
    await workers.request('done', round, to.filter((i) => ready[i]?.ok), () => ({ type: 'stop', round }));
    return setUp;
  }

  // The barrier: every worker is ready; all start at one instant.
  const answered = new Map<number, number>();
  const admitted = new Map<number, number>();
  const settled = new Set<number>();
  let changed = performance.now();
  const unlisten = workers.listen((index, message) => {
    if (!('round' in message) || message.round !== round) return;
    if (message.type === 'settled') settled.add(index);
    if (message.type !== 'progress') return;
    admitted.set(index, message.admitted);
    if (answered.get(index) !== message.answered) {
      answered.set(index, message.answered);
      changed = performance.now();
    }
  });
  const at = Date.now() + START_AHEAD_MS;
  for (const i of to) workers.send(i, { type: 'go', round, at });
  let fault: string | undefined;
  let faultOver = strike === undefined;
  strike?.(at).then(
    (what) => {
      fault = what;
      faultOver = true;
      changed = performance.now();
    },
    (error: unknown) => {
      fault = `the fault could not be applied: ${error instanceof Error ? error.message : String(error)}`;
      faultOver = true;
    },
  );
  const started = performance.now();
  const quiet = strike === undefined ? STALL_MS : STALL_AFTER_FAULT_MS;
  // A burst's attempts are few and all answered anyway; a stream's lanes run until denied.
  const cutAt = spec.load.kind === 'stream' ? CUT_AT * expectedAdmitted(spec.limits) : Infinity;
  let end: End;
  for (;;) {
    await new Promise((resolve) => setTimeout(resolve, CHECK_MS));
    if (!faultOver) continue;
    if (settled.size === to.length) {
      end = 'answered';
      break;
    }
    if ([...admitted.values()].reduce((a, b) => a + b, 0) > cutAt) {
      end = 'cut';
      break;
    }
    if (performance.now() - changed > quiet || performance.now() - started > ROUND_LIMIT_MS) {
      end = 'stalled';
      break;
    }
  }
  unlisten();

  const done = settle(await workers.request<Extract<FromWorker, { type: 'done' }>>('done', round, to, () => ({ type: 'stop', round })));
  if (!done.ok) return done;
  const read = settle(await workers.request<Extract<FromWorker, { type: 'ledgers' }>>('ledgers', round, [0], () => ({ type: 'readback', spec: specOf(0) })));
  if (!read.ok) return read;
  const ledgers = read.messages[0] as Extract<FromWorker, { type: 'ledgers' }>;
  return { ok: true, reports: done.messages.map((m) => m.report), taken: ledgers.taken, slots: ledgers.slots, end, fault };
}

/** Runs the chart's measure in worker 0. */
export async function throughput(workers: Workers, request: ThroughputRequest): Promise<ThroughputPoint[]> {
  const measured = settle(await workers.request<Extract<FromWorker, { type: 'measured' }>>('measured', -1, [0], () => ({ type: 'throughput', request })));
  if (!measured.ok) throw new Error(`throughput measure failed: ${measured.error}`);
  return (measured.messages[0] as Extract<FromWorker, { type: 'measured' }>).points;
}
