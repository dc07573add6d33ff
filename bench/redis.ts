/**
 * The Redis section: taskvalve's RedisStore against rate-limiter-flexible's RateLimiterRedis and
 * a bare one-decision GCRA script, all on one private local redis-server started here.
 *
 *   npx tsx bench/redis.ts          (or: npm run bench -- redis)
 *
 *   1. decisions per second at 256 in flight (a pool of 256 loops, each awaiting its call) over
 *      10,000 keys: taskvalve `manager.getLimiter(user).check(1)` (dedicated buckets, allowed and
 *      denied), RLF `RateLimiterRedis.consume(key)`, the bare script by EVALSHA, and a prototype
 *      of the bare script micro-batched (one EVALSHA per event-loop turn);
 *   2. exactness under that load: one key of burst B with no refill, hit from two clients (two
 *      Managers, as two processes would) mixed with other users' checks: exactly B admitted;
 *   3. latency with one call in flight: p50/p99 of check(1) against a bare PING on the same client;
 *   4. where a decision's time goes: round trips, script µs (INFO commandstats), server and
 *      client CPU, bytes each way;
 *   5. server ceilings from redis-benchmark -P 16 (informative);
 *   6. on a private 3-master Redis Cluster: allowed checks at 256 in flight over 10,000 users,
 *      taskvalve against RateLimiterRedis on the same cluster, and decisions per script call;
 *   7. offered load (bench/redis/offered.ts): 50,000 check(1)/s arriving whatever the answers,
 *      the event loop's p99 meanwhile, and how soon service is back after a kill -9 of Redis.
 *
 * Each system has its own ioredis connection (default options); only one is busy at a time.
 * Progress goes to stderr; stdout gets the tables, the environment and the run time.
 */
import { availableParallelism, cpus } from 'node:os';
import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';
import { Cluster, Redis } from 'ioredis';
import { RateLimiterRedis, RateLimiterRes } from 'rate-limiter-flexible';
import { Manager, RedisStore, type Decision } from '../src/index.js';
import { rawCommand, startCluster, startRedis, type RedisServer } from '../test/support/redis.js';
import { loadBare, MicroBatcher } from './redis/bare.js';
import { offeredSection } from './redis/offered.js';
import { profile, redisBenchmark, type Profile } from './redis/server.js';
import { compare, expect, fmtRate, keyOrder, type Bench, type Plan } from './lib/harness.js';
import { atLeast, heading, renderTable, type Row } from './lib/table.js';

const USERS = 10_000;
const WIDTH = 256;
const ORDER = 1 << 16;
const MASK = ORDER - 1;
/** Micro-batch caps of the prototype rows. */
const BATCHES = [16, 64, 256] as const;
/** Allowed: more than any run can spend. Denied: 1 per hour, spent before timing. */
const OPEN = { limit: 1_000_000, intervalMs: 1000 } as const;
const CLOSED = { limit: 1, intervalMs: 3_600_000 } as const;
/** Exactness: a burst of B, refilling one unit a day (none during the run). */
const B = 1000;
const HOT_CHECKS = 20_000;
const EXACT = { limit: 1, intervalMs: 86_400_000, burst: B } as const;
const SAMPLES = 20_000;
const PROFILE_OPS = 40_000;
/** More users than the Manager's handle cache holds (10,000): handles are rebuilt as they are used. */
const WIDE_USERS = 20_000;
const TARGET_RLF = 2.0;
const TARGET_P99 = 1.5;

const PLAN: Plan = { rounds: 7, warmup: 1, roundMs: 250, probeOps: 4096 };


/** `width` loops, each awaiting its call, until `total` calls are made; returns how many `ok`. */
async function lanes<T>(total: number, width: number, op: (i: number) => Promise<T>, ok: (r: T) => boolean): Promise<number> {
  let next = 0;
  let yes = 0;
  const lane = async (): Promise<void> => {
    while (next < total) if (ok(await op(next++))) yes++;
  };
  await Promise.all(Array.from({ length: Math.min(width, total) }, lane));
  return yes;
}

const isAllowed = (d: Decision): boolean => d.allowed;
const bareAllowed = (r: number): boolean => r > 0;
const yes = (): true => true;
const isRlfDenial = (error: unknown): false => {
  if (error instanceof RateLimiterRes) return false;
  throw error;
};
const us = (ns: number): string => `${(ns / 1000).toFixed(1)} µs`;
const count = (n: number): string => n.toLocaleString('en-US');

function percentile(sorted: Float64Array, p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]!;
}

async function connect(server: RedisServer): Promise<Redis> {
  const client = new Redis({ host: server.host, port: server.port, lazyConnect: true });
  await client.connect();
  return client;
}

