/**
 * Snapshots of a running QEMU and restores from them, over QMP.
 *
 * A snapshot is taken with the guest paused:
 *   1. each disk's top is frozen: a new empty qcow2 top (made by the agent in the jail) is
 *      added and made the device's image with `blockdev-snapshot`;
 *   2. the device state is saved with a migration to a unix socket the agent listens on. A
 *      booted VM's RAM is a shared memfd, which `x-ignore-shared` leaves out of the stream: the
 *      agent copies it as a sparse file instead (`mapped`). A VM that was itself restored from
 *      a `mapped` snapshot maps that file privately, so its RAM goes into the stream (`stream`);
 *   3. the guest resumes (`cont` takes the images back from the finished migration).
 * A restore starts a new QEMU with `-incoming defer` on the snapshot's disks and memory and
 * sends it the saved state through `migrate-incoming`; see docs/architecture.md for why.
 */
import { spawn } from 'node:child_process';
import { createReadStream, createWriteStream } from 'node:fs';
import { chown, readdir, readFile, readlink, rm } from 'node:fs/promises';
import { connect, createServer } from 'node:net';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { type SnapshotMemory, WarrenError } from '@warren/protocol';
import { DISK_NAMES, type DiskChains, type DiskName, DisksNotSwitched, type JailIds } from '../driver.ts';
import { hostPathOf, SNAPSHOT_MEMORY_FILE } from './jail.ts';
import { JAIL_PATHS, jailPathOfLayer, layerNode, positionalNode, RAM_OBJECT } from './qemu-args.ts';
import { type QmpClient, QmpError } from './qmp-client.ts';

/** A snapshot's device state (and, for `stream`, its memory), in the snapshot's directory. */
export const SNAPSHOT_STATE_FILE = 'state';
/** How long a migration of device state (or of a whole `stream` memory) may take. */
const MIGRATION_TIMEOUT_MS = 10 * 60_000;

interface MigrationStatus {
  status: string;
  'error-desc'?: string;
}

async function migrationDone(qmp: QmpClient, what: string): Promise<void> {
  const deadline = Date.now() + MIGRATION_TIMEOUT_MS;
  for (let pause = 1; ; pause = Math.min(pause * 2, 50)) {
    const s = await qmp.execute<MigrationStatus>('query-migrate');
    if (s.status === 'completed') return;
    if (s.status === 'failed' || s.status === 'cancelled')
      throw new WarrenError('INTERNAL', `${what} failed: ${s['error-desc'] ?? s.status}`);
    if (Date.now() > deadline)
      throw new WarrenError('TIMEOUT', `${what} did not finish in ${MIGRATION_TIMEOUT_MS} ms`);
    await sleep(pause);
  }
}

/** How the running QEMU `pid` holds guest RAM, from its command line. */
export async function ramKind(pid: number): Promise<'memfd' | 'mapped' | 'anonymous'> {
  const argv = (await readFile(`/proc/${pid}/cmdline`, 'utf8')).split('\0');
  if (argv.some((a) => a.startsWith(`memory-backend-memfd,id=${RAM_OBJECT},`))) return 'memfd';
  if (argv.some((a) => a.startsWith(`memory-backend-file,id=${RAM_OBJECT},`))) return 'mapped';
  return 'anonymous';
}

/** The path through which the host reads a process's memfd (root may open another process's fds). */
async function memfdPath(pid: number): Promise<string> {
  for (const fd of await readdir(`/proc/${pid}/fd`)) {
    const target = await readlink(`/proc/${pid}/fd/${fd}`).catch(() => '');
    if (target.startsWith('/memfd:')) return `/proc/${pid}/fd/${fd}`;
  }
  throw new WarrenError('INTERNAL', `QEMU ${pid} holds no memfd for guest RAM`);
}

/** Copies a file keeping its holes (coreutils' cp finds them with SEEK_DATA/SEEK_HOLE). */
function sparseCopy(from: string, to: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const cp = spawn('cp', ['--sparse=always', from, to], { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    cp.stderr.on('data', (b) => (err += b));
    cp.on('error', reject);
    cp.on('exit', (code) =>
      code === 0
        ? resolve()
        : reject(new WarrenError('INTERNAL', `copying guest memory failed: ${err.trim()}`)),
    );
  });
}

