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
const child = spawn(process.execPath, ['--expose-gc', outfile, ...process.argv.slice(2)], { stdio: 'inherit' });
child.on('exit', (code, signal) => {
  process.exitCode = code ?? (signal === null ? 1 : 128);
});
