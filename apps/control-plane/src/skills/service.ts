import type { Readable } from 'node:stream';
import { readSkillBundle, skillBundleDigest } from '@warren/images/skill-bundle';
import type { ObjectStore } from '@warren/object-store';
import {
  type ConfigTemplate,
  type DesiredConfig,
  type DesiredSkill,
  MAX_CONFIG_FILE_BYTES,
  parseSkillRef,
  type SetChannelRequest,
  type SkillChannel,
  type SkillList,
  type SkillPackage,
  type TenantVersions,
  WarrenError,
  workloadOf,
} from '@warren/protocol';
import { now } from '../ids.ts';
import type { SkillChannelsTable, SkillPackagesTable, TenantsTable } from '../store/database.ts';
import type { Db } from '../store/index.ts';
import { imageProfiles } from '../tenants/service.ts';
import { type ChannelState, nextChannel, renderConfig, resolveChannel } from './resolve.ts';

/** Where a bundle lives in the object store: named by its digest, so equal content is stored once. */
export function bundleKey(digest: string): string {
  return `skills/sha256/${digest.slice('sha256:'.length)}`;
}

function packageView(r: SkillPackagesTable): SkillPackage {
  return {
    name: r.name,
    version: r.version,
    digest: r.digest,
    sizeBytes: r.size_bytes,
    skills: JSON.parse(r.skills) as string[],
    createdAt: r.created_at,
  };
}

function channelState(r: SkillChannelsTable): ChannelState {
  return {
    version: r.version,
    previousVersion: r.previous_version,
    rolloutPercent: r.rollout_percent,
    generation: r.generation,
    apply: r.apply === 'now' ? 'now' : 'next-start',
  };
}

function channelView(r: SkillChannelsTable): SkillChannel {
  return { name: r.name, channel: r.channel, ...channelState(r), updatedAt: r.updated_at };
}

/** A tenant's references, as stored. */
export function tenantSkillRefs(row: Pick<TenantsTable, 'skills'>): string[] {
  try {
    const v = JSON.parse(row.skills ?? '[]');
    return Array.isArray(v) ? v.filter((s) => typeof s === 'string') : [];
  } catch {
    return [];
  }
}

function tenantConfigValues(
  row: Pick<TenantsTable, 'config_values'>,
): Record<string, Record<string, unknown> | null> {
  try {
    const v = JSON.parse(row.config_values ?? '{}');
    return typeof v === 'object' && v !== null ? v : {};
  } catch {
    return {};
  }
}

/** Everything resolution needs, read once for many tenants (a heartbeat, a list). */
interface Catalog {
  packages: Map<string, SkillPackagesTable>;
  channels: Map<string, SkillChannelsTable>;
  templates: Map<string, { version: number; body: Record<string, unknown> }>;
  /** Image id -> profile, for the workload defaults of a tenant's configuration. */
  profiles: Map<string, string>;
}

interface Resolved {
  ref: string;
  name: string;
  pkg: SkillPackagesTable | undefined;
  applyNow: boolean;
}

/**
 * Skill packages (push, list), channels and their rollouts, configuration templates, and what
 * each tenant resolves to: the skills and rendered configuration its host attaches, and the
 * versions `tenant show` reports.
 */
export class SkillService {
  readonly #db: Db;
  readonly #objects: ObjectStore;
  /**
   * A tenant's dashboard origin (set once the API listens: by default it carries the port), for
   * the workload defaults of its configuration (`Workload.configDefaults`); none: no defaults.
   */
  dashboardOrigin: ((tenantName: string) => string) | undefined;

  constructor(o: { db: Db; objects: ObjectStore }) {
    this.#db = o.db;
    this.#objects = o.objects;
  }

  /**
   * Stores a bundle as name@version. The bundle is parsed and checked here (the client's
   * packing is not trusted) and stored under its digest before the row is written, so a row
   * always names a complete object. A version is immutable: the same content again is a no-op,
   * other content is CONFLICT.
   */
  async push(
    name: string,
    version: string,
    bundle: Buffer,
  ): Promise<{ package: SkillPackage; created: boolean }> {
    const { skills } = readSkillBundle(bundle);
    const digest = skillBundleDigest(bundle);
    const existing = await this.#db
      .selectFrom('skill_packages')
      .selectAll()
      .where('name', '=', name)
      .where('version', '=', version)
      .executeTakeFirst();
    if (existing) return this.#same(existing, digest);
    await this.#objects.put(bundleKey(digest), bundle, { contentLength: bundle.length });
    const row: SkillPackagesTable = {
      name,
      version,
      digest,
      size_bytes: bundle.length,
      skills: JSON.stringify(skills),
      created_at: now(),
    };
    try {
      await this.#db.insertInto('skill_packages').values(row).execute();
    } catch (e) {
      // A concurrent push of the same name@version won the insert.
      const raced = await this.#db
        .selectFrom('skill_packages')
        .selectAll()
        .where('name', '=', name)
        .where('version', '=', version)
        .executeTakeFirst();
      if (raced) return this.#same(raced, digest);
      throw e;
    }
    return { package: packageView(row), created: true };
  }

