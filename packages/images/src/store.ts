import { randomBytes } from 'node:crypto';
import { chmod, mkdir, readdir, readFile, rename, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseOrThrow, type StoredImage, WarrenError } from '@warren/protocol';
import { z } from 'zod';
import { canonicalJson, sha256, sha256File } from './digest.ts';
import { IMAGE_ID_PREFIX, ImageManifest } from './manifest.ts';

export interface VerifiedImage {
  id: string;
  manifest: ImageManifest;
  kernelPath: string;
  initrdPath: string;
  rootfsPath: string;
}

/** What `list()` says of each image; the host agent's local API sends it as is. */
export type ImageSummary = StoredImage;

const RecipeRecord = z.object({ imageId: z.string(), createdAt: z.string() });

/**
 * Content-addressed image store on the local disk:
 *
 *   blobs/sha256/<hex>        kernel, initramfs, rootfs (read-only files)
 *   manifests/<hex>.json      the manifest whose sha256 is <hex> (the image id)
 *   recipes/<hex>.json        recipe digest -> image id, the build cache
 *   tmp/                      build work areas, on the same filesystem for atomic renames
 */
export class ImageStore {
  readonly root: string;
  /**
   * Files whose digest this process already checked, keyed by a stat stamp. Any write
   * to a file changes its ctime (which no user call can set back), so a changed byte
   * always forces a new hash while an unchanged multi-GiB rootfs is not re-read per boot.
   */
  readonly #verified = new Map<string, string>();

  constructor(root: string) {
    this.root = root;
  }

  blobPath(digest: string): string {
    return join(this.root, 'blobs', 'sha256', digest);
  }

  async tempDir(label: string): Promise<string> {
    const dir = join(this.root, 'tmp', `${label}-${randomBytes(4).toString('hex')}`);
    await mkdir(dir, { recursive: true });
    return dir;
  }

  /** Moves `file` into the store under its digest. */
  async putBlob(file: string): Promise<{ digest: string; size: number }> {
    const { digest, size } = await sha256File(file);
    const target = this.blobPath(digest);
    await mkdir(join(this.root, 'blobs', 'sha256'), { recursive: true });
    await chmod(file, 0o444);
    await rename(file, target);
    return { digest, size };
  }

  async putManifest(manifest: ImageManifest): Promise<string> {
    const text = canonicalJson(manifest);
    const hex = sha256(text);
    await mkdir(join(this.root, 'manifests'), { recursive: true });
    await writeAtomic(join(this.root, 'manifests', `${hex}.json`), text);
    return IMAGE_ID_PREFIX + hex;
  }

  async recordRecipe(recipeDigest: string, imageId: string): Promise<void> {
    await mkdir(join(this.root, 'recipes'), { recursive: true });
    const record = { imageId, createdAt: new Date().toISOString() };
    await writeAtomic(join(this.root, 'recipes', `${recipeDigest}.json`), JSON.stringify(record));
  }

  /** The image built from this recipe, if it is still complete in the store. */
  async lookupRecipe(recipeDigest: string): Promise<string | undefined> {
    try {
      const raw = JSON.parse(await readFile(join(this.root, 'recipes', `${recipeDigest}.json`), 'utf8'));
      const record = RecipeRecord.parse(raw);
      const manifest = await this.getManifest(record.imageId);
      for (const blob of [manifest.kernel, manifest.initrd, manifest.rootfs]) {
        if ((await stat(this.blobPath(blob.digest))).size !== blob.size) return undefined;
      }
      return record.imageId;
    } catch {
      return undefined;
    }
  }

