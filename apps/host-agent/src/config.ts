import { availableParallelism, hostname, totalmem } from 'node:os';
import { DEFAULT_CONCURRENCY } from '@warren/backup';
import { OBJECT_STORE_ENV, objectStoreSettingIssues, objectStoreSettings } from '@warren/object-store/config';
import {
  DEFAULT_FREEZE_MS,
  defaultHostAgentSocket,
  MAX_FREEZE_MS,
  ResourceName,
  Resources,
  WAKE_TIMEOUT_MS,
  WarrenError,
} from '@warren/protocol';
import { LOG_FORMATS, LOG_LEVELS } from '@warren/telemetry';
import { z } from 'zod';
import { addressPlan, formatCidr, parseCidr } from './net/address.ts';
import { parseUpstream } from './net/dns-forwarder.ts';

const MiB = 1024 * 1024;
/** Memory kept for the host itself (kernel, page cache, the agent) out of the default capacity. */
const MEMORY_RESERVE_MIB = 1024;
const RESOURCE_LIMITS = Resources.shape;

/** `host:port` or `[v6]:port`; port 0 lets the kernel pick one (tests). */
const LISTEN = /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/;

/** A comma-separated list from the environment; lists from code (overrides) pass unchanged. */
function commaList(v: unknown): unknown {
  return typeof v === 'string'
    ? v
        .split(',')
        .map((s) => s.trim())
        .filter(Boolean)
    : v;
}

/** A DNS name as an allowlist entry: lowercase, no trailing dot, labels of letters, digits, `-`, `_`. */
const DnsName = z
  .string()
  .transform((s) => s.toLowerCase().replace(/\.$/, ''))
  .pipe(
    z
      .string()
      .max(253)
      .regex(
        /^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*$/,
        'not a DNS name',
      ),
  );

/** The machine's name as a DNS label, which is what the control plane accepts as a host name. */
export function defaultHostName(name = hostname()): string {
  const label = (name.toLowerCase().split('.')[0] ?? '')
    .replace(/[^a-z0-9-]+/g, '-')
    .replace(/-+/g, '-')
    .slice(0, 63)
    .replace(/^-+|-+$/g, '');
  return label || 'host';
}

function defaultMemoryMiB(): number {
  return Math.min(
    RESOURCE_LIMITS.memoryMiB.maxValue ?? Number.MAX_SAFE_INTEGER,
    Math.max(512, Math.floor(totalmem() / MiB) - MEMORY_RESERVE_MIB),
  );
}

/** Defaults of the dashboard proxy's idle limits, also for a remote API built without a config (tests). */
export const PROXY_IDLE_DEFAULTS = { idleMs: 5 * 60_000, wsIdleMs: 10 * 60_000 } as const;

/** WARREN_MAX_STREAMS_PER_VM's default, also for remote APIs made without a configuration (tests). */
export const MAX_STREAMS_PER_VM_DEFAULT = 16;

/**
 * All host-agent settings, validated once at start. Each comes from an environment
 * variable (shown in the comment) and has a default that works on a single machine.
 * docs/configuration.md lists them.
 */
