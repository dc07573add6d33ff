/**
 * A fault-injecting TCP proxy for the tests: it sits between a Redis client (ioredis) and a real
 * redis-server (see `redis.ts`), in the test process, on a free loopback port. It splits both
 * byte streams of every connection into whole RESP frames (`resp-frames.ts`), forwards them
 * unchanged, and pairs each reply with its request in order, per connection, as Redis answers
 * them. So it can lose the very reply of one request (not a later one's), even when several
 * requests arrive in one chunk or one request spans several.
 *
 * Faults, each switched on while traffic flows:
 * - {@link FaultProxy.dropReplies}: requests reach Redis and run; their replies are discarded;
 * - {@link FaultProxy.loseReplyThenReset}: a request runs, its reply is discarded, and its
 *   connection is reset (ioredis then re-sends the commands it has no answer for);
 * - {@link FaultProxy.reset}: every connection is reset now (a real RST where Node can);
 * - {@link FaultProxy.delay}: every chunk, both ways, is held for a while (order kept);
 * - {@link FaultProxy.blackhole}: connections and bytes are accepted, nothing goes through;
 * - {@link FaultProxy.refuse}: new connections are reset at once (Redis looks down);
 * - {@link FaultProxy.heal}: back to a transparent proxy.
 *
 * Request/reply pairing assumes one reply per request, as ioredis uses Redis by default (RESP2,
 * no pub/sub, no MONITOR, no CLIENT REPLY OFF). Writes are not throttled: meant for test
 * traffic, not for bulk transfers.
 */
import { connect, createServer, type Server, type Socket } from 'node:net';
import { RespFrames, requestArgs } from './resp-frames.js';

const HOST = '127.0.0.1';
/** How long {@link FaultProxy.until} waits by default before it rejects. */
const UNTIL_TIMEOUT_MS = 10_000;
/** The longest delay setTimeout honours. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/** A request as the proxy forwards it: what a fault's `match` is given. */
export interface ProxiedRequest {
  /** The arguments, command name first, exactly as sent. */
  readonly args: readonly Buffer[];
  /** The command name, upper-case (e.g. `'EVALSHA'`). */
  readonly command: string;
  /** The request's bytes, exactly as forwarded. */
  readonly bytes: Buffer;
  /** The connection it came on: 1, 2, ... in the order the proxy accepted them. */
  readonly connection: number;
}

/** Options of the faults that take requests. */
export interface FaultOptions {
  /**
   * Which requests the fault takes; default every request. Called once per request forwarded
   * while the fault still wants requests, in the order they are forwarded. If it throws, the
   * fault stops taking requests and its `done` rejects with that error.
   */
  match?: (request: ProxiedRequest) => boolean;
}

/** A fault switched on: how to know it has acted. */
export interface Fault {
  /**
   * Resolves once the fault has acted on every request it took (each reply discarded, the reset
   * done) and wants no more, or was withdrawn by {@link FaultProxy.heal} or
   * {@link FaultProxy.close}: with the number of replies it discarded. A request whose
   * connection closed before its reply came counts as acted on, with nothing discarded.
   */
  readonly done: Promise<number>;
}

/** The proxy's counters, and what it holds now. */
export interface FaultProxyStats {
  /** Connections accepted and passed on to Redis (refused ones not included). */
  connections: number;
  /** Connections open now. */
  open: number;
  /** Connections reset on arrival by {@link FaultProxy.refuse}. */
  refused: number;
  /** Connections the proxy reset: {@link FaultProxy.reset}, a lost reply's reset, heal() of a connection that lost replies, a protocol error. */
  resets: number;
  /** Requests forwarded to Redis. */
  requestsForwarded: number;
  /** Replies forwarded to clients. */
  repliesDelivered: number;
  /** Replies discarded by a fault. */
  repliesDropped: number;
  /** Requests forwarded whose reply has not come back yet, on connections still open. */
  awaitingReplies: number;
  /** Chunks held back by {@link FaultProxy.delay} or {@link FaultProxy.blackhole}, both ways. */
  heldChunks: number;
  /** Bytes of frames not complete yet (a request or a reply whose end has not arrived). */
  partialBytes: number;
  /** Connections reset because their bytes were not RESP. */
  protocolErrors: number;
}

/** Where a proxied Redis listens. */
export interface ProxyTarget {
  host?: string;
  port: number;
}

