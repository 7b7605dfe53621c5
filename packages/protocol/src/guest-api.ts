/**
 * The contract between the host and the in-guest agent. Both sides import these schemas:
 * the guest validates what the host asks, and the host validates everything the guest
 * answers, because code running as root in the guest can forge any reply.
 *
 * Transport: one HTTP/2 session over a byte stream (virtio-serial here, vsock where the
 * host has it). The guest agent is the HTTP/2 server; the host is the client. Every
 * operation is one HTTP/2 stream, so many run at once and each gets its own flow control.
 */
import { z } from 'zod';

export const GUEST_API_VERSION = 1;
/** Where every guest mounts its data volume (the image's init does; the agent reports its disk). */
export const DATA_VOLUME_MOUNT = '/workspace';
/** Where credential files appear in the guest (a tmpfs, readable by root and the workspace user). */
export const CREDENTIALS_DIR = '/run/warren/credentials';
/** Where tenant secrets appear in the guest, one file per secret (a tmpfs, like CREDENTIALS_DIR). */
export const SECRETS_DIR = '/run/warren/secrets';
/** A secret's name: env-var-like, so it is also a valid environment variable and a safe file name. */
export const SECRET_NAME_PATTERN = /^[A-Z_][A-Z0-9_]{0,63}$/;
/** Name of the virtio-serial port the guest agent listens on. */
export const AGENT_PORT_NAME = 'org.warren.agent.0';

export const MAX_PATH_BYTES = 4096;
export const MAX_ARGV = 4096;
export const MAX_ARG_BYTES = 128 * 1024;
/** Upper bound for JSON the host accepts from the guest (stat lists, health, errors). */
export const MAX_GUEST_JSON_BYTES = 4 * 1024 * 1024;
export const MAX_EXEC_TIMEOUT_MS = 24 * 60 * 60 * 1000;

const noNul = (s: string) => !s.includes('\0');

export const GuestPath = z
  .string()
  .min(1)
  .max(MAX_PATH_BYTES)
  .refine((s) => s.startsWith('/'), 'must be an absolute path')
  .refine(noNul, 'must not contain NUL');

export const ExecRequest = z.strictObject({
  argv: z.array(z.string().max(MAX_ARG_BYTES).refine(noNul, 'must not contain NUL')).min(1).max(MAX_ARGV),
  env: z
    .record(
      z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'environment names are letters, digits and _'),
      z.string().max(MAX_ARG_BYTES).refine(noNul, 'must not contain NUL'),
    )
    .optional(),
  cwd: GuestPath.optional(),
  /** A user name or numeric uid in the guest; root when absent. */
  user: z
    .union([
      z.string().regex(/^[a-z_][a-z0-9_-]{0,31}$/),
      z
        .number()
        .int()
        .min(0)
        .max(2 ** 31 - 1),
    ])
    .optional(),
  timeoutMs: z.number().int().positive().max(MAX_EXEC_TIMEOUT_MS).optional(),
  /** When false the command's stdin is /dev/null; when true the request body carries it. */
  stdin: z.boolean().default(false),
  /**
   * When true the tenant's secrets (SECRETS_DIR/<NAME>) are in the command's environment too,
   * as NAME=value (text values only: one with a NUL or not UTF-8 stays a file only); `env`
   * wins over them. Off by default: an environment is inherited by every child process.
   */
  secretEnv: z.boolean().optional(),
});
export type ExecRequest = z.input<typeof ExecRequest>;

export const ExecExit = z.strictObject({
  exitCode: z.number().int().min(0).max(255).nullable(),
  signal: z.string().max(32).nullable(),
  timedOut: z.boolean(),
  durationMs: z.number().nonnegative(),
});
export type ExecExit = z.infer<typeof ExecExit>;

export const FileStat = z.strictObject({
  name: z.string().max(MAX_PATH_BYTES),
  path: GuestPath,
  type: z.enum(['file', 'directory', 'symlink', 'other']),
  size: z.number().int().nonnegative(),
  mode: z.number().int().nonnegative(),
  uid: z.number().int().nonnegative(),
  gid: z.number().int().nonnegative(),
  mtimeMs: z.number(),
});
export type FileStat = z.infer<typeof FileStat>;

