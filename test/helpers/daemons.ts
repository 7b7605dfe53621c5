/**
 * The platform's real daemons as child processes (node.sh on their sources), for tests that run
 * the whole platform on this machine, and the few things those tests do with processes.
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { join } from 'node:path';
import type { WarrenClient } from '@warren/sdk';
import { REPO_ROOT, TEST_IMAGES_DIR } from './image.ts';
import { until } from './until.ts';

const NODE = join(REPO_ROOT, 'scripts', 'node.sh');
const ENTRIES = {
  'control-plane': 'apps/control-plane/src/main.ts',
  'host-agent': 'apps/host-agent/src/main.ts',
} as const;

export interface DaemonOptions {
  dataDir: string;
  /** Settings beyond the defaults (data directory, shared test images, networking off). */
  env: Record<string, string>;
  /** Every chunk it writes to stderr, and to stdout unless `ignoreStdout`. */
  onOutput: (chunk: Buffer) => void;
  ignoreStdout?: boolean;
}

/** Starts a daemon in this machine's own namespace: networking off (test/net/ has the network). */
export function spawnDaemon(which: keyof typeof ENTRIES, o: DaemonOptions): ChildProcess {
  const child = spawn(NODE, [join(REPO_ROOT, ENTRIES[which])], {
    env: {
      ...process.env,
      WARREN_DATA_DIR: o.dataDir,
      WARREN_IMAGES_DIR: TEST_IMAGES_DIR,
      WARREN_NETWORK: 'off',
      ...o.env,
    },
    stdio: ['ignore', o.ignoreStdout ? 'ignore' : 'pipe', 'pipe'],
  });
  child.stdout?.on('data', o.onOutput);
  child.stderr!.on('data', o.onOutput);
  return child;
}

/** Sends `signal` to a child this test started and waits until it has exited. */
export async function endChild(child: ChildProcess | undefined, signal: NodeJS.Signals): Promise<void> {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((r) => child.once('exit', r));
  child.kill(signal);
  await exited;
}

/** Processes whose command line holds `pattern` (`pgrep -f`), never this one. */
export function pidsMatching(pattern: string): Promise<number[]> {
  return new Promise((resolve) => {
    execFile('pgrep', ['-f', pattern], (_e, out) =>
      resolve(
        out
          .split('\n')
          .filter(Boolean)
          .map(Number)
          .filter((p) => p !== process.pid),
      ),
    );
  });
}

/** The QEMU processes of VM `id` (its `-name warren-vm-<id>,…`), whichever driver started them. */
export function qemuPidsFor(id: string): Promise<number[]> {
  return pidsMatching(`warren-vm-${id},`);
}

/**
 * Deletes every tenant through the platform (so each host agent destroys its VM) and waits
 * until the control plane lists none; throws when they are not gone within `ms`.
 */
export async function deleteAllTenants(client: WarrenClient, ms = 60_000): Promise<void> {
  for (const t of await client.tenants.list({})) await client.tenants.delete(t.name).catch(() => {});
  await until('tenants deleted', async () => (await client.tenants.list({})).length === 0, ms);
}
