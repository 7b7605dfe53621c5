/**
 * Real volumes for the backup tests: files made of chunks with a chosen kind each (zeros,
 * pseudo-random, text), deterministic so that every run stores the same bytes, plus the object
 * stores (fs and a real S3 server) the tests run against, and ways to tamper with objects.
 */
import assert from 'node:assert/strict';
import { createCipheriv, createHash } from 'node:crypto';
import { mkdtemp, open, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CreateBucketCommand, S3Client } from '@aws-sdk/client-s3';
import { CHUNK_SIZE, type VolumeSource } from '@warren/backup';
import { createObjectStore, type ObjectStore } from '@warren/object-store';
import type { BackupMetadata } from '@warren/protocol';
import { type S3Server, startS3Server } from './s3-server.ts';

/** `length` bytes that look random, the same for the same seed (AES-CTR keystream). */
export function pseudoRandom(seed: string, length: number): Buffer {
  const key = createHash('sha256').update(seed).digest();
  return createCipheriv('aes-256-ctr', key, Buffer.alloc(16)).update(Buffer.alloc(length));
}

/** Compressible text of `length` bytes that names `seed`, as a file's content would. */
export function text(seed: string, length: number): Buffer {
  const lines: string[] = [];
  let size = 0;
  for (let i = 0; size < length; i++) {
    const line = `${seed} line ${i}: the quick brown fox jumps over the lazy dog\n`;
    lines.push(line);
    size += line.length;
  }
  return Buffer.from(lines.join('')).subarray(0, length);
}

/**
 * A chunk's content by kind: `z` zeros, `r` pseudo-random, `t` text; the seed makes two chunks
 * of one kind differ.
 */
export function chunkOf(kind: string, seed: string, length = CHUNK_SIZE): Buffer {
  if (kind === 'z') return Buffer.alloc(length);
  if (kind === 'r') return pseudoRandom(seed, length);
  if (kind === 't') return text(seed, length);
  throw new Error(`unknown chunk kind ${kind}`);
}

/** Writes a volume of `layout.length` chunks (the last `tailShort` bytes short) and returns its size. */
export async function writeVolume(
  path: string,
  layout: string,
  seed: string,
  tailShort = 0,
): Promise<number> {
  const size = layout.length * CHUNK_SIZE - tailShort;
  const handle = await open(path, 'w');
  try {
    await handle.truncate(size);
    for (let i = 0; i < layout.length; i++) {
      const kind = layout[i]!;
      if (kind === 'z') continue;
      const length = Math.min(CHUNK_SIZE, size - i * CHUNK_SIZE);
      await handle.write(chunkOf(kind, `${seed}/${i}`, length), 0, length, i * CHUNK_SIZE);
    }
  } finally {
    await handle.close();
  }
  return size;
}

/** Overwrites chunk `index` of a volume file with `content`. */
export async function overwriteChunk(path: string, index: number, content: Buffer): Promise<void> {
  const handle = await open(path, 'r+');
  try {
    await handle.write(content, 0, content.length, index * CHUNK_SIZE);
  } finally {
    await handle.close();
  }
}

/** A VolumeSource reading a file; tracks the largest number of reads in flight at once. */
export function fileSource(
  path: string,
  size: number,
  extra: Partial<VolumeSource> = {},
): VolumeSource & { reads: number[]; maxInFlight: () => number } {
  let inFlight = 0;
  let max = 0;
  const reads: number[] = [];
  return {
    name: 'data',
    size,
    reads,
    maxInFlight: () => max,
    async read(offset, length) {
      inFlight++;
      max = Math.max(max, inFlight);
      reads.push(offset / CHUNK_SIZE);
      try {
        const handle = await open(path, 'r');
        try {
          const buf = Buffer.alloc(length);
          const { bytesRead } = await handle.read(buf, 0, length, offset);
          return buf.subarray(0, bytesRead);
        } finally {
          await handle.close();
        }
      } finally {
        inFlight--;
      }
    },
    ...extra,
  };
}

/** A restore target as the host agent makes it: a pre-sized sparse file written at offsets. */
export async function restoreTarget(path: string, size: number) {
  const handle = await open(path, 'w');
  await handle.truncate(size);
  return {
    write: async (offset: number, buf: Buffer) => {
      await handle.write(buf, 0, buf.length, offset);
    },
    close: () => handle.close(),
  };
}

export async function sha256File(path: string): Promise<string> {
  return createHash('sha256')
    .update(await readFile(path))
    .digest('hex');
}

export const metadata = (tenantName = 'acme-research'): BackupMetadata => ({
  tenantId: 'ten_0123456789abcdef',
  tenantName,
  imageId: 'img_default',
  resources: { vcpus: 1, memoryMiB: 512, diskMiB: 16 },
  network: null,
});

/** Every object in the store (key and size), sorted by key. */
export async function listAll(store: ObjectStore, prefix = ''): Promise<{ key: string; size: number }[]> {
  const out: { key: string; size: number }[] = [];
  for await (const item of store.list(prefix)) out.push(item);
  return out.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
}

export async function readObject(store: ObjectStore, key: string): Promise<Buffer> {
  return Buffer.concat(await (await store.get(key)).toArray());
}

export interface Backend {
  label: string;
  /** A fresh, empty store of this backend. */
  make(): Promise<ObjectStore>;
  /** Replaces an object's bytes behind the store's back (fs: the file under its root). */
  replace(store: ObjectStore, key: string, bytes: Buffer): Promise<void>;
}

/**
 * The two backends. Each `make` is a fresh empty store: a new directory for fs, a new bucket on
 * one real S3 server (s3rver) for S3, so tests can count what a backup stored.
 */
export async function backends(): Promise<{
  list: Backend[];
  dir: string;
  s3: S3Server;
  cleanup(): Promise<void>;
}> {
  const dir = await mkdtemp(join(tmpdir(), 'wbackup-'));
  const s3 = await startS3Server(join(dir, 's3rver'), 'warren-backups');
  const admin = new S3Client({
    endpoint: s3.endpoint,
    region: 'us-east-1',
    forcePathStyle: true,
    credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' },
  });
  let count = 0;
  const roots = new Map<ObjectStore, string>();
  const stores: ObjectStore[] = [];
  const list: Backend[] = [
    {
      label: 'fs',
      async make() {
        const root = join(dir, `fs-${count++}`);
        const store = createObjectStore({ kind: 'fs', root });
        roots.set(store, root);
        return store;
      },
      async replace(store, key, bytes) {
        const root = roots.get(store);
        assert.ok(root);
        await writeFile(join(root, key), bytes);
      },
    },
    {
      label: 's3',
      async make() {
        const bucket = `warren-backups-${count++}`;
        await admin.send(new CreateBucketCommand({ Bucket: bucket }));
        const store = createObjectStore({
          kind: 's3',
          endpoint: s3.endpoint,
          bucket,
          accessKeyId: 'S3RVER',
          secretAccessKey: 'S3RVER',
          forcePathStyle: true,
        });
        stores.push(store);
        return store;
      },
      async replace(store, key, bytes) {
        await store.put(key, bytes);
      },
    },
  ];
  return {
    list,
    dir,
    s3,
    async cleanup() {
      for (const store of stores) await store.close();
      admin.destroy();
      await s3.stop();
      await rm(dir, { recursive: true, force: true });
    },
  };
}
