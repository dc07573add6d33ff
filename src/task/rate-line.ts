/**
 * Stage 2, the rate line: admitted tasks waiting for their rate turn on one bucket. Users take
 * turns round-robin; one timer per bucket is armed for the exact moment the line's head
 * conforms: no polling, and no herd (one waiter is woken per turn). When the head leaves, or
 * the bucket's profile changes, the timer is re-armed for the new head's time.
 */
import { Deque } from '../util/deque.js';
import { Timer } from '../util/timer.js';
import type { Profile } from '../profile.js';
import type { RateReceipt } from '../store/store.js';
import type { Job } from './job.js';
import { State } from './lifecycle.js';

/** What the line needs from the pipeline. */
export interface RateLineStage {
  /**
   * Takes the job's units if they conform: 0 when taken (the receipt filled when the store can
   * give them back), else ms until they would. Throws (or rejects) when the job must leave.
   */
  take(job: Job, receipt: { value: RateReceipt | undefined }): number | Promise<number>;
  /** The job's units are taken: it goes on. */
  granted(job: Job, receipt: RateReceipt | undefined): void;
  /** Taking failed: the job leaves the line with this error. */
  failed(job: Job, error: unknown): void;
  /** Units were taken for a job that had already left (an asynchronous take): give them back. */
  untake(job: Job, receipt: RateReceipt): void;
}

/** One user's waiting jobs on one bucket. */
class Lane extends Deque<Job> {
  constructor(readonly userId: string) {
    super();
  }
}

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
}

const waiting = (job: Job): boolean => job.state === State.WAITING_RATE;

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
    if (line.timer === undefined && !line.busy && !line.turning) this.arm(key, line, waitMs, job);
  }

  /** A waiting job left (its state is already past WAITING_RATE): its units no longer count. */
  remove(job: Job): void {
    const key = job.bucket;
    const line = this.lines.get(key);
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

  /** Every waiting job. */
  *jobs(): IterableIterator<Job> {
    for (const line of this.lines.values()) {
      for (const lane of line.lanes.values()) for (const job of lane) if (waiting(job)) yield job;
    }
  }

  /** Disarms every timer (shutdown, once no job waits). */
  clear(): void {
    for (const line of this.lines.values()) line.timer?.cancel();
    this.lines.clear();
    this.units.clear();
  }

  private drop(key: string, line: Line): void {
    line.timer?.cancel();
    line.timer = undefined;
    line.head = undefined;
    if (this.lines.get(key) === line) this.lines.delete(key);
  }

  private arm(key: string, line: Line, ms: number, head: Job | undefined): void {
    line.timer?.cancel();
    line.head = head;
    line.timer = new Timer(ms, () => {
      line.timer = undefined;
      line.head = undefined;
      this.turn(key, line);
    });
  }

  /** The next job by round-robin, dropping entries of jobs that left. */
  private next(line: Line): Job | undefined {
    for (let lane = line.ring.peek(); lane !== undefined; lane = line.ring.peek()) {
      let job = lane.peek();
      // Entries of jobs that left, or that moved to another bucket's line, are dropped here.
      while (job !== undefined && (!waiting(job) || job.bucket !== line.key)) {
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
    line.turning = true;
    try {
      for (;;) {
        const job = this.next(line);
        if (job === undefined) {
          if (line.units <= 0) this.drop(key, line);
          return;
        }
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
              line.busy = false;
              // Leaving takes its units off the line (the pipeline's remove()); meanwhile the line
              // is neither re-armed nor dropped.
              line.turning = true;
              try {
                if (waiting(job)) this.stage.failed(job, error);
              } finally {
                line.turning = false;
              }
              this.turn(key, line);
            },
          );
          return;
        }
        if (wait > 0) {
          this.arm(key, line, wait, job);
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
      if (waiting(job)) {
        this.leave(line, job);
        this.stage.granted(job, receipt);
      } else if (receipt !== undefined) {
        this.stage.untake(job, receipt);
      }
      this.turn(key, line);
    } else if (!waiting(job)) {
      this.turn(key, line);
    } else {
      this.arm(key, line, ms, job);
    }
  }

  /** Takes the head job out of its lane and moves its user to the back of the ring. */
  private leave(line: Line, job: Job): void {
    const lane = line.ring.shift();
    lane?.shift();
    line.units -= job.cost;
    const key = job.bucket;
    if (line.units > 0) this.units.set(key, line.units);
    else this.units.delete(key);
    if (lane !== undefined) {
      if (lane.length > 0) line.ring.push(lane);
      else line.lanes.delete(job.userId);
    }
  }
}
