export { type ChangedFiles, type ChangedFilesOptions, changedFiles } from './changes.ts';
export { type ChangedFilesJob, changedFilesIsolated, diskChangesWorkers } from './isolated.ts';
export { type BlockReader, type DiskChain, openChain } from './qcow2.ts';
