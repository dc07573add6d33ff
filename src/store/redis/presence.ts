/**
 * This process among the others sharing one Redis: its profiles' configurations, recorded so
 * that processes configured differently are warned about, and its presence, counted so that the
 * 'local' outage policy gives each live process its share of every limit.
 *
 * Both start when a profile is registered, whether Redis can be reached then or not: what could
 * not be recorded is recorded by the next beat that reaches Redis. A beat runs every few
 * seconds, and at once whenever a client (re)connects.
 */
import { randomUUID } from 'node:crypto';
import { ErrorCode, TaskvalveError } from '../../errors.js';
import type { Profile } from '../../profile.js';
import type { Context } from './context.js';
import { scripts } from './scripts.js';

/** A process not heard from for this long no longer counts for the 'local' policy's share. */
const PRESENCE_TTL_MS = 15_000;

/** What presence needs of a client beyond scripts: ioredis's connection events. */
interface Connecting {
  on(event: 'ready', listener: () => void): unknown;
  off(event: 'ready', listener: () => void): unknown;
}

function connecting(client: unknown): client is Connecting {
  return typeof (client as Partial<Connecting>).on === 'function' && typeof (client as Partial<Connecting>).off === 'function';
}

export class Presence {
  /** The live processes sharing this Redis, this one included, as last counted. */
  processes = 1;
  /** Whether this process has counted them at least once ('local' decides nothing before). */
  counted = false;
  /** This process, among the live ones. */
  private readonly id = randomUUID();
  private timer: NodeJS.Timeout | undefined = undefined;
  /** Configurations not recorded in Redis yet, by record name ('profile:<name>', 'bucket:<name>'). */
  private readonly unrecorded = new Map<string, string>();
  private beating = false;
  /** Set by {@link Presence.stop}: no call of presence's own starts after it. */
  private stopped = false;
  /** Presence's own calls that may still be running (a record, a beat). */
  private readonly running = new Set<Promise<unknown>>();
  private readonly onReady = (): void => this.beat();

  constructor(private readonly ctx: Context) {}

  /**
   * Records a profile's configuration (and its shared bucket's) in Redis, warning of another
   * process's different one, both named; and keeps this process counted among the live ones
   * from now on. Rejects when Redis cannot be reached: the configuration is then recorded, and
   * this process counted, once it can.
   */
  async define(profile: Profile): Promise<void> {
    const rate = { limit: profile.rate.limit, intervalMs: profile.rate.intervalMs, burst: profile.rate.burst };
    this.unrecorded.set(`profile:${profile.name}`, JSON.stringify({ rate: { ...rate, shared: profile.shared ?? null, onLimit: profile.onLimit }, quota: profile.quotaLimit, periodMs: profile.quotaPeriodMs, hard: profile.quotaHard }));
    if (profile.shared !== undefined) this.unrecorded.set(`bucket:${profile.shared}`, JSON.stringify(rate));
    if (this.stopped) return;
    this.start();
    await this.track(this.record());
  }

  /** Counts this process among the live ones now, and tells how many there are. */
  async refresh(): Promise<number> {
    this.processes = Math.max(1, Number(await this.ctx.calls.run(scripts.presence, [this.ctx.keys.processes()], [this.id, PRESENCE_TTL_MS, '+0'])));
    this.counted = true;
    return this.processes;
  }

  /**
   * Stops the background presence: no call of its own starts from now on. Resolves once those
   * already running have ended, or after `ms`, whichever is first; so that a caller can quit the
   * client without a command of presence's written after its QUIT.
   */
  async stop(ms: number): Promise<void> {
    this.stopped = true;
    if (this.timer !== undefined) clearInterval(this.timer);
    this.timer = undefined;
    for (const client of this.ctx.calls.clients) if (connecting(client)) client.off('ready', this.onReady);
    if (this.running.size === 0) return;
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([Promise.allSettled([...this.running]), new Promise<void>((resolve) => (timer = setTimeout(resolve, ms)))]);
    clearTimeout(timer);
  }

  /** Counts `call` among presence's calls running until it ends. */
  private track<T>(call: Promise<T>): Promise<T> {
    this.running.add(call);
    const done = (): void => void this.running.delete(call);
    call.then(done, done);
    return call;
  }

  /** Records the configurations not recorded yet, warning of drift. */
  private async record(): Promise<void> {
    for (const [name, config] of [...this.unrecorded]) {
      if (this.stopped) return;
      const before = (await this.ctx.calls.run(scripts.profile, [this.ctx.keys.profiles()], [name, config])) as unknown as string | null;
      // Recorded (unless registered anew meanwhile: that one goes next).
      if (this.unrecorded.get(name) === config) this.unrecorded.delete(name);
      if (before !== null && before !== config) {
        const what = name.replace(':', ' ');
        const message = `configuration drift on ${what}: this process has ${config}, another process sharing this Redis registered ${before}`;
        this.ctx.listener.warn?.(message, new TaskvalveError(ErrorCode.INVALID_CONFIG, message));
      }
    }
  }

  /** One beat: what is not recorded yet, then this process's presence. Failures wait for the next beat. */
  private beat(): void {
    if (this.beating || this.stopped) return;
    this.beating = true;
    this.track(
      (async () => {
        if (this.unrecorded.size > 0) await this.record();
        if (!this.stopped) await this.refresh();
      })(),
    )
      .catch(() => {})
      .finally(() => {
        this.beating = false;
      });
  }

  /** Keeps this process counted among the live ones: every few seconds, and whenever a client (re)connects. */
  private start(): void {
    if (this.timer !== undefined) return;
    this.timer = setInterval(this.onReady, PRESENCE_TTL_MS / 3);
    this.timer.unref();
    for (const client of this.ctx.calls.clients) if (connecting(client)) client.on('ready', this.onReady);
    this.track(this.refresh()).catch(() => {});
  }
}