export interface RedisSection {
  rows: Row[];
  /** The per-decision cost table (markdown). */
  profileTable: string;
  redisVersion: string;
}

export async function redisSection(log: (line: string) => void): Promise<RedisSection> {
  const server = await startRedis();
  const clients: Redis[] = [];
  const managers: Manager[] = [];
  try {
    const open = async (): Promise<Redis> => {
      const c = await connect(server);
      clients.push(c);
      return c;
    };
    const [admin, tvClient, tvClient2, rlfClient, rlfClient2, bareClient] = [await open(), await open(), await open(), await open(), await open(), await open()] as const;
    const redisVersion = /redis_version:(\S+)/.exec(await admin.info('server'))?.[1] ?? '?';
    log(`redis-server ${redisVersion} on 127.0.0.1:${server.port} (pid ${server.pid})`);

    const order = keyOrder(USERS);
    const openUsers = Array.from({ length: USERS }, (_, i) => `open-${String(i).padStart(5, '0')}`);
    const closedUsers = Array.from({ length: USERS }, (_, i) => `closed-${String(i).padStart(5, '0')}`);

    // --- taskvalve: two Managers (the handle cache holds 10,000 users each), one client ---
    const manager = (client: Redis): Manager => {
      const m = new Manager({ store: new RedisStore({ client }) });
      managers.push(m);
      return m;
    };
    const tvOpen = manager(tvClient);
    tvOpen.registerProfile('open', { rate: { ...OPEN } });
    const tvClosed = manager(tvClient);
    tvClosed.registerProfile('closed', { rate: { ...CLOSED } });
    log('set-up: subscribing 20,000 users, touching every key ...');
    await lanes(USERS, WIDTH, (i) => tvOpen.subscribe(openUsers[i]!, 'open'), yes);
    await lanes(USERS, WIDTH, (i) => tvClosed.subscribe(closedUsers[i]!, 'closed'), yes);
    expect((await lanes(USERS, WIDTH, (i) => tvOpen.getLimiter(openUsers[i]!).check(1), isAllowed)) === USERS, 'taskvalve open buckets allow');
    expect((await lanes(USERS, WIDTH, (i) => tvClosed.getLimiter(closedUsers[i]!).check(1), isAllowed)) === USERS, 'taskvalve closed buckets allow their first unit');

    // --- rate-limiter-flexible ---
    const rlfOpen = new RateLimiterRedis({ storeClient: rlfClient, useRedisPackage: false, points: 1_000_000_000, duration: 3600, keyPrefix: 'rlf-open' });
    const rlfClosed = new RateLimiterRedis({ storeClient: rlfClient, useRedisPackage: false, points: 1, duration: 3600, keyPrefix: 'rlf-closed' });
    const rlfTry = (limiter: RateLimiterRedis, key: string): Promise<boolean> => limiter.consume(key).then(yes, isRlfDenial);
    expect((await lanes(USERS, WIDTH, (i) => rlfTry(rlfOpen, openUsers[i]!), (ok) => ok)) === USERS, 'RLF open allows');
    expect((await lanes(USERS, WIDTH, (i) => rlfTry(rlfClosed, closedUsers[i]!), (ok) => ok)) === USERS, 'RLF closed allows its first point');

    // --- the bare script: T and tau in µs ---
    const sha = await loadBare(bareClient);
    const bareOpenArgs = ['1', String(1_000_000)];
    const bareClosedArgs = ['3600000000', '3600000000'];
    const openKeys = openUsers.map((u) => `gcra:${u}`);
    const closedKeys = closedUsers.map((u) => `gcra:${u}`);
    const bare = (key: string, args: readonly string[]): Promise<number> => bareClient.evalsha(sha.single, 1, key, ...args) as Promise<number>;
    expect((await lanes(USERS, WIDTH, (i) => bare(openKeys[i]!, bareOpenArgs), bareAllowed)) === USERS, 'bare open allows');
    expect((await lanes(USERS, WIDTH, (i) => bare(closedKeys[i]!, bareClosedArgs), bareAllowed)) === USERS, 'bare closed allows its first unit');
    const batchers = new Map(BATCHES.map((n) => [n, new MicroBatcher(bareClient, sha.batch, bareOpenArgs, n)]));

    // --- 1. throughput ---
    const tally = (name: string, allowed: number, ops: number, wantAllowed: boolean): void =>
      expect(allowed === (wantAllowed ? ops : 0), `${name}: ${allowed} of ${ops} allowed`);
    const bench = (name: string, wantAllowed: boolean, run: (ops: number) => Promise<number>): Bench => ({
      name,
      async run(ops) {
        tally(name, await run(ops), ops, wantAllowed);
      },
    });
    const tvAllowedRun = (ops: number): Promise<number> => lanes(ops, WIDTH, (i) => tvOpen.getLimiter(openUsers[order[i & MASK]!]!).check(1), isAllowed);
    const tvDeniedRun = (ops: number): Promise<number> => lanes(ops, WIDTH, (i) => tvClosed.getLimiter(closedUsers[order[i & MASK]!]!).check(1), isAllowed);
    const rlfAllowedRun = (ops: number): Promise<number> => lanes(ops, WIDTH, (i) => rlfTry(rlfOpen, openUsers[order[i & MASK]!]!), (ok) => ok);
    const bareAllowedRun = (ops: number): Promise<number> => lanes(ops, WIDTH, (i) => bare(openKeys[order[i & MASK]!]!, bareOpenArgs), bareAllowed);
    const batchedRun = (b: MicroBatcher) => (ops: number): Promise<number> => lanes(ops, WIDTH, (i) => b.check(openKeys[order[i & MASK]!]!), bareAllowed);
    const benches: Bench[] = [
      bench('taskvalve allowed', true, tvAllowedRun),
      bench('taskvalve denied', false, tvDeniedRun),
      bench('RLF allowed', true, rlfAllowedRun),
      bench('RLF denied', false, (ops) => lanes(ops, WIDTH, (i) => rlfTry(rlfClosed, closedUsers[order[i & MASK]!]!), (ok) => ok)),
      bench('bare allowed', true, bareAllowedRun),
      bench('bare denied', false, (ops) => lanes(ops, WIDTH, (i) => bare(closedKeys[order[i & MASK]!]!, bareClosedArgs), bareAllowed)),
      ...BATCHES.map((n) => bench(`bare micro-batched ≤${n}`, true, batchedRun(batchers.get(n)!))),
    ];
    log(`decisions at ${WIDTH} in flight, ${count(USERS)} keys each (medians of interleaved rounds):`);
    const m = await compare(benches, PLAN, log);
    const rate = (name: string): number => m.get(name)!.opsPerSec;

    // --- 2. exactness: one hot key from two clients, mixed with other users' checks ---
    log(`exactness: burst ${count(B)}, no refill, ${count(HOT_CHECKS)} checks from 2 clients at ${WIDTH} in flight, mixed with open users:`);
    const exactA = manager(tvClient);
    const exactB = manager(tvClient2);
    exactA.registerProfile('exact', { rate: { ...EXACT } });
    exactB.registerProfile('exact', { rate: { ...EXACT } });
    await exactA.subscribe('hot', 'exact');
    let hotAllowed = 0;
    let t0 = performance.now();
    let otherAllowed = await lanes(
      2 * HOT_CHECKS,
      WIDTH,
      (i): Promise<Decision> => {
        if ((i & 1) === 1) return tvOpen.getLimiter(openUsers[order[i & MASK]!]!).check(1);
        return ((i & 2) === 0 ? exactA : exactB)
          .getLimiter('hot')
          .check(1)
          .then((d) => {
            if (d.allowed) hotAllowed++;
            return { ...d, allowed: false };
          });
      },
      isAllowed,
    );
    const tvExactMs = performance.now() - t0;
    expect(otherAllowed === HOT_CHECKS, `open users all allowed during the exactness run (${otherAllowed})`);
    log(`  taskvalve: ${count(hotAllowed)} of ${count(HOT_CHECKS)} admitted (${fmtRate((2 * HOT_CHECKS * 1000) / tvExactMs)} overall)`);
    const rlfExactA = new RateLimiterRedis({ storeClient: rlfClient, useRedisPackage: false, points: B, duration: 86_400, keyPrefix: 'rlf-exact' });
    const rlfExactB = new RateLimiterRedis({ storeClient: rlfClient2, useRedisPackage: false, points: B, duration: 86_400, keyPrefix: 'rlf-exact' });
    let rlfHot = 0;
    t0 = performance.now();
    otherAllowed = await lanes(
      2 * HOT_CHECKS,
      WIDTH,
      (i): Promise<boolean> => {
        if ((i & 1) === 1) return rlfTry(rlfOpen, openUsers[order[i & MASK]!]!);
        return rlfTry((i & 2) === 0 ? rlfExactA : rlfExactB, 'hot').then((ok) => {
          if (ok) rlfHot++;
          return false;
        });
      },
      (ok) => ok,
    );
    const rlfExactMs = performance.now() - t0;
    expect(otherAllowed === HOT_CHECKS, `RLF open users all allowed during the exactness run (${otherAllowed})`);
    log(`  RLF:       ${count(rlfHot)} of ${count(HOT_CHECKS)} admitted (${fmtRate((2 * HOT_CHECKS * 1000) / rlfExactMs)} overall)`);

    // The EVALSHA one check(1) sends, replayed raw below (latency) and by redis-benchmark.
    const admitCall = await captureAdmit(server, openUsers[0]!);
    if (admitCall !== undefined) await admin.callBuffer('EVALSHA', admitCall); // fails loudly if the replay is wrong

    // --- 3. latency, one in flight, same client; the order rotates every sample ---
    log(`latency: ${count(SAMPLES)} samples each, one in flight, on taskvalve's client:`);
    const latOps: Record<string, (i: number) => Promise<unknown>> = {
      check: (i) => tvOpen.getLimiter(openUsers[order[i & MASK]!]!).check(1),
      ping: () => tvClient.ping(),
      bare: (i) => tvClient.evalsha(sha.single, 1, openKeys[order[i & MASK]!]!, ...bareOpenArgs),
      ...(admitCall === undefined ? {} : { raw: () => tvClient.callBuffer('EVALSHA', admitCall) }),
    };
    const latNames = Object.keys(latOps);
    const lat = Object.fromEntries(latNames.map((n) => [n, new Float64Array(SAMPLES)]));
    for (let i = 0; i < 2000; i++) for (const n of latNames) await latOps[n]!(i);
    for (let i = 0; i < SAMPLES; i++) {
      for (let k = 0; k < latNames.length; k++) {
        const n = latNames[(i + k) % latNames.length]!;
        const op = latOps[n]!;
        const s = process.hrtime.bigint();
        await op(i);
        lat[n]![i] = Number(process.hrtime.bigint() - s);
      }
    }
    const p = (a: Float64Array): { p50: number; p99: number } => {
      a.sort();
      return { p50: percentile(a, 0.5), p99: percentile(a, 0.99) };
    };
    const L = Object.fromEntries(latNames.map((n) => [n, p(lat[n]!)])) as Record<'check' | 'ping' | 'bare', { p50: number; p99: number }> & { raw?: { p50: number; p99: number } };
    for (const [name, v] of Object.entries(L)) log(`  ${name.padEnd(6)} p50 ${us(v.p50)}   p99 ${us(v.p99)}`);

    // --- 4. where the time goes: fixed runs with the server's statistics reset ---
    log(`profile: ${count(PROFILE_OPS)} decisions each at ${WIDTH} in flight, INFO commandstats / cpu, socket bytes, process.cpuUsage:`);
    const b64 = batchers.get(64)!;
    const profiled: [string, Profile][] = [];
    const prof = async (name: string, client: Redis, run: () => Promise<unknown>): Promise<void> => {
      const pr = await profile(admin, [client], PROFILE_OPS, async () => {
        await run();
      });
      profiled.push([name, pr]);
      log(`  ${name.padEnd(22)} ${fmtRate(pr.perSec).padStart(10)}  client ${pr.clientCpuUs.toFixed(1)} µs  server ${pr.serverCpuUs.toFixed(1)} µs  script ${pr.scriptUsecPerCall.toFixed(2)} µs/call`);
    };
    await prof('taskvalve allowed', tvClient, () => tvAllowedRun(PROFILE_OPS));
    await prof('taskvalve denied', tvClient, () => tvDeniedRun(PROFILE_OPS));
    const tvWide = manager(tvClient);
    tvWide.registerProfile('wide', { rate: { ...OPEN } });
    const wideUsers = Array.from({ length: WIDE_USERS }, (_, i) => `wide-${String(i).padStart(5, '0')}`);
    await lanes(WIDE_USERS, WIDTH, (i) => tvWide.subscribe(wideUsers[i]!, 'wide'), yes);
    // 7919 is prime, so i * 7919 mod 20,000 visits every user in a scattered order.
    await prof(`taskvalve allowed, ${WIDE_USERS / 1000}k users`, tvClient, () =>
      lanes(PROFILE_OPS, WIDTH, (i) => tvWide.getLimiter(wideUsers[(i * 7919) % WIDE_USERS]!).check(1), isAllowed).then((n) =>
        expect(n === PROFILE_OPS, `wide users all allowed (${n})`),
      ),
    );
    await prof('RLF allowed', rlfClient, () => rlfAllowedRun(PROFILE_OPS));
    await prof('bare allowed', bareClient, () => bareAllowedRun(PROFILE_OPS));
    await prof('bare micro-batched ≤64', bareClient, () => batchedRun(b64)(PROFILE_OPS));

    // --- 5. server ceilings (redis-benchmark, informative) ---
    log('server ceilings: redis-benchmark -P 16 (50 connections) ...');
    const rlfSha = (rlfClient as unknown as { scriptsSet?: Record<string, { sha?: string }> }).scriptsSet?.['rlflxIncr']?.sha;
    const ceilings = {
      ping: redisBenchmark(server.port, 500_000, ['-t', 'ping'])?.get('PING_MBULK'),
      admit: admitCall === undefined ? undefined : firstRate(redisBenchmark(server.port, 200_000, ['EVALSHA', ...admitCall])),
      bare: firstRate(redisBenchmark(server.port, 200_000, ['-r', String(USERS), 'EVALSHA', sha.single, '1', 'gcra:rb:__rand_int__', ...bareOpenArgs])),
      rlf: rlfSha === undefined ? undefined : firstRate(redisBenchmark(server.port, 200_000, ['-r', String(USERS), 'EVALSHA', rlfSha, '1', 'rlf-rb:__rand_int__', '1', '3600', '1000000000', '3600'])),
    };
    log(`  ${Object.entries(ceilings).map(([k, v]) => `${k} ${v === undefined ? 'n/a' : fmtRate(v)}`).join('   ')}`);

    // --- rows ---
    const rows: Row[] = [heading(`check(1) on Redis, ${count(USERS)} users, ${WIDTH} in flight, one local redis-server`)];
    for (const outcome of ['allowed', 'denied'] as const) {
      const tv = rate(`taskvalve ${outcome}`);
      rows.push(
        atLeast({ measure: `getLimiter(user).check, ${outcome}, vs RLF`, taskvalve: fmtRate(tv), reference: `RateLimiterRedis ${fmtRate(rate(`RLF ${outcome}`))}`, ratio: tv / rate(`RLF ${outcome}`) }, TARGET_RLF),
        { measure: `getLimiter(user).check, ${outcome}, vs bare script`, taskvalve: fmtRate(tv), reference: `bare GCRA EVALSHA ${fmtRate(rate(`bare ${outcome}`))}`, ratio: tv / rate(`bare ${outcome}`) },
      );
    }
    rows.push({ measure: 'bare script, allowed, vs RLF', taskvalve: '', reference: `bare ${fmtRate(rate('bare allowed'))} / RLF ${fmtRate(rate('RLF allowed'))}`, ratio: rate('bare allowed') / rate('RLF allowed') });
    for (const n of BATCHES) {
      const v = rate(`bare micro-batched ≤${n}`);
      rows.push({ measure: `prototype: bare script micro-batched, ≤${n} per EVALSHA, vs RLF`, taskvalve: '', reference: `${fmtRate(v)} / RLF ${fmtRate(rate('RLF allowed'))}`, ratio: v / rate('RLF allowed') });
    }
    rows.push(
      heading(`exactness: 1 key, burst ${count(B)}, no refill, ${count(HOT_CHECKS)} checks from 2 clients, ${WIDTH} in flight, mixed with other users`),
      {
        measure: 'admitted',
        taskvalve: `${count(hotAllowed)} of ${count(HOT_CHECKS)}`,
        reference: `RateLimiterRedis ${count(rlfHot)} of ${count(HOT_CHECKS)}`,
        target: `= ${count(B)}`,
        met: hotAllowed === B,
      },
      heading(`latency, one in flight, ${count(SAMPLES)} samples each, taskvalve's ioredis client`),
      { measure: 'check(1) p50 vs PING p50', taskvalve: us(L.check.p50), reference: `PING ${us(L.ping.p50)}`, ratio: L.check.p50 / L.ping.p50 },
      {
        measure: 'check(1) p99 vs PING p99',
        taskvalve: us(L.check.p99),
        reference: `PING ${us(L.ping.p99)}`,
        ratio: L.check.p99 / L.ping.p99,
        target: `≤ ${TARGET_P99.toFixed(2)}`,
        met: L.check.p99 / L.ping.p99 <= TARGET_P99,
      },
      { measure: 'check(1) p99 vs bare script p99', taskvalve: us(L.check.p99), reference: `bare EVALSHA ${us(L.bare.p99)}`, ratio: L.check.p99 / L.bare.p99 },
      ...(L.raw === undefined
        ? []
        : [
            { measure: 'check(1) p50 vs its own EVALSHA sent raw p50', taskvalve: us(L.check.p50), reference: `raw admit EVALSHA ${us(L.raw.p50)}`, ratio: L.check.p50 / L.raw.p50 },
            { measure: 'check(1) p99 vs its own EVALSHA sent raw p99', taskvalve: us(L.check.p99), reference: `raw admit EVALSHA ${us(L.raw.p99)}`, ratio: L.check.p99 / L.raw.p99 },
          ]),
      heading('server ceilings: redis-benchmark -P 16, 50 connections (admit.lua on one user)'),
    );
    if (ceilings.admit !== undefined) {
      const ref = (name: string, v: number | undefined): Row =>
        v === undefined ? { measure: `admit.lua vs ${name}`, taskvalve: fmtRate(ceilings.admit!), reference: 'n/a' } : { measure: `admit.lua vs ${name}`, taskvalve: fmtRate(ceilings.admit!), reference: `${name} ${fmtRate(v)}`, ratio: ceilings.admit! / v };
      rows.push(ref("RLF's script", ceilings.rlf), ref('bare script', ceilings.bare), ref('PING', ceilings.ping));
    } else {
      rows.push({ measure: 'redis-benchmark', taskvalve: 'n/a', reference: 'not available' });
    }
    if (hotAllowed !== B) {
      log(`EXACTNESS FAILED: ${hotAllowed} admitted, burst ${B}`);
      process.exitCode = 1;
    }

    return { rows, profileTable: profileTable(profiled), redisVersion };
  } finally {
    for (const mgr of managers) await mgr.close().catch(() => undefined);
    for (const c of clients) c.disconnect();
    await server.stop();
  }
}