/** A fault that takes requests, while switched on. */
class Armed implements Fault {
  readonly done: Promise<number>;
  /** Requests it still wants. */
  budget: number;
  /** Requests taken whose reply has not been dealt with yet. */
  taken = 0;
  dropped = 0;
  private finished = false;
  private resolve!: (dropped: number) => void;
  private reject!: (error: unknown) => void;

  constructor(
    budget: number,
    readonly reset: boolean,
    readonly match: FaultOptions['match'],
  ) {
    this.budget = budget;
    this.done = new Promise<number>((resolve, reject) => {
      this.resolve = resolve;
      this.reject = reject;
    });
    // A test that never awaits `done` must not see an unhandled rejection from a throwing match.
    this.done.catch(() => {});
  }

  /** Resolves `done` once nothing is left to do; true when finished. */
  settle(): boolean {
    if (!this.finished && this.budget === 0 && this.taken === 0) {
      this.finished = true;
      this.resolve(this.dropped);
    }
    return this.finished;
  }

  fail(error: unknown): void {
    this.budget = 0;
    if (!this.finished) {
      this.finished = true;
      this.reject(error);
    }
  }
}

/** One direction of one connection: chunks pass through, or wait (delay, blackhole) in order. */
class Lane {
  /** Chunks held, in arrival order; `null` is the end of the stream (a FIN). */
  private readonly held: { chunk: Buffer | null; due: number }[] = [];
  private timer: NodeJS.Timeout | undefined = undefined;

  constructor(
    private readonly proxy: FaultProxy,
    private readonly pass: (chunk: Buffer | null) => void,
    private readonly alive: () => boolean,
  ) {}

  get size(): number {
    return this.held.length;
  }

  push(chunk: Buffer | null): void {
    const delayMs = this.proxy.delayMs;
    if (this.held.length === 0 && delayMs === 0 && !this.proxy.blackholed) this.pass(chunk);
    else {
      this.held.push({ chunk, due: performance.now() + delayMs });
      this.pump();
      this.proxy.changed();
    }
  }

  /** Passes on every chunk whose time has come, in order, unless blackholed; re-arms for the next. */
  pump(): void {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    while (this.held.length > 0 && this.alive() && !this.proxy.blackholed) {
      const head = this.held[0] as { chunk: Buffer | null; due: number };
      const wait = head.due - performance.now();
      if (wait > 0) {
        // Bounded: setTimeout fires at once past 2^31 - 1 ms; pump() re-arms until the time comes.
        this.timer = setTimeout(() => this.pump(), Math.min(Math.ceil(wait), MAX_TIMER_MS));
        return;
      }
      this.held.shift();
      this.pass(head.chunk);
    }
    if (!this.alive()) this.clear();
  }

  /** Everything held is due now (heal). */
  release(): void {
    for (const h of this.held) h.due = 0;
    this.pump();
  }

  clear(): void {
    this.held.length = 0;
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
  }
}

/** What becomes of one request's reply: passed on (`null`), or taken by a fault. */
type Fate = Armed | null;

/** One client connection and its connection to Redis. */
class Connection {
  readonly requests = new RespFrames('requests');
  readonly replies = new RespFrames('replies');
  /** Fates of the requests forwarded and not answered yet, in order. */
  readonly fates: Fate[] = [];
  fatesHead = 0;
  /** A reply was discarded: the client pairs every later reply with the wrong request. */
  lossy = false;
  closed = false;
  readonly up: Lane;
  readonly down: Lane;

  constructor(
    readonly id: number,
    readonly client: Socket,
    readonly upstream: Socket,
    proxy: FaultProxy,
  ) {
    const alive = (): boolean => !this.closed;
    this.up = new Lane(proxy, (chunk) => proxy.forwardRequests(this, chunk), alive);
    this.down = new Lane(proxy, (chunk) => proxy.forwardReplies(this, chunk), alive);
  }

  get awaiting(): number {
    return this.fates.length - this.fatesHead;
  }
}

/** Resets a socket (RST) where Node can, else destroys it. */
function resetSocket(socket: Socket): void {
  if (socket.destroyed) return;
  if (typeof socket.resetAndDestroy === 'function') socket.resetAndDestroy();
  else socket.destroy();
}

/**
 * The proxy. Start it with {@link startFaultProxy}; point the client at {@link FaultProxy.port};
 * always {@link FaultProxy.close} it (e.g. in afterAll).
 */