export const FileList = z.strictObject({ entries: z.array(FileStat).max(100_000) });
export type FileList = z.infer<typeof FileList>;

export const WriteResult = z.strictObject({
  size: z.number().int().nonnegative(),
  sha256: z.string().regex(/^[0-9a-f]{64}$/),
});
export type WriteResult = z.infer<typeof WriteResult>;

export const MkdirRequest = z.strictObject({
  path: GuestPath,
  parents: z.boolean().default(false),
  mode: z.number().int().min(0).max(0o7777).optional(),
});
export type MkdirRequest = z.input<typeof MkdirRequest>;

export const RemoveRequest = z.strictObject({ path: GuestPath, recursive: z.boolean().default(false) });
export type RemoveRequest = z.input<typeof RemoveRequest>;

export const ShutdownRequest = z.strictObject({ action: z.enum(['poweroff', 'reboot']).default('poweroff') });
export type ShutdownRequest = z.input<typeof ShutdownRequest>;

export const Health = z.strictObject({
  apiVersion: z.number().int(),
  agentVersion: z.string().max(128),
  kernelRelease: z.string().max(256),
  /** When this guest agent process started (ms since the epoch, guest clock): a restart changes it. */
  agentStartedAt: z.number().optional(),
  uptimeSec: z.number().nonnegative(),
  load: z.tuple([z.number(), z.number(), z.number()]),
  memory: z.strictObject({ totalBytes: z.number().nonnegative(), availableBytes: z.number().nonnegative() }),
  disks: z
    .array(
      z.strictObject({
        mount: z.string().max(MAX_PATH_BYTES),
        totalBytes: z.number().nonnegative(),
        freeBytes: z.number().nonnegative(),
      }),
    )
    .max(64),
});
export type Health = z.infer<typeof Health>;

/** Routes of the guest agent (HTTP/2 :path values). */
export const GUEST_ROUTES = {
  health: '/v1/health',
  exec: '/v1/exec',
  fileContent: '/v1/files/content',
  fileStat: '/v1/files/stat',
  fileList: '/v1/files/list',
  mkdir: '/v1/files/mkdir',
  remove: '/v1/files/remove',
  shutdown: '/v1/shutdown',
  restored: '/v1/restored',
  identity: '/v1/identity',
  scrub: '/v1/scrub',
  credentials: '/v1/credentials',
  secrets: '/v1/secrets',
  freeze: '/v1/freeze',
  thaw: '/v1/thaw',
} as const;

/**
 * The longest a guest holds its data volume frozen for a backup's point in time. The host needs
 * well under a second (one QMP transaction); the bound is what a host agent that died mid-freeze
 * costs the tenant at worst.
 */
export const MAX_FREEZE_MS = 60_000;
export const DEFAULT_FREEZE_MS = 10_000;

/**
 * `POST /v1/freeze`: freezes the data volume's filesystem (fsfreeze) so that its disk holds a
 * consistent state, and thaws it by itself after `timeoutMs` whatever the host does.
 */
export const FreezeRequest = z.strictObject({
  timeoutMs: z.number().int().min(1).max(MAX_FREEZE_MS).default(DEFAULT_FREEZE_MS),
});
export type FreezeRequest = z.input<typeof FreezeRequest>;
export const FreezeResult = z.strictObject({
  /** The guest's clock (ms since the epoch) when it thaws unless told before. */
  thawAt: z.number(),
});
export type FreezeResult = z.infer<typeof FreezeResult>;
/** `POST /v1/thaw`: thaws the data volume; `thawed` is false when it was not frozen (idempotent). */
export const ThawResult = z.strictObject({ thawed: z.boolean() });
export type ThawResult = z.infer<typeof ThawResult>;

