/**
 * The manifest `manifests/<backupId>`: `WBM1 | fingerprint(16 hex, clear) | nonce(12) |
 * AES-256-GCM(subkeys(tenant).manifestSeal, gzip(JSON)) | tag(16)`, AAD = magic + fingerprint +
 * backupId. The clear fingerprint tells a wrong key (BACKUP_KEY_REJECTED: an operator problem)
 * from damage (BACKUP_CORRUPT); the AAD binds the manifest to its name, so one backup's
 * manifest copied over another's does not open.
 *
 * A manifest is hostile input even after it authenticates (whoever held the tenant key for a
 * job could have written it): its size, its decompressed size and its shape are all bounded and
 * checked before anything acts on it.
 */
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { promisify } from 'node:util';
import { gunzip, gzip } from 'node:zlib';
import { BackupId, BackupMetadata, BackupVolumeName, WarrenError } from '@warren/protocol';
import { z } from 'zod';
import {
  CHUNK_ID,
  CHUNK_SIZE,
  MANIFEST_MAGIC,
  MAX_MANIFEST_JSON_BYTES,
  MAX_VOLUME_BYTES,
  manifestObjectKey,
  NONCE_BYTES,
  TAG_BYTES,
} from './constants.ts';
import { subkeys } from './keys.ts';
import { corrupt } from './object-io.ts';

const gzipAsync = promisify(gzip);
const gunzipAsync = promisify(gunzip);

const FINGERPRINT_BYTES = 16;
const HEADER_BYTES = MANIFEST_MAGIC.length + FINGERPRINT_BYTES + NONCE_BYTES;
/** gzip never makes this JSON larger, so the sealed object is bounded by the JSON bound. */
export const MAX_MANIFEST_OBJECT_BYTES = HEADER_BYTES + MAX_MANIFEST_JSON_BYTES + TAG_BYTES;

const Fingerprint = z.string().regex(/^[0-9a-f]{16}$/);

export const ManifestVolume = z
  .strictObject({
    name: BackupVolumeName,
    /** The disk's size in bytes as the guest sees it. */
    size: z.number().int().min(0).max(MAX_VOLUME_BYTES),
    /** One entry per chunk: its id, or null for a chunk of zeros (not stored). */
    chunks: z.array(z.string().regex(CHUNK_ID).nullable()).max(MAX_VOLUME_BYTES / CHUNK_SIZE),
    /** One character per chunk: `t` sealed under the tenant key, `i` under the image key, `0` zeros. */
    domains: z
      .string()
      .max(MAX_VOLUME_BYTES / CHUNK_SIZE)
      .regex(/^[ti0]*$/),
  })
  .superRefine((v, ctx) => {
    const count = Math.ceil(v.size / CHUNK_SIZE);
    if (v.chunks.length !== count || v.domains.length !== count) {
      ctx.addIssue({
        code: 'custom',
        message: `a volume of ${v.size} bytes has ${count} chunks, not ${v.chunks.length} (domains ${v.domains.length})`,
      });
      return;
    }
    for (let i = 0; i < count; i++) {
      if ((v.chunks[i] === null) !== (v.domains[i] === '0')) {
        ctx.addIssue({ code: 'custom', message: `chunk ${i}: the id and the domain disagree about zeros` });
        return;
      }
    }
  });
export type ManifestVolume = z.infer<typeof ManifestVolume>;

export const Manifest = z
  .strictObject({
    version: z.literal(1),
    id: BackupId,
    createdAt: z.iso.datetime(),
    pointInTime: z.iso.datetime(),
    metadata: BackupMetadata,
    chunkSize: z.literal(CHUNK_SIZE),
    /** keyFingerprint of the image key the `i` chunks are sealed with; null when there are none. */
    imageFingerprint: Fingerprint.nullable(),
    volumes: z.array(ManifestVolume).max(BackupVolumeName.options.length),
  })
  .superRefine((m, ctx) => {
    const names = m.volumes.map((v) => v.name);
    if (new Set(names).size !== names.length)
      ctx.addIssue({ code: 'custom', message: `a volume is listed twice (${names.join(', ')})` });
    if (m.imageFingerprint === null && m.volumes.some((v) => v.domains.includes('i')))
      ctx.addIssue({ code: 'custom', message: 'image chunks are listed but no image key' });
  });
export type Manifest = z.infer<typeof Manifest>;

function aad(fingerprint: string, backupId: string): Buffer {
  return Buffer.concat([MANIFEST_MAGIC, Buffer.from(fingerprint, 'ascii'), Buffer.from(backupId, 'ascii')]);
}

