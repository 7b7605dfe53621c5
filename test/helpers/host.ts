import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type Host, loadConfig, openHost } from '@warren/host-agent';
import { TEST_IMAGES_DIR } from './image.ts';

export interface TestHost extends Host {
  dataDir: string;
  /**
   * Lets go of the VMs without stopping them, as an agent that exits does, and opens a new host
   * on the same data directory (an agent restart); this host must not be used after.
   */
  reopen(): Promise<TestHost>;
  /** Destroys every VM and removes the data directory; safe to call twice. */
  dispose(): Promise<void>;
}

/**
 * A host with its own temporary data directory and the shared test image store. Networking is
 * off: these tests run in the machine's own namespace, where VMs must never get a route out
 * (test/net/ tests networking inside namespaces they create).
 */
/** `env`: further host-agent settings, by their environment names (WARREN_...). */
export async function openTestHost(env: Record<string, string> = {}): Promise<TestHost> {
  // Short path: VM sockets live under it and unix socket paths are limited to 107 bytes.
  return openOn(await mkdtemp(join(tmpdir(), 'wt-')), env);
}

async function openOn(dataDir: string, env: Record<string, string>): Promise<TestHost> {
  const host = await openHost(
    loadConfig(env, { dataDir, imagesDir: TEST_IMAGES_DIR, bootTimeoutMs: 90_000, network: 'off' }),
  );
  let disposed = false;
  return {
    ...host,
    dataDir,
    async reopen() {
      disposed = true;
      host.vms.close();
      return openOn(dataDir, env);
    },
    async dispose() {
      if (disposed) return;
      disposed = true;
      for (const vm of await host.vms.list()) await host.vms.destroy(vm.id).catch(() => {});
      host.vms.close();
      await rm(dataDir, { recursive: true, force: true });
    },
  };
}

export async function collect(
  run: (o: { onStdout: (b: Buffer) => void; onStderr: (b: Buffer) => void }) => Promise<unknown>,
) {
  let stdout = '';
  let stderr = '';
  const exit = await run({ onStdout: (b) => (stdout += b), onStderr: (b) => (stderr += b) });
  return { stdout, stderr, exit };
}
