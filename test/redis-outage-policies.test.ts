// The outage policies across processes, with Redis made unreachable by a real TCP proxy (it
// holds every byte: the blackhole) while the server keeps running. Each process is a Manager
// over a RedisStore on its own ioredis client (default options), counted among the live
// processes. What is checked is what one Redis would have allowed: a hard quota is never
// exceeded, a spent bucket is not admitted again beyond its refill, the policies reach every
// user this process has answered for (not only those whose handles are cached), and what
// 'local' admitted is charged back once, to usage and to the bucket, also by close().
import fc from 'fast-check';
import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Manager, RedisStore, type RedisStoreOptions, type TaskvalveError } from '../src/index.js';
import { escapeId, rendezvous } from '../src/store/redis/keys.js';
import { eventually } from './helpers.js';
import { startFaultProxy, type FaultProxy } from './support/fault-proxy.js';
import { startRedis, type RedisServer } from './support/redis.js';

type Policy = 'fail-closed' | 'fail-open' | 'local';

/** Calls fail STORE_UNAVAILABLE after this while the proxy holds everything. */
const TIMEOUT_MS = 200;

let server: RedisServer;
let proxy: FaultProxy;
let prefixes = 0;
const open: { manager: Manager; clients: Redis[] }[] = [];

beforeAll(async () => {
  server = await startRedis();
  proxy = await startFaultProxy({ port: server.port });
});

afterAll(async () => {
  await proxy?.close();
  await server?.stop();
});

afterEach(async () => {
  proxy.heal();
  for (const { manager, clients } of open.splice(0)) {
    await manager.close({ timeoutMs: 0 });
    for (const client of clients) client.disconnect();
  }
});

interface Process {
  manager: Manager;
  store: RedisStore;
  prefix: string;
}

/**
 * `count` processes on one prefix, each a Manager over its own client through the proxy (or the
 * clients `connect` opens: one per shard), with `register` run on each; each has counted the
 * others (presence).
 */
async function processes(
  count: number,
  policy: Policy | Policy[],
  register: (manager: Manager) => void,
  timeoutMs = TIMEOUT_MS,
  options: Pick<RedisStoreOptions, 'rememberedUsers'> & { connect?: () => Redis[] } = {},
): Promise<Process[]> {
  const { connect = () => [new Redis({ port: proxy.port })], ...storeOptions } = options;
  const prefix = `o${++prefixes}`;
  const all: Process[] = [];
  for (let i = 0; i < count; i++) {
    const clients = connect();
    for (const client of clients) client.on('error', () => {}); // the proxy's faults are expected
    const store = new RedisStore({ client: clients.length === 1 ? (clients[0] as Redis) : clients, prefix, timeoutMs, ...storeOptions });
    const manager = new Manager({ store, onStoreUnavailable: Array.isArray(policy) ? (policy[i] as Policy) : policy });
    manager.on('error', () => {}); // charge-backs that fail while Redis is away are reported here
    register(manager);
    open.push({ manager, clients });
    all.push({ manager, store, prefix });
  }
  // Each counts itself as soon as it registered a profile: wait until every one sees all.
  for (const p of all) await eventually(async () => (await p.store.refreshPresence()) === count, `${count} live processes`);
  return all;
}

/** A process that reads what `of` wrote, straight from Redis (not through the proxy). */
function reader(of: Process, register: (manager: Manager) => void): Process {
  const client = new Redis({ port: server.port });
  const store = new RedisStore({ client, prefix: of.prefix });
  const manager = new Manager({ store });
  register(manager);
  open.push({ manager, clients: [client] });
  return { manager, store, prefix: of.prefix };
}

/**
 * Each process reads a subscription: from then on its calls carry deadlines in server time, so
 * the calls the proxy held during an outage write nothing when they reach Redis late.
 */
async function readClocks(all: Process[], user: string): Promise<void> {
  for (const p of all) expect(await p.manager.getSubscription(user)).toBeDefined();
}

/** `work` for every user, 500 at a time. */
async function inChunks(users: string[], work: (user: string) => Promise<unknown>): Promise<void> {
  for (let i = 0; i < users.length; i += 500) await Promise.all(users.slice(i, i + 500).map(work));
}

/** Two profiles, 'a' and 'b', for moving users between them. */
const registerTwo = (m: Manager): void => {
  m.registerProfile('a', { rate: { limit: 10, intervalMs: 1000 } });
  m.registerProfile('b', { rate: { limit: 5, intervalMs: 1000 } });
};

