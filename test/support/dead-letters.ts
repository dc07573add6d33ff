// Dead letters made up for the DLQ scale tests: same size whatever their number.
import type { FailedTask } from '../../src/index.js';

/** The i-th dead letter of `profileName`, failed at `at` (ids and messages of fixed width). */
export function deadLetter(i: number, profileName: string, at: number): FailedTask {
  const n = String(i).padStart(6, '0');
  return {
    id: `00000000-0000-4000-8000-${n.padStart(12, '0')}`,
    userId: `user-${n}`,
    profileName,
    task: { name: 'job', payload: { n } },
    cost: 1,
    error: { code: 'TASK_FAILED', name: 'Error', message: `failure ${n}` },
    attempts: 1,
    firstFailedAt: new Date(at),
    lastFailedAt: new Date(at),
  };
}
