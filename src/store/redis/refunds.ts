/**
 * Giving back what tasks that never started were charged: quota into a user's usage, rate units
 * into a bucket. Each is sent until it has applied once (ops.ts, mode 'retry'). Parts given
 * back in one run of this process's code (a close, a burst of cancels) go together, per
 * placement unit, in give_back.lua calls of up to 64 parts; they leave in a microtask queued by
 * the first of them, so before any call their callers make once told (a read right after an
 * abort sees the usage given back), except where Redis lacks the script (its first use on a
 * server, or after a restart): it goes again with EVAL after the NOSCRIPT answer, behind later
 * calls. A refund lands asynchronously.
 */
import type { Rate } from '../../rate/gcra.js';
import type { RateReceipt } from '../store.js';
import type { Context } from './context.js';
import { tagOf } from './keys.js';
import { scripts } from './scripts.js';

/** Parts per call at most. */
const MAX_PARTS = 64;

/** One part of a give_back.lua call: its key and its six arguments. */
interface Part {
  key: string;
  args: (string | number)[];
  /** Called once the part has applied (or failed for good). */
  done: () => void;
}

export class Refunds {
  /** Parts waiting for the microtask that sends them, per placement unit. */
  private pending = new Map<number, Part[]>();

  constructor(private readonly ctx: Context) {}

  /** `cost` units of usage back into the user's record `user`, charged under period token `period` (unless the period moved on). */
  quota(user: string, cost: number, period: number, periodMs: number): Promise<void> {
    return this.add(user, ['Q', cost, period, periodMs, 0, 0, 0, 0]);
  }

  /**
   * Rate units back into `bucket` (`own`: a user's record) as far as it still holds them (the
   * receipt: the TAT right after they were taken, and the bucket's refunds so far).
   */
  rate(bucket: string, own: boolean, rate: Rate, cost: number, receipt: RateReceipt): Promise<void> {
    return this.add(bucket, [own ? 'h' : 's', rate.d, rate.T, rate.tau, cost, receipt.tat, receipt.epoch, receipt.refunds]);
  }

  /** Resolves once the part has applied, or failed for good (a refund is never its caller's failure). */
  private add(key: string, args: (string | number)[]): Promise<void> {
    // close() waits for a part from now on, before it is sent as after.
    const release = this.ctx.ops.hold();
    return new Promise<void>((resolve) => {
      const done = (): void => {
        release();
        resolve();
      };
      if (this.pending.size === 0) queueMicrotask(() => this.flush());
      const unit = this.ctx.calls.unitOf(tagOf(key));
      let parts = this.pending.get(unit);
      if (parts === undefined) {
        parts = [];
        this.pending.set(unit, parts);
      }
      parts.push({ key, args, done });
    });
  }

  /** Sends every part gathered, per unit, up to MAX_PARTS a call. */
  private flush(): void {
    const pending = this.pending;
    this.pending = new Map();
    for (const parts of pending.values()) {
      for (let i = 0; i < parts.length; i += MAX_PARTS) this.send(parts.slice(i, i + MAX_PARTS));
    }
  }

  private send(parts: Part[]): void {
    const keys: string[] = [];
    const args: (string | number)[] = [];
    for (const part of parts) {
      keys.push(part.key);
      for (const a of part.args) args.push(a);
    }
    // Sent again, with a new number, until it has applied once (ops.ts): a failure here is not final.
    const finish = (): void => {
      for (const part of parts) part.done();
    };
    this.ctx.ops.write(scripts.giveBack, keys, args, 'retry').then(finish, finish);
  }
}
