import { join } from 'node:path';
import { type BuildProgress, type BuildResult, buildImage, type ImageStore } from '@warren/images';
import type { Profile } from '@warren/protocol';
import type { HostAgentConfig } from './config.ts';

export interface HostImageBuild {
  profile: Profile;
  force: boolean;
  onProgress?: (p: BuildProgress) => void;
}

let queue: Promise<unknown> = Promise.resolve();

/**
 * Builds an image of `profile` into this host's store (a cache hit when its recipe was built),
 * with this host's build settings. Builds run one at a time: a second caller waits for the
 * first and then, for the same recipe, finds it cached instead of building it again.
 */
export function buildHostImage(
  config: HostAgentConfig,
  store: ImageStore,
  build: HostImageBuild,
): Promise<BuildResult> {
  const run = () =>
    buildImage(store, {
      profile: build.profile,
      force: build.force,
      cacheDir: join(config.dataDir, 'cache'),
      ...(config.kernelPackage ? { kernelPackage: config.kernelPackage } : {}),
      ...(config.debianMirror ? { debianMirror: config.debianMirror } : {}),
      ...(build.onProgress ? { onProgress: build.onProgress } : {}),
    });
  const result = queue.then(run, run);
  queue = result.catch(() => {});
  return result;
}
