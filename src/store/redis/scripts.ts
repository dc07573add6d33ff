/**
 * The Lua scripts of the Redis store: one file per state transition in `lua/`, shared
 * fragments in `lua/includes/` pulled in by `--@include name` lines (and `codes`, written from
 * codes.ts). Each is read once, run
 * by EVALSHA, and re-sent with EVAL (which caches it again) when a server answers NOSCRIPT:
 * after SCRIPT FLUSH, a restart, or a failover.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { luaCodes } from './codes.js';

const DIR = new URL('./lua/', import.meta.url);

/** What a script call needs from a client: ioredis's Redis and Cluster both have these. */
export interface ScriptClient {
  evalsha(sha: string, numkeys: number, ...args: (string | number | Buffer)[]): Promise<unknown>;
  eval(script: string, numkeys: number, ...args: (string | number | Buffer)[]): Promise<unknown>;
  /** Any command, with string replies as Buffers (for scripts answering binary records). */
  callBuffer(command: string, args: (string | number | Buffer)[]): Promise<unknown>;
  /** The server's clock: seconds and microseconds. */
  time(): Promise<unknown>;
}

/** ioredis has a Buffer variant of every command, typed or not; `evalshaBuffer` works with auto-pipelining, where `callBuffer` does not. */
interface BufferCommands {
  evalshaBuffer?(sha: string, numkeys: number, ...args: (string | number | Buffer)[]): Promise<unknown>;
  evalBuffer?(script: string, numkeys: number, ...args: (string | number | Buffer)[]): Promise<unknown>;
}

/** Includes written here rather than read from a file: the codes TypeScript defines. */
const GENERATED: Record<string, string> = { codes: luaCodes() };

function source(name: string, seen = new Set<string>()): string {
  const text = readFileSync(new URL(`${name}.lua`, DIR), 'utf8');
  return text.replace(/^--@include (\S+)\s*$/gm, (_, include: string) => {
    if (seen.has(include)) return '';
    seen.add(include);
    return GENERATED[include] ?? source(`includes/${include}`, seen);
  });
}

/** One script, loaded from its file once. */
export class Script {
  readonly source: string;
  readonly sha: string;

  constructor(readonly name: string) {
    this.source = source(name);
    this.sha = createHash('sha1').update(this.source).digest('hex');
  }

  /** Runs on the node that owns `keys` (all in one slot); `binary`: string replies as Buffers. */
  async run(client: ScriptClient, keys: readonly string[], args: readonly (string | number | Buffer)[], binary = false): Promise<unknown> {
    try {
      if (binary) {
        const c = client as ScriptClient & BufferCommands;
        return await (c.evalshaBuffer !== undefined ? c.evalshaBuffer(this.sha, keys.length, ...keys, ...args) : c.callBuffer('EVALSHA', [this.sha, keys.length, ...keys, ...args]));
      }
      return await client.evalsha(this.sha, keys.length, ...keys, ...args);
    } catch (error) {
      if (!String((error as Error)?.message).startsWith('NOSCRIPT')) throw error;
      if (binary) {
        const c = client as ScriptClient & BufferCommands;
        return c.evalBuffer !== undefined ? c.evalBuffer(this.source, keys.length, ...keys, ...args) : c.callBuffer('EVAL', [this.source, keys.length, ...keys, ...args]);
      }
      return client.eval(this.source, keys.length, ...keys, ...args);
    }
  }
}

/** Every script of the store. */
export const scripts = {
  admit: new Script('admit'),
  take: new Script('take'),
  takeTurns: new Script('take_turns'),
  giveBack: new Script('give_back'),
  read: new Script('read'),
  subscribe: new Script('subscribe'),
  mutate: new Script('mutate'),
  delete: new Script('delete'),
  sweep: new Script('sweep'),
  dlq: new Script('dlq'),
  migrate: new Script('migrate'),
  chargeBack: new Script('charge_back'),
  presence: new Script('presence'),
  profile: new Script('profile'),
  settle: new Script('settle'),
};