/** The manifest object. Refuses (INVALID_ARGUMENT) a manifest that would not open again. */
export async function sealManifest(tenantKey: Buffer, manifest: Manifest): Promise<Buffer> {
  const checked = Manifest.safeParse(manifest);
  if (!checked.success)
    throw new WarrenError(
      'INVALID_ARGUMENT',
      `manifest of ${manifest.id} refused: ${z.prettifyError(checked.error)}`,
    );
  const keys = subkeys(tenantKey);
  const json = Buffer.from(JSON.stringify(checked.data));
  if (json.length > MAX_MANIFEST_JSON_BYTES)
    throw new WarrenError(
      'INVALID_ARGUMENT',
      `manifest of ${manifest.id} is larger than ${MAX_MANIFEST_JSON_BYTES} bytes`,
    );
  const body = await gzipAsync(json);
  const nonce = randomBytes(NONCE_BYTES);
  const cipher = createCipheriv('aes-256-gcm', keys.manifestSeal, nonce);
  cipher.setAAD(aad(keys.fingerprint, manifest.id));
  return Buffer.concat([
    MANIFEST_MAGIC,
    Buffer.from(keys.fingerprint, 'ascii'),
    nonce,
    cipher.update(body),
    cipher.final(),
    cipher.getAuthTag(),
  ]);
}

/** The gzip body of a sealed manifest, or undefined when it does not authenticate under `key` and `additional`. */
function decrypt(key: Buffer, sealed: Buffer, additional: Buffer): Buffer | undefined {
  const decipher = createDecipheriv(
    'aes-256-gcm',
    key,
    sealed.subarray(HEADER_BYTES - NONCE_BYTES, HEADER_BYTES),
  );
  decipher.setAAD(additional);
  decipher.setAuthTag(sealed.subarray(sealed.length - TAG_BYTES));
  try {
    return Buffer.concat([
      decipher.update(sealed.subarray(HEADER_BYTES, sealed.length - TAG_BYTES)),
      decipher.final(),
    ]);
  } catch {
    return undefined;
  }
}

/**
 * The manifest in `sealed`, which was read from `manifests/<backupId>`. BACKUP_KEY_REJECTED when
 * it was sealed under another tenant key; BACKUP_CORRUPT for anything else wrong.
 */
export async function openManifest(tenantKey: Buffer, backupId: string, sealed: Buffer): Promise<Manifest> {
  const key = manifestObjectKey(backupId);
  const bad = (why: string, cause?: unknown) => corrupt(backupId, key, why, cause);
  if (sealed.length < HEADER_BYTES + TAG_BYTES || sealed.length > MAX_MANIFEST_OBJECT_BYTES)
    throw bad(`has an impossible size (${sealed.length} bytes)`);
  if (!sealed.subarray(0, MANIFEST_MAGIC.length).equals(MANIFEST_MAGIC))
    throw bad('is not a manifest (bad magic)');
  const fingerprint = sealed
    .subarray(MANIFEST_MAGIC.length, MANIFEST_MAGIC.length + FINGERPRINT_BYTES)
    .toString('latin1');
  if (!Fingerprint.safeParse(fingerprint).success) throw bad('has a damaged key fingerprint');
  const keys = subkeys(tenantKey);
  const ours = aad(keys.fingerprint, backupId);
  if (fingerprint !== keys.fingerprint) {
    // Not our fingerprint: a wrong key, unless the manifest opens as ours, in which case the
    // clear fingerprint itself is what was damaged.
    if (decrypt(keys.manifestSeal, sealed, ours)) throw bad('has a damaged key fingerprint');
    throw new WarrenError(
      'BACKUP_KEY_REJECTED',
      `backup ${backupId} was sealed with tenant key ${fingerprint}, not with the key given (${keys.fingerprint})`,
      { details: { backup: backupId, object: key } },
    );
  }
  const body = decrypt(keys.manifestSeal, sealed, ours);
  if (!body) throw bad('does not authenticate (changed, or not the manifest of this backup)');
  let json: Buffer;
  try {
    json = await gunzipAsync(body, { maxOutputLength: MAX_MANIFEST_JSON_BYTES });
  } catch (err) {
    throw bad(`does not decompress to at most ${MAX_MANIFEST_JSON_BYTES} bytes`, err);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(json.toString('utf8'));
  } catch (err) {
    throw bad('is not JSON', err);
  }
  const checked = Manifest.safeParse(parsed);
  if (!checked.success) throw bad(`is not a valid manifest: ${z.prettifyError(checked.error).slice(0, 500)}`);
  if (checked.data.id !== backupId) throw bad(`names another backup (${checked.data.id})`);
  return checked.data;
}
