/**
 * Backup and restore throughput of @warren/backup on the filesystem object store, per zstd
 * level (0 = uncompressed), to choose DEFAULT_ZSTD_LEVEL.
 *
 *   npm run bench:backup-format -- [--mib 256] [--concurrency 4]
 *
 * The volume is built from real files of this machine (programs, libraries and documentation
 * under /usr: what a root disk or a workspace of tools holds) for 60%, incompressible data (the
 * keystream of a seeded cipher, standing in for archives, media and encrypted files) for 20%,
 * and zeros (free space) for 20%, interleaved in 1 MiB chunks. Each level writes into a fresh
 * store, so every chunk is sealed and uploaded; the page cache holds the volume, so the figures
 * are of the pipeline (read, hash, compress, encrypt, write) rather than of the disk.
 *
 * Baseline in the same run: the same chunks put into and read back from the same store as they
 * are (no hashing, compression or encryption), at the same concurrency: the store's own cost.
 */
import { createCipheriv, createHash } from 'node:crypto';
import { mkdtemp, open, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { CHUNK_SIZE, newKey, readManifest, restoreVolume, writeBackup } from '@warren/backup';
import { createObjectStore } from '@warren/object-store';

const { values } = parseArgs({
  options: { mib: { type: 'string', default: '256' }, concurrency: { type: 'string', default: '4' } },
});
const chunks = Number(values.mib);
const concurrency = Number(values.concurrency);
const MB = 1e6;

/** Up to `bytes` of real files under `dir`, depth first. */
async function realFiles(dir: string, bytes: number, out: Buffer[] = [], got = { n: 0 }): Promise<Buffer[]> {
  let entries: import('node:fs').Dirent[];
  try {
    entries = await readdir(dir, { withFileTypes: true });
  } catch {
    return out;
  }
  for (const e of entries.sort((a, b) => (a.name < b.name ? -1 : 1))) {
    if (got.n >= bytes) break;
    const path = join(dir, e.name);
    if (e.isDirectory()) await realFiles(path, bytes, out, got);
    else if (e.isFile()) {
      const buf = await readFile(path).catch(() => undefined);
      if (buf?.length) {
        out.push(buf);
        got.n += buf.length;
      }
    }
  }
  return out;
}

const dir = await mkdtemp(join(tmpdir(), 'wbench-backup-'));
try {
  const volPath = join(dir, 'volume.img');
  const realBytes = Math.ceil(chunks * 0.6) * CHUNK_SIZE;
  const real = Buffer.concat(await realFiles('/usr', realBytes));
  const vol = await open(volPath, 'w');
  await vol.truncate(chunks * CHUNK_SIZE);
  let realAt = 0;
  for (let i = 0; i < chunks; i++) {
    const kind = i % 5; // 0,1,2: real files; 3: incompressible; 4: zeros
    if (kind === 4) continue;
    const chunk =
      kind === 3
        ? createCipheriv(
            'aes-256-ctr',
            createHash('sha256').update(`bench/${i}`).digest(),
            Buffer.alloc(16),
          ).update(Buffer.alloc(CHUNK_SIZE))
        : real.subarray(realAt, realAt + CHUNK_SIZE);
    if (kind !== 3) realAt += CHUNK_SIZE;
    await vol.write(chunk, 0, chunk.length, i * CHUNK_SIZE);
  }
  await vol.close();
  const size = chunks * CHUNK_SIZE;
  console.log(
    `volume: ${chunks} MiB (60% files from /usr, 20% incompressible, 20% zeros), concurrency ${concurrency}, fs store`,
  );

  const handle = await open(volPath, 'r');
  const read = async (offset: number, length: number) => {
    const buf = Buffer.alloc(length);
    await handle.read(buf, 0, length, offset);
    return buf;
  };
  {
    // Baseline: plain puts and gets of the non-zero chunks, through the same pool size.
    const store = createObjectStore({ kind: 'fs', root: join(dir, 'objects-plain') });
    const indexes = Array.from({ length: chunks }, (_, i) => i).filter((i) => i % 5 !== 4);
    const pool = async (fn: (i: number) => Promise<void>) => {
      let next = 0;
      await Promise.all(
        Array.from({ length: concurrency }, async () => {
          while (next < indexes.length) await fn(indexes[next++]!);
        }),
      );
    };
    let t = performance.now();
    await pool(async (i) => store.put(`plain/${i}`, await read(i * CHUNK_SIZE, CHUNK_SIZE)));
    const putS = (performance.now() - t) / 1000;
    t = performance.now();
    await pool(async (i) => {
      await (await store.get(`plain/${i}`)).toArray();
    });
    const getS = (performance.now() - t) / 1000;
    console.log(
      `baseline (plain put/get of the same chunks): ${(size / MB / putS).toFixed(0)} MB/s up, ${(size / MB / getS).toFixed(0)} MB/s down`,
    );
    await rm(join(dir, 'objects-plain'), { recursive: true });
  }
  for (const level of [0, 1, 3, 6]) {
    const store = createObjectStore({ kind: 'fs', root: join(dir, `objects-${level}`) });
    const tenant = newKey();
    const id = `bak_${String(level).padStart(16, '0')}`;
    let t = performance.now();
    const result = await writeBackup({
      store,
      keys: { tenant },
      id,
      pointInTime: new Date().toISOString(),
      metadata: {
        tenantId: 'ten_0123456789abcdef',
        tenantName: 'bench',
        imageId: 'img',
        resources: {},
        network: null,
      },
      volumes: [{ name: 'data', size, read }],
      concurrency,
      zstdLevel: level,
    });
    const backupS = (performance.now() - t) / 1000;
    const target = await open(join(dir, `restored-${level}.img`), 'w');
    await target.truncate(size);
    t = performance.now();
    const manifest = await readManifest(store, tenant, id);
    await restoreVolume({
      store,
      keys: { tenant },
      manifest,
      backupId: id,
      volume: 'data',
      concurrency,
      write: async (offset, buf) => {
        await target.write(buf, 0, buf.length, offset);
      },
    });
    const restoreS = (performance.now() - t) / 1000;
    await target.close();
    console.log(
      `zstd ${level === 0 ? 'off' : `level ${level}`}: backup ${(size / MB / backupS).toFixed(0)} MB/s, restore ${(
        size / MB / restoreS
      ).toFixed(0)} MB/s, stored ${(result.storedBytes / MB).toFixed(1)} MB (${(
        (100 * result.storedBytes) / size
      ).toFixed(0)}% of the volume)`,
    );
    await rm(join(dir, `objects-${level}`), { recursive: true });
    await rm(join(dir, `restored-${level}.img`));
  }
  await handle.close();
} finally {
  await rm(dir, { recursive: true, force: true });
}
