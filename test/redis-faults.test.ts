// The RedisStore under network faults: a real redis-server, the fault proxy between ioredis
// (default options) and Redis, and the public API. Each call is applied at most once, whatever
// ioredis re-sends after a reconnect; a call reported as failed leaves no charge once Redis is
// reachable again; a hard quota holds under repeated faults. What callers were told is compared
// with the usage Redis holds, read afterwards through a connection without the proxy.
import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Manager, RedisStore, TaskvalveError, type ProfileConfig } from '../src/index.js';
import { eventually, gate, rejection } from './helpers.js';
import { startFaultProxy, type FaultProxy, type ProxiedRequest } from './support/fault-proxy.js';
import { startRedis, type RedisServer } from './support/redis.js';

let server: RedisServer;
let direct: Redis;
let prefixes = 0;
const cleanups: (() => void | Promise<void>)[] = [];

beforeAll(async () => {
  server = await startRedis();
  direct = new Redis({ port: server.port });
});

afterAll(async () => {
  direct?.disconnect();
  await server?.stop();
});

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

/** A process under test: a Manager whose ioredis client (default options) goes through a fault proxy. */
interface Rig {
  proxy: FaultProxy;
  client: Redis;
  manager: Manager;
  prefix: string;
}

async function rig(profiles: Record<string, ProfileConfig>, timeoutMs?: number, prefix = `faults${++prefixes}`): Promise<Rig> {
  const proxy = await startFaultProxy({ port: server.port });
  cleanups.push(() => proxy.close());
  const client = new Redis({ host: '127.0.0.1', port: proxy.port });
  client.on('error', () => {}); // resets are the point here
  cleanups.push(() => client.disconnect());
  const manager = new Manager({ store: new RedisStore({ client, prefix, ...(timeoutMs === undefined ? {} : { timeoutMs }) }) });
  cleanups.push(async () => void (await manager.close({ drain: false, timeoutMs: 2_000 })));
  for (const [name, profile] of Object.entries(profiles)) manager.registerProfile(name, profile);
  return { proxy, client, manager, prefix };
}

/** A Manager on its own connection straight to Redis (no proxy): subscribes users, reads the truth. */
function reader(prefix: string, profiles: Record<string, ProfileConfig>): Manager {
  const client = new Redis({ port: server.port });
  const manager = new Manager({ store: new RedisStore({ client, prefix }) });
  for (const [name, profile] of Object.entries(profiles)) manager.registerProfile(name, profile);
  cleanups.push(async () => {
    await manager.close({ drain: false });
    client.disconnect();
  });
  return manager;
}

/** The usage Redis holds for a user, read without the proxy. */
async function usageOf(truth: Manager, userId: string): Promise<number> {
  const sub = await truth.getSubscription(userId);
  if (sub === undefined) throw new Error(`no subscription for ${userId}`);
  return sub.usage;
}

/**
 * Redis reachable again, and every command the rig's client had sent is done: heal the proxy,
 * then a PING on the same client, which ioredis sends after what it re-sends on reconnecting.
 */
async function settled(r: Rig): Promise<void> {
  r.proxy.heal();
  expect(await r.client.ping()).toBe('PONG');
}

/** Requests about one user: every key of a tenant carries its id (docs/redis.md, Keys). */
const about = (userId: string) => (q: ProxiedRequest) => q.bytes.includes(userId);

/** Resolves when the task with this id enters `state`. */
function entered(manager: Manager, taskId: string, state: string): Promise<void> {
  return new Promise((resolve) => {
    const listener = (e: { id: string; to: string }): void => {
      if (e.id !== taskId || e.to !== state) return;
      manager.off('task', listener);
      resolve();
    };
    manager.on('task', listener);
  });
}

/** The code a call was answered with: 'allowed', 'denied' (rate), or the error code. */
async function outcome(call: Promise<{ allowed: boolean }>): Promise<string> {
  try {
    return (await call).allowed ? 'allowed' : 'denied';
  } catch (error) {
    if (!(error instanceof TaskvalveError)) throw error;
    return error.code;
  }
}

