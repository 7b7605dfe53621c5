/**
 * A guest restored from its image's template becoming one tenant's (`POST /v1/identity`).
 *
 * Every tenant started from one template begins with the same memory: the same kernel random
 * generator state, hostname, machine-id, and no network or data volume (the template booted
 * with `warren.template=1`, so its sysinit configured neither). This gives the guest its own,
 * before the host lets anyone else reach it.
 */
import { execFile } from 'node:child_process';
import { chmod, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import {
  DATA_VOLUME_MOUNT,
  type IdentityRequest,
  type IdentityResult,
  WarrenError,
} from '@warren/protocol/guest';
import { BUSYBOX, fixUpAfterRestore, isMounted } from './restore.ts';

const run = promisify(execFile);
/** The data volume's device: the second virtio disk. */
const DATA_DEVICE = 'vdb';
/** How long the kernel may take to see the data volume's size after the host's resize notification. */
const DATA_SIZE_WAIT_MS = 10_000;
/** Where the reseed helper is written: a tmpfs (sysinit mounts /run). */
const RESEED_HELPER = '/run/warren-reseed';

/**
 * A static x86-64 program that asks the kernel to reseed its random generator now
 * (ioctl RNDRESEEDCRNG on /dev/urandom; root only) and exits with 0 or the errno.
 * Writing to /dev/urandom only mixes bytes into the input pool: Linux 6.1 takes them into
 * the generator at its next reseed, up to a minute later (measured by jiffies, which a restore
 * does not advance), so until then every tenant of one template would read the same bytes.
 * Node has no ioctl; a helper in the image would tie this to an image rebuild. Assembled from:
 *   lea rdi,[rip+path]; mov esi,1 (O_WRONLY); xor edx,edx; mov eax,2 (open); syscall
 *   test eax,eax; js done; mov edi,eax; mov esi,0x5207; xor edx,edx; mov eax,16 (ioctl); syscall
 *   done: mov edi,eax; neg edi; mov eax,60 (exit); syscall
 *   path: "/dev/urandom\0"
 */
const RESEED_CODE = Buffer.from(
  '488d3d2d000000be0100000031d2b8020000000f0585c0781089c7be0752000031d2b8100000000f0589c7f7dfb83c0000000f052f6465762f7572616e646f6d00',
  'hex',
);

/** An ELF64 executable of `code`: one loadable segment holding the headers and the code, entered after them. */
export function staticElf(code: Buffer): Buffer {
  const base = 0x400000n;
  const ehSize = 64;
  const phSize = 56;
  const total = ehSize + phSize + code.length;
  const b = Buffer.alloc(total);
  b.set([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1, 0], 0);
  b.writeUInt16LE(2, 16); // ET_EXEC
  b.writeUInt16LE(0x3e, 18); // x86-64
  b.writeUInt32LE(1, 20);
  b.writeBigUInt64LE(base + BigInt(ehSize + phSize), 24); // entry
  b.writeBigUInt64LE(BigInt(ehSize), 32); // program headers
  b.writeUInt16LE(ehSize, 52);
  b.writeUInt16LE(phSize, 54);
  b.writeUInt16LE(1, 56);
  const ph = ehSize;
  b.writeUInt32LE(1, ph); // PT_LOAD
  b.writeUInt32LE(5, ph + 4); // R+X
  b.writeBigUInt64LE(0n, ph + 8);
  b.writeBigUInt64LE(base, ph + 16);
  b.writeBigUInt64LE(base, ph + 24);
  b.writeBigUInt64LE(BigInt(total), ph + 32);
  b.writeBigUInt64LE(BigInt(total), ph + 40);
  b.writeBigUInt64LE(0x1000n, ph + 48);
  code.copy(b, ehSize + phSize);
  return b;
}

/** The reseed program, as a file's bytes. */
export function reseedProgram(): Buffer {
  return staticElf(RESEED_CODE);
}

/** Reseeds the kernel's random generator from its input pool; false where the kernel refused. */
export async function reseedKernelRandom(): Promise<boolean> {
  if (process.arch !== 'x64') return false;
  await writeFile(RESEED_HELPER, reseedProgram(), { mode: 0o700 });
  try {
    await run(RESEED_HELPER, []);
    return true;
  } catch {
    return false;
  } finally {
    await rm(RESEED_HELPER, { force: true });
  }
}

export async function takeIdentity(req: IdentityRequest, receivedAt: number): Promise<IdentityResult> {
  // First: nothing below may draw from the template's random state.
  const { behindMs } = await fixUpAfterRestore({ unixMs: req.unixMs, entropy: req.entropy }, receivedAt);
  const reseeded = await reseedKernelRandom();
  await writeFile('/proc/sys/kernel/hostname', req.hostname);
  await writeAtomically('/etc/hostname', `${req.hostname}\n`, 0o644);
  await writeAtomically('/etc/machine-id', `${req.machineId}\n`, 0o444);
  if (req.network) await configureNetwork(req.network);
  await mountDataVolume(req.dataBytes);
  return { behindMs, reseeded };
}

async function writeAtomically(path: string, text: string, mode: number): Promise<void> {
  const tmp = `${path}.warren-new`;
  await writeFile(tmp, text, { mode });
  await chmod(tmp, mode);
  await rename(tmp, path);
}

async function ip(...args: string[]): Promise<void> {
  await run(BUSYBOX, ['ip', ...args]).catch((e: Error) => {
    throw new WarrenError('INTERNAL', `ip ${args.join(' ')} failed in the guest: ${e.message}`);
  });
}

/** What sysinit does from `warren.net=` at a boot, plus the MAC: the template's NIC came back with the template's. */
async function configureNetwork(net: NonNullable<IdentityRequest['network']>): Promise<void> {
  const dev = (await readdir('/sys/class/net')).find((d) => d !== 'lo');
  if (!dev) throw new WarrenError('INTERNAL', 'the guest has no network interface to configure');
  await ip('link', 'set', 'dev', dev, 'down');
  await ip('link', 'set', 'dev', dev, 'address', net.mac);
  await ip('link', 'set', 'dev', dev, 'up');
  await ip('addr', 'flush', 'dev', dev);
  await ip('addr', 'add', net.address, 'dev', dev);
  await ip('route', 'replace', 'default', 'via', net.gateway, 'dev', dev);
  await writeFile('/etc/resolv.conf', `nameserver ${net.dns}\n`);
}

/**
 * Mounts the tenant's data volume. The kernel learnt the size of the template's small disk at
 * boot; the host's resize notification makes it read this one's, which is waited for. Pages the
 * kernel cached of the template's disk (its partition scan) are dropped before the mount reads
 * the superblock.
 */
async function mountDataVolume(bytes: number): Promise<void> {
  if (await isMounted(DATA_VOLUME_MOUNT)) return;
  const deadline = Date.now() + DATA_SIZE_WAIT_MS;
  for (;;) {
    const sectors = Number(
      (await readFile(`/sys/block/${DATA_DEVICE}/size`, 'utf8').catch(() => '0')).trim(),
    );
    if (sectors * 512 === bytes) break;
    if (Date.now() > deadline)
      throw new WarrenError(
        'INTERNAL',
        `the data volume /dev/${DATA_DEVICE} shows ${sectors * 512} bytes, not the ${bytes} of this tenant's volume`,
      );
    await sleep(20);
  }
  await writeFile('/proc/sys/vm/drop_caches', '1');
  await run(BUSYBOX, [
    'mount',
    '-t',
    'ext4',
    '-o',
    'noatime,nosuid,nodev',
    `/dev/${DATA_DEVICE}`,
    DATA_VOLUME_MOUNT,
  ]).catch((e: Error) => {
    throw new WarrenError('INTERNAL', `cannot mount the data volume: ${e.message}`);
  });
}
