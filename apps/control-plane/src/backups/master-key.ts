import { randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { link, lstat, mkdir, open, unlink } from 'node:fs/promises';
import { dirname } from 'node:path';
import { KEY_BYTES, keyFingerprint, newKey } from '@warren/backup';
import { WarrenError } from '@warren/protocol';

/**
 * The platform master key: 32 raw bytes in a file only its owner may read. Made at first start
 * when the file is absent (0600, fsynced, linked into place, so two starts cannot both write
 * one, nor a crash leave a short one); otherwise read and refused unless it is a regular file of exactly 32 bytes that no group
 * or other user can read or write. It never goes to the database, a log line or the object store.
 */
export async function loadMasterKey(path: string, log: (m: string) => void = () => {}): Promise<Buffer> {
  const made = await create(path);
  if (made) {
    log(
      `made the platform master key ${path} (fingerprint ${keyFingerprint(made)}); keep a copy apart from the backups`,
    );
    return made;
  }
  const refuse = (why: string): never => {
    throw new WarrenError(
      'INVALID_ARGUMENT',
      `WARREN_MASTER_KEY_FILE ${path}: ${why}; the master key must be a file of ${KEY_BYTES} bytes readable by the control plane's user only (chmod 600), see docs/operations.md`,
    );
  };
  let fh: Awaited<ReturnType<typeof open>>;
  try {
    // O_NOFOLLOW: a symlink planted in the data directory does not choose the key.
    fh = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW);
  } catch (e) {
    return refuse(`cannot be read (${(e as NodeJS.ErrnoException).code ?? String(e)})`);
  }
  try {
    const st = await fh.stat();
    if (!st.isFile()) return refuse('is not a regular file');
    if ((st.mode & 0o077) !== 0)
      return refuse(`is accessible to group or others (mode ${(st.mode & 0o777).toString(8)})`);
    if (st.size !== KEY_BYTES) return refuse(`is ${st.size} bytes, not ${KEY_BYTES}`);
    const key = Buffer.alloc(KEY_BYTES);
    const { bytesRead } = await fh.read(key, 0, KEY_BYTES, 0);
    if (bytesRead !== KEY_BYTES) return refuse(`gave ${bytesRead} bytes, not ${KEY_BYTES}`);
    return key;
  } finally {
    await fh.close();
  }
}

/**
 * Writes a new key to a temporary file, fsyncs it, then links it into place: the link fails if
 * the file exists, so a crash never leaves a short key behind and two starts never both win.
 */
async function create(path: string): Promise<Buffer | undefined> {
  await mkdir(dirname(path), { recursive: true, mode: 0o700 });
  try {
    await lstat(path);
    return undefined;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') return undefined; // reported by the read
  }
  const tmp = `${path}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
  const key = newKey();
  try {
    const fh = await open(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o600);
    try {
      await fh.writeFile(key);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await link(tmp, path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EEXIST') return undefined;
    throw new WarrenError(
      'INVALID_ARGUMENT',
      `WARREN_MASTER_KEY_FILE ${path}: cannot be created (${(e as NodeJS.ErrnoException).code ?? String(e)}); check that its directory is writable`,
    );
  } finally {
    await unlink(tmp).catch(() => {});
  }
  return key;
}
