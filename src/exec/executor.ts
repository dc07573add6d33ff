/**
 * Fair execution for one profile: admitted jobs wait here for a thread (worker tasks) or for
 * their user's concurrency slot (both kinds). Users take turns round-robin, so one user's
 * thousand queued tasks delay another user's first task by at most one task slot.
 */
import { Deque } from '../util/deque.js';
import { Job, JobState } from './job.js';

/** One user's queue within a profile. */
class Lane {
  readonly queue = new Deque<Job>();
  running = 0;
  /** In the ring of runnable lanes. */
  ringed = false;
  constructor(readonly userId: string) {}
}

const byPriority = (job: Job): number => job.priority;

/** The fair queue and concurrency bookkeeping of one profile. */
export class Executor {
  private readonly lanes = new Map<string, Lane>();
  /** Lanes whose head job is runnable as far as the user's cap goes; split by the head's kind. */
  private readonly workerRing = new Deque<Lane>();
  private readonly inlineRing = new Deque<Lane>();
  /** Live queued jobs (aborted ones leave at once, their queue entries later). */
  queued = 0;
  running = 0;
  threadsBusy = 0;

  /**
   * @param maxThreads Worker tasks running at once.
   * @param perUser Tasks of one user running at once.
   * @param start Runs a job; the executor is told of its end through {@link finish}.
   */
  constructor(
    private readonly maxThreads: number,
    private readonly perUser: number,
    private readonly start: (job: Job) => void,
  ) {}

  /** Whether a first attempt may be queued here: the queue has room, or it would start at once. */
  hasRoomFor(job: Job, maxQueue: number): boolean {
    return this.queued < maxQueue || this.canStartNow(job);
  }

  /** Whether the job would start at once (no queueing). */
  private canStartNow(job: Job): boolean {
    const lane = this.lanes.get(job.userId);
    if (lane !== undefined && (lane.running >= this.perUser || lane.queue.length > 0)) return false;
    return job.fn !== undefined || this.threadsBusy < this.maxThreads;
  }

  enqueue(job: Job): void {
    let lane = this.lanes.get(job.userId);
    if (lane === undefined) {
      lane = new Lane(job.userId);
      this.lanes.set(job.userId, lane);
    }
    job.state = JobState.QUEUED;
    if (job.priority === 0) lane.queue.push(job);
    else lane.queue.insertRanked(job, byPriority);
    this.queued++;
    this.ring(lane);
    this.dispatch();
  }

  /** A queued job left (aborted, canceled, shut down): its entry is skipped later. */
  dequeued(): void {
    this.queued--;
  }

  /** A running job ended. */
  finish(job: Job): void {
    this.running--;
    if (job.fn === undefined) this.threadsBusy--;
    const lane = this.lanes.get(job.userId);
    if (lane !== undefined) {
      lane.running--;
      this.ring(lane);
      if (lane.running === 0 && lane.queue.length === 0) this.lanes.delete(lane.userId);
    }
    this.dispatch();
  }

  /** Jobs queued here, oldest first per user. */
  *jobs(): IterableIterator<Job> {
    for (const lane of this.lanes.values()) {
      for (const job of lane.queue) if (job.state === JobState.QUEUED) yield job;
    }
  }

  /** Puts a lane in the ring matching its head job, if it may run one more. */
  private ring(lane: Lane): void {
    if (lane.ringed || lane.running >= this.perUser) return;
    const head = this.head(lane);
    if (head === undefined) return;
    lane.ringed = true;
    (head.fn === undefined ? this.workerRing : this.inlineRing).push(lane);
  }

  /** The lane's first live job, dropping entries of jobs that left. */
  private head(lane: Lane): Job | undefined {
    let job = lane.queue.peek();
    while (job !== undefined && job.state !== JobState.QUEUED) {
      lane.queue.shift();
      job = lane.queue.peek();
    }
    if (job === undefined && lane.running === 0) this.lanes.delete(lane.userId);
    return job;
  }

  private dispatching = false;
  private again = false;

  /** Starts what may start; re-entrant calls (a job ending synchronously) loop here instead of recursing. */
  private dispatch(): void {
    if (this.dispatching) {
      this.again = true;
      return;
    }
    this.dispatching = true;
    try {
      do {
        this.again = false;
        this.dispatchOnce();
      } while (this.again);
    } finally {
      this.dispatching = false;
    }
  }

  private dispatchOnce(): void {
    for (let lane = this.inlineRing.shift(); lane !== undefined; lane = this.inlineRing.shift()) {
      lane.ringed = false;
      this.launch(lane);
    }
    while (this.threadsBusy < this.maxThreads) {
      const lane = this.workerRing.shift();
      if (lane === undefined) break;
      lane.ringed = false;
      this.launch(lane);
    }
  }

  private launch(lane: Lane): void {
    const job = this.head(lane);
    if (job === undefined) return;
    if (job.fn === undefined && this.threadsBusy >= this.maxThreads) {
      // Its head changed kind since it was ringed: ring it anew by the current head.
      this.ring(lane);
      return;
    }
    lane.queue.shift();
    lane.running++;
    this.queued--;
    this.running++;
    if (job.fn === undefined) this.threadsBusy++;
    job.state = JobState.RUNNING;
    this.ring(lane);
    this.start(job);
  }
}
