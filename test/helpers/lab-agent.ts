/**
 * A real host agent in a NetLab's host namespace, as the network tests run it: tenant
 * networking on, its DNS forwarder's upstream the simulated internet's resolver, the shared test
 * images, quick heartbeats. Each test names what differs (`env`).
 */
import type { ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { REPO_ROOT, TEST_IMAGES_DIR } from './image.ts';
import { type NetLab, SIM } from './netns.ts';

export interface LabAgentOptions {
  /** The control plane as the host namespace reaches it. */
  controlPlaneUrl: string;
  joinToken: string;
  dataDir: string;
  /** The agent API's port on the host namespace's address. */
  port: number;
  /** Settings beyond the defaults below, or overriding them. */
  env?: Record<string, string>;
  /** Each chunk of the agent's output (stdout and stderr), for a test's failure messages. */
  onOutput?: (chunk: string) => void;
}

/** Started in the lab; NetLab.destroy() ends it if the test did not. */
export function spawnLabAgent(lab: NetLab, o: LabAgentOptions): ChildProcess {
  const child = lab.spawn(
    lab.hostNs,
    [join(REPO_ROOT, 'scripts', 'node.sh'), join(REPO_ROOT, 'apps/host-agent/src/main.ts')],
    {
      ...process.env,
      WARREN_DATA_DIR: o.dataDir,
      WARREN_IMAGES_DIR: TEST_IMAGES_DIR,
      WARREN_CONTROL_PLANE_URL: o.controlPlaneUrl,
      WARREN_JOIN_TOKEN: o.joinToken,
      WARREN_AGENT_LISTEN: `0.0.0.0:${o.port}`,
      WARREN_AGENT_ADDRESS: `http://${lab.hostIp}:${o.port}`,
      WARREN_HEARTBEAT_MS: '300',
      WARREN_BOOT_TIMEOUT_MS: '120000',
      WARREN_NETWORK: 'on',
      WARREN_VM_DNS_UPSTREAM: SIM.dns,
      ...o.env,
    },
  );
  for (const s of [child.stdout!, child.stderr!]) {
    if (o.onOutput) s.on('data', (c) => o.onOutput!(String(c)));
    else s.resume();
  }
  return child;
}
