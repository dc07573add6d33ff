// The refund log's math on its own (src/rate/refund-log.ts, pure like the GCRA module): the
// cases the store-level tests reach only by chance.
import { describe, expect, it } from 'vitest';
import { makeRate } from '../src/rate/gcra.js';
import { LOG_ENTRIES, RefundLog, giveBack, voidLog } from '../src/rate/refund-log.js';

// 1 unit per second, room for 100; d = 1, so ticks are µs.
const rate = makeRate(1, 1000, 100);
const S = 1_000_000;

describe('refund log', () => {
  it('after the rate changed, a charge from before gives nothing back, one after gives back whole', () => {
    const log = new RefundLog();
    // Units at 0-10 s; a charge ended at 10 s, taken before refund 1.
    voidLog(log, 0, 1);
    expect(giveBack(log, 10 * S, 0, 10 * S, 0, 1, rate, 2)).toBe(10 * S);
    // A charge taken after the change (its receipt holds refund count 1) comes back.
    expect(giveBack(log, 11 * S, 0, 11 * S, 1, 1, rate, 2)).toBe(10 * S);
  });

  it('a charge taken right after a refund that was later folded reads only the entries after it', () => {
    const log = new RefundLog();
    // 40 charges of 1 s end to end from 0 s: charge i ends at i s; the bucket's TAT is 40 s.
    let tat = 40 * S;
    let seq = 0;
    // Give back charge 1 (refund 1): every later slot moves down 1 s.
    tat = giveBack(log, tat, 0, 1 * S, 0, 1, rate, ++seq);
    expect(tat).toBe(39 * S);
    // A new charge now, after refund 1: its slot is 39-40 s, its receipt holds refund count 1.
    tat += S;
    const late = { tat, refunds: seq };
    // Give back charges 40 down to 9 (32 refunds, latest first): refund 1's entry is folded.
    for (let i = 40; i >= 9; i--) tat = giveBack(log, tat, 0, i * S, 0, 1, rate, ++seq);
    expect(log.folded).toBe(1);
    // All 32 slots lay before the late charge's: it moved down to 7-8 s. At 7.5 s half of it is left.
    expect(tat).toBe(8 * S);
    expect(giveBack(log, tat, 7.5 * S, late.tat, late.refunds, 1, rate, ++seq)).toBe(7.5 * S);
  });

  it('folded refunds do not move a charge whose slot lies before all of them', () => {
    const log = new RefundLog();
    // 100 charges of 1 s: charge i ends at i s. Give back charges 30 to 63, earliest first: the
    // first two entries are folded (their slots ended at 30 s).
    let tat = 100 * S;
    let seq = 0;
    for (let i = 30; i <= 63; i++) tat = giveBack(log, tat, 0, i * S, 0, 1, rate, ++seq);
    expect(log.folded).toBe(2);
    expect(tat).toBe(66 * S);
    // Charge 10 (9-10 s) lies before them all: at 9.5 s, half of it is left to give back.
    expect(giveBack(log, tat, 9.5 * S, 10 * S, 0, 1, rate, ++seq)).toBe(65.5 * S);
  });
});
