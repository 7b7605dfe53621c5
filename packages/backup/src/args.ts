/**
 * Checks of what callers pass in, made before any object is read or written, so that a bad
 * argument fails at once rather than after a volume's worth of uploads.
 */
import { BackupId, WarrenError } from '@warren/protocol';

/** Backup ids name objects (`manifests/<id>`): only the `bak_` form is ever accepted. */
export function assertBackupId(id: unknown): asserts id is string {
  if (!BackupId.safeParse(id).success)
    throw new WarrenError(
      'INVALID_ARGUMENT',
      `${JSON.stringify(String(id).slice(0, 40))} is no backup id (bak_<16 hex>)`,
    );
}

/** Concurrency bounds memory (about this many chunks at once), so it is bounded too. */
export function concurrencyOf(value: number | undefined, fallback: number): number {
  const n = value ?? fallback;
  if (!Number.isSafeInteger(n) || n < 1 || n > 64)
    throw new WarrenError('INVALID_ARGUMENT', `concurrency ${n} is not 1-64`);
  return n;
}