/**
 * Section 6: allowed check(1) at WIDTH in flight over USERS users on a private 3-master Redis
 * Cluster, taskvalve against RateLimiterRedis (each on its own ioredis Cluster client, default
 * options), and how many decisions one admission script call carries there.
 */
export async function clusterSection(log: (line: string) => void): Promise<Row[]> {
  log('starting a 3-master Redis Cluster ...');
  const cluster = await startCluster(3);
  const clients: Cluster[] = [];
  let manager: Manager | undefined;
  try {
    const open = async (): Promise<Cluster> => {
      const c = new Cluster(cluster.nodes);
      clients.push(c);
      await c.ping();
      return c;
    };
    const [tvClient, rlfClient] = [await open(), await open()] as const;
    const order = keyOrder(USERS);
    const users = Array.from({ length: USERS }, (_, i) => `open-${String(i).padStart(5, '0')}`);
    manager = new Manager({ store: new RedisStore({ client: tvClient }) });
    const tv = manager;
    tv.registerProfile('open', { rate: { ...OPEN } });
    log('set-up: subscribing 10,000 users on the cluster, touching every key ...');
    await lanes(USERS, WIDTH, (i) => tv.subscribe(users[i]!, 'open'), yes);
    expect((await lanes(USERS, WIDTH, (i) => tv.getLimiter(users[i]!).check(1), isAllowed)) === USERS, 'taskvalve open buckets allow on the cluster');
    const rlf = new RateLimiterRedis({ storeClient: rlfClient, useRedisPackage: false, points: 1_000_000_000, duration: 3600, keyPrefix: 'rlf-open' });
    const rlfTry = (key: string): Promise<boolean> => rlf.consume(key).then(yes, isRlfDenial);
    expect((await lanes(USERS, WIDTH, (i) => rlfTry(users[i]!), (ok) => ok)) === USERS, 'RLF open allows on the cluster');

    const tvRun = (ops: number): Promise<number> => lanes(ops, WIDTH, (i) => tv.getLimiter(users[order[i & MASK]!]!).check(1), isAllowed);
    const rlfRun = (ops: number): Promise<number> => lanes(ops, WIDTH, (i) => rlfTry(users[order[i & MASK]!]!), (ok) => ok);
    const checked = (name: string, run: (ops: number) => Promise<number>): Bench => ({
      name,
      async run(ops) {
        const allowed = await run(ops);
        expect(allowed === ops, `${name}: ${allowed} of ${ops} allowed`);
      },
    });
    log(`decisions at ${WIDTH} in flight on the cluster, ${count(USERS)} keys each (medians of interleaved rounds):`);
    const m = await compare([checked('taskvalve cluster allowed', tvRun), checked('RLF cluster allowed', rlfRun)], PLAN, log);
    const tvRate = m.get('taskvalve cluster allowed')!.opsPerSec;
    const rlfRate = m.get('RLF cluster allowed')!.opsPerSec;

    // Where the time goes: fixed runs, EVALSHA calls and CPU summed over the nodes, this process's CPU.
    const nodes = async (section: string): Promise<string[]> => Promise.all(cluster.ports.map((port) => rawCommand(port, ['INFO', section])));
    const serverCpu = async (): Promise<number> =>
      (await nodes('cpu')).reduce((sum, text) => sum + Number(/used_cpu_user:([\d.]+)/.exec(text)?.[1] ?? 0) + Number(/used_cpu_sys:([\d.]+)/.exec(text)?.[1] ?? 0), 0);
    const costs = async (run: (ops: number) => Promise<number>): Promise<{ calls: number; clientUs: number; serverUs: number }> => {
      await Promise.all(cluster.ports.map((port) => rawCommand(port, ['CONFIG', 'RESETSTAT'])));
      const server0 = await serverCpu();
      const client0 = process.cpuUsage();
      await run(PROFILE_OPS);
      const client = process.cpuUsage(client0);
      const serverUs = ((await serverCpu()) - server0) * 1e6;
      const calls = (await nodes('commandstats')).reduce((sum, text) => sum + Number(/cmdstat_evalsha:calls=(\d+)/.exec(text)?.[1] ?? 0), 0);
      return { calls, clientUs: (client.user + client.system) / PROFILE_OPS, serverUs: serverUs / PROFILE_OPS };
    };
    const tvCost = await costs(tvRun);
    const rlfCost = await costs(rlfRun);
    log(`  taskvalve: ${(PROFILE_OPS / tvCost.calls).toFixed(2)} decisions per EVALSHA, client ${tvCost.clientUs.toFixed(1)} µs, servers ${tvCost.serverUs.toFixed(1)} µs per decision`);
    log(`  RLF:       ${(PROFILE_OPS / rlfCost.calls).toFixed(2)} decisions per EVALSHA, client ${rlfCost.clientUs.toFixed(1)} µs, servers ${rlfCost.serverUs.toFixed(1)} µs per decision`);

    return [
      heading(`check(1) on a 3-master Redis Cluster, ${count(USERS)} users, ${WIDTH} in flight, all on this machine`),
      { measure: 'getLimiter(user).check, allowed, vs RLF', taskvalve: fmtRate(tvRate), reference: `RateLimiterRedis ${fmtRate(rlfRate)}`, ratio: tvRate / rlfRate },
      { measure: 'decisions per script call', taskvalve: (PROFILE_OPS / tvCost.calls).toFixed(2), reference: `RateLimiterRedis ${(PROFILE_OPS / rlfCost.calls).toFixed(2)}` },
      { measure: 'client CPU µs per decision', taskvalve: tvCost.clientUs.toFixed(1), reference: `RateLimiterRedis ${rlfCost.clientUs.toFixed(1)}`, ratio: tvCost.clientUs / rlfCost.clientUs },
      { measure: 'server CPU µs per decision (3 nodes)', taskvalve: tvCost.serverUs.toFixed(1), reference: `RateLimiterRedis ${rlfCost.serverUs.toFixed(1)}`, ratio: tvCost.serverUs / rlfCost.serverUs },
    ];
  } finally {
    await manager?.close().catch(() => undefined);
    for (const c of clients) c.disconnect();
    await cluster.stop();
  }
}

