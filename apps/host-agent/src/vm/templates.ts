/**
 * Templates: per host, per image and VM shape, one VM booted once and snapshotted, which new
 * tenants of that shape start from instead of booting (docs/architecture.md, "Templates").
 *
 * A template is `<dataDir>/templates/<key>/`: `root.qcow2` (the template's root disk as it was
 * at the snapshot: a qcow2 layer over the image's rootfs), `state` (device state and memory,
 * in one migration stream) and `template.json` (its key and the digests of both files, written
 * last: a directory without it is a build cut short). Everything is root's and read only by the
 * host agent: a tenant gets a copy of the root layer, and its QEMU reads the state from a
 * socket the agent feeds, so no QEMU ever opens a template file.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import {
  chmod,
  chown,
  copyFile,
  lstat,
  mkdir,
  readdir,
  readFile,
  rename,
  rm,
  stat,
  writeFile,
} from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { VerifiedImage } from '@warren/images';
import { run } from '@warren/images';
import { WarrenError } from '@warren/protocol';
import { z } from 'zod';
import type { Accelerator } from '../accel.ts';
import { PRIVATE_FILE_MODE } from '../fs-modes.ts';
import { GuestClient } from '../guest/guest-client.ts';
import type { JailIds, RunningVm, VmLaunchSpec, VmmDriver } from '../vmm/driver.ts';
import { INITIAL_CHAINS, vmDisks } from '../vmm/vm-disks.ts';

/** Where templates live under the data directory. */
export const TEMPLATES_DIR = 'templates';
const TEMPLATE_FILE = 'template.json';
const ROOT_FILE = 'root.qcow2';
const STATE_FILE = 'state';
/** How long after a failed build VMs of its shape boot without a new attempt (each attempt costs up to a boot timeout). */
const BUILD_RETRY_MS = 10 * 60_000;
/** A build's directory, beside the templates; `tpl-<rest>` is its VM's id. */
const BUILD_PREFIX = '.b-';
/** Part of every key: a change in how templates are made or started from makes new ones. */
const TEMPLATE_FORMAT = 2;
/** The template's own data disk: never mounted (template mode), there so the device layout matches a tenant's. */
const TEMPLATE_DATA_MIB = 16;

/** What a tenant must share with a template to start from it: the same image and the same devices. */
export interface TemplateKey {
  imageId: string;
  cpus: number;
  memoryMiB: number;
  accel: Accelerator;
  vmm: string;
  /** Whether the tenant has a NIC (the template then has one connected to nothing). */
  nic: boolean;
}

const TemplateRecord = z.strictObject({
  key: z.strictObject({
    imageId: z.string(),
    cpus: z.number(),
    memoryMiB: z.number(),
    accel: z.string(),
    vmm: z.string(),
    nic: z.boolean(),
  }),
  createdAt: z.string(),
  /** sha256 of root.qcow2 and state, checked before a tenant starts from them (once per file version). */
  digests: z.strictObject({ root: z.string(), state: z.string() }),
  bootMs: z.number(),
});
type TemplateRecord = z.infer<typeof TemplateRecord>;

/** A template ready to start from: the snapshot directory a restore reads `state` from, and the root layer to copy. */
export interface Template {
  dir: string;
  rootLayer: string;
  key: TemplateKey;
}

export interface TemplatesOptions {
  dataDir: string;
  driver: VmmDriver;
  bootTimeoutMs: number;
  /** Whether the image store still has an image: templates of removed images are removed at start. */
  imageExists(imageId: string): Promise<boolean>;
  /** Holds a VM uid for the template VM's QEMU while `use` runs (VmManager's allocator). */
  withJailIds<T>(use: (ids: JailIds) => Promise<T>): Promise<T>;
  log: (message: string) => void;
}

export function templateKeyName(key: TemplateKey): string {
  const canonical = JSON.stringify([
    TEMPLATE_FORMAT,
    key.imageId,
    key.cpus,
    key.memoryMiB,
    key.accel,
    key.vmm,
    key.nic,
  ]);
  return createHash('sha256').update(canonical).digest('hex').slice(0, 24);
}

async function sha256Of(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(path)) h.update(chunk as Buffer);
  return h.digest('hex');
}

/** A stat stamp: a file whose stamp is unchanged since its digest was checked need not be read again. */
async function stampOf(path: string): Promise<string> {
  const s = await stat(path);
  return `${s.dev}:${s.ino}:${s.size}:${s.mtimeMs}:${s.ctimeMs}`;
}

export class Templates {
  readonly #o: TemplatesOptions;
  /** Builds under way, by key name: concurrent first starts share one. */
  readonly #building = new Map<string, Promise<Template>>();
  /** When a build of each key last failed: VMs of that shape boot without trying again for a while. */
  readonly #failedAt = new Map<string, number>();
  /** Digests checked, by path and stat stamp. */
  readonly #checked = new Map<string, string>();

  constructor(options: TemplatesOptions) {
    this.#o = options;
  }

