/**
 * Stage 2, the rate line: admitted tasks waiting for their rate turn on one bucket. Users take
 * turns round-robin; one timer per bucket is armed for the exact moment the line's head
 * conforms (or for the earliest deadline of its waiters, if sooner): no polling, and no herd.
 * A turn admits every waiter that conforms, in order: one take after another on a synchronous
 * store, and up to MAX_TURNS waiters per call on a store that has `takeTurns` (one round trip
 * for them all). When the head leaves, or the bucket's profile changes, the timer is re-armed
 * for the new head's time. A first attempt whose turn has not come by its deadline (admitted
 * plus the profile's maxWaitMs) leaves the line, RATE_LIMITED.
 */
import { Deque } from '../util/deque.js';
import { Heap } from '../util/heap.js';
import { Timer } from '../util/timer.js';
import type { Profile } from '../profile.js';
import type { RateReceipt, TurnsTaken } from '../store/store.js';
import type { Job } from './job.js';
import { State } from './lifecycle.js';

/** Waiters one batch turn asks the store for at most (fewer when their costs pass the burst). */
export const MAX_TURNS = 64;

/** What the line needs from the pipeline. */
export interface RateLineStage {
  /** Checks that the job's cost still fits (before its units are taken); throws the error it leaves with. */
  fits(job: Job): void;
  /** Checks that the job may go on now that its units are taken; throws the error it leaves with (a cost over the burst, a full queue). */
  ready(job: Job): void;
  /**
   * `fits`, then takes the job's units if they conform: 0 when taken (the receipt filled when
   * the store can give them back), else ms until they would. Throws (or rejects) when the job
   * must leave (its units given back: `ready` refused it).
   */
  take(job: Job, receipt: { value: RateReceipt | undefined }): number | Promise<number>;
  /**
   * Present when the store takes turns for many waiters of one bucket in one call
   * (`Store.takeTurns`): the jobs' units, in order, while they conform.
   */
  readonly takeTurns: ((jobs: readonly Job[]) => TurnsTaken | Promise<TurnsTaken>) | undefined;
  /** The store says the job's units can never conform (the profile changed elsewhere): the error it leaves with. */
  never(job: Job): unknown;
  /** The job's units are taken: it goes on. */
  granted(job: Job, receipt: RateReceipt | undefined): void;
  /** Taking failed: the job leaves the line with this error. */
  failed(job: Job, error: unknown): void;
  /** Units were taken for a job that had already left (an asynchronous take): give them back. */
  untake(job: Job, receipt: RateReceipt): void;
  /** The job's deadline passed before its turn came: it leaves (RATE_LIMITED, with this estimate of when a retry could run). */
  expired(job: Job, retryAfterMs: number): void;
  /** The manager's clock (ms): deadlines are read on it. */
  now(): number;
}

/** One user's waiting jobs on one bucket. */
class Lane extends Deque<Job> {
  constructor(readonly userId: string) {
    super();
  }
}

const byDeadline = (job: Job): number => job.deadline;

class Line {
  constructor(readonly key: string) {}
  readonly lanes = new Map<string, Lane>();
  readonly ring = new Deque<Lane>();
  units = 0;
  timer: Timer | undefined = undefined;
  /** The job the timer is armed for. */
  head: Job | undefined = undefined;
  /** A take is in flight (asynchronous stores). */
  busy = false;
  /** Turns are being granted (a task started by a grant may submit again). */
  turning = false;
  /**
   * Batch turns: jobs taken out of their lanes in turn order whose units were not taken yet
   * (the rest of a batch, or a job past its burst); they come first in the next batch.
   */
  // Stryker disable next-line ArrayDeclaration: collect() replaces front before anything reads it, and skips an entry that is not a job waiting here
  front: Job[] = [];
  /** First attempts with a deadline, earliest first (made when the first one joins). */
  deadlines: Heap<Job> | undefined = undefined;
}

/** Key of the bucket a user's units are taken from under a profile (the stores' `AdmitResult.bucket`). */
export function bucketKey(profile: Profile, userId: string): string {
  return profile.shared === undefined ? `d:${userId}` : `s:${profile.shared}`;
}

/** Every bucket's line, and the units waiting per bucket, which admission must not overtake. */
export class RateLines {
  private readonly lines = new Map<string, Line>();
  /** Units waiting per bucket key: new admissions never overtake them. */
  readonly units = new Map<string, number>();

  constructor(private readonly stage: RateLineStage) {}