  /** Accepts `sha256:<hex>`, `<hex>` or a unique prefix of at least 8 hex digits. */
  async resolve(ref: string): Promise<string> {
    const hex = ref.startsWith(IMAGE_ID_PREFIX) ? ref.slice(IMAGE_ID_PREFIX.length) : ref;
    if (!/^[0-9a-f]{8,64}$/.test(hex)) {
      throw new WarrenError(
        'INVALID_ARGUMENT',
        `image id ${JSON.stringify(ref)} is not sha256:<hex> or a hex prefix`,
      );
    }
    const matches = (await this.#manifestHexes()).filter((h) => h.startsWith(hex));
    if (matches.length === 0) throw new WarrenError('IMAGE_NOT_FOUND', `no image ${ref} in ${this.root}`);
    if (matches.length > 1) throw new WarrenError('INVALID_ARGUMENT', `image prefix ${ref} is ambiguous`);
    return IMAGE_ID_PREFIX + matches[0];
  }

  /** Reads a manifest and checks that its content still hashes to its id. */
  async getManifest(id: string): Promise<ImageManifest> {
    const hex = (await this.resolve(id)).slice(IMAGE_ID_PREFIX.length);
    const path = join(this.root, 'manifests', `${hex}.json`);
    const text = await readFile(path, 'utf8');
    if (sha256(text) !== hex) {
      throw new WarrenError('IMAGE_INTEGRITY', `manifest ${path} does not match its digest ${hex}`);
    }
    return parseOrThrow(ImageManifest, JSON.parse(text), 'IMAGE_INTEGRITY');
  }

  async list(): Promise<ImageSummary[]> {
    const createdAt = new Map<string, string>();
    try {
      for (const name of await readdir(join(this.root, 'recipes'))) {
        try {
          const r = RecipeRecord.parse(JSON.parse(await readFile(join(this.root, 'recipes', name), 'utf8')));
          createdAt.set(r.imageId, r.createdAt);
        } catch {
          // A damaged cache record only loses the creation time.
        }
      }
    } catch {
      // No builds yet.
    }
    const out: ImageSummary[] = [];
    for (const hex of await this.#manifestHexes()) {
      const id = IMAGE_ID_PREFIX + hex;
      try {
        const m = await this.getManifest(id);
        out.push({
          id,
          profile: m.profile,
          createdAt: createdAt.get(id) ?? '',
          rootfsBytes: m.rootfs.size,
          guestAgentVersion: m.guestAgent.version,
          kernelRelease: m.kernel.release,
        });
      } catch {
        // Damaged manifests are reported by verify, not listed.
      }
    }
    return out.sort((a, b) => b.createdAt.localeCompare(a.createdAt));
  }

  /**
   * Checks every file of the image against its digest before a VM may use it. A mismatch
   * is refused with an error naming the file.
   */
  async verify(id: string): Promise<VerifiedImage> {
    const resolved = await this.resolve(id);
    const manifest = await this.getManifest(resolved);
    const parts = { kernel: manifest.kernel, initrd: manifest.initrd, rootfs: manifest.rootfs };
    for (const [role, blob] of Object.entries(parts)) {
      const path = this.blobPath(blob.digest);
      let st: import('node:fs').BigIntStats;
      try {
        st = await stat(path, { bigint: true });
      } catch {
        throw new WarrenError('IMAGE_INTEGRITY', `${role} of image ${resolved} is missing: ${path}`);
      }
      const stamp = `${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}`;
      if (this.#verified.get(path) === stamp) continue;
      const actual = await sha256File(path);
      if (actual.digest !== blob.digest || actual.size !== blob.size) {
        this.#verified.delete(path);
        throw new WarrenError(
          'IMAGE_INTEGRITY',
          `${role} of image ${resolved} is corrupt: ${path} has sha256 ${actual.digest}, expected ${blob.digest}`,
          { details: { file: path, role, expected: blob.digest, actual: actual.digest } },
        );
      }
      this.#verified.set(path, stamp);
    }
    return {
      id: resolved,
      manifest,
      kernelPath: this.blobPath(manifest.kernel.digest),
      initrdPath: this.blobPath(manifest.initrd.digest),
      rootfsPath: this.blobPath(manifest.rootfs.digest),
    };
  }

  async #manifestHexes(): Promise<string[]> {
    try {
      return (await readdir(join(this.root, 'manifests')))
        .filter((n) => /^[0-9a-f]{64}\.json$/.test(n))
        .map((n) => n.slice(0, 64));
    } catch {
      return [];
    }
  }
}

async function writeAtomic(path: string, text: string): Promise<void> {
  const tmp = `${path}.${randomBytes(4).toString('hex')}.tmp`;
  await writeFile(tmp, text);
  await rename(tmp, path);
}
