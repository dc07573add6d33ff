/**
 * Real redis-server processes for the tests: single servers (optionally append-only, for crash
 * and restart tests) and small clusters, each on a random free loopback port with its own
 * temporary directory. Nothing here uses port 6379, so a system redis does not matter.
 *
 * Every spawned process is tracked; besides the explicit `stop()`, the module kills leftovers
 * synchronously when the test process exits or receives SIGTERM/SIGINT (vitest stops its fork
 * workers with SIGTERM, which skips 'exit' handlers otherwise).
 *
 * Needs `redis-server` and `redis-cli` on PATH (`npm test`'s pretest installs them).
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer, connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const HOST = '127.0.0.1';
/** How long a server may take to answer PING after it is spawned. */
const START_TIMEOUT_MS = 10_000;
/** How long `stop()` waits after SIGTERM before it sends SIGKILL. */
const STOP_TIMEOUT_MS = 5_000;
/** How long a new cluster may take to reach cluster_state:ok on every node. */
const CLUSTER_TIMEOUT_MS = 20_000;
const LOG_LINES = 200;

/** A running (or stopped) redis-server started by {@link startRedis}. */
export interface RedisServer {
  readonly host: string;
  readonly port: number;
  /** The pid of the current process; it changes on {@link RedisServer.restart}. */
  readonly pid: number;
  /** `redis://127.0.0.1:<port>`. */
  readonly url: string;
  /** The working directory (`--dir`): append-only files, cluster config. */
  readonly dir: string;
  /** SIGTERM, wait for exit, SIGKILL after 5 s. Removes `dir` when startRedis created it. */
  stop(): Promise<void>;
  /** SIGKILL (a crash) and wait for exit; `dir` is kept so {@link RedisServer.restart} finds the data. */
  kill(): Promise<void>;
  /** Stops the server if it runs, starts it again on the same port and dir, waits for PING. */
  restart(): Promise<void>;
  /** The last lines the server printed (stdout and stderr), for diagnostics. */
  output(): string;
}

/** Options of {@link startRedis}. */
export interface StartRedisOptions {
  /** `--appendonly yes --appendfsync always`; otherwise `--appendonly no`. Default false. */
  appendonly?: boolean;
  /** The working directory; default a new temporary one (removed by `stop()`). */
  dir?: string;
  /** The port; default a free one. */
  port?: number;
  /** More redis-server arguments, appended last (they override the defaults). */
  extraArgs?: string[];
}

/** A cluster started by {@link startCluster}; masters only, slots split evenly. */
export interface RedisClusterHandle {
  /** Startup nodes for `new Redis.Cluster(nodes)`. */
  readonly nodes: { host: string; port: number }[];
  readonly ports: number[];
  /** The servers, in port order of `nodes` (e.g. to kill one). */
  readonly servers: RedisServer[];
  /** Stops every node and removes the temporary directory. */
  stop(): Promise<void>;
}

// ---- process tracking and last-resort cleanup ----------------------------------------------

// Shared through globalThis so that a module graph re-evaluated in the same worker process
// (vitest isolation) neither loses track of children nor registers the handlers twice.
interface Tracking {
  live: Set<ChildProcess>;
  ownedDirs: Set<string>;
  hooked: boolean;
}
const tracking: Tracking = ((globalThis as Record<symbol, unknown>)[Symbol.for('taskvalve.test.redis')] ??= {
  live: new Set<ChildProcess>(),
  ownedDirs: new Set<string>(),
  hooked: false,
}) as Tracking;
const { live, ownedDirs } = tracking;

function killAllSync(): void {
  for (const child of live) {
    try {
      if (child.pid !== undefined) process.kill(child.pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
  live.clear();
  for (const dir of ownedDirs) rmSync(dir, { recursive: true, force: true });
  ownedDirs.clear();
}

if (!tracking.hooked) {
  tracking.hooked = true;
  process.on('exit', killAllSync);
  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    const onSignal = (): void => {
      killAllSync();
      process.off(signal, onSignal);
      // Keep the default behaviour (terminate) unless somebody else handles the signal.
      if (process.listenerCount(signal) === 0) process.kill(process.pid, signal);
    };
    process.on(signal, onSignal);
  }
}

// ---- small utilities ------------------------------------------------------------------------

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** A free TCP port on 127.0.0.1 (listen on port 0, read the port, close). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.once('error', reject);
    server.listen(0, HOST, () => {
      const address = server.address();
      const port = typeof address === 'object' && address !== null ? address.port : 0;
      server.close(() => (port > 0 ? resolve(port) : reject(new Error('freePort: no port assigned'))));
    });
  });
}

/**
 * Sends one command over a fresh TCP connection and returns the first reply as text
 * (simple string, error as `-ERR ...`, integer, or bulk string). Rejects on connection errors
 * or after `timeoutMs`.
 */
