/**
 * Stage 3, the fair scheduler of one profile: tasks whose units are taken wait here for a thread
 * (worker tasks) or for their user's concurrency slot (both kinds). Users take turns
 * round-robin, so one user's thousand queued tasks delay another user's first task by at most
 * one slot. A user's inline tasks never wait behind that user's worker tasks that wait for a
 * thread. A task that finds a free slot nobody waits for takes it at once and starts at the next
 * dispatch, in a microtask: never inside the call that queued it.
 */
import { Deque } from '../util/deque.js';
import type { Job } from './job.js';
import { State } from './lifecycle.js';

/** One user's queues within a profile (made on first need). */
class Lane {
  inline: Deque<Job> | undefined = undefined;
  worker: Deque<Job> | undefined = undefined;
  /** Tasks of this user holding a slot (counted only under a per-user cap). */
  running = 0;
  /** In the ring of lanes that may start an inline / a worker task. */
  inInlineRing = false;
  inWorkerRing = false;
  constructor(readonly userId: string) {}
}

const byPriority = (job: Job): number => job.priority;
const queued = (job: Job): boolean => job.state === State.QUEUED;

/** A queue's first live job, dropping entries of jobs that left. */
function head(queue: Deque<Job> | undefined): Job | undefined {
  if (queue === undefined) return undefined;
  let job = queue.peek();
  while (job !== undefined && !queued(job)) {
    queue.shift();
    job = queue.peek();
  }
  return job;
}

/** The fair queue and the concurrency bookkeeping of one profile. */
export class Scheduler {
  private readonly lanes = new Map<string, Lane>();
  private readonly workerRing = new Deque<Lane>();
  private readonly inlineRing = new Deque<Lane>();
  /** Jobs that took a free slot at once; they start at the next dispatch. */
  private readonly starting = new Deque<Job>();
  /** Whether a per-user cap is in force (else no per-user counting at all). */
  private readonly capped: boolean;
  /** Queued jobs still waiting (those that left are dropped from their deques later). */
  queued = 0;
  /** Jobs holding a slot (running, or about to start). */
  running = 0;
  private threadsBusy = 0;
  private scheduled = false;
  private readonly dispatcher = (): void => {
    this.scheduled = false;
    this.dispatch();
  };

  /**
   * @param maxThreads Worker tasks running at once.
   * @param perUser Tasks of one user running at once (Infinity: no cap).
   * @param clock Read once per dispatch: the start time of every job it starts.
   * @param start Starts a job (still QUEUED); the scheduler learns of its end through {@link finish}.
   */
  constructor(
    private readonly maxThreads: number,
    private readonly perUser: number,
    private readonly clock: () => number,
    private readonly start: (job: Job, now: number) => void,
  ) {
    this.capped = perUser !== Infinity;
  }

  /** Whether a first attempt of this kind for this user may be queued: room in the queue, or it would start at once. */
  hasRoom(userId: string, inline: boolean, maxQueue: number): boolean {
    return this.queued < maxQueue || this.freeSlot(this.lanes.get(userId), inline);
  }

  /** Whether a job of this kind would take a slot at once (nobody of its kind waits ahead of it). */
  private freeSlot(lane: Lane | undefined, inline: boolean): boolean {
    if (!inline && (this.threadsBusy >= this.maxThreads || this.workerRing.length > 0)) return false;
    if (lane === undefined) return true;
    if (this.capped && lane.running >= this.perUser) return false;
    return head(inline ? lane.inline : lane.worker) === undefined;
  }

  /** Queues a job (already QUEUED); it starts in a later microtask at the earliest. */
  enqueue(job: Job): void {
    const inline = job.fn !== undefined;
    let lane = this.lanes.get(job.userId);
    if (this.freeSlot(lane, inline)) {
      if (this.capped && lane === undefined) {
        lane = new Lane(job.userId);
        this.lanes.set(job.userId, lane);
      }
      this.occupy(lane, job);
      job.reserved = true;
      this.starting.push(job);
      this.schedule();
      return;
    }
    if (lane === undefined) {
      lane = new Lane(job.userId);
      this.lanes.set(job.userId, lane);
    }
    let queue = inline ? lane.inline : lane.worker;
    if (queue === undefined) {
      queue = new Deque<Job>();
      if (inline) lane.inline = queue;
      else lane.worker = queue;
    }
    // Higher priority first, and in submission order among equals (a default task behind
    // negative-priority ones goes ahead of them: insertRanked finds its place from the end).
    queue.insertRanked(job, byPriority);
    this.queued++;
    this.ring(lane);
    this.schedule();
  }

  /** A queued job left (aborted, canceled, shut down): its entry is skipped later (a slot it took is freed then). */
  withdraw(job: Job): void {
    if (!job.reserved) this.queued--;
  }

