// The reference and the docs a user reads: TypeDoc (with its markdown plugin) generates the API
// reference from the TSDoc into docs/reference; it refuses an export without documentation, and
// nothing the repository ships or links to points outside it.
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const run = promisify(execFile);
const ROOT = fileURLToPath(new URL('..', import.meta.url));
const TYPEDOC = join(ROOT, 'tools/docs/node_modules/typedoc/bin/typedoc');

/** Every file below `dir` (relative to it), skipping dependencies and build output. */
async function walk(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const entry of await readdir(dir, { withFileTypes: true, recursive: true })) {
    if (!entry.isFile()) continue;
    const path = relative(dir, join(entry.parentPath, entry.name));
    if (/(^|\/)(node_modules|dist|reports|scratch|\.git|\.stryker-tmp)\//.test(path)) continue;
    out.push(path);
  }
  return out.sort();
}

/** Relative link targets of a markdown text: `[text](target)`, anchors and URLs left out. */
function links(markdown: string): string[] {
  const prose = markdown.replace(/```[\s\S]*?```/g, '').replace(/`[^`\n]*`/g, '');
  return [...prose.matchAll(/\]\(([^)\s]+)\)/g)].map((m) => m[1] as string).filter((t) => !/^(https?:|mailto:|#)/.test(t)).map((t) => t.split('#')[0] as string);
}

let generated: string;
let typedoc: { ok: boolean; output: string };

beforeAll(async () => {
  generated = await mkdtemp(join(tmpdir(), 'taskvalve-docs-'));
  // The project's own configuration (typedoc.json: every export documented, warnings are errors).
  typedoc = await run(process.execPath, [TYPEDOC, '--out', generated, '--logLevel', 'Warn'], { cwd: ROOT, maxBuffer: 16 << 20 }).then(
    ({ stdout, stderr }) => ({ ok: true, output: stdout + stderr }),
    (error: { stdout?: string; stderr?: string }) => ({ ok: false, output: `${error.stdout ?? ''}${error.stderr ?? ''}` }),
  );
}, 120_000);

afterAll(async () => {
  if (generated !== undefined) await rm(generated, { recursive: true, force: true });
});

describe('the API reference', () => {
  it('TypeDoc documents every export of both entries, with no warning', () => {
    expect(typedoc.output.replace(/\x1b\[[0-9;]*m/g, '')).not.toMatch(/warning|error/i);
    expect(typedoc.ok).toBe(true);
  });

  it('docs/reference has a page for every exported name (run `npm run docs` after adding or removing an export)', async () => {
    const fresh = (await walk(generated)).filter((f) => f.endsWith('.md'));
    expect(fresh).toContain('taskvalve/classes/Manager.md');
    expect(fresh).toContain('taskvalve/http/functions/expressMiddleware.md');
    expect((await walk(join(ROOT, 'docs/reference'))).filter((f) => f.endsWith('.md'))).toEqual(fresh);
  });
});

describe('links', () => {
  it('nothing in the repository points at ../shared, which a clone or the package does not have', async () => {
    const offenders: string[] = [];
    for (const file of await walk(ROOT)) {
      if (!/\.(ts|js|mjs|md|json)$/.test(file) || file === 'package-lock.json' || file.startsWith('tools/docs/node_modules')) continue;
      const text = await readFile(join(ROOT, file), 'utf8');
      if (/\.\.\/shared\b|\bshared\/API\.md/.test(text) && file !== 'test/docs.test.ts') offenders.push(file);
    }
    expect(offenders).toEqual([]);
  });

  it('every relative link of the README and docs/ lands on a file in the repository; the README links into docs/ only', async () => {
    const pages = ['README.md', ...(await walk(join(ROOT, 'docs'))).filter((f) => f.endsWith('.md')).map((f) => `docs/${f}`)];
    const broken: string[] = [];
    for (const page of pages) {
      for (const target of links(await readFile(join(ROOT, page), 'utf8'))) {
        const path = resolve(ROOT, dirname(page), decodeURIComponent(target));
        if (!path.startsWith(ROOT) || !existsSync(path)) broken.push(`${page} -> ${target}`);
        if (page === 'README.md' && !relative(ROOT, path).startsWith('docs')) broken.push(`README.md links outside docs/: ${target}`);
      }
    }
    expect(broken).toEqual([]);
  });
});
