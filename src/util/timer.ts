/**
 * Timers for any delay. `setTimeout` fires at once for delays past 2^31 - 1 ms (about 24.8
 * days); a long delay is chained in steps below that limit, so it neither fires early nor polls.
 */

/** The longest delay one `setTimeout` honours. */
export const MAX_TIMEOUT_MS = 2 ** 31 - 1;

/** A cancellable timer for a delay of any length (ms; negative or NaN counts as 0). */
export class Timer {
  private handle: NodeJS.Timeout | undefined = undefined;
  private left: number;

  /**
   * @param ms Delay in milliseconds.
   * @param fire Called once when the delay has passed (never if cancelled first).
   */
  constructor(
    ms: number,
    private readonly fire: () => void,
  ) {
    this.left = ms > 0 ? ms : 0;
    this.arm();
  }

  private arm(): void {
    const step = this.left > MAX_TIMEOUT_MS ? MAX_TIMEOUT_MS : this.left;
    this.left -= step;
    this.handle = setTimeout(() => {
      if (this.left > 0) {
        this.arm();
        return;
      }
      this.handle = undefined;
      this.fire();
    }, step);
  }

  /** Stops it; it never fires. */
  cancel(): void {
    if (this.handle !== undefined) clearTimeout(this.handle);
    this.handle = undefined;
  }
}
