/**
 * The sweep of ended subscriptions: canceled and expired subscriptions are deleted
 * `endedRetentionMs` after they end, in the background. Each tick asks the store for a bounded
 * batch (Store.sweepEnded: the store keeps an index of ends, so a tick never scans all users),
 * again at once while the store says a round has work left, then waits for the next round.
 * The timer is unref'd, follows the manager's clock (it never fires early, and waits past
 * setTimeout's 2^31-1 ms limit in steps), and stops at close().
 */
import type { Store } from './store/store.js';

/** Subscriptions deleted per store call at most. */
const BATCH = 1000;
/** The longest wait between rounds; shorter when the retention is shorter (at least 1 s). */
const MAX_ROUND_MS = 300_000;
const MIN_ROUND_MS = 1000;
/** setTimeout's longest delay. */
const MAX_TIMEOUT_MS = 2 ** 31 - 1;

/** What the sweep needs from its manager. */
export interface SweepOptions {
  store: Store;
  clock: () => number;
  retentionMs: number;
  /** A subscription was deleted (after the store's step is complete). */
  deleted(userId: string, profileName: string): void;
  /** A round failed (the store was unreachable): it is tried again next round. */
  fault(error: unknown): void;
}

/** Deletes ended subscriptions past their retention, a bounded batch at a time. */
export class EndedSweep {
  private timer: NodeJS.Timeout | undefined = undefined;
  private due = 0;
  private stopped = false;
  private readonly roundMs: number;

  constructor(private readonly options: SweepOptions) {
    this.roundMs = Math.min(MAX_ROUND_MS, Math.max(MIN_ROUND_MS, options.retentionMs));
  }

  /** Arms the first round, one round's wait from now. */
  start(): void {
    this.arm(this.roundMs);
  }

  /** No round starts after this (one in flight finishes its store call). */
  stop(): void {
    this.stopped = true;
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
  }

  private arm(delayMs: number): void {
    this.due = this.options.clock() + delayMs;
    this.wait();
  }

  /** Sleeps until the clock reaches `due`, in steps setTimeout can take. */
  private wait(): void {
    if (this.stopped) return;
    const left = this.due - this.options.clock();
    if (left > 0) {
      this.timer = setTimeout(() => this.wait(), Math.min(left, MAX_TIMEOUT_MS));
      this.timer.unref();
      return;
    }
    this.timer = undefined;
    this.round().then(
      () => this.arm(this.roundMs),
      (error: unknown) => {
        this.options.fault(error);
        this.arm(this.roundMs);
      },
    );
  }

  /** Batches until the store says the round is done. */
  private async round(): Promise<void> {
    const { store, clock, retentionMs } = this.options;
    let more = true;
    while (more && !this.stopped) {
      const result = await store.sweepEnded(clock(), retentionMs, BATCH);
      for (const { userId, profileName } of result.deleted) this.options.deleted(userId, profileName);
      more = result.more;
      // A batch of a synchronous store took its share of the loop: let others have theirs.
      if (more) await new Promise<void>((resolve) => setImmediate(resolve));
    }
  }
}
