/**
 * From what the workers told and what the ledgers hold to the figures of the table: each round
 * judged (admitted against expected, over- and under-admissions, phantom charges, decisions per
 * second, p99), each row the rounds of one scenario, system, deployment and process count,
 * every figure the median over its rounds with its spread (min–max), rendered as markdown.
 */
import { median } from '../lib/harness.js';
import type { Deployment, Limits, SystemId } from './protocol.js';
import { CUT_AT, type End, type Played } from './runner.js';
import { capacities, expectedAdmitted, type Scenario, type ScenarioId } from './scenarios.js';

/** One round, judged. */
export interface RoundResult {
  /** Calls callers were told were admitted, over every process. */
  admitted: number;
  /** What an exact limiter admits here. */
  expected: number;
  /** Calls admitted past a limit: beyond the expected count, or beyond each user's quota, whichever is more. */
  over: number;
  /** Calls short of the expected count. */
  under: number;
  /** Units the ledgers hold as taken (up to their capacity) beyond what callers were told was admitted. */
  phantom: number;
  /** Attempts whose callers were told they failed. */
  failed: number;
  /** Attempts still waiting when the round ended. */
  unanswered: number;
  /** Answered attempts per second, from the first call to the last answer. */
  perSec: number;
  /** 99th percentile of the answered attempts' latencies, ms. */
  p99Ms: number;
  /** How the round ended. */
  end: End;
  /** Distinct Cluster slots of the round's keys (0 off a Cluster). */
  slots: number;
  fault?: string;
  errors: string[];
}

function p99(values: number[]): number {
  if (values.length === 0) return 0;
  const sorted = Float64Array.from(values).sort();
  return sorted[Math.min(sorted.length - 1, Math.floor(0.99 * sorted.length))] as number;
}

export function judge(limits: Limits, played: Extract<Played, { ok: true }>): RoundResult {
  const { reports, taken } = played;
  const sum = (pick: (r: (typeof reports)[number]) => number): number => reports.reduce((s, r) => s + pick(r), 0);
  const admitted = sum((r) => r.admitted);
  const expected = expectedAdmitted(limits);
  let overQuota = 0;
  if (limits.quota !== undefined) {
    const perUser = Math.floor(limits.quota / limits.cost);
    const byUser = new Map<string, number>();
    for (const r of reports) for (const [user, n] of Object.entries(r.admittedBy)) byUser.set(user, (byUser.get(user) ?? 0) + n);
    for (const n of byUser.values()) overQuota += Math.max(0, n - perUser);
  }
  let phantom = 0;
  for (const [ledger, capacity] of capacities(limits)) {
    const told = sum((r) => r.told[ledger] ?? 0);
    phantom += Math.max(0, Math.min(taken[ledger] ?? 0, capacity) - told);
  }
  const answered = sum((r) => r.admitted + r.denied + r.failed);
  const spanMs = Math.max(...reports.map((r) => r.lastAnswer)) - Math.min(...reports.map((r) => r.firstCall));
  const errors = [...new Set(reports.flatMap((r) => r.errors))];
  return {
    admitted,
    expected,
    over: Math.max(0, admitted - expected, overQuota),
    under: Math.max(0, expected - admitted),
    phantom,
    failed: sum((r) => r.failed),
    unanswered: sum((r) => r.unanswered),
    perSec: spanMs > 0 ? (answered * 1000) / spanMs : 0,
    p99Ms: p99(reports.flatMap((r) => r.latencies)),
    end: played.end,
    slots: played.slots,
    ...(played.fault === undefined ? {} : { fault: played.fault }),
    errors,
  };
}

/** The rounds of one scenario, system, deployment and process count; or why they could not run. */
export interface Row {
  scenario: ScenarioId;
  system: SystemId;
  label: string;
  deployment: Deployment;
  processes: number;
  rounds: RoundResult[];
  /** Set when a round could not be played: the row stops there. */
  error?: string;
}

export interface Spread {
  median: number;
  min: number;
  max: number;
  /** Rounds where the value is above 0. */
  nonZero: number;
}

export function spread(values: readonly number[]): Spread {
  return { median: values.length === 0 ? 0 : median(values), min: Math.min(...values), max: Math.max(...values), nonZero: values.filter((v) => v > 0).length };
}

