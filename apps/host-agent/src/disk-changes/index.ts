export { type ChangedFiles, type ChangedFilesOptions, changedFiles } from './changes.ts';
export { type FileDigest, type FileDigestsOptions, fileDigests } from './file-digests.ts';
export { changedFilesIsolated, diskChangesWorkers, fileDigestsIsolated, type WorkerJob } from './isolated.ts';
export { type BlockReader, type DiskChain, openChain } from './qcow2.ts';
