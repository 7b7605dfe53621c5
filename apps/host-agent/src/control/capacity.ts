import { statfs } from 'node:fs/promises';
import { type Resources, Resources as ResourcesSchema } from '@warren/protocol';
import type { HostAgentConfig } from '../config.ts';

const MiB = 1024 * 1024;
/** Disk kept free for images, logs and the agent's own state out of the default capacity. */
const DISK_RESERVE_MIB = 2048;
const MAX_DISK_MIB = ResourcesSchema.shape.diskMiB.maxValue ?? Number.MAX_SAFE_INTEGER;

/**
 * What the control plane may place on this host. Measured once at start: free disk shrinks
 * as tenants' volumes fill, and the control plane already subtracts what it allocated.
 */
export async function capacityOf(config: HostAgentConfig): Promise<Resources> {
  let diskMiB = config.capacityDiskMiB;
  if (diskMiB === undefined) {
    const fs = await statfs(config.dataDir);
    const freeMiB = Math.floor((fs.bavail * fs.bsize) / MiB);
    diskMiB = Math.min(MAX_DISK_MIB, Math.max(1024, freeMiB - DISK_RESERVE_MIB));
  }
  return { vcpus: config.capacityVcpus, memoryMiB: config.capacityMemoryMiB, diskMiB };
}
