#!/usr/bin/env node
// Pretest: makes sure the tools the tests need are on this machine: promtool (Debian's
// prometheus package) and redis-server / redis-cli (Debian's redis-server package and its
// dependency redis-tools; test/support/redis.ts starts private servers and clusters on random
// loopback ports). Installs them with apt-get when missing and running as root; otherwise stops
// with the command to run. If the Debian postinst starts a system redis on 6379, that is harmless:
// no test uses that port.
import { execFileSync, spawnSync } from 'node:child_process';

const tools = [
  { command: 'promtool', pkg: 'prometheus' },
  { command: 'redis-server', pkg: 'redis-server' },
  { command: 'redis-cli', pkg: 'redis-tools' },
];

const has = (command) => spawnSync('sh', ['-c', `command -v ${command}`], { stdio: 'ignore' }).status === 0;
const missing = tools.filter((t) => !has(t.command));
if (missing.length === 0) process.exit(0);

const pkgs = [...new Set(missing.map((t) => t.pkg))];
const isRoot = typeof process.getuid === 'function' && process.getuid() === 0;
if (!isRoot || !has('apt-get')) {
  console.error(
    `The tests need ${missing.map((t) => t.command).join(', ')}. Install them, for example on Debian/Ubuntu:\n` +
      `  sudo apt-get update && sudo apt-get install -y --no-install-recommends ${pkgs.join(' ')}`,
  );
  process.exit(1);
}
console.log(`pretest: installing ${pkgs.join(' ')} with apt-get (needed: ${missing.map((t) => t.command).join(', ')})`);
const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
const apt = (args) => execFileSync('apt-get', args, { stdio: ['ignore', 'ignore', 'inherit'], env });
try {
  apt(['install', '-y', '--no-install-recommends', ...pkgs]);
} catch {
  apt(['update']);
  apt(['install', '-y', '--no-install-recommends', ...pkgs]);
}
const still = missing.filter((t) => !has(t.command));
if (still.length > 0) {
  console.error(`pretest: ${still.map((t) => t.command).join(', ')} still missing after installing ${pkgs.join(' ')}`);
  process.exit(1);
}