  /** Puts a job (already WAITING_RATE) in its bucket's line; `waitMs` is when the head may conform (a hint). */
  add(job: Job, waitMs: number): void {
    const key = job.bucket;
    let line = this.lines.get(key);
    if (line === undefined) {
      line = new Line(key);
      this.lines.set(key, line);
    }
    let lane = line.lanes.get(job.userId);
    if (lane === undefined) {
      lane = new Lane(job.userId);
      line.lanes.set(job.userId, lane);
    }
    if (lane.length === 0) line.ring.push(lane);
    lane.push(job);
    line.units += job.cost;
    this.units.set(key, line.units);
    // Its deadline is no sooner than the head's turn (admission counted the units waiting), and
    // a task moved here by a profile change is followed by refresh(): the timer needs no change.
    if (job.deadline !== Infinity && job.attempt === 1) (line.deadlines ??= new Heap(byDeadline)).push(job);
    if (line.timer === undefined && !line.busy && !line.turning) this.arm(key, line, waitMs, job);
  }

  /** A waiting job left (its state is already past WAITING_RATE): its units no longer count. */
  remove(job: Job): void {
    const key = job.bucket;
    const line = this.lines.get(key);
    // Stryker disable next-line ConditionalExpression: remove() is only called for a job still WAITING_RATE, whose line exists (a line is dropped only once its units are 0)
    if (line === undefined) return;
    line.units -= job.cost;
    if (line.units > 0) {
      this.units.set(key, line.units);
      // The timer was armed for the departed head (or for a head not known): arm it for the next one.
      if ((line.head === job || line.head === undefined) && line.timer !== undefined && !line.busy && !line.turning) this.arm(key, line, 0, undefined);
      return;
    }
    this.units.delete(key);
    // Nobody waits any more: drop the line and its timer, so a newcomer arms its own.
    if (!line.busy && !line.turning) this.drop(key, line);
  }

  /** The bucket's rate changed (a profile change): the head's time is decided anew. */
  refresh(key: string): void {
    const line = this.lines.get(key);
    if (line !== undefined && !line.busy && !line.turning) this.arm(key, line, 0, undefined);
  }

  /** Disarms every timer (shutdown, once no job waits). */
  // Stryker disable next-line BlockStatement: close() ends every waiting task first, and a line with no waiter is dropped with its timer (by remove() or at the end of its turn)
  clear(): void {
    for (const line of this.lines.values()) line.timer?.cancel();
    this.lines.clear();
    this.units.clear();
  }

  /** Whether the job still waits in this line (not gone, not moved to another bucket's line). */
  private here(job: Job, line: Line): boolean {
    return job.state === State.WAITING_RATE && job.bucket === line.key;
  }

  private drop(key: string, line: Line): void {
    line.timer?.cancel();
    line.timer = undefined;
    line.head = undefined;
    if (this.lines.get(key) === line) this.lines.delete(key);
  }

  /** Sleeps until the head conforms (`ms`), or until the earliest deadline of a waiter still here if sooner. */
  private arm(key: string, line: Line, ms: number, head: Job | undefined): void {
    line.timer?.cancel();
    line.head = head;
    let delay = ms;
    const deadlines = line.deadlines;
    if (deadlines !== undefined) {
      let first = deadlines.peek();
      while (first !== undefined && !this.here(first, line)) {
        deadlines.pop();
        first = deadlines.peek();
      }
      if (first !== undefined) delay = Math.max(0, Math.min(delay, first.deadline - this.stage.now()));
    }
    line.timer = new Timer(delay, () => {
      line.timer = undefined;
      line.head = undefined;
      this.turn(key, line);
    });
  }

  /**
   * The head does not conform for `ms`: waiters past their deadline leave first, then the line
   * sleeps. True when the head itself left: the turn goes on at once.
   */
  private sleep(key: string, line: Line, ms: number, head: Job): boolean {
    this.expire(line, ms, head);
    if (!this.here(head, line)) return true;
    this.arm(key, line, ms, head);
    return false;
  }

