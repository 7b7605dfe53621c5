import { isAbsolute } from 'node:path';
import { z } from 'zod';

/** The S3 protocol's smallest part (all but the last); lib-storage refuses less. */
export const MIN_PART_SIZE_BYTES = 5 * 1024 * 1024;

export const fsObjectStoreConfigSchema = z.strictObject({
  kind: z.literal('fs'),
  /** The embedded default is `<dataDir>/objects`; created 0700 when missing. */
  root: z.string().refine(isAbsolute, 'must be an absolute path'),
});

export const s3ObjectStoreConfigSchema = z.strictObject({
  kind: z.literal('s3'),
  /** Omitted for AWS itself; MinIO, GCS (interoperability API, HMAC keys) and others name theirs. */
  endpoint: z.url({ protocol: /^https?$/ }).optional(),
  region: z.string().min(1).default('us-east-1'),
  bucket: z.string().min(3).max(63),
  accessKeyId: z.string().min(1),
  /** Never logged: nothing in this package prints the config. */
  secretAccessKey: z.string().min(1),
  /** Bucket in the path instead of the host name; MinIO and most self-hosted servers need it. */
  forcePathStyle: z.boolean().default(false),
  /** Attempts per request, with the SDK's exponential backoff and jitter between them. */
  maxAttempts: z.number().int().min(1).max(20).default(5),
  /** Bodies larger than this go up as a multipart upload in parts of this size. */
  partSizeBytes: z
    .number()
    .int()
    .min(MIN_PART_SIZE_BYTES)
    .default(16 * 1024 * 1024),
  /** Parts in flight at once; memory held by one upload is at most partSizeBytes x this. */
  queueSize: z.number().int().min(1).max(16).default(4),
  /** Keys per list request (S3 returns at most 1000). */
  listPageSize: z.number().int().min(1).max(1000).default(1000),
});

export const objectStoreConfigSchema = z.discriminatedUnion('kind', [
  fsObjectStoreConfigSchema,
  s3ObjectStoreConfigSchema,
]);

export type ObjectStoreConfigInput = z.input<typeof objectStoreConfigSchema>;
export type ObjectStoreConfig = z.output<typeof objectStoreConfigSchema>;
export type FsObjectStoreConfig = z.output<typeof fsObjectStoreConfigSchema>;
export type S3ObjectStoreConfig = z.output<typeof s3ObjectStoreConfigSchema>;
