/**
 * What this process can know of a Redis server's clock, for deadlines.
 *
 * A deadline is server time: a script that runs past it writes nothing. The client fails a call
 * at `timeoutMs` on its own monotonic clock, so the deadline it sends must not lie after the
 * server time of that moment. One `TIME` round trip bounds the offset (server minus local):
 * the server read its clock after the request left and before the reply was read, so
 *
 *     offset >= serverTime - receivedAt.
 *
 * That lower bound is what deadlines use. A reply read late (a busy event loop) only lowers it,
 * so the largest bound seen is kept: a late reading never wins, and never teaches a deadline
 * that is already past. Bounds are kept per window of {@link WINDOW_MS} and the last two windows
 * count, so a server clock that steps backwards is followed within two windows: nothing is
 * learned for ever. A deadline earlier than needed only refuses a call that was about to time
 * out anyway.
 */

/** Length of one window of samples (ms of local time). */
export const WINDOW_MS = 10_000;

/** One process's knowledge of one server's clock. */
export class ServerClock {
  /** Best lower bound of the offset (µs) in the current and the previous window; -Infinity: none. */
  private current = -Infinity;
  private previous = -Infinity;
  /** Local time (µs) at which the current window began. */
  private windowStart = -Infinity;

  /** Whether a sample is known (a deadline can be given). */
  get known(): boolean {
    return this.current !== -Infinity || this.previous !== -Infinity;
  }

  /** Whether the current window has no sample yet: time to take one. */
  stale(nowUs: number): boolean {
    return nowUs - this.windowStart >= WINDOW_MS * 1000;
  }

  /**
   * Records one `TIME` reading: `serverUs` read by the server between `sentUs` and `receivedUs`
   * (local monotonic µs). Returns the offset bound now in force.
   */
  sample(sentUs: number, receivedUs: number, serverUs: number): number {
    if (!(receivedUs >= sentUs) || !Number.isFinite(serverUs)) return this.offset();
    if (receivedUs - this.windowStart >= WINDOW_MS * 1000) {
      this.previous = this.current;
      this.current = -Infinity;
      this.windowStart = receivedUs;
    }
    const bound = serverUs - receivedUs;
    if (bound > this.current) this.current = bound;
    return this.offset();
  }

  /** Forgets every sample (a refusal showed the bound is wrong): the next call samples afresh. */
  reset(): void {
    this.current = -Infinity;
    this.previous = -Infinity;
    this.windowStart = -Infinity;
  }

  /** The offset bound in force (µs): the larger of the two windows' bounds. */
  offset(): number {
    return this.current > this.previous ? this.current : this.previous;
  }

  /**
   * The server-time deadline (µs) of a call sent at local `nowUs` that the client fails after
   * `timeoutMs`: no later than the server's time when the client gives up. Needs a sample.
   */
  deadline(nowUs: number, timeoutMs: number): number {
    return Math.floor(nowUs + this.offset()) + timeoutMs * 1000;
  }
}
