// taskvalve worker entry point, loaded by Piscina in each worker thread.
// Plain ESM with no build step. workerData is { moduleUrl, channel }.
// A task message is { n: export name, p: payload, s: slot index or -1, f: Int32Array | undefined }.
// The result is always a plain object: { k: 'ok', v } | { k: 'error' | 'import' | 'missing', e }.
// The default export never throws. A failure becomes a value, so Piscina's own rejections
// mean only thread-level trouble (exit, OOM, abort, destroy).
import { workerData, threadId, BroadcastChannel } from 'node:worker_threads';

const { moduleUrl, channel: channelName } = workerData;

/** True if `value` survives structured cloning (what postMessage needs). */
function cloneable(value) {
  if (typeof value === 'function' || typeof value === 'symbol') return false;
  if (value === null || typeof value !== 'object') return true;
  try {
    structuredClone(value);
    return true;
  } catch {
    return false;
  }
}

/** `get()`, or undefined when it throws. */
function read(get) {
  try {
    return get();
  } catch {
    return undefined;
  }
}

/** `get()` as text: a string as it is, anything else but undefined converted, else `fallback`. */
function text(get, fallback) {
  const value = read(get);
  if (typeof value === 'string') return value;
  if (value === undefined) return fallback;
  return read(() => String(value)) ?? fallback;
}

/** Turns anything thrown into a plain, cloneable object that describes it. Never throws. */
function serialise(err, depth = 0) {
  try {
    return describeThrown(err, depth);
  } catch {
    return { name: 'Error', message: 'the task failed with a value that cannot be described', nonError: true };
  }
}

function describeThrown(err, depth) {
  if (!(err instanceof Error)) {
    let message;
    try {
      message = typeof err === 'object' && err !== null ? JSON.stringify(err) ?? String(err) : String(err);
    } catch {
      message = Object.prototype.toString.call(err); // circular, BigInt inside, ...
    }
    const out = { name: 'Error', message, nonError: true };
    if (cloneable(err)) out.value = err;
    return out;
  }
  // Every read may throw (a getter, a Proxy): what cannot be read is described or left out.
  const out = { name: text(() => err.name, 'Error'), message: text(() => err.message, 'an error whose message cannot be read') };
  const stack = read(() => err.stack);
  if (typeof stack === 'string') out.stack = stack;
  const code = read(() => err.code);
  if (code !== undefined && cloneable(code)) out.code = code;
  // `cause` is non-enumerable when set via `new Error(msg, { cause })`: keep a few levels of it.
  const cause = read(() => err.cause);
  if (cause !== undefined && depth < 3) out.cause = serialise(cause, depth + 1);
  for (const key of Object.keys(err)) {
    if (key in out) continue;
    try {
      const v = err[key];
      if (cloneable(v)) out[key] = v;
    } catch {
      /* a throwing getter: skip the property */
    }
  }
  return out;
}

// Import the user's module once, lazily. The promise never rejects: a failure is kept as a
// value, so every later task reports it at once and no rejection goes unhandled.
let loaded;
function load() {
  loaded ??= import(moduleUrl).then(
    (mod) => ({ mod }),
    (err) => ({ fail: serialise(err) }),
  );
  return loaded;
}

// Errors raised after a task has returned (from a timer, a dangling promise...) would otherwise
// crash the thread and fail whichever unrelated task it runs next. Report them to the main
// thread on a BroadcastChannel instead. unref() keeps the channel from holding the thread alive.
let bc;
function reportLate(err) {
  try {
    if (!bc) {
      bc = new BroadcastChannel(channelName);
      bc.unref();
    }
    bc.postMessage({ type: 'late-error', error: serialise(err), threadId });
  } catch {
    /* nothing more we can do */
  }
}
process.on('uncaughtException', reportLate);
process.on('unhandledRejection', reportLate);

// The loaded module (or the import failure), once known: later tasks skip the await.
let ready;

export default function run(task) {
  if (ready !== undefined) return execute(task);
  // Still importing: the main thread bounds the import by the task's timeout from here.
  if (task.s >= 0 && task.f) {
    Atomics.store(task.f, task.s, 3);
    Atomics.notify(task.f, task.s);
  }
  return load().then((r) => {
    ready = r;
    return execute(task);
  });
}

// Synchronous where the task is: a sync export answers without a microtask hop of ours.
function execute({ n, p, s, f }) {
  if (ready.fail) return { k: 'import', e: ready.fail };
  const fn = ready.mod[n];
  if (typeof fn !== 'function') {
    return { k: 'missing', e: { name: 'Error', message: `module ${moduleUrl} has no exported function "${n}"` } };
  }
  // Tell the main thread that execution begins now, so its timeout excludes queueing and start-up.
  if (s >= 0 && f) {
    Atomics.store(f, s, 1);
    Atomics.notify(f, s);
  }
  let v;
  try {
    v = fn(p);
    if (v !== null && typeof v === 'object' && typeof v.then === 'function') {
      return Promise.resolve(v).then(answer, failed);
    }
  } catch (err) {
    return failed(err);
  }
  return answer(v);
}

function failed(err) {
  return { k: 'error', e: serialise(err) };
}

function answer(v) {
  // Piscina posts the result itself. If that postMessage throws (DataCloneError), the error is
  // rethrown in a microtask, our uncaughtException handler catches it, and the task never
  // settles. So check cloneability here, which costs one extra clone of an object result.
  if (typeof v === 'object' || typeof v === 'function' || typeof v === 'symbol') {
    try {
      structuredClone(v);
    } catch (err) {
      return failed(err);
    }
  }
  return { k: 'ok', v };
}
