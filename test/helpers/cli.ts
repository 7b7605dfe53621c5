/**
 * Runs the real `warren` CLI (node_modules/.bin/warren, the bundled build, a separate process)
 * against a control plane the test opened, as a user would. Shared by the CLI tests so each
 * states only what it checks.
 */
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ControlPlaneConfig } from '@warren/control-plane';
import {
  convergeAllRunning,
  createTenantWithKey,
  FakeAgent,
  openTestControlPlane,
  type TestControlPlane,
} from './api.ts';
import { REPO_ROOT } from './image.ts';

export const WARREN_BIN = join(REPO_ROOT, 'node_modules', '.bin', 'warren');

export interface CliRun {
  status: number | null;
  stdout: string;
  stderr: string;
}

export interface CliTarget {
  /** The control plane's API address. */
  url: string;
  /** The admin token or a tenant key the command runs with. */
  token: string;
  /** A scratch directory: the CLI's data directory points inside it, so it finds no local control plane. */
  scratch: string;
}

/** Runs `warren ARGS`; killed after 60 s so a hung command fails the test instead of hanging it. */
export function runWarren(
  target: CliTarget,
  args: string[],
  options: { onSpawn?: (pid: number) => void; input?: string | Buffer; env?: Record<string, string> } = {},
): Promise<CliRun> {
  const child = spawn(WARREN_BIN, args, {
    env: {
      ...process.env,
      WARREN_API_URL: target.url,
      WARREN_TOKEN: target.token,
      WARREN_DATA_DIR: join(target.scratch, 'none'),
      ...options.env,
    },
    stdio: [options.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout?.on('data', (b) => (stdout += b));
  child.stderr?.on('data', (b) => (stderr += b));
  if (options.input !== undefined) child.stdin?.end(options.input);
  if (child.pid) options.onSpawn?.(child.pid);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
    child.once('error', reject);
    child.once('close', (status) => {
      clearTimeout(timer);
      resolve({ status, stdout, stderr });
    });
  });
}

/** What a CLI test runs against: a control plane, one fake host, maybe one running tenant. */
export interface CliStage {
  t: TestControlPlane;
  agent: FakeAgent;
  /** The tenant's id and key ('' without a tenant). */
  tenantId: string;
  key: string;
  /** A scratch directory of the test's own (CliTarget.scratch, files to push). */
  dir: string;
  close(): Promise<void>;
}

/**
 * Opens a control plane (with `settings`) and a fake host agent named `host` (heartbeating every
 * `heartbeatMs` when given), and, with `tenant`, creates that tenant with a key and waits until
 * it runs.
 */
export async function openCliStage(o: {
  host: string;
  tenant?: string;
  settings?: Partial<ControlPlaneConfig>;
  heartbeatMs?: number;
}): Promise<CliStage> {
  const t = await openTestControlPlane(o.settings);
  const agent = new FakeAgent(o.host, { vcpus: 64, memoryMiB: 65536, diskMiB: 1_000_000 });
  const stage: CliStage = {
    t,
    agent,
    tenantId: '',
    key: '',
    dir: '',
    async close() {
      await agent.stop();
      await t.close();
      if (stage.dir) await rm(stage.dir, { recursive: true, force: true });
    },
  };
  try {
    await agent.start(t.url, t.joinToken, o.heartbeatMs);
    if (o.tenant) {
      const { created, key } = await createTenantWithKey(t, { name: o.tenant });
      stage.tenantId = created.tenant.id;
      stage.key = key.token;
      await convergeAllRunning(t, [agent]);
    }
    stage.dir = await mkdtemp(join(tmpdir(), 'wt-cli-'));
    return stage;
  } catch (e) {
    await stage.close();
    throw e;
  }
}
