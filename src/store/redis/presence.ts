/**
 * This process among the others sharing one Redis: its profiles' configurations, recorded so
 * that processes configured differently are warned about, and its presence, counted so that the
 * 'local' outage policy gives each live process its share of every limit.
 */
import { randomUUID } from 'node:crypto';
import { ErrorCode, TaskvalveError } from '../../errors.js';
import type { Profile } from '../../profile.js';
import type { Context } from './context.js';
import { scripts } from './scripts.js';

/** A process not heard from for this long no longer counts for the 'local' policy's share. */
const PRESENCE_TTL_MS = 15_000;

export class Presence {
  /** The live processes sharing this Redis, this one included, as last counted. */
  processes = 1;
  /** Whether this process has counted them at least once ('local' decides nothing before). */
  counted = false;
  /** This process, among the live ones. */
  private readonly id = randomUUID();
  private timer: NodeJS.Timeout | undefined = undefined;

  constructor(private readonly ctx: Context) {}

  /**
   * Records a profile's configuration (and its shared bucket's) in Redis, warning of another
   * process's different one, both named; then keeps this process counted among the live ones.
   */
  async define(profile: Profile): Promise<void> {
    const rate = { limit: profile.rate.limit, intervalMs: profile.rate.intervalMs, burst: profile.rate.burst };
    const mine = JSON.stringify({ rate: { ...rate, shared: profile.shared ?? null, onLimit: profile.onLimit }, quota: profile.quotaLimit, periodMs: profile.quotaPeriodMs, hard: profile.quotaHard });
    const records: [string, string][] = [[`profile:${profile.name}`, mine]];
    if (profile.shared !== undefined) records.push([`bucket:${profile.shared}`, JSON.stringify(rate)]);
    for (const [name, config] of records) {
      const before = (await this.ctx.calls.run(scripts.profile, [this.ctx.keys.profiles()], [name, config])) as unknown as string | null;
      if (before !== null && before !== config) {
        const what = name.replace(':', ' ');
        const message = `configuration drift on ${what}: this process has ${config}, another process sharing this Redis registered ${before}`;
        this.ctx.listener.warn?.(message, new TaskvalveError(ErrorCode.INVALID_CONFIG, message));
      }
    }
    this.start();
  }

  /** Counts this process among the live ones now, and tells how many there are. */
  async refresh(): Promise<number> {
    this.processes = Math.max(1, Number(await this.ctx.calls.run(scripts.presence, [this.ctx.keys.processes()], [this.id, PRESENCE_TTL_MS, '+0'])));
    this.counted = true;
    return this.processes;
  }

  /** Stops the background presence. */
  stop(): void {
    if (this.timer !== undefined) clearInterval(this.timer);
    this.timer = undefined;
  }

  /** Keeps this process counted among the live ones, every few seconds, in the background. */
  private start(): void {
    if (this.timer !== undefined) return;
    const beat = (): void => {
      this.refresh().catch(() => {});
    };
    beat();
    this.timer = setInterval(beat, PRESENCE_TTL_MS / 3);
    this.timer.unref();
  }
}
