/**
 * The pure rules of skill channels and configuration rendering (no store, no I/O), so they can
 * be tested on their own: which version a tenant gets from a channel during a staged rollout,
 * what `channel set` does to a channel, and how a configuration file is rendered.
 */
import { createHash } from 'node:crypto';
import {
  type ChannelApply,
  type DesiredConfig,
  OPENCLAW_CONFIG_FILE,
  SKILLS_MOUNT_DIR,
  WarrenError,
} from '@warren/protocol';
import type { z } from 'zod';

export interface ChannelState {
  version: string;
  previousVersion: string | null;
  rolloutPercent: number;
  generation: number;
  apply: z.infer<typeof ChannelApply>;
}

/**
 * A tenant's place in a rollout of one channel generation: 0-99, from a hash of the tenant id,
 * the package, the channel and the generation. Fixed for a generation, so raising the percentage
 * only adds tenants (the first stage stays in); a new version (a new generation) draws anew.
 */
export function rolloutBucket(tenantId: string, name: string, channel: string, generation: number): number {
  const h = createHash('sha256').update(`${tenantId}\0${name}\0${channel}\0${generation}`).digest();
  return h.readUInt32BE(0) % 100;
}

/** The version a tenant gets from a channel. */
export function resolveChannel(ch: ChannelState, tenantId: string, name: string, channel: string): string {
  if (ch.previousVersion === null || ch.rolloutPercent >= 100) return ch.version;
  return rolloutBucket(tenantId, name, channel, ch.generation) < ch.rolloutPercent
    ? ch.version
    : ch.previousVersion;
}

/**
 * `channel set`: a new version starts a new generation whose rollout reaches `rolloutPercent`
 * of tenants (100 when not given); the others keep what everyone had (the previous version
 * that was fully rolled out, or, when a rollout is replaced midway, the version it replaced).
 * The same version again only moves the percentage (and `apply`). At 100% the previous
 * version is dropped: the rollout is complete.
 */
export function nextChannel(
  cur: ChannelState | undefined,
  req: { version: string; rolloutPercent?: number | undefined; apply?: ChannelState['apply'] | undefined },
): ChannelState {
  const percent = req.rolloutPercent ?? 100;
  const apply = req.apply ?? cur?.apply ?? 'next-start';
  if (!cur) return { version: req.version, previousVersion: null, rolloutPercent: 100, generation: 1, apply };
  if (cur.version === req.version) {
    return {
      ...cur,
      rolloutPercent: cur.previousVersion === null ? 100 : percent,
      previousVersion: percent >= 100 ? null : cur.previousVersion,
      apply,
    };
  }
  const everyone =
    cur.previousVersion === null || cur.rolloutPercent >= 100 ? cur.version : cur.previousVersion;
  const previousVersion = percent >= 100 || everyone === req.version ? null : everyone;
  return {
    version: req.version,
    previousVersion,
    rolloutPercent: previousVersion === null ? 100 : percent,
    generation: cur.generation + 1,
    apply,
  };
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * JSON merge (RFC 7396): objects merge key by key, recursively; any other value (arrays
 * included) replaces; `null` in the patch removes the key.
 */
export function mergeJson(base: unknown, patch: unknown): unknown {
  if (!isObject(patch)) return patch;
  const out: Record<string, unknown> = isObject(base) ? { ...base } : {};
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete out[k];
    else out[k] = mergeJson(out[k], v);
  }
  return out;
}

export interface RenderInput {
  /** The platform's defaults per file (a workload's, by the tenant's image profile), under the templates. */
  defaults: Record<string, Record<string, unknown>>;
  /** Newest template per file. */
  templates: Map<string, { version: number; body: Record<string, unknown> }>;
  /** The tenant's own values per file. */
  values: Record<string, Record<string, unknown> | null>;
  /** The names of the packages attached to the tenant (their mount directories). */
  skillNames: string[];
  maxFileBytes: number;
}

/**
 * Renders a tenant's configuration files: each file that has platform defaults, a template or
 * tenant values is the defaults, then the template, then the values, deep-merged (mergeJson). `openclaw.json` (rendered whenever the
 * tenant has skills, even without a template) gets each package's mount directory appended to
 * `skills.load.extraDirs`, after any the template or values list.
 */
export function renderConfig(input: RenderInput): DesiredConfig | null {
  const names = new Set([
    ...Object.keys(input.defaults),
    ...input.templates.keys(),
    ...Object.keys(input.values),
  ]);
  for (const [k, v] of Object.entries(input.values)) if (v === null) names.delete(k);
  if (input.skillNames.length > 0) names.add(OPENCLAW_CONFIG_FILE);
  if (names.size === 0) return null;
  const files: DesiredConfig['files'] = [];
  for (const name of [...names].sort()) {
    const template = mergeJson(input.defaults[name] ?? {}, input.templates.get(name)?.body ?? {});
    let doc = mergeJson(template, input.values[name] ?? {}) as Record<string, unknown>;
    if (name === OPENCLAW_CONFIG_FILE && input.skillNames.length > 0) {
      const skills = isObject(doc.skills) ? doc.skills : {};
      const load = isObject(skills.load) ? skills.load : {};
      const dirs = Array.isArray(load.extraDirs) ? load.extraDirs.filter((d) => typeof d === 'string') : [];
      for (const s of input.skillNames) {
        const dir = `${SKILLS_MOUNT_DIR}/${s}`;
        if (!dirs.includes(dir)) dirs.push(dir);
      }
      doc = { ...doc, skills: { ...skills, load: { ...load, extraDirs: dirs } } };
    }
    const content = `${JSON.stringify(doc, null, 2)}\n`;
    if (Buffer.byteLength(content) > input.maxFileBytes)
      throw new WarrenError(
        'INVALID_ARGUMENT',
        `the rendered ${name} is larger than ${input.maxFileBytes} bytes: make its template or the tenant's values smaller`,
      );
    files.push({ name, content });
  }
  const h = createHash('sha256');
  for (const f of files) h.update(`${f.name}\0${f.content}\0`);
  return { version: `sha256:${h.digest('hex').slice(0, 12)}`, files };
}
