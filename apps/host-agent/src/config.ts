import { parseOrThrow } from '@warren/protocol';
import { z } from 'zod';

/**
 * All host-agent settings, validated once at start. Each comes from an environment
 * variable (shown in the comment) and has a default that works on a single machine.
 * docs/configuration.md lists them.
 */
export const HostAgentConfig = z.strictObject({
  /** WARREN_DATA_DIR: images, VM state, caches. */
  dataDir: z.string().startsWith('/').default('/var/lib/warren'),
  /** WARREN_IMAGES_DIR: the content-addressed image store; `<dataDir>/images` when unset. */
  imagesDir: z.string().startsWith('/').optional(),
  /** WARREN_ACCEL: `auto` picks KVM only where it can run ordinary guests, else TCG. */
  accel: z.enum(['auto', 'kvm', 'tcg']).default('auto'),
  /** WARREN_QEMU: the QEMU system emulator binary. */
  qemuBinary: z.string().default('qemu-system-x86_64'),
  /** WARREN_CGROUPS: `auto` uses cgroups (v1 or v2) when writable, `required` fails without. */
  cgroups: z.enum(['auto', 'required', 'off']).default('auto'),
  /** WARREN_BOOT_TIMEOUT_MS: from QEMU start to guest agent ready. TCG boots take seconds. */
  bootTimeoutMs: z.coerce.number().int().positive().default(120_000),
  /** WARREN_STOP_TIMEOUT_MS: graceful guest shutdown before the VM is killed. */
  stopTimeoutMs: z.coerce.number().int().positive().default(20_000),
  /** WARREN_TCG_TB_MIB: TCG translation cache per VM (QEMU's default is 1 GiB). */
  tcgTranslationCacheMiB: z.coerce.number().int().min(16).max(4096).default(128),
  /** WARREN_PIDS_MAX: process limit of each VM's QEMU (threads count). */
  pidsMax: z.coerce.number().int().min(16).default(512),
  /** WARREN_HOST_AGENT_SOCKET: the local API's unix socket (root only). */
  socketPath: z.string().optional(),
});
export type HostAgentConfig = z.infer<typeof HostAgentConfig>;

const ENV_NAMES: Record<keyof HostAgentConfig, string> = {
  dataDir: 'WARREN_DATA_DIR',
  imagesDir: 'WARREN_IMAGES_DIR',
  accel: 'WARREN_ACCEL',
  qemuBinary: 'WARREN_QEMU',
  cgroups: 'WARREN_CGROUPS',
  bootTimeoutMs: 'WARREN_BOOT_TIMEOUT_MS',
  stopTimeoutMs: 'WARREN_STOP_TIMEOUT_MS',
  tcgTranslationCacheMiB: 'WARREN_TCG_TB_MIB',
  pidsMax: 'WARREN_PIDS_MAX',
  socketPath: 'WARREN_HOST_AGENT_SOCKET',
};

export function loadConfig(env: NodeJS.ProcessEnv = process.env, overrides: Partial<HostAgentConfig> = {}) {
  const raw: Record<string, unknown> = {};
  for (const [key, name] of Object.entries(ENV_NAMES)) {
    if (env[name] !== undefined && env[name] !== '') raw[key] = env[name];
  }
  return parseOrThrow(HostAgentConfig, { ...raw, ...overrides });
}

export function imagesDirOf(config: HostAgentConfig): string {
  return config.imagesDir ?? `${config.dataDir}/images`;
}

export function socketPathOf(config: HostAgentConfig): string {
  return config.socketPath ?? `${config.dataDir}/host-agent.sock`;
}
