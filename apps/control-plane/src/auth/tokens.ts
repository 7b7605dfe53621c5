import { createHash, randomBytes } from 'node:crypto';
import type { CredentialKind } from '../store/database.ts';

/**
 * Bearer tokens are 32 random bytes, so a plain SHA-256 is a safe way to store them: there is
 * nothing to brute-force that a slow password hash would protect (unlike passwords). Lookup is
 * by hash, so the plaintext never reaches the database. The readable prefix says what a
 * leaked token is (`wrn_admin_`, `wrn_key_`, ...), which secret scanners can match.
 */
export const TOKEN_PREFIX: Record<CredentialKind, string> = {
  admin: 'wrn_admin_',
  tenant: 'wrn_key_',
  host: 'wrn_host_',
  join: 'wrn_join_',
};

/**
 * How many characters of a token's random body are stored and listed to recognise it: 36 of
 * its 256 bits, enough to tell keys apart by eye, far too few to guess the rest. The body is
 * base64url, so it contains `_` and `-`: the cut is by count, never at a separator.
 */
export const DISPLAY_BODY_CHARS = 6;

export function newToken(kind: CredentialKind): string {
  return `${TOKEN_PREFIX[kind]}${randomBytes(32).toString('base64url')}`;
}

export function hashToken(token: string): string {
  return createHash('sha256').update(token).digest('hex');
}

/** What may be shown again later: the kind prefix and DISPLAY_BODY_CHARS characters, never more. */
export function displayPrefix(kind: CredentialKind, token: string): string {
  const prefix = TOKEN_PREFIX[kind];
  if (!token.startsWith(prefix)) throw new Error(`not a ${kind} token`);
  return token.slice(0, displayPrefixLength(kind));
}

export function displayPrefixLength(kind: CredentialKind): number {
  return TOKEN_PREFIX[kind].length + DISPLAY_BODY_CHARS;
}

/** Cheap shape check before touching the store; anything else is refused as unauthenticated. */
export function looksLikeToken(token: string): boolean {
  return /^wrn_(admin|key|host|join)_[A-Za-z0-9_-]{43}$/.test(token);
}