/** Allowed decisions of `checks`, and the codes of those that failed. */
async function decide(checks: Promise<{ allowed: boolean }>[]): Promise<{ allowed: number; denied: number; failed: string[] }> {
  let allowed = 0;
  let denied = 0;
  const failed: string[] = [];
  for (const r of await Promise.allSettled(checks)) {
    if (r.status === 'rejected') failed.push((r.reason as TaskvalveError).code);
    else if (r.value.allowed) allowed++;
    else denied++;
  }
  return { allowed, denied, failed };
}

describe("'local' across 3 processes", () => {
  it('never admits past a hard quota: its users fail closed while Redis is away, and the quota ends exact', async () => {
    const all = await processes(3, 'local', (m) => m.registerProfile('hard', { rate: { limit: 1000, intervalMs: 1000 }, quota: { limit: 10 } }));
    const [a, b, c] = all as [Process, Process, Process];
    await a.manager.subscribe('u', 'hard');
    // Usage 7, and every process has seen the user in good standing.
    expect((await a.manager.getLimiter('u').check(5)).allowed).toBe(true);
    expect((await b.manager.getLimiter('u').check(1)).allowed).toBe(true);
    expect((await c.manager.getLimiter('u').check(1)).allowed).toBe(true);
    await readClocks(all, 'u');

    proxy.blackhole();
    // Each process alone would see room for 3 more: together they could admit 9 on a quota of 3.
    const outage = await decide(all.flatMap((p) => Array.from({ length: 4 }, () => p.manager.getLimiter('u').check(1))));
    expect(outage).toEqual({ allowed: 0, denied: 0, failed: Array(12).fill('STORE_UNAVAILABLE') });
    proxy.heal();

    const after = await decide(all.flatMap((p) => Array.from({ length: 4 }, () => p.manager.getLimiter('u').check(1))));
    expect(after.allowed).toBe(3);
    expect((await a.manager.getSubscription('u'))?.usage).toBe(10);
  });

  it('does not admit a spent shared bucket again: together the processes admit at most its refill over the outage', async () => {
    const limit = 20;
    const all = await processes(3, 'local', (m) => m.registerProfile('api', { rate: { limit, intervalMs: 1000, shared: 'api' } }));
    for (const [i, p] of all.entries()) {
      await p.manager.subscribe(`u${i}`, 'api'); // (its reply tells the process the server's clock)
      expect((await p.manager.getLimiter(`u${i}`).check(1)).allowed).toBe(true);
    }
    // Spent: the rest of the burst, taken now.
    expect((await all[0]!.manager.getLimiter('u0').check(limit - 3)).allowed).toBe(true);

    const from = performance.now();
    proxy.blackhole();
    let allowed = 0;
    const failed: string[] = [];
    for (let round = 0; round < 5; round++) {
      const r = await decide(all.flatMap((p, i) => Array.from({ length: 4 }, () => p.manager.getLimiter(`u${i}`).check(1))));
      allowed += r.allowed;
      failed.push(...r.failed);
    }
    const refill = Math.floor(((performance.now() - from) * limit) / 1000);
    proxy.heal();
    // Decided by the policy, every one; and still admitting, at the refill.
    expect(failed).toEqual([]);
    expect(allowed).toBeGreaterThan(0);
    expect(allowed).toBeLessThanOrEqual(refill);
  });
});

describe('policies reach every user this process answered for, past the 10,000 cached handles', () => {
  it("12,000 users: 'fail-open' admits each, 'local' decides each; a user never seen fails closed under both", async () => {
    const users = Array.from({ length: 12_000 }, (_, i) => `user-${i}`);
    // (A longer timeout: setting up 12,000 users on a busy machine must not fail.)
    const all = await processes(2, ['fail-open', 'local'], (m) => m.registerProfile('p', { rate: { limit: 10, intervalMs: 1000 } }), 2_000);
    const [open, local] = all as [Process, Process];
    await inChunks(users, (user) => open.manager.subscribe(user, 'p'));
    await open.manager.subscribe('never-seen', 'p');
    for (const p of all) await inChunks(users, async (user) => expect((await p.manager.getLimiter(user).check(1)).allowed).toBe(true));
    await readClocks(all, 'never-seen');

    proxy.blackhole();
    // Every call waits for the timeout: the processes' calls go together.
    const neverSeen = (p: Process): Promise<unknown> => p.manager.getLimiter('never-seen').check(1).catch((e: TaskvalveError) => e);
    const [opened, decided, ...unknown] = await Promise.all([
      decide(users.map((user) => open.manager.getLimiter(user).check(1))),
      decide(users.map((user) => local.manager.getLimiter(user).check(1))),
      ...all.map(neverSeen),
    ]);
    expect(opened).toEqual({ allowed: users.length, denied: 0, failed: [] });
    // Each process's share of a user's bucket starts empty: refused, by the policy, not failed.
    expect(decided).toEqual({ allowed: 0, denied: users.length, failed: [] });
    for (const e of unknown) {
      expect(e).toMatchObject({ code: 'STORE_UNAVAILABLE', message: expect.stringContaining('has not seen its subscription in good standing') });
    }
  }, 120_000);
});

