// The package as a user gets it: packed once per run (`npm pack`, which builds through the
// `prepare` script), linted by publint and @arethetypeswrong/cli, then installed from the tarball
// into a scratch project that imports it, runs one task on a worker thread and one inline, and
// typechecks against the shipped types with neither Express nor Fastify installed.
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const run = promisify(execFile);
const ROOT = fileURLToPath(new URL('..', import.meta.url));
const bin = (path: string): string => join(ROOT, 'node_modules', path);

let scratch: string;
let tarball: string;
let files: string[];

beforeAll(async () => {
  scratch = await mkdtemp(join(tmpdir(), 'taskvalve-pack-'));
  // As in a fresh clone: no build output, so the package is whole only if packing builds it.
  await rm(join(ROOT, 'dist'), { recursive: true, force: true });
  const { stdout } = await run('npm', ['pack', '--json', '--pack-destination', scratch], { cwd: ROOT, maxBuffer: 16 << 20 });
  const [packed] = JSON.parse(stdout) as Array<{ filename: string; files: Array<{ path: string }> }>;
  tarball = join(scratch, packed!.filename);
  files = packed!.files.map((f) => f.path);
}, 120_000);

afterAll(async () => {
  if (scratch !== undefined) await rm(scratch, { recursive: true, force: true });
});

