/**
 * Stage 3, the fair scheduler of one profile: tasks whose units are taken wait here for a thread
 * (worker tasks) or for their user's concurrency slot (both kinds). Users take turns
 * round-robin, so one user's thousand queued tasks delay another user's first task by at most
 * one slot. A user's inline tasks never wait behind that user's worker tasks that wait for a
 * thread. Dispatch runs in a microtask: a task never starts inside the call that queued it.
 */
import { Deque } from '../util/deque.js';
import type { Job } from './job.js';
import { State } from './lifecycle.js';

/** One user's queues within a profile. */
class Lane {
  readonly inline = new Deque<Job>();
  readonly worker = new Deque<Job>();
  running = 0;
  /** In the ring of lanes that may start an inline / a worker task. */
  inInlineRing = false;
  inWorkerRing = false;
  constructor(readonly userId: string) {}
}

const byPriority = (job: Job): number => job.priority;
const queued = (job: Job): boolean => job.state === State.QUEUED;

/** The fair queue and the concurrency bookkeeping of one profile. */
export class Scheduler {
  private readonly lanes = new Map<string, Lane>();
  private readonly workerRing = new Deque<Lane>();
  private readonly inlineRing = new Deque<Lane>();
  /** Jobs that took a free slot at once; they start at the next dispatch (never inside the call that queued them). */
  private readonly starting = new Deque<Job>();
  /** Queued jobs still waiting (those that left are dropped from their deques later). */
  queued = 0;
  running = 0;
  private threadsBusy = 0;
  private scheduled = false;

  /**
   * @param maxThreads Worker tasks running at once.
   * @param perUser Tasks of one user running at once.
   * @param start Starts a job (already RUNNING); the scheduler learns of its end through {@link finish}.
   */
  constructor(
    private readonly maxThreads: number,
    private readonly perUser: number,
    private readonly start: (job: Job) => void,
  ) {}

  /** Whether a first attempt of this kind for this user may be queued: room in the queue, or it would start at once. */
  hasRoom(userId: string, inline: boolean, maxQueue: number): boolean {
    if (this.queued < maxQueue) return true;
    const lane = this.lanes.get(userId);
    if (lane !== undefined && (lane.running >= this.perUser || (inline ? lane.inline : lane.worker).length > 0)) return false;
    return inline || this.threadsBusy < this.maxThreads;
  }

  /** Queues a job (already QUEUED); it starts in a later microtask at the earliest. */
  enqueue(job: Job): void {
    let lane = this.lanes.get(job.userId);
    if (lane === undefined) {
      lane = new Lane(job.userId);
      this.lanes.set(job.userId, lane);
    }
    const inline = job.fn !== undefined;
    const queue = inline ? lane.inline : lane.worker;
    if (lane.running < this.perUser && this.head(queue) === undefined && (inline || (this.threadsBusy < this.maxThreads && this.workerRing.length === 0))) {
      // A free slot nobody waits for: take it now, start in the next dispatch.
      this.occupy(lane, job);
      this.starting.push(job);
      this.schedule();
      return;
    }
    if (job.priority === 0) queue.push(job);
    else queue.insertRanked(job, byPriority);
    this.queued++;
    this.ring(lane);
    this.schedule();
  }

  /** A queued job left (aborted, canceled, shut down): its entry is skipped later (a slot it took is freed then). */
  withdraw(job: Job): void {
    if (!this.reserved.has(job)) this.queued--;
  }

  private readonly reserved = new Set<Job>();

  private occupy(lane: Lane, job: Job): void {
    lane.running++;
    this.running++;
    if (job.fn === undefined) this.threadsBusy++;
    this.reserved.add(job);
  }

  /** A running job's slot is free again (exactly once per start). */
  finish(job: Job): void {
    this.running--;
    if (job.fn === undefined) this.threadsBusy--;
    const lane = this.lanes.get(job.userId);
    if (lane !== undefined) {
      lane.running--;
      this.ring(lane);
      this.forget(lane);
    }
    this.schedule();
  }

  /** Jobs queued here. */
  *jobs(): IterableIterator<Job> {
    for (const lane of this.lanes.values()) {
      for (const job of lane.inline) if (queued(job)) yield job;
      for (const job of lane.worker) if (queued(job)) yield job;
    }
  }

  private schedule(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    queueMicrotask(() => {
      this.scheduled = false;
      this.dispatch();
    });
  }

  /** Puts a lane in the rings matching its heads, while its user may run one more. */
  private ring(lane: Lane): void {
    if (lane.running >= this.perUser) return;
    if (!lane.inInlineRing && this.head(lane.inline) !== undefined) {
      lane.inInlineRing = true;
      this.inlineRing.push(lane);
    }
    if (!lane.inWorkerRing && this.head(lane.worker) !== undefined) {
      lane.inWorkerRing = true;
      this.workerRing.push(lane);
    }
  }

  /** A queue's first live job, dropping entries of jobs that left. */
  private head(queue: Deque<Job>): Job | undefined {
    let job = queue.peek();
    while (job !== undefined && !queued(job)) {
      queue.shift();
      job = queue.peek();
    }
    return job;
  }

  /** Drops an idle lane. */
  private forget(lane: Lane): void {
    if (lane.running === 0 && !lane.inInlineRing && !lane.inWorkerRing && lane.inline.length === 0 && lane.worker.length === 0) {
      this.lanes.delete(lane.userId);
    }
  }

  private dispatch(): void {
    for (let job = this.starting.shift(); job !== undefined; job = this.starting.shift()) {
      this.reserved.delete(job);
      if (queued(job)) this.start(job);
      else this.finish(job); // it left before its start: the slot it took is free again
    }
    for (let lane = this.inlineRing.shift(); lane !== undefined; lane = this.inlineRing.shift()) {
      lane.inInlineRing = false;
      this.launch(lane, lane.inline);
    }
    while (this.threadsBusy < this.maxThreads) {
      const lane = this.workerRing.shift();
      if (lane === undefined) break;
      lane.inWorkerRing = false;
      this.launch(lane, lane.worker);
    }
  }

  private launch(lane: Lane, queue: Deque<Job>): void {
    const job = lane.running < this.perUser ? this.head(queue) : undefined;
    if (job === undefined) {
      this.forget(lane);
      return;
    }
    queue.shift();
    this.queued--;
    this.occupy(lane, job);
    this.reserved.delete(job);
    this.ring(lane);
    this.start(job);
  }
}
