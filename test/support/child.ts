/**
 * Forked TypeScript processes for the multi-process tests and benches: `fork` with
 * `--import tsx` and an IPC channel, the child's last output kept for diagnostics, and a stop
 * that asks the child to leave and SIGKILLs it by pid if it has not within a bound.
 */
import { fork, type ChildProcess, type Serializable } from 'node:child_process';

/** Chunks of output kept per child. */
const KEPT_CHUNKS = 50;

/** A forked child and the end of what it printed. */
export interface Forked {
  readonly child: ChildProcess;
  /** The last chunks the child wrote to stdout and stderr, joined (at most `chars` characters). */
  output(chars?: number): string;
}

/** Forks `script` (a .ts file) with `--import tsx`, stdout and stderr piped and kept, an IPC channel. */
export function forkTs(script: string, options: { cwd: string; serialization?: 'json' | 'advanced' }): Forked {
  const child = fork(script, [], { cwd: options.cwd, execArgv: ['--import', 'tsx'], stdio: ['ignore', 'pipe', 'pipe', 'ipc'], serialization: options.serialization ?? 'json' });
  const log: string[] = [];
  const keep = (chunk: Buffer): void => {
    log.push(chunk.toString());
    if (log.length > KEPT_CHUNKS) log.splice(0, log.length - KEPT_CHUNKS);
  };
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  return { child, output: (chars = 2_000) => log.join('').slice(-chars) };
}

/** Sends `farewell` (the child leaves on it) and waits for the exit; SIGKILL by pid after `timeoutMs`, or at once without a channel. */
export function stopChild(child: ChildProcess, farewell: Serializable, timeoutMs = 5_000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise<void>((resolve) => {
    const kill = (): void => {
      try {
        if (child.pid !== undefined) process.kill(child.pid, 'SIGKILL');
      } catch {
        // already gone
      }
    };
    const timer = setTimeout(kill, timeoutMs);
    child.once('exit', () => {
      clearTimeout(timer);
      resolve();
    });
    if (child.connected) child.send(farewell);
    else kill();
  });
}