/** Names of the block nodes the running QEMU has. */
async function nodeNames(qmp: QmpClient): Promise<Set<string>> {
  const nodes = await qmp.execute<{ 'node-name': string }[]>('query-named-block-nodes', { flat: true });
  return new Set(nodes.map((n) => n['node-name']));
}

/** The node QEMU holds layer `index` of `chain` in: named for its file, or by position in a QEMU an earlier agent started. */
function nodeOf(names: Set<string>, disk: DiskName, chain: string[], index: number): string {
  const named = layerNode(disk, index, chain[index]!);
  return names.has(named) ? named : positionalNode(disk, index);
}

/** Opens the (new, empty) top of `chain` in QEMU as a block node of its own, backed by nothing yet. */
async function addTop(qmp: QmpClient, disk: DiskName, chain: string[]): Promise<string> {
  const index = chain.length - 1;
  const node = layerNode(disk, index, chain[index]!);
  await qmp.execute('blockdev-add', {
    driver: 'qcow2',
    'node-name': node,
    discard: 'unmap',
    file: { driver: 'file', filename: jailPathOfLayer(chain[index]!) },
    backing: null,
  });
  return node;
}

/** `blockdev-snapshot` arguments that put `disk`'s new top over its current one. */
function snapshotArgs(
  names: Set<string>,
  disk: DiskName,
  disks: DiskChains,
  tops: DiskChains,
): { node: string; overlay: string } {
  const index = tops[disk].length - 1;
  return {
    node: nodeOf(names, disk, disks[disk], disks[disk].length - 1),
    overlay: layerNode(disk, index, tops[disk][index]!),
  };
}

/**
 * Moves the running guest's disks that have a new top in `tops` onto it, all in one QMP
 * `transaction`: the guest keeps running, and the layers below are frozen at one instant for
 * every disk (a backup's point in time). Nothing changes when it fails: the tops added are
 * removed again.
 */
export async function switchToTops(qmp: QmpClient, disks: DiskChains, tops: DiskChains): Promise<void> {
  const moved = DISK_NAMES.filter((d) => tops[d].length === disks[d].length + 1);
  const added: string[] = [];
  try {
    const names = await nodeNames(qmp);
    for (const disk of moved) added.push(await addTop(qmp, disk, tops[disk]));
    await qmp.execute('transaction', {
      actions: moved.map((disk) => ({
        type: 'blockdev-snapshot',
        data: snapshotArgs(names, disk, disks, tops),
      })),
    });
  } catch (e) {
    for (const node of added) await qmp.execute('blockdev-del', { 'node-name': node }).catch(() => {});
    // An answer from QEMU (not a lost connection) means the transaction did nothing.
    if (e instanceof QmpError) throw new DisksNotSwitched(e);
    throw e;
  }
}

/** How long a cancelled merge job may take to end. */
const JOB_CANCEL_GRACE_MS = 60_000;

interface JobInfo {
  id: string;
  status: string;
  error?: string;
}

/**
 * Merges layers 1..`count` of a running VM's `chain` into layer 0 (QMP `block-commit`, the
 * guest running on): QEMU copies what they hold into the bottom layer and drops them from the
 * disk's graph, so the chain becomes layer 0 and the layers above `count`. The layers merged
 * must be frozen ones (below the top). Waits for the job, and dismisses it, within `timeoutMs`;
 * a job that fails or runs out of time is cancelled, and leaves the chain as it was (what it
 * copied is what the layers above hold anyway).
 */