  #same(existing: SkillPackagesTable, digest: string): { package: SkillPackage; created: boolean } {
    if (existing.digest !== digest)
      throw new WarrenError(
        'CONFLICT',
        `${existing.name}@${existing.version} exists with other content (${existing.digest}); versions are immutable: push it as a new version`,
      );
    return { package: packageView(existing), created: false };
  }

  async list(name?: string): Promise<SkillList> {
    let pq = this.#db.selectFrom('skill_packages').selectAll().orderBy('name').orderBy('created_at');
    let cq = this.#db.selectFrom('skill_channels').selectAll().orderBy('name').orderBy('channel');
    if (name) {
      pq = pq.where('name', '=', name);
      cq = cq.where('name', '=', name);
    }
    return {
      packages: (await pq.execute()).map(packageView),
      channels: (await cq.execute()).map(channelView),
    };
  }

  /** Points a channel at a version (which must exist), with its rollout; see `nextChannel`. */
  async setChannel(name: string, channel: string, req: SetChannelRequest): Promise<SkillChannel> {
    return this.#db.transaction().execute(async (trx) => {
      const pkg = await trx
        .selectFrom('skill_packages')
        .select('version')
        .where('name', '=', name)
        .where('version', '=', req.version)
        .executeTakeFirst();
      if (!pkg)
        throw new WarrenError(
          'NOT_FOUND',
          `no skill package ${name}@${req.version}: push it first (warren skill push)`,
        );
      const cur = await trx
        .selectFrom('skill_channels')
        .selectAll()
        .where('name', '=', name)
        .where('channel', '=', channel)
        .executeTakeFirst();
      const next = nextChannel(cur ? channelState(cur) : undefined, req);
      const row: SkillChannelsTable = {
        name,
        channel,
        version: next.version,
        previous_version: next.previousVersion,
        rollout_percent: next.rolloutPercent,
        generation: next.generation,
        apply: next.apply,
        updated_at: now(),
      };
      if (cur)
        await trx
          .updateTable('skill_channels')
          .set(row)
          .where('name', '=', name)
          .where('channel', '=', channel)
          .execute();
      else await trx.insertInto('skill_channels').values(row).execute();
      return channelView(row);
    });
  }

  /** A stored bundle's bytes, for a host agent (which verifies the digest itself). */
  async bundle(digest: string): Promise<{ stream: Readable; size: number }> {
    const row = await this.#db
      .selectFrom('skill_packages')
      .select('size_bytes')
      .where('digest', '=', digest)
      .executeTakeFirst();
    if (!row) throw new WarrenError('NOT_FOUND', `no skill bundle ${digest}`);
    return { stream: await this.#objects.get(bundleKey(digest)), size: row.size_bytes };
  }

  /** Refuses references to packages, versions or channels that do not exist. */
  async checkRefs(refs: string[]): Promise<void> {
    const names = new Set<string>();
    for (const ref of refs) {
      const p = parseSkillRef(ref);
      if (!p)
        throw new WarrenError(
          'INVALID_ARGUMENT',
          `skill reference ${JSON.stringify(ref)}: use name@version or name@channel`,
        );
      if (names.has(p.name))
        throw new WarrenError(
          'INVALID_ARGUMENT',
          `skill package ${p.name} is referenced twice: one version per tenant`,
        );
      names.add(p.name);
      const found = p.version
        ? await this.#db
            .selectFrom('skill_packages')
            .select('name')
            .where('name', '=', p.name)
            .where('version', '=', p.version)
            .executeTakeFirst()
        : await this.#db
            .selectFrom('skill_channels')
            .select('name')
            .where('name', '=', p.name)
            .where('channel', '=', p.channel!)
            .executeTakeFirst();
      if (!found)
        throw new WarrenError(
          'NOT_FOUND',
          `no skill ${p.version ? 'package' : 'channel'} ${ref}: see \`warren skill list\``,
        );
    }
  }

  async setTemplate(file: string, template: Record<string, unknown>): Promise<ConfigTemplate> {
    const body = JSON.stringify(template);
    if (Buffer.byteLength(body) > MAX_CONFIG_FILE_BYTES)
      throw new WarrenError(
        'PAYLOAD_TOO_LARGE',
        `a template is at most ${MAX_CONFIG_FILE_BYTES} bytes of JSON`,
      );
    return this.#db.transaction().execute(async (trx) => {
      const last = await trx
        .selectFrom('config_templates')
        .select('version')
        .where('file', '=', file)
        .orderBy('version', 'desc')
        .executeTakeFirst();
      const row = { file, version: (last?.version ?? 0) + 1, body, created_at: now() };
      await trx.insertInto('config_templates').values(row).execute();
      return { file, version: row.version, template, createdAt: row.created_at };
    });
  }

  /** The newest version of each template. */
  async templates(): Promise<ConfigTemplate[]> {
    const cat = await this.#catalog();
    const rows = await this.#db
      .selectFrom('config_templates')
      .select(['file', 'version', 'created_at'])
      .execute();
    const created = new Map(rows.map((r) => [`${r.file}@${r.version}`, r.created_at]));
    return [...cat.templates.entries()]
      .sort(([a], [b]) => a.localeCompare(b))
      .map(([file, t]) => ({
        file,
        version: t.version,
        template: t.body,
        createdAt: created.get(`${file}@${t.version}`) ?? '',
      }));
  }

  async #catalog(db: Db = this.#db): Promise<Catalog> {
    const packages = new Map<string, SkillPackagesTable>();
    for (const r of await db.selectFrom('skill_packages').selectAll().execute())
      packages.set(`${r.name}@${r.version}`, r);
    const channels = new Map<string, SkillChannelsTable>();
    for (const r of await db.selectFrom('skill_channels').selectAll().execute())
      channels.set(`${r.name}@${r.channel}`, r);
    const templates = new Map<string, { version: number; body: Record<string, unknown> }>();
    for (const r of await db.selectFrom('config_templates').selectAll().orderBy('version').execute())
      templates.set(r.file, { version: r.version, body: JSON.parse(r.body) });
    return { packages, channels, templates, profiles: await imageProfiles(db) };
  }

  #resolve(cat: Catalog, row: Pick<TenantsTable, 'id' | 'skills'>): Resolved[] {
    const out: Resolved[] = [];
    for (const ref of tenantSkillRefs(row)) {
      const p = parseSkillRef(ref);
      if (!p) continue;
      if (p.version) {
        out.push({ ref, name: p.name, pkg: cat.packages.get(ref), applyNow: false });
        continue;
      }
      const ch = cat.channels.get(ref);
      const version = ch ? resolveChannel(channelState(ch), row.id, p.name, p.channel!) : undefined;
      out.push({
        ref,
        name: p.name,
        pkg: version ? cat.packages.get(`${p.name}@${version}`) : undefined,
        applyNow: ch?.apply === 'now',
      });
    }
    return out;
  }

  #render(
    cat: Catalog,
    row: Pick<TenantsTable, 'name' | 'image_id' | 'config_values'>,
    skills: Resolved[],
  ): DesiredConfig | null {
    const workload = workloadOf(cat.profiles.get(row.image_id));
    const origin = this.dashboardOrigin?.(row.name);
    try {
      return renderConfig({
        defaults: workload && origin ? { [workload.configFile]: workload.configDefaults(origin) } : {},
        templates: cat.templates,
        values: tenantConfigValues(row),
        skillNames: skills.filter((s) => s.pkg).map((s) => s.name),
        maxFileBytes: MAX_CONFIG_FILE_BYTES,
      });
    } catch {
      // Checked when values and templates are set; a file too large is left out, not fatal.
      return null;
    }
  }

  /** What each tenant's host attaches and writes (the heartbeat's desired list). */
  async desiredFor(
    db: Db,
    rows: Pick<TenantsTable, 'id' | 'name' | 'image_id' | 'skills' | 'config_values'>[],
  ): Promise<Map<string, { skills: DesiredSkill[]; config: DesiredConfig | null }>> {
    const out = new Map<string, { skills: DesiredSkill[]; config: DesiredConfig | null }>();
    if (rows.length === 0) return out;
    const cat = await this.#catalog(db);
    for (const row of rows) {
      const resolved = this.#resolve(cat, row);
      out.set(row.id, {
        skills: resolved
          .filter((r) => r.pkg)
          .map((r) => ({
            name: r.pkg!.name,
            version: r.pkg!.version,
            digest: r.pkg!.digest,
            sizeBytes: r.pkg!.size_bytes,
            applyNow: r.applyNow,
          })),
        config: this.#render(cat, row, resolved),
      });
    }
    return out;
  }

  /** Which image, skill versions and configuration each tenant runs (drift across tenants). */
  async versions(rows: TenantsTable[]): Promise<TenantVersions[]> {
    const cat = await this.#catalog();
    return rows.map((row) => {
      const resolved = this.#resolve(cat, row);
      const config = this.#render(cat, row, resolved);
      return {
        tenantId: row.id,
        name: row.name,
        image: row.image_id,
        skills: resolved.map((r) => ({
          ref: r.ref,
          name: r.name,
          version: r.pkg?.version ?? null,
          digest: r.pkg?.digest ?? null,
        })),
        config: {
          digest: config?.version ?? null,
          templates: (config?.files ?? [])
            .filter((f) => cat.templates.has(f.name))
            .map((f) => ({ file: f.name, version: cat.templates.get(f.name)!.version })),
          valuesVersion: row.config_version ?? 0,
        },
      };
    });
  }

  /** Checks that a tenant's values render (size) with the current templates. */
  async checkValues(
    values: Record<string, Record<string, unknown> | null>,
    skillNames: string[],
  ): Promise<void> {
    const cat = await this.#catalog();
    renderConfig({
      defaults: {},
      templates: cat.templates,
      values,
      skillNames,
      maxFileBytes: MAX_CONFIG_FILE_BYTES,
    });
  }
}