/**
 * The EVALSHA a check(1) of `user` sends (the last one, after any set-up call), caught on a
 * spy connection with a fresh store, for redis-benchmark to replay. Whatever the script's
 * argument layout: only a deadline (a µs timestamp near now) is zeroed, so that the replay is
 * never refused as late.
 */
async function captureAdmit(server: RedisServer, user: string): Promise<string[] | undefined> {
  const spy = await connect(server);
  let last: (string | number | Buffer)[] | undefined;
  const spied = spy as unknown as { evalshaBuffer(...args: (string | number | Buffer)[]): Promise<unknown> };
  const evalshaBuffer = spied.evalshaBuffer.bind(spy);
  spied.evalshaBuffer = (...args) => {
    last = args;
    return evalshaBuffer(...args);
  };
  const m = new Manager({ store: new RedisStore({ client: spy }) });
  try {
    m.registerProfile('open', { rate: { ...OPEN } });
    await m.getLimiter(user).check(1);
    await m.getLimiter(user).check(1); // the handle now knows its profile, as every later check does
  } finally {
    await m.close().catch(() => undefined);
    spy.disconnect();
  }
  const nowUs = Date.now() * 1000;
  // A single decision travels as text (replayable by redis-benchmark); its deadline is zeroed,
  // and so is its operation id (a replay of one id would be refused as a duplicate: the replay
  // measures the decision without the operation log's few commands).
  if (last === undefined || last.some((a) => Buffer.isBuffer(a))) return undefined;
  const seqAt = 2 + Number(last[1]);
  return last.map((a, i) => (i === seqAt || i === seqAt + 1 || (/^\d{16}$/.test(String(a)) && Math.abs(Number(a) - nowUs) < 3.6e9) ? '0' : String(a)));
}