export async function commitLayers(
  qmp: QmpClient,
  disk: DiskName,
  chain: string[],
  count: number,
  timeoutMs: number,
): Promise<void> {
  if (count < 1 || count > chain.length - 2)
    throw new WarrenError('INTERNAL', `cannot merge ${count} layers of ${chain.length}`);
  const names = await nodeNames(qmp);
  const job = `warren-commit-${disk}`;
  await qmp.execute('block-commit', {
    'job-id': job,
    device: nodeOf(names, disk, chain, chain.length - 1),
    'base-node': nodeOf(names, disk, chain, 0),
    'top-node': nodeOf(names, disk, chain, count),
    'auto-dismiss': false,
  });
  const deadline = Date.now() + timeoutMs;
  let cancelled = false;
  for (let pause = 5; ; pause = Math.min(pause * 2, 200)) {
    const info = (await qmp.execute<JobInfo[]>('query-jobs')).find((j) => j.id === job);
    if (!info) throw new WarrenError('INTERNAL', `QEMU lost the merge job of the ${disk} disk`);
    if (info.status === 'concluded') {
      await qmp.execute('job-dismiss', { id: job });
      if (info.error || cancelled)
        throw new WarrenError(
          cancelled ? 'TIMEOUT' : 'INTERNAL',
          cancelled
            ? `merging the ${disk} disk's layers did not finish in ${timeoutMs} ms`
            : `merging the ${disk} disk's layers failed: ${info.error}`,
        );
      return;
    }
    if (!cancelled && Date.now() > deadline) {
      cancelled = true;
      await qmp.execute('job-cancel', { id: job }).catch(() => {});
    }
    if (Date.now() > deadline + JOB_CANCEL_GRACE_MS)
      throw new WarrenError(
        'TIMEOUT',
        `the merge job of the ${disk} disk did not end after it was cancelled`,
      );
    await sleep(pause);
  }
}

/** A running QEMU whose memory and device state are saved into `dir` (empty). */
export interface SaveTarget {
  vmDir: string;
  pid: number;
  qmp: QmpClient;
  ids: JailIds;
  dir: string;
  /** Keeps the memory in the state file even of a memfd VM (templates: no QEMU ever opens their files). */
  memory?: 'stream';
}

export interface SnapshotTarget extends SaveTarget {
  /** The VM's chains now, and the same chains with a new (already created) top each. */
  disks: DiskChains;
  tops: DiskChains;
}

/** How a running QEMU's memory can be saved: the memfd copied aside, or (a privately mapped file) in the stream. */
async function memoryOf(pid: number): Promise<SnapshotMemory> {
  const kind = await ramKind(pid);
  if (kind === 'anonymous') {
    throw new WarrenError(
      'CONFLICT',
      'this VM was started by an earlier Warren whose QEMUs cannot be snapshotted; stop and start it once',
    );
  }
  return kind === 'memfd' ? 'mapped' : 'stream';
}

/**
 * A suspend: pauses the guest and saves its memory and device state into `t.dir` as a snapshot
 * does, but adds no disk tops (nothing writes the disks while the VM is suspended, so the wake
 * runs on the same chains). On success the guest stays paused, its disks flushed and released
 * by the finished migration: the caller records the suspend and ends QEMU. On failure it is
 * resumed, so a failed suspend leaves the tenant's VM running.
 */
export async function saveForSuspend(t: SaveTarget): Promise<{ memory: SnapshotMemory; pausedMs: number }> {
  const memory = await memoryOf(t.pid);
  const paused = performance.now();
  await t.qmp.execute('stop');
  try {
    await saveState(t, memory);
    if (memory === 'mapped') await sparseCopy(await memfdPath(t.pid), join(t.dir, SNAPSHOT_MEMORY_FILE));
  } catch (e) {
    await t.qmp.execute('cont').catch(() => {});
    throw e;
  }
  return { memory, pausedMs: performance.now() - paused };
}

/** Steps 1-3 of the file comment; returns how memory was kept and how long the guest was paused. */
export async function takeSnapshot(t: SnapshotTarget): Promise<{ memory: SnapshotMemory; pausedMs: number }> {
  const possible = await memoryOf(t.pid);
  const memory: SnapshotMemory = t.memory ?? possible;
  const paused = performance.now();
  await t.qmp.execute('stop');
  let resumed = false;
  try {
    const names = await nodeNames(t.qmp);
    for (const disk of DISK_NAMES) {
      await addTop(t.qmp, disk, t.tops[disk]);
      await t.qmp.execute('blockdev-snapshot', snapshotArgs(names, disk, t.disks, t.tops));
    }
    await saveState(t, memory);
    if (memory === 'mapped') await sparseCopy(await memfdPath(t.pid), join(t.dir, SNAPSHOT_MEMORY_FILE));
  } finally {
    // Resumed whatever happened: a failed snapshot must not leave the tenant's VM frozen.
    await t.qmp.execute('cont').then(
      () => {
        resumed = true;
      },
      () => {},
    );
  }
  if (!resumed) throw new WarrenError('INTERNAL', 'the VM did not resume after its snapshot');
  return { memory, pausedMs: performance.now() - paused };
}

