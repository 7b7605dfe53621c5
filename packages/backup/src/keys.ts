/**
 * The keys of backups (envelope encryption).
 *
 * - The platform master key (32 bytes, a file the control plane reads: WARREN_MASTER_KEY_FILE)
 *   never leaves the control plane's machine and is never stored in the database or the object
 *   store. It wraps every tenant key and derives every image key.
 * - A tenant key (32 random bytes) is made on the tenant's first backup and kept in the
 *   database only wrapped (AES-256-GCM under the master key, bound to the tenant's id). The
 *   control plane unwraps it for one job and hands it to a host agent, which keeps it in memory.
 * - An image key is derived from the master key and an image's digest: chunks of a root disk
 *   that are the image's own content are sealed with it, so tenants made from one image share
 *   them in the store.
 * Each of these is only ever used through `subkeys`, one key per purpose.
 */
import { createCipheriv, createDecipheriv, createHash, hkdfSync, randomBytes } from 'node:crypto';
import { WarrenError } from '@warren/protocol';

export const KEY_BYTES = 32;

/** A fresh random key (a tenant key, or a master key made at first start). */
export function newKey(): Buffer {
  return randomBytes(KEY_BYTES);
}

function assertKeyBytes(key: Buffer, what: string): void {
  if (key.length !== KEY_BYTES)
    throw new WarrenError('INVALID_ARGUMENT', `${what} must be ${KEY_BYTES} bytes, not ${key.length}`);
}

/**
 * A short public fingerprint of a key: stored next to what it wrapped or sealed, so that a wrong
 * key is told apart from damaged data (BACKUP_KEY_REJECTED rather than BACKUP_CORRUPT).
 */
export function keyFingerprint(key: Buffer): string {
  return createHash('sha256')
    .update('warren-backup key fingerprint v1\0')
    .update(key)
    .digest('hex')
    .slice(0, 16);
}

const WRAP_VERSION = 1;
const NONCE_BYTES = 12;
const TAG_BYTES = 16;

/** A tenant key wrapped by the master key: what the database holds. */
export interface WrappedKey {
  /** `v1.<master fingerprint>.<base64 nonce|ciphertext|tag>`. */
  wrapped: string;
}

function wrapAad(tenantId: string): Buffer {
  return Buffer.from(`warren-backup tenant key v${WRAP_VERSION}\0${tenantId}`);
}

export function wrapTenantKey(master: Buffer, tenantId: string, key: Buffer): string {
  assertKeyBytes(master, 'the master key');
  assertKeyBytes(key, 'a tenant key');
  const nonce = randomBytes(NONCE_BYTES);
  const c = createCipheriv('aes-256-gcm', master, nonce);
  c.setAAD(wrapAad(tenantId));
  const body = Buffer.concat([nonce, c.update(key), c.final(), c.getAuthTag()]);
  return `v${WRAP_VERSION}.${keyFingerprint(master)}.${body.toString('base64')}`;
}

/** Opens what `wrapTenantKey` made for the same tenant; BACKUP_KEY_REJECTED for another master key or tenant. */
export function unwrapTenantKey(master: Buffer, tenantId: string, wrapped: string): Buffer {
  assertKeyBytes(master, 'the master key');
  const [version, fingerprint, body] = wrapped.split('.');
  if (version !== `v${WRAP_VERSION}` || !fingerprint || !body)
    throw new WarrenError(
      'BACKUP_KEY_REJECTED',
      `the wrapped key of tenant ${tenantId} is not in a format this Warren reads`,
    );
  if (fingerprint !== keyFingerprint(master))
    throw new WarrenError(
      'BACKUP_KEY_REJECTED',
      `the key of tenant ${tenantId} was wrapped by master key ${fingerprint}, not by the one loaded (${keyFingerprint(master)})`,
    );
  const raw = Buffer.from(body, 'base64');
  if (raw.length !== NONCE_BYTES + KEY_BYTES + TAG_BYTES)
    throw new WarrenError(
      'BACKUP_KEY_REJECTED',
      `the wrapped key of tenant ${tenantId} has the wrong length`,
    );
  const d = createDecipheriv('aes-256-gcm', master, raw.subarray(0, NONCE_BYTES));
  d.setAAD(wrapAad(tenantId));
  d.setAuthTag(raw.subarray(NONCE_BYTES + KEY_BYTES));
  try {
    return Buffer.concat([d.update(raw.subarray(NONCE_BYTES, NONCE_BYTES + KEY_BYTES)), d.final()]);
  } catch {
    throw new WarrenError(
      'BACKUP_KEY_REJECTED',
      `the wrapped key of tenant ${tenantId} does not open with the master key`,
    );
  }
}

/** The key of chunks an image provides (see the file comment); `digest` is the image's sha256. */
export function imageKey(master: Buffer, digest: string): Buffer {
  assertKeyBytes(master, 'the master key');
  return Buffer.from(
    hkdfSync('sha256', master, Buffer.from(digest), 'warren-backup image key v1', KEY_BYTES),
  );
}

/** The keys used for one purpose each, derived from a tenant or image key. */
export interface Subkeys {
  /** HMAC-SHA256 key that names a chunk by its content. */
  chunkId: Buffer;
  /** AES-256-GCM key that seals chunks. */
  chunkSeal: Buffer;
  /** AES-256-GCM key that seals manifests (tenant keys only). */
  manifestSeal: Buffer;
  /** keyFingerprint of the key these came from. */
  fingerprint: string;
}

export function subkeys(key: Buffer): Subkeys {
  assertKeyBytes(key, 'a backup key');
  const derive = (info: string) => Buffer.from(hkdfSync('sha256', key, Buffer.alloc(0), info, KEY_BYTES));
  return {
    chunkId: derive('warren-backup chunk id v1'),
    chunkSeal: derive('warren-backup chunk seal v1'),
    manifestSeal: derive('warren-backup manifest seal v1'),
    fingerprint: keyFingerprint(key),
  };
}
