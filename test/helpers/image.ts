import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { buildImage, ImageStore } from '@warren/images';

export const REPO_ROOT = join(import.meta.dirname, '..', '..');
/**
 * VM tests share one image store and build cache (like node_modules, it is kept between
 * runs and ignored by git); each test gets its own VM state directory.
 */
export const TEST_IMAGES_DIR =
  process.env.WARREN_TEST_IMAGES_DIR ?? join(REPO_ROOT, '.warren', 'test', 'images');
export const TEST_CACHE_DIR = join(REPO_ROOT, '.warren', 'test', 'cache');

let minimal: Promise<string> | undefined;
let openclaw: Promise<string> | undefined;

/** The minimal test image, built on first use and a cache hit afterwards. */
export function minimalImage(): Promise<string> {
  minimal ??= (async () => {
    await mkdir(TEST_CACHE_DIR, { recursive: true });
    const store = new ImageStore(TEST_IMAGES_DIR);
    const r = await buildImage(store, { profile: 'minimal', cacheDir: TEST_CACHE_DIR });
    return r.imageId;
  })();
  return minimal;
}

/**
 * The openclaw image (the standard profile plus OpenClaw: a debootstrap and an npm install, so
 * minutes on its first build), built on first use and a cache hit afterwards.
 */
export function openclawImage(): Promise<string> {
  openclaw ??= (async () => {
    await mkdir(TEST_CACHE_DIR, { recursive: true });
    const store = new ImageStore(TEST_IMAGES_DIR);
    const r = await buildImage(store, { profile: 'openclaw', cacheDir: TEST_CACHE_DIR });
    return r.imageId;
  })();
  return openclaw;
}
