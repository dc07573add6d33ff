// Types a user relies on, checked by the compiler: test/types/adapters.ts must compile, and each
// line it marks as an expected error must be one, on real Express 5 and Fastify 5 types.
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { expect, it } from 'vitest';

const run = promisify(execFile);
const ROOT = fileURLToPath(new URL('..', import.meta.url));

it("Express's req.taskvalve and Fastify's request.taskvalve are typed by module augmentation", async () => {
  const result = await run(process.execPath, ['node_modules/typescript/bin/tsc', '-p', 'test/types/tsconfig.json'], { cwd: ROOT }).then(
    ({ stdout }) => stdout,
    (error: { stdout?: string }) => `tsc failed:\n${error.stdout ?? ''}`,
  );
  expect(result).toBe('');
}, 60_000);
