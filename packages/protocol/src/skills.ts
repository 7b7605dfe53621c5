/**
 * Shared skill packages and configuration templates (issue 14): the wire shapes, and every limit
 * of a skill bundle, defined once here for the CLI that packs, the control plane that accepts
 * and the host agent that unpacks.
 *
 * A skill package is a directory holding one or more skill folders in OpenClaw's (AgentSkills)
 * format, each a folder with a `SKILL.md`. It travels as a bundle: a deterministic ustar
 * archive (`@warren/images/skill-bundle`) named by its sha256 digest.
 */
import { z } from 'zod';

/** Where the guest mounts each attached package, read-only: `/opt/warren/skills/<package>/`. */
export const SKILLS_MOUNT_DIR = '/opt/warren/skills';
/** Where rendered configuration files land in the guest: `/run/warren/config/<file>` (a tmpfs). */
export const CONFIG_DIR = '/run/warren/config';
/** The configuration file that gets the skill mount paths as `skills.load.extraDirs`. */
export const OPENCLAW_CONFIG_FILE = 'openclaw.json';

/** Limits of one bundle; the control plane and the host agent both check them. */
export const SKILL_BUNDLE_LIMITS = {
  /** The whole archive. */
  maxBytes: 64 * 1024 * 1024,
  /** Entries (files and directories). */
  maxEntries: 10_000,
  /** One path inside the package (ustar's name + prefix fields hold at most 255). */
  maxPathBytes: 255,
  /** Skill folders in one package. */
  maxSkills: 256,
} as const;
/** Packages one tenant may have attached (each is a disk of its VM). */
export const MAX_TENANT_SKILLS = 8;
/** One rendered configuration file, and one template. */
export const MAX_CONFIG_FILE_BYTES = 256 * 1024;

/** A package name: also its mount directory in the guest. */
export const SkillName = z
  .string()
  .regex(
    /^[a-z0-9][a-z0-9-]{0,62}$/,
    'a skill package name is 1-63 of a-z, 0-9 and -, starting with a letter or digit',
  );
/** A version starts with a digit (`1.2.0`, `2026.12.1-rc1`); that is what tells it from a channel. */
export const SkillVersion = z
  .string()
  .regex(/^[0-9][0-9A-Za-z.+-]{0,63}$/, 'a version starts with a digit: 1.2.0, 2026.12.1-rc1');
/** A channel starts with a letter (`stable`, `beta`). */
export const SkillChannelName = z
  .string()
  .regex(/^[a-z][a-z0-9-]{0,31}$/, 'a channel name is 1-32 of a-z, 0-9 and -, starting with a letter');
export const SkillDigest = z.string().regex(/^sha256:[0-9a-f]{64}$/, 'a digest looks like sha256:<64 hex>');

/** `name@version` or `name@channel`, as a tenant references a package. */
export const SkillRef = z
  .string()
  .max(200)
  .refine((s) => parseSkillRef(s) !== undefined, 'a skill reference is name@version or name@channel');

export type ParsedSkillRef =
  | { name: string; version: string; channel?: undefined }
  | { name: string; channel: string; version?: undefined };

export function parseSkillRef(ref: string): ParsedSkillRef | undefined {
  const at = ref.indexOf('@');
  if (at < 0) return undefined;
  const name = ref.slice(0, at);
  const target = ref.slice(at + 1);
  if (!SkillName.safeParse(name).success) return undefined;
  if (SkillVersion.safeParse(target).success) return { name, version: target };
  if (SkillChannelName.safeParse(target).success) return { name, channel: target };
  return undefined;
}

export const SkillPackage = z.object({
  name: SkillName,
  version: SkillVersion,
  digest: SkillDigest,
  sizeBytes: z.number().int(),
  /** The skill folders in it. */
  skills: z.array(z.string()),
  createdAt: z.string(),
});
export type SkillPackage = z.infer<typeof SkillPackage>;

export const PushSkillQuery = z.strictObject({ name: SkillName, version: SkillVersion });
export const PushSkillResponse = z.object({
  package: SkillPackage,
  /** False when this exact name, version and content was pushed before (nothing changed). */
  created: z.boolean(),
});

