export { chunkId, isZero, openChunk, sealChunk } from './chunk.ts';
export {
  CHUNK_SIZE,
  chunkObjectKey,
  DEFAULT_CONCURRENCY,
  DEFAULT_ZSTD_LEVEL,
  MAX_CHUNK_OBJECT_BYTES,
  MAX_MANIFEST_JSON_BYTES,
  MAX_VOLUME_BYTES,
  manifestObjectKey,
} from './constants.ts';
export {
  type CollectGarbageOptions,
  type CollectGarbageResult,
  collectGarbage,
  type LiveBackup,
} from './gc.ts';
export * from './keys.ts';
export {
  MAX_MANIFEST_OBJECT_BYTES,
  Manifest,
  ManifestVolume,
  openManifest,
  sealManifest,
} from './manifest.ts';
export {
  type RestoreVolumeOptions,
  type RestoreVolumeResult,
  readManifest,
  restoreVolume,
} from './restore.ts';
export { type VerifyBackupOptions, verifyBackup } from './verify.ts';
export {
  type BackupKeyBuffers,
  type VolumeSource,
  type WriteBackupOptions,
  type WriteBackupResult,
  writeBackup,
} from './write.ts';