describe('a refund applied once', () => {
  // One unit an hour: once the bucket is spent, a task is admitted (quota charged) and waits.
  const profiles = { slow: { rate: { limit: 1, intervalMs: 3_600_000 }, quota: { limit: 100 } } };

  it('a task canceled before it started, whose refund reply is lost and its connection reset: usage is exactly what it was before the submit', async () => {
    const r = await rig(profiles);
    const truth = reader(r.prefix, profiles);
    const user = `refund-${r.prefix}`;
    await r.manager.subscribe(user, 'slow');
    const limiter = r.manager.getLimiter(user);
    // Usage 1 and an empty bucket: a refund applied twice would show (usage cannot go below 0).
    expect((await limiter.check(1)).allowed).toBe(true);

    /** A task admitted (charged) that waits for its turn, aborted; its refund under a fault or not. */
    const cycle = async (taskId: string, fault: boolean): Promise<number> => {
      const controller = new AbortController();
      const waiting = entered(r.manager, taskId, 'WAITING_RATE');
      const task = limiter.submit(() => 'ran', { signal: controller.signal, taskId });
      await waiting;
      expect(await usageOf(truth, user)).toBe(2);
      const lost = fault ? r.proxy.loseReplyThenReset({ match: about(user) }) : undefined;
      controller.abort();
      expect((await rejection(task)).code).toBe('ABORTED');
      return lost === undefined ? 0 : await lost.done;
    };
    // Once without a fault, so that Redis has every script the round needs (no NOSCRIPT detour).
    expect(await cycle('warm-up', false)).toBe(0);
    // A refund lands asynchronously (after a NOSCRIPT reload, even after later commands).
    await eventually(async () => (await usageOf(truth, user)) === 1, 'the warm-up refund landed');

    expect(await cycle('faulted', true)).toBe(1); // the refund ran on Redis; its reply was lost
    await settled(r);
    await r.manager.close({ drain: false });
    expect(await usageOf(truth, user)).toBe(1);
  });
});

describe('an admission whose reply is lost: charged at most once, and not at all if its caller saw a failure', () => {
  const profiles = { p: { rate: { limit: 1000, intervalMs: 1000 }, quota: { limit: 1000 } } };
  // Each fault, and the store's timeout for it (the default where nothing waits for it).
  const faults = {
    'lost reply then reset (ioredis re-sends it)': { timeoutMs: undefined, inject: (r: Rig, user: string) => r.proxy.loseReplyThenReset({ match: about(user) }) },
    'lost reply, connection open (the call times out in the store)': { timeoutMs: 400, inject: (r: Rig, user: string) => r.proxy.dropReplies(1, { match: about(user) }) },
  };
  const calls = {
    check: (m: Manager, user: string) => m.getLimiter(user).check(1),
    submit: (m: Manager, user: string) => m.getLimiter(user).submit(() => ({ allowed: true })),
  };

  for (const [faultName, { timeoutMs, inject }] of Object.entries(faults)) {
    for (const [callName, call] of Object.entries(calls)) {
      it(`${faultName}, on ${callName}(): usage equals the units callers were told were admitted`, async () => {
        const r = await rig(profiles, timeoutMs);
        const truth = reader(r.prefix, profiles);
        const user = `admit-${r.prefix}`;
        await r.manager.subscribe(user, 'p');
        let told = 0;
        // Warm-up, no fault (loads the scripts).
        if ((await outcome(call(r.manager, user))) === 'allowed') told++;
        const fault = inject(r, user);
        const answer = await outcome(call(r.manager, user));
        expect(['allowed', 'STORE_UNAVAILABLE']).toContain(answer);
        if (answer === 'allowed') told++;
        expect(await fault.done).toBe(1); // the admission ran on Redis; its reply was lost
        // Redis is reachable again: whatever the store reconciles, it settles by close().
        await settled(r);
        await r.manager.close({ drain: false });
        expect(await usageOf(truth, user), `callers were told ${told} (the faulted call: ${answer})`).toBe(told);
      });
    }
  }
});

describe('an admission whose reply is lost and whose caller saw a failure gives its rate units back, not only its quota', () => {
  // A long interval: nothing refills during the test, so the bucket shows exactly what was taken.
  const buckets = {
    'its own bucket': { rate: { limit: 2, intervalMs: 3_600_000 }, quota: { limit: 1000 } },
    'a shared bucket (a key of its own, in the same call)': { rate: { limit: 2, intervalMs: 3_600_000, shared: 'faults-shared' }, quota: { limit: 1000 } },
  };
  for (const [bucketName, profile] of Object.entries(buckets)) {
    it(`${bucketName}: one unit of two is left after the warm-up, and still one after the failed check`, async () => {
      const profiles = { p: profile };
      const r = await rig(profiles, 400);
      const truth = reader(r.prefix, profiles);
      const user = `units-${r.prefix}`;
      await r.manager.subscribe(user, 'p');
      expect(await outcome(r.manager.getLimiter(user).check(1))).toBe('allowed');
      const lost = r.proxy.dropReplies(1, { match: about(user) });
      expect(await outcome(r.manager.getLimiter(user).check(1))).toBe('STORE_UNAVAILABLE');
      expect(await lost.done).toBe(1); // the admission ran on Redis and took a unit; its reply was lost
      await settled(r);
      await r.manager.close({ drain: false });
      const after = await truth.getLimiter(user).peek();
      expect(after.usage).toBe(1);
      expect(after.remaining).toBe(1);
    });
  }
});

