/**
 * The object-store contract: every backend runs the same suite, the way every store dialect
 * runs test/api/store.test.ts. The S3 backend talks to a real S3-protocol server (s3rver) that
 * this file starts on loopback with its own temp directory and bucket.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { CreateMultipartUploadCommand, S3Client, UploadPartCommand } from '@aws-sdk/client-s3';
import {
  createObjectStore,
  MAX_KEY_LENGTH,
  MAX_SEGMENT_LENGTH,
  MIN_PART_SIZE_BYTES,
  type ObjectStore,
} from '@warren/object-store';
import { WarrenError } from '@warren/protocol';
import { startS3Server } from '../helpers/s3-server.ts';

const MiB = 1024 * 1024;
const BUCKET = 'warren-contract';
const SECRET = 'S3RVER';

const dir = await mkdtemp(join(tmpdir(), 'wobjects-'));
const s3 = await startS3Server(join(dir, 's3rver'), BUCKET);
const endpoint = s3.endpoint;
after(async () => {
  await s3.stop();
  await rm(dir, { recursive: true, force: true });
});

const s3Config = {
  kind: 's3' as const,
  endpoint,
  region: 'us-east-1',
  bucket: BUCKET,
  accessKeyId: 'S3RVER',
  secretAccessKey: SECRET,
  forcePathStyle: true,
  // The smallest parts and pages the protocol allows, so 40 MiB is 8 parts and lists page.
  partSizeBytes: MIN_PART_SIZE_BYTES,
  listPageSize: 7,
};
/** The S3 requests seen since `from` whose method and URL match. */
const requestsSince = (from: number, re: RegExp) => s3.requests.slice(from).filter((r) => re.test(r));

const BACKENDS: { label: string; make: () => ObjectStore }[] = [
  { label: 'fs', make: () => createObjectStore({ kind: 'fs', root: join(dir, 'fs-root') }) },
  { label: 's3 (s3rver)', make: () => createObjectStore(s3Config) },
];

/** `size` deterministic bytes (a hash chain), streamed in 1 MiB chunks, optionally failing at `failAt`. */
function body(seed: string, size: number, failAt?: number): { stream: Readable; digest: string } {
  const whole = createHash('sha256');
  const chunks: Buffer[] = [];
  let block = createHash('sha256').update(seed).digest();
  for (let off = 0; off < size; off += MiB) {
    const chunk = Buffer.alloc(Math.min(MiB, size - off));
    for (let i = 0; i < chunk.length; i += 32) {
      block.copy(chunk, i);
      block = createHash('sha256').update(block).digest();
    }
    whole.update(chunk);
    chunks.push(chunk);
  }
  const digest = whole.digest('hex');
  let sent = 0;
  const stream = new Readable({
    read() {
      if (failAt !== undefined && sent >= failAt) {
        this.destroy(new Error('the source disk went away'));
        return;
      }
      const next = chunks.shift();
      sent += next?.length ?? 0;
      this.push(next ?? null);
    },
  });
  return { stream, digest };
}

async function digestOf(stream: Readable): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of stream) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/** The keys `list` yields, sorted: S3 lists in byte order, but not every S3-compatible server does. */
async function keys(store: ObjectStore, prefix: string): Promise<string[]> {
  const out: string[] = [];
  for await (const item of store.list(prefix)) out.push(item.key);
  return out.sort(byteOrder);
}

const byteOrder = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);

async function rejectsWith(p: Promise<unknown>, code: string): Promise<void> {
  await assert.rejects(p, (err: unknown) => {
    assert.ok(err instanceof WarrenError, String(err));
    assert.equal(err.code, code, err.message);
    return true;
  });
}

