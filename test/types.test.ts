// The public types: submit infers an inline task's result, takes one for a named task, and the
// manager's events are typed. Checked by compiling test/types/usage.ts, whose @ts-expect-error
// lines must each be an error: looser types fail this test as surely as wrong ones.
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { expect, it } from 'vitest';

it('submit infers result types and events are typed (tsc on test/types/usage.ts)', async () => {
  const project = fileURLToPath(new URL('./types/tsconfig.json', import.meta.url));
  const tsc = fileURLToPath(new URL('../node_modules/typescript/bin/tsc', import.meta.url));
  const out = await new Promise<{ code: number; text: string }>((resolve) => {
    execFile(process.execPath, [tsc, '-p', project], (error, stdout, stderr) => {
      resolve({ code: error === null ? 0 : ((error as { code?: number }).code ?? 1), text: stdout + stderr });
    });
  });
  expect(out.text).toBe('');
  expect(out.code).toBe(0);
});