describe('rememberedUsers bounds the users a process remembers beyond its cached handles', () => {
  it("remembering 4,000: the 2,000 answered last are admitted by 'fail-open'; those answered 4,000 answers ago and more fail closed", async () => {
    const older = Array.from({ length: 3_000 }, (_, i) => `older-${i}`);
    const recent = Array.from({ length: 2_000 }, (_, i) => `recent-${i}`);
    const [p] = (await processes(1, 'fail-open', (m) => m.registerProfile('p', { rate: { limit: 10, intervalMs: 1000 } }), 2_000, { rememberedUsers: 4_000 })) as [Process];
    await inChunks([...older, ...recent], (user) => p.manager.subscribe(user, 'p'));
    // Answered in this order: the older users, then the recent ones.
    for (const users of [older, recent]) await inChunks(users, async (user) => expect((await p.manager.getLimiter(user).check(1)).allowed).toBe(true));
    // 10,000 handles that never call: the manager's cache of handles no longer holds any of the above.
    for (let i = 0; i < 10_000; i++) p.manager.getLimiter(`filler-${i}`);

    proxy.blackhole();
    const [admitted, forgotten] = await Promise.all([decide(recent.map((user) => p.manager.getLimiter(user).check(1))), decide(older.slice(0, 1_000).map((user) => p.manager.getLimiter(user).check(1)))]);
    expect(admitted).toEqual({ allowed: recent.length, denied: 0, failed: [] });
    expect(forgotten).toEqual({ allowed: 0, denied: 0, failed: older.slice(0, 1_000).map(() => 'STORE_UNAVAILABLE') });
  }, 60_000);

  it("remembering 1: only the user answered last is admitted by 'fail-open'", async () => {
    const [p] = (await processes(1, 'fail-open', (m) => m.registerProfile('p', { rate: { limit: 10, intervalMs: 1000 } }), 2_000, { rememberedUsers: 1 })) as [Process];
    for (const user of ['first', 'last']) await p.manager.subscribe(user, 'p');
    for (const user of ['first', 'last']) expect((await p.manager.getLimiter(user).check(1)).allowed).toBe(true);
    // 10,000 handles that never call: the manager's cache of handles no longer holds either.
    for (let i = 0; i < 10_000; i++) p.manager.getLimiter(`filler-${i}`);
    proxy.blackhole();
    const [first, last] = await Promise.all([decide([p.manager.getLimiter('first').check(1)]), decide([p.manager.getLimiter('last').check(1)])]);
    expect(first).toEqual({ allowed: 0, denied: 0, failed: ['STORE_UNAVAILABLE'] });
    expect(last).toEqual({ allowed: 1, denied: 0, failed: [] });
  }, 60_000);

  it("a handle held past its user's turn among the remembered still learns of a deletion or a change of profile made here", async () => {
    const [p] = (await processes(1, 'fail-open', registerTwo, 2_000, { rememberedUsers: 2 })) as [Process];
    for (const user of ['deleted', 'changed', 'kept', 'x', 'y']) await p.manager.subscribe(user, 'a');
    // The application holds these handles; the manager's cache holds them too, but drops a deleted user's.
    const deleted = p.manager.getLimiter('deleted');
    const changed = p.manager.getLimiter('changed');
    for (const user of ['deleted', 'changed', 'kept', 'x', 'y']) expect((await p.manager.getLimiter(user).check(1)).allowed).toBe(true);
    // Remembering 2, only y (and x) were answered recently enough: the others are known through their handles alone.
    expect(await p.manager.deleteSubscription('deleted')).toBe(true);
    await p.manager.changeProfile('changed', 'b');
    proxy.blackhole();
    const [gone, moved, kept, last] = await Promise.all([
      decide([deleted.check(1)]),
      decide([changed.check(1)]),
      decide([p.manager.getLimiter('kept').check(1)]),
      decide([p.manager.getLimiter('y').check(1)]),
    ]);
    // Neither is admitted by what the handle knew before the change: the one deleted, nor the one whose profile this process changed.
    expect(gone).toEqual({ allowed: 0, denied: 0, failed: ['STORE_UNAVAILABLE'] });
    expect(moved).toEqual({ allowed: 0, denied: 0, failed: ['STORE_UNAVAILABLE'] });
    // Untouched users stay known through their handles, remembered or not.
    expect(kept).toEqual({ allowed: 1, denied: 0, failed: [] });
    expect(last).toEqual({ allowed: 1, denied: 0, failed: [] });
  }, 60_000);

  it.each(['deletions', 'changes of profile'] as const)('... and still after 10,001 more %s here (past the bounded record of them)', async (kind) => {
    const [p] = (await processes(1, 'fail-open', registerTwo, 2_000, { rememberedUsers: 2 })) as [Process];
    const others = Array.from({ length: 10_001 }, (_, i) => `other-${i}`);
    await inChunks(others, (user) => p.manager.subscribe(user, 'a'));
    for (const user of ['touched', 'kept', 'x', 'y']) await p.manager.subscribe(user, 'a');
    const touched = p.manager.getLimiter('touched');
    for (const user of ['touched', 'kept', 'x', 'y']) expect((await p.manager.getLimiter(user).check(1)).allowed).toBe(true);
    if (kind === 'deletions') {
      expect(await p.manager.deleteSubscription('touched')).toBe(true);
      await inChunks(others, (user) => p.manager.deleteSubscription(user));
    } else {
      await p.manager.changeProfile('touched', 'b');
      await inChunks(others, (user) => p.manager.changeProfile(user, 'b'));
    }
    proxy.blackhole();
    const [gone, kept, last] = await Promise.all([decide([touched.check(1)]), decide([p.manager.getLimiter('kept').check(1)]), decide([p.manager.getLimiter('y').check(1)])]);
    expect(gone).toEqual({ allowed: 0, denied: 0, failed: ['STORE_UNAVAILABLE'] });
    // Past the record, an entry a handle alone holds forgets what it may have missed (it fails
    // closed); a remembered user keeps its standing.
    expect(kept).toEqual({ allowed: 0, denied: 0, failed: ['STORE_UNAVAILABLE'] });
    expect(last).toEqual({ allowed: 1, denied: 0, failed: [] });
  }, 60_000);
});

