/**
 * Backups and restores: the shapes the host agent's API, the control plane's API, the SDK and
 * the CLI share.
 *
 * A backup is one consistent point of a tenant's data volume (and, when asked, its root disk),
 * cut into fixed-size chunks that are encrypted, named by a keyed hash of their content and
 * stored once in the object store, plus an encrypted manifest that lists them. The control plane
 * keeps the catalog (which backups exist, their state) and the keys; a host agent reads or writes
 * the disks and talks to the object store itself, so a volume never passes through the control
 * plane. docs/architecture.md ("Backups") says why it is built this way.
 */
import { z } from 'zod';
import { ErrorSummary, ResourceName, TenantId } from './control-api.ts';

/** `bak_` and 64 random bits in hex. Also the manifest's object name, so it names nothing of the tenant. */
export const BackupId = z.string().regex(/^bak_[0-9a-f]{16}$/, 'a backup id looks like bak_0123456789abcdef');
export type BackupId = z.infer<typeof BackupId>;

/** The disks a backup can hold. `data` always; `root` when asked for. */
export const BackupVolumeName = z.enum(['data', 'root']);
export type BackupVolumeName = z.infer<typeof BackupVolumeName>;

/** 32 bytes, base64: a key handed by the control plane to a host agent for one job, kept in memory only. */
export const WireKey = z.base64().refine((s) => Buffer.from(s, 'base64').length === 32, 'a key is 32 bytes');

/**
 * The keys a job needs. `tenant` opens the tenant's manifests and chunks; `image` is the key of
 * the chunks shared by every tenant made from one image (content of the image's root disk that
 * the tenant never changed), derived from the platform master key and the image's digest.
 */
export const BackupKeys = z.strictObject({
  tenant: WireKey,
  image: WireKey.optional(),
});
export type BackupKeys = z.infer<typeof BackupKeys>;

/** What a host agent reports while a backup or restore runs, and at its end. */
export const BackupProgress = z.object({
  /** Bytes of the volumes the job has to look at (all of them, or only what changed). */
  bytesTotal: z.number().int().min(0),
  bytesDone: z.number().int().min(0),
  /** Bytes sent to (backup) or fetched from (restore) the object store, after compression and encryption. */
  bytesTransferred: z.number().int().min(0),
  chunksNew: z.number().int().min(0),
  chunksReused: z.number().int().min(0),
});
export type BackupProgress = z.infer<typeof BackupProgress>;

export const BackupVolumeSummary = z.object({
  name: BackupVolumeName,
  /** The disk's size as the guest sees it. */
  sizeBytes: z.number().int().min(0),
  /** Chunks that are not all zeros (zeros are not stored). */
  chunks: z.number().int().min(0),
});
export type BackupVolumeSummary = z.infer<typeof BackupVolumeSummary>;

/** The most files a restore drill checks: each costs a read on the host and a `sha256sum` in the guest. */
export const MAX_DRILL_FILES = 200;

/** A regular file of a restored volume as the host read it, by its guest path. */
export const FileDigest = z.object({
  path: z.string().max(4096),
  size: z.number().int().min(0),
  sha256: z.string().regex(/^[0-9a-f]{64}$/),
});
export type FileDigest = z.infer<typeof FileDigest>;

/**
 * The files a restore read back from the data volume it wrote, before the VM started, with the
 * host's own ext4 reader (not the guest kernel's); `error` says why there are fewer than asked
 * (the filesystem could not be read).
 */
export const FileSample = z.object({
  files: z.array(FileDigest).max(MAX_DRILL_FILES),
  error: z.string().max(2000).optional(),
});
export type FileSample = z.infer<typeof FileSample>;

/** What a finished backup job hands back; the manifest in the object store says the same, signed. */
export const BackupResult = z.object({
  /** When the point in time was taken (the moment the disks were frozen). */
  pointInTime: z.string(),
  volumes: z.array(BackupVolumeSummary),
  /** Bytes this backup added to the object store (new chunks and its manifest). */
  storedBytes: z.number().int().min(0),
  /** Whether only changed data was read (`incremental`) or every chunk (`full`), and why. */
  mode: z.enum(['full', 'incremental']),
  reason: z.string().optional(),
  durationMs: z.number().min(0),
  /** A restore asked for `sampleFiles`: the digests of those files. */
  sample: FileSample.optional(),
});
export type BackupResult = z.infer<typeof BackupResult>;

/** A host agent's backup, restore or verify job, polled by the control plane until it ends. */
export const BackupJob = z.object({
  id: BackupId,
  kind: z.enum(['backup', 'restore']),
  state: z.enum(['running', 'succeeded', 'failed']),
  progress: BackupProgress,
  result: BackupResult.nullable(),
  error: ErrorSummary.nullable(),
});
export type BackupJob = z.infer<typeof BackupJob>;

/**
 * Tenant metadata a restore needs and the manifest carries (encrypted with the rest), so that a
 * backup can become a new tenant on any host even if the original tenant is gone.
 */