export class FaultProxy {
  readonly host = HOST;
  /** @internal Read by the lanes. */
  delayMs = 0;
  /** @internal Read by the lanes. */
  blackholed = false;
  private refusing = false;
  private closing = false;
  private readonly connections = new Set<Connection>();
  private readonly armed: Armed[] = [];
  private readonly watchers = new Set<{ condition: (stats: FaultProxyStats) => boolean; resolve(stats: FaultProxyStats): void; reject(error: Error): void; timer: NodeJS.Timeout }>();
  private readonly counters = { connections: 0, refused: 0, resets: 0, requestsForwarded: 0, repliesDelivered: 0, repliesDropped: 0, protocolErrors: 0 };
  private nextId = 1;

  private constructor(
    private readonly server: Server,
    /** The port clients connect to. */
    readonly port: number,
    /** Where Redis listens. */
    readonly target: Readonly<Required<ProxyTarget>>,
  ) {
    server.on('connection', (socket) => this.accept(socket));
  }

  /** @internal Use {@link startFaultProxy}. */
  static async listen(target: ProxyTarget): Promise<FaultProxy> {
    const server = createServer({ allowHalfOpen: true, noDelay: true });
    const port = await new Promise<number>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, HOST, () => {
        server.off('error', reject);
        const address = server.address();
        resolve(typeof address === 'object' && address !== null ? address.port : 0);
      });
    });
    return new FaultProxy(server, port, { host: target.host ?? HOST, port: target.port });
  }

  /** `redis://127.0.0.1:<port>` of the proxy. */
  get url(): string {
    return `redis://${HOST}:${this.port}`;
  }

  // ---- faults -------------------------------------------------------------------------------

  /**
   * The next `count` requests (that `match`, on any connection) reach Redis and run, but their
   * replies are discarded; the connections stay open. A client that pairs replies with requests
   * in order (ioredis) is then one reply short on that connection: every later reply would be
   * taken for the answer to the request before it. So {@link FaultProxy.heal} resets every
   * connection that lost a reply, and ioredis, reconnecting, re-sends what it has no answer for
   * (the dropped requests included, even those it timed out).
   */
  dropReplies(count: number, options: FaultOptions = {}): Fault {
    if (!Number.isSafeInteger(count) || count < 1) throw new RangeError(`dropReplies: count must be a positive integer, got ${count}`);
    return this.arm(new Armed(count, false, options.match));
  }

  /**
   * The next request (that `match`) reaches Redis and runs; its reply is discarded, and then its
   * connection is reset (after the replies to earlier requests on it were passed on). ioredis
   * reconnects and re-sends every command it has no answer for, that one included.
   */
  loseReplyThenReset(options: FaultOptions = {}): Fault {
    return this.arm(new Armed(1, true, options.match));
  }

  /** Resets every open connection now, both ways (a real RST where Node can). Returns how many. */
  reset(): number {
    const open = [...this.connections].filter((conn) => !conn.closed);
    for (const conn of open) this.resetConnection(conn);
    return open.length;
  }

  /** Holds every chunk, both ways, `ms` ms from its arrival before it goes on (order kept); 0 stops holding new chunks. */
  delay(ms: number): void {
    if (!Number.isFinite(ms) || ms < 0) throw new RangeError(`delay: ms must be a non-negative number, got ${ms}`);
    this.delayMs = ms;
    this.changed();
  }

  /** Accepts connections and bytes, but forwards nothing either way until {@link FaultProxy.heal}; then the held bytes go on, in order. */
  blackhole(): void {
    this.blackholed = true;
    this.changed();
  }

  /** New connections are reset as soon as they are accepted (Redis looks down) until {@link FaultProxy.heal}; open ones are left alone. */
  refuse(): void {
    this.refusing = true;
    this.changed();
  }

  /**
   * Back to a transparent proxy: no delay, no blackhole, no refusal; faults that still wanted
   * requests are withdrawn (a request already taken keeps its fate); every chunk held goes on
   * now, in order; and every connection that lost a reply is reset (see
   * {@link FaultProxy.dropReplies}).
   */
  heal(): void {
    this.delayMs = 0;
    this.blackholed = false;
    this.refusing = false;
    this.withdraw();
    for (const conn of [...this.connections]) {
      if (conn.lossy) this.resetConnection(conn);
    }
    for (const conn of [...this.connections]) {
      conn.up.release();
      conn.down.release();
    }
    this.changed();
  }

  // ---- observing ----------------------------------------------------------------------------

  /** A snapshot of the counters. */
  stats(): FaultProxyStats {
    let awaitingReplies = 0;
    let heldChunks = 0;
    let partialBytes = 0;
    for (const conn of this.connections) {
      awaitingReplies += conn.awaiting;
      heldChunks += conn.up.size + conn.down.size;
      partialBytes += conn.requests.pending + conn.replies.pending;
    }
    return { ...this.counters, open: this.connections.size, awaitingReplies, heldChunks, partialBytes };
  }

  /**
   * Resolves with the stats once `condition` holds for them; it is checked now and after every
   * change in the proxy (no polling). Rejects after `timeoutMs` (a bound for a test that would
   * otherwise hang, not a measure), or when the proxy closes.
   */
  until(condition: (stats: FaultProxyStats) => boolean, timeoutMs = UNTIL_TIMEOUT_MS): Promise<FaultProxyStats> {
    const now = this.stats();
    if (condition(now)) return Promise.resolve(now);
    return new Promise<FaultProxyStats>((resolve, reject) => {
      const watcher = {
        condition,
        resolve,
        reject,
        timer: setTimeout(() => {
          this.watchers.delete(watcher);
          reject(new Error(`fault proxy: condition not met within ${timeoutMs} ms; stats ${JSON.stringify(this.stats())}`));
        }, timeoutMs),
      };
      this.watchers.add(watcher);
    });
  }

  /** Resolves once every request forwarded has had its reply (passed on or discarded) and nothing is held or half-received. */
  idle(timeoutMs = UNTIL_TIMEOUT_MS): Promise<FaultProxyStats> {
    return this.until((s) => s.awaitingReplies === 0 && s.heldChunks === 0 && s.partialBytes === 0, timeoutMs);
  }

  /** Stops listening and destroys every connection (both sides); resolves once the listener is closed. */
  async close(): Promise<void> {
    this.closing = true;
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const conn of [...this.connections]) this.teardown(conn, true);
    this.withdraw();
    for (const w of this.watchers) {
      clearTimeout(w.timer);
      w.reject(new Error('fault proxy closed'));
    }
    this.watchers.clear();
    await closed;
  }

  // ---- the streams --------------------------------------------------------------------------

  private accept(client: Socket): void {
    client.on('error', () => {}); // a client's reset is a normal end here
    if (this.closing || this.refusing) {
      if (!this.closing) this.counters.refused++;
      resetSocket(client);
      this.changed();
      return;
    }
    client.setNoDelay(true);
    const upstream = connect({ host: this.target.host, port: this.target.port, allowHalfOpen: true, noDelay: true });
    const conn = new Connection(this.nextId++, client, upstream, this);
    this.connections.add(conn);
    this.counters.connections++;
    client.on('data', (chunk: Buffer) => conn.up.push(chunk));
    upstream.on('data', (chunk: Buffer) => conn.down.push(chunk));
    client.on('end', () => conn.up.push(null));
    upstream.on('end', () => conn.down.push(null));
    // An error or a close on one side ends the other: an abortive close is passed on as one.
    upstream.on('error', () => this.teardown(conn, true));
    client.on('close', (hadError) => this.teardown(conn, hadError));
    upstream.on('close', (hadError) => this.teardown(conn, hadError));
    this.changed();
  }

  /** @internal Requests from a client (or its end) go on to Redis; each is given its reply's fate. */
  forwardRequests(conn: Connection, chunk: Buffer | null): void {
    if (conn.closed) return;
    if (chunk === null) {
      conn.upstream.end();
      return;
    }
    let frames: Buffer[];
    try {
      frames = conn.requests.push(chunk);
    } catch {
      this.protocolError(conn);
      return;
    }
    for (const frame of frames) {
      const args = requestArgs(frame);
      // Redis answers nothing to an empty request (a blank inline line, `*0`).
      if (args.length === 0) continue;
      this.counters.requestsForwarded++;
      conn.fates.push(this.fateOf({ args, command: (args[0] as Buffer).toString('latin1').toUpperCase(), bytes: frame, connection: conn.id }));
    }
    if (frames.length > 0) conn.upstream.write(frames.length === 1 ? (frames[0] as Buffer) : Buffer.concat(frames));
    this.changed();
  }

  /** @internal Replies from Redis (or its end) go on to the client, unless their request's fault takes them. */
  forwardReplies(conn: Connection, chunk: Buffer | null): void {
    if (conn.closed) return;
    if (chunk === null) {
      conn.client.end();
      return;
    }
    let frames: Buffer[];
    try {
      frames = conn.replies.push(chunk);
    } catch {
      this.protocolError(conn);
      return;
    }
    const out: Buffer[] = [];
    for (const frame of frames) {
      // A reply with no request waiting (Redis's own error before it closes a connection) passes.
      const fate = conn.fatesHead < conn.fates.length ? (conn.fates[conn.fatesHead++] as Fate) : null;
      if (conn.fatesHead === conn.fates.length) {
        conn.fates.length = 0;
        conn.fatesHead = 0;
      }
      if (fate === null) {
        out.push(frame);
        this.counters.repliesDelivered++;
        continue;
      }
      this.counters.repliesDropped++;
      fate.dropped++;
      conn.lossy = true;
      if (fate.reset) {
        // The replies before it go out first; then the connection is reset, and the rest of
        // this chunk (replies to later requests) goes nowhere, as with a real reset.
        this.resetConnection(conn, out, () => {
          fate.taken--;
          this.settleFaults();
        });
        return;
      }
      fate.taken--;
      this.settleFaults();
    }
    if (out.length > 0) conn.client.write(out.length === 1 ? (out[0] as Buffer) : Buffer.concat(out));
    this.changed();
  }

  /** The fault (if any) that takes a request: the oldest one switched on that wants it. */
  private fateOf(request: ProxiedRequest): Fate {
    for (const fault of this.armed) {
      if (fault.budget === 0) continue;
      let wanted: boolean;
      try {
        wanted = fault.match === undefined || fault.match(request);
      } catch (error) {
        fault.fail(error);
        continue;
      }
      if (!wanted) continue;
      fault.budget--;
      fault.taken++;
      return fault;
    }
    return null;
  }

  private arm(fault: Armed): Fault {
    this.armed.push(fault);
    this.changed();
    return fault;
  }

  /** Faults that want no more requests stop waiting for any. */
  private withdraw(): void {
    for (const fault of this.armed) fault.budget = 0;
    this.settleFaults();
  }

  private settleFaults(): void {
    for (let i = this.armed.length - 1; i >= 0; i--) {
      if ((this.armed[i] as Armed).settle()) this.armed.splice(i, 1);
    }
  }

  /** Resets a connection both ways, after writing `before` to its client; `then` once it is gone. */
  private resetConnection(conn: Connection, before: Buffer[] = [], then?: () => void): void {
    if (conn.closed) return;
    this.counters.resets++;
    let done = false;
    const reset = (): void => {
      if (done) return;
      done = true;
      this.teardown(conn, true);
      then?.();
      this.changed();
    };
    // Stop reading now: nothing more of this connection goes anywhere.
    conn.closed = true;
    conn.client.pause();
    conn.upstream.pause();
    if (before.length === 0) reset();
    else {
      // Reset once those bytes are with the kernel (or the client went away first).
      conn.client.once('close', reset);
      conn.client.write(Buffer.concat(before), () => reset());
    }
  }

  private protocolError(conn: Connection): void {
    this.counters.protocolErrors++;
    this.resetConnection(conn);
  }

  /** Ends a connection: both sockets gone, its lanes cleared, its faults' requests let go. */
  private teardown(conn: Connection, abortive: boolean): void {
    conn.closed = true;
    if (!this.connections.delete(conn)) return;
    conn.up.clear();
    conn.down.clear();
    if (abortive) {
      resetSocket(conn.client);
      resetSocket(conn.upstream);
    } else {
      conn.client.destroy();
      conn.upstream.destroy();
    }
    // Requests taken by a fault whose reply will never come: acted on, nothing discarded.
    for (let i = conn.fatesHead; i < conn.fates.length; i++) {
      const fate = conn.fates[i] as Fate;
      if (fate !== null) fate.taken--;
    }
    conn.fates.length = 0;
    conn.fatesHead = 0;
    this.settleFaults();
    this.changed();
  }

  /** @internal Something changed: conditions waited for are checked again. */
  changed(): void {
    if (this.watchers.size === 0) return;
    const stats = this.stats();
    for (const w of this.watchers) {
      if (!w.condition(stats)) continue;
      clearTimeout(w.timer);
      this.watchers.delete(w);
      w.resolve(stats);
    }
  }
}

/** Starts a fault proxy on a free loopback port in front of the Redis at `target`. */
export function startFaultProxy(target: ProxyTarget): Promise<FaultProxy> {
  return FaultProxy.listen(target);
}
