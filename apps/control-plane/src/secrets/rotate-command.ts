/**
 * `warren rotate-master-key --new-key-file PATH` (apps/platform runs it): rewraps every key the
 * master key wraps (rotate.ts) from WARREN_MASTER_KEY_FILE's key to the key in PATH (made there,
 * 0600, when the file is absent), in one transaction. The control plane must be stopped: a
 * running one holds the old key in memory and would go on wrapping with it. The key files are
 * not moved: the operator points WARREN_MASTER_KEY_FILE at the new one (docs/operations.md).
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { keyFingerprint } from '@warren/backup';
import { WarrenError } from '@warren/protocol';
import { loadMasterKey } from '../backups/master-key.ts';
import { type ControlPlaneConfig, masterKeyFileOf, stateDirOf } from '../config.ts';
import { dialectFromConfig, openStore } from '../store/index.ts';
import { type RotationResult, rotateMasterKey } from './rotate.ts';

export async function rotateMasterKeyFiles(
  config: ControlPlaneConfig,
  newKeyFile: string,
  log: (m: string) => void = () => {},
): Promise<RotationResult> {
  await refuseIfRunning(config);
  const oldFile = masterKeyFileOf(config);
  if (newKeyFile === oldFile)
    throw new WarrenError(
      'INVALID_ARGUMENT',
      `--new-key-file is WARREN_MASTER_KEY_FILE (${oldFile}); name a new file, which is made when absent`,
    );
  const oldKey = await loadMasterKey(oldFile, log);
  const newKey = await loadMasterKey(newKeyFile, log);
  const store = await openStore(dialectFromConfig(config));
  try {
    const result = await rotateMasterKey(store.db, oldKey, newKey);
    log(
      `rewrapped ${result.backupKeys} backup key(s) and ${result.secretKeys} secret key(s) from master key ${keyFingerprint(oldKey)} to ${keyFingerprint(newKey)}; now set WARREN_MASTER_KEY_FILE=${newKeyFile} (or move it over ${oldFile}) and start the control plane`,
    );
    return result;
  } finally {
    oldKey.fill(0);
    newKey.fill(0);
    await store.close();
  }
}

/** A control plane that answers at the address in its api.json is running: refused. */
async function refuseIfRunning(config: ControlPlaneConfig): Promise<void> {
  const text = await readFile(join(stateDirOf(config), 'api.json'), 'utf8').catch(() => undefined);
  const url = text ? (JSON.parse(text) as { url?: string }).url : undefined;
  if (!url) return;
  const answered = await fetch(`${url}/v1/health`, { signal: AbortSignal.timeout(2_000) }).then(
    (r) => r.ok,
    () => false,
  );
  if (answered)
    throw new WarrenError(
      'CONFLICT',
      `the control plane answers at ${url}: stop it first (it holds the old master key and would go on wrapping keys with it), then rotate`,
    );
}
