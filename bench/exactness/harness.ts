/**
 * The exactness bench as a function: starts what the run needs (the worker processes, an
 * append-only redis-server, a 3-master Redis Cluster, the fault proxy), plays every row's rounds,
 * measures the chart's throughput, and stops everything it started, by pid, whatever happens.
 * bench/exactness/main.ts is its command line; test/exactness-bench.test.ts runs its smallest form.
 */
import { Redis } from 'ioredis';
import { startFaultProxy, type FaultProxy } from '../../test/support/fault-proxy.js';
import { startCluster, startRedis, type RedisClusterHandle, type RedisServer } from '../../test/support/redis.js';
import { striker } from './faults.js';
import type { Deployment, Route, SystemId, Targets, ThroughputPoint } from './protocol.js';
import { judge, type Row } from './report.js';
import { init, play, throughput, Workers } from './runner.js';
import { SCENARIOS, type Plan, type Scenario, type ScenarioId } from './scenarios.js';
import { SYSTEMS } from './systems/index.js';

/** The chart's measure: levels of calls in flight, and how long each is timed. */
export interface ChartPlan {
  inFlight: readonly number[];
  runMs: number;
  repeats: number;
  keys: number;
}

export interface Options {
  plan: Plan;
  /** Default: every scenario, system and deployment. */
  scenarios?: readonly ScenarioId[];
  systems?: readonly SystemId[];
  deployments?: readonly Deployment[];
  /** false: no throughput measure. */
  chart: ChartPlan | false;
  /** Called as the run goes: what it is doing now. */
  onProgress?(what: Progress): void;
}

export interface Progress {
  /** Rows done and in all. */
  row: number;
  rows: number;
  scenario: ScenarioId | 'chart';
  label: string;
  round: number;
  rounds: number;
}

export interface Results {
  rows: Row[];
  throughput: ThroughputPoint[];
  redisVersion: string;
}

/** One row to play: a scenario, a system, where, how many processes, how many rounds. */
interface Job {
  scenario: Scenario;
  system: (typeof SYSTEMS)[number];
  deployment: Deployment;
  processes: number;
  rounds: number;
}

function jobsOf(options: Options): Job[] {
  const { plan } = options;
  const most = Math.max(...plan.processes);
  const jobs: Job[] = [];
  for (const scenario of SCENARIOS.filter((s) => options.scenarios?.includes(s.id) ?? true)) {
    for (const sys of SYSTEMS.filter((s) => options.systems?.includes(s.id) ?? true)) {
      for (const deployment of sys.deployments.filter((d) => scenario.deployments.includes(d) && (options.deployments?.includes(d) ?? true))) {
        // The MemoryStore lives in one process.
        const counts = deployment === 'memory' ? [1] : scenario.sweep ? plan.processes : [most];
        for (const processes of counts) jobs.push({ scenario, system: sys, deployment, processes, rounds: scenario.fault === undefined ? plan.rounds : plan.faultRounds });
      }
    }
  }
  return jobs;
}

async function redisVersion(server: RedisServer): Promise<string> {
  const client = new Redis({ host: server.host, port: server.port });
  try {
    return /redis_version:(\S+)/.exec(await client.info('server'))?.[1] ?? '?';
  } finally {
    client.disconnect();
  }
}

export async function runExactness(options: Options): Promise<Results> {
  const jobs = jobsOf(options);
  const needs = (d: Deployment): boolean => jobs.some((j) => j.deployment === d) || (d === 'standalone' && options.chart !== false);
  const runId = Date.now().toString(36);
  // Fork first: the workers' start-up (tsx, imports) overlaps the servers'.
  const workers = new Workers(Math.max(1, ...jobs.map((j) => j.processes)));
  let server: RedisServer | undefined;
  let cluster: RedisClusterHandle | undefined;
  let proxy: FaultProxy | undefined;
  try {
    [server, cluster] = await Promise.all([needs('standalone') ? startRedis({ appendonly: true }) : undefined, needs('cluster') ? startCluster(3) : undefined]);
    if (server !== undefined && jobs.some((j) => j.scenario.fault === 'proxy')) proxy = await startFaultProxy({ port: server.port });
    const targets: Targets = {
      ...(server === undefined ? {} : { standalone: { host: server.host, port: server.port } }),
      ...(cluster === undefined ? {} : { cluster: cluster.nodes }),
      ...(proxy === undefined ? {} : { proxied: { host: proxy.host, port: proxy.port } }),
    };
    await init(workers, targets);

    const rows: Row[] = [];
    let roundNo = 0;
    for (const [index, job] of jobs.entries()) {
      const { scenario, system, deployment, processes } = job;
      const row: Row = { scenario: scenario.id, system: system.id, label: system.label, deployment, processes, rounds: [] };
      rows.push(row);
      const label = `${system.label} on ${deployment}, N=${processes}`;
      const route: Route = scenario.fault === 'proxy' ? 'proxied' : deployment;
      const strike = scenario.fault === undefined || server === undefined ? undefined : striker(scenario.fault, { server, ...(proxy === undefined ? {} : { proxy }) });
      for (let r = 1; r <= job.rounds; r++) {
        options.onProgress?.({ row: index, rows: jobs.length, scenario: scenario.id, label, round: r, rounds: job.rounds });
        const spec = { round: ++roundNo, system: system.id, deployment, route, prefix: `x${runId}-${roundNo}`, limits: scenario.limits, load: scenario.load(processes), processes };
        const played = await play(workers, spec, strike);
        if (!played.ok) {
          row.error = played.error;
          break;
        }
        row.rounds.push(judge(scenario.limits, played));
      }
    }

    let points: ThroughputPoint[] = [];
    if (options.chart !== false) {
      const chart = options.chart;
      options.onProgress?.({ row: jobs.length, rows: jobs.length, scenario: 'chart', label: `throughput at ${chart.inFlight.join(', ')} in flight`, round: 1, rounds: 1 });
      const systems = SYSTEMS.filter((s) => s.deployments.includes('standalone') && (options.systems?.includes(s.id) ?? true)).map((s) => s.id);
      points = await throughput(workers, { systems, inFlight: [...chart.inFlight], runMs: chart.runMs, repeats: chart.repeats, keys: chart.keys, prefix: `x${runId}-wide` });
    }
    return { rows, throughput: points, redisVersion: server === undefined ? '?' : await redisVersion(server) };
  } finally {
    await workers.stop();
    await proxy?.close();
    await Promise.all([server?.stop(), cluster?.stop()]);
  }
}