function firstRate(m: Map<string, number> | undefined): number | undefined {
  return m === undefined ? undefined : [...m.values()][0];
}

function profileTable(profiled: readonly [string, Profile][]): string {
  const fmtMap = (mp: Map<string, number>): string =>
    [...mp]
      .filter(([, v]) => v >= 0.005)
      .sort((a, b) => b[1] - a[1])
      .map(([k, v]) => `${k.toUpperCase()} ${v.toFixed(2)}`)
      .join(', ') || '—';
  const head = ['per decision', ...profiled.map(([n]) => n)];
  const rows: [string, (p: Profile) => string][] = [
    ['decisions/s in this run', (p) => fmtRate(p.perSec)],
    ['round trips (top-level commands)', (p) => fmtMap(p.trips)],
    ['commands inside the script', (p) => fmtMap(p.inner)],
    ['decisions per script call', (p) => {
      const calls = (p.trips.get('evalsha') ?? 0) + (p.trips.get('eval') ?? 0);
      return calls === 0 ? '—' : (1 / calls).toFixed(1);
    }],
    ['script µs per EVALSHA (commandstats)', (p) => p.scriptUsecPerCall.toFixed(2)],
    ['script µs per decision', (p) => p.scriptUsecPerDecision.toFixed(2)],
    ['server CPU µs (INFO cpu)', (p) => p.serverCpuUs.toFixed(2)],
    ['client CPU µs (process.cpuUsage)', (p) => p.clientCpuUs.toFixed(2)],
    ['bytes sent', (p) => p.bytesOut.toFixed(0)],
    ['bytes received', (p) => p.bytesIn.toFixed(0)],
  ];
  const line = (cells: readonly string[]): string => `| ${cells.join(' | ')} |`;
  return [
    line(head),
    line(head.map((_, i) => (i === 0 ? ':---' : '---:'))),
    ...rows.map(([name, f]) => line([name, ...profiled.map(([, p]) => f(p))])),
  ].join('\n');
}

