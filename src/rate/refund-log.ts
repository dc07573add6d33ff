/**
 * Giving rate units back exactly, in any order: what a bucket remembers of the units given back
 * to it. Pure math on ticks, no I/O; its Lua twin (`lua/includes/refund_log.lua`) follows the
 * same steps.
 *
 * A bucket's units in use sit end to end up to its TAT, each charge in the slot it was given.
 * A receipt is the TAT right after a charge: where that charge's slot ended. Giving back part of
 * a slot moves every later slot down by that much, which the later charges' receipts do not
 * know. So each refund is written down (when, where the slot it gave back ended, how much came
 * back), and a later refund reads the entries written since its own charge: an entry whose slot
 * ended before its own slot moved it down; one whose slot ended after it did not. Where that
 * cannot be told (entries folded away, see below), the refund assumes the move that gives back
 * less: a bucket is never emptier than if the units had never been taken, whatever the order
 * of the refunds.
 *
 * The log is bounded. It keeps the last {@link LOG_ENTRIES} entries; older ones fold into a
 * summary (how much they gave back in all, and the lowest slot end among them), which serves
 * exactly the common case of a refund whose slot lies before all of them (units given back
 * latest charge first) and conservatively every other. Entries older than the bucket's burst
 * tolerance are dropped: a receipt taken before them ends at most `tau` ticks after it was
 * taken, so its units have passed and nothing of them comes back anyway.
 */
import type { Rate } from './gcra.js';

/** Entries a log keeps before folding the oldest into its summary. */
export const LOG_ENTRIES = 32;

/** One refund: where the slot it gave back ended (bounds, in the ticks of its time) and how much came back. */
export interface RefundEntry {
  /** The refund's number on its bucket (receipts hold the number of the last refund before their charge). */
  readonly seq: number;
  /** When, in ticks. */
  readonly at: number;
  /** The slot's end, at least. */
  readonly lo: number;
  /** The slot's end, at most. */
  readonly hi: number;
  /** Ticks given back: every later slot moved down by this much. */
  readonly back: number;
}

/** What a bucket remembers of its refunds. */
export class RefundLog {
  /** The last entries, oldest first. */
  readonly entries: RefundEntry[] = [];
  /** The number of the last entry folded into the summary: receipts from before it need the summary. */
  folded = 0;
  /** Ticks the folded entries gave back; Infinity: unknown (the bucket changed rate since). */
  sum = 0;
  /** The lowest slot end among the folded entries. */
  low = Infinity;
  /** When the last entry was folded, in ticks. */
  foldedAt = 0;
}

/** A refund's own place: the bounds of its slot's end now (lo -Infinity: nothing of it can come back). */
function place(log: RefundLog, receiptTat: number, receiptSeq: number): { lo: number; hi: number } {
  // Two slots never share an end: a bound equal to another slot's end already tells which
  // came first.
  let lo = receiptTat;
  let hi = receiptTat;
  if (receiptSeq < log.folded) {
    // Before every folded slot: none of them moved it. Otherwise assume they all did (after a
    // rate change the sum is Infinity and low -Infinity: lo falls to -Infinity).
    if (hi > log.low) lo -= log.sum;
  }
  for (const e of log.entries) {
    if (e.seq <= receiptSeq) continue;
    if (e.hi <= lo) {
      // An earlier slot: it moved this one.
      lo -= e.back;
      hi -= e.back;
    } else if (e.lo < hi) {
      // Cannot tell: assume it did.
      lo -= e.back;
    }
  }
  return { lo, hi };
}

/** Forgets what no receipt can need any more at `now`. */
// Stryker disable all: pruning bounds the log's size and the summary's numbers; what it drops no receipt can use (those charges are over), so keeping it changes no answer
function prune(log: RefundLog, now: number, tau: number): void {
  const entries = log.entries;
  let old = 0;
  while (old < entries.length && (entries[old] as RefundEntry).at + tau <= now) old++;
  if (old > 0) entries.splice(0, old);
  if (log.foldedAt + tau <= now) {
    log.sum = 0;
    log.low = Infinity;
  }
}
// Stryker restore all

/**
 * Gives back what `cost` units charged with receipt (`receiptTat`, `receiptSeq`) still hold of
 * a bucket whose TAT is `tat` at `now` (ticks), recording the refund as number `seq` when units
 * come back. Returns the bucket's new TAT (`tat` itself when nothing came back).
 */
export function giveBack(log: RefundLog, tat: number, now: number, receiptTat: number, receiptSeq: number, cost: number, rate: Rate, seq: number): number {
  // Stryker disable next-line ConditionalExpression,EqualityOperator: a shortcut: a slot that ended by now has lo <= now, and nothing comes back below
  if (receiptTat <= now) return tat;
  prune(log, now, rate.tau);
  const at = place(log, receiptTat, receiptSeq);
  const mine = at.lo - now;
  // Only the part of the slot still ahead of now comes back, and only if the bucket holds it
  // (it does not after a reset of the bucket).
  // Stryker disable next-line EqualityOperator,ConditionalExpression,ArithmeticOperator: mine == 0 gives back 0 all the same; and a slot lies within its bucket while the log is kept right (a rate change voids it): the second test guards against a bucket changed by other means
  if (mine <= 0 || tat - now < mine) return tat;
  const back = Math.min(cost * rate.T, mine);
  log.entries.push({ seq, at: now, lo: at.lo, hi: at.hi, back });
  // Stryker disable next-line ConditionalExpression,EqualityOperator: folding bounds the log's size; an unfolded log, or one a entry shorter, is as exact or more
  if (log.entries.length > LOG_ENTRIES) fold(log, log.entries.shift() as RefundEntry);
  return tat - back;
}

function fold(log: RefundLog, e: RefundEntry): void {
  log.folded = e.seq;
  log.sum += e.back;
  if (e.lo < log.low) log.low = e.lo;
  log.foldedAt = e.at;
}

/**
 * The bucket changed rate at `now` (its ticks mean something else): receipts from before refund
 * number `seq` give nothing back.
 */
export function voidLog(log: RefundLog, now: number, seq: number): void {
  log.entries.length = 0;
  log.folded = seq;
  log.sum = Infinity;
  log.low = -Infinity;
  log.foldedAt = now;
}
