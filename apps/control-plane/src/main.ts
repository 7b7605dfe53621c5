/**
 * The control-plane daemon: validated configuration, store, credentials, API. Logs where the
 * API listens and where the admin token is (JSON lines on stderr, docs/operations.md "Logs"),
 * then serves until SIGTERM/SIGINT.
 */
import { WarrenError } from '@warren/protocol';
import { createLogger, type Logger, logFunction, setDaemonLogger } from '@warren/telemetry';
import { loadConfig } from './config.ts';
import { openControlPlane } from './control-plane.ts';

/** Until the configuration (WARREN_LOG_LEVEL, WARREN_LOG_FORMAT) is read: defaults. */
let logger: Logger = createLogger({ name: 'control-plane' });

export async function runControlPlane(): Promise<void> {
  const config = loadConfig();
  logger = createLogger({ name: 'control-plane', level: config.logLevel, format: config.logFormat });
  setDaemonLogger(logger);
  const log = logFunction(logger);
  const cp = await openControlPlane(config, { log, logger });
  const url = await cp.listen();
  log(`API on ${url}/v1 (OpenAPI: ${url}/v1/openapi.json)`);
  log(
    `admin token ${cp.credentials.createdAdmin ? 'created' : 'kept'} in ${cp.credentials.adminTokenPath} (root only)`,
  );
  log(`host join token in ${cp.credentials.joinTokenPath}`);
  const shutdown = async (signal: string) => {
    log(`${signal}: closing`);
    await cp.close();
    process.exit(0);
  };
  process.once('SIGTERM', () => void shutdown('SIGTERM'));
  process.once('SIGINT', () => void shutdown('SIGINT'));
}

if (import.meta.main) {
  runControlPlane().catch((e) => {
    if (e instanceof WarrenError) logger.fatal({ code: e.code }, `${e.code}: ${e.message}`);
    else logger.fatal({ err: e }, 'start failed');
    process.exit(1);
  });
}
