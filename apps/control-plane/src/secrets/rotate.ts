/**
 * Master-key rotation: every key the master key wraps (tenants' backup keys, tenant secrets'
 * keys, the platform's image seed) is unwrapped with the old master key and wrapped with the new
 * one, in one transaction: either all rows move to the new key or none does. Sealed values and
 * backup objects are not touched (they are sealed under the wrapped keys, not the master key).
 */
import { keyFingerprint, unwrapTenantKey, wrapTenantKey } from '@warren/backup';
import { WarrenError } from '@warren/protocol';
import { now } from '../ids.ts';
import type { Db } from '../store/index.ts';
import { unwrapSecretKey, wrapSecretKey } from './seal.ts';

/** The platform_keys row backup image keys are derived from (see imageSeed). */
const IMAGE_SEED = 'image-seed';
const SEED_TENANT = 'platform:image-seed';

/**
 * What backup image keys are derived from. Before the first rotation it is the master key itself
 * (what backups always used); the first rotation stores that old master key, wrapped by the new
 * one, as the seed, so chunks sealed with image keys before the rotation still open after it.
 * Image chunks hold an image's own content only (no tenant's data), so a seed that outlives a
 * rotation exposes nothing a tenant wrote.
 */
export async function imageSeed(db: Db, master: Buffer): Promise<Buffer> {
  const row = await db
    .selectFrom('platform_keys')
    .select('wrapped')
    .where('name', '=', IMAGE_SEED)
    .executeTakeFirst();
  if (!row) return master;
  try {
    return unwrapTenantKey(master, SEED_TENANT, row.wrapped);
  } catch {
    // Refused at start: image keys derived from a wrong key would seal new backups' chunks
    // under keys that later restores cannot find.
    throw new WarrenError(
      'BACKUP_KEY_REJECTED',
      `the master key loaded (fingerprint ${keyFingerprint(master)}) is not the one this database's keys are wrapped with (${row.wrapped.split('.')[1]}): a master-key rotation moved them to another key; point WARREN_MASTER_KEY_FILE at that key file (docs/operations.md, "Rotating the master key")`,
    );
  }
}

export interface RotationResult {
  oldFingerprint: string;
  newFingerprint: string;
  backupKeys: number;
  secretKeys: number;
}

export async function rotateMasterKey(db: Db, oldKey: Buffer, newKey: Buffer): Promise<RotationResult> {
  const oldFingerprint = keyFingerprint(oldKey);
  const newFingerprint = keyFingerprint(newKey);
  if (oldKey.equals(newKey))
    throw new WarrenError('INVALID_ARGUMENT', 'the new master key is the old one; make a new key file first');
  return db.transaction().execute(async (trx) => {
    let backupKeys = 0;
    for (const row of await trx.selectFrom('tenant_keys').selectAll().execute()) {
      const key = unwrapTenantKey(oldKey, row.tenant_id, row.wrapped);
      await trx
        .updateTable('tenant_keys')
        .set({ wrapped: wrapTenantKey(newKey, row.tenant_id, key) })
        .where('tenant_id', '=', row.tenant_id)
        .execute();
      key.fill(0);
      backupKeys++;
    }
    let secretKeys = 0;
    for (const row of await trx.selectFrom('tenant_secrets').selectAll().execute()) {
      const ref = { tenantId: row.tenant_id, name: row.name, version: row.version };
      const key = unwrapSecretKey(oldKey, ref, row.wrapped_key);
      await trx
        .updateTable('tenant_secrets')
        .set({ wrapped_key: wrapSecretKey(newKey, ref, key) })
        .where('tenant_id', '=', row.tenant_id)
        .where('name', '=', row.name)
        .execute();
      key.fill(0);
      secretKeys++;
    }
    const seed = await imageSeed(trx, oldKey);
    await trx
      .insertInto('platform_keys')
      .values({ name: IMAGE_SEED, wrapped: wrapTenantKey(newKey, SEED_TENANT, seed), created_at: now() })
      .onConflict((oc) =>
        oc.column('name').doUpdateSet({ wrapped: wrapTenantKey(newKey, SEED_TENANT, seed) }),
      )
      .execute();
    return { oldFingerprint, newFingerprint, backupKeys, secretKeys };
  });
}
