import {
  type AgentSecrets,
  MAX_SECRETS_PER_TENANT,
  type SecretInfo,
  type SetSecretRequest,
  secretBytes,
  WarrenError,
} from '@warren/protocol';
import { now } from '../ids.ts';
import type { TenantSecretsTable, TenantsTable } from '../store/database.ts';
import type { Db } from '../store/index.ts';
import { openSecret, sealSecret } from './seal.ts';

export interface SecretServiceDeps {
  db: Db;
  masterKey: Buffer;
  /** A tenant's secrets changed: its host should heartbeat now to fetch them. */
  onChange?: (hostId: string) => void;
}

function info(row: TenantSecretsTable): SecretInfo {
  return { name: row.name, version: row.version, createdAt: row.created_at, updatedAt: row.updated_at };
}

/**
 * Tenant secrets: stored sealed (seal.ts), listed by name and version, opened only for the
 * host agent of the host the tenant is placed on. No method returns a value to an API caller.
 */
export class SecretService {
  readonly #d: SecretServiceDeps;

  constructor(deps: SecretServiceDeps) {
    this.#d = deps;
  }

  async list(tenant: Pick<TenantsTable, 'id'>): Promise<SecretInfo[]> {
    const rows = await this.#d.db
      .selectFrom('tenant_secrets')
      .selectAll()
      .where('tenant_id', '=', tenant.id)
      .orderBy('name')
      .execute();
    return rows.map(info);
  }

  /** Sets (or replaces) one secret: version 1, or one more than the one it replaces. */
  async set(tenant: TenantsTable, name: string, req: SetSecretRequest): Promise<SecretInfo> {
    const value = secretBytes(req.value, req.encoding ?? 'utf8');
    try {
      const row = await this.#d.db.transaction().execute(async (trx) => {
        const old = await trx
          .selectFrom('tenant_secrets')
          .select(['version', 'created_at'])
          .where('tenant_id', '=', tenant.id)
          .where('name', '=', name)
          .executeTakeFirst();
        if (!old) {
          const { n } = await trx
            .selectFrom('tenant_secrets')
            .select((eb) => eb.fn.countAll<number>().as('n'))
            .where('tenant_id', '=', tenant.id)
            .executeTakeFirstOrThrow();
          if (Number(n) >= MAX_SECRETS_PER_TENANT)
            throw new WarrenError(
              'QUOTA_EXCEEDED',
              `tenant ${tenant.name} has ${MAX_SECRETS_PER_TENANT} secrets, the most a tenant may hold; remove one (\`warren tenant secret rm ${tenant.name} NAME\`) first`,
            );
        }
        const version = (old?.version ?? 0) + 1;
        const t = now();
        const sealed = sealSecret(this.#d.masterKey, { tenantId: tenant.id, name, version }, value);
        const next: TenantSecretsTable = {
          tenant_id: tenant.id,
          name,
          version,
          wrapped_key: sealed.wrappedKey,
          sealed: sealed.sealed,
          created_at: old?.created_at ?? t,
          updated_at: t,
        };
        if (old)
          await trx
            .updateTable('tenant_secrets')
            .set({ version, wrapped_key: next.wrapped_key, sealed: next.sealed, updated_at: t })
            .where('tenant_id', '=', tenant.id)
            .where('name', '=', name)
            .where('version', '=', old.version)
            .execute();
        else await trx.insertInto('tenant_secrets').values(next).execute();
        await this.#bump(trx, tenant.id);
        return next;
      });
      this.#changed(tenant);
      return info(row);
    } finally {
      value.fill(0);
    }
  }

  /**
   * The first version of a secret of a tenant being created, sealed, for the creating
   * transaction to insert (with the tenant's `secrets_generation` at 1): a generated workload
   * token is there before the tenant's host first asks.
   */
  initialRow(tenantId: string, name: string, value: Buffer, t: string): TenantSecretsTable {
    const sealed = sealSecret(this.#d.masterKey, { tenantId, name, version: 1 }, value);
    return {
      tenant_id: tenantId,
      name,
      version: 1,
      wrapped_key: sealed.wrappedKey,
      sealed: sealed.sealed,
      created_at: t,
      updated_at: t,
    };
  }

  /**
   * One secret's value, opened, or undefined when the tenant has none by that name. Only for
   * the dashboard login page, which hands a workload's own token to the tenant's browser on
   * the tenant's origin (docs/security.md); never for an API answer.
   */
  async open(tenantId: string, name: string): Promise<Buffer | undefined> {
    const r = await this.#d.db
      .selectFrom('tenant_secrets')
      .selectAll()
      .where('tenant_id', '=', tenantId)
      .where('name', '=', name)
      .executeTakeFirst();
    if (!r) return undefined;
    return openSecret(
      this.#d.masterKey,
      { tenantId, name: r.name, version: r.version },
      { wrappedKey: r.wrapped_key, sealed: r.sealed },
    );
  }

  async remove(tenant: TenantsTable, name: string): Promise<SecretInfo> {
    const row = await this.#d.db.transaction().execute(async (trx) => {
      const old = await trx
        .selectFrom('tenant_secrets')
        .selectAll()
        .where('tenant_id', '=', tenant.id)
        .where('name', '=', name)
        .executeTakeFirst();
      if (!old)
        throw new WarrenError(
          'NOT_FOUND',
          `tenant ${tenant.name} has no secret ${name}; \`warren tenant secret list ${tenant.name}\` lists them`,
        );
      await trx
        .deleteFrom('tenant_secrets')
        .where('tenant_id', '=', tenant.id)
        .where('name', '=', name)
        .execute();
      await this.#bump(trx, tenant.id);
      return old;
    });
    this.#changed(tenant);
    return info(row);
  }

  /**
   * The secrets of a tenant placed on `hostId`, opened, for that host's agent. A tenant on
   * another host (or none) is NOT_FOUND: a host sees only its own tenants' secrets.
   */
  async forAgent(hostId: string, tenantId: string): Promise<AgentSecrets> {
    return this.#d.db.transaction().execute(async (trx) => {
      const tenant = await trx
        .selectFrom('tenants')
        .select(['id', 'host_id', 'secrets_generation'])
        .where('id', '=', tenantId)
        .executeTakeFirst();
      if (!tenant || tenant.host_id !== hostId)
        throw new WarrenError('NOT_FOUND', `tenant ${tenantId} is not placed on this host`);
      const rows = await trx
        .selectFrom('tenant_secrets')
        .selectAll()
        .where('tenant_id', '=', tenantId)
        .orderBy('name')
        .execute();
      return {
        tenantId,
        generation: tenant.secrets_generation ?? 0,
        secrets: rows.map((r) => {
          const value = openSecret(
            this.#d.masterKey,
            { tenantId, name: r.name, version: r.version },
            { wrappedKey: r.wrapped_key, sealed: r.sealed },
          );
          const b64 = value.toString('base64');
          value.fill(0);
          return { name: r.name, version: r.version, value: b64 };
        }),
      };
    });
  }

  async #bump(trx: Db, tenantId: string): Promise<void> {
    await trx
      .updateTable('tenants')
      .set((eb) => ({ secrets_generation: eb('secrets_generation', '+', 1) }))
      .where('id', '=', tenantId)
      .execute();
  }

  #changed(tenant: TenantsTable): void {
    if (tenant.host_id) this.#d.onChange?.(tenant.host_id);
  }
}