/** A row's figures: each a spread over its rounds. */
export function summary(row: Row): Record<'admitted' | 'over' | 'under' | 'phantom' | 'failed' | 'unanswered' | 'perSec' | 'p99Ms', Spread> {
  const of = (pick: (r: RoundResult) => number): Spread => spread(row.rounds.map(pick));
  return {
    admitted: of((r) => r.admitted),
    over: of((r) => r.over),
    under: of((r) => r.under),
    phantom: of((r) => r.phantom),
    failed: of((r) => r.failed),
    unanswered: of((r) => r.unanswered),
    perSec: of((r) => r.perSec),
    p99Ms: of((r) => r.p99Ms),
  };
}

const int = (n: number): string => Math.round(n).toLocaleString('en-US');
const rate = (n: number): string => (n >= 1e6 ? `${(n / 1e6).toFixed(2)} M` : n >= 1e3 ? `${(n / 1e3).toFixed(1)} k` : n.toFixed(0));
const ms = (n: number): string => (n >= 100 ? n.toFixed(0) : n.toFixed(1));

/** "median (min–max)", or the value alone when every round agrees. */
function cell(s: Spread, fmt: (n: number) => string): string {
  return s.min === s.max ? fmt(s.median) : `${fmt(s.median)} (${fmt(s.min)}–${fmt(s.max)})`;
}

/** A count that should be 0: bold, with the rounds it appeared in, when it is not. */
function alarm(s: Spread, rounds: number): string {
  return s.nonZero === 0 ? '0' : `**${cell(s, int)}** in ${s.nonZero}/${rounds}`;
}

const STORE: Record<Deployment, string> = { memory: 'memory, 1 process', standalone: 'standalone', cluster: 'Cluster' };

function notes(row: Row): string {
  const s = summary(row);
  const out: string[] = [];
  if (s.failed.max > 0) out.push(`failed ${cell(s.failed, int)}`);
  if (s.unanswered.max > 0) out.push(`left waiting ${cell(s.unanswered, int)}`);
  const cut = row.rounds.filter((r) => r.end === 'cut').length;
  if (cut > 0) out.push(`cut short at ${CUT_AT}x the expected count in ${cut}/${row.rounds.length} rounds (over is a lower bound)`);
  const first = row.rounds[0];
  if (first?.fault !== undefined) out.push(first.fault);
  if (row.deployment === 'cluster' && row.scenario === 'composite' && first !== undefined) out.push(`keys in ${first.slots} slots`);
  // Unhandled rejections first: they matter most.
  const errors = [...new Set(row.rounds.flatMap((r) => r.errors))].sort((a, b) => Number(b.startsWith('unhandled')) - Number(a.startsWith('unhandled')));
  if (errors.length > 0) out.push(`errors: ${errors.slice(0, 2).map((e) => `"${e.slice(0, 120)}"`).join(', ')}`);
  if (row.error !== undefined) out.push(`**failed after ${row.rounds.length} rounds: "${row.error.split('\n')[0]?.slice(0, 200)}"**`);
  return out.join('; ').replaceAll('|', '\\|');
}

export function renderTable(rows: readonly Row[], scenarios: readonly Scenario[]): string {
  const head = ['system', 'store', 'N', 'admitted / expected', 'over', 'under', 'phantom', 'decisions/s', 'p99 ms', 'notes'];
  const line = (cells: readonly string[]): string => `| ${cells.join(' | ')} |`;
  const out = [line(head), line(head.map((_, i) => (i < 2 || i === head.length - 1 ? ':---' : '---:')))];
  for (const sc of scenarios) {
    const mine = rows.filter((r) => r.scenario === sc.id);
    if (mine.length === 0) continue;
    out.push(line([`**${sc.title}**`, ...head.slice(1).map(() => '')]));
    for (const row of mine) {
      const base = [row.label, STORE[row.deployment], String(row.processes)];
      if (row.rounds.length === 0) {
        out.push(line([...base, '—', '—', '—', '—', '—', '—', notes(row)]));
        continue;
      }
      const s = summary(row);
      const n = row.rounds.length;
      out.push(
        line([
          ...base,
          `${cell(s.admitted, int)} / ${int(row.rounds[0]?.expected ?? 0)}`,
          alarm(s.over, n),
          s.under.nonZero === 0 ? '0' : `${cell(s.under, int)} in ${s.under.nonZero}/${n}`,
          alarm(s.phantom, n),
          cell(s.perSec, rate),
          cell(s.p99Ms, ms),
          notes(row),
        ]),
      );
    }
  }
  return out.join('\n');
}
