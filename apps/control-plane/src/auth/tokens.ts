import { createHash, randomBytes } from 'node:crypto';
import type { CredentialKind } from '../store/database.ts';

/**
 * Bearer tokens are 32 random bytes, so a plain SHA-256 is a safe way to store them: there is
 * nothing to brute-force that a slow password hash would protect (unlike passwords). Lookup is
 * by hash, so the plaintext never reaches the database. The readable prefix says what a
 * leaked token is (`wrn_admin_`, `wrn_key_`, ...), which secret scanners can match.
 */
const PREFIX: Record<CredentialKind, string> = {
  admin: 'wrn_admin_',
  tenant: 'wrn_key_',
  host: 'wrn_host_',
  join: 'wrn_join_',
};

export function newToken(kind: CredentialKind): string {
  return `${PREFIX[kind]}${randomBytes(32).toString('base64url')}`;
}

export function hashToken(token: string): string {
  return createHash('sha256').update(token).digest('hex');
}

/** What may be shown again later: the kind prefix and a few characters. */
export function displayPrefix(token: string): string {
  const i = token.lastIndexOf('_') + 1;
  return token.slice(0, i + 6);
}

/** Cheap shape check before touching the store; anything else is refused as unauthenticated. */
export function looksLikeToken(token: string): boolean {
  return /^wrn_(admin|key|host|join)_[A-Za-z0-9_-]{43}$/.test(token);
}
