/**
 * The worker pool of one profile: a Piscina pool running `workers/task-worker.js`, which
 * imports the profile's module lazily and answers with a value or a described error, so
 * that a task's error, a crash, a timeout and a missing export can be told apart.
 */
import { randomUUID } from 'node:crypto';
import { BroadcastChannel } from 'node:worker_threads';
import { Piscina } from 'piscina';
import { ErrorCode, JAVASCRIPT_ONLY, TaskvalveError, invalidArgument, taskFailed, taskTimeout, workerCrashed } from '../errors.js';
import type { Profile } from '../profile.js';
import { Timer } from '../util/timer.js';

const WORKER = new URL('../../workers/task-worker.js', import.meta.url).href;

// A run's flag in shared memory (workers/task-worker.js writes IMPORTING and EXECUTING).
const WAITING = 0;
const EXECUTING = 1;
const ENDED = 2;
const IMPORTING = 3;

/** An error as the worker describes it. */
export interface ErrorDescription {
  name: string;
  message: string;
  stack?: string;
  code?: unknown;
  cause?: ErrorDescription;
  [key: string]: unknown;
}

/** Rebuilds an Error on this thread from the worker's description of it. */
export function rebuildError(e: ErrorDescription): Error {
  const { name, message, stack, cause, nonError: _nonError, ...own } = e;
  const err = new Error(message, cause === undefined ? undefined : { cause: rebuildError(cause) });
  Object.defineProperty(err, 'name', { value: name, writable: true, configurable: true, enumerable: false });
  if (stack !== undefined) err.stack = stack;
  Object.assign(err, own);
  return err;
}

/** What one run on a thread came to. */
export type RunResult =
  | { ok: true; value: unknown }
  /** `refund`: the task never really ran (bad name, bad payload, module failed to import). */
  | { ok: false; error: TaskvalveError; refund: boolean }
  /** Stopped through its controller (caller's abort or shutdown): the caller decides the code. */
  | { ok: false; error: undefined; refund: false };

type WorkerAnswer = { k: 'ok'; v: unknown } | { k: 'error' | 'import' | 'missing'; e: ErrorDescription };

/** One Piscina pool for one profile. */
export class WorkerPool {
  private readonly piscina: Piscina;
  private readonly channel: BroadcastChannel;
  /** Per-run "execution began" flags, written by the worker; one slot per thread at most in flight. */
  private readonly flags: Int32Array;
  private readonly freeSlots: number[] = [];
  /** Its threads are being terminated (close): runs in flight end without an answer. */
  private destroyed = false;

  /**
   * @param profile The profile whose pool this is (its `pool.filename` must be set).
   * @param onLateError An error a task raised after it returned (no caller to reject).
   */
  constructor(
    private readonly profile: Profile,
    onLateError: (error: Error) => void,
  ) {
    const name = `taskvalve:${randomUUID()}`;
    const options = profile.pool;
    this.piscina = new Piscina({
      filename: WORKER,
      workerData: { moduleUrl: options.filename, channel: name },
      atomics: 'disabled',
      maxThreads: options.maxThreads,
      minThreads: options.minThreads,
      idleTimeout: 30_000,
      concurrentTasksPerWorker: 1,
      recordTiming: false,
      ...(options.resourceLimits === undefined ? {} : { resourceLimits: options.resourceLimits }),
    });
    // A thread that dies outside any task emits 'error'; without a listener it would crash the process.
    this.piscina.on('error', (error: unknown) => onLateError(error instanceof Error ? error : new Error(String(error))));
    this.channel = new BroadcastChannel(name);
    this.channel.unref();
    this.channel.onmessage = (event: unknown) => {
      const data = (event as { data?: { error?: ErrorDescription } }).data;
      if (data?.error !== undefined) onLateError(rebuildError(data.error));
    };
    const slots = options.maxThreads * 2;
    this.flags = new Int32Array(new SharedArrayBuffer(4 * slots));
    for (let i = slots - 1; i >= 0; i--) this.freeSlots.push(i);
  }

  /**
   * Runs export `name` with `payload` on a thread and calls `done` with what it came to (never
   * throws, never rejects). With `timeoutMs`, the run is stopped (its thread terminated) that
   * long after it begins executing on its thread.
   */
  run(name: string, payload: unknown, timeoutMs: number, controller: AbortController | undefined, done: (result: RunResult) => void): void {
    if (timeoutMs <= 0) {
      const message = { n: name, p: payload, s: -1, f: undefined };
      const running = controller === undefined ? this.piscina.run(message) : this.piscina.run(message, { signal: controller.signal });
      running.then(
        (answer: WorkerAnswer) => done(this.answer(name, answer)),
        (error: unknown) => done(this.failure(name, error, false, timeoutMs, controller)),
      );
      return;
    }
    const stop = controller ?? new AbortController();
    const timer = new RunTimer(this.flags, this.freeSlots.pop() ?? -1, timeoutMs, stop);
    const message = { n: name, p: payload, s: timer.slot, f: timer.slot >= 0 ? this.flags : undefined };
    this.piscina.run(message, { signal: stop.signal }).then(
      (answer: WorkerAnswer) => {
        this.release(timer);
        done(this.answer(name, answer));
      },
      (error: unknown) => {
        this.release(timer);
        done(this.failure(name, error, timer.fired, timeoutMs, stop));
      },
    );
  }

