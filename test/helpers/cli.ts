/**
 * Runs the real `warren` CLI (node_modules/.bin/warren, the bundled build, a separate process)
 * against a control plane the test opened, as a user would. Shared by the CLI tests so each
 * states only what it checks.
 */
import { spawn } from 'node:child_process';
import { join } from 'node:path';
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
