// Helpers shared by the test suites.
import { expect } from 'vitest';
import { TaskvalveError } from '../src/index.js';

/** The TaskvalveError a promise rejects with; fails the test if it resolves. */
export async function rejection(promise: Promise<unknown>): Promise<TaskvalveError> {
  try {
    await promise;
  } catch (error) {
    expect(error).toBeInstanceOf(TaskvalveError);
    return error as TaskvalveError;
  }
  throw new Error('expected a rejection');
}

/** The TaskvalveError a function throws; fails the test if it returns. */
export function thrown(fn: () => unknown): TaskvalveError {
  try {
    fn();
  } catch (error) {
    expect(error).toBeInstanceOf(TaskvalveError);
    return error as TaskvalveError;
  }
  throw new Error('expected a throw');
}

/** A promise the test resolves when it decides. */
export function gate<T = void>(): { opened: Promise<T>; open: (value: T) => void } {
  let open!: (value: T) => void;
  const opened = new Promise<T>((resolve) => {
    open = resolve;
  });
  return { opened, open };
}

/** Tracks whether a promise has settled, and how, without leaving a rejection unhandled. */
export function track<T>(promise: Promise<T>): { settled: boolean; value?: T; error?: TaskvalveError } {
  const state: { settled: boolean; value?: T; error?: TaskvalveError } = { settled: false };
  promise.then(
    (value) => {
      state.settled = true;
      state.value = value;
    },
    (error: TaskvalveError) => {
      state.settled = true;
      state.error = error;
    },
  );
  return state;
}

/** The same promise, with a rejection marked handled (an assertion failing first must not leave it unhandled). */
export function quiet<T>(promise: Promise<T>): Promise<T> {
  promise.catch(() => {});
  return promise;
}

/**
 * Waits for a state the system reaches on its own (checked every 10 ms), at most `timeoutMs`:
 * a bound for a test that would otherwise hang, not a measure of speed.
 */
export async function eventually(condition: () => Promise<boolean>, what: string, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`not reached within ${timeoutMs} ms: ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}