  private release(timer: RunTimer): void {
    timer.end();
    if (timer.slot >= 0) this.freeSlots.push(timer.slot);
  }

  /** What the worker's answer means. */
  private answer(name: string, answer: WorkerAnswer): RunResult {
    switch (answer.k) {
      case 'ok':
        return { ok: true, value: answer.v };
      case 'error': {
        const cause = rebuildError(answer.e);
        return { ok: false, error: taskFailed(cause, (cause as { retryable?: unknown }).retryable === false ? false : undefined), refund: false };
      }
      case 'missing':
        return { ok: false, error: invalidArgument(`task ${JSON.stringify(name)}: ${answer.e.message}`), refund: true };
      default: {
        // Syntax Node cannot parse (TypeScript, most often) or an extension it cannot load.
        const notJs = answer.e.name === 'SyntaxError' || answer.e.code === 'ERR_UNKNOWN_FILE_EXTENSION';
        return {
          ok: false,
          error: new TaskvalveError(
            ErrorCode.INVALID_CONFIG,
            `profile ${JSON.stringify(this.profile.name)}: pool.filename ${this.profile.pool.filename} failed to import: ${answer.e.message}${notJs ? ` (${JAVASCRIPT_ONLY})` : ''}`,
            { cause: rebuildError(answer.e), retryable: false },
          ),
          refund: true,
        };
      }
    }
  }

  /** What Piscina's rejection means: our timeout, an abort, a payload it could not send, or a dead thread. */
  private failure(name: string, error: unknown, timedOut: boolean, timeoutMs: number, controller: AbortController | undefined): RunResult {
    if (timedOut) return { ok: false, error: taskTimeout(timeoutMs), refund: false };
    // Stopped by its caller, or its thread terminated by close(): the task was settled first, and
    // this end is not the task's answer (no late event).
    if (controller?.signal.aborted || this.destroyed) return { ok: false, error: undefined, refund: false };
    if ((error as { name?: unknown }).name === 'DataCloneError') {
      return { ok: false, error: invalidArgument(`payload of task ${JSON.stringify(name)} cannot be cloned to a worker thread: ${(error as Error).message}`, error), refund: true };
    }
    return { ok: false, error: workerCrashed(error), refund: false };
  }

  /** Terminates every thread; runs in flight reject. */
  async destroy(): Promise<void> {
    this.destroyed = true;
    this.channel.close();
    await this.piscina.destroy();
  }
}

/**
 * The timeout of one run, armed when the task begins executing on its thread: the worker flips
 * the run's flag in shared memory and notifies; `Atomics.waitAsync` wakes us. A worker still
 * importing the profile's module flips it to IMPORTING first: the import is then bounded by the
 * same timeout, and the run, once it begins, gets its whole timeout. Without a free slot (more
 * runs than slots, which the scheduler prevents) it counts from the hand-off.
 */
class RunTimer {
  fired = false;
  private timer: Timer | undefined = undefined;
  private ended = false;

  constructor(
    private readonly flags: Int32Array,
    readonly slot: number,
    private readonly timeoutMs: number,
    private readonly controller: AbortController,
  ) {
    if (slot < 0) {
      this.arm();
      return;
    }
    Atomics.store(flags, slot, WAITING);
    this.watch(WAITING);
  }

  /** Waits for the flag to leave `from`, then acts on its new value. */
  private watch(from: number): void {
    const changed = Atomics.waitAsync(this.flags, this.slot, from);
    if (changed.async) void changed.value.then(() => this.next());
    else this.next();
  }

  private next(): void {
    if (this.ended || this.controller.signal.aborted) return;
    const flag = Atomics.load(this.flags, this.slot);
    if (flag === IMPORTING) {
      this.arm();
      this.watch(IMPORTING);
    } else if (flag === EXECUTING) {
      this.timer?.cancel();
      this.arm();
    }
  }

  private arm(): void {
    this.timer = new Timer(this.timeoutMs, () => {
      this.fired = true;
      this.controller.abort();
    });
  }

  /** The run is over: disarm, and wake a waiter still pending (the run ended before it began). */
  end(): void {
    this.ended = true;
    this.timer?.cancel();
    if (this.slot >= 0) {
      Atomics.store(this.flags, this.slot, ENDED);
      Atomics.notify(this.flags, this.slot);
    }
  }
}