describe('a reply lost on a connection that stays open, with calls behind it', () => {
  const profiles = { p: { rate: { limit: 1000, intervalMs: 1000 }, quota: { limit: 1000 } } };

  it('the client pairs later replies with the wrong calls: every caller is answered, none is charged beyond what it was told', async () => {
    const r = await rig(profiles, 400);
    const truth = reader(r.prefix, profiles);
    const users = Array.from({ length: 20 }, (_, i) => `step-${i}-${r.prefix}`);
    for (const user of users) await r.manager.subscribe(user, 'p');
    // Warm-up, no fault (loads the scripts, learns the profiles).
    expect(await Promise.all(users.map((u) => outcome(r.manager.getLimiter(u).check(1))))).toEqual(users.map(() => 'allowed'));
    const told = new Map(users.map((u) => [u, 1]));
    // The reply of the first admission is lost; the admissions sent after it get replies that
    // are not theirs (the next call's), as a client on such a connection always does.
    const lost = r.proxy.dropReplies(1, { match: (q) => q.command === 'EVALSHA' });
    const answers = await Promise.all(
      Array.from({ length: 5 }, () =>
        Promise.all(
          users.map(async (u) => {
            const answer = await outcome(r.manager.getLimiter(u).check(1));
            if (answer === 'allowed') told.set(u, (told.get(u) ?? 0) + 1);
            return answer;
          }),
        ),
      ),
    );
    expect(await lost.done).toBe(1);
    // Each caller got an answer: a decision, or the store's error.
    expect([...new Set(answers.flat())].filter((a) => a !== 'allowed' && a !== 'STORE_UNAVAILABLE')).toEqual([]);
    expect(answers.flat()).toContain('STORE_UNAVAILABLE');
    // The connection is reset (healed); what was in doubt is settled by close().
    await settled(r);
    await r.manager.close({ drain: false });
    for (const user of users) expect(await usageOf(truth, user), user).toBe(told.get(user));
  });

  it('the same when the server has lost its scripts (a restart, a failover, SCRIPT FLUSH): a call that read another call\'s NOSCRIPT after its own EVAL applied is taken back', async () => {
    const r = await rig(profiles, 400);
    const truth = reader(r.prefix, profiles);
    const user = `noscript-${r.prefix}`;
    await r.manager.subscribe(user, 'p');
    const limiter = r.manager.getLimiter(user);
    expect(await outcome(limiter.check(1))).toBe('allowed');
    let told = 1;
    const admin = new Redis({ port: server.port });
    cleanups.push(() => admin.disconnect());
    await admin.script('FLUSH');
    // Every call's EVALSHA is answered NOSCRIPT, and each is sent again as EVAL; the first
    // reply is lost, so each call reads the answer meant for the call before it.
    const lost = r.proxy.dropReplies(1, { match: (q) => q.command === 'EVALSHA' });
    const answers = await Promise.all(Array.from({ length: 10 }, () => outcome(limiter.check(1))));
    told += answers.filter((a) => a === 'allowed').length;
    expect(await lost.done).toBe(1);
    expect(answers).toContain('STORE_UNAVAILABLE');
    await settled(r);
    await r.manager.close({ drain: false });
    expect(await usageOf(truth, user)).toBe(told);
  });
});