/** When tenants get a changed channel: at their VM's next start, or at once (a restart of the VM). */
export const ChannelApply = z.enum(['next-start', 'now']);

export const SkillChannel = z.object({
  name: SkillName,
  channel: SkillChannelName,
  /** The version being rolled out (or rolled out). */
  version: SkillVersion,
  /** What tenants outside the rollout keep; null once the rollout reached 100%. */
  previousVersion: SkillVersion.nullable(),
  /** Percentage of tenants on `version`; the rest are on `previousVersion`. */
  rolloutPercent: z.number().int().min(0).max(100),
  /** Grows each time `version` changes; part of the rollout hash. */
  generation: z.number().int(),
  apply: ChannelApply,
  updatedAt: z.string(),
});
export type SkillChannel = z.infer<typeof SkillChannel>;

export const SetChannelRequest = z.strictObject({
  version: SkillVersion,
  /** 0-100; 100 (everyone) when absent. */
  rolloutPercent: z.number().int().min(0).max(100).optional(),
  /** Unchanged (or `next-start` for a new channel) when absent. */
  apply: ChannelApply.optional(),
});
export type SetChannelRequest = z.input<typeof SetChannelRequest>;

export const SkillList = z.object({ packages: z.array(SkillPackage), channels: z.array(SkillChannel) });
export type SkillList = z.infer<typeof SkillList>;

/** A configuration file name in `/run/warren/config/` (no directories). */
export const ConfigFileName = z
  .string()
  .regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/, 'a configuration file name is 1-64 of A-Z a-z 0-9 . _ -, no /');

/** A JSON object (templates and tenant values are objects, deep-merged). */
export const ConfigObject = z.record(z.string(), z.unknown());

export const SetConfigTemplateRequest = z.strictObject({ template: ConfigObject });
export const ConfigTemplate = z.object({
  file: ConfigFileName,
  version: z.number().int(),
  template: ConfigObject,
  createdAt: z.string(),
});
export type ConfigTemplate = z.infer<typeof ConfigTemplate>;

/** A tenant's own values per configuration file; null removes the file's values. */
export const TenantConfigValues = z.record(ConfigFileName, ConfigObject.nullable());

/** What versions a tenant runs: `warren tenant show`, and across tenants for drift. */
export const TenantVersions = z.object({
  tenantId: z.string(),
  name: z.string(),
  image: z.string(),
  skills: z.array(
    z.object({
      ref: z.string(),
      name: SkillName,
      /** Null when the reference does not resolve (a package or channel removed). */
      version: SkillVersion.nullable(),
      digest: SkillDigest.nullable(),
    }),
  ),
  config: z.object({
    /** The digest of every rendered file (`sha256:` + 12 hex); null when there are none. */
    digest: z.string().nullable(),
    templates: z.array(z.object({ file: ConfigFileName, version: z.number().int() })),
    /** Grows with every change of the tenant's own values. */
    valuesVersion: z.number().int(),
  }),
});
export type TenantVersions = z.infer<typeof TenantVersions>;

/** One package the host attaches to a tenant's VM (DesiredTenant.skills). */
export const DesiredSkill = z.object({
  name: SkillName,
  version: SkillVersion,
  digest: SkillDigest,
  sizeBytes: z.number().int().min(0).max(SKILL_BUNDLE_LIMITS.maxBytes),
  /** The tenant references it through a channel set to `apply: now`: a change restarts the VM. */
  applyNow: z.boolean().default(false),
});
export type DesiredSkill = z.infer<typeof DesiredSkill>;

/** The tenant's rendered configuration files (DesiredTenant.config). */
export const DesiredConfig = z.object({
  /** Changes whenever any file's content does. */
  version: z.string().max(100),
  files: z.array(z.object({ name: ConfigFileName, content: z.string().max(MAX_CONFIG_FILE_BYTES) })).max(32),
});
export type DesiredConfig = z.infer<typeof DesiredConfig>;
