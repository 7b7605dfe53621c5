import { readFile, statfs } from 'node:fs/promises';
import os from 'node:os';
import { DATA_VOLUME_MOUNT, GUEST_API_VERSION, type Health } from '@warren/protocol/guest';

export const AGENT_VERSION = process.env.WARREN_AGENT_VERSION ?? 'dev';
const STARTED_AT = Date.now();

async function memAvailable(): Promise<number> {
  try {
    const m = /^MemAvailable:\s+(\d+) kB/m.exec(await readFile('/proc/meminfo', 'utf8'));
    if (m) return Number(m[1]) * 1024;
  } catch {
    // Not Linux: fall back to free memory.
  }
  return os.freemem();
}

export async function health(mounts = ['/', DATA_VOLUME_MOUNT]): Promise<Health> {
  const disks: Health['disks'] = [];
  for (const mount of mounts) {
    try {
      const s = await statfs(mount);
      disks.push({ mount, totalBytes: s.blocks * s.bsize, freeBytes: s.bavail * s.bsize });
    } catch {
      // Mount missing (e.g. no data volume): leave it out.
    }
  }
  const [l1 = 0, l5 = 0, l15 = 0] = os.loadavg();
  return {
    apiVersion: GUEST_API_VERSION,
    agentVersion: AGENT_VERSION,
    kernelRelease: os.release(),
    agentStartedAt: STARTED_AT,
    uptimeSec: os.uptime(),
    load: [l1, l5, l15],
    memory: { totalBytes: os.totalmem(), availableBytes: await memAvailable() },
    disks,
  };
}