export const BackupMetadata = z.object({
  tenantId: TenantId,
  tenantName: ResourceName,
  imageId: z.string(),
  resources: z.record(z.string(), z.unknown()),
  network: z.record(z.string(), z.unknown()).nullable(),
});
export type BackupMetadata = z.infer<typeof BackupMetadata>;

/** `POST /v1/vms/{id}/backups` on a host agent: start a backup job with this id. */
export const HostBackupRequest = z.strictObject({
  id: BackupId,
  keys: BackupKeys,
  includeRoot: z.boolean().default(false),
  metadata: BackupMetadata,
  /**
   * The tenant's latest complete backup, if any. The host reads only what changed since it when
   * it still knows that point (it took it and the disks have not been reverted past it); else it
   * reads everything and uploads only chunks that backup does not already hold.
   */
  previous: BackupId.optional(),
});
export type HostBackupRequest = z.input<typeof HostBackupRequest>;

/** `POST /v1/vms/{id}/restore` on a host agent: replace the VM's data volume (and root disk if the backup has one) with a backup's. */
export const HostRestoreRequest = z.strictObject({
  /** The job's id: the restore operation's, so a control plane that restarts can find it again. */
  job: BackupId,
  backup: BackupId,
  keys: BackupKeys,
  /** Start the VM afterwards if it was running before (the default) or always. */
  start: z.enum(['as-before', 'always']).default('as-before'),
  /**
   * After writing the data volume and before starting the VM, read back up to this many of its
   * regular files and answer their digests in the job's result (`sample`): a restore drill's
   * check.
   */
  sampleFiles: z.number().int().min(1).max(MAX_DRILL_FILES).optional(),
});
export type HostRestoreRequest = z.input<typeof HostRestoreRequest>;

// ---- Control plane ----

export const BackupState = z.enum(['running', 'complete', 'failed']);
export const BackupTrigger = z.enum(['manual', 'scheduled']);

/**
 * The last restore drill of a backup: restored into a scratch tenant, booted, and a sample of its
 * files' digests in the guest compared with the host's reading of the restored volume.
 */
export const BackupDrill = z.object({
  state: z.enum(['running', 'passed', 'failed']),
  /** When it started. */
  at: z.string(),
  /** Files whose digests the guest and the host agreed on (all sampled ones when passed). */
  filesChecked: z.number().int().min(0),
  /** Why it failed; null otherwise. */
  error: ErrorSummary.nullable(),
});
export type BackupDrill = z.infer<typeof BackupDrill>;

export const Backup = z.object({
  id: BackupId,
  tenantId: TenantId,
  tenantName: ResourceName,
  state: BackupState,
  trigger: BackupTrigger,
  includeRoot: z.boolean(),
  createdAt: z.string(),
  completedAt: z.string().nullable(),
  /** When the disks were frozen; null until the backup is complete. */
  pointInTime: z.string().nullable(),
  /** The data volume's size (and the root disk's, if included) as the guest sees them. */
  sizeBytes: z.number().int().min(0),
  /** Bytes this backup added to the object store. */
  storedBytes: z.number().int().min(0),
  mode: z.enum(['full', 'incremental']).nullable(),
  progress: BackupProgress.nullable(),
  error: ErrorSummary.nullable(),
  /** The last restore drill of this backup; absent when it never had one. */
  drill: BackupDrill.optional(),
});
export type Backup = z.infer<typeof Backup>;

export const CreateBackupRequest = z.strictObject({
  includeRoot: z.boolean().default(false),
});
export type CreateBackupRequest = z.input<typeof CreateBackupRequest>;

/** `GET /v1/tenants/{t}/backups`: complete backups (and running ones), newest first. */
export const BackupList = z.object({ backups: z.array(Backup) });
export type BackupList = z.infer<typeof BackupList>;

export const RestoreBackupRequest = z.strictObject({
  /** Restore into a new tenant of this name (a clone) instead of replacing this tenant's volumes. */
  newTenant: ResourceName.optional(),
});
export type RestoreBackupRequest = z.input<typeof RestoreBackupRequest>;

export const VerifyResult = z.object({
  backup: BackupId,
  ok: z.boolean(),
  chunks: z.number().int().min(0),
  bytes: z.number().int().min(0),
  /** The first objects that failed, each with what was wrong; empty when `ok`. */
  problems: z.array(z.object({ object: z.string(), problem: z.string() })),
});
export type VerifyResult = z.infer<typeof VerifyResult>;

/**
 * A tenant's backup schedule and retention: a backup every `everyMinutes` (null: none), and of
 * the complete ones, the newest `keepLast`, plus the newest of each of the last `keepHourly`
 * hours, `keepDaily` days and `keepWeekly` weeks (restic's `forget --keep-*` rules).
 */
export const BackupPolicy = z.strictObject({
  everyMinutes: z.number().int().min(1).max(525_600).nullable().default(null),
  keepLast: z.number().int().min(1).max(1000).default(1),
  keepHourly: z.number().int().min(0).max(1000).default(24),
  keepDaily: z.number().int().min(0).max(1000).default(7),
  keepWeekly: z.number().int().min(0).max(1000).default(4),
});
export type BackupPolicy = z.infer<typeof BackupPolicy>;