/** Migrates the paused VM's state into the snapshot's state file through a socket in its jail. */
async function saveState(t: SaveTarget, memory: SnapshotMemory): Promise<void> {
  const socket = hostPathOf(t.vmDir, JAIL_PATHS.save);
  await rm(socket, { force: true });
  const file = join(t.dir, SNAPSHOT_STATE_FILE);
  let received: Promise<void> | undefined;
  const server = createServer({ allowHalfOpen: false }, (conn) => {
    // One connection, from this QEMU: anything after it is refused.
    server.close();
    if (received) return;
    received = pipeline(conn, createWriteStream(file, { mode: 0o600 }));
    // Awaited below once the migration completes. A write that fails (a full disk) fails the
    // migration too, and is then the error reported: it must never go unhandled, which would
    // end the agent.
    received.catch(() => {});
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(socket, resolve);
  });
  try {
    // QEMU runs as the VM's uid: the socket must be its to connect to.
    await chown(socket, t.ids.uid, t.ids.gid);
    await t.qmp.execute('migrate-set-capabilities', {
      capabilities: [{ capability: 'x-ignore-shared', state: memory === 'mapped' }],
    });
    await t.qmp.execute('migrate', { uri: `unix:${JAIL_PATHS.save}` });
    try {
      await migrationDone(t.qmp, 'saving the device state');
    } catch (e) {
      // The file's own error (ENOSPC: DISK_FULL to the caller) says more than QEMU's.
      const written = await received?.then(
        () => undefined,
        (err: Error) => err,
      );
      throw written ?? e;
    }
    if (!received) throw new WarrenError('INTERNAL', 'QEMU finished the migration without connecting');
    await received;
  } finally {
    server.close();
    await rm(socket, { force: true });
  }
}

/**
 * Resizes each disk's top node to the size it has, which changes nothing but makes the
 * virtio-blk device raise a config change: the guest reads the size again.
 */
export async function announceSizes(qmp: QmpClient, disks: DiskChains): Promise<void> {
  const nodes = await qmp.execute<{ 'node-name': string; image: { 'virtual-size': number } }[]>(
    'query-named-block-nodes',
    { flat: true },
  );
  const names = new Set(nodes.map((n) => n['node-name']));
  for (const disk of DISK_NAMES) {
    const chain = disks[disk];
    const node = nodeOf(names, disk, chain, chain.length - 1);
    const size = nodes.find((n) => n['node-name'] === node)?.image['virtual-size'];
    if (size !== undefined) await qmp.execute('block_resize', { 'node-name': node, size });
  }
}

/** Sends a snapshot's state to a QEMU started with `-incoming defer`, and waits until it has loaded it. */
export async function loadSnapshot(
  qmp: QmpClient,
  vmDir: string,
  restore: { dir: string; memory: SnapshotMemory },
): Promise<void> {
  await qmp.execute('migrate-set-capabilities', {
    capabilities: [{ capability: 'x-ignore-shared', state: restore.memory === 'mapped' }],
  });
  await qmp.execute('migrate-incoming', { uri: `unix:${JAIL_PATHS.incoming}` });
  const conn = connect(hostPathOf(vmDir, JAIL_PATHS.incoming));
  // QEMU may close its end as soon as it has read the stream's end marker, before this side
  // has finished: an EPIPE then says nothing. QEMU's own status is what decides.
  const sent = pipeline(createReadStream(join(restore.dir, SNAPSHOT_STATE_FILE)), conn).then(
    () => undefined,
    (e: Error) => e,
  );
  try {
    await migrationDone(qmp, 'loading the snapshot');
  } catch (e) {
    const cause = await sent;
    throw cause
      ? new WarrenError('INTERNAL', `${(e as Error).message} (sending the state: ${cause.message})`)
      : e;
  } finally {
    conn.destroy();
  }
}
