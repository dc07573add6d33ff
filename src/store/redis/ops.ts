/**
 * Calls that write, each applied at most once whatever the client re-sends (ioredis re-sends
 * unanswered commands after a reconnect, and replays its offline queue).
 *
 * Every such call carries an operation id, this process's sequence number, and goes with its
 * process's operation log on its placement unit (lua/includes/op.lua): the script refuses a
 * number it has seen, records the ones it applies with what would take them back, and drops
 * the entries below the floor each call brings (the process's lowest number there whose outcome
 * it does not know yet). It also carries a deadline in server time (clock.ts).
 *
 * A call whose outcome is unknown (no answer within the timeout, a connection lost, a DUP
 * refusal, an error answer that does not name it) is in doubt: its caller was told it failed, and settle.lua resolves it as soon as
 * the server answers again: it takes the call back if it applied (mode 'undo'), or records that
 * it never will (a tombstone a late copy runs into). A call in 'retry' mode (a refund) that
 * never applied is sent again, with a new number, until it has applied once.
 */
import { ErrorCode, TaskvalveError } from '../../errors.js';
import { notThisCall, type Calls, type Reply } from './calls.js';
import { DUP, LATE } from './codes.js';
import type { Clock } from './clock.js';
import type { Keys } from './keys.js';
import { tagOf } from './keys.js';
import { scripts, type Script, type ScriptClient } from './scripts.js';

/**
 * What becomes of a call in doubt: 'undo' takes it back if it applied (its caller was told it
 * failed); 'keep' leaves it as it is (at most once is enough); 'retry' sends it again until it
 * has applied once (exactly once: refunds, charge-backs), and carries no deadline.
 */
export type Mode = 'undo' | 'keep' | 'retry';

/** settle.lua's answers, each followed by ':' and the settled call's number. */
const SETTLED = new Set(['void', 'undone', 'applied']);

/**
 * Whether a script's reply is this call's: every script that writes ends its reply with the
 * call's sequence number (op.lua), taken off here. A client that lost a reply on a connection
 * that stayed open pairs each later reply with the wrong call; such a reply is not this call's.
 */
function ownReply(reply: Reply, seq: number): boolean {
  if (!Array.isArray(reply) || reply.length === 0 || Number(reply[reply.length - 1]) !== seq) return false;
  reply.pop();
  return true;
}

/** Whether a refusal a script answered (LATE, DUP: they end with '(call <number>)') is this call's; other errors are. */
function ownRefusal(error: TaskvalveError, seq: number): boolean {
  const cause = error.cause;
  if (!(cause instanceof Error) || !(cause.message.startsWith(LATE) || cause.message.startsWith(DUP))) return true;
  return cause.message.endsWith(`(call ${seq})`);
}

/**
 * Whether a failed call certainly did not apply: only a LATE refusal that names it (ownRefusal
 * checked the name). Any other answer may be another call's on a connection out of step (a
 * reply was lost and the connection stayed open), however it reads: a NOSCRIPT read for this
 * call, after which it was sent again as EVAL and applied, or another call's error. Such a call
 * is in doubt, and settle.lua finds out, as for a call that got no answer at all.
 */
function certainlyNotApplied(error: TaskvalveError): boolean {
  const cause = error.cause;
  return cause instanceof Error && cause.message.startsWith(LATE);
}

/** One process's log on one placement unit: its numbers not settled yet, in order. */
interface Log {
  readonly key: string;
  /** The client that owns the unit (and every key of a call on it). */
  readonly client: ScriptClient;
  readonly open: number[];
}

/** A call in doubt, with what it takes to settle it or send it again. */
interface Doubt {
  readonly log: Log;
  readonly seq: number;
  readonly mode: Mode;
  readonly script: Script;
  readonly keys: string[];
  readonly args: (string | number | Buffer)[];
  readonly binary: boolean;
  attempts: number;
}