describe('writes other than admissions on a connection out of step', () => {
  const profiles = { p: { rate: { limit: 1000, intervalMs: 1000 }, quota: { limit: 100 } } satisfies ProfileConfig };

  it('a subscription change whose reply is lost: no caller is answered with another call\'s reply (another user\'s subscription)', async () => {
    const r = await rig(profiles, 400);
    const users = Array.from({ length: 10 }, (_, i) => `out-of-step-${i}-${r.prefix}`);
    // Each user's quota tells whose subscription a reply describes.
    for (const [i, user] of users.entries()) await r.manager.subscribe(user, 'p', { quota: 100 + i });
    const lost = r.proxy.dropReplies(1, { match: (q) => q.command === 'EVALSHA' && q.bytes.includes(users[0]!) });
    const answers = await Promise.all(
      users.map(async (user, i) => {
        try {
          const sub = await r.manager.updateSubscriptionQuota(user, 200 + i);
          return { user: i, quotaLimit: sub.quotaLimit, userId: sub.userId === user };
        } catch (error) {
          if (!(error instanceof TaskvalveError)) throw error;
          return { user: i, code: error.code };
        }
      }),
    );
    expect(await lost.done).toBe(1);
    // An answer is this user's new subscription, or STORE_UNAVAILABLE (the change may have applied).
    for (const [i, answer] of answers.entries()) {
      expect([{ user: i, quotaLimit: 200 + i, userId: true }, { user: i, code: 'STORE_UNAVAILABLE' }]).toContainEqual(answer);
    }
    expect(answers[0]).toEqual({ user: 0, code: 'STORE_UNAVAILABLE' });
  });

  it('a read whose reply is lost: no caller is answered with another user\'s subscription', async () => {
    const r = await rig(profiles, 400);
    const users = Array.from({ length: 10 }, (_, i) => `read-out-of-step-${i}-${r.prefix}`);
    for (const [i, user] of users.entries()) await r.manager.subscribe(user, 'p', { quota: 100 + i });
    const lost = r.proxy.dropReplies(1, { match: (q) => q.command === 'EVALSHA' && q.bytes.includes(users[0]!) });
    const answers = await Promise.all(
      users.map(async (user, i) => {
        try {
          const sub = await r.manager.getSubscription(user);
          return { user: i, quotaLimit: sub?.quotaLimit, userId: sub?.userId === user };
        } catch (error) {
          if (!(error instanceof TaskvalveError)) throw error;
          return { user: i, code: error.code };
        }
      }),
    );
    expect(await lost.done).toBe(1);
    for (const [i, answer] of answers.entries()) {
      expect([{ user: i, quotaLimit: 100 + i, userId: true }, { user: i, code: 'STORE_UNAVAILABLE' }]).toContainEqual(answer);
    }
    expect(answers[0]).toEqual({ user: 0, code: 'STORE_UNAVAILABLE' });
  });
});

describe('dead-letter reads on a connection out of step', () => {
  const profiles = { p: { rate: { limit: 1000, intervalMs: 1000 }, quota: { limit: 100 }, retry: { attempts: 1 } } satisfies ProfileConfig };

  it('a read whose reply is lost: no dlq.get is answered with another entry', async () => {
    const r = await rig(profiles, 400);
    const user = `dlq-read-${r.prefix}`;
    await r.manager.subscribe(user, 'p');
    for (let i = 0; i < 5; i++) await rejection(r.manager.getLimiter(user).submit(() => Promise.reject(new Error(`letter ${i}`))));
    const ids = (await r.manager.dlq.list()).map((e) => e.id);
    expect(ids).toHaveLength(5);
    // The reply of a subscription read is lost; the dead-letter reads sent after it get the next call's reply.
    const lost = r.proxy.dropReplies(1, { match: (q) => q.command === 'EVALSHA' && q.bytes.includes(`{u:${user}}`) });
    const read = r.manager.getSubscription(user).catch(() => undefined);
    const answers = await Promise.all(
      ids.map(async (id) => {
        try {
          return (await r.manager.dlq.get(id))?.id === id ? 'own' : 'another';
        } catch (error) {
          if (!(error instanceof TaskvalveError)) throw error;
          return error.code;
        }
      }),
    );
    await read;
    expect(await lost.done).toBe(1);
    expect(answers.filter((a) => a !== 'own' && a !== 'STORE_UNAVAILABLE')).toEqual([]);
    expect(answers).toContain('STORE_UNAVAILABLE');
  });
});

