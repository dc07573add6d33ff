/**
 * How far behind this process's event loop runs: the third bound on admissions (after
 * `maxPending` and `maxDelayMs`). A process offered more than its own CPU can decide, run and
 * answer falls behind in its event loop whatever Redis does: every timer, every reply and every
 * caller waits. While the loop is more than `maxLagMs` late, new admissions are shed at once
 * (cheaply, without a call to Redis), so that the work already accepted is done in time.
 */

/** How often the loop is sampled while admissions arrive, ms. */
const SAMPLE_MS = 10;

/** Samples the event loop's lateness with one unref'd timer, only while it is asked. */
export class LoopLag {
  private timer: ReturnType<typeof setTimeout> | undefined = undefined;
  /** When the pending sample is due (performance.now()). */
  private due = 0;
  /** Whether an admission asked since the last sample (no admissions: sampling stops). */
  private asked = false;
  /** The last sample's lateness, ms. */
  private late = 0;
  /** Samples in a row that were more than `maxLagMs` late. */
  private lateInARow = 0;

  constructor(private readonly maxLagMs: number) {}

  /**
   * Whether the loop was more than `maxLagMs` late at its last two samples; if so, the last
   * lateness in ms (for the shed decision's message), otherwise 0. One late sample alone is a
   * stall (a garbage collection, a burst answered at once) that is over once it is seen: it
   * sheds nothing. Starts sampling if it had stopped.
   */
  behind(): number {
    this.asked = true;
    if (this.timer === undefined) this.arm(performance.now());
    return this.lateInARow >= 2 ? this.late : 0;
  }

  private arm(now: number): void {
    this.due = now + SAMPLE_MS;
    this.timer = setTimeout(this.sample, SAMPLE_MS);
    this.timer.unref();
  }

  private readonly sample = (): void => {
    const now = performance.now();
    this.late = now - this.due;
    this.lateInARow = this.late > this.maxLagMs ? this.lateInARow + 1 : 0;
    if (!this.asked) {
      // Nothing asked since the last sample: stop until something does (an idle process keeps
      // no timer running), forgetting a lateness no admission saw.
      this.timer = undefined;
      this.late = 0;
      this.lateInARow = 0;
      return;
    }
    this.asked = false;
    this.arm(now);
  };

  /** Stops sampling (the store closes). */
  stop(): void {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    this.late = 0;
    this.lateInARow = 0;
  }
}