describe('a user seen in good standing stays known while the process subscribes or deletes many others', () => {
  const register = (m: Manager): void => m.registerProfile('p', { rate: { limit: 10, intervalMs: 1000 } });

  it("after 10,001 new subscriptions here (each makes handles read their user's profile again), 'fail-open' still admits a user answered before them", async () => {
    const [p] = (await processes(1, 'fail-open', register, 2_000)) as [Process];
    await p.manager.subscribe('known', 'p');
    expect((await p.manager.getLimiter('known').check(1)).allowed).toBe(true);
    const others = Array.from({ length: 10_001 }, (_, i) => `new-${i}`);
    await inChunks(others, (user) => p.manager.subscribe(user, 'p'));
    proxy.blackhole();
    expect(await decide([p.manager.getLimiter('known').check(1)])).toEqual({ allowed: 1, denied: 0, failed: [] });
  }, 60_000);

  it("after 10,001 deletions here, the same; and a user deleted here is not admitted by 'fail-open', whoever holds its handle", async () => {
    const [p] = (await processes(1, 'fail-open', register, 2_000)) as [Process];
    const others = Array.from({ length: 10_001 }, (_, i) => `gone-${i}`);
    await inChunks(others, (user) => p.manager.subscribe(user, 'p'));
    await p.manager.subscribe('known', 'p');
    await p.manager.subscribe('deleted', 'p');
    const handle = p.manager.getLimiter('deleted');
    for (const user of ['known', 'deleted']) expect((await p.manager.getLimiter(user).check(1)).allowed).toBe(true);
    await inChunks(others, (user) => p.manager.deleteSubscription(user));
    expect(await p.manager.deleteSubscription('deleted')).toBe(true);
    proxy.blackhole();
    const [known, deleted] = await Promise.all([decide([p.manager.getLimiter('known').check(1)]), decide([handle.check(1), p.manager.getLimiter('deleted').check(1)])]);
    expect(known).toEqual({ allowed: 1, denied: 0, failed: [] });
    expect(deleted).toEqual({ allowed: 0, denied: 0, failed: ['STORE_UNAVAILABLE', 'STORE_UNAVAILABLE'] });
  }, 60_000);
});

