// The Store contract on the MemoryStore.
import { describe, expect, it } from 'vitest';
import { MemoryStore, type FailedTask } from '../src/index.js';
import { deadLetter } from './support/dead-letters.js';
import { storeContract } from './store.contract.js';

storeContract('MemoryStore', { make: async () => new MemoryStore() });

describe('MemoryStore dead letters at scale', () => {
  const T = Date.UTC(2026, 5, 1);
  const bounds = { maxEntries: 1_000_000, retentionMs: 3_600_000 };

  /**
   * Reads of stored entries' fields made by one add, by one list of 10, and by one list of a
   * user's entries (one user with 3 among `held` entries of others), with `held` entries stored.
   */
  function work(held: number): { add: number; list: number; user: number } {
    let reads = 0;
    const counted = (entry: FailedTask): FailedTask =>
      new Proxy(entry, {
        get(target, key) {
          reads++;
          return target[key as keyof FailedTask];
        },
      });
    const store = new MemoryStore({ maxDeadLetters: 1_000_000 });
    for (let i = 0; i < held; i++) store.dlqAdd(counted(deadLetter(i, i % 2 ? 'a' : 'b', T + i)), bounds, T + i);
    reads = 0;
    store.dlqAdd(counted(deadLetter(held, 'a', T + held)), bounds, T + held);
    const add = reads;
    reads = 0;
    expect(store.dlqList({ limit: 10 }, T + held)).toHaveLength(10);
    const list = reads;
    for (let k = 1; k <= 3; k++) store.dlqAdd({ ...deadLetter(held + k, 'a', T + held), userId: 'few' }, bounds, T + held);
    reads = 0;
    expect(store.dlqList({ userId: 'few', limit: 10 }, T + held).map((e) => e.userId)).toEqual(['few', 'few', 'few']);
    return { add, list, user: reads };
  }

  it("an add, a list({ limit }) and a list of one user's entries read as many entry fields with 10,000 entries as with 100", () => {
    // 5 field reads per add (of the added entry), none per list, and one user's list reads only theirs.
    expect(work(10_000)).toEqual(work(100));
  });
});