export function rawCommand(port: number, args: string[], timeoutMs = 1_000): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: HOST, port });
    let buffer = Buffer.alloc(0);
    const finish = (error: Error | null, reply?: string): void => {
      socket.destroy();
      if (error) reject(error);
      else resolve(reply ?? '');
    };
    socket.setTimeout(timeoutMs, () => finish(new Error(`redis :${port} did not answer ${args[0]} in ${timeoutMs} ms`)));
    socket.once('error', (error) => finish(error));
    socket.on('data', (chunk: Buffer) => {
      buffer = Buffer.concat([buffer, chunk]);
      const eol = buffer.indexOf('\r\n');
      if (eol < 0) return;
      const head = buffer.subarray(0, eol).toString();
      if (head[0] !== '$') return finish(null, head[0] === '-' ? head : head.slice(1));
      const length = Number(head.slice(1));
      if (length < 0) return finish(null, '');
      if (buffer.length >= eol + 2 + length + 2) finish(null, buffer.subarray(eol + 2, eol + 2 + length).toString());
    });
    socket.once('connect', () => {
      socket.write(`*${args.length}\r\n` + args.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join(''));
    });
  });
}

function waitForExit(child: ChildProcess, timeoutMs: number): Promise<boolean> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(true);
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      child.off('exit', onExit);
      resolve(false);
    }, timeoutMs);
    const onExit = (): void => {
      clearTimeout(timer);
      resolve(true);
    };
    child.once('exit', onExit);
  });
}

async function terminate(child: ChildProcess, signal: 'SIGTERM' | 'SIGKILL'): Promise<void> {
  if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) {
    live.delete(child);
    return;
  }
  try {
    process.kill(child.pid, signal);
  } catch {
    // already gone
  }
  if (!(await waitForExit(child, STOP_TIMEOUT_MS))) {
    try {
      process.kill(child.pid, 'SIGKILL');
    } catch {
      // already gone
    }
    await waitForExit(child, STOP_TIMEOUT_MS);
  }
  live.delete(child);
}

// ---- one server -----------------------------------------------------------------------------

interface Spawned {
  child: ChildProcess;
  log: string[];
}

/** Spawns redis-server and resolves once it answers PING; kills it and rejects otherwise. */
async function launch(port: number, args: string[]): Promise<Spawned> {
  const log: string[] = [];
  const child = spawn('redis-server', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  live.add(child);
  let partial = '';
  const collect = (chunk: Buffer): void => {
    const lines = (partial + chunk.toString()).split('\n');
    partial = lines.pop() ?? '';
    log.push(...lines);
    if (log.length > LOG_LINES) log.splice(0, log.length - LOG_LINES);
  };
  child.stdout?.on('data', collect);
  child.stderr?.on('data', collect);
  let spawnError: Error | undefined;
  child.once('error', (error) => {
    spawnError = error;
  });

  const fail = async (reason: string): Promise<never> => {
    await terminate(child, 'SIGKILL');
    const tail = [...log, partial].filter((l) => l.trim() !== '').slice(-20).join('\n');
    throw new Error(`redis-server on 127.0.0.1:${port} did not start: ${reason}\n--- last output ---\n${tail}`);
  };

  const deadline = Date.now() + START_TIMEOUT_MS;
  let last = '';
  for (;;) {
    if (spawnError) {
      const hint = (spawnError as NodeJS.ErrnoException).code === 'ENOENT' ? ' (is redis-server installed? run `npm run pretest`)' : '';
      return fail(`${spawnError.message}${hint}`);
    }
    if (child.exitCode !== null || child.signalCode !== null) return fail(`exited with ${child.exitCode ?? child.signalCode}`);
    try {
      last = await rawCommand(port, ['PING'], 500);
      // Make sure the answer comes from this child, not from another server that holds the port
      // (then this child exits with "Address already in use" and the loop reports it).
      if (last === 'PONG' && (await rawCommand(port, ['INFO', 'server'], 500)).includes(`\nprocess_id:${child.pid}\r`)) {
        return { child, log };
      }
      // e.g. -LOADING while the append-only file is replayed: keep polling
    } catch (error) {
      last = (error as Error).message;
    }
    if (Date.now() > deadline) return fail(`no PONG within ${START_TIMEOUT_MS} ms (last: ${last})`);
    await sleep(15);
  }
}

/**
 * Starts a private redis-server on 127.0.0.1 (`--save '' --daemonize no`, append-only off unless
 * asked) and resolves once it answers PING. Always call `stop()` (e.g. in afterAll/finally);
 * leftovers are killed when the test process exits.
 */
export async function startRedis(options: StartRedisOptions = {}): Promise<RedisServer> {
  const ownDir = options.dir === undefined;
  const dir = options.dir ?? mkdtempSync(join(tmpdir(), 'taskvalve-redis-'));
  if (ownDir) ownedDirs.add(dir);
  const argsFor = (port: number): string[] => [
    '--port', String(port),
    '--bind', HOST,
    '--daemonize', 'no',
    '--save', '',
    ...(options.appendonly ? ['--appendonly', 'yes', '--appendfsync', 'always'] : ['--appendonly', 'no']),
    '--dir', dir,
    ...(options.extraArgs ?? []),
  ];

  let port = options.port ?? (await freePort());
  let current: Spawned;
  for (let attempt = 1; ; attempt++) {
    try {
      current = await launch(port, argsFor(port));
      break;
    } catch (error) {
      // Another process took the free port between freePort() and the bind: pick another one.
      const raced = /Address already in use/i.test((error as Error).message);
      if (options.port !== undefined || !raced || attempt >= 3) {
        if (ownDir) removeDir(dir);
        throw error;
      }
      port = await freePort();
    }
  }

  const fixedPort = port;
  return {
    host: HOST,
    port: fixedPort,
    get pid() {
      return current.child.pid ?? -1;
    },
    url: `redis://${HOST}:${fixedPort}`,
    dir,
    async stop() {
      await terminate(current.child, 'SIGTERM');
      if (ownDir) removeDir(dir);
    },
    async kill() {
      await terminate(current.child, 'SIGKILL');
    },
    async restart() {
      await terminate(current.child, 'SIGTERM');
      mkdirSync(dir, { recursive: true });
      if (ownDir) ownedDirs.add(dir);
      current = await launch(fixedPort, argsFor(fixedPort));
    },
    output() {
      return current.log.join('\n');
    },
  };
}

function removeDir(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
  ownedDirs.delete(dir);
}

// ---- cluster --------------------------------------------------------------------------------

function redisCli(args: string[], timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile('redis-cli', args, { timeout: timeoutMs }, (error, stdout, stderr) => {
      if (error) reject(new Error(`redis-cli ${args.join(' ')} failed: ${error.message}\n${stdout}\n${stderr}`));
      else resolve(stdout);
    });
  });
}

