/**
 * Script calls to Redis: each runs on the node that owns its keys and is failed with
 * STORE_UNAVAILABLE past the store's timeout (one timer serves every call in flight); a script
 * that reached Redis after its deadline, or refused as a duplicate, is failed the same way, here
 * and nowhere else. Calls that write go through ops.ts, which gives each an operation id.
 */
import { ErrorCode, TaskvalveError } from '../../errors.js';
import { DUP, LATE } from './codes.js';
import { recordError } from './record.js';
import { endedTags, rendezvous, slotOf, tagOf } from './keys.js';
import type { Script, ScriptClient } from './scripts.js';

/** A script's reply, as the store reads it. */
export type Reply = (string | number | null)[];

/** Redis could not be reached, or did not answer in time, or refused the call: `cause` says which. */
export function storeUnavailable(cause: unknown): TaskvalveError {
  const message = cause instanceof Error ? cause.message : String(cause);
  return new TaskvalveError(ErrorCode.STORE_UNAVAILABLE, `Redis is unavailable: ${message}`, { cause });
}

/**
 * The error of a call answered with another call's reply: a reply was lost on a connection that
 * stayed open, and the client pairs each later reply with the wrong call. `what`: the call.
 */
export function notThisCall(what: string): TaskvalveError {
  return storeUnavailable(new Error(`${what}: a reply that is not this call's (the connection is out of step with Redis: a reply was lost)`));
}

/**
 * What a failed script call rejects with: STORE_UNAVAILABLE, and for a script that reached Redis
 * after its deadline (it wrote nothing, and answered LATE) one that says so.
 */
function failure(error: unknown): TaskvalveError {
  if (error instanceof TaskvalveError) return error;
  if (error instanceof Error && error.message.startsWith(LATE)) {
    return new TaskvalveError(ErrorCode.STORE_UNAVAILABLE, 'Redis is unavailable: the call reached Redis after its deadline and was refused', { cause: error });
  }
  if (error instanceof Error && error.message.startsWith(DUP)) {
    return new TaskvalveError(ErrorCode.STORE_UNAVAILABLE, 'Redis is unavailable: the answer to the call was lost; it is taken back if it applied', { cause: error });
  }
  return recordError(error) ?? storeUnavailable(error);
}

/** The message of a call failed for want of an answer within the timeout. */
const NO_ANSWER = 'no answer within';

/** A Redis call in flight: when it times out, and how to fail it then. */
interface Call {
  at: number;
  done: boolean;
  fail(error: unknown): void;
}

/** The store's script calls: where each goes, and its timeout. */
export class Calls {
  /**
   * Calls in flight, in the order they were sent: all have the same timeout, so their deadlines
   * come in that order too, and one timer serves them all (a timer per call costs more than the
   * rest of the client's work on a call).
   */
  private readonly calls: Call[] = [];
  private head = 0;
  private sweeper: NodeJS.Timeout | undefined = undefined;

  /**
   * `clients`: one client (a `Redis`, or a `Cluster` when `clustered`) or client-side shards;
   * `timeoutMs`: how long a call may take.
   */
  constructor(
    readonly clients: readonly ScriptClient[],
    readonly clustered: boolean,
    readonly timeoutMs: number,
  ) {}

  /** The client that owns a key's slot. */
  node(key: string): ScriptClient {
    if (this.clients.length === 1) return this.clients[0] as ScriptClient;
    return this.clients[rendezvous(tagOf(key), this.clients.length)] as ScriptClient;
  }

  /** Whether two keys can be touched by one script call. */
  together(a: string, b: string): boolean {
    if (this.clustered) return tagOf(a) === tagOf(b);
    return this.clients.length === 1 || this.node(a) === this.node(b);
  }

  /** Placement units: a Cluster's slots, the shards, or the one server. */
  get units(): number {
    return this.clustered ? 16384 : this.clients.length;
  }

  /** The placement unit of a hash tag: its slot on a Cluster, its shard, or 0. */
  unitOf(tag: string): number {
    return this.clustered ? slotOf(tag) : this.clients.length === 1 ? 0 : rendezvous(tag, this.clients.length);
  }