export const HostAgentConfig = z
  .strictObject({
    /** WARREN_DATA_DIR: images, VM state, caches. */
    dataDir: z.string().startsWith('/').default('/var/lib/warren'),
    /** WARREN_IMAGES_DIR: the content-addressed image store; `<dataDir>/images` when unset. */
    imagesDir: z.string().startsWith('/').optional(),
    /** WARREN_ACCEL: `auto` picks KVM only where it can run ordinary guests, else TCG. */
    accel: z.enum(['auto', 'kvm', 'tcg']).default('auto'),
    /**
     * WARREN_VMM: the VMM driver this host runs its VMs with (vmm/drivers.ts lists them); the
     * host reports it in heartbeats. VMs made under one driver are left alone by another.
     */
    vmm: z.enum(['qemu', 'libvirt']).default('qemu'),
    /** WARREN_QEMU: the QEMU system emulator binary. */
    qemuBinary: z.string().default('qemu-system-x86_64'),
    /**
     * WARREN_CGROUPS: `on` limits each VM's CPU, memory and processes with cgroups (v1 or v2,
     * whichever the host runs) and refuses to start without a writable hierarchy; `off` runs VMs
     * without those limits, on purpose. `auto` and `required`, the values of earlier versions,
     * mean `on`: neither may drop the limits silently any more.
     */
    cgroups: z.preprocess(
      (v) => (v === 'auto' || v === 'required' ? 'on' : v),
      z.enum(['on', 'off']).default('on'),
    ),
    /** WARREN_CGROUP_ROOT: where the cgroup hierarchy is mounted (v2: the unified root; v1: the parent of cpu/, memory/, pids/). */
    cgroupRoot: z.string().startsWith('/').default('/sys/fs/cgroup'),
    /** WARREN_BOOT_TIMEOUT_MS: from QEMU start to guest agent ready. TCG boots take seconds. */
    bootTimeoutMs: z.coerce.number().int().positive().default(120_000),
    /**
     * WARREN_IDLE_CHECK_MS: how often running tenant VMs are checked against their idle timeout
     * (the control plane's per-tenant `idleTimeoutMs`); an idle one is suspended.
     */
    idleCheckMs: z.coerce.number().int().min(100).default(5_000),
    /**
     * WARREN_WAKE_TIMEOUT_MS: how long a request (exec, files, dashboard) to a suspended VM
     * waits for its wake before it fails with TIMEOUT.
     */
    wakeTimeoutMs: z.coerce
      .number()
      .int()
      .min(WAKE_TIMEOUT_MS.min)
      .max(WAKE_TIMEOUT_MS.max)
      .default(WAKE_TIMEOUT_MS.default),
    /** WARREN_STOP_TIMEOUT_MS: graceful guest shutdown before the VM is killed. */
    stopTimeoutMs: z.coerce.number().int().positive().default(20_000),
    /** WARREN_TCG_TB_MIB: TCG translation cache per VM (QEMU's default is 1 GiB). */
    tcgTranslationCacheMiB: z.coerce.number().int().min(16).max(4096).default(128),
    /** WARREN_PIDS_MAX: process limit of each VM's QEMU (threads count). */
    pidsMax: z.coerce.number().int().min(16).default(512),
    /**
     * WARREN_VM_IO_MIBPS: disk bandwidth of each VM, reads and writes each, through its cgroup on
     * the disk holding WARREN_DATA_DIR; 0 for none.
     */
    vmIoMiBps: z.coerce.number().int().min(0).default(200),
    /** WARREN_VM_IOPS: disk operations per second of each VM, reads and writes each; 0 for none. */
    vmIops: z.coerce.number().int().min(0).default(10_000),
    /**
     * WARREN_JAIL_UID_BASE: first uid (and gid) of the range each VM's QEMU gets its own uid from.
     * No /etc/passwd entries are needed; the range must not hold any account or subuid range, and
     * agents sharing a machine need ranges that do not overlap.
     */
    jailUidBase: z.coerce
      .number()
      .int()
      .min(1000)
      .max(2 ** 32 - 2)
      .default(600_000),
    /** WARREN_JAIL_UID_COUNT: how many uids that range holds, so how many VMs this host can have at most. */
    jailUidCount: z.coerce
      .number()
      .int()
      .min(1)
      .max(2 ** 31)
      .default(65_536),
    /**
     * WARREN_CONSOLE_LOG_MIB: size at which a VM's console.log is rotated to console.log.1; the two
     * files together never exceed twice this.
     */
    consoleLogMiB: z.coerce.number().int().min(1).max(1024).default(8),
    /**
     * WARREN_MAX_STREAMS_PER_VM: exec and file streams one VM may have open at once through the
     * remote API (the control plane's path); one more is TOO_MANY_STREAMS. Each holds up to one
     * HTTP/2 window (8 MiB) of output in the agent while its reader is slow.
     */
    maxStreamsPerVm: z.coerce.number().int().min(1).max(1024).default(MAX_STREAMS_PER_VM_DEFAULT),
    /** WARREN_HOST_AGENT_SOCKET: the local API's unix socket (root only); `<dataDir>/host-agent.sock` when unset. */
    socketPath: z.string().startsWith('/').optional(),
    /** WARREN_KERNEL_PACKAGE: Debian kernel package (or metapackage) images are built with; the builder's default when unset. */
    kernelPackage: z.string().min(1).max(200).optional(),
    /** WARREN_DEBIAN_MIRROR: mirror standard images are built from; the one in the host's apt sources when unset. */
    debianMirror: z.url({ protocol: /^https?$/, error: 'must be an http(s) URL' }).optional(),
    /**
     * WARREN_CONTROL_PLANE_URL: the control plane this host joins. Unset, the agent runs
     * standalone and only its local API drives VMs.
     */
    controlPlaneUrl: z.url({ protocol: /^https?$/, error: 'must be an http(s) URL' }).optional(),
    /** WARREN_JOIN_TOKEN: admits this host to the control plane; needed only until it has joined. */
    joinToken: z.string().trim().min(1).optional(),
    /** WARREN_JOIN_TOKEN_FILE: file holding the join token, so it stays out of the environment. */
    joinTokenFile: z.string().startsWith('/').optional(),
    /** WARREN_HOST_NAME: the name this host joins under (a DNS label); the machine's hostname by default. */
    hostName: ResourceName.default(() => defaultHostName()),
    /** WARREN_AGENT_LISTEN: where the API for the control plane listens (`host:port`). */
    agentListen: z
      .string()
      .regex(LISTEN, 'must be host:port, e.g. 127.0.0.1:7071 or [::1]:7071')
      .refine((s) => Number(s.slice(s.lastIndexOf(':') + 1)) <= 65535, 'the port must be 0-65535')
      .default('127.0.0.1:7071'),
    /** WARREN_AGENT_ADDRESS: the base URL the control plane uses to reach that API; derived from the listener when unset. */
    agentAddress: z.url({ protocol: /^https?$/, error: 'must be an http(s) URL' }).optional(),
    /** WARREN_HEARTBEAT_MS: how often the agent reports to the control plane and picks up desired state. */
    heartbeatMs: z.coerce.number().int().min(100).max(600_000).default(2000),
    /** WARREN_HEALTH_INTERVAL_MS: how often the guest agent of each running tenant VM is checked. */
    healthIntervalMs: z.coerce.number().int().min(100).max(3_600_000).default(10_000),
    /** WARREN_HEALTH_TIMEOUT_MS: how long one check waits for the guest agent's answer. */
    healthTimeoutMs: z.coerce.number().int().min(100).max(600_000).default(10_000),
    /** WARREN_HEALTH_FAILURES: consecutive failed checks that make a VM `unhealthy`. */
    healthFailures: z.coerce.number().int().min(1).max(1000).default(3),
    /**
     * WARREN_HEALTH_GRACE_MS: how long an unhealthy VM may come back by itself (its guest agent
     * is respawned by the guest's init) before the host restarts it; later restarts back off.
     */
    healthGraceMs: z.coerce.number().int().min(0).max(86_400_000).default(30_000),
    /**
     * WARREN_START_MAX_ATTEMPTS: failed creates or starts of a tenant VM (one desired
     * generation) before the agent gives up and says so; `warren tenant start` tries again.
     */
    startMaxAttempts: z.coerce.number().int().min(1).max(1000).default(5),
    /**
     * WARREN_QUARANTINE_MS: how long a tenant VM the control plane does not list is kept,
     * stopped, before this host destroys it; an admin can adopt it until then.
     */
    quarantineMs: z.coerce
      .number()
      .int()
      .min(0)
      .max(10 * 365 * 86_400_000)
      .default(7 * 86_400_000),
    /** WARREN_CAPACITY_VCPUS: vCPUs the control plane may place on this host. */
    capacityVcpus: z.coerce
      .number()
      .int()
      .min(1)
      .max(RESOURCE_LIMITS.vcpus.maxValue ?? 1024)
      .default(() => Math.min(availableParallelism(), RESOURCE_LIMITS.vcpus.maxValue ?? 1024)),
    /** WARREN_CAPACITY_MEMORY_MIB: guest memory the control plane may place here; total minus 1 GiB by default. */
    capacityMemoryMiB: z.coerce
      .number()
      .int()
      .min(RESOURCE_LIMITS.memoryMiB.minValue ?? 128)
      .max(RESOURCE_LIMITS.memoryMiB.maxValue ?? Number.MAX_SAFE_INTEGER)
      .default(defaultMemoryMiB),
    /**
     * WARREN_CAPACITY_DISK_MIB: data volume space the control plane may place here. When unset it
     * is measured at start (free space of dataDir's filesystem minus 2 GiB), see capacityOf.
     */
    capacityDiskMiB: z.coerce
      .number()
      .int()
      .min(RESOURCE_LIMITS.diskMiB.minValue ?? 16)
      .max(RESOURCE_LIMITS.diskMiB.maxValue ?? Number.MAX_SAFE_INTEGER)
      .optional(),
    /**
     * WARREN_NETWORK: `on` gives tenant VMs a NIC behind the platform's firewall (needs iproute2
     * and nftables); `off` gives them no NIC at all.
     */
    network: z.enum(['on', 'off']).default('on'),
    /**
     * WARREN_TEMPLATE_START: `on` starts a new VM's first boot from its image's template (one VM
     * per image and shape booted once on this host and snapshotted), given its own identity
     * after; `off` boots every VM. Drivers without memory snapshots (libvirt) always boot.
     */
    templateStart: z.enum(['on', 'off']).default('on'),
    /**
     * WARREN_METRICS_TOKEN: the token Prometheus presents to read `/metrics` on the remote API
     * (WARREN_AGENT_LISTEN), at least 32 characters. Unset: `/metrics` is served only on the
     * local socket (root only).
     */
    metricsToken: z.string().min(32).max(512).optional(),
    /** WARREN_LOG_LEVEL: the least severe log level written (trace, debug, info, warn, error, fatal, silent). */
    logLevel: z.enum(LOG_LEVELS).default('info'),
    /** WARREN_LOG_FORMAT: `json` lines, `pretty` text, or `auto` (pretty when stderr is a terminal). */
    logFormat: z.enum(LOG_FORMATS).default('auto'),
    /** WARREN_VM_NETWORK: the private range cut into one /30 per VM; must not collide with the host's networks. */
    vmNetwork: z
      .string()
      .default('10.213.0.0/16')
      .refine((s) => {
        try {
          addressPlan(s);
          return true;
        } catch {
          return false;
        }
      }, 'must be an IPv4 network like 10.213.0.0/16 (prefix /8 to /29, no host bits set)'),
    /** WARREN_VM_DNS_UPSTREAM: resolver the VMs' DNS forwarder relays to; the host's first nameserver when unset. */
    vmDnsUpstream: z
      .string()
      .refine((s) => {
        try {
          parseUpstream(s);
          return true;
        } catch {
          return false;
        }
      }, 'must be an IP address with an optional port, e.g. 192.0.2.53 or [2001:db8::53]:53')
      .optional(),
    /** WARREN_DNS_PORT: where the DNS forwarder listens on the host; VMs reach it as <gateway>:53. */
    dnsPort: z.coerce.number().int().min(1).max(65535).default(10053),
    /**
     * WARREN_VM_DNS_QPS: DNS queries per second each VM may send to the forwarder (UDP and TCP
     * together; a second's worth may come at once). Above it queries are dropped, and the
     * guest's resolver retries.
     */
    vmDnsQueriesPerSecond: z.coerce.number().int().min(1).max(10_000).default(50),
    /** WARREN_VM_DNS_TCP_PER_VM: open DNS-over-TCP connections per VM; more are closed at once. */
    vmDnsTcpPerVm: z.coerce.number().int().min(1).max(256).default(4),
    /** WARREN_VM_DNS_TCP_IDLE_MS: a VM's DNS-over-TCP connection idle this long is closed. */
    vmDnsTcpIdleMs: z.coerce.number().int().min(1000).max(600_000).default(10_000),
    /**
     * WARREN_VM_DNS_ALLOWLIST_NAMES: what VMs with `egress: allowlist` may resolve. `*`: any name;
     * `none`: no DNS at all; otherwise a comma-separated list of names, each admitting itself and
     * the names below it (`example.com` admits `api.example.com`). Other names get REFUSED.
     */
    vmDnsAllowlistNames: z
      .preprocess(
        (v) => (v === '*' ? 'any' : v === 'none' ? [] : commaList(v)),
        z.union([z.literal('any'), z.array(DnsName).max(1024)]),
      )
      .default('any'),
    /**
     * WARREN_VM_BLOCKED_CIDRS: comma-separated IPv4 networks no VM may reach, on top of the
     * built-in ones (private and special ranges, provider service addresses, the host's own
     * networks): for example a provider's service range not listed in ruleset.ts.
     */
    vmBlockedCidrs: z
      .preprocess(
        commaList,
        z
          .array(
            z.string().transform((s, ctx) => {
              try {
                return formatCidr(parseCidr(s));
              } catch {
                ctx.addIssue({ code: 'custom', message: `not an IPv4 network: ${s} (e.g. 192.0.2.0/24)` });
                return z.NEVER;
              }
            }),
          )
          .max(1024),
      )
      .default([]),
    /**
     * WARREN_PROXY_IDLE_MS: the dashboard proxy ends an exchange with a VM when nothing arrives
     * from it for this long, before its answer or in the middle of its body (a stalled or hostile
     * VM would otherwise hold the connection, and the control plane's, forever).
     */
    proxyIdleMs: z.coerce.number().int().min(1000).default(PROXY_IDLE_DEFAULTS.idleMs),
    /** WARREN_PROXY_WS_IDLE_MS: a proxied WebSocket without a byte either way for this long is closed. */
    proxyWsIdleMs: z.coerce.number().int().min(1000).default(PROXY_IDLE_DEFAULTS.wsIdleMs),
    ...objectStoreSettings,
    /**
     * WARREN_BACKUP_FREEZE_TIMEOUT_MS: how long a backup may hold a running guest's data volume
     * frozen (fsfreeze) for its point in time; the guest thaws by itself after it, so it is also
     * the longest a host agent that dies mid-freeze stalls the tenant's writes.
     */
    backupFreezeTimeoutMs: z.coerce.number().int().min(1000).max(MAX_FREEZE_MS).default(DEFAULT_FREEZE_MS),
    /** WARREN_BACKUP_CONCURRENCY: chunks one backup or restore job has in flight (read, sealed, sent) at once; 64 is @warren/backup's bound. */
    backupConcurrency: z.coerce.number().int().min(1).max(64).default(DEFAULT_CONCURRENCY),
  })
  .superRefine((c, ctx) => {
    // Checked here so a bad object store setting stops the agent at start, naming its variable.
    for (const { setting, message } of objectStoreSettingIssues(c))
      ctx.addIssue({ code: 'custom', path: [setting], message });
  });
