/**
 * The dead-letter queue in Redis (dlq.lua: one slot), and the inline task functions of this
 * process's dead letters, kept here for replay since a function cannot travel. Letters added
 * while an add is in flight go together in the next call (gather.ts): one round trip and one
 * script run for many letters under load.
 */
import { deserialize, serialize } from 'node:v8';
import type { DlqQuery, FailedTask } from '../store.js';
import { Recent } from '../../util/recent.js';
import { notThisCall, type Reply } from './calls.js';
import type { Context } from './context.js';
import { Gather } from './gather.js';
import { scripts } from './scripts.js';

/** A letter on its way to Redis. */
interface Letter {
  id: string;
  json: string;
  profileName: string;
  userId: string;
  maxEntries: number;
  retentionMs: number;
}

/** Inline dead letters whose function this process keeps for replay: at most these, and at least the most recent half of them. */
const MAX_INLINE = 10_000;

/**
 * A dead letter as JSON. A named task's payload is kept as V8 serializes it (`v8`, base64: what
 * structured cloning keeps, as a worker thread received it: Dates, Maps, typed arrays, BigInts),
 * else, for a payload V8 cannot serialize (none that a worker thread accepts), as JSON (`payload`).
 */
interface StoredEntry extends Omit<FailedTask, 'task' | 'firstFailedAt' | 'lastFailedAt'> {
  task: { inline?: boolean; description?: string; name?: string; payload?: unknown; v8?: string };
  firstFailedAt: number;
  lastFailedAt: number;
}

/** A named task's payload as a letter keeps it (see StoredEntry). */
function storedPayload(payload: unknown): { v8: string } | { payload: unknown } {
  try {
    return { v8: serialize(payload).toString('base64') };
  } catch {
    return { payload };
  }
}

/** A payload kept by V8; undefined when this Node cannot read it (written by a newer one, or damaged). */
function restorePayload(v8: string): unknown {
  try {
    return deserialize(Buffer.from(v8, 'base64'));
  } catch {
    return undefined;
  }
}

function serialiseEntry(entry: FailedTask): StoredEntry {
  const t = entry.task;
  const task =
    typeof t === 'function'
      ? { inline: true, description: t.name ? `function ${t.name}` : 'an anonymous function' }
      : 'inline' in t
        ? { inline: true, description: t.description }
        : { name: t.name, ...storedPayload(t.payload) };
  return { ...entry, task, firstFailedAt: entry.firstFailedAt.getTime(), lastFailedAt: entry.lastFailedAt.getTime() };
}

export class DeadLetters {
  /** Inline task functions of this process's dead letters, by entry id. */
  private readonly inline = new Recent<string, FailedTask['task']>(MAX_INLINE);

  /** The queue lives in one slot: one lane. */
  private readonly adds = new Gather<0, Letter, void>((_, letters) => this.store(letters));

  constructor(private readonly ctx: Context) {}

  /**
   * Stores a letter until `bounds.retentionMs` after its last failure, as the server's clock
   * counts it from now: a letter put back (a replay that was refused) keeps the time it had left.
   * `nowMs`: the manager's clock, on which `lastFailedAt` was read.
   */
  async add(entry: FailedTask, bounds: { maxEntries: number; retentionMs: number }, nowMs: number): Promise<void> {
    if (typeof entry.task === 'function') {
      this.inline.set(entry.id, entry.task);
    }
    const json = JSON.stringify(serialiseEntry(entry));
    const age = Math.max(0, nowMs - entry.lastFailedAt.getTime());
    const retentionMs = Math.max(0, bounds.retentionMs - age);
    await this.adds.add(0, { id: entry.id, json, profileName: entry.profileName, userId: entry.userId, maxEntries: bounds.maxEntries, retentionMs });
  }

