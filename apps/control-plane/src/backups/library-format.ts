import { WarrenError } from '@warren/protocol';
import type { BackupFormat } from './format.ts';

/** @warren/backup's reader, verify and GC behind the control plane's seam. */
export function libraryFormat(): BackupFormat {
  const missing = async (): Promise<never> => {
    throw new WarrenError('BACKUPS_UNSUPPORTED', 'this build has no backup reader yet');
  };
  return { readManifest: missing, verify: missing, collectGarbage: missing };
}