export type HostAgentConfig = z.infer<typeof HostAgentConfig>;

/** The store these settings name (backups and restores go there). */
export { objectStoreConfigOf } from '@warren/object-store/config';

export const ENV_NAMES: Record<keyof HostAgentConfig, string> = {
  ...OBJECT_STORE_ENV,
  dataDir: 'WARREN_DATA_DIR',
  imagesDir: 'WARREN_IMAGES_DIR',
  accel: 'WARREN_ACCEL',
  qemuBinary: 'WARREN_QEMU',
  cgroups: 'WARREN_CGROUPS',
  cgroupRoot: 'WARREN_CGROUP_ROOT',
  bootTimeoutMs: 'WARREN_BOOT_TIMEOUT_MS',
  stopTimeoutMs: 'WARREN_STOP_TIMEOUT_MS',
  idleCheckMs: 'WARREN_IDLE_CHECK_MS',
  wakeTimeoutMs: 'WARREN_WAKE_TIMEOUT_MS',
  tcgTranslationCacheMiB: 'WARREN_TCG_TB_MIB',
  pidsMax: 'WARREN_PIDS_MAX',
  vmIoMiBps: 'WARREN_VM_IO_MIBPS',
  vmIops: 'WARREN_VM_IOPS',
  jailUidBase: 'WARREN_JAIL_UID_BASE',
  jailUidCount: 'WARREN_JAIL_UID_COUNT',
  consoleLogMiB: 'WARREN_CONSOLE_LOG_MIB',
  maxStreamsPerVm: 'WARREN_MAX_STREAMS_PER_VM',
  socketPath: 'WARREN_HOST_AGENT_SOCKET',
  kernelPackage: 'WARREN_KERNEL_PACKAGE',
  debianMirror: 'WARREN_DEBIAN_MIRROR',
  controlPlaneUrl: 'WARREN_CONTROL_PLANE_URL',
  joinToken: 'WARREN_JOIN_TOKEN',
  joinTokenFile: 'WARREN_JOIN_TOKEN_FILE',
  hostName: 'WARREN_HOST_NAME',
  agentListen: 'WARREN_AGENT_LISTEN',
  agentAddress: 'WARREN_AGENT_ADDRESS',
  heartbeatMs: 'WARREN_HEARTBEAT_MS',
  healthIntervalMs: 'WARREN_HEALTH_INTERVAL_MS',
  healthTimeoutMs: 'WARREN_HEALTH_TIMEOUT_MS',
  healthFailures: 'WARREN_HEALTH_FAILURES',
  healthGraceMs: 'WARREN_HEALTH_GRACE_MS',
  startMaxAttempts: 'WARREN_START_MAX_ATTEMPTS',
  quarantineMs: 'WARREN_QUARANTINE_MS',
  capacityVcpus: 'WARREN_CAPACITY_VCPUS',
  capacityMemoryMiB: 'WARREN_CAPACITY_MEMORY_MIB',
  capacityDiskMiB: 'WARREN_CAPACITY_DISK_MIB',
  network: 'WARREN_NETWORK',
  templateStart: 'WARREN_TEMPLATE_START',
  metricsToken: 'WARREN_METRICS_TOKEN',
  logLevel: 'WARREN_LOG_LEVEL',
  logFormat: 'WARREN_LOG_FORMAT',
  vmm: 'WARREN_VMM',
  vmNetwork: 'WARREN_VM_NETWORK',
  vmDnsUpstream: 'WARREN_VM_DNS_UPSTREAM',
  dnsPort: 'WARREN_DNS_PORT',
  vmDnsQueriesPerSecond: 'WARREN_VM_DNS_QPS',
  vmDnsTcpPerVm: 'WARREN_VM_DNS_TCP_PER_VM',
  vmDnsTcpIdleMs: 'WARREN_VM_DNS_TCP_IDLE_MS',
  vmDnsAllowlistNames: 'WARREN_VM_DNS_ALLOWLIST_NAMES',
  vmBlockedCidrs: 'WARREN_VM_BLOCKED_CIDRS',
  proxyIdleMs: 'WARREN_PROXY_IDLE_MS',
  proxyWsIdleMs: 'WARREN_PROXY_WS_IDLE_MS',
  backupFreezeTimeoutMs: 'WARREN_BACKUP_FREEZE_TIMEOUT_MS',
  backupConcurrency: 'WARREN_BACKUP_CONCURRENCY',
  s3Endpoint: 'WARREN_S3_ENDPOINT',
  s3Region: 'WARREN_S3_REGION',
  s3Bucket: 'WARREN_S3_BUCKET',
  s3AccessKeyId: 'WARREN_S3_ACCESS_KEY_ID',
  s3SecretAccessKey: 'WARREN_S3_SECRET_ACCESS_KEY',
  s3ForcePathStyle: 'WARREN_S3_FORCE_PATH_STYLE',
};

