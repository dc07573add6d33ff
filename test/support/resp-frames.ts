/**
 * Splits a RESP byte stream into whole frames (one request, or one reply) without changing a
 * byte: the concatenation of the frames returned is exactly the bytes pushed, minus an
 * incomplete frame at the end, which is kept until the rest of it arrives.
 *
 * Written here rather than taken from `redis-parser` (which ioredis uses): that parser returns
 * decoded values, not where each frame ends in the byte stream, and a proxy must forward bytes.
 * `resp-frames.test.ts` checks this splitter against `redis-parser` as the reference.
 *
 * RESP2 as Redis and ioredis speak it by default: simple strings, errors, integers, bulk
 * strings, arrays (nested, null and empty included); and inline commands (a line of words, as
 * `redis-cli` or telnet may send) at the start of a request. RESP3 types are not framed.
 */

/** Bytes of one frame's header line at most (Redis's own limit on an inline request is 64 KB). */
const MAX_LINE = 64 * 1024;
const CR = 13;
const LF = 10;

/** A byte stream that is not RESP: the connection cannot be framed any further. */
export class RespProtocolError extends Error {
  override readonly name = 'RespProtocolError';
}

/** Which side of a connection a stream comes from: requests may be inline commands, replies may not. */
export type RespSide = 'requests' | 'replies';

/** An incremental splitter of one direction of one connection. */
export class RespFrames {
  /** Slices of the frame being read, from earlier chunks. */
  private parts: Buffer[] = [];
  private partsLength = 0;
  /** A header line read so far, when a chunk ended inside it. */
  private line: Buffer[] = [];
  private lineLength = 0;
  /** Bytes of a bulk string's payload (with its CRLF) still to come; 0 when reading a header line. */
  private payload = 0;
  /** Elements still to come in each open array, innermost last. */
  private readonly open: number[] = [];

  /** @param side `'requests'` accepts inline commands at the start of a frame. */
  constructor(private readonly side: RespSide) {}

  /** Bytes held back: the part of a frame whose end has not arrived yet. */
  get pending(): number {
    return this.partsLength;
  }

  /**
   * Takes the next chunk of the stream and returns the frames it completes, in order (each a
   * slice or a copy of exactly the bytes of one frame). Throws {@link RespProtocolError} on
   * bytes that are not RESP; the splitter is unusable afterwards.
   */
  push(chunk: Buffer): Buffer[] {
    const frames: Buffer[] = [];
    let start = 0; // where the current frame begins in this chunk
    let i = 0;
    while (i < chunk.length) {
      if (this.payload > 0) {
        const take = Math.min(this.payload, chunk.length - i);
        i += take;
        this.payload -= take;
        if (this.payload === 0) {
          if (chunk[i - 1] !== LF || (take >= 2 ? chunk[i - 2] !== CR : false)) throw new RespProtocolError('a bulk string does not end with CRLF');
          if (this.element()) {
            frames.push(this.cut(chunk, start, i));
            start = i;
          }
        }
        continue;
      }
      const eol = chunk.indexOf(LF, i);
      if (eol < 0) {
        this.keepLine(chunk.subarray(i));
        i = chunk.length;
        break;
      }
      const line = this.takeLine(chunk.subarray(i, eol + 1));
      i = eol + 1;
      if (this.header(line)) {
        frames.push(this.cut(chunk, start, i));
        start = i;
      }
    }
    if (start < chunk.length) {
      const rest = chunk.subarray(start);
      this.parts.push(rest);
      this.partsLength += rest.length;
    }
    return frames;
  }

  /** The frame that ends at `end` of this chunk: earlier parts, then `chunk[start, end)`. */
  private cut(chunk: Buffer, start: number, end: number): Buffer {
    const tail = chunk.subarray(start, end);
    let frame = tail;
    if (this.parts.length > 0) {
      this.parts.push(tail);
      frame = Buffer.concat(this.parts, this.partsLength + tail.length);
      this.parts = [];
      this.partsLength = 0;
    }
    return frame;
  }

  private keepLine(part: Buffer): void {
    this.lineLength += part.length;
    if (this.lineLength > MAX_LINE) throw new RespProtocolError(`a header line longer than ${MAX_LINE} bytes`);
    this.line.push(part);
  }

  /** A whole header line (up to and with its LF), joined with what earlier chunks held of it. */
  private takeLine(end: Buffer): Buffer {
    if (this.line.length === 0) return end;
    this.line.push(end);
    const line = Buffer.concat(this.line, this.lineLength + end.length);
    this.line = [];
    this.lineLength = 0;
    return line;
  }

  /** Reads one header line; true when it completes the frame. */
  private header(line: Buffer): boolean {
    const type = line[0];
    const atStart = this.open.length === 0;
    if (atStart && this.side === 'requests' && type !== 0x2a /* * */) {
      // An inline command: the line is the whole request. (A request that is a RESP value
      // other than an array is not one Redis accepts either way.)
      return true;
    }
    if (line.length < 3 || line[line.length - 2] !== CR) throw new RespProtocolError(`a header line without CRLF: ${show(line)}`);
    switch (type) {
      case 0x2b: // + simple string
      case 0x2d: // - error
      case 0x3a: // : integer
        return this.element();
      case 0x24: { // $ bulk string
        const length = count(line);
        if (length < 0) return this.element(); // null bulk string
        this.payload = length + 2;
        return false;
      }
      case 0x2a: { // * array
        const length = count(line);
        if (length <= 0) return this.element(); // null or empty array
        this.open.push(length);
        return false;
      }
      default:
        throw new RespProtocolError(`an unknown RESP type byte ${show(line.subarray(0, 1))} in ${show(line)}`);
    }
  }

  /** One value ended; true when it was the last of the frame. */
  private element(): boolean {
    const open = this.open;
    while (open.length > 0) {
      const last = open.length - 1;
      open[last] = (open[last] as number) - 1;
      if ((open[last] as number) > 0) return false;
      open.pop();
    }
    return true;
  }
}

/** The length of a `$` or `*` header line: an integer, -1 for null. */
function count(line: Buffer): number {
  const text = line.toString('latin1', 1, line.length - 2);
  if (!/^-?\d{1,15}$/.test(text)) throw new RespProtocolError(`a length that is not an integer: ${show(line)}`);
  const n = Number(text);
  if (n < -1) throw new RespProtocolError(`a negative length: ${show(line)}`);
  return n;
}

function show(bytes: Buffer): string {
  return JSON.stringify(bytes.toString('latin1', 0, Math.min(bytes.length, 80)));
}

/**
 * The arguments of one request frame: the bulk strings of a RESP array, or the words of an
 * inline command (split on spaces, as Redis does for unquoted words).
 */
export function requestArgs(frame: Buffer): Buffer[] {
  if (frame[0] !== 0x2a) {
    return frame
      .toString('latin1')
      .trim()
      .split(/[ \t]+/)
      .filter((word) => word.length > 0)
      .map((word) => Buffer.from(word, 'latin1'));
  }
  const args: Buffer[] = [];
  let at = frame.indexOf(LF) + 1;
  while (at < frame.length) {
    const eol = frame.indexOf(LF, at);
    const length = Number(frame.toString('latin1', at + 1, eol - 1));
    at = eol + 1;
    if (length < 0) continue;
    args.push(frame.subarray(at, at + length));
    at += length + 2;
  }
  return args;
}
