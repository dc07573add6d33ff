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