/** `count` distinct free ports, none of them in (and all added to) `taken`. */
async function uniqueFreePorts(count: number, taken: Set<number>): Promise<number[]> {
  const ports: number[] = [];
  while (ports.length < count) {
    const port = await freePort();
    if (taken.has(port)) continue;
    taken.add(port);
    ports.push(port);
  }
  return ports;
}

function clusterInfo(text: string): Record<string, string> {
  const info: Record<string, string> = {};
  for (const line of text.split(/\r?\n/)) {
    const at = line.indexOf(':');
    if (at > 0) info[line.slice(0, at)] = line.slice(at + 1);
  }
  return info;
}

/**
 * Starts `masters` (at least 3) cluster-enabled servers, joins them with
 * `redis-cli --cluster create ... --cluster-replicas 0`, and resolves once every node reports
 * cluster_state:ok with all slots assigned and all nodes known.
 */
export async function startCluster(masters = 3): Promise<RedisClusterHandle> {
  if (!Number.isInteger(masters) || masters < 3) throw new Error('startCluster: a Redis cluster needs at least 3 masters');
  const dir = mkdtempSync(join(tmpdir(), 'taskvalve-redis-cluster-'));
  ownedDirs.add(dir);
  const servers: RedisServer[] = [];
  const stop = async (): Promise<void> => {
    await Promise.all(servers.map((s) => s.stop()));
    removeDir(dir);
  };
  try {
    // Each node needs a client port and a cluster-bus port. Free ports come from the ephemeral
    // range, where the default bus port (port + 10000) may exceed 65535: set it explicitly.
    const taken = new Set<number>();
    const startNode = async (): Promise<void> => {
      for (let attempt = 1; ; attempt++) {
        const [port, busPort] = (await uniqueFreePorts(2, taken)) as [number, number];
        try {
          servers.push(
            await startRedis({
              port,
              dir,
              extraArgs: [
                '--cluster-enabled', 'yes',
                '--cluster-port', String(busPort),
                '--cluster-config-file', join(dir, `nodes-${port}.conf`),
                '--cluster-node-timeout', '2000',
              ],
            }),
          );
          return;
        } catch (error) {
          if (attempt >= 3 || !/Address already in use/i.test((error as Error).message)) throw error;
        }
      }
    };
    await Promise.all(Array.from({ length: masters }, startNode));
    servers.sort((a, b) => a.port - b.port);
    const ports = servers.map((s) => s.port);
    await redisCli(
      ['--cluster', 'create', ...ports.map((p) => `${HOST}:${p}`), '--cluster-replicas', '0', '--cluster-yes'],
      CLUSTER_TIMEOUT_MS,
    );

    const deadline = Date.now() + CLUSTER_TIMEOUT_MS;
    for (;;) {
      const infos = await Promise.all(ports.map((p) => rawCommand(p, ['CLUSTER', 'INFO']).then(clusterInfo, () => ({}) as Record<string, string>)));
      const ready = infos.every(
        (i) => i['cluster_state'] === 'ok' && i['cluster_slots_assigned'] === '16384' && i['cluster_known_nodes'] === String(masters),
      );
      if (ready) break;
      if (Date.now() > deadline) throw new Error(`cluster not ok within ${CLUSTER_TIMEOUT_MS} ms: ${JSON.stringify(infos)}`);
      await sleep(25);
    }
    return { nodes: ports.map((port) => ({ host: HOST, port })), ports, servers, stop };
  } catch (error) {
    await stop();
    throw error;
  }
}