for (const { label, make } of BACKENDS) {
  describe(`object-store contract: ${label}`, () => {
    let store: ObjectStore;
    before(() => {
      store = make();
    });
    after(() => store.close());

    test('a small object round-trips; head reports its size', async () => {
      const data = Buffer.from('hello, warren\n');
      await store.put('small/hello.txt', data, { contentLength: data.length });
      assert.deepEqual(await store.head('small/hello.txt'), { size: data.length });
      assert.equal((await (await store.get('small/hello.txt')).toArray()).join(''), 'hello, warren\n');
    });

    test('an empty object round-trips', async () => {
      await store.put('small/empty', Buffer.alloc(0));
      assert.deepEqual(await store.head('small/empty'), { size: 0 });
      assert.equal(await digestOf(await store.get('small/empty')), createHash('sha256').digest('hex'));
    });

    test('a 40 MiB object streams up and back with the same digest', async () => {
      const { stream, digest } = body('large', 40 * MiB);
      const seen = s3.requests.length;
      await store.put('large/volume.img', stream);
      assert.deepEqual(await store.head('large/volume.img'), { size: 40 * MiB });
      assert.equal(await digestOf(await store.get('large/volume.img')), digest);
      if (label.startsWith('s3')) {
        // 40 MiB in 5 MiB parts: eight UploadPart requests, no single PUT of the whole.
        assert.equal(
          requestsSince(seen, /^PUT \/[^ ]*large\/volume\.img\?.*partNumber=/).length,
          8,
          String(s3.requests.slice(seen)),
        );
      }
    });

    test('a missing key: head is undefined, get is NOT_FOUND', async () => {
      assert.equal(await store.head('nope/missing'), undefined);
      await rejectsWith(store.get('nope/missing'), 'NOT_FOUND');
    });

    test('list: by prefix, across pages', async () => {
      const expected: string[] = [];
      for (let i = 0; i < 23; i++) expected.push(`list/a/${String(i).padStart(2, '0')}`);
      // No 'list/a-x' here: s3rver pages in its directory-walk order but resumes after a key in
      // byte order, so it drops keys that sort between; real S3 does not.
      expected.push('list/b/deep/er/z', 'list/ab', 'list/ab.c_d');
      await Promise.all(expected.map((k) => store.put(k, Buffer.from(k))));
      const sorted = [...expected].sort(byteOrder);
      assert.deepEqual(await keys(store, 'list/'), sorted);
      assert.deepEqual(
        await keys(store, 'list/a'),
        sorted.filter((k) => k.startsWith('list/a')),
      );
      assert.deepEqual(
        await keys(store, 'list/a/'),
        sorted.filter((k) => k.startsWith('list/a/')),
      );
      assert.deepEqual(await keys(store, 'list/b/deep/'), ['list/b/deep/er/z']);
      assert.deepEqual(await keys(store, 'list/zzz'), []);
      const sizes = [];
      for await (const item of store.list('list/ab.')) sizes.push(item);
      assert.deepEqual(sizes, [{ key: 'list/ab.c_d', size: 'list/ab.c_d'.length }]);
    });

    test('delete removes the object and is idempotent', async () => {
      await store.put('del/one', Buffer.from('x'));
      await store.delete('del/one');
      await store.delete('del/one');
      await store.delete('del/never-was');
      assert.equal(await store.head('del/one'), undefined);
      assert.deepEqual(await keys(store, 'del/'), []);
    });

    test('keys that could name another path, or that not every backend accepts, are refused', async () => {
      const bad = [
        '../x',
        '../../etc/passwd',
        'a/../../x',
        '/abs',
        '',
        'a//b',
        'a/',
        './a',
        'a/./b',
        '.hidden',
        'A',
        'a b',
        'a\\b',
        'a\0b',
        'é',
        'x'.repeat(MAX_KEY_LENGTH + 1),
      ];
      for (const key of bad) {
        await rejectsWith(store.put(key, Buffer.from('attack')), 'INVALID_ARGUMENT');
        await rejectsWith(store.get(key), 'INVALID_ARGUMENT');
        await rejectsWith(store.head(key), 'INVALID_ARGUMENT');
        await rejectsWith(store.delete(key), 'INVALID_ARGUMENT');
      }
      for (const prefix of ['../', '/', '..', 'a//', 'A']) {
        await rejectsWith(keys(store, prefix), 'INVALID_ARGUMENT');
      }
      // Nothing was written beside or above the fs root.
      assert.equal(existsSync(join(dir, 'x')), false);
      assert.equal(existsSync(join(dir, 'abs')), false);
      const longest = `${'x'.repeat(MAX_SEGMENT_LENGTH)}/`.repeat(4).slice(0, MAX_KEY_LENGTH);
      await store.put(longest, Buffer.from('longest'));
      assert.deepEqual(await store.head(longest), { size: 7 });
    });

    test('a body shorter or longer than contentLength is refused and not stored', async () => {
      await rejectsWith(store.put('len/short', Buffer.from('abc'), { contentLength: 4 }), 'INVALID_ARGUMENT');
      await rejectsWith(
        store.put('len/long', Buffer.from('abcde'), { contentLength: 4 }),
        'INVALID_ARGUMENT',
      );
      assert.deepEqual(await keys(store, 'len/'), []);
    });

    test('concurrent puts of one key leave one complete object', async () => {
      const a = body('writer-a', 12 * MiB);
      const b = body('writer-b', 12 * MiB);
      await Promise.all([store.put('race/key', a.stream), store.put('race/key', b.stream)]);
      const got = await digestOf(await store.get('race/key'));
      assert.ok(got === a.digest || got === b.digest, "the object is neither writer's whole body");
      assert.deepEqual(await keys(store, 'race/'), ['race/key']);
    });

    test('a put whose body fails half-way leaves no object, and an older one intact', async () => {
      const seen = s3.requests.length;
      const { stream } = body('broken', 20 * MiB, 11 * MiB);
      await assert.rejects(store.put('atomic/new', stream));
      assert.equal(await store.head('atomic/new'), undefined);
      await rejectsWith(store.get('atomic/new'), 'NOT_FOUND');
      assert.deepEqual(await keys(store, 'atomic/'), []);

      await store.put('atomic/old', Buffer.from('the previous backup'));
      const again = body('broken-again', 20 * MiB, 11 * MiB);
      await assert.rejects(store.put('atomic/old', again.stream));
      assert.equal((await (await store.get('atomic/old')).toArray()).join(''), 'the previous backup');
      assert.deepEqual(await keys(store, 'atomic/'), ['atomic/old']);

      if (label === 'fs') {
        // No temporary file is left behind either.
        assert.deepEqual(await readdir(join(dir, 'fs-root', 'atomic')), ['old']);
      } else {
        // Both failed multipart uploads were aborted, so their parts do not linger in the bucket.
        const aborts = requestsSince(seen, /^DELETE \/[^ ]*atomic\/[a-z]+\?.*uploadId=/);
        assert.equal(aborts.length, 2, String(s3.requests.slice(seen)));
      }
    });

    test('collectIncomplete removes only incomplete uploads older than the cutoff', async (t) => {
      await store.put('inc/done', Buffer.from('a finished object'));
      await rejectsWith(store.collectIncomplete(-1), 'INVALID_ARGUMENT');
      if (label === 'fs') {
        // What a put that crashed before its rename leaves: temporary files beside the target.
        const folder = join(dir, 'fs-root', 'inc');
        await writeFile(join(folder, '.tmp-crashed-long-ago'), 'part of a body');
        const old = new Date(Date.now() - 2 * 3_600_000);
        await utimes(join(folder, '.tmp-crashed-long-ago'), old, old);
        await writeFile(join(folder, '.tmp-still-writing'), 'part of another');
        assert.deepEqual(await store.collectIncomplete(3_600_000), { removed: 1 });
        assert.deepEqual((await readdir(folder)).sort(), ['.tmp-still-writing', 'done']);
        assert.deepEqual(await store.collectIncomplete(0), { removed: 1 });
        assert.deepEqual(await readdir(folder), ['done']);
      } else {
        // An upload whose process died after its first part: started, never completed.
        const client = new S3Client({
          endpoint,
          region: 'us-east-1',
          forcePathStyle: true,
          credentials: { accessKeyId: 'S3RVER', secretAccessKey: SECRET },
        });
        try {
          const { UploadId } = await client.send(
            new CreateMultipartUploadCommand({ Bucket: BUCKET, Key: 'inc/abandoned' }),
          );
          await client.send(
            new UploadPartCommand({
              Bucket: BUCKET,
              Key: 'inc/abandoned',
              UploadId,
              PartNumber: 1,
              Body: Buffer.alloc(MIN_PART_SIZE_BYTES),
            }),
          );
        } finally {
          client.destroy();
        }
        const seen = s3.requests.length;
        const young = await store.collectIncomplete(3_600_000);
        assert.equal(
          requestsSince(seen, /^GET \/warren-contract\/?\?(.*&)?uploads=?(&|$)/).length,
          1,
          String(s3.requests.slice(seen)),
        );
        if (young.unsupported) {
          // s3rver answers ListMultipartUploads with 501 NotImplemented; real S3 and MinIO list.
          assert.deepEqual(young, { removed: 0, unsupported: young.unsupported });
          assert.match(young.unsupported, /NotImplemented/);
          const reason = `s3rver: ${young.unsupported}, so aborting old multipart uploads is untested here`;
          console.log(`skip: ${reason}`);
          t.skip(reason);
        } else {
          assert.deepEqual(young, { removed: 0 });
          assert.deepEqual(await store.collectIncomplete(0), { removed: 1 });
        }
      }
      assert.equal((await (await store.get('inc/done')).toArray()).join(''), 'a finished object');
      assert.deepEqual(await keys(store, 'inc/'), ['inc/done']);
    });
  });
}

