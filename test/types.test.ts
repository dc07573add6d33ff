// Types a user relies on, checked by the compiler: test/types/usage.ts (submit's inferred
// results, typed events, typed options) and test/types/adapters.ts (Express's req.taskvalve and
// Fastify's request.taskvalve, on real Express 5 and Fastify 5 types) must compile, and each
// line they mark @ts-expect-error must be an error: looser types fail as surely as wrong ones.
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { expect, it } from 'vitest';

const run = promisify(execFile);
const ROOT = fileURLToPath(new URL('..', import.meta.url));

it('submit infers result types, events and options are typed, and the adapters type req.taskvalve (tsc on test/types)', async () => {
  const result = await run(process.execPath, ['node_modules/typescript/bin/tsc', '-p', 'test/types/tsconfig.json'], { cwd: ROOT }).then(
    ({ stdout }) => stdout,
    (error: { stdout?: string }) => `tsc failed:\n${error.stdout ?? ''}`,
  );
  expect(result).toBe('');
}, 60_000);
