import { collectGarbage, manifestObjectKey, readManifest, verifyBackup } from '@warren/backup';
import type { BackupFormat } from './format.ts';

/** @warren/backup's reader, verify and GC behind the control plane's seam. */
export function libraryFormat(): BackupFormat {
  return {
    async readManifest(store, tenantKey, id) {
      // Absent is an answer (never committed); a manifest there that does not open is an error.
      if ((await store.head(manifestObjectKey(id))) === undefined) return undefined;
      const m = await readManifest(store, tenantKey, id);
      return {
        pointInTime: m.pointInTime,
        metadata: m.metadata,
        volumes: m.volumes.map((v) => ({ name: v.name, size: v.size, chunks: v.chunks.length })),
      };
    },
    verify: (store, keys, id) => verifyBackup({ store, keys, id }),
    async collectGarbage(store, live) {
      const r = await collectGarbage({ store, live });
      return { deletedObjects: r.chunksDeleted + r.manifestsDeleted };
    },
  };
}
