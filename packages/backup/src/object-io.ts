/**
 * Reading objects of a backup. Every object is hostile input: it is read into memory only up to
 * the largest size the format allows, so a planted huge object costs a bounded amount.
 */
import type { ObjectStore } from '@warren/object-store';
import { WarrenError } from '@warren/protocol';

/** BACKUP_CORRUPT naming the backup and the object, the two things an operator needs to act. */
export function corrupt(backupId: string, key: string, why: string, cause?: unknown): WarrenError {
  return new WarrenError('BACKUP_CORRUPT', `backup ${backupId}: object ${key} ${why}`, {
    details: { backup: backupId, object: key },
    ...(cause === undefined ? {} : { cause }),
  });
}

/**
 * The object's bytes, or BACKUP_CORRUPT when it is missing or larger than `maxBytes`. Store
 * failures (OBJECT_STORE_UNAVAILABLE) pass through: they say nothing about the backup.
 */
export async function readBounded(
  store: ObjectStore,
  backupId: string,
  key: string,
  maxBytes: number,
): Promise<Buffer> {
  let stream: import('node:stream').Readable;
  try {
    stream = await store.get(key);
  } catch (err) {
    if (err instanceof WarrenError && err.code === 'NOT_FOUND')
      throw corrupt(backupId, key, 'is missing', err);
    throw err;
  }
  const parts: Buffer[] = [];
  let size = 0;
  try {
    for await (const part of stream) {
      size += (part as Buffer).length;
      if (size > maxBytes)
        throw corrupt(backupId, key, `is larger than the ${maxBytes} bytes the format allows`);
      parts.push(part as Buffer);
    }
  } catch (err) {
    if (err instanceof WarrenError) throw err;
    // The connection or the file failed mid-body: the store's fault, not the backup's.
    throw new WarrenError(
      'OBJECT_STORE_UNAVAILABLE',
      `object ${key}: reading it failed (${err instanceof Error ? err.message : String(err)})`,
      { cause: err },
    );
  } finally {
    stream.destroy();
  }
  return Buffer.concat(parts, size);
}