  /**
   * Ends what a build cut short by an agent that died left: the template VM's QEMU (it runs in
   * its own session and outlives the agent) and the build directory. Removes the templates of
   * images no longer in the store.
   */
  async cleanUp(): Promise<void> {
    const root = join(this.#o.dataDir, TEMPLATES_DIR);
    for (const name of await readdir(root).catch(() => [] as string[])) {
      const dir = join(root, name);
      if (!name.startsWith(BUILD_PREFIX)) {
        const text = await readFile(join(dir, TEMPLATE_FILE), 'utf8').catch(() => undefined);
        let imageId: string | undefined;
        try {
          imageId = text === undefined ? undefined : TemplateRecord.parse(JSON.parse(text)).key.imageId;
        } catch {
          // A damaged template.json: the template is checked, and rebuilt, at its next use.
        }
        if (imageId !== undefined && !(await this.#o.imageExists(imageId))) {
          this.#o.log(`template ${name}: image ${imageId} is gone; removed`);
          await rm(dir, { recursive: true, force: true });
        }
        continue;
      }
      const spec = { id: `tpl-${name.slice(BUILD_PREFIX.length)}`, dir } as VmLaunchSpec;
      const vm = this.#o.driver.capabilities.reAttach
        ? await this.#o.driver.attach(spec).catch(() => undefined)
        : undefined;
      if (vm) {
        this.#o.log(`ending the QEMU of template build ${name}, left by an earlier agent`);
        vm.kill();
        await vm.exited;
      }
      await rm(dir, { recursive: true, force: true });
    }
  }

  dirOf(key: TemplateKey): string {
    return join(this.#o.dataDir, TEMPLATES_DIR, templateKeyName(key));
  }

  /** The template for `key`, checked; built first when missing or broken (one build per key at a time). */
  get(key: TemplateKey, image: VerifiedImage): Promise<Template> {
    const name = templateKeyName(key);
    const pending = this.#building.get(name);
    if (pending) return pending;
    const failedAt = this.#failedAt.get(name);
    if (failedAt !== undefined && Date.now() - failedAt < BUILD_RETRY_MS)
      return Promise.reject(
        new WarrenError(
          'VM_BOOT_FAILED',
          `building template ${name} failed less than ${BUILD_RETRY_MS} ms ago`,
        ),
      );
    const p = (async () => {
      const found = await this.#check(key).catch((e: Error) => {
        this.#o.log(`template ${name}: ${e.message}; building it again`);
        return undefined;
      });
      if (found) return found;
      try {
        return await this.#build(key, image);
      } catch (e) {
        this.#failedAt.set(name, Date.now());
        this.#o.log(`template ${name}: build failed: ${(e as Error).message}`);
        throw e;
      }
    })();
    this.#building.set(name, p);
    p.finally(() => this.#building.delete(name)).catch(() => {});
    return p;
  }

  /** Removes a template a restore failed from, so the next tenant gets a fresh one. */
  async discard(key: TemplateKey, why: string): Promise<void> {
    this.#o.log(`template ${templateKeyName(key)} discarded: ${why}`);
    await rm(this.dirOf(key), { recursive: true, force: true });
  }

  /** The template of `key` if it is complete and intact: root's files, unchanged since they were made. */
  async #check(key: TemplateKey): Promise<Template | undefined> {
    const dir = this.dirOf(key);
    const text = await readFile(join(dir, TEMPLATE_FILE), 'utf8').catch(() => undefined);
    if (text === undefined) {
      await rm(dir, { recursive: true, force: true });
      return undefined;
    }
    const record = TemplateRecord.parse(JSON.parse(text));
    if (templateKeyName(record.key as TemplateKey) !== templateKeyName(key))
      throw new Error('its template.json is for another key');
    for (const [file, digest] of [
      [ROOT_FILE, record.digests.root],
      [STATE_FILE, record.digests.state],
    ] as const) {
      const path = join(dir, file);
      const s = await lstat(path);
      if (!s.isFile() || s.uid !== 0 || (s.mode & 0o077) !== 0)
        throw new Error(`${path} is not a regular file private to root`);
      const stamp = await stampOf(path);
      if (this.#checked.get(path) === stamp) continue;
      const actual = await sha256Of(path);
      if (actual !== digest) throw new Error(`${path} has sha256 ${actual}, expected ${digest}`);
      this.#checked.set(path, stamp);
    }
    return { dir, rootLayer: join(dir, ROOT_FILE), key };
  }

  /**
   * Boots a VM of the image in template mode in a build directory, waits for its guest agent,
   * snapshots it (memory kept in the state stream) and ends it; then moves the root layer and
   * state into the template's directory and writes template.json.
   */
  async #build(key: TemplateKey, image: VerifiedImage): Promise<Template> {
    const name = templateKeyName(key);
    const root = join(this.#o.dataDir, TEMPLATES_DIR);
    await mkdir(root, { recursive: true, mode: 0o700 });
    await chmod(root, 0o700);
    // Short: the QEMU sockets live under it (unix socket paths are capped at 107 bytes).
    const build = join(root, `${BUILD_PREFIX}${name.slice(0, 12)}`);
    const dir = this.dirOf(key);
    await rm(build, { recursive: true, force: true });
    await rm(dir, { recursive: true, force: true });
    await mkdir(build, { mode: 0o700 });
    const started = performance.now();
    try {
      await this.#o.driver.createDisks(build, { baseImage: image.rootfsPath, dataMiB: TEMPLATE_DATA_MIB });
      const bootMs = await this.#o.withJailIds(async (ids) => {
        const spec = {
          id: `tpl-${name.slice(0, 12)}`,
          dir: build,
          image,
          cpus: key.cpus,
          memoryMiB: key.memoryMiB,
          accel: key.accel,
          jail: ids,
          disks: INITIAL_CHAINS,
          template: { nic: key.nic },
        };
        const vm = await this.#o.driver.launch(spec);
        try {
          const guest = await waitForAgent(vm, this.#o.bootTimeoutMs);
          const bootMs = performance.now() - started;
          try {
            // The page cache goes to the root disk first, so the layer holds what the memory's
            // cache saw written; then the clean cache is dropped (freed pages are zeroed,
            // init_on_free=1), so the state every tenant start loads holds only what is in use.
            await guest
              .exec({ argv: ['sh', '-c', 'sync; echo 3 > /proc/sys/vm/drop_caches'], timeoutMs: 30_000 })
              .catch(() => {});
            // The snapshot is taken with this session open and idle: the guest's writes on the
            // port are serialized, so once this answer is here it has nothing left to send.
            // Closed first, the guest would answer the close with writes that block until the
            // next host connects: every tenant's first connection would then get bytes of this
            // dead session, fail its handshake, and leave its own session's bytes to the next,
            // over and over (docs/architecture.md, "Host ⇄ guest channel").
            await guest.health(10_000);
            const tops = await this.#o.driver.newTops!(build, INITIAL_CHAINS, image);
            const snap = join(build, 'snapshot');
            await mkdir(snap, { mode: 0o700 });
            await this.#o.driver.snapshot!(vm, spec, snap, tops, { memory: 'stream' });
          } finally {
            guest.close();
          }
          return bootMs;
        } finally {
          vm.kill();
          await vm.exited;
        }
      });
      const out = join(build, 'out');
      await mkdir(out, { mode: 0o700 });
      await rename(vmDisks(build).root, join(out, ROOT_FILE));
      await rename(join(build, 'snapshot', 'state'), join(out, STATE_FILE));
      const digests = { root: '', state: '' };
      for (const [file, field] of [
        [ROOT_FILE, 'root'],
        [STATE_FILE, 'state'],
      ] as const) {
        const path = join(out, file);
        await chown(path, 0, 0);
        await chmod(path, 0o400);
        digests[field] = await sha256Of(path);
      }
      const record: TemplateRecord = { key, createdAt: new Date().toISOString(), digests, bootMs };
      await writeFile(join(out, TEMPLATE_FILE), `${JSON.stringify(record, null, 2)}\n`, { mode: 0o600 });
      await rename(out, dir);
      this.#o.log(
        `template ${name} built for image ${key.imageId} (${key.cpus} vCPU, ${key.memoryMiB} MiB${key.nic ? ', NIC' : ''}) in ${Math.round(performance.now() - started)} ms; state ${(await stat(join(dir, STATE_FILE))).size} bytes`,
      );
      return { dir, rootLayer: join(dir, ROOT_FILE), key };
    } finally {
      await rm(build, { recursive: true, force: true });
    }
  }
}

