/**
 * The server's clock as this process knows it. Every script decides on Redis TIME (or, in
 * tests, on a fixed time this process gives), and every call that writes carries a deadline in
 * server time, past which its script writes nothing.
 */
export class Clock {
  /** Tests only: a fixed time (ms) for every script instead of Redis TIME. */
  private test: (() => number) | undefined = undefined;
  private known = false;
  /** Server time minus local time (µs), from the latest reply that carried it. */
  private skewUs = 0;

  constructor(private readonly timeoutMs: number) {}

  /** Tests only: every script decides at `clock()` (ms); undefined returns to Redis TIME. */
  setTest(clock: (() => number) | undefined): void {
    this.test = clock;
  }

  /** The time argument of every script: Redis TIME, or a test's fixed time. */
  arg(): string {
    return this.test === undefined ? '+0' : `=${Math.round(this.test() * 1000)}`;
  }

  /**
   * The server-time deadline (µs) of a call sent now: a script run later than this writes
   * nothing. Zero (no deadline) until a reply has told us the server's clock.
   */
  deadline(): number {
    return this.known && this.test === undefined ? Math.round((performance.timeOrigin + performance.now()) * 1000) + this.skewUs + this.timeoutMs * 1000 : 0;
  }

  /** A reply said the server's time (ms) was `serverMs`. */
  learn(serverMs: number): void {
    if (this.test !== undefined) return;
    this.skewUs = serverMs * 1000 - Math.round((performance.timeOrigin + performance.now()) * 1000);
    this.known = true;
  }

  /** Local time in µs: a test's clock when set (it is then what the scripts decide on), else a monotonic one. */
  localUs(): number {
    return this.test === undefined ? performance.now() * 1000 : this.test() * 1000;
  }
}
