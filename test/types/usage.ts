// Compiled by test/types.test.ts (tsc --noEmit): what users write must typecheck, and what they
// must not write must fail to (each @ts-expect-error line is an error the types must raise).
import { Manager, type FailedTask, type SubscriptionEvent, type TaskEvent } from '../../src/index.js';

export async function usage(manager: Manager): Promise<void> {
  const limiter = manager.getLimiter('u');

  // An inline function's result type is inferred, awaited.
  const n: number = await limiter.submit(() => 42);
  const s: string = await limiter.submit(async () => 'text');
  // @ts-expect-error an inline task resolving a number is not a string
  const wrong: string = await limiter.submit(() => 42);

  // A named task takes its result type as a parameter.
  const sum = await limiter.submit<number>({ name: 'add', payload: [1, 2] });
  const plus: number = sum + 1;

  // Events are typed.
  manager.on('task', (e) => {
    const event: TaskEvent = e;
    const to: 'PENDING' | 'WAITING_RATE' | 'QUEUED' | 'RUNNING' | 'RETRY_WAIT' | 'SUCCEEDED' | 'FAILED' | 'CANCELED' = e.to;
    void event;
    void to;
  });
  manager.on('subscription', (e) => {
    const event: SubscriptionEvent = e;
    void event;
  });
  manager.on('dead-letter', (entry) => {
    const letter: FailedTask = entry;
    void letter;
  });
  manager.on('error', (error) => {
    const message: string = error.message;
    void message;
  });
  // @ts-expect-error a task event has no `subscription` field
  manager.on('task', (e) => e.subscription);
  // @ts-expect-error no such event
  manager.on('tasks', () => {});

  // Options are typed: unknown names do not compile.
  // @ts-expect-error no such submit option
  await limiter.submit(() => 1, { costs: 2 });
  await limiter.submit(() => 1, { taskId: 'job-1', timeoutMs: 1000 });

  void n;
  void s;
  void wrong;
  void plus;
}
