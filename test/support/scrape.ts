/**
 * Reads one series out of a manager's scrape body (`await manager.registry.metrics()`), the
 * text a Prometheus server would read.
 */
import type { Manager } from '../../src/index.js';

/** The value of `name` (prefix included) with exactly these labels; 0 when the series is absent. */
export async function scrape(manager: Manager, name: string, labels: Record<string, string> = {}): Promise<number> {
  const body = await manager.registry.metrics();
  const want = Object.entries(labels)
    .map(([k, v]) => `${k}="${v}"`)
    .sort()
    .join(',');
  for (const line of body.split('\n')) {
    if (line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (m === null || m[1] !== name) continue;
    const got = (m[2] ?? '')
      .split(/,(?=[a-zA-Z_]+=")/)
      .filter((s) => s.length > 0)
      .sort()
      .join(',');
    if (got === want) return Number(m[3]);
  }
  return 0;
}

/** The sum of every series of `name` whose labels include these. */
export async function scrapeSum(manager: Manager, name: string, labels: Record<string, string> = {}): Promise<number> {
  const body = await manager.registry.metrics();
  let sum = 0;
  for (const line of body.split('\n')) {
    if (line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (m === null || m[1] !== name) continue;
    const labelText = m[2] ?? '';
    const pairs = labelText.split(/,(?=[a-zA-Z_]+=")/);
    if (Object.entries(labels).every(([k, v]) => pairs.includes(`${k}="${v}"`))) sum += Number(m[3]);
  }
  return sum;
}
