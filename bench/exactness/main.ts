/**
 * `npm run bench:exactness [-- --quick] [-- --json results.json] [-- --chart path.svg]`
 *
 * Contention exactness of taskvalve and its peers (rate-limiter-flexible's RateLimiterRedis,
 * bottleneck's Redis datastore, and a naive GET-then-SET limiter as the negative control), in
 * steady state and under faults, on Redis servers this run starts and stops itself. A live
 * progress line goes to stderr; stdout gets the table, the machine and the run time. The chart
 * (throughput against calls in flight) is written as SVG, docs/exactness.svg by default.
 * docs/exactness.md says what each scenario does and how to read the table.
 */
import { writeFileSync } from 'node:fs';
import { availableParallelism, cpus, loadavg } from 'node:os';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { writeChart } from './chart.js';
import { runExactness, type ChartPlan, type Progress } from './harness.js';
import { renderTable, summary } from './report.js';
import { FULL, QUICK, SCENARIOS } from './scenarios.js';

const FULL_CHART: ChartPlan = { inFlight: [1, 16, 64, 256, 1024], runMs: 600, repeats: 3, keys: 10_000 };
const QUICK_CHART: ChartPlan = { inFlight: [1, 16, 64, 256, 1024], runMs: 200, repeats: 1, keys: 2_000 };

const { values: flags } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    json: { type: 'string' },
    chart: { type: 'string', default: fileURLToPath(new URL('../../docs/exactness.svg', import.meta.url)) },
  },
});
const quick = flags.quick === true;
const plan = quick ? QUICK : FULL;
const chartPlan = quick ? QUICK_CHART : FULL_CHART;

const tty = process.stderr.isTTY === true;
const t0 = performance.now();
const elapsed = (): string => `${((performance.now() - t0) / 1000).toFixed(0)} s`;
let lastRow = -1;
function progress(p: Progress): void {
  const line = `[${p.row + 1}/${p.rows}] ${p.scenario}: ${p.label}, round ${p.round}/${p.rounds} (${elapsed()})`;
  if (tty) process.stderr.write(`\r\x1b[K${line}`);
  else if (p.row !== lastRow) process.stderr.write(`${line}\n`);
  lastRow = p.row;
}

const load = (): string => loadavg().map((l) => l.toFixed(2)).join(' ');
const loadBefore = load();
const startedAt = new Date().toISOString();
const results = await runExactness({ plan, chart: chartPlan, onProgress: progress });
if (tty) process.stderr.write('\r\x1b[K');
const seconds = (performance.now() - t0) / 1000;
const loadAfter = load();

const cpu = cpus()[0]?.model.trim() ?? 'unknown CPU';
const machine = `Node ${process.version}, ${cpu}, ${availableParallelism()} cores, redis-server ${results.redisVersion}`;
const command = `npm run bench:exactness${quick ? ' -- --quick' : ''}`;
await writeChart(results.throughput, [machine, 'one append-only redis-server on loopback; client and server share the cores'], flags.chart);

process.stdout.write(
  [
    renderTable(results.rows, SCENARIOS),
    '',
    `${machine}; load average ${loadBefore} before, ${loadAfter} after.`,
    `\`${command}\`: ${plan.rounds} rounds per steady-state row, ${plan.faultRounds} per fault row, N = ${plan.processes.join(', ')} processes; figures are medians (min–max) over the rounds.`,
    `Chart: ${flags.chart}.`,
    '',
    `Run time: ${seconds.toFixed(1)} s.`,
    '',
  ].join('\n'),
);

if (flags.json !== undefined) {
  const rows = results.rows.map((row) => ({ ...row, summary: summary(row) }));
  writeFileSync(flags.json, JSON.stringify({ command, startedAt, seconds, machine: { node: process.version, cpu, cores: availableParallelism(), redis: results.redisVersion, loadBefore, loadAfter }, plan, rows, throughput: results.throughput }, null, 2));
}

// A taskvalve row that over-admits or charges a phantom unit, or a negative control that never over-admits, fails the run.
const broken = results.rows.filter((row) => {
  const s = summary(row);
  if (row.system === 'taskvalve') return row.error !== undefined || s.over.max > 0 || s.phantom.max > 0;
  return row.system === 'naive' && row.error === undefined && s.over.nonZero < row.rounds.length;
});
if (broken.length > 0) {
  process.stderr.write(`exactness targets missed: ${broken.map((r) => `${r.scenario} ${r.label} ${r.deployment} N=${r.processes}`).join('; ')}\n`);
  process.exitCode = 1;
}
