/**
 * `packages/` never depends on `apps/`: libraries (protocol, sdk, images, cli) must not load a
 * daemon's code. The CLI once imported both daemons, which made every `warren` command load
 * them (770 ms to list tenants) and let `warren vm run` open the host agent's data directory
 * behind the agent's back. This walks every source file and manifest under packages/.
 */
import assert from 'node:assert/strict';
import { readdir, readFile } from 'node:fs/promises';
import { dirname, join, relative, resolve } from 'node:path';
import { test } from 'node:test';
import { REPO_ROOT } from '../helpers/image.ts';

const PACKAGES = join(REPO_ROOT, 'packages');
const APPS = join(REPO_ROOT, 'apps');

/** The workspace names of everything under apps/, read from their manifests. */
async function appNames(): Promise<string[]> {
  const names: string[] = [];
  for (const dir of await readdir(APPS)) {
    const manifest = JSON.parse(await readFile(join(APPS, dir, 'package.json'), 'utf8')) as { name: string };
    names.push(manifest.name);
  }
  return names;
}

async function* sourceFiles(dir: string): AsyncGenerator<string> {
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    if (entry.name === 'node_modules' || entry.name === 'dist') continue;
    const path = join(dir, entry.name);
    if (entry.isDirectory()) yield* sourceFiles(path);
    else if (/\.(ts|mts|js|mjs|cjs)$/.test(entry.name)) yield path;
  }
}

/** Every module specifier in a file: static and dynamic imports, re-exports, require(). */
function specifiers(source: string): string[] {
  const out: string[] = [];
  const patterns = [
    /\b(?:import|export)\s[^'"`;]*?\bfrom\s*['"]([^'"]+)['"]/g,
    /\bimport\s*['"]([^'"]+)['"]/g,
    /\bimport\s*\(\s*['"`]([^'"`]+)['"`]/g,
    /\brequire\s*\(\s*['"`]([^'"`]+)['"`]/g,
    /\bimport\.meta\.resolve\s*\(\s*['"`]([^'"`]+)['"`]/g,
  ];
  for (const re of patterns) for (const m of source.matchAll(re)) out.push(m[1]!);
  return out;
}

test('no file under packages/ imports an app, by package name or by path', async () => {
  const apps = await appNames();
  assert.ok(apps.includes('@warren/host-agent') && apps.includes('@warren/control-plane'), String(apps));
  const offences: string[] = [];
  let files = 0;
  for await (const file of sourceFiles(PACKAGES)) {
    files++;
    for (const spec of specifiers(await readFile(file, 'utf8'))) {
      const byName = apps.some((app) => spec === app || spec.startsWith(`${app}/`));
      const byPath = spec.startsWith('.') && resolve(dirname(file), spec).startsWith(`${APPS}/`);
      if (byName || byPath || /(^|\/)apps\//.test(spec))
        offences.push(`${relative(REPO_ROOT, file)}: ${spec}`);
    }
  }
  assert.ok(files > 50, `only ${files} files found under packages/`);
  assert.deepEqual(offences, []);
});

test('no package under packages/ depends on an app', async () => {
  const apps = await appNames();
  const offences: string[] = [];
  for (const dir of await readdir(PACKAGES)) {
    const manifest = JSON.parse(await readFile(join(PACKAGES, dir, 'package.json'), 'utf8')) as Record<
      string,
      Record<string, string> | undefined
    >;
    for (const field of ['dependencies', 'devDependencies', 'peerDependencies', 'optionalDependencies']) {
      for (const name of Object.keys(manifest[field] ?? {})) {
        if (apps.includes(name)) offences.push(`packages/${dir}/package.json ${field}: ${name}`);
      }
    }
  }
  assert.deepEqual(offences, []);
});

test('the scan sees the imports it looks for', () => {
  // Guards the patterns above: were they to match nothing, the tests above could not fail.
  assert.deepEqual(
    specifiers(
      `import { a } from '@warren/host-agent';\nexport * from "../../apps/x.ts";\nconst m = await import('@warren/control-plane/daemon');\nimport '@warren/platform';\nimport {\n  b,\n} from '@warren/guest-agent';\nimport.meta.resolve('@warren/host-agent/daemon')`,
    ).sort(),
    [
      '../../apps/x.ts',
      '@warren/control-plane/daemon',
      '@warren/guest-agent',
      '@warren/host-agent',
      '@warren/host-agent/daemon',
      '@warren/platform',
    ],
  );
});
