/**
 * The host agent daemon: opens the host (re-attaching to VMs that kept running), then
 * serves the local API on a root-only unix socket until SIGTERM/SIGINT. With
 * WARREN_CONTROL_PLANE_URL it also joins the control plane, serves the remote API and
 * converges tenant VMs to desired state. Stopping the agent leaves VMs running; the next
 * agent picks them up.
 */
import { chmod, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { WarrenError } from '@warren/protocol';
import { createLogger, type Logger, setDaemonLogger } from '@warren/telemetry';
import { createApi } from './api/server.ts';
import { loadConfig, socketPathOf } from './config.ts';
import { connectControlPlane } from './control/connect.ts';
import { PRIVATE_DIR_MODE, PRIVATE_FILE_MODE, setAgentUmask } from './fs-modes.ts';
import { lockDownHostDataDir, openHost } from './host.ts';
import { DRIVERS } from './vmm/drivers.ts';

/** JSON lines on stderr (docs/operations.md, "Logs"); defaults until the configuration is read. */
let logger: Logger = createLogger({ name: 'host-agent' });
function log(message: string) {
  logger.info(message);
}

/** Refuses to run a second agent on the same data directory. */
async function takeLock(dataDir: string): Promise<string> {
  const path = join(dataDir, 'host-agent.pid');
  const other = Number((await readFile(path, 'utf8').catch(() => '')).trim());
  if (other > 0 && other !== process.pid) {
    const cmdline = await readFile(`/proc/${other}/cmdline`, 'utf8').catch(() => '');
    if (cmdline.includes('host-agent')) {
      throw new WarrenError('CONFLICT', `another host agent (pid ${other}) runs on ${dataDir}`);
    }
  }
  await writeFile(path, `${process.pid}\n`, { mode: PRIVATE_FILE_MODE });
  return path;
}

export async function runHostAgent(): Promise<void> {
  const config = loadConfig();
  logger = createLogger({ name: 'host-agent', level: config.logLevel, format: config.logFormat });
  setDaemonLogger(logger);
  setAgentUmask();
  // Before the lock file is written; openHost does it again, harmlessly.
  await lockDownHostDataDir(config, DRIVERS[config.vmm].create(config, log));
  const lock = await takeLock(config.dataDir);
  const host = await openHost(config, log, logger);
  const app = createApi(host);
  const socketPath = socketPathOf(config);
  await mkdir(dirname(socketPath), { recursive: true, mode: PRIVATE_DIR_MODE });
  await rm(socketPath, { force: true });
  await app.listen({ path: socketPath });
  await chmod(socketPath, 0o600);
  log(`listening on ${socketPath}`);
  host.vms.on('exit', (id, exit) => log(`VM ${id} exited: ${exit.reason}`));
  const link = config.controlPlaneUrl ? await connectControlPlane(host, log) : undefined;
  const shutdown = async (signal: string) => {
    log(`${signal}: closing the API; VMs keep running`);
    // Not waiting for boots in flight: the next agent re-attaches or restarts them.
    await link?.close({ waitForTasks: false });
    await app.close();
    host.vms.close();
    host.network?.close();
    await rm(lock, { force: true });
    process.exit(0);
  };
  process.once('SIGTERM', () => void shutdown('SIGTERM'));
  process.once('SIGINT', () => void shutdown('SIGINT'));
}

if (import.meta.main) {
  runHostAgent().catch((e) => {
    if (e instanceof WarrenError) logger.fatal({ code: e.code }, `${e.code}: ${e.message}`);
    else logger.fatal({ err: e }, 'start failed');
    process.exit(1);
  });
}
