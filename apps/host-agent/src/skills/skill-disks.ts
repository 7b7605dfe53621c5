/**
 * Skill packages as read-only disks: each bundle the control plane names is fetched once into
 * `<dataDir>/skills/bundles/<hex>.tar`, its sha256 checked against the digest the desired list
 * names, and made into an ext4 image `<dataDir>/skills/disks/<hex>.ext4` (mkfs.ext4 -d, no
 * mounts), cached per digest. Every use checks both again: the bundle's digest, and the disk's
 * own sha256 recorded beside it when it was built, so a byte changed in either cache (or in the
 * object store, or in transfer) is refused with SKILL_INTEGRITY before any VM sees it.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { chmod, mkdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { run } from '@warren/images';
import { unpackSkillBundle } from '@warren/images/skill-bundle';
import { type DesiredSkill, SKILL_BUNDLE_LIMITS, WarrenError } from '@warren/protocol';

/** Fetches a bundle's bytes from the control plane (authenticated as this host). */
export type BundleFetcher = (digest: string, maxBytes: number) => Promise<Buffer>;

/** A package ready to attach: its disk image on the host. */
export interface SkillDisk {
  name: string;
  digest: string;
  /** The cached ext4 image (root's alone; a driver copies or binds it for its VMM). */
  path: string;
}

/** Free room in each image beyond its files, so ext4's metadata always fits. */
const HEADROOM_MIB = 4;

async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(path)) h.update(chunk as Buffer);
  return `sha256:${h.digest('hex')}`;
}

function integrity(message: string): WarrenError {
  return new WarrenError('SKILL_INTEGRITY', message);
}

export class SkillDisks {
  readonly #dir: string;
  #fetch: BundleFetcher | undefined;
  readonly #log: (m: string) => void;
  /** One preparation per digest at a time (two VMs starting with the same package). */
  readonly #inFlight = new Map<string, Promise<string>>();

  constructor(o: { dataDir: string; fetch?: BundleFetcher; log?: (m: string) => void }) {
    this.#dir = join(o.dataDir, 'skills');
    this.#fetch = o.fetch;
    this.#log = o.log ?? (() => {});
  }

  /** Set once the agent knows its control plane and token (the reconciler). */
  setFetcher(fetch: BundleFetcher): void {
    this.#fetch = fetch;
  }

  bundlePath(digest: string): string {
    return join(this.#dir, 'bundles', `${digest.slice('sha256:'.length)}.tar`);
  }

  diskPath(digest: string): string {
    return join(this.#dir, 'disks', `${digest.slice('sha256:'.length)}.ext4`);
  }

  /** Every package's disk, verified; refuses the whole set if any one fails. */
  async prepare(skills: readonly DesiredSkill[]): Promise<SkillDisk[]> {
    const out: SkillDisk[] = [];
    for (const s of skills) out.push({ name: s.name, digest: s.digest, path: await this.#disk(s) });
    return out;
  }

  #disk(s: DesiredSkill): Promise<string> {
    let p = this.#inFlight.get(s.digest);
    if (!p) {
      p = this.#make(s).finally(() => this.#inFlight.delete(s.digest));
      this.#inFlight.set(s.digest, p);
    }
    return p;
  }

  async #make(s: DesiredSkill): Promise<string> {
    const bundle = await this.#bundle(s);
    const disk = this.diskPath(s.digest);
    const sum = `${disk}.sha256`;
    const recorded = await readFile(sum, 'utf8').catch(() => undefined);
    if (recorded !== undefined && (await stat(disk).catch(() => undefined))) {
      const actual = await sha256File(disk);
      if (actual !== recorded.trim())
        throw integrity(
          `the disk image of skill package ${s.name}@${s.version} (${disk}) changed after it was built: its sha256 is ${actual}, not ${recorded.trim()}; remove it (and ${sum}) to rebuild it from the verified bundle`,
        );
      return disk;
    }
    await mkdir(join(this.#dir, 'disks'), { recursive: true, mode: 0o700 });
    const work = join(this.#dir, `.build-${randomBytes(6).toString('hex')}`);
    const tmp = `${disk}.${randomBytes(6).toString('hex')}.tmp`;
    try {
      const root = join(work, 'root');
      await mkdir(root, { recursive: true });
      // The image's root directory takes this directory's mode: the guest's users traverse it.
      await chmod(root, 0o755);
      await unpackSkillBundle(bundle, root);
      const used = Number(
        (await run('du', ['-s', '--block-size=1M', root], { errorCode: 'HOST_UNSUPPORTED' })).split(/\s/)[0],
      );
      const sizeMiB = Math.ceil(used * 1.2 + HEADROOM_MIB + 1);
      await run(
        'mkfs.ext4',
        ['-q', '-F', '-L', 'warren-skills', '-E', 'root_owner=0:0', '-d', root, tmp, `${sizeMiB}M`],
        { errorCode: 'HOST_UNSUPPORTED' },
      );
      await chmod(tmp, 0o600);
      await writeFile(sum, `${await sha256File(tmp)}\n`, { mode: 0o600 });
      await rename(tmp, disk);
      this.#log(`skill package ${s.name}@${s.version}: disk image built (${sizeMiB} MiB)`);
      return disk;
    } finally {
      await rm(work, { recursive: true, force: true });
      await rm(tmp, { force: true });
    }
  }

  /** The bundle's bytes, verified against its digest: from the cache, else fetched. */
  async #bundle(s: DesiredSkill): Promise<Buffer> {
    const path = this.bundlePath(s.digest);
    const cached = await readFile(path).catch(() => undefined);
    if (cached) {
      const actual = `sha256:${createHash('sha256').update(cached).digest('hex')}`;
      if (actual !== s.digest)
        throw integrity(
          `the cached bundle of skill package ${s.name}@${s.version} (${path}) has sha256 ${actual}, not ${s.digest}: refused; remove the file to fetch it again`,
        );
      return cached;
    }
    if (!this.#fetch)
      throw new WarrenError(
        'API_UNREACHABLE',
        `cannot fetch skill package ${s.name}@${s.version}: no control plane`,
      );
    const bytes = await this.#fetch(s.digest, Math.min(s.sizeBytes, SKILL_BUNDLE_LIMITS.maxBytes));
    const actual = `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
    if (actual !== s.digest)
      throw integrity(
        `the control plane served skill package ${s.name}@${s.version} with sha256 ${actual}, not ${s.digest}: refused (changed in the object store, or in transfer)`,
      );
    await mkdir(join(this.#dir, 'bundles'), { recursive: true, mode: 0o700 });
    const tmp = `${path}.${randomBytes(6).toString('hex')}.tmp`;
    await writeFile(tmp, bytes, { mode: 0o600 });
    await rename(tmp, path);
    return bytes;
  }
}
