// Self-test of test/support/fault-proxy.ts: each fault against a real redis-server, through a
// real ioredis client (or a raw socket where the exact bytes matter). The truth about what Redis
// ran is read directly from the server, never through the proxy.
import { connect, type Socket } from 'node:net';
import { Redis, type RedisOptions } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { eventually } from '../helpers.js';
import { startFaultProxy, type FaultProxy } from './fault-proxy.js';
import { startRedis, type RedisServer } from './redis.js';
import { RespFrames } from './resp-frames.js';

let server: RedisServer;
let direct: Redis;
let proxy: FaultProxy;
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
  await direct.flushall();
});

async function freshProxy(): Promise<FaultProxy> {
  proxy = await startFaultProxy({ port: server.port });
  cleanups.push(() => proxy.close());
  return proxy;
}

/** An ioredis client through the proxy; errors are expected here (resets), so they are collected. */
function client(options: RedisOptions = {}): Redis & { errors: string[] } {
  const c = Object.assign(new Redis({ port: proxy.port, ...options }), { errors: [] as string[] });
  c.on('error', (error: NodeJS.ErrnoException) => c.errors.push(error.code ?? error.message));
  cleanups.push(() => c.disconnect());
  return c;
}

function encode(args: string[]): Buffer {
  return Buffer.from(`*${args.length}\r\n` + args.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join(''));
}

/** A raw socket through the proxy: the exact reply frames it receives, and how it ended. */
interface Raw {
  socket: Socket;
  replies: string[];
  /** Resolves with the error code the socket ended with ('' for a clean end). */
  ended: Promise<string>;
  /** Resolves once `n` replies have arrived. */
  replied(n: number): Promise<string[]>;
}

async function raw(): Promise<Raw> {
  const socket = connect({ host: '127.0.0.1', port: proxy.port });
  cleanups.push(() => void socket.destroy());
  const frames = new RespFrames('replies');
  const replies: string[] = [];
  const waiting: { n: number; resolve(r: string[]): void }[] = [];
  socket.on('data', (chunk: Buffer) => {
    for (const frame of frames.push(chunk)) replies.push(frame.toString());
    for (const w of waiting.splice(0)) {
      if (replies.length >= w.n) w.resolve(replies);
      else waiting.push(w);
    }
  });
  const ended = new Promise<string>((resolve) => {
    let code = '';
    socket.on('error', (error: NodeJS.ErrnoException) => (code = error.code ?? error.message));
    socket.on('close', () => resolve(code));
  });
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  return {
    socket,
    replies,
    ended,
    replied: (n) => (replies.length >= n ? Promise.resolve(replies) : new Promise((resolve) => waiting.push({ n, resolve }))),
  };
}