  /**
   * Waiters whose deadline has passed leave. A retry could run once the head's units conform
   * (`ms`; none when the line is not waiting for a head) and the units behind it after them:
   * the estimate admission would give.
   */
  private expire(line: Line, ms: number, head: Job | undefined): void {
    const deadlines = line.deadlines;
    // Stryker disable next-line ConditionalExpression: with an empty heap the loop below does nothing (a shortcut only)
    if (deadlines === undefined || deadlines.size === 0) return;
    const now = this.stage.now();
    this.during(line, () => {
      for (let job = deadlines.peek(); job !== undefined && job.deadline <= now; job = deadlines.peek()) {
        deadlines.pop();
        if (!this.here(job, line)) continue;
        const rate = job.profile.rate;
        this.stage.expired(job, ms + Math.ceil(((line.units - (head?.cost ?? 0)) * rate.intervalMs) / rate.limit));
      }
    });
  }

  /** The next job by round-robin, dropping entries of jobs that left. */
  private next(line: Line): Job | undefined {
    for (let lane = line.ring.peek(); lane !== undefined; lane = line.ring.peek()) {
      let job = lane.peek();
      // Entries of jobs that left, or that moved to another bucket's line, are dropped here.
      while (job !== undefined && !this.here(job, line)) {
        lane.shift();
        job = lane.peek();
      }
      if (job !== undefined) return job;
      line.ring.shift();
      line.lanes.delete(lane.userId);
    }
    return undefined;
  }

  /** Grants turns while the bucket allows, then sleeps until the next head conforms. */
  private turn(key: string, line: Line): void {
    if (this.stage.takeTurns !== undefined) {
      this.turns(key, line, this.stage.takeTurns);
      return;
    }
    line.turning = true;
    try {
      for (;;) {
        const job = this.next(line);
        if (job === undefined) {
          if (line.units <= 0) this.drop(key, line);
          return;
        }
        // Stryker disable next-line ObjectLiteral: reading value from {} gives undefined too; take() only writes it
        const receipt: { value: RateReceipt | undefined } = { value: undefined };
        let wait: number | Promise<number>;
        try {
          wait = this.stage.take(job, receipt);
        } catch (error) {
          // It leaves through the pipeline, which takes its units off the line; next() drops its entry.
          this.stage.failed(job, error);
          continue;
        }
        if (typeof wait !== 'number') {
          line.busy = true;
          wait.then(
            (ms) => this.taken(key, line, job, ms, receipt.value),
            (error: unknown) => {
              // Stryker disable next-line BooleanLiteral: the turn() just after either drops the line or sends the next take, which keeps busy true until its answer resets it
              line.busy = false;
              this.during(line, () => {
                if (this.here(job, line)) this.stage.failed(job, error);
              });
              this.turn(key, line);
            },
          );
          return;
        }
        if (wait > 0) {
          if (this.sleep(key, line, wait, job)) continue;
          return;
        }
        this.leave(line, job);
        this.stage.granted(job, receipt.value);
      }
    } finally {
      line.turning = false;
    }
  }

  /** An asynchronous take answered. */
  private taken(key: string, line: Line, job: Job, ms: number, receipt: RateReceipt | undefined): void {
    line.busy = false;
    if (ms === 0) {
      if (this.here(job, line)) {
        this.leave(line, job);
        this.stage.granted(job, receipt);
      } else if (receipt !== undefined) {
        this.stage.untake(job, receipt);
      }
      this.turn(key, line);
    } else if (!this.here(job, line) || this.during(line, () => this.sleep(key, line, ms, job))) {
      this.turn(key, line);
    }
  }

  /** Batch turns: the heads, in turn order, in one store call per batch, while they conform. */
  private turns(key: string, line: Line, takeTurns: NonNullable<RateLineStage['takeTurns']>): void {
    line.turning = true;
    try {
      for (;;) {
        const batch = this.collect(line);
        if (batch.length === 0) {
          if (line.units <= 0) this.drop(key, line);
          return;
        }
        let answer: TurnsTaken | Promise<TurnsTaken>;
        try {
          answer = takeTurns(batch);
        } catch (error) {
          this.fail(line, batch, error);
          continue;
        }
        if (answer instanceof Promise) {
          line.busy = true;
          answer.then(
            (a) => this.answered(key, line, batch, a, undefined),
            (error: unknown) => this.answered(key, line, batch, undefined, error),
          );
          return;
        }
        if (!this.apply(key, line, batch, answer)) return;
      }
    } finally {
      line.turning = false;
    }
  }

  /** A batch's call answered (or failed). */
  private answered(key: string, line: Line, batch: Job[], answer: TurnsTaken | undefined, error: unknown): void {
    line.busy = false;
    const more = this.during(line, () => {
      if (answer !== undefined) return this.apply(key, line, batch, answer);
      this.fail(line, batch, error);
      return true;
    });
    if (more) this.turn(key, line);
  }

