import { join } from 'node:path';
import { imagesDirOf, loadConfig } from '@warren/host-agent';
import { buildImage, ImageStore, Profile } from '@warren/images';
import { parseOrThrow } from '@warren/protocol';
import { emit } from '../../output.ts';

export const usage = 'warren image build [--profile minimal|standard] [--force] [--json]';

/** Progress goes to stderr; stdout is the image id (or, with --json, the build result). */
export async function run(args: { profile?: string; force?: boolean; json?: boolean }): Promise<number> {
  const config = loadConfig();
  const profile = parseOrThrow(Profile, args.profile ?? 'standard');
  const store = new ImageStore(imagesDirOf(config));
  const started = performance.now();
  let lastStep = 0;
  const result = await buildImage(store, {
    profile,
    force: args.force ?? false,
    cacheDir: join(config.dataDir, 'cache'),
    ...(process.env.WARREN_KERNEL_PACKAGE ? { kernelPackage: process.env.WARREN_KERNEL_PACKAGE } : {}),
    ...(process.env.WARREN_DEBIAN_MIRROR ? { debianMirror: process.env.WARREN_DEBIAN_MIRROR } : {}),
    onProgress: (p) => {
      if (p.step !== lastStep) {
        lastStep = p.step;
        process.stderr.write(`[${p.step}/${p.steps}] ${p.title}\n`);
      } else if (p.detail) process.stderr.write(`      ${p.detail.slice(0, 160)}\n`);
    },
  });
  const seconds = ((performance.now() - started) / 1000).toFixed(1);
  process.stderr.write(
    result.cached
      ? `cache hit: recipe ${result.recipeDigest.slice(0, 12)} already built (${seconds} s)\n`
      : `built ${profile} image in ${seconds} s\n`,
  );
  emit(args.json ?? false, { ...result, seconds: Number(seconds) }, () =>
    process.stdout.write(`${result.imageId}\n`),
  );
  return 0;
}
