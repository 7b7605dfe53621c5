/**
 * Envelope encryption of tenant secrets. Each secret version gets a fresh random key (32 bytes)
 * that seals its value (AES-256-GCM); that key is stored only wrapped by the platform master key
 * (AES-256-GCM again). Both are bound (AAD) to the tenant id, the name and the version, so a
 * sealed value or wrapped key moved to another row does not open. A master-key rotation
 * rewraps the small keys and never touches the sealed values.
 */
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { KEY_BYTES, keyFingerprint, newKey } from '@warren/backup';
import { WarrenError } from '@warren/protocol';

const VERSION = 'v1';
const NONCE_BYTES = 12;
const TAG_BYTES = 16;

export interface SecretRef {
  tenantId: string;
  name: string;
  version: number;
}

function aad(purpose: 'key' | 'value', ref: SecretRef): Buffer {
  return Buffer.from(
    `warren tenant secret ${purpose} ${VERSION}\0${ref.tenantId}\0${ref.name}\0${ref.version}`,
  );
}

function seal(key: Buffer, data: Buffer, ad: Buffer): Buffer {
  const nonce = randomBytes(NONCE_BYTES);
  const c = createCipheriv('aes-256-gcm', key, nonce);
  c.setAAD(ad);
  return Buffer.concat([nonce, c.update(data), c.final(), c.getAuthTag()]);
}

function open(key: Buffer, raw: Buffer, ad: Buffer): Buffer | undefined {
  if (raw.length < NONCE_BYTES + TAG_BYTES) return undefined;
  const d = createDecipheriv('aes-256-gcm', key, raw.subarray(0, NONCE_BYTES));
  d.setAAD(ad);
  d.setAuthTag(raw.subarray(raw.length - TAG_BYTES));
  try {
    return Buffer.concat([d.update(raw.subarray(NONCE_BYTES, raw.length - TAG_BYTES)), d.final()]);
  } catch {
    return undefined;
  }
}

function rejected(ref: SecretRef, why: string): WarrenError {
  return new WarrenError(
    'SECRET_KEY_REJECTED',
    `secret ${ref.name} (version ${ref.version}) of tenant ${ref.tenantId}: ${why}`,
  );
}

/** Wraps a secret's key under the master key: `v1.<master fingerprint>.<base64>`. */
export function wrapSecretKey(master: Buffer, ref: SecretRef, key: Buffer): string {
  return `${VERSION}.${keyFingerprint(master)}.${seal(master, key, aad('key', ref)).toString('base64')}`;
}

export function unwrapSecretKey(master: Buffer, ref: SecretRef, wrapped: string): Buffer {
  const [version, fingerprint, body] = wrapped.split('.');
  if (version !== VERSION || !fingerprint || !body)
    throw rejected(ref, 'its key is in a format this Warren does not read');
  if (fingerprint !== keyFingerprint(master))
    throw rejected(
      ref,
      `its key was wrapped by master key ${fingerprint}, not by the one loaded (${keyFingerprint(master)})`,
    );
  const key = open(master, Buffer.from(body, 'base64'), aad('key', ref));
  if (!key || key.length !== KEY_BYTES) throw rejected(ref, 'its key does not open with the master key');
  return key;
}

/** Seals a value under a fresh key; returns both as stored (the key wrapped). */
export function sealSecret(
  master: Buffer,
  ref: SecretRef,
  value: Buffer,
): { wrappedKey: string; sealed: string } {
  const key = newKey();
  try {
    return {
      wrappedKey: wrapSecretKey(master, ref, key),
      sealed: seal(key, value, aad('value', ref)).toString('base64'),
    };
  } finally {
    key.fill(0);
  }
}

export function openSecret(
  master: Buffer,
  ref: SecretRef,
  stored: { wrappedKey: string; sealed: string },
): Buffer {
  const key = unwrapSecretKey(master, ref, stored.wrappedKey);
  try {
    const value = open(key, Buffer.from(stored.sealed, 'base64'), aad('value', ref));
    if (!value) throw rejected(ref, 'its value does not open with its key (the row was altered or moved)');
    return value;
  } finally {
    key.fill(0);
  }
}
