/**
 * The tasks whose callers have not been answered yet: an intrusive doubly linked list through
 * the jobs themselves, so that adding and removing one costs two pointer writes (no hashing).
 */
import type { Job } from './job.js';

/** The live tasks of one pipeline. */
export class LiveTasks {
  private head: Job | undefined = undefined;
  /** How many. */
  size = 0;

  add(job: Job): void {
    job.live = true;
    job.nextLive = this.head;
    job.prevLive = undefined;
    if (this.head !== undefined) this.head.prevLive = job;
    this.head = job;
    this.size++;
  }

  /** Removes the job; false if it was not live. */
  delete(job: Job): boolean {
    if (!job.live) return false;
    job.live = false;
    const { prevLive, nextLive } = job;
    if (prevLive !== undefined) prevLive.nextLive = nextLive;
    else this.head = nextLive;
    if (nextLive !== undefined) nextLive.prevLive = prevLive;
    job.prevLive = undefined;
    job.nextLive = undefined;
    this.size--;
    return true;
  }

  /** A copy of the live jobs (callers may end them while they go through it). */
  snapshot(): Job[] {
    const out: Job[] = [];
    for (let job = this.head; job !== undefined; job = job.nextLive) out.push(job);
    return out;
  }
}