describe.concurrent('the packed package', () => {
  it('ships the build, the worker entry, the Lua scripts and the types, and no sources or tests', () => {
    for (const path of ['dist/index.js', 'dist/index.d.ts', 'dist/http/index.js', 'dist/http/index.d.ts', 'workers/task-worker.js', 'dist/store/redis/lua/admit.lua', 'dist/store/redis/lua/includes/gcra.lua', 'README.md']) {
      expect(files, path).toContain(path);
    }
    expect(files.filter((f) => /^(src|test|bench|examples|scripts|tools)\//.test(f) || f.endsWith('.map'))).toEqual([]);
  });

  it('passes publint, strict, at every level', async () => {
    const { stdout } = await run(process.execPath, [bin('publint/src/cli.js'), 'run', tarball, '--strict', '--level', 'suggestion']);
    expect(stdout).toContain('All good!');
  });

  it('resolves both entries to ESM with types (@arethetypeswrong/cli, esm-only profile)', async () => {
    const result = await run(process.execPath, [bin('@arethetypeswrong/cli/dist/index.js'), tarball, '--profile', 'esm-only', '--format', 'json'], { maxBuffer: 16 << 20 }).catch(
      (error: { stdout?: string }) => ({ stdout: error.stdout ?? '' }),
    );
    const report = JSON.parse(result.stdout) as {
      problems?: Record<string, Array<{ kind: string; entrypoint: string; resolutionKind?: string }>>;
      analysis: { entrypoints: Record<string, { resolutions: Record<string, { resolution?: { fileName: string; isTypeScript: boolean }; implementationResolution?: { fileName: string } }> }> };
    };
    const problems = Object.values(report.problems ?? {}).flat();
    // The esm-only profile: CommonJS and node10 resolution are not this package's audience.
    expect(problems.filter((p) => p.resolutionKind !== 'node10' && p.resolutionKind !== 'node16-cjs')).toEqual([]);
    for (const entry of ['.', './http']) {
      for (const kind of ['node16-esm', 'bundler']) {
        const found = report.analysis.entrypoints[entry]?.resolutions[kind];
        expect(found?.resolution?.isTypeScript, `${entry} ${kind}`).toBe(true);
        expect(found?.resolution?.fileName, `${entry} ${kind}`).toMatch(/\/dist\/(http\/)?index\.d\.ts$/);
        expect(found?.implementationResolution?.fileName, `${entry} ${kind}`).toMatch(/\/dist\/(http\/)?index\.js$/);
      }
    }
  });

  it('installs from the tarball into a fresh project, runs a task on a worker thread and one inline, and typechecks', async () => {
    const app = join(scratch, 'app');
    await run('mkdir', ['-p', app]);
    await writeFile(join(app, 'package.json'), JSON.stringify({ name: 'app', private: true, type: 'module' }));
    await run('npm', ['install', tarball, '--prefer-offline', '--no-audit', '--no-fund', '--loglevel', 'error'], { cwd: app, maxBuffer: 16 << 20 });
    await writeFile(
      join(app, 'tasks.mjs'),
      "import { isMainThread } from 'node:worker_threads';\nexport function double(n) { return { value: n * 2, isMainThread }; }\n",
    );
    const consumer = `
import { Manager, MemoryStore, RedisStore, TaskvalveError, type Decision } from 'taskvalve';
import { nodeHandler, expressMiddleware, fastifyPlugin, type HttpOptions } from 'taskvalve/http';
import { isMainThread } from 'node:worker_threads';

const manager = new Manager({ store: new MemoryStore() });
manager.registerProfile('basic', { rate: { limit: 10, intervalMs: 1000 }, pool: { filename: new URL('./tasks.mjs', import.meta.url), maxThreads: 1 } });
await manager.subscribe('alice', 'basic');
const alice = manager.getLimiter('alice');
const onThread = await alice.submit<{ value: number; isMainThread: boolean }>({ name: 'double', payload: 21 });
const inline = await alice.submit(() => ({ value: 'inline', isMainThread }));
const decision: Decision = await alice.check();
const options: HttpOptions = { tenant: 'ip', anonymousProfile: 'basic' };
const adapters = [typeof nodeHandler, typeof expressMiddleware, typeof fastifyPlugin, typeof RedisStore, typeof TaskvalveError, Object.keys(options).length];
await manager.close();
console.log(JSON.stringify({ onThread, inline, allowed: decision.allowed, adapters }));
`;
    await writeFile(join(app, 'consumer.ts'), consumer);
    await writeFile(join(app, 'consumer.mjs'), consumer.replace(', type Decision', '').replace(', type HttpOptions', '').replace(/: (Decision|HttpOptions)\b/g, '').replace('<{ value: number; isMainThread: boolean }>', ''));
    const { stdout } = await run(process.execPath, ['consumer.mjs'], { cwd: app });
    expect(JSON.parse(stdout)).toEqual({
      onThread: { value: 42, isMainThread: false },
      inline: { value: 'inline', isMainThread: true },
      allowed: true,
      adapters: ['function', 'function', 'function', 'function', 'function', 2],
    });
    await writeFile(
      join(app, 'tsconfig.json'),
      JSON.stringify({
        compilerOptions: {
          target: 'ES2022', module: 'NodeNext', moduleResolution: 'NodeNext', strict: true, noEmit: true, skipLibCheck: false,
          rootDir: '.', types: ['node'], typeRoots: [bin('@types')],
        },
        files: ['consumer.ts'],
      }),
    );
    const typecheck = (): Promise<string> =>
      run(process.execPath, [bin('typescript/bin/tsc'), '-p', app], { cwd: app }).then(
        ({ stdout }) => stdout,
        (error: { stdout?: string }) => `tsc failed:\n${error.stdout ?? ''}`,
      );
    // Neither Express nor Fastify installed: the shipped types still check, skipLibCheck off.
    expect(await typecheck()).toBe('');
    // Then with both (linked from this repository): the adapters' augmentations apply.
    await run('mkdir', ['-p', join(app, 'node_modules/@types')]);
    await symlink(bin('fastify'), join(app, 'node_modules/fastify'));
    await symlink(bin('@types/express'), join(app, 'node_modules/@types/express'));
    await writeFile(
      join(app, 'frameworks.ts'),
      `import express from 'express';
import Fastify from 'fastify';
import { Manager } from 'taskvalve';
import { expressMiddleware, fastifyPlugin } from 'taskvalve/http';
const manager = new Manager();
const app = express();
app.use(expressMiddleware(manager, { tenant: 'ip' }));
app.get('/', (req, res) => void res.send(req.taskvalve?.userId));
const fastify = Fastify();
await fastify.register(fastifyPlugin, { manager, tenant: 'ip' });
fastify.get('/', async (request) => request.taskvalve?.userId);
// @ts-expect-error: typed, not any
fastify.get('/x', async (request) => request.taskvalve?.nope);
`,
    );
    await writeFile(join(app, 'tsconfig.json'), (await readFile(join(app, 'tsconfig.json'), 'utf8')).replace('"files":["consumer.ts"]', '"files":["consumer.ts","frameworks.ts"]'));
    expect(await typecheck()).toBe('');
    expect(await readFile(join(app, 'node_modules', 'taskvalve', 'package.json'), 'utf8')).toContain('"name": "taskvalve"');
  });
});
