/**
 * `npm run soak [-- --seconds N] [-- --redis] [-- --rate R] [-- --workers W] [-- --rewrite] [-- --young-default] [-- --rememberedUsers N]`:
 * a steady load held for a set time (3 minutes by
 * default) on the embedded store, or with `--redis` on a RedisStore over an append-only
 * redis-server that the soak starts, kills with SIGKILL halfway through and restarts (under
 * 'fail-closed'), to find what only time shows: leaks, lost promises, double runs, and quota
 * that disagrees with what callers were told.
 *
 *   - about 50,000 decisions per second: 90% check(1), 10% inline submits, 1 in 10,000 a worker
 *     submit (a worker thread that crashes or times out is replaced, which costs milliseconds);
 *   - a rotating population of 100,000 users who subscribe, work, and are deleted or end
 *     (ended subscriptions are swept after `endedRetentionMs`);
 *   - inline and worker tasks that succeed, throw, crash their worker, time out, or are aborted.
 *
 * It reports the achieved load, the event-loop p99 and how busy the main thread was, the cores
 * the process used (all its threads) and the worker threads its pool started, the heap slope over the second half
 * (% of the heap per minute, from a least-squares fit of the heap in use right after each full
 * GC: those V8 makes itself, and one forced every 30 s when run with --expose-gc, so that no
 * forced pause weighs on the event-loop p99), unsettled promises, double runs, dead letters against callers'
 * rejections (a caller told its letter could not be stored, while Redis is away, is counted
 * apart), and quota usage against what callers were told. On Redis it also reports how
 * long service took to come back after the restart, the cores redis-server used before the kill,
 * every error by code, and phantom charges:
 * units Redis holds beyond what callers were told was charged (and the reverse), read for every
 * user after the close (on Redis, retired users are kept, not deleted, so that they can be read).
 */
import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { constants, monitorEventLoopDelay, PerformanceObserver, type NodeGCPerformanceDetail } from 'node:perf_hooks';
import { BroadcastChannel } from 'node:worker_threads';
import { Redis } from 'ioredis';
// The package as an application runs it: the build in dist/ (npm run soak builds it first).
import { Manager, RedisStore, TaskvalveError, type Limiter } from '../dist/index.js';
import { startRedis, type RedisServer } from '../test/support/redis.js';

// Source maps stay off, as for an application running the build: with them, each Error's
// stack, which a dead letter keeps, costs several times as much (a TypeScript loader such as
// tsx turns them on; npm run soak runs this file bundled, as plain JavaScript: soak-run.mjs).
process.setSourceMapsEnabled(false);

const args = process.argv.slice(2);
const flag = (name: string, fallback: number): number => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? Number(args[i + 1]) : fallback;
};
const SECONDS = flag('seconds', 180);
const REDIS = args.includes('--redis');
/** On Redis: let the server rewrite its append-only file as it does by default (see main). */
const REWRITE = args.includes('--rewrite');
const RATE = flag('rate', 50_000);
/** Worker submits per 10,000 decisions (the rest of the submits run inline). */
const WORKERS = flag('workers', 1);
/** RedisStore's overload bounds and rememberedUsers (defaults when absent). */
const STORE_BOUNDS = Object.fromEntries(['maxPending', 'maxDelayMs', 'rememberedUsers'].flatMap((name) => (args.some((a) => a.startsWith(`--${name}`)) ? [[name, flag(name, 0)]] : [])));
const POPULATION = 100_000;
/** The id of the n-th user subscribed: ids repeat no user, and the soak reads them back by number. */
const idOf = (n: number): string => `soak-${n % POPULATION}-${n + 1}`;
/** Users active at once; the rest of the population rotates through. */
const ACTIVE = 10_000;
const TICK_MS = 10;

/** CPU seconds a process has used (Linux: user + system, from /proc); undefined elsewhere. */
const cpuSecondsOf = (pid: number): number | undefined => {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The fields after the command name (in parentheses): utime and stime are the 12th and 13th, in ticks of 1/100 s.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) / 100;
  } catch {
    return undefined;
  }
};

const log = (line: string): void => {
  process.stderr.write(`${line}\n`);
};

