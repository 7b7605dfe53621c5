export * from './config.ts';
export { FsObjectStore } from './fs/fs-object-store.ts';
export * from './object-store.ts';
export { S3ObjectStore } from './s3/s3-object-store.ts';

import { WarrenError } from '@warren/protocol';
import { type ObjectStoreConfigInput, objectStoreConfigSchema } from './config.ts';
import { FsObjectStore } from './fs/fs-object-store.ts';
import type { ObjectStore } from './object-store.ts';
import { S3ObjectStore } from './s3/s3-object-store.ts';

/** The backend the configuration names; refuses an invalid one without echoing its values. */
export function createObjectStore(input: ObjectStoreConfigInput): ObjectStore {
  const parsed = objectStoreConfigSchema.safeParse(input);
  if (!parsed.success) {
    const problems = parsed.error.issues.map((i) => `${i.path.join('.') || '(config)'}: ${i.message}`);
    throw new WarrenError('INVALID_ARGUMENT', `object store configuration refused: ${problems.join('; ')}`);
  }
  const config = parsed.data;
  return config.kind === 'fs' ? new FsObjectStore(config) : new S3ObjectStore(config);
}
