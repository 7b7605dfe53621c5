/**
 * Bundles the `warren` CLI (packages/cli/src/main.ts with the SDK, the protocol and zod) into
 * packages/cli/dist/: an entry that holds argument parsing and little else, and chunks that
 * each command loads when it runs, so `warren --version` parses 7 KB and `warren tenant list`
 * the SDK and no other command (`npm run bench:cli` measures both). scripts/install-deps.sh
 * builds it, and bin/warren rebuilds it when a source is newer than it.
 *
 * Each build goes to a directory of its own, and `dist/current` is switched to it with one
 * rename, so a `warren` started meanwhile runs one whole build, old or new; old builds are
 * removed an hour later (a running `warren` may still load a chunk of its build).
 */
import { readdir, rename, rm, stat, symlink } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const cli = join(root, 'packages', 'cli');
const dist = join(cli, 'dist');
const id = `build-${Date.now()}-${process.pid}`;
const KEEP_OLD_BUILDS_MS = 3600_000;

await build({
  entryPoints: { warren: join(cli, 'src', 'main.ts') },
  bundle: true,
  splitting: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  outdir: join(dist, id),
  chunkNames: 'chunks/[name]-[hash]',
  legalComments: 'none',
  logLevel: 'warning',
  plugins: [
    {
      // The CLI speaks English: zod's fifty other locales would be 45% of the bundle.
      name: 'zod-english-only',
      setup(b) {
        b.onResolve({ filter: /^\.\.\/locales\/index\.js$/ }, (args) =>
          args.importer.includes(`${join('node_modules', 'zod')}`)
            ? { path: join(dirname(args.importer), '..', 'locales', 'en.js'), namespace: 'zod-en' }
            : undefined,
        );
        b.onLoad({ filter: /.*/, namespace: 'zod-en' }, (args) => ({
          contents: `export { default as en } from ${JSON.stringify(args.path)};`,
          resolveDir: dirname(args.path),
        }));
      },
    },
  ],
});

const link = join(dist, `${id}.link`);
await symlink(id, link);
await rename(link, join(dist, 'current'));

for (const name of await readdir(dist)) {
  if (name === id || name === 'current') continue;
  const path = join(dist, name);
  const old = await stat(path).then(
    (s) => Date.now() - s.mtimeMs > KEEP_OLD_BUILDS_MS,
    () => false,
  );
  if (old || name.endsWith('.link')) await rm(path, { recursive: true, force: true });
}
