/**
 * A worker process of the exactness bench, forked by runner.ts (with `--import tsx`). It keeps
 * one connection per system and route across rounds, and plays each round it is given: it opens
 * the system's contender, waits for the common start time, fires its attempts, reports its
 * progress, and once told to stop, closes the contender and reports what its callers were told.
 * The messages are in protocol.ts.
 */
import { Cluster } from 'ioredis';
import type { FromWorker, Route, RoundSpec, SystemId, Targets, ToWorker, WorkerReport } from './protocol.js';
import { ledgersOf, userOf } from './scenarios.js';
import { system } from './systems/index.js';
import type { Contender } from './systems/system.js';
import { measure } from './throughput.js';

const PROGRESS_MS = 100;
/** How long a stopping round waits for its contender to close (bottleneck's stop can hang after a fault). */
const CLOSE_MS = 20_000;
/** How long a stopped round waits for attempts a closed contender has not answered. */
const DRAIN_MS = 10_000;
const MAX_ERRORS = 5;

let targets: Targets = {};
const connections = new Map<string, Promise<unknown>>();

function send(message: FromWorker): void {
  process.send?.(message);
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

const now = (): number => performance.timeOrigin + performance.now();
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** The connection of a system on a route, made once. */
function connection(id: SystemId, route: Route): Promise<unknown> {
  const key = `${id}/${route}`;
  let found = connections.get(key);
  if (found === undefined) {
    found = system(id).connect(route, targets);
    // A failed connection is not kept: the next round tries again.
    found.catch(() => connections.delete(key));
    connections.set(key, found);
  }
  return found;
}

/** Closes every connection made (those that failed to open are skipped). */
async function disconnectAll(): Promise<void> {
  const made = [...connections];
  connections.clear();
  await Promise.all(
    made.map(async ([key, opening]) => {
      const opened = await opening.catch(() => undefined);
      if (opened !== undefined) await system(key.split('/')[0] as SystemId).disconnect(opened);
    }),
  );
}

/** One round as this worker plays it. */
class Round {
  readonly report: WorkerReport = { admitted: 0, denied: 0, failed: 0, unanswered: 0, admittedBy: {}, told: {}, latencies: [], firstCall: 0, lastAnswer: 0, errors: [] };
  private readonly pending = new Set<Promise<void>>();
  private answered = 0;
  private planned: number;
  private lanesLeft = 0;
  private stopping = false;
  private closing = false;
  private progress: NodeJS.Timeout | undefined;
  private stopped: Promise<WorkerReport> | undefined;

  constructor(
    readonly spec: RoundSpec,
    private readonly contender: Contender,
  ) {
    this.planned = spec.load.kind === 'burst' ? spec.load.attempts : Infinity;
  }

  go(at: number): void {
    setTimeout(() => this.fire(), Math.max(0, at - Date.now()));
    this.progress = setInterval(() => send({ type: 'progress', round: this.spec.round, answered: this.answered, admitted: this.report.admitted }), PROGRESS_MS);
  }

  private fire(): void {
    const { load, limits, index } = this.spec;
    this.report.firstCall = now();
    if (load.kind === 'burst') {
      for (let i = 0; i < load.attempts; i++) void this.attempt(userOf(limits, index, i));
      return;
    }
    this.lanesLeft = load.lanes;
    for (let lane = 0; lane < load.lanes; lane++) void this.lane(userOf(limits, index, lane), load.paceMs);
  }

  /** Attempts every `paceMs` (from a random offset) until its first denial, or the round stops. */
  private async lane(user: string, paceMs: number): Promise<void> {
    await sleep(Math.random() * paceMs);
    while (!this.stopping && (await this.attempt(user)) !== 'denied') await sleep(paceMs);
    if (--this.lanesLeft === 0 && !this.stopping) send({ type: 'settled', round: this.spec.round });
  }

  private attempt(user: string): Promise<'admitted' | 'denied' | 'failed' | 'unanswered'> {
    const started = performance.now();
    const call = this.contender.attempt(user).then(
      (admitted) => {
        this.answer(started);
        if (admitted) this.admit(user);
        else this.report.denied++;
        return admitted ? 'admitted' : 'denied';
      },
      (error: unknown) => {
        // Rejected because the round's contender was closed: no answer was given.
        if (this.closing) {
          this.report.unanswered++;
          return 'unanswered';
        }
        this.answer(started);
        this.report.failed++;
        this.keep(describe(error));
        return 'failed';
      },
    );
    const tracked = call.then(() => undefined);
    this.pending.add(tracked);
    void tracked.then(() => this.pending.delete(tracked));
    return call;
  }

  private answer(started: number): void {
    this.answered++;
    this.report.latencies.push(performance.now() - started);
    this.report.lastAnswer = now();
    if (this.answered === this.planned) send({ type: 'settled', round: this.spec.round });
  }

  private admit(user: string): void {
    const { limits } = this.spec;
    this.report.admitted++;
    this.report.admittedBy[user] = (this.report.admittedBy[user] ?? 0) + 1;
    for (const ledger of ledgersOf(limits, user)) this.report.told[ledger.name] = (this.report.told[ledger.name] ?? 0) + limits.cost;
  }

  /** An error no caller was given (e.g. an unhandled rejection in this process). */
  incident(message: string): void {
    this.keep(message);
  }

  private keep(message: string): void {
    if (this.report.errors.length < MAX_ERRORS && !this.report.errors.includes(message)) this.report.errors.push(message);
  }

  /** Stops the lanes, closes the contender, and answers the report once every attempt is accounted for (once, however often asked). */
  stop(): Promise<WorkerReport> {
    this.stopped ??= this.finish();
    return this.stopped;
  }

  private async finish(): Promise<WorkerReport> {
    this.stopping = true;
    clearInterval(this.progress);
    this.closing = true;
    const closed = this.contender.close().then(
      () => true,
      (error: unknown) => (this.keep(`close failed: ${describe(error)}`), true),
    );
    if (!(await Promise.race([closed, sleep(CLOSE_MS).then(() => false)]))) this.keep(`close did not finish within ${CLOSE_MS / 1000} s`);
    const drained = Promise.all(this.pending).then(() => true);
    if (!(await Promise.race([drained, sleep(DRAIN_MS).then(() => false)]))) this.report.unanswered += this.pending.size;
    for (const incident of this.contender.incidents) this.keep(incident);
    return this.report;
  }
}

let current: Round | undefined;

function roundOf(round: number): Round {
  if (current === undefined || current.spec.round !== round) throw new Error(`round ${round} asked, but round ${current?.spec.round} is set up`);
  return current;
}

/** Distinct Cluster slots of the keys whose names contain the round's prefix. */
async function slotsOf(prefix: string): Promise<number> {
  if (targets.cluster === undefined) return 0;
  const cluster = new Cluster(targets.cluster);
  cluster.on('error', () => {});
  try {
    await new Promise<void>((resolve, reject) => {
      cluster.once('ready', () => resolve());
      cluster.once('end', () => reject(new Error('the cluster connection ended before it was ready')));
    });
    const keys: string[] = [];
    for (const node of cluster.nodes('master')) {
      let cursor = '0';
      do {
        const [next, found] = await node.scan(cursor, 'MATCH', `*${prefix}*`, 'COUNT', 1000);
        keys.push(...found);
        cursor = next;
      } while (cursor !== '0');
    }
    const slots = await Promise.all(keys.map((key) => cluster.cluster('KEYSLOT', key) as Promise<number>));
    return new Set(slots).size;
  } finally {
    cluster.disconnect();
  }
}

async function handle(message: ToWorker): Promise<void> {
  switch (message.type) {
    case 'init':
      targets = message.targets;
      return send({ type: 'inited' });
    case 'prepare': {
      const { spec } = message;
      await system(spec.system).prepare?.(await connection(spec.system, spec.deployment), spec);
      return send({ type: 'prepared', round: spec.round });
    }
    case 'setup': {
      const { spec } = message;
      // A round the parent gave up on (a step timed out) is abandoned, still closing in the background.
      if (current !== undefined) void current.stop().catch(() => undefined);
      current = undefined;
      const contender = await system(spec.system).open(await connection(spec.system, spec.route), spec);
      await contender.warm?.();
      current = new Round(spec, contender);
      return send({ type: 'ready', round: spec.round });
    }
    case 'go':
      return roundOf(message.round).go(message.at);
    case 'stop': {
      const round = roundOf(message.round);
      const report = await round.stop();
      if (current === round) current = undefined;
      return send({ type: 'done', round: message.round, report });
    }
    case 'readback': {
      const { spec } = message;
      const taken = await system(spec.system).readBack(await connection(spec.system, spec.deployment), spec);
      const slots = spec.deployment === 'cluster' ? await slotsOf(spec.prefix) : 0;
      return send({ type: 'ledgers', round: spec.round, taken, slots });
    }
    case 'throughput':
      return send({ type: 'measured', points: await measure(message.request, connection) });
    case 'exit':
      await disconnectAll();
      if (process.connected) process.disconnect();
      return;
  }
}

process.on('message', (message: ToWorker) => {
  const round = 'round' in message ? message.round : 'spec' in message ? message.spec.round : -1;
  handle(message).catch((error: unknown) => {
    // A round whose setup failed is not kept: the next round starts afresh.
    if (message.type === 'setup' || message.type === 'stop') current = undefined;
    send({ type: 'failed', round, message: describe(error) });
  });
});

// The parent went away: leave without lingering.
process.on('disconnect', () => {
  void disconnectAll();
  setTimeout(() => process.exit(0), 2_000).unref();
});
// A system's unhandled rejection would end a process run with Node's defaults: here it is
// written into the round's errors, and the round goes on (its callers may never be answered).
process.on('unhandledRejection', (error) => {
  const message = `unhandled rejection: ${error instanceof Error ? `${error.name}: ${error.message}` : String(error)}`;
  if (current !== undefined) current.incident(message);
  else send({ type: 'failed', round: -1, message });
});
