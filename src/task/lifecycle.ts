/**
 * A task's lifecycle: one table of states and transitions, and the one function that applies
 * them. Every stage asks {@link Lifecycle.move} instead of writing a task's state; it checks the
 * transition against the table, records the reason, counts it, emits the `task` event, and
 * returns what was charged for work that never started, exactly once.
 */
import { randomUUID } from 'node:crypto';
import type { Metrics } from '../metrics.js';
import type { Job } from './job.js';

/** Where a task is. Terminal states (SUCCEEDED, FAILED, CANCELED) are final. */
export const State = {
  /** Submitted; the store's admission is being decided. */
  PENDING: 0,
  /** Admitted (quota charged); waiting for its rate turn. Holds no slot. */
  WAITING_RATE: 1,
  /** Its units taken; waiting for a thread or its user's concurrency slot. */
  QUEUED: 2,
  RUNNING: 3,
  /** Between attempts. Holds no slot. */
  RETRY_WAIT: 4,
  SUCCEEDED: 5,
  /** Dead-lettered. */
  FAILED: 6,
  /** Aborted, shut down, subscription canceled or deleted, queue full, or a cost that no longer fits. */
  CANCELED: 7,
} as const;
export type State = (typeof State)[keyof typeof State];

/** The states' names, as `task` events and metrics give them. */
export const STATE_NAMES: readonly StateName[] = ['PENDING', 'WAITING_RATE', 'QUEUED', 'RUNNING', 'RETRY_WAIT', 'SUCCEEDED', 'FAILED', 'CANCELED'];
/** A state's name, as `task` events give it. */
export type StateName = 'PENDING' | 'WAITING_RATE' | 'QUEUED' | 'RUNNING' | 'RETRY_WAIT' | 'SUCCEEDED' | 'FAILED' | 'CANCELED';

const { PENDING, WAITING_RATE, QUEUED, RUNNING, RETRY_WAIT, SUCCEEDED, FAILED, CANCELED } = State;

/** The transitions that exist: from -> the states it may move to. */
const TABLE: Record<State, readonly State[]> = {
  [PENDING]: [WAITING_RATE, QUEUED, CANCELED],
  // FAILED from a wait: a retry that could not be re-admitted (the store was unavailable).
  [WAITING_RATE]: [QUEUED, FAILED, CANCELED],
  [QUEUED]: [RUNNING, CANCELED],
  [RUNNING]: [SUCCEEDED, RETRY_WAIT, FAILED, CANCELED],
  [RETRY_WAIT]: [WAITING_RATE, QUEUED, FAILED, CANCELED],
  // Stryker disable next-line ArrayDeclaration: a terminal state's list only fills ALLOWED: a string entry makes a key that is no index, allowing nothing
  [SUCCEEDED]: [],
  // Stryker disable next-line ArrayDeclaration: a terminal state's list only fills ALLOWED: a string entry makes a key that is no index, allowing nothing
  [FAILED]: [],
  // Stryker disable next-line ArrayDeclaration: a terminal state's list only fills ALLOWED: a string entry makes a key that is no index, allowing nothing
  [CANCELED]: [],
};

/** ALLOWED[from * 8 + to]: whether the transition exists. */
const ALLOWED = new Uint8Array(64);
for (const [from, tos] of Object.entries(TABLE)) for (const to of tos) ALLOWED[Number(from) * 8 + to] = 1;

/** Whether a state is final. */
export function isTerminal(state: State): boolean {
  return state >= SUCCEEDED;
}

/** What `manager.on('task', e)` receives: one transition of one task. */
export interface TaskEvent {
  /** The task's id: the `taskId` given to submit, else generated when first listened to. */
  id: string;
  /** The user the task runs for. */
  userId: string;
  /** The profile the task runs under (the user's new one after a profile change). */
  profileName: string;
  /** The state it left. */
  from: StateName;
  /** The state it entered. */
  to: StateName;
  /** 1-based attempt. */
  attempt: number;
  /** Why, for CANCELED, FAILED and RETRY_WAIT: the error code in lower case (e.g. 'aborted'). */
  reason?: string;
}

/** What applying a transition needs from the rest of the pipeline. */
export interface LifecycleHooks {
  metrics: Metrics;
  /** The `task` event's sink, or undefined while nobody listens (then nothing is built). */
  listener(): ((event: TaskEvent) => void) | undefined;
  /** Gives back the quota a task was charged (it never started). */
  refundQuota(job: Job): void;
  /** Gives back the rate units an attempt took (it never started). */
  refundRate(job: Job): void;
  /** A transition that the table does not have: a bug, reported, never applied. */
  fault(error: Error): void;
}

/** Applies transitions; the only writer of a task's state. */
export class Lifecycle {
  constructor(private readonly hooks: LifecycleHooks) {}

  /**
   * Moves `job` to `to`. Returns false, changing nothing, when the job is already in a terminal
   * state (a late event: counted) or when the table has no such transition (reported).
   */
  move(job: Job, to: State, reason?: string): boolean {
    const from = job.state;
    const stats = job.stats;
    if (ALLOWED[from * 8 + to] !== 1) {
      if (isTerminal(from)) stats.lateEvents++;
      // Stryker disable next-line StringLiteral: unreachable: every stage asks only for transitions the table has from a live state
      else this.hooks.fault(new Error(`taskvalve: no transition ${STATE_NAMES[from]} -> ${STATE_NAMES[to]} (a bug)`));
      return false;
    }
    job.state = to;
    stats.transitions[from * 8 + to]!++;
    if (to === RUNNING) {
      job.started = true;
      // The attempt began: its rate units are spent, unless it never really ran (see unstart).
      job.spent = job.taken;
      job.taken = undefined;
    } else if (to >= SUCCEEDED) {
      // The one refund rule: what was charged for work that never started goes back, once.
      if (!job.started && job.quota > 0) this.hooks.refundQuota(job);
      job.quota = 0;
      if (job.taken !== undefined) this.hooks.refundRate(job);
      job.taken = undefined;
      job.spent = undefined;
    }
    const listener = this.hooks.listener();
    if (listener !== undefined) {
      job.id ??= randomUUID();
      const event: TaskEvent = {
        id: job.id,
        userId: job.userId,
        profileName: job.profile.name,
        from: STATE_NAMES[from] as StateName,
        to: STATE_NAMES[to] as StateName,
        attempt: job.attempt,
      };
      if (reason !== undefined) event.reason = reason;
      listener(event);
    }
    return true;
  }

  /**
   * An attempt that never really ran (no such export, a payload that cannot be sent): its rate
   * units are not spent, nor, when it was the first, the quota. Given back when it ends.
   */
  unstart(job: Job): void {
    if (job.attempt === 1) job.started = false;
    job.taken = job.spent;
    job.spent = undefined;
  }
}
