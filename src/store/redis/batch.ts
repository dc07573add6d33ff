/**
 * Admission batching and the wire format of admit.lua: decisions queued in one turn of the event
 * loop go to their node (their slot, on a Cluster) in one script call, each profile's parameters
 * travel once, decisions go as packed records and answers come back as packed records.
 */
import { stackless, type TaskvalveError } from '../../errors.js';
import type { Profile } from '../../profile.js';
import { Verdict } from '../store.js';
import { storeUnavailable, type Reply } from './calls.js';
import { RESERVED } from './codes.js';
import type { Context } from './context.js';
import { slotOf, tagOf } from './keys.js';
import { scripts } from './scripts.js';

/** Admission calls in flight per node (per slot on a Cluster) before decisions gather into batches. */
const MAX_IN_FLIGHT = 2;

/** Decisions per admission script call at most. */
const MAX_BATCH = 64;

/** Added to a decision's flags when its bucket has a key of its own (then sent after the user's). */
const OWN_KEY = 4;

/** A script's reply for one decision, with the profile it was decided on when known. */
export interface Answer {
  reply: Reply;
  profile: Profile | undefined;
}

/** Decisions bound for one admission script call. */
interface Batch {
  /** Per decision: the user's key, then its bucket's when the bucket has a key of its own. */
  keys: string[];
  /** Per decision: expected profile index, flags (with OWN_KEY), cost, units waiting ahead. */
  decisions: number[];
  size: number;
  /** The profiles' table of this call (each travels once). */
  profiles: Profile[];
  index: Map<Profile, number>;
  /** Every registered profile is in the table (a decision for a user of unknown profile). */
  all: boolean;
  /** When its first decision was added (performance.now()). */
  since: number;
  /** Every decision's answer, in order, once the call returns. */
  answers: Promise<Answer[]>;
  settle: { resolve(answers: Answer[]): void; reject(error: unknown): void };
}

function newBatch(since: number): Batch {
  const batch = { keys: [], decisions: [], size: 0, profiles: [], index: new Map(), all: false, since } as unknown as Batch;
  batch.answers = new Promise<Answer[]>((resolve, reject) => {
    batch.settle = { resolve, reject };
  });
  // A batch whose call fails rejects every decision's await; none is left unhandled.
  batch.answers.catch(() => {});
  return batch;
}

/** A profile's 1-based place in a batch's table, added on first use. */
function profileIndex(batch: Batch, profile: Profile): number {
  let i = batch.index.get(profile);
  if (i === undefined) {
    batch.profiles.push(profile);
    i = batch.profiles.length;
    batch.index.set(profile, i);
  }
  return i;
}

/**
 * The admission script's reply, one binary record per decision (see admit.lua): compact ones of
 * 12 doubles, full ones of 11 doubles and the profile's name, then the call's sequence number.
 * Undefined when the reply is not this call's (see ops.ts).
 */
function parseAnswers(reply: Buffer, batch: Batch, seq: number): Answer[] | undefined {
  // The reply ends with the call's own number (admit.lua): another call's reply does not.
  if (!Buffer.isBuffer(reply) || reply.length < 8 || reply.readDoubleLE(reply.length - 8) !== seq) return undefined;
  const end = reply.length - 8;
  const answers: Answer[] = new Array(batch.size);
  let at = 0;
  for (let i = 0; i < batch.size; i++) {
    if (at + 8 > end) return undefined;
    const verdict = reply.readDoubleLE(at);
    const compact = verdict <= Verdict.RATE_LIMITED || verdict === RESERVED;
    const fields = compact ? 12 : 11;
    if (at + fields * 8 > end) return undefined;
    const r: Reply = new Array(fields);
    for (let k = 0; k < fields; k++, at += 8) r[k] = reply.readDoubleLE(at);
    if (!compact) {
      if (at + 4 > end) return undefined;
      const length = reply.readUInt32LE(at);
      if (at + 4 + length > end) return undefined;
      r.push(reply.toString('utf8', at + 4, at + 4 + length));
      at += 4 + length;
    }
    // Compact replies name the profile by its place in this batch's table.
    const index = compact ? (r[6] as number) : 0;
    answers[i] = { reply: r, profile: index > 0 ? batch.profiles[index - 1] : undefined };
  }
  return at === end ? answers : undefined;
}

const fieldsOf = new WeakMap<Profile, string[]>();

/** A profile's parameters as the admission script reads them (computed once per profile, as text). */
function profileFields(p: Profile): string[] {
  let fields = fieldsOf.get(p);
  if (fields === undefined) {
    const r = p.rate;
    const bits = (p.quotaHard ? 1 : 0) + (p.onLimit === 'wait' ? 2 : 0) + (p.shared === undefined ? 0 : 4);
    const maxWait = p.maxWaitMs === Infinity ? -1 : p.maxWaitMs;
    fields = [p.name, [r.d, r.T, r.tau, r.burst, p.quotaLimit ?? -1, p.quotaPeriodMs, bits, maxWait].join(':')];
    fieldsOf.set(p, fields);
  }
  return fields;
}

/** Admission calls of one node: those in flight (oldest first), and the batch gathering behind them. */
interface Group {
  inFlight: Batch[];
  pending: Batch | undefined;
}

/** The admission calls of one store, per node (per slot on a Cluster): in flight, and the batch gathering. */
export class Batches {
  private readonly groups = new Map<unknown, Group>();
  /** Decisions gathering or in flight, not answered yet. */
  private pending = 0;

