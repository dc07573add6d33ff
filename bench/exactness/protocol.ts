/**
 * What the bench's parent (runner.ts) and its worker processes (worker.ts) say to each other over
 * IPC, and the few shapes both sides share. Every message about a round carries the round's
 * number, so that a late message is never taken for the current round's.
 *
 *   parent -> { init, targets }                 worker -> { inited }
 *   parent -> { prepare, round } (worker 0)     worker -> { prepared, round }
 *   parent -> { setup, round }                  worker -> { ready, round }
 *   parent -> { go, round, at }                 worker -> { progress, round, ... } every 100 ms,
 *                                                          { settled, round } once every attempt is answered
 *   parent -> { stop, round }                   worker -> { done, round, report }
 *   parent -> { readback, round } (worker 0)    worker -> { ledgers, round, taken, slots }
 *   parent -> { throughput, ... }               worker -> { measured, points }
 *   parent -> { exit }                          worker closes its connections and leaves
 *   worker -> { failed, round, message }        whenever a step fails
 */

/** Where a system keeps its state: this process's memory, one redis-server, or a Redis Cluster. */
export type Deployment = 'memory' | 'standalone' | 'cluster';

/** The peers and taskvalve, by id. */
export type SystemId = 'taskvalve' | 'rlf' | 'bottleneck' | 'naive';

/** How a worker reaches the state: the deployment itself, or the standalone server through the fault proxy. */
export type Route = Deployment | 'proxied';

/** The addresses a worker connects to. */
export interface Targets {
  standalone?: { host: string; port: number };
  cluster?: { host: string; port: number }[];
  /** The fault proxy in front of the standalone server. */
  proxied?: { host: string; port: number };
}

/** The limits a round runs against (every count in units). */
export interface Limits {
  /** One bucket (no refill during the round) of this many units; shared by every user when `users` > 1. */
  bucket?: number;
  /** A quota of this many units per user. */
  quota?: number;
  /** Users the attempts are spread over (round-robin), `u0` to `u<users - 1>`. */
  users: number;
  /** Units per attempt. */
  cost: number;
}

/** How a worker fires its attempts. */
export type Load =
  /** `attempts` at once, each answered once: the round is one burst. */
  | { kind: 'burst'; attempts: number }
  /** `lanes` loops, each attempting every `paceMs` (first one at a random offset), until its first denial. */
  | { kind: 'stream'; lanes: number; paceMs: number };

/** What a worker needs to play one round of one system. */
export interface RoundSpec {
  round: number;
  system: SystemId;
  deployment: Deployment;
  /** How this worker's attempts reach the state (`proxied` under the proxy's faults). */
  route: Route;
  /** Every key of the round starts with it, or contains it. */
  prefix: string;
  limits: Limits;
  load: Load;
  /** This worker's index among the round's processes. */
  index: number;
  processes: number;
}

/** A worker's account of one round. */
export interface WorkerReport {
  admitted: number;
  denied: number;
  /** Attempts whose caller was told they failed (an error). */
  failed: number;
  /** Attempts still waiting for an answer when the round stopped (bottleneck's queue). */
  unanswered: number;
  /** Calls admitted, per user. */
  admittedBy: Record<string, number>;
  /** Units callers were told were admitted, per ledger (see scenarios.ts, ledgersOf). */
  told: Record<string, number>;
  /** Milliseconds from each answered attempt's call to its answer. */
  latencies: number[];
  /** Epoch ms (fractional) of the first call and of the last answer. */
  firstCall: number;
  lastAnswer: number;
  /** Distinct error messages callers saw (at most a few). */
  errors: string[];
}

/** One point of the throughput chart. */
export interface ThroughputPoint {
  system: SystemId;
  inFlight: number;
  /** Decisions per second, median of the repeats. */
  perSec: number;
  samples: number[];
  /** Attempts that failed during the measure (they are not counted as decisions). */
  failed: number;
  error?: string;
}

/** What the chart's measure asks of a worker. */
export interface ThroughputRequest {
  systems: SystemId[];
  inFlight: number[];
  /** Length of one timed run, ms. */
  runMs: number;
  repeats: number;
  /** Keys the attempts spread over. */
  keys: number;
  prefix: string;
}

export type ToWorker =
  | { type: 'init'; targets: Targets }
  | { type: 'prepare'; spec: RoundSpec }
  | { type: 'setup'; spec: RoundSpec }
  | { type: 'go'; round: number; at: number }
  | { type: 'stop'; round: number }
  | { type: 'readback'; spec: RoundSpec }
  | { type: 'throughput'; request: ThroughputRequest }
  | { type: 'exit' };

export type FromWorker =
  | { type: 'inited' }
  | { type: 'prepared'; round: number }
  | { type: 'ready'; round: number }
  | { type: 'progress'; round: number; answered: number; admitted: number }
  | { type: 'settled'; round: number }
  | { type: 'done'; round: number; report: WorkerReport }
  | { type: 'ledgers'; round: number; taken: Record<string, number>; slots: number }
  | { type: 'measured'; points: ThroughputPoint[] }
  | { type: 'failed'; round: number; message: string };