describe('a change this process makes to a subscription reaches the outage policies at once', () => {
  // A profile with a rate and no quota: a quota set on the user is hard (the default).
  const register = (m: Manager): void => m.registerProfile('free', { rate: { limit: 100, intervalMs: 1000 } });

  /** Two checks answered by Redis (usage 2): the user is known in good standing, with no quota in force. */
  async function seenWithoutQuota(policy: Policy): Promise<Process> {
    const [p] = (await processes(1, policy, register)) as [Process];
    await p.manager.subscribe('alice', 'free');
    for (let i = 0; i < 2; i++) expect((await p.manager.getLimiter('alice').check(1)).allowed).toBe(true);
    return p;
  }

  /** Six checks while Redis is away, then what Redis holds once it is back. */
  async function outage(p: Process): Promise<{ during: Awaited<ReturnType<typeof decide>>; usage: number | undefined }> {
    proxy.blackhole();
    const during = await decide(Array.from({ length: 6 }, () => p.manager.getLimiter('alice').check(1)));
    proxy.heal();
    // Redis answers again: a check that Redis refuses, and with it any charge-back this process owed.
    await p.manager.getLimiter('alice').check(1).catch(() => undefined);
    return { during, usage: (await p.manager.getSubscription('alice'))?.usage };
  }

  const spent = { during: { allowed: 0, denied: 0, failed: Array(6).fill('STORE_UNAVAILABLE') }, usage: 2 };

  it.each([
    ['updateSubscriptionQuota', (p: Process) => p.manager.updateSubscriptionQuota('alice', 2)],
    ['subscribe with a quota', (p: Process) => p.manager.subscribe('alice', 'free', { quota: 2 })],
  ] as const)("'local' admits nothing past a hard quota of 2 set here by %s after the user's last answer (usage 2)", async (_, setQuota) => {
    const p = await seenWithoutQuota('local');
    expect((await setQuota(p)).quotaLimit).toBe(2);
    expect(await outage(p)).toEqual(spent);
  });

  it.each(['local', 'fail-open'] as const)("'%s' admits nothing for a user canceled here after its last answer", async (policy) => {
    const p = await seenWithoutQuota(policy);
    expect((await p.manager.cancelSubscription('alice')).status).toBe('canceled');
    expect(await outage(p)).toEqual(spent);
  });

  it.each(['cancelSubscription', 'deleteSubscription'] as const)("a %s reported failed that applied (its reply lost): 'fail-open' admits nothing for the user", async (change) => {
    const p = await seenWithoutQuota('fail-open');
    // The same change of another user first: the server has the script, so the reply lost is the change's own.
    await p.manager.subscribe('bob', 'free');
    await p.manager[change]('bob');
    const lost = proxy.dropReplies(1, { match: (r) => r.args.some((arg) => arg.toString() === 'alice') });
    await expect(p.manager[change]('alice')).rejects.toMatchObject({ code: 'STORE_UNAVAILABLE' });
    await lost.done;
    const applied = await reader(p, register).manager.getSubscription('alice');
    expect(applied?.status).toBe(change === 'cancelSubscription' ? 'canceled' : undefined);
    proxy.blackhole();
    expect(await decide([p.manager.getLimiter('alice').check(1)])).toEqual({ allowed: 0, denied: 0, failed: ['STORE_UNAVAILABLE'] });
  });

  it("a rate turn after a change here reads the profile again, and 'fail-open' still admits nothing until an admission answers", async () => {
    const [p] = (await processes(1, 'fail-open', (m) => m.registerProfile('slow', { rate: { limit: 5, intervalMs: 1000 } }), 2_000)) as [Process];
    await p.manager.subscribe('alice', 'slow');
    const alice = p.manager.getLimiter('alice');
    for (let i = 0; i < 5; i++) expect((await alice.check(1)).allowed).toBe(true);
    // The bucket is spent: the task waits for its turn, which reads the profile the change made this process forget.
    const task = alice.submit(() => 'ran');
    await p.manager.updateSubscriptionQuota('alice', 1000);
    expect(await task).toBe('ran');
    proxy.blackhole();
    expect(await decide([alice.check(1)])).toEqual({ allowed: 0, denied: 0, failed: ['STORE_UNAVAILABLE'] });
  });

  it("after an extension here, 'fail-open' admits the user again once Redis has answered an admission of it", async () => {
    const p = await seenWithoutQuota('fail-open');
    await p.manager.extendSubscription('alice', 60_000);
    // Not known until answered: the extension alone does not tell this process the user's standing.
    proxy.blackhole();
    expect(await decide([p.manager.getLimiter('alice').check(1)])).toEqual({ allowed: 0, denied: 0, failed: ['STORE_UNAVAILABLE'] });
    proxy.heal();
    expect((await p.manager.getLimiter('alice').check(1)).allowed).toBe(true);
    proxy.blackhole();
    expect(await decide([p.manager.getLimiter('alice').check(1)])).toEqual({ allowed: 1, denied: 0, failed: [] });
  });
});