/** Longest wait between two attempts to settle a call in doubt. */
const MAX_BACKOFF_MS = 2000;
/** Attempts to settle a call in doubt before the fault is reported (some seconds of no answer). */
const FAULT_AFTER_ATTEMPTS = 8;

export class Operations {
  private seq = 0;
  private readonly logs = new Map<number, Log>();
  private readonly doubts = new Set<Doubt>();
  /** Resolved when nothing is in doubt (for close). */
  private idle: { promise: Promise<void>; resolve(): void } | undefined = undefined;

  /**
   * `id`: this process's id (its logs are named after it). `fault`: where failures to settle are
   * reported. `undone`: a call in doubt was taken back; its keys' state moved (a refusal this
   * process remembers for them may no longer hold).
   */
  constructor(
    private readonly calls: Calls,
    private readonly clock: Clock,
    private readonly keys: Keys,
    private readonly id: string,
    private readonly fault: (error: unknown) => void,
    private readonly undone: (keys: readonly string[]) => void = () => {},
  ) {}

  /** Refunds and charge-backs ('retry' mode) sent and not answered yet: close waits for them too. */
  private retrying = 0;

  /**
   * Counts a write about to be sent in 'retry' mode (a refund waiting for the microtask that
   * sends it, refunds.ts) as unsettled, so that close() waits for it too; the function returned
   * ends that.
   */
  hold(): () => void {
    this.retrying++;
    return () => {
      this.retrying--;
      this.checkIdle();
    };
  }

  /** Calls in doubt now (settling, or waiting for the server to answer again), and retried writes in flight. */
  get unsettled(): number {
    return this.doubts.size + this.retrying;
  }

  /**
   * Runs a script that writes (its own keys and arguments; the operation log's key and the four
   * leading arguments of op.lua are added here). Rejects like any call; a call that may have
   * applied is then settled in the background according to `mode`.
   */
  write(script: Script, keys: string[], args: (string | number | Buffer)[], mode: Mode, binary = false, fits?: (reply: Reply, seq: number) => boolean): Promise<Reply> {
    // The unit is placed once: its log, its client and the call's routing all follow from it.
    const log = this.log(this.calls.unitOf(tagOf(keys[0] as string)));
    const deadline = mode === 'retry' ? 0 : this.clock.deadline(log.client);
    if (typeof deadline === 'number') return this.send(log, script, keys, args, mode, binary, deadline, fits);
    return deadline.then((at) => this.send(log, script, keys, args, mode, binary, at, fits));
  }

  /** Waits until nothing is in doubt, or `ms` passed; answers how many calls are still in doubt. */
  async settled(ms: number): Promise<number> {
    if (this.unsettled === 0) return 0;
    if (this.idle === undefined) {
      let resolve!: () => void;
      const promise = new Promise<void>((r) => (resolve = r));
      this.idle = { promise, resolve };
    }
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([this.idle.promise, new Promise<void>((r) => (timer = setTimeout(r, ms)))]);
    clearTimeout(timer);
    return this.unsettled;
  }

  /** Wakes close() once nothing is unsettled. */
  private checkIdle(): void {
    if (this.unsettled === 0 && this.idle !== undefined) {
      this.idle.resolve();
      this.idle = undefined;
    }
  }

