/**
 * Prometheus metrics, registered in one place. Decisions count in plain numbers on a per-profile
 * record; prom-client reads them at scrape time (`collect`), so the hot path pays an increment.
 */
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';

/** How a task that ran ended. */
export type Outcome = 'success' | 'failed' | 'timeout' | 'crashed' | 'aborted' | 'invalid';

/** Why a submission or check was turned away. */
export type RejectReason =
  | 'invalid_argument'
  | 'subscription_not_found'
  | 'subscription_inactive'
  | 'subscription_expired'
  | 'subscription_not_started'
  | 'quota_exceeded'
  | 'rate_limited'
  | 'queue_full'
  | 'aborted'
  | 'shutting_down'
  | 'store_unavailable';

/** Plain counters of one profile, read at scrape time. */
export class ProfileStats {
  submitted = 0;
  /** Rejections by reason (the error code in lower case). */
  readonly rejected: Record<RejectReason, number> = {
    invalid_argument: 0,
    subscription_not_found: 0,
    subscription_inactive: 0,
    subscription_expired: 0,
    subscription_not_started: 0,
    quota_exceeded: 0,
    rate_limited: 0,
    queue_full: 0,
    aborted: 0,
    shutting_down: 0,
    store_unavailable: 0,
  };
  readonly completed: Record<Outcome, number> = { success: 0, failed: 0, timeout: 0, crashed: 0, aborted: 0, invalid: 0 };
  deadLetters = 0;
  readonly subscriptionEvents = new Map<string, number>();
  /** Read at scrape time. */
  queueDepth: () => number = () => 0;
  running: () => number = () => 0;

  constructor(
    /** Seconds from admission to the first start. */
    readonly wait: { observe(seconds: number): void },
    /** Seconds of each attempt's run. */
    readonly run: { observe(seconds: number): void },
  ) {}

  subscriptionEvent(event: string): void {
    this.subscriptionEvents.set(event, (this.subscriptionEvents.get(event) ?? 0) + 1);
  }
}

const SECONDS = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60];

/** The series of one manager, in its registry. */
export class Metrics {
  private readonly profiles = new Map<string, ProfileStats>();
  private readonly waitSeconds: Histogram<'profile'>;
  private readonly runSeconds: Histogram<'profile'>;

  constructor(registry: Registry, prefix: string) {
    const profiles = this.profiles;
    const registers = [registry];
    const counter = (name: string, help: string, labelNames: string[], fill: (c: Counter<string>) => void): void => {
      new Counter({
        name: prefix + name,
        help,
        labelNames,
        registers,
        collect() {
          this.reset();
          fill(this);
        },
      });
    };
    counter('tasks_submitted_total', 'Tasks submitted (admitted or not).', ['profile'], (c) => {
      for (const [profile, s] of profiles) c.inc({ profile }, s.submitted);
    });
    counter('tasks_rejected_total', 'Submissions and checks rejected, by error code.', ['profile', 'reason'], (c) => {
      for (const [profile, s] of profiles) for (const [reason, n] of Object.entries(s.rejected)) c.inc({ profile, reason }, n);
    });
    counter('tasks_completed_total', 'Task attempts that ran, by outcome.', ['profile', 'outcome'], (c) => {
      for (const [profile, s] of profiles) {
        for (const [outcome, n] of Object.entries(s.completed)) c.inc({ profile, outcome }, n);
      }
    });
    counter('dead_letters_total', 'Tasks moved to the dead-letter queue.', ['profile'], (c) => {
      for (const [profile, s] of profiles) c.inc({ profile }, s.deadLetters);
    });
    counter('subscription_events_total', 'Subscription changes, by event.', ['profile', 'event'], (c) => {
      for (const [profile, s] of profiles) for (const [event, n] of s.subscriptionEvents) c.inc({ profile, event }, n);
    });
    const gauge = (name: string, help: string, read: (s: ProfileStats) => number): void => {
      new Gauge({
        name: prefix + name,
        help,
        labelNames: ['profile'],
        registers,
        collect() {
          this.reset();
          for (const [profile, s] of profiles) this.set({ profile }, read(s));
        },
      });
    };
    gauge('queue_depth', 'Admitted tasks waiting for a thread or a concurrency slot.', (s) => s.queueDepth());
    gauge('tasks_running', 'Tasks running now.', (s) => s.running());
    this.waitSeconds = new Histogram({
      name: `${prefix}task_wait_seconds`,
      help: 'Seconds from admission to the start of the first attempt.',
      labelNames: ['profile'],
      buckets: SECONDS,
      registers,
    });
    this.runSeconds = new Histogram({
      name: `${prefix}task_run_seconds`,
      help: 'Seconds each attempt ran.',
      labelNames: ['profile'],
      buckets: SECONDS,
      registers,
    });
  }

  /** The stats of a profile, created once with its label children resolved. */
  profile(name: string): ProfileStats {
    let s = this.profiles.get(name);
    if (s === undefined) {
      s = new ProfileStats(this.waitSeconds.labels({ profile: name }), this.runSeconds.labels({ profile: name }));
      this.profiles.set(name, s);
    }
    return s;
  }
}
