/**
 * The control-plane daemon: validated configuration, store, credentials, API. Prints where
 * the API listens and where the admin token is, then serves until SIGTERM/SIGINT.
 */
import { WarrenError } from '@warren/protocol';
import { loadConfig } from './config.ts';
import { openControlPlane } from './control-plane.ts';

function log(message: string) {
  process.stderr.write(`${new Date().toISOString()} control-plane: ${message}\n`);
}

export async function runControlPlane(): Promise<void> {
  const config = loadConfig();
  const cp = await openControlPlane(config, { log });
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
    log(e instanceof WarrenError ? `${e.code}: ${e.message}` : String(e?.stack ?? e));
    process.exit(1);
  });
}
