/**
 * Prometheus metrics, registered in one place. Decisions count in plain numbers on a per-profile
 * record; prom-client reads them at scrape time (`collect`), so the hot path pays an increment.
 */
import { Counter, Gauge, type Registry } from 'prom-client';
import { invalidConfig } from './errors.js';
import { STATE_NAMES } from './task/lifecycle.js';

/** How a task that ran ended. */
export type Outcome = 'success' | 'failed' | 'timeout' | 'crashed' | 'aborted' | 'invalid';

const SECONDS = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60];

/** One histogram series counted in plain numbers: observing is a loop over a few buckets. */
export class Buckets {
  /** Non-cumulative counts; the last one is +Inf. */
  readonly counts = new Float64Array(SECONDS.length + 1);
  sum = 0;
  count = 0;

  observe(seconds: number): void {
    let i = 0;
    while (i < SECONDS.length && seconds > SECONDS[i]!) i++;
    this.counts[i]!++;
    this.sum += seconds;
    this.count++;
  }
}

/** Why a submission or check was turned away. */
export type RejectReason =
  | 'invalid_argument'
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
  /** @param profile The profile's name. */
  constructor(readonly profile: string) {}

  submitted = 0;
  /** Rejections by reason (the error code in lower case). */
  readonly rejected: Record<RejectReason, number> = {
    invalid_argument: 0,
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
  /** Transitions by from * 8 + to (the lifecycle's state numbers). */
  readonly transitions = new Float64Array(64);
  /** Events that reached a task already in a terminal state (a worker's answer after a timeout, ...). */
  lateEvents = 0;
  /** Inline runs left running past their timeout or abort (they no longer hold a slot). */
  abandoned = 0;
  readonly subscriptionEvents = new Map<string, number>();
  /** Read at scrape time. */
  queueDepth: () => number = () => 0;
  running: () => number = () => 0;

  /** Seconds from admission to the first start. */
  readonly wait = new Buckets();
  /** Seconds of each attempt's run. */
  readonly run = new Buckets();

  subscriptionEvent(event: string): void {
    this.subscriptionEvents.set(event, (this.subscriptionEvents.get(event) ?? 0) + 1);
  }
}

/**
 * A histogram with a `profile` label whose series are plain {@link Buckets}, read at scrape
 * time: prom-client's own histogram re-hashes its labels at every observation.
 */
class ProfileHistogram {
  readonly type = 'histogram';
  readonly aggregator = 'sum';
  readonly labelNames = ['profile'];

  constructor(
    readonly name: string,
    readonly help: string,
    private readonly series: (s: ProfileStats) => Buckets,
    private readonly profiles: Map<string, ProfileStats>,
  ) {}

  get(): { name: string; help: string; type: string; aggregator: string; values: { labels: Record<string, string | number>; value: number; metricName: string }[] } {
    const values = [];
    for (const [profile, stats] of this.profiles) {
      const b = this.series(stats);
      let cumulative = 0;
      for (let i = 0; i <= SECONDS.length; i++) {
        cumulative += b.counts[i]!;
        values.push({ labels: { profile, le: i < SECONDS.length ? SECONDS[i]! : '+Inf' }, value: cumulative, metricName: `${this.name}_bucket` });
      }
      values.push({ labels: { profile }, value: b.sum, metricName: `${this.name}_sum` });
      values.push({ labels: { profile }, value: b.count, metricName: `${this.name}_count` });
    }
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values };
  }

  /** Series are owned by the profiles' stats: a registry reset leaves them be. */
  reset(): void {}
}

/** The series of one manager, in its registry. */
export class Metrics {
  private readonly profiles = new Map<string, ProfileStats>();
  private readonly names: string[] = [];
  /** The HTTP edge's decisions: per profile ('' when none is known), counts by outcome. */
  private readonly httpOutcomes = new Map<string, Map<string, number>>();

  /** Registers every series; INVALID_CONFIG if the registry already has one of these names (another live manager). */
  constructor(
    private readonly registry: Registry,
    prefix: string,
  ) {
    const profiles = this.profiles;
    const registers = [registry];
    const clash = registry.getSingleMetric(`${prefix}tasks_submitted_total`);
    if (clash !== undefined) {
      throw invalidConfig('Manager', 'registry', `a registry holding ${prefix}tasks_submitted_total`, `a registry no live manager with metricsPrefix ${JSON.stringify(prefix)} uses (close the other manager, or give another metricsPrefix)`);
    }
    const counter = (name: string, help: string, labelNames: string[], fill: (c: Counter<string>) => void): void => {
      this.names.push(prefix + name);
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
    counter('task_transitions_total', 'Task lifecycle transitions, by state left and state entered.', ['profile', 'from', 'to'], (c) => {
      for (const [profile, s] of profiles) {
        for (let i = 0; i < 64; i++) {
          const n = s.transitions[i]!;
          if (n > 0) c.inc({ profile, from: STATE_NAMES[i >> 3]!, to: STATE_NAMES[i & 7]! }, n);
        }
      }
    });
    counter('task_late_events_total', 'Answers and aborts that reached a task already ended; they changed nothing.', ['profile'], (c) => {
      for (const [profile, s] of profiles) c.inc({ profile }, s.lateEvents);
    });
    counter('tasks_abandoned_total', 'Inline runs left running past their timeout or abort, holding no slot.', ['profile'], (c) => {
      for (const [profile, s] of profiles) c.inc({ profile }, s.abandoned);
    });
    const http = this.httpOutcomes;
    counter('http_requests_total', "HTTP edge decisions, by outcome ('allowed' or the refusal's reason).", ['profile', 'outcome'], (c) => {
      for (const [profile, outcomes] of http) for (const [outcome, n] of outcomes) c.inc({ profile, outcome }, n);
    });
    const gauge = (name: string, help: string, read: (s: ProfileStats) => number): void => {
      this.names.push(prefix + name);
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
    const histogram = (name: string, help: string, series: (s: ProfileStats) => Buckets): void => {
      this.names.push(prefix + name);
      registry.registerMetric(new ProfileHistogram(prefix + name, help, series, profiles) as unknown as Parameters<Registry['registerMetric']>[0]);
    };
    histogram('task_wait_seconds', 'Seconds from admission to the start of the first attempt.', (s) => s.wait);
    histogram('task_run_seconds', 'Seconds each attempt ran.', (s) => s.run);
  }

  /** Takes this manager's series out of the registry (close), so that it can be used again. */
  unregister(): void {
    for (const name of this.names) this.registry.removeSingleMetric(name);
  }

  /** The HTTP edge's counts of one profile ('' when none is known), by outcome: the caller increments. */
  httpOutcomesOf(profile: string): Map<string, number> {
    let outcomes = this.httpOutcomes.get(profile);
    if (outcomes === undefined) {
      outcomes = new Map();
      this.httpOutcomes.set(profile, outcomes);
    }
    return outcomes;
  }

  /** The stats of a profile, created once with its label children resolved. */
  profile(name: string): ProfileStats {
    let s = this.profiles.get(name);
    if (s === undefined) {
      s = new ProfileStats(name);
      this.profiles.set(name, s);
    }
    return s;
  }
}
