/**
 * Bookkeeping of a VM's snapshots that needs no VMM: which layer files are still needed, what
 * a snapshot costs on disk, and its public shape.
 */
import { readdir, rm, stat, truncate } from 'node:fs/promises';
import { join } from 'node:path';
import type { Snapshot } from '@warren/protocol';
import type { DiskChains } from '../vmm/driver.ts';
import { INITIAL_CHAINS, LAYERS_DIR } from '../vmm/vm-disks.ts';
import type { SnapshotRecord, VmRecord } from './vm-records.ts';

/** Where a snapshot's memory and device state live, relative to the VM directory. */
export const SNAPSHOTS_DIR = 'snapshots';

export function chainsOf(record: VmRecord): DiskChains {
  return record.disks ?? INITIAL_CHAINS;
}

/**
 * Removes layer files nothing refers to any more (not the VM's chains, not a snapshot's) and
 * snapshot directories no record names (a snapshot cut short by a crash). Only files in
 * LAYERS_DIR and SNAPSHOTS_DIR are ever removed; the VM's two original disks are the base of
 * every chain until a restore replaces them, and are emptied once none refers to them.
 */
export async function collectGarbage(dir: string, record: VmRecord): Promise<void> {
  const kept = new Set(record.snapshots.map((s) => s.dir));
  for (const name of await readdir(join(dir, SNAPSHOTS_DIR)).catch(() => [] as string[]))
    if (!kept.has(`${SNAPSHOTS_DIR}/${name}`))
      await rm(join(dir, SNAPSHOTS_DIR, name), { recursive: true, force: true });
  const needed = new Set<string>();
  for (const chains of [chainsOf(record), ...record.snapshots.map((s) => s.disks)])
    for (const layer of [...chains.root, ...chains.data]) needed.add(layer);
  const names = await readdir(join(dir, LAYERS_DIR)).catch(() => [] as string[]);
  for (const name of names) {
    const layer = `${LAYERS_DIR}/${name}`;
    if (!needed.has(layer)) await rm(join(dir, layer), { force: true });
  }
  // The original disks once a restore replaced them and no snapshot holds them: emptied, not
  // removed, since the QEMU jail binds them at every launch.
  for (const disk of [...INITIAL_CHAINS.root, ...INITIAL_CHAINS.data])
    if (!needed.has(disk)) await truncate(join(dir, disk), 0).catch(() => {});
}

async function allocated(path: string): Promise<number> {
  const s = await stat(path).catch(() => undefined);
  if (!s) return 0;
  if (s.isDirectory()) {
    let n = 0;
    for (const name of await readdir(path)) n += await allocated(join(path, name));
    return n;
  }
  return s.blocks * 512;
}

/** Bytes only this snapshot holds: its memory and state, and the disk layers it froze. */
export async function snapshotBytes(dir: string, snapshot: SnapshotRecord): Promise<number> {
  let n = await allocated(join(dir, snapshot.dir));
  for (const layer of [snapshot.disks.root.at(-1)!, snapshot.disks.data.at(-1)!])
    if (layer.startsWith(`${LAYERS_DIR}/`)) n += await allocated(join(dir, layer));
  return n;
}

export async function publicSnapshot(dir: string, s: SnapshotRecord): Promise<Snapshot> {
  return {
    name: s.name,
    createdAt: s.createdAt,
    parent: s.parent,
    memory: s.memory,
    bytes: await snapshotBytes(dir, s),
    pausedMs: Math.round(s.pausedMs),
  };
}

/** A name for a snapshot made without one: a DNS label that sorts by time. */
export function defaultSnapshotName(taken: Set<string>): string {
  const stamp = new Date().toISOString().replace(/[-:]/g, '').replace('T', '-').slice(0, 15).toLowerCase();
  let name = `snap-${stamp}`;
  for (let i = 2; taken.has(name); i++) name = `snap-${stamp}-${i}`;
  return name;
}