  /** A running job's slot is free again (exactly once per start). */
  finish(job: Job): void {
    this.running--;
    if (job.fn === undefined) this.threadsBusy--;
    if (this.capped) {
      const lane = this.lanes.get(job.userId);
      if (lane !== undefined) {
        lane.running--;
        this.ring(lane);
        this.forget(lane);
      }
    }
    // A freed thread takes its next task at once (a worker task starts asynchronously, so this
    // cannot recurse); inline tasks start in the next dispatch.
    // Stryker disable next-line ConditionalExpression,EqualityOperator,LogicalOperator,BooleanLiteral: launching here only refills a freed thread before the dispatch scheduled below does; the same tasks start, in the same order
    if (job.fn === undefined && this.workerRing.length > 0 && !this.dispatching) this.launchWorkers(this.clock());
    if (this.inlineRing.length > 0 || this.workerRing.length > 0 || this.starting.length > 0) this.schedule();
  }

  private occupy(lane: Lane | undefined, job: Job): void {
    // Stryker disable next-line ConditionalExpression: a capped job always has a lane (made at enqueue), so only the cap decides
    if (this.capped && lane !== undefined) lane.running++;
    this.running++;
    if (job.fn === undefined) this.threadsBusy++;
  }

  private schedule(): void {
    // Stryker disable next-line ConditionalExpression: one dispatch per turn only saves work: a second dispatch finds nothing to do
    if (this.scheduled) return;
    // Stryker disable next-line BooleanLiteral: one dispatch per turn only saves work: a second dispatch finds nothing to do
    this.scheduled = true;
    queueMicrotask(this.dispatcher);
  }

  /** Puts a lane in the rings matching its heads, while its user may run one more. */
  private ring(lane: Lane): void {
    if (this.capped && lane.running >= this.perUser) return;
    if (!lane.inInlineRing && head(lane.inline) !== undefined) {
      lane.inInlineRing = true;
      this.inlineRing.push(lane);
    }
    if (!lane.inWorkerRing && head(lane.worker) !== undefined) {
      lane.inWorkerRing = true;
      this.workerRing.push(lane);
    }
  }

  /** Drops an idle lane. */
  // Stryker disable next-line BlockStatement: forget only bounds memory: an idle lane kept behaves as a new one
  private forget(lane: Lane): void {
    // Stryker disable next-line BooleanLiteral,BlockStatement: forget only bounds memory: an idle lane kept behaves as a new one
    if (lane.running === 0 && !lane.inInlineRing && !lane.inWorkerRing && head(lane.inline) === undefined && head(lane.worker) === undefined) {
      this.lanes.delete(lane.userId);
    }
  }

  // Stryker disable next-line BooleanLiteral: the flag only keeps finish() from refilling threads inside a dispatch, which launches workers itself: the same tasks start, in the same order
  private dispatching = false;

  private dispatch(): void {
    // Stryker disable next-line BooleanLiteral: the flag only keeps finish() from refilling threads inside a dispatch, which launches workers itself: the same tasks start, in the same order
    this.dispatching = true;
    try {
      this.dispatchAll(this.clock());
      // Stryker disable next-line BlockStatement: the flag only keeps finish() from refilling threads inside a dispatch; left set, the scheduled dispatch refills them: the same tasks start, in the same order
    } finally {
      // Stryker disable next-line BooleanLiteral: the flag only keeps finish() from refilling threads inside a dispatch; left set, the scheduled dispatch refills them: the same tasks start, in the same order
      this.dispatching = false;
    }
  }

  private dispatchAll(now: number): void {
    for (let job = this.starting.shift(); job !== undefined; job = this.starting.shift()) {
      job.reserved = false;
      if (queued(job)) this.start(job, now);
      else this.finish(job); // it left before its start: the slot it took is free again
    }
    for (let lane = this.inlineRing.shift(); lane !== undefined; lane = this.inlineRing.shift()) {
      lane.inInlineRing = false;
      this.launch(lane, lane.inline, now);
    }
    this.launchWorkers(now);
  }

  private launchWorkers(now: number): void {
    while (this.threadsBusy < this.maxThreads) {
      const lane = this.workerRing.shift();
      if (lane === undefined) break;
      lane.inWorkerRing = false;
      this.launch(lane, lane.worker, now);
    }
  }

  private launch(lane: Lane, queue: Deque<Job> | undefined, now: number): void {
    const job = !this.capped || lane.running < this.perUser ? head(queue) : undefined;
    if (job === undefined) {
      this.forget(lane);
      return;
    }
    // Stryker disable next-line OptionalChaining: a job came from head(queue), so the queue is defined
    queue?.shift();
    this.queued--;
    this.occupy(lane, job);
    this.ring(lane);
    this.forget(lane);
    this.start(job, now);
  }
}
