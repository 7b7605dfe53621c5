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

/**
 * The daemons' object store settings (environment variables), defined once: the control plane
 * (verify, GC) and every host agent (backups, restores) read the same names with the same
 * defaults, so both daemons of one machine open one store. Each daemon spreads these fields
 * into its own validated configuration and `OBJECT_STORE_ENV` into its variable names.
 */
export const objectStoreSettings = {
  /** WARREN_OBJECT_STORE: where backups are: `fs` (a directory) or `s3` (an S3-protocol bucket). */
  objectStore: z.enum(['fs', 's3']).default('fs'),
  /** WARREN_OBJECT_STORE_DIR: the `fs` store's directory; `<dataDir>/objects` when unset. */
  objectStoreDir: z.string().startsWith('/').optional(),
  /** WARREN_S3_*: the `s3` store; their limits and defaults are the schema's above. */
  s3Endpoint: z.string().optional(),
  s3Region: z.string().optional(),
  s3Bucket: z.string().optional(),
  s3AccessKeyId: z.string().optional(),
  /** A secret: never logged, and left out of error messages like every value. */
  s3SecretAccessKey: z.string().optional(),
  s3ForcePathStyle: z.enum(['on', 'off']).optional(),
};
export type ObjectStoreSettings = z.output<z.ZodObject<typeof objectStoreSettings>>;

export const OBJECT_STORE_ENV: Record<keyof ObjectStoreSettings, string> = {
  objectStore: 'WARREN_OBJECT_STORE',
  objectStoreDir: 'WARREN_OBJECT_STORE_DIR',
  s3Endpoint: 'WARREN_S3_ENDPOINT',
  s3Region: 'WARREN_S3_REGION',
  s3Bucket: 'WARREN_S3_BUCKET',
  s3AccessKeyId: 'WARREN_S3_ACCESS_KEY_ID',
  s3SecretAccessKey: 'WARREN_S3_SECRET_ACCESS_KEY',
  s3ForcePathStyle: 'WARREN_S3_FORCE_PATH_STYLE',
};

/** The configuration for `createObjectStore` that these settings name. */
export function objectStoreConfigOf(
  settings: ObjectStoreSettings & { dataDir: string },
): ObjectStoreConfigInput {
  if (settings.objectStore === 'fs')
    return { kind: 'fs', root: settings.objectStoreDir ?? `${settings.dataDir}/objects` };
  return {
    kind: 's3',
    ...(settings.s3Endpoint === undefined ? {} : { endpoint: settings.s3Endpoint }),
    ...(settings.s3Region === undefined ? {} : { region: settings.s3Region }),
    bucket: settings.s3Bucket ?? '',
    accessKeyId: settings.s3AccessKeyId ?? '',
    secretAccessKey: settings.s3SecretAccessKey ?? '',
    ...(settings.s3ForcePathStyle === undefined
      ? {}
      : { forcePathStyle: settings.s3ForcePathStyle === 'on' }),
  };
}

/** The setting each field of the store's configuration comes from, so an error names its variable. */
const SETTING_OF_FIELD: Record<string, keyof ObjectStoreSettings> = {
  root: 'objectStoreDir',
  endpoint: 's3Endpoint',
  region: 's3Region',
  bucket: 's3Bucket',
  accessKeyId: 's3AccessKeyId',
  secretAccessKey: 's3SecretAccessKey',
  forcePathStyle: 's3ForcePathStyle',
};

/** What is wrong with these settings, each issue on the setting that caused it; empty when they name a valid store. */
export function objectStoreSettingIssues(
  settings: ObjectStoreSettings & { dataDir: string },
): { setting: keyof ObjectStoreSettings; message: string }[] {
  const r = objectStoreConfigSchema.safeParse(objectStoreConfigOf(settings));
  return (r.error?.issues ?? []).map((issue) => ({
    setting: SETTING_OF_FIELD[String(issue.path[0])] ?? 'objectStore',
    message: issue.message,
  }));
}