describe('fault proxy', () => {
  it('transparent: commands and their replies pass unchanged, and the counters account for them', async () => {
    await freshProxy();
    const a = await raw();
    const b = await raw();
    a.socket.write(Buffer.concat([encode(['SET', 'k', 'v\r\nw']), encode(['GET', 'k']), encode(['PING'])]));
    b.socket.write('PING\r\n'); // an inline command
    expect(await a.replied(3)).toEqual(['+OK\r\n', '$4\r\nv\r\nw\r\n', '+PONG\r\n']);
    expect(await b.replied(1)).toEqual(['+PONG\r\n']);
    expect(await proxy.idle()).toEqual({
      connections: 2, open: 2, refused: 0, resets: 0,
      requestsForwarded: 4, repliesDelivered: 4, repliesDropped: 0,
      awaitingReplies: 0, heldChunks: 0, partialBytes: 0, protocolErrors: 0,
    });
  });

  it("drop replies: the reply discarded is that request's own, when requests share a chunk and when one spans chunks", async () => {
    await freshProxy();
    const r = await raw();
    const dropped = proxy.dropReplies(1, { match: (q) => q.command === 'INCR' });
    r.socket.write(Buffer.concat([encode(['SET', 'n', '1']), encode(['INCR', 'n']), encode(['GET', 'n'])]));
    // The GET's answer shows the INCR ran; only the INCR's reply is missing.
    expect(await r.replied(2)).toEqual(['+OK\r\n', '$1\r\n2\r\n']);
    expect(await dropped.done).toBe(1);

    // One request arrives a byte at a time (the proxy has each byte before the next is sent).
    const spanning = proxy.dropReplies(1, { match: (q) => q.args[1]?.toString() === 'lost' });
    const lost = encode(['ECHO', 'lost']);
    for (let i = 0; i < lost.length; i++) {
      r.socket.write(lost.subarray(i, i + 1));
      if (i < lost.length - 1) await proxy.until((s) => s.partialBytes === i + 1);
    }
    r.socket.write(encode(['ECHO', 'kept']));
    expect(await r.replied(3)).toEqual(['+OK\r\n', '$1\r\n2\r\n', '$4\r\nkept\r\n']);
    expect(await spanning.done).toBe(1);
    expect(await direct.get('n')).toBe('2');
    const stats = await proxy.idle();
    expect(stats).toMatchObject({ requestsForwarded: 5, repliesDelivered: 3, repliesDropped: 2, resets: 0, open: 1 });

    // The connection stayed open; heal() resets it, as it lost replies (a real RST).
    proxy.heal();
    expect(await r.ended).toBe('ECONNRESET');
    expect(proxy.stats()).toMatchObject({ resets: 1, open: 0 });
  });

  it('drop replies with ioredis: INCR times out on the client (commandTimeout) yet Redis incremented the key; after heal() ioredis re-sends it', async () => {
    await freshProxy();
    const c = client({ commandTimeout: 300 });
    expect(await c.ping()).toBe('PONG');
    const fault = proxy.dropReplies(1, { match: (q) => q.command === 'INCR' });
    await expect(c.incr('k')).rejects.toThrow('Command timed out');
    expect(await fault.done).toBe(1);
    expect(await direct.get('k')).toBe('1');
    expect(c.status).toBe('ready');
    expect(proxy.stats()).toMatchObject({ connections: 1, open: 1, resets: 0, repliesDropped: 1 });

    // ioredis keeps the timed-out INCR as unanswered; the reset makes it send it again.
    proxy.heal();
    expect(await c.ping()).toBe('PONG');
    expect(await direct.get('k')).toBe('2');
    expect(proxy.stats()).toMatchObject({ connections: 2, resets: 1 });
  });

  it('lose reply then reset: ioredis re-sends the command after reconnecting, and Redis runs it twice', async () => {
    await freshProxy();
    const c = client(); // ioredis defaults
    expect(await c.ping()).toBe('PONG');
    const fault = proxy.loseReplyThenReset({ match: (q) => q.command === 'INCR' });
    // One call, one answer to the caller; two increments on the server.
    expect(await c.incr('twice')).toBe(2);
    expect(await fault.done).toBe(1);
    expect(await direct.get('twice')).toBe('2');
    expect(proxy.stats()).toMatchObject({ connections: 2, open: 1, resets: 1, repliesDropped: 1 });
  });

  it('lose reply then reset: the replies to earlier requests in the same chunk are delivered first, then an RST', async () => {
    await freshProxy();
    const r = await raw();
    const fault = proxy.loseReplyThenReset({ match: (q) => q.command === 'INCR' });
    r.socket.write(Buffer.concat([encode(['SET', 'm', '5']), encode(['INCR', 'm']), encode(['INCR', 'other'])]));
    // Linux hands over the bytes that came before the RST, then reports the end as a clean one
    // when both were queued before the socket was read; otherwise as ECONNRESET.
    expect(['ECONNRESET', '']).toContain(await r.ended);
    expect(r.replies).toEqual(['+OK\r\n']);
    expect(await fault.done).toBe(1);
    expect(await direct.get('m')).toBe('6');
  });

  it('reset: every open connection gets an RST at once; ioredis clients reconnect by themselves', async () => {
    await freshProxy();
    const [a, b] = [client(), client()];
    expect(await Promise.all([a.ping(), b.ping()])).toEqual(['PONG', 'PONG']);
    const r = await raw();
    expect(proxy.reset()).toBe(3);
    expect(await r.ended).toBe('ECONNRESET');
    expect(await Promise.all([a.incr('x'), b.incr('x')])).toEqual(expect.arrayContaining([1, 2]));
    expect(proxy.stats()).toMatchObject({ connections: 5, open: 2, resets: 3 });
    expect([...a.errors, ...b.errors]).toContain('ECONNRESET');
  });

  it('blackhole: connections and bytes are accepted, nothing goes through either way; heal() lets the held bytes on, in order', async () => {
    await freshProxy();
    const c = client({ commandTimeout: 300 });
    expect(await c.ping()).toBe('PONG');
    const before = proxy.stats();
    proxy.blackhole();
    const incr = c.incr('bh');
    await proxy.until((s) => s.heldChunks >= 1);
    // A new connection is accepted, but its handshake gets no answer.
    const late = client();
    const latePing = late.ping();
    await proxy.until((s) => s.connections === 2 && s.heldChunks >= 2);
    await expect(incr).rejects.toThrow('Command timed out');
    expect(await direct.get('bh')).toBeNull();
    expect(proxy.stats()).toMatchObject({ requestsForwarded: before.requestsForwarded, repliesDelivered: before.repliesDelivered });
    expect(late.status).not.toBe('ready');

    proxy.heal();
    expect(await latePing).toBe('PONG');
    // The held INCR reached Redis after heal(), and its late answer kept the client in step.
    expect(await c.get('bh')).toBe('1');
    expect(await direct.get('bh')).toBe('1');
    expect(proxy.stats()).toMatchObject({ heldChunks: 0, resets: 0 });
  });

  it('refuse: new connections are reset on arrival, open ones keep working; heal() lets clients in', async () => {
    await freshProxy();
    const open = client();
    expect(await open.ping()).toBe('PONG');
    proxy.refuse();
    const once = client({ lazyConnect: true, retryStrategy: () => null });
    await expect(once.connect()).rejects.toThrow();
    expect(proxy.stats().refused).toBe(1);
    expect(await open.incr('r')).toBe(1);

    // A client with default options keeps trying; its command waits in the offline queue.
    const patient = client();
    const queued = patient.incr('r');
    await proxy.until((s) => s.refused >= 3);
    expect(await direct.get('r')).toBe('1');
    proxy.heal();
    expect(await queued).toBe(2);
    expect(proxy.stats()).toMatchObject({ connections: 2, open: 2 });
  });

  it('delay: every chunk is held, both ways, for the delay, in order', async () => {
    await freshProxy();
    const c = client();
    expect(await c.ping()).toBe('PONG');
    // A delay far longer than the test: the request stays in the proxy until heal().
    proxy.delay(600_000);
    const set = c.set('d', 'x');
    await proxy.until((s) => s.heldChunks === 1);
    expect(await direct.get('d')).toBeNull();
    proxy.heal();
    expect(await set).toBe('OK');

    // The other way: a reply Redis sends while the delay is on waits in the proxy too.
    const r = await raw();
    r.socket.write(encode(['BLPOP', 'later', '0']));
    await proxy.until((s) => s.awaitingReplies === 1);
    proxy.delay(600_000);
    await direct.rpush('later', 'x');
    await proxy.until((s) => s.heldChunks === 1);
    expect(r.replies).toEqual([]);
    proxy.heal();
    expect(await r.replied(1)).toEqual(['*2\r\n$5\r\nlater\r\n$1\r\nx\r\n']);

    // A short delay: replies come by themselves, each to its own command, in order, while
    // other chunks are held behind the first.
    proxy.delay(5);
    const held = proxy.until((s) => s.heldChunks >= 2);
    const pushes: Promise<number>[] = [];
    for (let i = 0; i < 60; i++) {
      pushes.push(c.rpush('order', String(i)));
      if (i % 7 === 0) await new Promise((resolve) => setImmediate(resolve));
    }
    const gets = Array.from({ length: 10 }, (_, i) => c.lindex('order', i * 6));
    await held;
    expect(await Promise.all(pushes)).toEqual(Array.from({ length: 60 }, (_, i) => i + 1));
    expect(await Promise.all(gets)).toEqual(Array.from({ length: 10 }, (_, i) => String(i * 6)));
    expect(await direct.lrange('order', 0, -1)).toEqual(Array.from({ length: 60 }, (_, i) => String(i)));
  });

  it('a fault takes only the requests it matches; a match that throws ends the fault and its done rejects; heal() withdraws a fault that took nothing', async () => {
    await freshProxy();
    const r = await raw();
    const broken = proxy.dropReplies(1, {
      match: () => {
        throw new Error('bad match');
      },
    });
    const unmatched = proxy.dropReplies(2, { match: (q) => q.command === 'DEL' });
    r.socket.write(Buffer.concat([encode(['PING']), encode(['ECHO', 'x'])]));
    expect(await r.replied(2)).toEqual(['+PONG\r\n', '$1\r\nx\r\n']);
    await expect(broken.done).rejects.toThrow('bad match');
    proxy.heal();
    expect(await unmatched.done).toBe(0);
    expect(proxy.stats()).toMatchObject({ repliesDropped: 0, resets: 0, open: 1 });
  });

  it('a request taken by a fault whose connection ends before its reply comes: the fault is done, with nothing discarded', async () => {
    await freshProxy();
    const r = await raw();
    const fault = proxy.dropReplies(1, { match: (q) => q.command === 'BLPOP' });
    r.socket.write(encode(['BLPOP', 'never', '0'])); // Redis answers only when the list gets an element
    await proxy.until((s) => s.awaitingReplies === 1);
    expect(proxy.reset()).toBe(1);
    expect(await fault.done).toBe(0);
    expect(proxy.stats()).toMatchObject({ awaitingReplies: 0, repliesDropped: 0, open: 0 });
  });

  it('close(): the listener stops, every socket is destroyed on both sides, waits are rejected', async () => {
    await freshProxy();
    // Redis's own list of clients tells which connections came through this proxy: their name.
    const name = `via-proxy-${proxy.port}`;
    const [a, b] = [client({ retryStrategy: () => null, connectionName: name }), client({ retryStrategy: () => null, connectionName: name })];
    expect(await Promise.all([a.ping(), b.ping()])).toEqual(['PONG', 'PONG']);
    const r = await raw();
    r.socket.write(encode(['CLIENT', 'SETNAME', name]));
    await r.replied(1);
    const named = async (): Promise<number> => ((await direct.client('LIST')) as string).split('\n').filter((line) => line.includes(` name=${name} `)).length;
    expect(await named()).toBe(3);
    const never = proxy.until(() => false);
    await proxy.close();
    await expect(never).rejects.toThrow('fault proxy closed');
    expect(proxy.stats().open).toBe(0);
    expect(await r.ended).toBe('ECONNRESET');
    await eventually(async () => (await named()) === 0, 'Redis sees no connection from the proxy');
    await expect(
      new Promise((resolve, reject) => {
        const s = connect({ host: '127.0.0.1', port: proxy.port });
        s.once('connect', () => {
          s.destroy();
          resolve('connected');
        });
        s.once('error', (error: NodeJS.ErrnoException) => reject(new Error(error.code)));
      }),
    ).rejects.toThrow('ECONNREFUSED');
  });
});