describe('object-store: filesystem backend specifics', () => {
  test('files are 0600 and directories 0700 even under a permissive umask', async () => {
    const old = process.umask(0);
    try {
      const root = join(dir, 'perm-root');
      const store = createObjectStore({ kind: 'fs', root });
      await store.put('p/q/r', Buffer.from('secret'));
      assert.equal((await stat(root)).mode & 0o777, 0o700);
      assert.equal((await stat(join(root, 'p'))).mode & 0o777, 0o700);
      assert.equal((await stat(join(root, 'p', 'q'))).mode & 0o777, 0o700);
      assert.equal((await stat(join(root, 'p', 'q', 'r'))).mode & 0o777, 0o600);
    } finally {
      process.umask(old);
    }
  });

  test('list yields keys in byte order, as S3 does', async () => {
    const store = createObjectStore({ kind: 'fs', root: join(dir, 'order-root') });
    const all = ['a/b', 'a-x', 'a.y', 'a0', 'b/c/d', 'b-', 'ab'];
    for (const k of all) await store.put(k, Buffer.from(k));
    const listed: string[] = [];
    for await (const item of store.list('')) listed.push(item.key);
    assert.deepEqual(listed, [...all].sort(byteOrder));
  });

  test('a key used both as an object and as a directory is a CONFLICT, not a crash', async () => {
    const store = createObjectStore({ kind: 'fs', root: join(dir, 'conflict-root') });
    await store.put('a/b', Buffer.from('1'));
    await rejectsWith(store.put('a', Buffer.from('2')), 'CONFLICT');
    await rejectsWith(store.put('a/b/c', Buffer.from('3')), 'CONFLICT');
    // `a` is only a directory here: no object, as on S3.
    assert.equal(await store.head('a'), undefined);
    await rejectsWith(store.get('a'), 'NOT_FOUND');
    assert.deepEqual(await keys(store, ''), ['a/b']);
  });
});