export async function main(): Promise<void> {
  const t0 = performance.now();
  const log = (line: string): void => {
    process.stderr.write(`${line}\n`);
  };
  log('taskvalve Redis bench: ops/s are medians of interleaved timed rounds after calibration and warm-up');
  const s = await redisSection(log);
  const clustered = await clusterSection(log);
  const offered = [heading('offered load on one redis-server (append-only), open loop'), ...(await offeredSection(log))];
  const seconds = (performance.now() - t0) / 1000;
  const cpu = cpus()[0]?.model.trim() ?? 'unknown CPU';
  const judged = [...s.rows, ...clustered, ...offered].filter((r) => r.met !== undefined);
  process.stdout.write(
    [
      renderTable([...s.rows, ...clustered, ...offered]),
      '',
      `Node ${process.version}, ${cpu}, ${availableParallelism()} cores, redis-server ${s.redisVersion} (--save '' --appendonly no) on loopback,`,
      'started by this run. Rates are medians of 7 timed rounds (after calibration and a warm-up round), interleaved, each',
      `system on its own ioredis 5 connection with default options; ${WIDTH} loops each await one call. Bare script = TIME, GET,`,
      'GCRA, SET PX in one EVALSHA answering one integer (bench/redis/bare.ts); its micro-batched twin decides a whole',
      "event-loop turn's checks in one EVALSHA (a prototype, not taskvalve). RateLimiterRedis is a fixed window",
      '(SET NX, INCRBY, PTTL in one script), not a GCRA. Client and server share the same cores. Latency samples rotate',
      'check / PING / bare / raw on one connection; "raw admit EVALSHA" is the exact EVALSHA a check(1) sends, caught on a spy',
      'connection and replayed without taskvalve (its deadline zeroed); redis-benchmark replays the same call on one user.',
      'The Cluster rows run on 3 cluster-enabled redis-servers (masters only, slots split evenly) started by this run on the same',
      'machine, each system on its own ioredis Cluster client with default options.',
      'Offered load: check(1) calls issued every millisecond for what is due at the rate, whatever the answers; the server',
      'is then killed (SIGKILL) and restarted under that load, and "back" is the first second answering 90% of the rate.',
      '',
      `Where a decision's time goes (${WIDTH} in flight, ${PROFILE_OPS.toLocaleString('en-US')} decisions each, server statistics reset before each):`,
      '',
      s.profileTable,
      '',
      'Round trips are top-level commands per decision (INFO commandstats); commands inside the script are those scripts call.',
      "Script µs is commandstats' wall time inside EVALSHA (it grows when the server is preempted: compare with server CPU).",
      'Client CPU is the whole Node process (ioredis, GC included) per decision; bytes are those of the connection socket.',
      `"${WIDE_USERS / 1000}k users" is more users than the Manager's handle cache holds (10,000), so handles are rebuilt as used.`,
      '',
      `Run time: ${seconds.toFixed(1)} s. Targets met: ${judged.filter((r) => r.met === true).length} of ${judged.length}.`,
      '',
    ].join('\n'),
  );
}

if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === process.argv[1]) await main();
