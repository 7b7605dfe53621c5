import { newId, now } from '../ids.ts';
import type { CredentialKind } from '../store/database.ts';
import type { Db } from '../store/index.ts';
import { displayPrefix, hashToken, newToken } from './tokens.ts';

export interface NewCredential {
  kind: CredentialKind;
  name: string;
  tenantId?: string | null;
  hostId?: string | null;
  singleUse?: boolean;
  bootstrap?: boolean;
  expiresAt?: string | null;
}

export interface StoredCredential {
  id: string;
  kind: CredentialKind;
  name: string;
  tenant_id: string | null;
  host_id: string | null;
  prefix: string;
  single_use: number;
  expires_at: string | null;
  created_at: string;
  last_used_at: string | null;
}

/**
 * Creates a bearer credential: a new token, of which the store keeps the hash and the
 * display prefix only. The plaintext is returned to be shown once.
 */
export async function insertCredential(
  db: Db,
  c: NewCredential,
): Promise<{ row: StoredCredential; token: string }> {
  const token = newToken(c.kind);
  const row = {
    id: newId('key'),
    kind: c.kind,
    name: c.name,
    tenant_id: c.tenantId ?? null,
    host_id: c.hostId ?? null,
    prefix: displayPrefix(c.kind, token),
    single_use: c.singleUse ? 1 : 0,
    expires_at: c.expiresAt ?? null,
    created_at: now(),
    last_used_at: null,
  };
  await db
    .insertInto('api_keys')
    .values({ ...row, token_hash: hashToken(token), bootstrap: c.bootstrap ? 1 : 0 })
    .execute();
  return { row, token };
}
