/**
 * Jobs waiting for their rate turn on one bucket. Users take turns round-robin; one timer per
 * bucket is armed for the exact moment the next job conforms: no polling, and no herd (one
 * waiter is woken per turn).
 */
import { Deque } from '../util/deque.js';
import { Job, JobState } from '../exec/job.js';

/** Takes a job's units from the bucket: 0 when taken, else ms until they conform. */
export type Take = (job: Job) => number | Promise<number>;

/** One user's waiting jobs on one bucket. */
class Lane extends Deque<Job> {
  constructor(readonly userId: string) {
    super();
  }
}

class Line {
  readonly lanes = new Map<string, Lane>();
  readonly ring = new Deque<Lane>();
  units = 0;
  timer: NodeJS.Timeout | undefined = undefined;
  /** A take is in flight (async stores). */
  busy = false;
}

/** Every bucket's waiting line, and the units queued per bucket that admission must respect. */
export class WaitLines {
  private readonly lines = new Map<string, Line>();
  /** Units waiting per bucket key: new admissions never overtake them. */
  readonly units = new Map<string, number>();
  waiting = 0;

  /**
   * @param take Takes the job's units when its turn may have come.
   * @param admitted Called with a job whose units were taken.
   * @param failed Called when taking failed (a store fault): the job leaves the line.
   */
  constructor(
    private readonly take: Take,
    private readonly admitted: (job: Job) => void,
    private readonly failed: (job: Job, error: unknown) => void,
  ) {}

  /** Puts a job in line; `waitMs` is when the line's head may conform (a hint). */
  add(job: Job, waitMs: number): void {
    const key = job.bucket;
    let line = this.lines.get(key);
    if (line === undefined) {
      line = new Line();
      this.lines.set(key, line);
    }
    let lane = line.lanes.get(job.userId);
    if (lane === undefined) {
      lane = new Lane(job.userId);
      line.lanes.set(job.userId, lane);
    }
    if (lane.length === 0) line.ring.push(lane);
    lane.push(job);
    job.state = JobState.WAITING;
    line.units += job.cost;
    this.units.set(key, line.units);
    this.waiting++;
    if (line.timer === undefined && !line.busy) this.arm(key, line, waitMs);
  }

  /** A waiting job left (aborted, canceled, shut down): its units no longer count. */
  remove(job: Job): void {
    const key = job.bucket;
    const line = this.lines.get(key);
    if (line === undefined) return;
    line.units -= job.cost;
    this.waiting--;
    if (line.units > 0) {
      this.units.set(key, line.units);
      return;
    }
    this.units.delete(key);
    // Nobody waits any more: drop the line and its timer, so a newcomer arms its own.
    if (!line.busy) {
      if (line.timer !== undefined) clearTimeout(line.timer);
      line.timer = undefined;
      if (this.lines.get(key) === line) this.lines.delete(key);
    }
  }

  /** Every waiting job. */
  *jobs(): IterableIterator<Job> {
    for (const line of this.lines.values()) {
      for (const lane of line.lanes.values()) for (const job of lane) if (job.state === JobState.WAITING) yield job;
    }
  }

  /** Disarms every timer (shutdown, once no job waits). */
  clear(): void {
    for (const line of this.lines.values()) if (line.timer !== undefined) clearTimeout(line.timer);
    this.lines.clear();
    this.units.clear();
    this.waiting = 0;
  }

  private arm(key: string, line: Line, ms: number): void {
    line.timer = setTimeout(() => {
      line.timer = undefined;
      this.turn(key, line);
    }, ms);
  }

  /** The next job by round-robin, dropping entries of jobs that left. */
  private head(line: Line): Job | undefined {
    for (let lane = line.ring.peek(); lane !== undefined; lane = line.ring.peek()) {
      let job = lane.peek();
      while (job !== undefined && job.state !== JobState.WAITING) {
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
    for (;;) {
      const job = this.head(line);
      if (job === undefined) {
        if (line.units <= 0 && this.lines.get(key) === line) this.lines.delete(key);
        return;
      }
      let wait: number | Promise<number>;
      try {
        wait = this.take(job);
      } catch (error) {
        this.leave(line, job);
        this.failed(job, error);
        continue;
      }
      if (typeof wait !== 'number') {
        line.busy = true;
        wait.then(
          (ms) => {
            line.busy = false;
            // A job that left during the take leaves its units taken: under-admission only.
            if (ms === 0 && job.state === JobState.WAITING) this.grant(line, job);
            if (ms === 0 || job.state !== JobState.WAITING) this.turn(key, line);
            else this.arm(key, line, ms);
          },
          (error: unknown) => {
            line.busy = false;
            if (job.state === JobState.WAITING) {
              this.leave(line, job);
              this.failed(job, error);
            }
            this.turn(key, line);
          },
        );
        return;
      }
      if (wait > 0) {
        this.arm(key, line, wait);
        return;
      }
      this.grant(line, job);
    }
  }

  private grant(line: Line, job: Job): void {
    this.leave(line, job);
    this.admitted(job);
  }

  /** Takes the head job out of its lane and moves its user to the back of the ring. */
  private leave(line: Line, job: Job): void {
    const lane = line.ring.shift();
    lane?.shift();
    this.remove(job);
    job.state = JobState.QUEUED;
    if (lane !== undefined) {
      if (lane.length > 0) line.ring.push(lane);
      else line.lanes.delete(job.userId);
    }
  }
}