  /**
   * The next batch: jobs left from the last one first, then the lanes' heads by round-robin
   * (taken out of their lanes), up to MAX_TURNS and, past the first, while their costs fit in
   * the burst together. A job that may not have its turn now leaves here.
   */
  private collect(line: Line): Job[] {
    const batch: Job[] = [];
    const front = line.front;
    // Stryker disable next-line ArrayDeclaration: an entry of front that is not a job waiting here is skipped below (here() is false)
    line.front = [];
    let i = 0;
    let units = 0;
    let burst = 0;
    while (batch.length < MAX_TURNS) {
      let job: Job | undefined;
      if (i < front.length) job = front[i++] as Job;
      else {
        job = this.next(line);
        if (job === undefined) break;
        this.takeOut(line);
      }
      if (!this.here(job, line) || !this.check(job, 'fits')) continue;
      if (batch.length === 0) burst = job.profile.rate.burst;
      else if (units + job.cost > burst) {
        line.front.push(job);
        break;
      }
      units += job.cost;
      batch.push(job);
    }
    while (i < front.length) line.front.push(front[i++] as Job);
    return batch;
  }

  /**
   * A batch's answer: the jobs taken go on (units taken for one that left are given back), the
   * rest go back to the front of the line. True when the turn goes on at once.
   */
  private apply(key: string, line: Line, batch: Job[], answer: TurnsTaken): boolean {
    const taken = Math.min(answer.taken, batch.length);
    // Units to give back, latest taken first: each refund then finds the bucket still holding
    // the slot its receipt names.
    let back: number[] | undefined;
    for (let i = 0; i < taken; i++) {
      const job = batch[i] as Job;
      // The queue may have filled since the batch was collected.
      if (this.here(job, line) && this.check(job, 'ready')) {
        this.release(line, job);
        this.stage.granted(job, answer.receipts[i]);
      } else if (answer.receipts[i] !== undefined) (back ??= []).push(i);
    }
    for (let k = (back?.length ?? 0) - 1; k >= 0; k--) {
      const i = (back as number[])[k] as number;
      this.stage.untake(batch[i] as Job, answer.receipts[i] as RateReceipt);
    }
    if (taken === batch.length) {
      // The line drains without sleeping: waiters deeper in it may still pass their deadline.
      this.expire(line, 0, undefined);
      return true;
    }
    const rest = batch.slice(taken);
    line.front = line.front.length === 0 ? rest : rest.concat(line.front);
    const head = rest[0] as Job;
    const ms = taken === 0 && answer.waitMs === 0 ? 1 : answer.waitMs;
    if (ms === 0) return true;
    if (ms === Infinity) {
      if (this.here(head, line)) this.stage.failed(head, this.stage.never(head));
      return true;
    }
    return this.sleep(key, line, ms, head);
  }

  /** Whether the job may be asked for (`fits`) or go on with (`ready`) its units; if not, it leaves with the reason. */
  private check(job: Job, what: 'fits' | 'ready'): boolean {
    try {
      this.stage[what](job);
      return true;
    } catch (error) {
      this.stage.failed(job, error);
      return false;
    }
  }

  /** A batch's call failed: every job of it still here leaves with the error. */
  private fail(line: Line, batch: Job[], error: unknown): void {
    for (const job of batch) if (this.here(job, line)) this.stage.failed(job, error);
  }

  /** Runs `fn` as part of a turn: jobs leaving meanwhile neither re-arm nor drop the line. */
  private during<T>(line: Line, fn: () => T): T {
    const turning = line.turning;
    line.turning = true;
    try {
      return fn();
    } finally {
      line.turning = turning;
    }
  }

  /** Takes the head job (just found by next()) out of its lane and moves its user to the back of the ring. */
  private takeOut(line: Line): void {
    const lane = line.ring.shift();
    if (lane === undefined) return;
    lane.shift();
    if (lane.length > 0) line.ring.push(lane);
    else line.lanes.delete(lane.userId);
  }

  /** The job's units no longer wait on the line. */
  private release(line: Line, job: Job): void {
    line.units -= job.cost;
    if (line.units > 0) this.units.set(line.key, line.units);
    else this.units.delete(line.key);
  }

  /** Takes the head job out of its lane, its units off the line: its turn was granted. */
  private leave(line: Line, job: Job): void {
    this.takeOut(line);
    this.release(line, job);
  }
}