describe('an answer to a call begun before a change here is not learned from (2 client-side shards)', () => {
  let shards: RedisServer[] = [];
  let proxies: FaultProxy[] = [];

  beforeAll(async () => {
    shards = await Promise.all([startRedis(), startRedis()]);
    proxies = await Promise.all(shards.map((s) => startFaultProxy({ port: s.port })));
  });

  afterAll(async () => {
    await Promise.all(proxies.map((p) => p.close()));
    await Promise.all(shards.map((s) => s.stop()));
  });

  /** A name `made(i)` for the first i whose key's hash tag `tag(name)` is placed on shard `shard` of 2. */
  const placed = (shard: number, tag: (name: string) => string, made: (i: number) => string): string => {
    for (let i = 0; ; i++) if (rendezvous(tag(made(i)), 2) === shard) return made(i);
  };

  afterEach(() => {
    for (const p of proxies) p.heal();
  });

  /**
   * One process over the 2 shards, for a user whose record is on shard 0 and a shared bucket on
   * shard 1: an admission of one of the bucket's users reserves the quota on the first, then
   * takes from the bucket on the second.
   */
  async function acrossShards(policy: Policy, timeoutMs: number, register: (m: Manager, bucket: string) => void, options: Pick<RedisStoreOptions, 'rememberedUsers'> = {}) {
    const user = placed(0, (id) => `u:${escapeId(id)}`, (i) => `alice-${i}`);
    const bucket = placed(1, (name) => `b:${escapeId(name)}`, (i) => `bucket-${i}`);
    const [p] = (await processes(1, policy, (m) => register(m, bucket), timeoutMs, { ...options, connect: () => proxies.map((x) => new Redis({ port: x.port })) })) as [Process];
    const [toUser, toBucket] = proxies as [FaultProxy, FaultProxy];
    return { user, manager: p.manager, toUser, toBucket };
  }

  it.each(['local', 'fail-open'] as const)("'%s': an admission in flight across the cancel, answered after it and after a later one, leaves the canceled user undecided", async (policy) => {
    const { user, manager, toUser, toBucket } = await acrossShards(policy, 1_000, (m, bucket) => m.registerProfile('free', { rate: { limit: 100, intervalMs: 1000, shared: bucket } }));
    await manager.subscribe(user, 'free');
    expect((await manager.getLimiter(user).check(1)).allowed).toBe(true);
    // A: its quota reserved, its take held on the way to the bucket's shard.
    toBucket.blackhole();
    const a = manager.getLimiter(user).check(1);
    await toBucket.until((s) => s.heldChunks > 0);
    expect((await manager.cancelSubscription(user)).status).toBe('canceled');
    // B, begun after the cancel, is answered first; then A, which began before it.
    await expect(manager.getLimiter(user).check(1)).rejects.toMatchObject({ code: 'SUBSCRIPTION_INACTIVE' });
    toBucket.heal();
    expect((await a).allowed).toBe(true);
    toUser.blackhole();
    expect(await decide(Array.from({ length: 3 }, () => manager.getLimiter(user).check(1)))).toEqual({ allowed: 0, denied: 0, failed: Array(3).fill('STORE_UNAVAILABLE') });
  });

  it("'fail-open': the same for an entry only its limiter handle holds (remembering 1 user), its answer read before any later call begins", async () => {
    const { user, manager, toUser, toBucket } = await acrossShards('fail-open', 1_000, (m, bucket) => m.registerProfile('free', { rate: { limit: 100, intervalMs: 1000, shared: bucket } }), { rememberedUsers: 1 });
    await manager.subscribe(user, 'free');
    await manager.subscribe('other', 'free');
    const alice = manager.getLimiter(user);
    expect((await alice.check(1)).allowed).toBe(true);
    // Answered last, the other user is the one remembered: the first one's entry is its handle's alone.
    expect((await manager.getLimiter('other').check(1)).allowed).toBe(true);
    toBucket.blackhole();
    const a = alice.check(1);
    await toBucket.until((s) => s.heldChunks > 0);
    expect((await manager.cancelSubscription(user)).status).toBe('canceled');
    toBucket.heal();
    expect((await a).allowed).toBe(true);
    toUser.blackhole();
    expect(await decide([alice.check(1)])).toEqual({ allowed: 0, denied: 0, failed: ['STORE_UNAVAILABLE'] });
  });

  it("'local': admissions begun before a move here to a profile with a hard quota, failing after a later one was answered, are decided on the new profile: none admitted", async () => {
    const { user, manager, toBucket } = await acrossShards('local', 300, (m, bucket) => {
      m.registerProfile('soft', { rate: { limit: 100, intervalMs: 1000, shared: bucket }, quota: { limit: 1000, kind: 'soft' } });
      m.registerProfile('hard', { rate: { limit: 100, intervalMs: 1000 }, quota: { limit: 3 } });
    });
    await manager.subscribe(user, 'soft');
    expect((await manager.getLimiter(user).check(1)).allowed).toBe(true);
    // X: their quota reserved on the user's shard, their takes held on the way to the bucket's, until they time out.
    toBucket.blackhole();
    const xs = Array.from({ length: 4 }, () => manager.getLimiter(user).check(1));
    await toBucket.until((s) => s.heldChunks > 0);
    expect((await manager.changeProfile(user, 'hard')).quotaLimit).toBe(3);
    // Y, begun after the move (its own bucket is on the user's shard), is answered: the quota of 3 is spent.
    await expect(manager.getLimiter(user).check(1)).rejects.toMatchObject({ code: 'QUOTA_EXCEEDED' });
    expect(await decide(xs)).toEqual({ allowed: 0, denied: 0, failed: Array(4).fill('STORE_UNAVAILABLE') });
  });
});