/**
 * `POST /v1/restored`: the host tells a guest it was just restored from a snapshot, so the
 * guest agent sets the clock (frozen at the snapshot's time) and mixes fresh host entropy
 * into the kernel's pool (a restored pool would repeat what the snapshot's did).
 */
export const RestoredRequest = z.strictObject({
  /** The host's clock, milliseconds since the epoch, when it sent this. */
  unixMs: z.number().int().positive(),
  /** Random bytes from the host, base64. */
  entropy: z.string().max(1024),
});
export type RestoredRequest = z.infer<typeof RestoredRequest>;
export const RestoredResult = z.strictObject({
  /** How far the guest's clock was behind the host's before it was set (ms). */
  behindMs: z.number(),
});
export type RestoredResult = z.infer<typeof RestoredResult>;

/**
 * `POST /v1/identity`: a guest restored from its image's template (a snapshot of one booted VM
 * that every tenant of the image on the host starts from) becomes this tenant's: the clock and
 * entropy fix-up of `/v1/restored` with the kernel's random generator reseeded at once, its own
 * hostname and /etc/machine-id, its NIC's MAC and addresses, and its data volume mounted at
 * /workspace. The host sends it before anything else reaches the guest.
 */
export const IdentityRequest = z.strictObject({
  unixMs: z.number().int().positive(),
  entropy: z.string().max(1024),
  hostname: z.string().regex(/^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/),
  /** 32 lowercase hex digits, as /etc/machine-id holds them. */
  machineId: z.string().regex(/^[0-9a-f]{32}$/),
  /** The data volume's size in bytes: the template's kernel knew another disk's, and must see this one's before mounting. */
  dataBytes: z.number().int().positive(),
  /** The tenant's link, when it has a NIC (the template's NIC came up unconfigured). */
  network: z
    .strictObject({
      mac: z.string().regex(/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/),
      /** `<address>/<prefix>`. */
      address: z.string().regex(/^\d{1,3}(\.\d{1,3}){3}\/\d{1,2}$/),
      gateway: z.string().regex(/^\d{1,3}(\.\d{1,3}){3}$/),
      dns: z.string().regex(/^\d{1,3}(\.\d{1,3}){3}$/),
    })
    .optional(),
});
export type IdentityRequest = z.infer<typeof IdentityRequest>;
export const IdentityResult = z.strictObject({
  behindMs: z.number(),
  /** Whether the kernel's random generator was reseeded (RNDRESEEDCRNG) after the host's bytes were mixed in. */
  reseeded: z.boolean(),
});
export type IdentityResult = z.infer<typeof IdentityResult>;

/** `PUT /v1/credentials`: files (base64) for the credentials tmpfs and environment for new commands. */
export const GuestCredentials = z.strictObject({
  files: z.record(z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/), z.string()),
  env: z.record(z.string().regex(/^[A-Za-z_][A-Za-z0-9_]{0,127}$/), z.string().refine(noNul)),
});
export type GuestCredentials = z.infer<typeof GuestCredentials>;
/**
 * `DELETE /v1/credentials?restart=1`: wipes them; with `restart` the agent process then exits
 * and init starts a fresh one, so no copy is left in the old process's freed memory.
 */
export const WipedCredentials = z.strictObject({ files: z.number().int().min(0), restarting: z.boolean() });
export type WipedCredentials = z.infer<typeof WipedCredentials>;

/**
 * `PUT /v1/secrets`: the tenant's secrets, the complete set (base64 values). The guest writes
 * each to SECRETS_DIR/<name> (replaced in place, atomically) and removes files not named, after
 * overwriting them with zeros. `DELETE /v1/credentials` wipes these too, since a snapshot or
 * a suspend must hold neither.
 */
export const GuestSecrets = z.strictObject({
  files: z.record(z.string().regex(SECRET_NAME_PATTERN), z.string().max(1024 * 1024)),
});
export type GuestSecrets = z.infer<typeof GuestSecrets>;
export const PlacedSecrets = z.strictObject({
  files: z.number().int().min(0),
  removed: z.number().int().min(0),
});
export type PlacedSecrets = z.infer<typeof PlacedSecrets>;
