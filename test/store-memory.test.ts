// The Store contract on the MemoryStore.
import { describe, expect, it } from 'vitest';
import { MemoryStore, type FailedTask } from '../src/index.js';
import { deadLetter } from './support/dead-letters.js';
import { storeContract } from './store.contract.js';

storeContract('MemoryStore', { make: async () => new MemoryStore() });

describe('MemoryStore dead letters at scale', () => {
  const T = Date.UTC(2026, 5, 1);
  const bounds = { maxEntries: 1_000_000, retentionMs: 3_600_000 };

  /** Reads of stored entries' fields made by one add and by one list of 10, with `held` entries stored. */
  function work(held: number): { add: number; list: number } {
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
    return { add, list: reads };
  }

  it('an add and a list({ limit }) read as many entry fields with 10,000 entries as with 100', () => {
    // 5 field reads per add (of the added entry), none per list.
    expect(work(10_000)).toEqual(work(100));
  });
});