describe('a hard quota under repeated faults', () => {
  const profiles = { hard: { rate: { limit: 1000, intervalMs: 1000 }, quota: { limit: 3, kind: 'hard' as const }, pool: { perUserConcurrency: 1 } } };

  it('a hard quota of 3 is never exceeded: tasks started plus checks allowed stay within 3', async () => {
    const r = await rig(profiles, 400);
    const truth = reader(r.prefix, profiles);
    const user = `hard-${r.prefix}`;
    await r.manager.subscribe(user, 'hard');
    const limiter = r.manager.getLimiter(user);
    let granted = 0;
    const log: string[] = [];

    // A task that runs and holds the user's one slot: tasks submitted behind it are admitted
    // (charged) and wait, so they can be canceled before they start (refunded).
    const release = gate();
    const blocker = limiter.submit(() => {
      granted++;
      return release.opened;
    });

    /** A task admitted behind the blocker, then aborted before it starts; its refund under `fault`. */
    const queuedThenAborted = async (taskId: string, fault: boolean): Promise<string> => {
      const controller = new AbortController();
      const queued = entered(r.manager, taskId, 'QUEUED');
      const task = limiter.submit(
        () => {
          granted++;
        },
        { signal: controller.signal, taskId },
      );
      if (!(await Promise.race([queued.then(() => true), task.then(() => false, () => false)]))) return `not admitted (${(await rejection(task)).code})`;
      const lost = fault ? r.proxy.loseReplyThenReset({ match: about(user) }) : undefined;
      controller.abort();
      expect((await rejection(task)).code).toBe('ABORTED');
      return `aborted, ${lost === undefined ? 'refund passed' : `refund replies lost: ${await lost.done}`}`;
    };

    // Once without a fault, so that Redis has the refund scripts (no NOSCRIPT detour).
    log.push(`warm-up: ${await queuedThenAborted('warm-up', false)}`);
    await eventually(async () => (await usageOf(truth, user)) === 1, 'the warm-up refund landed');

    // Each round: a task canceled before it started whose refund reply is lost (then a reset),
    // and a check under a fault of its own, or none.
    const checkFaults = ['none', 'lost reply then reset', 'none', 'dropped reply', 'none', 'lost reply then reset'] as const;
    for (const [i, checkFault] of checkFaults.entries()) {
      const refund = await queuedThenAborted(`round-${i}`, true);
      await settled(r);
      const fault =
        checkFault === 'none' ? undefined : checkFault === 'dropped reply' ? r.proxy.dropReplies(1, { match: about(user) }) : r.proxy.loseReplyThenReset({ match: about(user) });
      const answer = await outcome(limiter.check(1));
      if (answer === 'allowed') granted++;
      await fault?.done;
      await settled(r);
      log.push(`round ${i}: task ${refund}; check (${checkFault}) ${answer}; usage ${await usageOf(truth, user)}, granted ${granted}`);
    }
    release.open();
    await blocker;
    // What is left of the quota, without faults.
    for (let k = 0; k < 6; k++) {
      const answer = await outcome(limiter.check(1));
      if (answer !== 'allowed') {
        expect(answer).toBe('QUOTA_EXCEEDED');
        break;
      }
      granted++;
    }
    log.push(`at the end: usage ${await usageOf(truth, user)}, granted ${granted}`);
    expect(granted, log.join('\n')).toBeLessThanOrEqual(3);
  });
});

/** Calls Redis refused as past their deadline, from its error statistics. */
async function lateRefusals(): Promise<number> {
  const info = await direct.info('errorstats');
  return Number(/errorstat_TASKVALVE_LATE:count=(\d+)/.exec(info)?.[1] ?? 0);
}

describe('a check-only process (it never reads a subscription) under a paused Redis', () => {
  const profiles = { p: { rate: { limit: 1000, intervalMs: 1000 }, quota: { limit: 1000 } } };

  /** Another process subscribed the user (and ran an admission, so Redis has the scripts). */
  async function subscribedElsewhere(prefix: string, user: string): Promise<Manager> {
    const owner = reader(prefix, profiles);
    await owner.subscribe(user, 'p');
    await owner.subscribe(`${user}-warm`, 'p');
    expect((await owner.getLimiter(`${user}-warm`).check(1)).allowed).toBe(true);
    return owner;
  }

  it('blackholed past its timeout: the failed submit is not charged once Redis answers again', async () => {
    const prefix = `faults${++prefixes}`;
    const user = `check-only-${prefix}`;
    const owner = await subscribedElsewhere(prefix, user);
    const r = await rig(profiles, 300, prefix);
    expect(await r.client.ping()).toBe('PONG'); // its profile registration is done
    r.proxy.blackhole();
    let ran = false;
    const error = await rejection(r.manager.getLimiter(user).submit(() => (ran = true)));
    expect(error.code).toBe('STORE_UNAVAILABLE');
    // Redis gets the held call now, past its deadline.
    await settled(r);
    await r.manager.close({ drain: false });
    expect(ran).toBe(false);
    expect(await usageOf(owner, user)).toBe(0);
  });

  it('CLIENT PAUSE past its timeout: the failed check is refused by its deadline when it reaches Redis, and not charged', async () => {
    const prefix = `faults${++prefixes}`;
    const user = `paused-${prefix}`;
    const owner = await subscribedElsewhere(prefix, user);
    const client = new Redis({ host: '127.0.0.1', port: server.port });
    client.on('error', () => {});
    cleanups.push(() => client.disconnect());
    const manager = new Manager({ store: new RedisStore({ client, prefix, timeoutMs: 300 }) });
    cleanups.push(async () => void (await manager.close({ drain: false, timeoutMs: 2_000 })));
    manager.registerProfile('p', profiles.p);
    expect(await client.ping()).toBe('PONG');
    // One call first (on a user nobody subscribed), so that this process knows the server's
    // clock and the paused call is sent (a first call under the pause would wait for its clock
    // reading, fail, and never be sent).
    expect(await outcome(manager.getLimiter(`${user}-nobody`).check(1))).toBe('SUBSCRIPTION_NOT_FOUND');
    const refusedBefore = await lateRefusals();
    // Every client of the server waits (this one included) for 1.5 s: far past the 300 ms timeout.
    await direct.client('PAUSE', 1_500, 'ALL');
    expect(await outcome(manager.getLimiter(user).check(1))).toBe('STORE_UNAVAILABLE');
    // Answered on the same connection after the paused call: the pause is over and the call ran.
    expect(await client.ping()).toBe('PONG');
    // It carried a deadline though it was this process's first call: Redis refused it (never
    // applied, rather than applied and then taken back).
    expect(await lateRefusals()).toBe(refusedBefore + 1);
    await manager.close({ drain: false });
    expect(await usageOf(owner, user)).toBe(0);
  });
});

