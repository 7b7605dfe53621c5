import type { ObjectStore } from '@warren/object-store';
import type { BackupMetadata, VerifyResult } from '@warren/protocol';

/** What the control plane needs of a backup's manifest. */
export interface ManifestSummary {
  pointInTime: string;
  metadata: BackupMetadata;
  volumes: { name: string; size: number; chunks: number }[];
}

/** A complete backup as GC sees it: its id and the key that opens its manifest. */
export interface LiveBackup {
  id: string;
  tenantKey: Buffer;
}

/**
 * The backup format's operations the control plane runs itself (a host agent runs the rest):
 * reading a manifest to decide what a lost job left, verify, and GC. @warren/backup implements
 * them (library-format.ts); the seam keeps the orchestration readable on its own.
 */
export interface BackupFormat {
  /** The manifest of `id`, or undefined when there is none (the backup was never committed). */
  readManifest(store: ObjectStore, tenantKey: Buffer, id: string): Promise<ManifestSummary | undefined>;
  /** Reads the manifest and every chunk back and checks each. */
  verify(store: ObjectStore, keys: { tenant: Buffer; image?: Buffer }, id: string): Promise<VerifyResult>;
  /** Deletes every chunk no live manifest references and every manifest not live. */
  collectGarbage(store: ObjectStore, live: LiveBackup[]): Promise<{ deletedObjects: number }>;
}