  /**
   * Overload is shed, not queued: past `maxPending` decisions waiting for Redis in this process
   * (a bound on memory), or once a node's oldest admission call has waited `maxDelayMs` (a
   * bound on latency: the node answers slower than decisions arrive), an admission fails at once.
   * A burst the node can absorb within `maxDelayMs` is not shed.
   */
  constructor(
    private readonly ctx: Context,
    private readonly maxPending: number,
    private readonly maxDelayMs: number,
  ) {
    this.full = `overloaded: ${maxPending} decisions already wait for Redis in this process (RedisStore maxPending)`;
  }

  /** Why a decision is shed past maxPending (made once: a shed must cost little). */
  private readonly full: string;

  /**
   * The error of a decision shed for overload. Shedding must cost far less than deciding, so it
   * carries no stack trace (capturing one is most of an error's cost): where it was thrown is
   * always here. `why` starts "overloaded: ".
   */
  private overloaded(why: string): TaskvalveError {
    return stackless(() => storeUnavailable(new Error(why)));
  }

  /**
   * Queues one decision for the admission script of its node (its slot on a Cluster, whichever
   * users' keys hash there), and answers its batch's answers (the decision's is at `at`). Decisions queued in one turn of the event loop go in one call, up
   * to MAX_BATCH: the server runs the
   * script once, reads TIME once, each profile's parameters travel once, and the round trip is
   * shared. `profile` undefined: the script picks the user's profile by name.
   */
  add(user: string, bucket: string, profile: Profile | undefined, cost: number, waiting: number, flags: number): Promise<Answer[]> {
    if (this.pending >= this.maxPending) return Promise.reject(this.overloaded(this.full));
    // On a Cluster one call may carry the keys of many users, as long as they share a slot.
    const calls = this.ctx.calls;
    const key = calls.clustered ? slotOf(tagOf(user)) : calls.node(user);
    let group = this.groups.get(key);
    if (group === undefined) {
      group = { inFlight: [], pending: undefined };
      this.groups.set(key, group);
    }
    let batch = group.pending;
    if (batch === undefined) {
      // The delay is judged once per batch, not per decision (a clock read is not free): a
      // batch starts gathering only behind calls in flight, and holds at most MAX_BATCH.
      const now = performance.now();
      const oldest = group.inFlight[0];
      if (oldest !== undefined && now - oldest.since >= this.maxDelayMs) {
        return Promise.reject(this.overloaded(`overloaded: an admission has waited ${Math.round(now - oldest.since)} ms for Redis (RedisStore maxDelayMs ${this.maxDelayMs})`));
      }
      batch = newBatch(now);
      group.pending = batch;
    }
    this.pending++;
    let expected = 0;
    if (profile !== undefined) expected = profileIndex(batch, profile);
    else if (!batch.all) {
      batch.all = true;
      for (const p of this.ctx.profiles.values()) profileIndex(batch, p);
    }
    if (bucket === user) {
      batch.keys.push(user);
      batch.decisions.push(expected, flags, cost, waiting);
    } else {
      batch.keys.push(user, bucket);
      batch.decisions.push(expected, flags | OWN_KEY, cost, waiting);
    }
    this.at = batch.size++;
    const answers = batch.answers;
    // Send at once while the node has room (no added latency when calls are few); otherwise the
    // decision waits in the batch for the next call to return.
    if (group.inFlight.length < MAX_IN_FLIGHT || batch.size >= MAX_BATCH) this.send(key, group);
    return answers;
  }

  /**
   * The place of the decision add() queued last among its batch's answers: read it right after
   * the call. (Each decision awaits its batch's one promise and picks its answer, rather than
   * each having a promise of its own: that is most of what a decision allocates.)
   */
  at = 0;

  /** Sends a group's pending batch; when a call returns, the next batch (if any) goes. */
  private send(key: unknown, group: Group): void {
    const batch = group.pending;
    if (batch === undefined) return;
    group.pending = undefined;
    group.inFlight.push(batch);
    const args: (string | number | Buffer)[] = [batch.profiles.length];
    for (const p of batch.profiles) for (const field of profileFields(p)) args.push(field);
    const d = batch.decisions;
    if (batch.size === 1) {
      // One decision travels as text: a Buffer argument costs ioredis more than it saves here.
      args.push(d[0]! * 8 + d[1]!, d[2]!, d[3]!);
    } else {
      const records = Buffer.allocUnsafe(batch.size * 19);
      for (let i = 0, at = 0; i < d.length; i += 4, at += 19) {
        records.writeUInt16LE(d[i]!, at);
        records.writeUInt8(d[i + 1]!, at + 2);
        records.writeDoubleLE(d[i + 2]!, at + 3);
        records.writeDoubleLE(d[i + 3]!, at + 11);
      }
      args.push(records);
    }
    let answers: Answer[] | undefined;
    // A reply that does not parse as this batch's answers is another call's (see ops.ts).
    const fits = (reply: Reply, seq: number): boolean => {
      answers = parseAnswers(reply as unknown as Buffer, batch, seq);
      return answers !== undefined;
    };
    this.ctx.ops.write(scripts.admit, batch.keys, args, 'undo', true, fits).then(
      () => {
        this.pending -= batch.size;
        this.sent(key, group, batch);
        batch.settle.resolve(answers as Answer[]);
      },
      (error: unknown) => {
        this.pending -= batch.size;
        this.sent(key, group, batch);
        batch.settle.reject(error);
      },
    );
  }

  /** A group's call returned: its next batch goes, if one gathered. */
  private sent(key: unknown, group: Group, batch: Batch): void {
    const inFlight = group.inFlight;
    // Calls on one connection are answered in order: the one returning is nearly always the first.
    const at = inFlight[0] === batch ? 0 : inFlight.indexOf(batch);
    if (at === 0) inFlight.shift();
    else inFlight.splice(at, 1);
    if (group.pending !== undefined) this.send(key, group);
    else if (inFlight.length === 0) this.groups.delete(key);
  }
}
