// The demo as `npm start` runs it (default length): it ends by itself within 30 s, every line fits
// an 80-column terminal, it shows each tier's settings before it starts, and its closing line
// says in words what the close did.
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { expect, it } from 'vitest';

const ROOT = fileURLToPath(new URL('..', import.meta.url));

it('npm start: ends by itself within 30 s, 80 columns, tiers first, a closing line in words', async () => {
  const child = spawn(process.execPath, ['node_modules/tsx/dist/cli.mjs', 'examples/demo.ts'], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => (out += chunk));
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => (err += chunk));
  const killer = setTimeout(() => child.kill('SIGKILL'), 30_000);
  const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve) => child.on('exit', (c, s) => resolve([c, s])));
  clearTimeout(killer);
  expect({ code, signal, err }).toEqual({ code: 0, signal: null, err: '' });

  const lines = out.trimEnd().split('\n');
  expect(lines.filter((line) => line.length > 80)).toEqual([]);
  const firstProgress = lines.findIndex((line) => /^\s*\d+\.\ds done /.test(line));
  expect(firstProgress).toBeGreaterThan(0);
  for (const tier of ['free', 'pro', 'trial']) {
    const at = lines.findIndex((line) => new RegExp(`^  ${tier} +\\d+ users: \\d+/s, burst \\d+`).test(line));
    expect(at, tier).toBeGreaterThan(0);
    expect(at, tier).toBeLessThan(firstProgress);
  }
  const closing = lines.find((line) => line.startsWith('Closed: '));
  expect(closing).toMatch(/^Closed: (every task had settled before the close, so there was nothing to drain|\d+ task\(s\) finished while draining, \d+ rejected, \d+ abandoned)\.$/);
  expect(out).not.toMatch(/\{"completed"/);
}, 40_000);
