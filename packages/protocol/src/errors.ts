/**
 * The one registry of Warren's error codes. Every error that crosses a process boundary
 * (guest agent -> host, host agent -> control plane, control plane -> SDK/CLI) carries one of these codes; `docs/errors.md`
 * documents each with how to fix it. Codes are stable: add new ones, never rename.
 *
 * `fault` says who has to act: `user` (bad input or request), `platform` (Warren or the
 * machine it runs on), `guest` (the tenant's VM misbehaved or said something invalid).
 */
export type ErrorFault = 'user' | 'platform' | 'guest';

interface ErrorDefinition {
  status: number;
  fault: ErrorFault;
  /** One sentence that tells the reader what to do about it. */
  fix: string;
}

export const ERROR_CODES = {
  INVALID_ARGUMENT: {
    status: 400,
    fault: 'user',
    fix: 'Correct the named field; the message says which value was refused and why.',
  },
  NOT_FOUND: {
    status: 404,
    fault: 'user',
    fix: 'Check the id or path; list the collection to see what exists.',
  },
  CONFLICT: {
    status: 409,
    fault: 'user',
    fix: 'The resource is in a state that does not allow this; read its status and retry after it changes.',
  },
  PAYLOAD_TOO_LARGE: {
    status: 413,
    fault: 'user',
    fix: 'Send less data per request, or stream large files in parts.',
  },
  TIMEOUT: {
    status: 504,
    fault: 'user',
    fix: 'The operation ran past its time limit; raise the timeout or make the work shorter.',
  },
  IMAGE_NOT_FOUND: {
    status: 404,
    fault: 'user',
    fix: 'Run `warren image list` to see the images on this host, or build one with `warren image build`.',
  },
  IMAGE_INTEGRITY: {
    status: 500,
    fault: 'platform',
    fix: 'A file of the image no longer matches its digest: rebuild the image (`warren image build --force`) and investigate who changed the file.',
  },
  IMAGE_BUILD_FAILED: {
    status: 500,
    fault: 'platform',
    fix: 'Read the failed step in the build output; most often a package could not be downloaded or a tool is missing (run `npm test` or `npm start` once to install host packages).',
  },
  SKILL_INTEGRITY: {
    status: 500,
    fault: 'platform',
    fix: "A skill bundle does not match its digest (changed in the object store or in the host agent's cache, or cut in transfer): push the package again from its source (`warren skill push`), remove the named cached file on the host, and investigate who changed it.",
  },
  VM_NOT_FOUND: {
    status: 404,
    fault: 'user',
    fix: 'List VMs with `GET /v1/vms` to see which exist on this host.',
  },
  VM_NOT_RUNNING: { status: 409, fault: 'user', fix: 'Start the VM first.' },
  SNAPSHOTS_UNSUPPORTED: {
    status: 409,
    fault: 'platform',
    fix: "This host's VMM driver cannot snapshot VMs (its capabilities say which it can); run the tenant on a host with WARREN_VMM=qemu.",
  },
  DISK_CHANGES_FAILED: {
    status: 500,
    fault: 'guest',
    fix: "The VM's changed files could not be listed from its disks: the message says why (a filesystem the guest corrupted or made too large to walk in time, or a disk format Warren cannot read); fetch the files you want to keep through the files API instead.",
  },
  VM_BOOT_FAILED: {
    status: 500,
    fault: 'platform',
    fix: "The VM did not come up in time; its console log (named in the message) shows the guest kernel's last words.",
  },
  VM_EXITED: {
    status: 500,
    fault: 'platform',
    fix: 'The VM process ended unexpectedly; the message gives the exit reason and the log to read.',
  },
  HOST_UNSUPPORTED: {
    status: 500,
    fault: 'platform',
    fix: 'This host lacks something the VM needs (the message names it); install it or change the setting.',
  },
  CGROUPS_UNAVAILABLE: {
    status: 500,
    fault: 'platform',
    fix: 'The host agent found no writable cgroup v1 or v2 hierarchy, so VMs would run without CPU, memory and pids limits: mount one (WARREN_CGROUP_ROOT says where, /sys/fs/cgroup by default; inside `ip netns exec` /sys is remounted without it), or set WARREN_CGROUPS=off to run without limits on purpose.',
  },
  GUEST_UNAVAILABLE: {
    status: 503,
    fault: 'guest',
    fix: 'The guest agent does not answer; wait for the VM to finish booting, or restart the VM.',
  },
  GUEST_PROTOCOL: {
    status: 502,
    fault: 'guest',
    fix: 'The guest agent sent something invalid; the guest may be compromised or run an incompatible agent. Restart the VM from a verified image.',
  },
  EXEC_FAILED: {
    status: 400,
    fault: 'user',
    fix: 'The command could not be started in the guest (not found, not executable, bad cwd or user); check argv[0] and cwd.',
  },
  FILE_ERROR: {
    status: 400,
    fault: 'user',
    fix: 'The guest refused the file operation (the message has the errno code, e.g. ENOENT or EISDIR); check the path.',
  },
  UNAUTHENTICATED: {
    status: 401,
    fault: 'user',
    fix: 'Send `Authorization: Bearer <token>` with a valid, unrevoked token (WARREN_TOKEN for the CLI; the admin token file is printed by `warren up`).',
  },
  FORBIDDEN: {
    status: 403,
    fault: 'user',
    fix: 'This route needs another kind of credential (most often the admin token); ask an administrator.',
  },
  QUOTA_EXCEEDED: {
    status: 422,
    fault: 'user',
    fix: 'Ask for less: the message names the limit (tenant quota or platform maximum) and its value.',
  },
  NO_CAPACITY: {
    status: 409,
    fault: 'user',
    fix: 'No healthy, non-draining host has room for these resources; ask for less, free capacity, or add a host.',
  },
  TENANT_NOT_RUNNING: {
    status: 409,
    fault: 'user',
    fix: 'Start the tenant (`warren tenant start NAME`) and wait until its state is running.',
  },
  HOST_UNAVAILABLE: {
    status: 503,
    fault: 'platform',
    fix: "The tenant's host does not answer or has stopped heartbeating; check the host agent on that machine (`warren host list`).",
  },
  OBJECT_STORE_UNAVAILABLE: {
    status: 503,
    fault: 'platform',
    fix: 'The object store (where backups live) failed or refused the request: check that its server is reachable and its endpoint, bucket and credentials are right (for the filesystem backend, that its directory is writable and has space); the message has the reason.',
  },
  BACKUP_CORRUPT: {
    status: 500,
    fault: 'platform',
    fix: 'An object of this backup is missing or does not authenticate (the message names the backup and the object): the object store lost or changed it. Restore from another backup (`warren tenant backups T`), run `warren tenant backup verify` on the others, and check the store.',
  },
  BACKUP_KEY_REJECTED: {
    status: 500,
    fault: 'platform',
    fix: "The key given does not open this backup: the platform master key (WARREN_MASTER_KEY_FILE) is not the one the tenant's key was wrapped with, or the backup belongs to another platform. Put the right master key file back; backups cannot be read without it.",
  },
  SECRET_KEY_REJECTED: {
    status: 500,
    fault: 'platform',
    fix: 'A tenant secret does not open with the platform master key (WARREN_MASTER_KEY_FILE): the key file is not the one the secret was sealed under (a rotation not finished, or the wrong file), or the database row was altered. Put the right master key file back, or finish the rotation (`warren rotate-master-key`, docs/operations.md); set the secret again if its row is damaged.',
  },
  BACKUP_DRILL_FAILED: {
    status: 500,
    fault: 'platform',
    fix: "A restore drill restored this backup into a scratch tenant, but the files there are not what the backup holds (a file's digest in the booted guest differs from the host's reading of the restored volume, or is missing), or the host could not read the restored filesystem: the message names the first file and both digests. Run `warren tenant backup verify` on it, restore another backup, and check the host's disks and the tenant's filesystem.",
  },
  BACKUPS_UNSUPPORTED: {
    status: 409,
    fault: 'platform',
    fix: "This host's VMM driver cannot freeze a running VM's disks (WARREN_VMM=libvirt): stop the tenant and back it up stopped, or run it on a host with WARREN_VMM=qemu.",
  },
  DASHBOARD_UNAVAILABLE: {
    status: 503,
    fault: 'user',
    fix: "The tenant's dashboard cannot be reached: start the tenant (`warren tenant start NAME`) and wait until it is running, and make sure its app listens on the tenant's dashboard port (default 8080) on all interfaces, not only on 127.0.0.1.",
  },
  DUPLICATE_SESSION_COOKIE: {
    status: 400,
    fault: 'user',
    fix: "The request carries more than one dashboard session cookie, which a browser does not do by itself (a page planted one): clear this site's cookies in the browser and open a new login link (`POST /v1/sessions`).",
  },
  HOST_EXISTS: {
    status: 409,
    fault: 'user',
    fix: 'A host of that name has joined already. A new machine needs its own WARREN_HOST_NAME; an agent that lost its credentials re-joins with the token `warren host rejoin NAME` prints.',
  },
  RATE_LIMITED: {
    status: 429,
    fault: 'user',
    fix: 'This credential sent more requests than its rate limit allows; wait the seconds in the Retry-After header, then send fewer requests (WARREN_RATE_LIMIT_PER_SECOND, WARREN_RATE_LIMIT_BURST).',
  },
  TOO_MANY_STREAMS: {
    status: 429,
    fault: 'user',
    fix: 'The tenant has as many exec streams or dashboard connections open as it may (WARREN_TENANT_MAX_EXECS, WARREN_TENANT_MAX_DASHBOARD_STREAMS), or its VM as many exec and file streams as its host agent allows (WARREN_MAX_STREAMS_PER_VM); wait for one to end, or close unused ones.',
  },
  API_UNREACHABLE: {
    status: 503,
    fault: 'platform',
    fix: 'The control plane does not answer at that URL; check --api-url / WARREN_API_URL and that `warren up` (or `npm start`) is running.',
  },
  HOST_AGENT_UNREACHABLE: {
    status: 503,
    fault: 'platform',
    fix: 'No host agent answers on its local socket (WARREN_HOST_AGENT_SOCKET, default <WARREN_DATA_DIR>/host-agent.sock): start it with `warren up` (or `npm start`), and run the command as root, since the socket is root-only.',
  },
  DISK_FULL: {
    status: 507,
    fault: 'platform',
    fix: "The host's data directory (WARREN_DATA_DIR) ran out of space while making or starting the VM; nothing half-made was kept. Free space on that filesystem (old quarantined VMs and snapshots are listed by `warren host show`), then `warren tenant start NAME`.",
  },
  GUEST_UNHEALTHY: {
    status: 503,
    fault: 'guest',
    fix: 'The guest agent stopped answering health checks (a hung kernel, a killed agent, memory exhausted); the host restarts the VM after WARREN_HEALTH_GRACE_MS with backoff. If it keeps happening, read the console log named in the message and give the tenant more memory.',
  },
  HOST_LOST: {
    status: 410,
    fault: 'platform',
    fix: "The tenant's host was removed by an admin, and its VM with it: restore the tenant from its latest backup onto another host (`warren tenant restore NAME BACKUP`), or delete it.",
  },
  INTERNAL: {
    status: 500,
    fault: 'platform',
    fix: 'An unexpected error: report it with the log lines around it.',
  },
} as const satisfies Record<string, ErrorDefinition>;