describe('object-store: configuration and failures', () => {
  test('an invalid configuration is refused without echoing the secret', () => {
    assert.throws(
      () => createObjectStore({ ...s3Config, endpoint: 'not a url', secretAccessKey: 'hunter2-secret' }),
      (err: unknown) => {
        assert.ok(err instanceof WarrenError);
        assert.equal(err.code, 'INVALID_ARGUMENT');
        assert.match(err.message, /endpoint/);
        assert.doesNotMatch(err.message, /hunter2/);
        return true;
      },
    );
    assert.throws(() => createObjectStore({ kind: 'fs', root: 'relative/dir' }), /absolute/);
    assert.throws(() => createObjectStore({ ...s3Config, partSizeBytes: 1024 }), /partSizeBytes/);
  });

  test('an unreachable S3 server is OBJECT_STORE_UNAVAILABLE after the retries, secret not in the message', async () => {
    // A port that was just free: nothing listens there.
    const probe = createServer();
    await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
    const deadPort = (probe.address() as { port: number }).port;
    await new Promise<void>((resolve) => probe.close(() => resolve()));
    const store = createObjectStore({
      ...s3Config,
      endpoint: `http://127.0.0.1:${deadPort}`,
      secretAccessKey: 'hunter2-secret',
      maxAttempts: 2,
    });
    try {
      for (const op of [
        () => store.head('k'),
        () => store.put('k', Buffer.from('x')),
        () => keys(store, ''),
      ]) {
        await assert.rejects(op(), (err: unknown) => {
          assert.ok(err instanceof WarrenError, String(err));
          assert.equal(err.code, 'OBJECT_STORE_UNAVAILABLE', err.message);
          assert.doesNotMatch(err.message, /hunter2/);
          return true;
        });
      }
    } finally {
      await store.close();
    }
  });

  test('wrong credentials are OBJECT_STORE_UNAVAILABLE, not NOT_FOUND', async () => {
    const store = createObjectStore({ ...s3Config, accessKeyId: 'NOBODY', maxAttempts: 1 });
    try {
      await rejectsWith(store.get('small/hello.txt'), 'OBJECT_STORE_UNAVAILABLE');
    } finally {
      await store.close();
    }
  });
});
