// Self-test of test/support/resp-frames.ts: every frame comes out byte for byte, whatever the
// chunking, and each is exactly one value to redis-parser (the parser ioredis uses).
import fc from 'fast-check';
import RedisParser from 'redis-parser';
import { describe, expect, it } from 'vitest';
import { RespFrames, RespProtocolError, requestArgs } from './resp-frames.js';

type Value =
  | { t: '+'; s: string }
  | { t: '-'; s: string }
  | { t: ':'; n: number }
  | { t: '$'; b: Buffer | null }
  | { t: '*'; items: Value[] | null };

function encode(v: Value): Buffer {
  switch (v.t) {
    case '+':
    case '-':
      return Buffer.from(`${v.t}${v.s}\r\n`);
    case ':':
      return Buffer.from(`:${v.n}\r\n`);
    case '$':
      return v.b === null ? Buffer.from('$-1\r\n') : Buffer.concat([Buffer.from(`$${v.b.length}\r\n`), v.b, Buffer.from('\r\n')]);
    case '*':
      return v.items === null ? Buffer.from('*-1\r\n') : Buffer.concat([Buffer.from(`*${v.items.length}\r\n`), ...v.items.map(encode)]);
  }
}

/** What redis-parser (returnBuffers) gives for a value, errors as { error }. */
function expected(v: Value): unknown {
  switch (v.t) {
    case '+':
      return Buffer.from(v.s);
    case '-':
      return { error: v.s };
    case ':':
      return v.n;
    case '$':
      return v.b;
    case '*':
      return v.items === null ? null : v.items.map(expected);
  }
}

function normalise(reply: unknown): unknown {
  if (reply instanceof Error) return { error: reply.message };
  if (Array.isArray(reply)) return reply.map(normalise);
  return reply;
}

/** Every value redis-parser reads from `bytes`, in order. */
function parseAll(bytes: Buffer): unknown[] {
  const out: unknown[] = [];
  const parser = new RedisParser({
    returnBuffers: true,
    returnReply: (reply: unknown) => out.push(normalise(reply)),
    returnError: (error: Error) => out.push(normalise(error)),
    returnFatalError: (error: Error) => {
      throw error;
    },
  });
  parser.execute(bytes);
  return out;
}

const line = fc.string({ unit: fc.constantFrom('a', 'b', ' ', 'é', ':', '$', '*', '-', '+'), maxLength: 12 });
const bytes = fc.uint8Array({ maxLength: 40 }).map((a) => Buffer.from(a));
// Bulk payloads that look like RESP inside (CRLF, type bytes) are the interesting ones.
const tricky = fc.constantFrom(Buffer.from('\r\n'), Buffer.from('*2\r\n$1\r\nx\r\n'), Buffer.from('$-1\r\n'), Buffer.from('\n'), Buffer.from('\r'));
const payload = fc.oneof(bytes, tricky, fc.tuple(bytes, tricky, bytes).map((p) => Buffer.concat(p)));

const { value } = fc.letrec<{ value: Value; leaf: Value }>((tie) => ({
  leaf: fc.oneof(
    line.map((s) => ({ t: '+', s }) as Value),
    line.map((s) => ({ t: '-', s }) as Value),
    fc.maxSafeInteger().map((n) => ({ t: ':', n: n === 0 ? 0 : n }) as Value), // RESP has no -0
    fc.option(payload, { nil: null }).map((b) => ({ t: '$', b }) as Value),
  ),
  value: fc.oneof(
    { depthSize: 'small', withCrossShrink: true },
    tie('leaf'),
    fc.option(fc.array(tie('value'), { maxLength: 5 }), { nil: null }).map((items) => ({ t: '*', items }) as Value),
  ),
}));

/** `bytes` cut at the given points (sorted, deduplicated, inside the buffer). */
function chunked(all: Buffer, cuts: number[]): Buffer[] {
  const points = [...new Set(cuts.map((c) => c % (all.length + 1)))].sort((a, b) => a - b);
  const chunks: Buffer[] = [];
  let from = 0;
  for (const p of [...points, all.length]) {
    if (p > from) chunks.push(all.subarray(from, p));
    from = Math.max(from, p);
  }
  return chunks;
}

function split(side: 'requests' | 'replies', chunks: Buffer[]): { frames: Buffer[]; pending: number } {
  const splitter = new RespFrames(side);
  const frames = chunks.flatMap((c) => splitter.push(c));
  return { frames, pending: splitter.pending };
}

describe('RespFrames', () => {
  it('replies: whatever the chunking, the frames are the encodings, byte for byte, each one value to redis-parser', () => {
    fc.assert(
      fc.property(fc.array(value, { minLength: 1, maxLength: 6 }), fc.array(fc.nat(), { maxLength: 12 }), (values, cuts) => {
        const encoded = values.map(encode);
        const { frames, pending } = split('replies', chunked(Buffer.concat(encoded), cuts));
        expect(frames).toEqual(encoded);
        expect(pending).toBe(0);
        for (let i = 0; i < frames.length; i++) expect(parseAll(frames[i] as Buffer)).toEqual([expected(values[i] as Value)]);
      }),
      { numRuns: 400 },
    );
  });

  it('a stream cut anywhere inside its last frame gives the frames before it and keeps the rest pending', () => {
    fc.assert(
      fc.property(fc.array(value, { minLength: 1, maxLength: 4 }), value, fc.nat(), (whole, last, at) => {
        const encoded = whole.map(encode);
        const tail = encode(last);
        const keep = 1 + (at % tail.length); // 1..length: at least one byte of the last frame is missing
        const cut = tail.subarray(0, tail.length - keep);
        const { frames, pending } = split('replies', [Buffer.concat([...encoded, cut])]);
        expect(frames).toEqual(encoded);
        expect(pending).toBe(cut.length);
      }),
      { numRuns: 300 },
    );
  });

  it('requests: arrays of bulk strings and inline commands, one byte at a time, with their arguments', () => {
    const set = Buffer.from('*3\r\n$3\r\nSET\r\n$4\r\nk\r\nx\r\n$0\r\n\r\n');
    const inline = Buffer.from('PING  hello\r\n');
    const get = Buffer.from('*2\r\n$3\r\nGET\r\n$4\r\nk\r\nx\r\n');
    const all = Buffer.concat([set, inline, get]);
    const oneByOne = Array.from(all, (_, i) => all.subarray(i, i + 1));
    const { frames, pending } = split('requests', oneByOne);
    expect(frames).toEqual([set, inline, get]);
    expect(pending).toBe(0);
    expect(frames.map((f) => requestArgs(f).map((a) => a.toString()))).toEqual([['SET', 'k\r\nx', ''], ['PING', 'hello'], ['GET', 'k\r\nx']]);
  });

  it('bytes that are not RESP are a protocol error, not a guess', () => {
    expect(() => new RespFrames('replies').push(Buffer.from('PONG\r\n'))).toThrow(RespProtocolError);
    expect(() => new RespFrames('replies').push(Buffer.from('$x\r\n'))).toThrow(RespProtocolError);
    expect(() => new RespFrames('replies').push(Buffer.from('$1\r\nabc'))).toThrow(RespProtocolError);
    expect(() => new RespFrames('requests').push(Buffer.from('*1\r\n%1\r\n'))).toThrow(RespProtocolError);
  });
});