interface UserState {
  id: string;
  /** Its number: the n-th user subscribed (its id is made from it). */
  n: number;
  limiter: Limiter;
  /** Units callers were told were charged (checks allowed + tasks that started). */
  told: number;
  /** Calls of this user not answered yet. */
  inFlight: number;
  /** Subscribed with an end: it expires (and is swept) instead of being deleted. */
  ends: boolean;
  /** Its answers' handlers, made once (a check, most of the load, allocates none of its own): an answer that charged its unit, an error answer of a call that started nothing. */
  charged: () => void;
  failedUnstarted: (error: unknown) => void;
}

async function main(): Promise<void> {
  // The server rewrites its append-only file once the file has grown by 256 MB rather than
  // Redis's default 64 MB (every write is still synced to it before its reply): this load
  // appends about 14 MB a second, and with the default Redis forks a rewrite of the whole
  // dataset every 4 to 5 seconds, about a fifth of one of the 2 cores that the soak and its
  // server share here. A restart then replays at most about 256 MB (143 MB replay in 0.9 s
  // here). --rewrite keeps Redis's default.
  const server: RedisServer | undefined = REDIS ? await startRedis({ appendonly: true, extraArgs: REWRITE ? [] : ['--auto-aof-rewrite-min-size', '256mb'] }) : undefined;
  // While the restarted server loads its file, ioredis asks again after Redis's estimate of the
  // time left, up to 10 s by default; early in a load the estimate runs far over (see
  // docs/redis.md, "Production settings"). A quarter of a second, as production clients should.
  const client = server === undefined ? undefined : new Redis({ port: server.port, maxLoadingRetryTime: 250 });
  // The kill resets the connection: the store reports what it means; the client's own event is expected.
  client?.on('error', () => {});
  const store = client === undefined ? undefined : new RedisStore({ client, ...STORE_BOUNDS });
  const manager = new Manager({ endedRetentionMs: 2000, ...(store === undefined ? {} : { store, onStoreUnavailable: 'fail-closed' as const }) });
  manager.registerProfile('soak', {
    rate: { limit: 1_000_000, intervalMs: 1000 },
    quota: { limit: 1_000_000_000 },
    pool: { filename: new URL('./soak-worker.mjs', import.meta.url), maxThreads: 2, taskTimeoutMs: 50, maxQueue: 2000 },
    retry: { attempts: 2, baseMs: 5, maxMs: 20 },
    dlq: { maxEntries: 1000, retentionMs: 5000 },
  });
  let deadLetters = 0;
  manager.on('dead-letter', () => deadLetters++);
  // Worker threads the pool started (soak-worker.mjs says so as each thread loads it).
  let threadsStarted = 0;
  const threads = new BroadcastChannel('taskvalve-soak-threads');
  threads.onmessage = () => threadsStarted++;
  threads.unref();
  manager.on('error', () => {});

  const counts = { issued: 0, settled: 0, decisions: 0, failedFinal: 0, lettersNotStored: 0, doubleRuns: 0, quotaMismatch: 0, usersChecked: 0, rotated: 0, shed: 0 };
  const errors: Record<string, number> = {};
  /** Decisions shed for overload, by the bound that shed them (RedisStore maxPending, maxDelayMs). */
  const shedBy: Record<string, number> = {};
  /** Subscribes of the rotation that failed, by code (the user they would have replaced stays). */
  const rotationErrors: Record<string, number> = {};
  /** Answers that were not errors, per tenth of a second of the run (to see service come back). */
  const served: number[] = [];
  /**
   * On Redis: what the callers of each retired user were told was charged, by user number (-1: no
   * such user), read back against Redis after the close. Kept in typed arrays, outside the JS
   * heap, so that the heap slope shows the library's memory, not the soak's read-back list
   * (about 1,750 users retire a second). A user retired with calls in flight is kept whole until
   * the close: its callers are still being told.
   */
  const toldChunks: Int32Array[] = [];
  const TOLD_CHUNK = 1 << 16;
  const recordTold = (n: number, told: number): void => {
    const c = Math.floor(n / TOLD_CHUNK);
    while (toldChunks.length <= c) toldChunks.push(new Int32Array(TOLD_CHUNK).fill(-1));
    toldChunks[c]![n % TOLD_CHUNK] = told;
  };
  const retiredBusy: UserState[] = [];
  const users: UserState[] = [];
  let next = 0;
  const subscribe = async (): Promise<UserState> => {
    const n = next++;
    const id = idOf(n);
    // On Redis every user is kept to be read back at the end, so none ends (and is swept).
    const ends = !REDIS && next % 2 === 0;
    await manager.subscribe(id, 'soak', ends ? { durationMs: 4000 } : {});
    const u: UserState = { id, n, limiter: manager.getLimiter(id), told: 0, inFlight: 0, ends, charged: () => {}, failedUnstarted: () => {} };
    u.charged = () => succeeded(u);
    u.failedUnstarted = (error) => failed(u, error, false);
    return u;
  };
  for (let i = 0; i < ACTIVE; i += 500) users.push(...(await Promise.all(Array.from({ length: Math.min(500, ACTIVE - i) }, subscribe))));
  let t0 = performance.now();

  /** Retires a user once nothing of theirs is in flight: usage must equal what callers were told. */
  const retire = async (u: UserState): Promise<void> => {
    if (REDIS) {
      // What is read back at the end: its id and what its callers were told. The soak retires
      // about 1,750 users a second, so it keeps no more of one (its handle, its handlers) unless a
      // call of it is still in flight (it took the load until its successor was subscribed).
      if (u.inFlight === 0) recordTold(u.n, u.told);
      else retiredBusy.push(u);
      counts.rotated++;
      return;
    }
    const sub = await manager.getSubscription(u.id);
    if (sub !== undefined && sub.status === 'active') {
      counts.usersChecked++;
      if (sub.usage !== u.told) counts.quotaMismatch++;
    }
    if (!u.ends) await manager.deleteSubscription(u.id);
    counts.rotated++;
  };

  /** An answer that is not an error: its unit was charged. */
  const succeeded = (u: UserState): void => {
    u.told++;
    counts.settled++;
    u.inFlight--;
    const tenth = Math.floor((performance.now() - t0) / 100);
    served[tenth] = (served[tenth] ?? 0) + 1;
  };
  /** An error answer; `started`: the call's task started, so it was charged. */
  const failed = (u: UserState, error: unknown, started: boolean): void => {
    const code = error instanceof TaskvalveError ? error.code : 'UNKNOWN';
    errors[code] = (errors[code] ?? 0) + 1;
    if (code === 'STORE_UNAVAILABLE' && (error as Error).message.includes('overloaded')) {
      counts.shed++;
      const bound = /RedisStore (\w+)/.exec((error as Error).message)?.[1] ?? 'unknown';
      shedBy[bound] = (shedBy[bound] ?? 0) + 1;
    }
    if (code === 'TASK_FAILED' || code === 'TASK_TIMEOUT' || code === 'WORKER_CRASHED') {
      counts.failedFinal++;
      // Its caller was told the letter could not be stored (Redis away): no 'dead-letter' event.
      if ((error as Error).message.includes('its dead letter was not stored')) counts.lettersNotStored++;
    }
    if (started) u.told++;
    counts.settled++;
    u.inFlight--;
  };

  const track = (u: UserState, call: Promise<unknown>, onError: (error: unknown) => void): void => {
    counts.issued++;
    u.inFlight++;
    call.then(u.charged, onError);
  };

  const WORKER_TASKS = ['ok', 'fail', 'crash', 'spin'] as const;
  let workerSubmits = 0;
  const issue = (u: UserState, i: number): void => {
    const kind = i % 10_000;
    counts.decisions++;
    if (kind < 9000) {
      track(u, u.limiter.check(1), u.failedUnstarted);
      return;
    }
    if (kind < 10_000 - WORKERS) {
      // Inline: succeed, throw, time out (ignoring its signal), or be aborted while it runs.
      let runs = 0;
      let answered = false;
      const mode = i % 4;
      const aborter = mode === 3 ? new AbortController() : undefined;
      const call = u.limiter.submit(
        ({ signal }) => {
          runs++;
          if (answered) counts.doubleRuns++;
          if (mode === 1) throw new Error('planned');
          // Ignores its signal: it is abandoned at its timeout (or its abort) and ends later.
          if (mode === 2 || mode === 3) return new Promise((resolve) => setTimeout(resolve, signal.aborted ? 80 : 80));
          return 1;
        },
        { timeoutMs: 40, ...(aborter === undefined ? {} : { signal: aborter.signal }) },
      );
      if (aborter !== undefined) setTimeout(() => aborter.abort(), 10);
      void call.then(() => (answered = true), () => (answered = true));
      track(u, call, (error) => failed(u, error, runs > 0));
      return;
    }
    // The kinds in turn (i itself is the same modulo 4 for every worker submit when W is 1).
    const name = WORKER_TASKS[workerSubmits++ % WORKER_TASKS.length]!;
    // The worker marks here that it started (shared memory): a task that started is charged,
    // whatever its caller is told (a task abandoned at close is told SHUTTING_DOWN).
    const started = new Int32Array(new SharedArrayBuffer(4));
    const call = u.limiter.submit({ name, payload: { ms: 200, started } });
    track(u, call, (error) => failed(u, error, Atomics.load(started, 0) === 1));
  };

  const loop = monitorEventLoopDelay({ resolution: 10 });
  loop.enable();
  // The same, second by second: where in the run the loop fell behind (the kill, a cold start).
  const secondLoop = monitorEventLoopDelay({ resolution: 10 });
  secondLoop.enable();
  const lagBySecond: number[] = [];
  const heap: Array<[number, number]> = [];
  // The heap in use right after each full GC: what is live, not garbage waiting.
  const gcs = new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) {
      if (((entry as { detail?: NodeGCPerformanceDetail }).detail)?.kind === constants.NODE_PERFORMANCE_GC_MAJOR) {
        heap.push([(performance.now() - t0) / 60_000, process.memoryUsage().heapUsed]);
      }
    }
  });
  gcs.observe({ entryTypes: ['gc'] });
  let lastForcedGc = performance.now();
  t0 = performance.now();
  const busy0 = performance.eventLoopUtilization();
  // What the machine's cores went to before the kill: this process (all its threads), and redis-server.
  const cpu0 = process.cpuUsage();
  const redisCpu0 = server === undefined ? undefined : cpuSecondsOf(server.pid);
  let cpuBeforeKill: { process: number; redis: number | undefined; seconds: number; threads: number } | undefined;
  let killedAt = -1;
  /** Decisions shed for overload before the kill (after it, every call fails while Redis is away). */
  let shedBeforeKill = 0;
  let restartedAt = -1;
  let lastProgress = t0;
  let i = 0;
  /** Slots whose user is being replaced (its successor's subscribe is in flight). */
  const rotating = new Set<number>();
  while (performance.now() - t0 < SECONDS * 1000) {
    const elapsed = performance.now() - t0;
    if (server !== undefined && killedAt < 0 && elapsed >= (SECONDS * 1000) / 2) {
      killedAt = elapsed;
      shedBeforeKill = counts.shed;
      const used = process.cpuUsage(cpu0);
      const redisCpu = cpuSecondsOf(server.pid);
      cpuBeforeKill = {
        process: (used.user + used.system) / 1e6,
        redis: redisCpu === undefined || redisCpu0 === undefined ? undefined : redisCpu - redisCpu0,
        seconds: elapsed / 1000,
        threads: threadsStarted,
      };
      log(`\nkill -9 of redis-server (pid ${server.pid}) at ${(elapsed / 1000).toFixed(1)} s`);
      await server.kill();
      // Restarted in the background: the load goes on meanwhile.
      void server.restart().then(() => {
        restartedAt = performance.now() - t0;
        log(`\nredis-server back (pid ${server.pid}) at ${(restartedAt / 1000).toFixed(1)} s`);
      });
    }
    const due = Math.floor((elapsed / 1000) * RATE);
    while (i < due) {
      const slot = i % ACTIVE;
      issue(users[slot]!, i);
      i++;
    }
    // Rotate: a user with nothing in flight retires and a new one takes its place, once
    // subscribed. The load does not wait for it (on Redis a subscribe is a round trip): the old
    // user takes the load meanwhile, and at most 40 rotations are under way at once.
    for (let r = 0; r < 40 && rotating.size < 40; r++) {
      const slot = (i + r * 997) % ACTIVE;
      const u = users[slot]!;
      if (u.inFlight === 0 && !rotating.has(slot)) {
        rotating.add(slot);
        subscribe().then(
          (fresh) => {
            rotating.delete(slot);
            users[slot] = fresh;
            void retire(u);
          },
          (error: unknown) => {
            // During an outage a subscribe fails (STORE_UNAVAILABLE): the user stays and rotates later.
            rotating.delete(slot);
            const code = error instanceof TaskvalveError ? error.code : 'UNKNOWN';
            rotationErrors[code] = (rotationErrors[code] ?? 0) + 1;
          },
        );
      }
    }
    if (performance.now() - lastProgress >= 1000) {
      lastProgress = performance.now();
      lagBySecond.push(secondLoop.percentile(99) / 1e6);
      secondLoop.reset();
      if (performance.now() - lastForcedGc >= 30_000) {
        lastForcedGc = performance.now();
        globalThis.gc?.();
      }
      process.stderr.write(`\r${((performance.now() - t0) / 1000).toFixed(0)} s  ${(counts.decisions / ((performance.now() - t0) / 1000) / 1000).toFixed(1)} k/s  heap ${(process.memoryUsage().heapUsed / 1e6).toFixed(0)} MB  loop p99 ${lagBySecond.at(-1)?.toFixed(0)} ms  in flight ${counts.issued - counts.settled}   `);
    }
    await new Promise((resolve) => setTimeout(resolve, TICK_MS));
  }
  const seconds = (performance.now() - t0) / 1000;
  loop.disable();
  secondLoop.disable();
  gcs.disconnect();
  // The share of the run the main thread was busy (not waiting for I/O): 1 means CPU-bound.
  const busy = performance.eventLoopUtilization(busy0).utilization;
  const used = process.cpuUsage(cpu0);
  const processCpu = (used.user + used.system) / 1e6;
  const threadsDuringLoad = threadsStarted;
  const report = await manager.close({ drain: true, timeoutMs: 10_000 });
  await new Promise((resolve) => setImmediate(resolve));

  let redis: Record<string, unknown> | undefined;
  if (server !== undefined && client !== undefined) {
    // Every retired user, read back on a fresh store: what Redis holds against what callers were told.
    const reader = new Manager({ store: new RedisStore({ client }) });
    reader.registerProfile('soak', { rate: { limit: 1_000_000, intervalMs: 1000 }, quota: { limit: 1_000_000_000 } });
    for (const u of [...retiredBusy, ...users]) recordTold(u.n, u.told);
    let phantom = 0;
    let missing = 0;
    let mismatched = 0;
    let readBack = 0;
    for (let k = 0; k < next; k += 1000) {
      const part: Array<{ id: string; told: number }> = [];
      for (let n = k; n < Math.min(next, k + 1000); n++) {
        const told = toldChunks[Math.floor(n / TOLD_CHUNK)]?.[n % TOLD_CHUNK] ?? -1;
        // -1: a subscribe that failed (during the outage): no user took that number.
        if (told >= 0) part.push({ id: idOf(n), told });
      }
      readBack += part.length;
      const subs = await Promise.all(part.map((u) => reader.getSubscription(u.id)));
      part.forEach((u, j) => {
        const usage = subs[j]?.usage ?? 0;
        if (usage > u.told) phantom += usage - u.told;
        if (usage < u.told) missing += u.told - usage;
        if (usage !== u.told) mismatched++;
      });
    }
    await reader.close();
    // Back to service: the first second-long window that starts after the restart (to the tenth
    // of a second) whose answers reach 90% of the mean second before the kill (the first second
    // left out: the load starts cold). Reported from the restart to the window's start.
    const answersIn = (from: number, to: number): number => {
      let sum = 0;
      for (let k = from; k < to; k++) sum += served[k] ?? 0;
      return sum;
    };
    const killTenth = Math.floor(killedAt / 100);
    const before = answersIn(10, killTenth) / Math.max(0.1, (killTenth - 10) / 10);
    let back = -1;
    for (let k = Math.ceil(restartedAt / 100); restartedAt >= 0 && k + 10 <= served.length; k++) {
      if (answersIn(k, k + 10) >= 0.9 * before) {
        back = k;
        break;
      }
    }
    redis = {
      killedAtSeconds: Number((killedAt / 1000).toFixed(1)),
      restartedAtSeconds: Number((restartedAt / 1000).toFixed(1)),
      serviceBackSecondsAfterRestart: back < 0 ? null : Number((back / 10 - restartedAt / 1000).toFixed(1)),
      answersPerSecondBeforeKill: Math.round(before),
      // Before the kill: the cores this process and redis-server used, and worker threads started per second.
      ...(cpuBeforeKill === undefined
        ? {}
        : {
            processCpuCoresBeforeKill: Number((cpuBeforeKill.process / cpuBeforeKill.seconds).toFixed(2)),
            ...(cpuBeforeKill.redis === undefined ? {} : { redisCpuCoresBeforeKill: Number((cpuBeforeKill.redis / cpuBeforeKill.seconds).toFixed(2)) }),
            workerThreadsStartedPerSecondBeforeKill: Number((cpuBeforeKill.threads / cpuBeforeKill.seconds).toFixed(1)),
          }),
      shedForOverloadBeforeKill: shedBeforeKill,
      usersReadBack: readBack,
      phantomUnits: phantom,
      unchargedUnits: missing,
      usersMismatched: mismatched,
    };
    client.disconnect();
    await server.stop();
  }

  const half = heap.slice(Math.floor(heap.length / 2));
  const n = half.length;
  const mx = half.reduce((a, [x]) => a + x, 0) / n;
  const my = half.reduce((a, [, y]) => a + y, 0) / n;
  const slope = half.reduce((a, [x, y]) => a + (x - mx) * (y - my), 0) / Math.max(1e-9, half.reduce((a, [x]) => a + (x - mx) ** 2, 0));
  log('');
  const mb = (b: number): number => Math.round(b / 1e5) / 10;
  const out = {
    heapSamplesMB: heap.filter((_, k) => k % Math.max(1, Math.ceil(heap.length / 12)) === 0).map(([, y]) => mb(y)),
    seconds: Math.round(seconds),
    decisionsPerSecond: Math.round(counts.decisions / seconds),
    eventLoopP99Ms: Number((loop.percentile(99) / 1e6).toFixed(1)),
    /** Seconds of the run whose own event-loop p99 passed 50 ms, and the five worst (second: ms). */
    secondsOver50Ms: lagBySecond.filter((ms) => ms > 50).length,
    worstSeconds: Object.fromEntries(
      lagBySecond
        .map((ms, k) => [k + 1, Math.round(ms)] as const)
        .sort((a, b) => b[1] - a[1])
        .slice(0, 5),
    ),
    eventLoopBusy: Number(busy.toFixed(3)),
    /** The cores this process used (all its threads: main, GC, worker threads), of the machine's. */
    processCpuCores: Number((processCpu / seconds).toFixed(2)),
    machineCores: availableParallelism(),
    /** Worker threads the pool started during the load (a crash or a timeout costs a new one). */
    workerThreadsStarted: threadsDuringLoad,
    heapSlopePercentPerMinute: Number(((100 * slope) / my).toFixed(2)),
    heapMeanMB: Number((my / 1e6).toFixed(1)),
    unsettled: counts.issued - counts.settled,
    doubleRuns: counts.doubleRuns,
    deadLetters,
    finalFailures: counts.failedFinal,
    lettersNotStored: counts.lettersNotStored,
    usersChecked: counts.usersChecked,
    quotaMismatches: counts.quotaMismatch,
    usersRotated: counts.rotated,
    errorsByCode: errors,
    /** Of the STORE_UNAVAILABLE answers, those shed for overload (RedisStore maxPending, maxDelayMs). */
    shedForOverload: counts.shed,
    shedByBound: shedBy,
    rotationErrorsByCode: rotationErrors,
    close: report,
    ...(redis === undefined ? {} : { redis }),
  };
  threads.close();
  process.stdout.write(`${JSON.stringify(out, null, 2)}\n`);
}

await main();