/**
 * Reads the settings from `env` (overrides win) and validates them. A bad value throws
 * INVALID_ARGUMENT naming the environment variable, since that is what the operator set.
 */
export function loadConfig(
  env: NodeJS.ProcessEnv = process.env,
  overrides: Partial<HostAgentConfig> = {},
): HostAgentConfig {
  const raw: Record<string, unknown> = {};
  for (const [key, name] of Object.entries(ENV_NAMES)) {
    if (env[name] !== undefined && env[name] !== '') raw[key] = env[name];
  }
  const r = HostAgentConfig.safeParse({ ...raw, ...overrides });
  if (r.success) return r.data;
  const issue = r.error.issues[0];
  const key = String(issue?.path[0] ?? '');
  // Values are left out of the message: some settings (the join token) are secrets.
  const name = Object.hasOwn(ENV_NAMES, key) ? `${ENV_NAMES[key as keyof HostAgentConfig]} (${key})` : key;
  throw new WarrenError('INVALID_ARGUMENT', `${name || 'config'}: ${issue?.message ?? 'invalid'}`);
}

export function imagesDirOf(config: HostAgentConfig): string {
  return config.imagesDir ?? `${config.dataDir}/images`;
}

export function socketPathOf(config: HostAgentConfig): string {
  return config.socketPath ?? defaultHostAgentSocket(config.dataDir);
}

/** The host and port of WARREN_AGENT_LISTEN, brackets of an IPv6 host removed. */
export function agentListenOf(config: HostAgentConfig): { host: string; port: number } {
  const m = LISTEN.exec(config.agentListen);
  if (!m) throw new Error(`agentListen ${config.agentListen} was not validated`);
  return { host: m[1]!.replace(/^\[|\]$/g, ''), port: Number(m[2]) };
}