async function waitForAgent(vm: RunningVm, timeoutMs: number): Promise<GuestClient> {
  const deadline = Date.now() + timeoutMs;
  let exited = false;
  void vm.exited.then(() => {
    exited = true;
  });
  let last: unknown;
  while (Date.now() < deadline && !exited) {
    try {
      const client = await GuestClient.connect(
        vm.transport,
        Math.min(10_000, Math.max(1, deadline - Date.now())),
      );
      await client.health(10_000);
      return client;
    } catch (e) {
      last = e;
      await sleep(100);
    }
  }
  throw new WarrenError(
    'VM_BOOT_FAILED',
    `the template VM did not become ready: ${exited ? (await vm.exited).reason : `no answer within ${timeoutMs} ms`}`,
    { cause: last },
  );
}

/**
 * Puts a copy of the template's root layer in place of the tenant's new root overlay. Both sit
 * on the same image rootfs; the tenant's guest kernel remembers the template's disk, so its
 * root must start from that layer, never from an empty overlay.
 */
export async function rootFromTemplate(vmDir: string, template: Template): Promise<void> {
  const target = vmDisks(vmDir).root;
  const tmp = `${target}.template-${randomBytes(4).toString('hex')}`;
  try {
    await copyFile(template.rootLayer, tmp);
    await chmod(tmp, PRIVATE_FILE_MODE);
    await rename(tmp, target);
  } finally {
    await rm(tmp, { force: true });
  }
}

/** Gives the tenant a new empty root overlay again (a template start that failed falls back to a cold boot). */
export async function freshRoot(vmDir: string, rootfsPath: string): Promise<void> {
  const target = vmDisks(vmDir).root;
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', rootfsPath, target], {
    errorCode: 'HOST_UNSUPPORTED',
  });
  await chmod(target, PRIVATE_FILE_MODE);
}