describe('dead letters under faults', () => {
  const profiles = { p: { rate: { limit: 100, intervalMs: 1000 }, quota: { limit: 100 }, retry: { attempts: 1 } } satisfies ProfileConfig };

  it('a dead letter whose store call gets no answer: the caller is told it was not stored, and it never lands later', async () => {
    const r = await rig(profiles, 300);
    const truth = reader(r.prefix, profiles);
    const user = `dlq-${r.prefix}`;
    await truth.subscribe(user, 'p');
    // Warm-up: one letter stored normally (the scripts are loaded, the clock is known).
    await expect(r.manager.getLimiter(user).submit(() => Promise.reject(new Error('first')))).rejects.toMatchObject({ code: 'TASK_FAILED' });
    expect(await truth.dlq.list()).toHaveLength(1);
    const letters: unknown[] = [];
    r.manager.on('dead-letter', (e) => letters.push(e));
    // Every reply of the dead-letter call is lost: it runs on Redis, but the store hears nothing.
    const lost = r.proxy.dropReplies(1, { match: (q) => q.bytes.includes('"second"') });
    const error = await rejection(r.manager.getLimiter(user).submit(() => Promise.reject(new Error('second'))));
    expect(error).toMatchObject({ code: 'TASK_FAILED' });
    expect((error as Error).message).toMatch(/dead letter was not stored/);
    await lost.done;
    await settled(r);
    // The letter that ran on Redis is taken back once the store settles the call in doubt.
    await eventually(async () => (await truth.dlq.list()).length === 1, 'the lost letter taken back');
    await r.manager.close({ drain: false });
    const list = await truth.dlq.list();
    expect(list.map((e) => e.error.message)).toEqual(['first']);
    expect(letters).toEqual([]);
  });

  it('letters gathered in one call whose reply is lost: each caller told "not stored" has no letter, every other caller has exactly one', async () => {
    const r = await rig(profiles, 300);
    const truth = reader(r.prefix, profiles);
    const user = `dlq-many-${r.prefix}`;
    await truth.subscribe(user, 'p');
    await expect(r.manager.getLimiter(user).submit(() => Promise.reject(new Error('warm')))).rejects.toMatchObject({ code: 'TASK_FAILED' });
    // 30 tasks fail at once: the first letter goes alone, the others gather behind it. The reply
    // of the call that carries 'm17' (with its companions) is lost.
    const lost = r.proxy.dropReplies(1, { match: (q) => q.bytes.includes('"m17"') });
    const outcomes = await Promise.all(
      Array.from({ length: 30 }, (_, i) => rejection(r.manager.getLimiter(user).submit(() => Promise.reject(new Error(`m${i}`))))),
    );
    await lost.done;
    await settled(r);
    const notStored = outcomes.flatMap((e, i) => (/dead letter was not stored/.test((e as Error).message) ? [`m${i}`] : []));
    // More than one letter went in the lost call, and all of them were reported not stored.
    expect(notStored.length).toBeGreaterThan(1);
    expect(notStored).toContain('m17');
    await r.manager.close({ drain: false });
    const stored = (await truth.dlq.list()).map((e) => e.error.message);
    const expected = ['warm', ...Array.from({ length: 30 }, (_, i) => `m${i}`).filter((m) => !notStored.includes(m))];
    expect(stored.sort()).toEqual(expected.sort());
  });
});