describe('what a process knows for the outage policies follows its own changes (random sequences against a model)', () => {
  const register = (m: Manager): void => {
    m.registerProfile('a', { rate: { limit: 100, intervalMs: 1000 } });
    m.registerProfile('b', { rate: { limit: 50, intervalMs: 1000 } });
  };
  const users = ['u0', 'u1', 'u2'];
  const step = fc.record({ op: fc.constantFrom('subscribe', 'check', 'delete', 'change', 'cancel', 'quota'), user: fc.constantFrom(...users), profile: fc.constantFrom('a', 'b') });

  // Remembering 2 of the 3 users, a limiter handle the manager drops may take the user's entry
  // with it (a new handle then knows nothing, whatever the changes); remembering all of them, the
  // entries only learn of the changes.
  it.each([
    ['2 users', { rememberedUsers: 2 }],
    ['every user', {}],
  ] as const)("'fail-open' admits, while Redis is away, exactly the users last answered here in good standing with no change of their subscription here since (remembering %s)", async (_, remembering) => {
    await fc.assert(
      fc.asyncProperty(fc.array(step, { minLength: 4, maxLength: 16, size: 'max' }), async (steps) => {
        const [p] = (await processes(1, 'fail-open', register, TIMEOUT_MS, remembering)) as [Process];
        // The model: each user's profile in Redis, the users canceled, and whether this process
        // knows a user's standing: from an admission answered in good standing until the next
        // change this process makes to the user's subscription.
        const profileOf = new Map<string, string>();
        const canceled = new Set<string>();
        const known = new Set<string>();
        for (const { op, user, profile } of steps) {
          if (op === 'check') {
            const check = p.manager.getLimiter(user).check(1);
            if (!profileOf.has(user)) await expect(check).rejects.toMatchObject({ code: 'SUBSCRIPTION_NOT_FOUND' });
            else if (canceled.has(user)) await expect(check).rejects.toMatchObject({ code: 'SUBSCRIPTION_INACTIVE' });
            else await check;
            if (profileOf.has(user) && !canceled.has(user)) known.add(user);
            else known.delete(user);
            continue;
          }
          known.delete(user);
          if (op === 'subscribe') {
            await p.manager.subscribe(user, profile);
            profileOf.set(user, profile);
            canceled.delete(user);
          } else if (op === 'delete') {
            await p.manager.deleteSubscription(user);
            profileOf.delete(user);
            canceled.delete(user);
          } else if (!profileOf.has(user)) {
            // A change of a subscription that does not exist.
            const change = op === 'change' ? p.manager.changeProfile(user, profile) : op === 'cancel' ? p.manager.cancelSubscription(user) : p.manager.updateSubscriptionQuota(user, 1000);
            await expect(change).rejects.toMatchObject({ code: 'SUBSCRIPTION_NOT_FOUND' });
          } else if (op === 'change') {
            await p.manager.changeProfile(user, profile);
            profileOf.set(user, profile);
          } else if (op === 'cancel') {
            await p.manager.cancelSubscription(user);
            canceled.add(user);
          } else {
            await p.manager.updateSubscriptionQuota(user, 1000);
          }
        }
        proxy.blackhole();
        try {
          const outcomes = await Promise.all(users.map((user) => decide([p.manager.getLimiter(user).check(1)])));
          expect(outcomes).toEqual(users.map((user) => (known.has(user) ? { allowed: 1, denied: 0, failed: [] } : { allowed: 0, denied: 0, failed: ['STORE_UNAVAILABLE'] })));
        } finally {
          proxy.heal();
        }
      }),
      { numRuns: 25 },
    );
  }, 120_000);
});

