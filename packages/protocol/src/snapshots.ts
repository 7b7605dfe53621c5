/**
 * Snapshots and safe-YOLO sessions: the shapes the host agent's API, the control plane's API,
 * the SDK and the CLI share.
 *
 * A snapshot is one consistent point of a VM (memory and device state, root disk, data
 * volume); a session is a run between a clean snapshot and a revert to it, with credentials
 * that exist only in a tmpfs in the guest while it lasts.
 */
import { z } from 'zod';
import { ResourceName, TenantId } from './control-api.ts';

/** A snapshot's name: a DNS label, unique per VM (tenant). */
export const SnapshotName = ResourceName;
export type SnapshotName = z.infer<typeof SnapshotName>;

/** How a snapshot's memory is kept, which decides how a revert loads it (docs/architecture.md). */
export const SnapshotMemory = z.enum([
  /** A raw memory file mapped privately at revert, its pages read on demand. */
  'mapped',
  /** A migration stream with the memory inside, read whole at revert. */
  'stream',
]);
export type SnapshotMemory = z.infer<typeof SnapshotMemory>;

export const Snapshot = z.object({
  name: SnapshotName,
  createdAt: z.string(),
  /** The snapshot this one's disks build on (the one the VM was reverted to or made from), if any. */
  parent: SnapshotName.nullable(),
  memory: SnapshotMemory,
  /** Bytes on the host's disk that only this snapshot holds (memory image, device state, disk layers). */
  bytes: z.number().int().min(0),
  /** Milliseconds the guest was paused to take it. */
  pausedMs: z.number().min(0),
});
export type Snapshot = z.infer<typeof Snapshot>;

export const CreateSnapshotRequest = z.strictObject({
  /** Made up (`snap-<time>`) when absent. */
  name: SnapshotName.optional(),
  /**
   * With a name that exists: when the VM has done nothing since it was reverted to (or made)
   * that snapshot, return it as it is; otherwise replace it. Sessions use this for their
   * clean snapshot. Without it an existing name is a CONFLICT.
   */
  reuse: z.boolean().default(false),
});
export type CreateSnapshotRequest = z.input<typeof CreateSnapshotRequest>;

export const CreatedSnapshot = z.object({ snapshot: Snapshot, reused: z.boolean() });
export type CreatedSnapshot = z.infer<typeof CreatedSnapshot>;

export const SnapshotList = z.object({ snapshots: z.array(Snapshot) });
export type SnapshotList = z.infer<typeof SnapshotList>;

export const RevertResult = z.object({
  snapshot: Snapshot,
  /** From the request to a guest agent that answers again, clock and entropy fixed. */
  revertMs: z.number().min(0),
  /**
   * From the request to the guest running again on the snapshot's state (the VMM's part);
   * the rest of `revertMs` is the guest's, which under TCG is mostly code translated anew.
   */
  resumedMs: z.number().min(0).optional(),
});
export type RevertResult = z.infer<typeof RevertResult>;

/** The most a session's credentials may hold, all files and values together. */
export const MAX_CREDENTIAL_BYTES = 1024 * 1024;
/** A credential file's name: one path component, no hidden files. */
export const CredentialName = z
  .string()
  .regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/, 'a credential name is letters, digits, `.`, `_` and `-`');
const EnvName = z
  .string()
  .regex(/^[A-Za-z_][A-Za-z0-9_]{0,127}$/, 'environment names are letters, digits and _');

/**
 * Credentials for a session: files (UTF-8 text, or base64 with a `base64:` prefix) placed in a
 * tmpfs in the guest at CREDENTIALS_DIR, and environment variables added to every command the
 * guest agent starts while they are there. Never written to a disk, a snapshot or a log.
 */
export const Credentials = z
  .strictObject({
    files: z.record(CredentialName, z.string()).default({}),
    env: z
      .record(
        EnvName,
        z.string().refine((s) => !s.includes('\0'), 'must not contain NUL'),
      )
      .default({}),
  })
  .refine(
    (c) =>
      [...Object.entries(c.files), ...Object.entries(c.env)].reduce(
        (n, [k, v]) => n + Buffer.byteLength(k) + Buffer.byteLength(v),
        0,
      ) <= MAX_CREDENTIAL_BYTES,
    `credentials are limited to ${MAX_CREDENTIAL_BYTES} bytes in all`,
  );
export type Credentials = z.input<typeof Credentials>;

/** One file that differs between a snapshot and the VM's disks now. */
export const FileChange = z.object({
  disk: z.enum(['root', 'data']),
  /** The path in the guest (the data volume is mounted at /workspace). */
  path: z.string(),
  change: z.enum(['added', 'modified', 'deleted']),
  type: z.enum(['file', 'directory', 'symlink', 'other']),
});
export type FileChange = z.infer<typeof FileChange>;

export const ChangeList = z.object({
  since: SnapshotName,
  changes: z.array(FileChange),
  /** True when there were more changes than MAX_LISTED_CHANGES; the list is then a prefix. */
  truncated: z.boolean(),
});
export type ChangeList = z.infer<typeof ChangeList>;
export const MAX_LISTED_CHANGES = 10_000;

// ---- Sessions (control plane) ----

export const TenantSessionId = z
  .string()
  .regex(/^ses_[0-9a-f]{16}$/, 'a session id looks like ses_0123456789abcdef');

export const CreateTenantSessionRequest = z.strictObject({
  files: z.record(CredentialName, z.string()).optional(),
  env: z.record(EnvName, z.string()).optional(),
  /** Ended and reverted after this long; the platform maximum (WARREN_SESSION_MAX_MS) when absent. */
  maxDurationMs: z.number().int().positive().optional(),
});
export type CreateTenantSessionRequest = z.input<typeof CreateTenantSessionRequest>;

export const TenantSessionState = z.enum(['active', 'ending', 'ended', 'failed']);
export const TenantSession = z.object({
  id: TenantSessionId,
  tenantId: TenantId,
  /** The clean snapshot the session reverts to. */
  snapshot: SnapshotName,
  state: TenantSessionState,
  createdAt: z.string(),
  expiresAt: z.string(),
  endedAt: z.string().nullable(),
  /** How it ended: reverted to the snapshot, or kept as it was (`keep`); null while active. */
  outcome: z.enum(['reverted', 'kept', 'expired']).nullable(),
  error: z.object({ code: z.string(), message: z.string() }).nullable(),
});
export type TenantSession = z.infer<typeof TenantSession>;

export const EndTenantSessionRequest = z.strictObject({
  /** Keep the VM as the session left it (credentials are still removed) instead of reverting. */
  keep: z.boolean().default(false),
});
export type EndTenantSessionRequest = z.input<typeof EndTenantSessionRequest>;

/** `GET /v1/tenants/{t}/sessions`: the tenant's sessions, newest first (at most 100). */
export const TenantSessionList = z.object({ sessions: z.array(TenantSession) });
export type TenantSessionList = z.infer<typeof TenantSessionList>;