export type ErrorCode = keyof typeof ERROR_CODES;

export function isErrorCode(value: unknown): value is ErrorCode {
  return typeof value === 'string' && Object.hasOwn(ERROR_CODES, value);
}

/** The JSON shape of an error on every wire Warren speaks. */
export interface ErrorBody {
  error: { code: ErrorCode; message: string; fix: string; details?: Record<string, unknown> };
}

export class WarrenError extends Error {
  readonly code: ErrorCode;
  readonly details: Record<string, unknown> | undefined;

  constructor(
    code: ErrorCode,
    message: string,
    options?: { details?: Record<string, unknown>; cause?: unknown },
  ) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'WarrenError';
    this.code = code;
    this.details = options?.details;
  }

  get status(): number {
    return ERROR_CODES[this.code].status;
  }

  get fault(): ErrorFault {
    return ERROR_CODES[this.code].fault;
  }

  get fix(): string {
    return ERROR_CODES[this.code].fix;
  }

  toBody(): ErrorBody {
    return {
      error: {
        code: this.code,
        message: this.message,
        fix: this.fix,
        ...(this.details ? { details: this.details } : {}),
      },
    };
  }

  /** Rebuilds an error received over a wire; unknown or malformed bodies become `fallback`. */
  static fromBody(body: unknown, fallback: ErrorCode = 'INTERNAL'): WarrenError {
    const e = (body as ErrorBody | undefined)?.error;
    if (e && isErrorCode(e.code) && typeof e.message === 'string') {
      return new WarrenError(e.code, e.message.slice(0, 4096), { details: e.details });
    }
    return new WarrenError(fallback, 'malformed error body');
  }
}