describe("'local' charges back what it admitted, once, to usage and to the bucket", () => {
  const register = (m: Manager): void => m.registerProfile('own', { rate: { limit: 10, intervalMs: 1000 }, quota: { limit: 1000, kind: 'soft' } });

  /** Under a blackhole, checks of `user` one at a time until 'local' has admitted `units`. */
  async function admitLocally(p: Process, user: string, units: number): Promise<void> {
    let admitted = 0;
    // Each process's share starts empty and refills 10 a second: a few rounds of the timeout.
    for (let round = 0; admitted < units && round < 100; round++) {
      const r = await decide([p.manager.getLimiter(user).check(1)]);
      expect(r.failed).toEqual([]);
      admitted += r.allowed;
    }
    expect(admitted).toBe(units);
  }

  it('when Redis answers again: usage and bucket afterwards hold exactly the units admitted, however many calls see Redis back', async () => {
    const [p] = (await processes(1, 'local', register)) as [Process];
    await p.manager.subscribe('u', 'own');
    // The bucket is spent until a day from now (taken at a fixed time a day ahead): its state
    // after the charge-back is then exact, whatever the test's speed.
    const spent = Date.now() + 86_400_000;
    p.store.setTestClock(() => spent);
    expect((await p.manager.getLimiter('u').check(10)).allowed).toBe(true);
    p.store.setTestClock(undefined);
    await readClocks([p], 'u');

    proxy.blackhole();
    await admitLocally(p, 'u', 3);
    proxy.heal();
    // Every call Redis answers would start a charge-back if none were under way.
    const after = await decide(Array.from({ length: 20 }, () => p.manager.getLimiter('u').check(1)));
    expect(after).toEqual({ allowed: 0, denied: 20, failed: [] });
    expect(await p.manager.close()).toEqual({ completed: 0, rejected: 0, abandoned: 0 });

    const r = reader(p, register);
    expect((await r.manager.getSubscription('u'))?.usage).toBe(10 + 3);
    // A second after the spending, the bucket would be full again but for the 3 units charged back.
    r.store.setTestClock(() => spent + 1000);
    expect(await r.manager.getLimiter('u').peek()).toMatchObject({ allowed: true, remaining: 10 - 3 });
  });

  /** A process whose user has usage 1 in Redis, then 2 units admitted by 'local' with Redis held away. */
  async function owingTwo(): Promise<Process> {
    const [p] = (await processes(1, 'local', register)) as [Process];
    await p.manager.subscribe('u', 'own');
    expect((await p.manager.getLimiter('u').check(1)).allowed).toBe(true);
    await readClocks([p], 'u');
    proxy.blackhole();
    await admitLocally(p, 'u', 2);
    return p;
  }

  it('close() with Redis still away reports the units it could not charge, and charges nothing later', async () => {
    const p = await owingTwo();
    const faults: Error[] = [];
    p.manager.on('error', (e: Error) => faults.push(e));
    expect(await p.manager.close({ timeoutMs: 300 })).toEqual({ completed: 0, rejected: 0, abandoned: 0, owed: 2 });
    expect(faults.map((e) => e.message)).toContainEqual(expect.stringContaining('close() left uncharged 2 unit(s) of usage'));
    // Every attempt was past its deadline by then: none lands once Redis is reachable.
    proxy.heal();
    await proxy.idle();
    expect((await reader(p, register).manager.getSubscription('u'))?.usage).toBe(1);
  });

  it('a charge-back Redis refuses for good (a record of another layout) is reported once and dropped, not sent again', async () => {
    const p = await owingTwo();
    proxy.heal();
    // Meanwhile something else wrote the user's record in another layout.
    const direct = new Redis({ port: server.port });
    const key = `${p.prefix}:{u:u}`;
    const record = (await direct.getBuffer(key)) as Buffer;
    record[0] = 3;
    await direct.set(key, record);
    direct.disconnect();
    const faults: TaskvalveError[] = [];
    p.manager.on('error', (e) => faults.push(e as TaskvalveError));
    await p.manager.subscribe('v', 'own');
    // Answers from Redis start rounds; the first one is refused, nothing is left to send.
    for (let i = 0; i < 3; i++) expect((await p.manager.getLimiter('v').check(1)).allowed).toBe(true);
    expect(await p.manager.close()).toEqual({ completed: 0, rejected: 0, abandoned: 0 });
    expect(faults.map((e) => e.code)).toEqual(['INVALID_CONFIG']);
    expect(faults[0]?.message).toContain('has layout version 3');
  });

  it('close() charges them when Redis comes back before its timeout', async () => {
    const p = await owingTwo();
    const tried = new Promise((resolve) => p.manager.once('error', resolve));
    const closing = p.manager.close({ timeoutMs: 30_000 });
    // A charge-back was tried and failed: Redis is still away. Then it comes back.
    await tried;
    proxy.heal();
    expect(await closing).toEqual({ completed: 0, rejected: 0, abandoned: 0 });
    expect((await reader(p, register).manager.getSubscription('u'))?.usage).toBe(1 + 2);
  });
});