  private send(log: Log, script: Script, keys: string[], args: (string | number | Buffer)[], mode: Mode, binary: boolean, deadline: number, fits?: (reply: Reply, seq: number) => boolean): Promise<Reply> {
    const client = log.client;
    const seq = ++this.seq;
    log.open.push(seq);
    const floor = log.open[0] as number;
    const sent = this.calls.runOn(client, script, [...keys, log.key], [seq, floor, deadline, this.clock.arg(), ...args], binary);
    if (mode === 'retry') this.retrying++;
    return sent.then(
      (reply) => {
        if (fits === undefined ? !ownReply(reply, seq) : !fits(reply, seq)) {
          // Not this call's reply: a reply was lost on a connection that stayed open, and the
          // client pairs each later one with the wrong call. This call may have applied: it is
          // in doubt, and settled like one that got no answer.
          if (mode === 'retry') this.retrying--;
          this.doubt({ log, seq, mode, script, keys, args, binary, attempts: 0 });
          throw notThisCall(script.name);
        }
        this.close(log, seq);
        if (mode === 'retry') {
          this.retrying--;
          this.checkIdle();
        }
        return reply;
      },
      (error: TaskvalveError) => {
        if (mode === 'retry') this.retrying--;
        if (!ownRefusal(error, seq)) {
          // Another call's refusal (LATE, DUP), read as this one's on a connection out of step:
          // this call may have applied.
          this.doubt({ log, seq, mode, script, keys, args, binary, attempts: 0 });
          throw notThisCall(script.name);
        }
        // This call's own LATE refusal: it never applied.
        const late = certainlyNotApplied(error);
        if (late && deadline > 0) this.clock.refusedEarly(client);
        // A call to retry that certainly did not apply is settled all the same: settle.lua answers
        // 'void' at once, and the call goes again once the server answers.
        if (mode === 'retry' || !late) this.doubt({ log, seq, mode, script, keys, args, binary, attempts: 0 });
        else this.close(log, seq);
        throw error;
      },
    );
  }

  /** The log of a placement unit. */
  private log(unit: number): Log {
    let log = this.logs.get(unit);
    if (log === undefined) {
      log = { key: this.keys.ops(this.calls.unitTags()[unit] as string, this.id), client: this.calls.clientOf(unit), open: [] };
      this.logs.set(unit, log);
    }
    return log;
  }

  /** A number's outcome is known: it leaves the open ones (the next call's floor moves past it). */
  private close(log: Log, seq: number): void {
    const open = log.open;
    const at = open[0] === seq ? 0 : open.indexOf(seq);
    if (at === 0) open.shift();
    else if (at > 0) open.splice(at, 1);
  }

  private doubt(doubt: Doubt): void {
    this.doubts.add(doubt);
    this.settle(doubt);
  }

  /** Asks the server what became of a call in doubt, again after a backoff until it answers. */
  private settle(doubt: Doubt): void {
    const { log, seq } = doubt;
    this.calls.runOn(log.client, scripts.settle, [...doubt.keys, log.key], [0, 0, 0, this.clock.arg(), seq, doubt.mode === 'undo' ? 'undo' : 'keep']).then(
      (reply) => {
        const [outcome, of] = String(reply).split(':');
        if (!SETTLED.has(outcome as string) || of !== String(seq)) {
          // Not this settle's answer (a connection out of step): asked again after a backoff.
          this.retrySettle(doubt, new Error(`settle: a reply that is not this call's: ${String(reply)}`));
          return;
        }
        this.close(log, seq);
        this.doubts.delete(doubt);
        if (outcome === 'undone') this.undone(doubt.keys);
        if (doubt.mode === 'retry' && outcome === 'void') {
          this.write(doubt.script, doubt.keys, doubt.args, 'retry', doubt.binary).catch(() => {});
        }
        this.checkIdle();
      },
      (error: unknown) => this.retrySettle(doubt, error),
    );
  }

  /** Asks again, after a backoff, what became of a call in doubt. */
  private retrySettle(doubt: Doubt, error: unknown): void {
    doubt.attempts++;
    // Said once, after some seconds without an answer (the store goes on trying).
    if (doubt.attempts === FAULT_AFTER_ATTEMPTS) {
      this.fault(new TaskvalveError(ErrorCode.STORE_UNAVAILABLE, `a call whose outcome is unknown could not be settled after ${FAULT_AFTER_ATTEMPTS} attempts; still trying`, { cause: error }));
    }
    const wait = Math.min(MAX_BACKOFF_MS, 25 * 2 ** doubt.attempts);
    setTimeout(() => this.settle(doubt), wait).unref();
  }
}
