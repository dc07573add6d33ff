/**
 * `npm run soak`: runs bench/soak.ts as an application runs the package, as plain JavaScript.
 * The soak is bundled with esbuild next to itself (bench/soak.built.mjs, not committed; the
 * package stays external: it is the build in dist/) and run with plain `node --expose-gc`.
 * Run through a TypeScript loader instead, every worker thread the soak's pool starts (the soak
 * crashes and times out worker tasks, so it starts a few every second) would load that loader
 * too, which costs the machine more than the worker thread itself.
 */
import { spawn } from 'node:child_process';
import { build } from 'esbuild';

const here = new URL('.', import.meta.url);
const outfile = new URL('soak.built.mjs', here).pathname;
await build({
  entryPoints: [new URL('soak.ts', here).pathname],
  outfile,
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  // Third-party packages are imported as installed; the package itself is the build in dist/.
  packages: 'external',
  external: ['../dist/index.js'],
  logLevel: 'warning',
});
// On Redis, a young generation of up to 2 x 32 MB (Node's default here: 2 x 16 MB), as a process
// serving tens of thousands of decisions a second on Redis is given: what a decision allocates
// lives as long as its round trip, and with the default the scavenger ran about 12 times a second
// here, copying the calls in flight each time (docs/performance.md). --young-default runs with
// Node's default. (On the embedded store most decisions answer at once: Node's default serves.)
const args = process.argv.slice(2);
const young = args.includes('--redis') && !args.includes('--young-default') ? ['--max-semi-space-size=32'] : [];
const child = spawn(process.execPath, ['--expose-gc', ...young, outfile, ...args.filter((a) => a !== '--young-default')], { stdio: 'inherit' });
child.on('exit', (code, signal) => {
  process.exitCode = code ?? (signal === null ? 1 : 128);
});
