/**
 * The throughput chart: decisions per second against calls in flight, one line per system, on
 * the standalone server. A vega-lite spec compiled to vega and rendered to SVG in Node (a
 * headless vega View, no browser, no canvas).
 */
import { writeFileSync } from 'node:fs';
import * as vega from 'vega';
import { compile, type TopLevelSpec } from 'vega-lite';
import type { ThroughputPoint } from './protocol.js';
import { system } from './systems/index.js';

export function chartSpec(points: readonly ThroughputPoint[], subtitle: string[]): TopLevelSpec {
  const values = points.filter((p) => p.error === undefined).map((p) => ({ system: system(p.system).label, inFlight: p.inFlight, perSec: Math.round(p.perSec) }));
  const levels = [...new Set(points.map((p) => p.inFlight))].sort((a, b) => a - b);
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: { text: 'Admission decisions per second against calls in flight', subtitle, anchor: 'start' },
    width: 560,
    height: 320,
    data: { values },
    mark: { type: 'line', point: true },
    encoding: {
      x: { field: 'inFlight', type: 'quantitative', title: 'calls in flight (one process)', scale: { type: 'log', base: 2 }, axis: { values: levels, format: 'd' } },
      // Logarithmic: the peers span three orders of magnitude.
      y: { field: 'perSec', type: 'quantitative', title: 'decisions per second (log scale)', scale: { type: 'log' }, axis: { format: '~s' } },
      color: { field: 'system', type: 'nominal', title: null, sort: null, legend: { orient: 'top' } },
    },
    config: { font: 'sans-serif' },
  };
}

/** Renders the chart and writes it to `path`. */
export async function writeChart(points: readonly ThroughputPoint[], subtitle: string[], path: string): Promise<void> {
  const view = new vega.View(vega.parse(compile(chartSpec(points, subtitle)).spec), { renderer: 'none' });
  try {
    writeFileSync(path, await view.toSVG());
  } finally {
    view.finalize();
  }
}
