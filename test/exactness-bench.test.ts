// The exactness bench's harness (bench/exactness/) in its smallest form: 2 real worker processes
// started at one instant, 2 rounds, on an append-only redis-server of its own, for the one-key
// and the composite scenarios. What is tested is the harness, not speed: it must catch the naive
// GET-then-SET limiter over-admitting in every round (a bench that cannot catch an over-admission
// proves nothing), and find taskvalve's rows exact: every round admits what an exact limiter
// admits, with no over-admission and no phantom charge.
import { describe, expect, it } from 'vitest';
import { runExactness } from '../bench/exactness/harness.js';
import type { Row } from '../bench/exactness/report.js';

describe('the exactness bench harness: N = 2, 2 rounds, standalone', () => {
  it('detects the negative control over-admitting in every round, and finds taskvalve exact', async () => {
    const { rows } = await runExactness({
      plan: { processes: [2], rounds: 2, faultRounds: 1 },
      scenarios: ['one-key', 'composite'],
      systems: ['taskvalve', 'naive'],
      deployments: ['standalone'],
      chart: false,
    });
    const rowsOf = (system: Row['system']): Row[] => rows.filter((r) => r.system === system);
    const figures = JSON.stringify(rows.map((r) => ({ scenario: r.scenario, system: r.system, error: r.error, rounds: r.rounds.map(({ admitted, expected, over, phantom, failed }) => ({ admitted, expected, over, phantom, failed })) })));

    expect(rowsOf('naive').map((r) => r.scenario), figures).toEqual(['one-key', 'composite']);
    for (const row of rowsOf('naive')) {
      expect(row.error, figures).toBeUndefined();
      expect(row.rounds, figures).toHaveLength(2);
      for (const round of row.rounds) {
        expect(round.over, figures).toBeGreaterThan(0);
        expect(round.admitted, figures).toBeGreaterThan(round.expected);
      }
    }

    expect(rowsOf('taskvalve').map((r) => r.scenario), figures).toEqual(['one-key', 'composite']);
    for (const row of rowsOf('taskvalve')) {
      expect(row.error, figures).toBeUndefined();
      expect(row.processes).toBe(2);
      expect(
        row.rounds.map(({ admitted, expected, over, under, phantom, failed }) => ({ admitted, expected, over, under, phantom, failed })),
        figures,
      ).toEqual([
        { admitted: 10, expected: 10, over: 0, under: 0, phantom: 0, failed: 0 },
        { admitted: 10, expected: 10, over: 0, under: 0, phantom: 0, failed: 0 },
      ]);
    }
  }, 120_000);
});
