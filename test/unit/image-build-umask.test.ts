/**
 * `buildImage` refuses to run under a umask that takes read access from group or others: the
 * guest's files would keep those modes and its agent user could not run /bin/sh. It refuses
 * before it creates anything.
 */
import assert from 'node:assert/strict';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { buildImage, currentUmask, ImageStore } from '@warren/images';
import { WarrenError } from '@warren/protocol';

const dir = await mkdtemp(join(tmpdir(), 'wt-umask-'));
after(() => rm(dir, { recursive: true, force: true }));

async function underUmask<T>(umask: number, fn: () => Promise<T>): Promise<T> {
  const before = process.umask(umask);
  try {
    return await fn();
  } finally {
    process.umask(before);
  }
}

test('currentUmask reads the umask without changing it', async () => {
  await underUmask(0o027, async () => {
    assert.equal(currentUmask(), 0o027);
    assert.equal(currentUmask(), 0o027);
  });
});

for (const umask of [0o077, 0o027, 0o007 | 0o040]) {
  test(`under umask ${umask.toString(8).padStart(4, '0')} the build is refused, with the reason`, async () => {
    const store = join(dir, `store-${umask.toString(8)}`);
    const cacheDir = join(dir, `cache-${umask.toString(8)}`);
    const progress: unknown[] = [];
    const err = await underUmask(umask, () =>
      buildImage(new ImageStore(store), {
        profile: 'minimal',
        cacheDir,
        onProgress: (p) => progress.push(p),
      }).then(
        () => assert.fail('the build ran'),
        (e) => e,
      ),
    );
    assert.ok(err instanceof WarrenError, String(err));
    assert.equal(err.code, 'IMAGE_BUILD_FAILED');
    assert.match(err.message, new RegExp(`umask ${umask.toString(8).padStart(4, '0')}`));
    assert.match(err.message, /umask 022/);
    assert.deepEqual(progress, []);
    assert.deepEqual(
      await readdir(dir).then((names) => names.filter((n) => n.endsWith(umask.toString(8)))),
      [],
    );
  });
}