describe('a retry the store cannot re-admit', () => {
  const profiles = { p: { rate: { limit: 1000, intervalMs: 1000 }, quota: { limit: 100 }, retry: { attempts: 2, baseMs: 50, maxMs: 50 } } satisfies ProfileConfig };

  it('is dead-lettered with its own failure, saying why it was not retried (it ran, so it stays charged)', async () => {
    const r = await rig(profiles, 300);
    const truth = reader(r.prefix, profiles);
    const user = `retry-${r.prefix}`;
    await truth.subscribe(user, 'p');
    const moves: string[] = [];
    r.manager.on('task', (e) => moves.push(`${e.from}>${e.to}`));
    r.manager.on('error', () => {});
    let runs = 0;
    const error = await rejection(
      r.manager.getLimiter(user).submit(() => {
        runs++;
        // The first attempt fails as Redis goes silent: its retry's rate turn cannot be taken.
        r.proxy.blackhole();
        throw new Error('first attempt failed');
      }),
    );
    expect(runs).toBe(1);
    // Its own failure, not STORE_UNAVAILABLE (which would tell its caller that it never ran).
    expect(error.code).toBe('TASK_FAILED');
    expect(error.message).toMatch(/first attempt failed \(not retried: Redis is unavailable/);
    expect(moves.slice(-2)).toEqual(['RUNNING>RETRY_WAIT', 'RETRY_WAIT>FAILED']);
    await settled(r);
    await r.manager.close({ drain: false });
    // It ran once: its quota stays charged.
    expect(await usageOf(truth, user)).toBe(1);
  });

  it('retries whose rate turns went together in one call whose reply is lost: each is dead-lettered and its units given back, the others run', async () => {
    const gathered = { g: { rate: { limit: 5, intervalMs: 86_400_000 }, quota: { limit: 100 }, retry: { attempts: 2, baseMs: 1, maxMs: 1 } } satisfies ProfileConfig };
    const r = await rig(gathered, 300);
    const truth = reader(r.prefix, gathered);
    r.manager.on('error', () => {});
    const users = Array.from({ length: 12 }, (_, i) => `gt-${r.prefix}-${i}`);
    let letterless = 0;
    for (const user of users) await truth.subscribe(user, 'g');
    // The rate turn of user 7's retry goes in a call with others that retry at the same moment
    // (the first goes alone, the rest gather behind it): that call's reply is lost.
    const lost = r.proxy.dropReplies(1, { match: (q) => q.bytes.includes('\r\ntake\r\n') && q.bytes.includes(users[7]!) });
    const outcomes = await Promise.all(
      users.map(async (user) => {
        let runs = 0;
        try {
          await r.manager.getLimiter(user).submit(() => {
            if (++runs === 1) throw new Error('first attempt');
            return 'second';
          });
          return 'retried';
        } catch (error) {
          expect((error as Error).message).toMatch(/first attempt \(not retried: Redis is unavailable/);
          if (/dead letter was not stored/.test((error as Error).message)) letterless++;
          return 'not retried';
        }
      }),
    );
    await lost.done;
    await settled(r);
    await r.manager.close({ drain: false });
    expect(outcomes[7]).toBe('not retried');
    expect(outcomes.filter((o) => o === 'not retried').length).toBeGreaterThan(1);
    // Each bucket holds what ran on it: 5 units, minus the first attempt, minus the retry if it ran.
    for (const [i, user] of users.entries()) {
      let allowed = 0;
      while (allowed < 10 && (await truth.getLimiter(user).check(1)).allowed) allowed++;
      expect({ user: i, allowed }).toEqual({ user: i, allowed: outcomes[i] === 'retried' ? 3 : 4 });
    }
    // A letter whose caller was told it was not stored is not there; every other one is.
    expect((await truth.dlq.list()).length).toBe(outcomes.filter((o) => o === 'not retried').length - letterless);
  });
});

describe('close(), then the caller quits its client', () => {
  // Redis answers slowly: the profiles' configurations, recorded one call after another from
  // registerProfile on, are still being recorded when the Manager is closed.
  it('close() resolves once no call of the store is in flight, and starts none after: QUIT is the last command, answered OK', async () => {
    const r = await rig({
      a: { rate: { limit: 5, intervalMs: 1_000, shared: 'pool' } },
      b: { rate: { limit: 5, intervalMs: 1_000, shared: 'pool' }, quota: { limit: 10 } },
      c: { rate: { limit: 9, intervalMs: 1_000 } },
    });
    r.proxy.delay(40);
    await r.manager.close({ drain: false, timeoutMs: 10_000 });
    // Nothing of the store's is on its way, either way.
    const closed = r.proxy.stats();
    expect({ awaiting: closed.awaitingReplies, held: closed.heldChunks }).toEqual({ awaiting: 0, held: 0 });
    r.proxy.delay(0);
    expect(await r.client.quit()).toBe('OK');
    // QUIT was the one request forwarded after close() resolved.
    const after = await r.proxy.until((s) => s.open === 0);
    expect(after.requestsForwarded).toBe(closed.requestsForwarded + 1);
  });
});

describe('overload is shed, not queued', () => {
  const profiles = { p: { rate: { limit: 10_000, intervalMs: 1000 }, quota: { limit: 10_000 } } satisfies ProfileConfig };

  it('past maxPending decisions waiting for Redis (a bound on memory), an admission fails at once with STORE_UNAVAILABLE (overloaded), under the outage policy', async () => {
    const prefix = `faults${++prefixes}`;
    const truth = reader(prefix, profiles);
    const user = `overload-${prefix}`;
    await truth.subscribe(user, 'p');
    const client = new Redis({ host: '127.0.0.1', port: server.port });
    cleanups.push(() => client.disconnect());
    const manager = new Manager({ store: new RedisStore({ client, prefix, maxPending: 10, timeoutMs: 10_000 }), onStoreUnavailable: 'fail-open' });
    cleanups.push(async () => void (await manager.close({ drain: false, timeoutMs: 2_000 })));
    manager.registerProfile('p', profiles.p);
    const limiter = manager.getLimiter(user);
    expect((await limiter.check(1)).allowed).toBe(true); // seen in good standing: 'fail-open' may admit it
    // Scripts wait while writes are paused; this connection can still unpause.
    await direct.client('PAUSE', 30_000, 'WRITE');
    try {
      let answered = 0;
      const waiting = Array.from({ length: 10 }, () => limiter.check(1).then((d) => (answered++, d)));
      // Ten decisions wait: the next ones are not queued behind them. A user never seen is refused...
      const error = await rejection(manager.getLimiter(`${user}-unseen`).check(1));
      expect(error).toMatchObject({ code: 'STORE_UNAVAILABLE' });
      expect((error as Error).message).toMatch(/overloaded/);
      // ...and one seen in good standing is admitted by 'fail-open', charging nothing.
      expect((await limiter.check(1)).allowed).toBe(true);
      expect(answered).toBe(0);
      await direct.client('UNPAUSE');
      expect((await Promise.all(waiting)).every((d) => d.allowed)).toBe(true);
    } finally {
      await direct.client('UNPAUSE');
    }
    expect(await usageOf(truth, user)).toBe(11);
  });

  it("once a node's oldest admission has waited maxDelayMs, new admissions are shed at once; a burst answered in time is not", async () => {
    const prefix = `faults${++prefixes}`;
    const truth = reader(prefix, profiles);
    const user = `delay-${prefix}`;
    await truth.subscribe(user, 'p');
    const client = new Redis({ host: '127.0.0.1', port: server.port });
    cleanups.push(() => client.disconnect());
    const manager = new Manager({ store: new RedisStore({ client, prefix, maxDelayMs: 100, timeoutMs: 10_000 }), onStoreUnavailable: 'fail-closed' });
    cleanups.push(async () => void (await manager.close({ drain: false, timeoutMs: 2_000 })));
    manager.registerProfile('p', profiles.p);
    const limiter = manager.getLimiter(user);
    // 2,000 decisions at once, far more than one call carries: none is shed, all are answered.
    const burst = await Promise.all(Array.from({ length: 2000 }, () => limiter.check(1)));
    expect(burst.every((d) => d.allowed)).toBe(true);
    await direct.client('PAUSE', 30_000, 'WRITE');
    try {
      const first = limiter.check(1);
      const second = limiter.check(1); // the oldest has not waited 100 ms yet: not shed
      await new Promise((resolve) => setTimeout(resolve, 150));
      const error = await rejection(limiter.check(1));
      expect(error).toMatchObject({ code: 'STORE_UNAVAILABLE' });
      expect((error as Error).message).toMatch(/overloaded: an admission has waited \d+ ms for Redis \(RedisStore maxDelayMs 100\)/);
      await direct.client('UNPAUSE');
      expect([(await first).allowed, (await second).allowed]).toEqual([true, true]);
    } finally {
      await direct.client('UNPAUSE');
    }
    expect(await usageOf(truth, user)).toBe(2002);
  });
});