  /** The client that owns a placement unit (a shard's index is its unit; a Cluster routes by itself). */
  clientOf(unit: number): ScriptClient {
    return (this.clustered ? this.clients[0] : this.clients[unit]) as ScriptClient;
  }

  /**
   * The tags of the placement units, one per unit: a tag that lands on that unit (computed on
   * first use). Keys of one unit that no user owns (the ends index, the operation logs) use it.
   */
  unitTags(): string[] {
    if (this.tags === undefined) this.tags = endedTags(this.units, (tag) => this.unitOf(tag));
    return this.tags;
  }

  private tags: string[] | undefined = undefined;

  /**
   * Reads a server's clock with `TIME`: when the request left (local µs, monotonic), when the
   * answer was read, and the server's time (µs). Failed past the timeout like any call.
   */
  time(client: ScriptClient): Promise<[number, number, number]> {
    return new Promise((resolve, reject) => {
      const call: Call = { at: performance.now() + this.timeoutMs, done: false, fail: reject };
      this.track(call);
      const sent = performance.now() * 1000;
      client.time().then(
        (reply) => {
          if (call.done) return;
          call.done = true;
          // TIME answers two integers as text: seconds and microseconds. Anything else is another
          // call's reply, on a connection out of step (a reply was lost): not a clock reading.
          const [s, us] = Array.isArray(reply) && reply.length === 2 ? (reply as unknown[]).map((v) => (typeof v === 'string' && /^\d+$/.test(v) ? Number(v) : NaN)) : [NaN, NaN];
          if (!(s! > 0 && us! >= 0 && us! < 1e6)) {
            reject(notThisCall('TIME'));
            return;
          }
          resolve([sent, performance.now() * 1000, s! * 1e6 + us!]);
        },
        (error: unknown) => {
          if (call.done) return;
          call.done = true;
          reject(failure(error));
        },
      );
    });
  }

  /** Runs a script: past `timeoutMs` it is reported failed (and a deadline, if it carries one, makes Redis refuse it). */
  run(script: Script, keys: string[], args: (string | number | Buffer)[], binary = false): Promise<Reply> {
    return this.runOn(this.node(keys[0] as string), script, keys, args, binary);
  }

  /** {@link run} on the client already known to own `keys`. */
  runOn(client: ScriptClient, script: Script, keys: string[], args: (string | number | Buffer)[], binary = false): Promise<Reply> {
    return new Promise<Reply>((resolve, reject) => {
      const call: Call = { at: performance.now() + this.timeoutMs, done: false, fail: reject };
      this.track(call);
      script.run(client, keys, args, binary).then(
        (reply) => {
          if (call.done) return;
          call.done = true;
          resolve(reply as Reply);
        },
        (error: unknown) => {
          if (call.done) return;
          call.done = true;
          reject(failure(error));
        },
      );
    });
  }

  private track(call: Call): void {
    const calls = this.calls;
    while (this.head < calls.length && (calls[this.head] as Call).done) this.head++;
    if (this.head === calls.length) {
      calls.length = 0;
      this.head = 0;
    } else if (this.head >= 1024 && this.head * 2 >= calls.length) {
      calls.splice(0, this.head);
      this.head = 0;
    }
    calls.push(call);
    if (this.sweeper === undefined) this.armSweeper();
  }

  /** Arms the timer for the oldest call still waiting, if any. */
  private armSweeper(): void {
    const calls = this.calls;
    while (this.head < calls.length && (calls[this.head] as Call).done) this.head++;
    const first = calls[this.head];
    if (first === undefined) return;
    this.sweeper = setTimeout(() => this.sweep(), Math.max(0, Math.ceil(first.at - performance.now())));
    // A call waiting on Redis keeps the process alive through its socket, not through this timer.
    this.sweeper.unref();
  }

  /** Fails every call past its timeout, then waits for the next one's. */
  private sweep(): void {
    this.sweeper = undefined;
    const now = performance.now();
    const calls = this.calls;
    while (this.head < calls.length) {
      const call = calls[this.head] as Call;
      if (!call.done) {
        if (call.at > now) break;
        call.done = true;
        call.fail(storeUnavailable(new Error(`${NO_ANSWER} ${this.timeoutMs} ms`)));
      }
      this.head++;
    }
    this.armSweeper();
  }
}