  /** One call for many letters: applied together, at most once, or not at all. */
  private async store(letters: Letter[]): Promise<void[]> {
    const keys = this.keys();
    const args: (string | number)[] = ['add', letters.length];
    // Each index key once, by its 1-based place in KEYS.
    const places = new Map<string, number>();
    const place = (key: string): number => {
      let at = places.get(key);
      if (at === undefined) {
        keys.push(key);
        at = keys.length;
        places.set(key, at);
      }
      return at;
    };
    for (const letter of letters) {
      args.push(place(this.ctx.keys.dlqProfile(letter.profileName)), place(this.ctx.keys.dlqUser(letter.userId)), letter.id, letter.json, letter.maxEntries, letter.retentionMs);
    }
    // The reply names the call's own number: a reply meant for another call is not taken for it (ops.ts).
    await this.ctx.ops.write(scripts.dlq, keys, args, 'undo', false, (reply: Reply, seq: number) => String(reply) === `added:${seq}`);
    return new Array<void>(letters.length);
  }

  async list(query: DlqQuery): Promise<FailedTask[]> {
    const keys = this.keys();
    // One user's entries walk that user's index (filtered by profile from their JSON when both
    // are given); one profile's walk the profile's; else all.
    if (query.userId !== undefined) keys.push(this.ctx.keys.dlqUser(query.userId));
    else if (query.profileName !== undefined) keys.push(this.ctx.keys.dlqProfile(query.profileName));
    const profile = query.userId !== undefined ? (query.profileName ?? '') : '';
    const token = this.token();
    const r = await this.ctx.calls.run(scripts.dlq, keys, [0, 0, 0, this.ctx.clock.arg(), 'list', query.limit ?? -1, profile, token]);
    if (!Array.isArray(r) || r[r.length - 1] !== token) throw notThisCall('dlq list');
    r.pop();
    return (r as string[]).map((json) => this.restore(JSON.parse(json) as StoredEntry));
  }

  async get(id: string): Promise<FailedTask | undefined> {
    const token = this.token();
    const r = await this.ctx.calls.run(scripts.dlq, this.keys(), [0, 0, 0, this.ctx.clock.arg(), 'get', id, token]);
    if (!Array.isArray(r) || r[0] !== token) throw notThisCall('dlq get');
    return typeof r[1] === 'string' ? this.restore(JSON.parse(r[1]) as StoredEntry) : undefined;
  }

  async remove(id: string): Promise<boolean> {
    const token = this.token();
    const r = await this.ctx.calls.run(scripts.dlq, this.keys(), [0, 0, 0, this.ctx.clock.arg(), 'remove', id, token]);
    if (!Array.isArray(r) || r[0] !== token) throw notThisCall('dlq remove');
    this.inline.delete(id);
    return r[1] === 1;
  }

  /** Drops every entry of these users (their subscriptions were deleted): what the store held for them. */
  async forget(userIds: readonly string[]): Promise<void> {
    if (userIds.length === 0) return;
    const token = this.token();
    const keys = [...this.keys(), ...userIds.map((id) => this.ctx.keys.dlqUser(id))];
    const r = await this.ctx.calls.run(scripts.dlq, keys, [0, 0, 0, this.ctx.clock.arg(), 'forget', token]);
    if (!Array.isArray(r) || r[r.length - 1] !== token) throw notThisCall('dlq forget');
    r.pop();
    for (const id of r as string[]) this.inline.delete(id);
  }

  /** A read's own token, which its reply names (see dlq.lua). */
  private token(): string {
    return `r${++this.reads}`;
  }

  private reads = 0;

  private keys(): string[] {
    const keys = this.ctx.keys;
    return [keys.dlq('e'), keys.dlq('o'), keys.dlq('x'), keys.dlq('seq')];
  }

  private restore(stored: StoredEntry): FailedTask {
    const { task, firstFailedAt, lastFailedAt, ...rest } = stored;
    const fn = this.inline.get(stored.id);
    return {
      ...rest,
      task: fn ?? (task.inline ? { inline: true, description: task.description ?? 'a function' } : { name: task.name as string, payload: task.v8 === undefined ? task.payload : restorePayload(task.v8) }),
      firstFailedAt: new Date(firstFailedAt),
      lastFailedAt: new Date(lastFailedAt),
    };
  }
}
