/** The dead-letter queue as users see it: list, get, remove, and replay exactly once. */
import { invalidArgument, show, unknownOptions } from './errors.js';
import { readOptions } from './util/options.js';
import type { DlqQuery, FailedTask, Store } from './store/store.js';

const LIST_OPTIONS = ['limit', 'userId', 'profileName'] as const;

/** Runs `fn` and turns a synchronous throw into a rejected promise. */
async function attempt<T>(fn: () => T | Promise<T>): Promise<T> {
  return fn();
}

function checkId(id: unknown): asserts id is string {
  if (typeof id !== 'string' || id.length === 0) throw invalidArgument(`a dead letter's id must be a non-empty string, got ${show(id)}`);
}

/** What a replay needs from the manager. */
export interface Replayer {
  /** Resubmits the entry's task; `onStarted` is called when its first attempt starts. */
  replay(entry: FailedTask, onStarted: () => void): Promise<unknown>;
  /** Whether the entry's profile may keep it (its `dlq` bounds). */
  bounds(entry: FailedTask): { maxEntries: number; retentionMs: number } | undefined;
}

/**
 * The dead-letter queue: tasks that failed their last attempt, oldest first. Bounded per profile
 * by `dlq.maxEntries` and `dlq.retentionMs`.
 */
export class DeadLetterQueue {
  /** @internal */
  constructor(
    private readonly store: Store,
    private readonly clock: () => number,
    private readonly replayer: Replayer,
  ) {}

  /** Entries, oldest first, optionally filtered. */
  list(query: DlqQuery = {}): Promise<FailedTask[]> {
    return attempt(() => {
      if (query === null || typeof query !== 'object') throw invalidArgument(`dlq.list options must be an object, got ${show(query)}`);
      const read = readOptions(query, LIST_OPTIONS, (error) => invalidArgument(`dlq.list options could not be read: ${show(error)}`, error));
      if (read.unknown.length > 0) throw unknownOptions('dlq.list', read.unknown, LIST_OPTIONS);
      query = read.values;
      if (query.limit !== undefined && (typeof query.limit !== 'number' || !Number.isSafeInteger(query.limit) || query.limit < 0)) {
        throw invalidArgument(`limit must be an integer >= 0, got ${show(query.limit)}`);
      }
      for (const field of ['userId', 'profileName'] as const) {
        if (query[field] !== undefined && typeof query[field] !== 'string') throw invalidArgument(`${field} must be a string, got ${show(query[field])}`);
      }
      return this.store.dlqList(query, this.clock());
    });
  }

  /** The entry, or undefined. */
  get(id: string): Promise<FailedTask | undefined> {
    return attempt(() => {
      checkId(id);
      return this.store.dlqGet(id, this.clock());
    });
  }

  /** True if the entry existed. */
  remove(id: string): Promise<boolean> {
    return attempt(() => {
      checkId(id);
      return this.store.dlqRemove(id);
    });
  }

  /**
   * Resubmits the task through the full pipeline, once: the entry is claimed (taken out of the
   * queue) first, so a concurrent replay of it is refused. If the replay ends before it ever
   * started (refused at admission, queue full, shut down), the entry is put back: nothing is
   * lost. Once it started, its own outcome stands (a new dead letter if it fails again).
   */
  replay(id: string): Promise<unknown> {
    return attempt(async () => {
      checkId(id);
      const entry = await this.store.dlqGet(id, this.clock());
      if (entry === undefined) throw invalidArgument(`no dead letter with id ${show(id)}`);
      if (!(await this.store.dlqRemove(id))) throw invalidArgument(`dead letter ${show(id)} is already being replayed (or was removed)`);
      let started = false;
      try {
        return await this.replayer.replay(entry, () => {
          started = true;
        });
      } catch (error) {
        const bounds = this.replayer.bounds(entry);
        if (!started && bounds !== undefined) await this.store.dlqAdd(entry, bounds, this.clock());
        throw error;
      }
    });
  }
}
