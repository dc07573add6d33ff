/**
 * The server's clock as this process knows it. Every script decides on Redis TIME (or, in
 * tests, on a fixed time this process gives), and every call that writes carries a deadline in
 * server time, past which its script writes nothing. The deadline comes from a bound on each
 * server's clock (server-clock.ts) learned with `TIME` round trips: the first call that writes
 * waits for one, so a deadline goes with every such call, whichever comes first.
 */
import type { Calls } from './calls.js';
import type { ScriptClient } from './scripts.js';
import { ServerClock } from './server-clock.js';

/** One server's clock bound, and the reading in flight if any. */
interface Node {
  readonly bound: ServerClock;
  reading: Promise<void> | undefined;
}

export class Clock {
  /** Tests only: a fixed time (ms) for every script instead of Redis TIME. */
  private test: (() => number) | undefined = undefined;
  private readonly nodes = new Map<ScriptClient, Node>();

  constructor(
    private readonly calls: Calls,
    private readonly timeoutMs: number,
  ) {}

  /** Tests only: every script decides at `clock()` (ms); undefined returns to Redis TIME. */
  setTest(clock: (() => number) | undefined): void {
    this.test = clock;
  }

  /** The time argument of every script: Redis TIME, or a test's fixed time. */
  arg(): string {
    return this.test === undefined ? '+0' : `=${Math.round(this.test() * 1000)}`;
  }

  /**
   * The server-time deadline (µs) of a call sent now to `client`: a script run later than this
   * writes nothing. A promise while the server's clock is not known yet (the call waits for one
   * reading); 0 (none) under a test clock.
   */
  deadline(client: ScriptClient): number | Promise<number> {
    if (this.test !== undefined) return 0;
    const node = this.node(client);
    const now = performance.now() * 1000;
    if (node.bound.known) {
      if (node.bound.stale(now) && node.reading === undefined) this.read(client, node).catch(() => {});
      return node.bound.deadline(now, this.timeoutMs);
    }
    return this.read(client, node).then(() => node.bound.deadline(performance.now() * 1000, this.timeoutMs));
  }

  /**
   * A call was refused as late before this process gave up on it: the bound on that server's
   * clock is wrong (its clock stepped back). Forget it; the next call reads the clock again.
   */
  refusedEarly(client: ScriptClient): void {
    this.node(client).bound.reset();
  }

  /** Local time in µs: a test's clock when set (it is then what the scripts decide on), else a monotonic one. */
  localUs(): number {
    return this.test === undefined ? performance.now() * 1000 : this.test() * 1000;
  }

  private node(client: ScriptClient): Node {
    let node = this.nodes.get(client);
    if (node === undefined) {
      node = { bound: new ServerClock(), reading: undefined };
      this.nodes.set(client, node);
    }
    return node;
  }

  /** One `TIME` reading at a time per server. */
  private read(client: ScriptClient, node: Node): Promise<void> {
    if (node.reading === undefined) {
      node.reading = this.calls.time(client).then(
        ([sent, received, server]) => {
          node.reading = undefined;
          node.bound.sample(sent, received, server);
        },
        (error: unknown) => {
          node.reading = undefined;
          throw error;
        },
      );
    }
    return node.reading;
  }
}
