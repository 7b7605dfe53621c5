/** The `warren` command as a user runs it: image build caching and `vm run`. */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { minimalImage, REPO_ROOT, TEST_IMAGES_DIR } from '../helpers/image.ts';

describe('warren CLI', { timeout: 600_000 }, () => {
  let dataDir: string;
  before(async () => {
    await minimalImage();
    dataDir = await mkdtemp(join(tmpdir(), 'wt-cli-'));
  });
  after(() => rm(dataDir, { recursive: true, force: true }));

  const warren = (...args: string[]) =>
    spawnSync(join(REPO_ROOT, 'node_modules', '.bin', 'warren'), args, {
      env: {
        ...process.env,
        WARREN_DATA_DIR: dataDir,
        WARREN_IMAGES_DIR: TEST_IMAGES_DIR,
        WARREN_NETWORK: 'off',
      },
      encoding: 'utf8',
      timeout: 300_000,
    });

  test('image build of a cached recipe is a cache hit and prints the image id last', () => {
    const started = Date.now();
    const r = warren('image', 'build', '--profile', 'minimal');
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stderr, /cache hit/);
    assert.match(r.stdout.trim().split('\n').at(-1)!, /^sha256:[0-9a-f]{64}$/);
    assert.ok(Date.now() - started < 30_000);
    const list = JSON.parse(warren('image', 'list', '--json').stdout);
    assert.ok(list.images.some((i: { id: string }) => i.id === r.stdout.trim()));
  });

  test('vm run prints the guest kernel release and passes exit codes through; no VM is left', async () => {
    const id = (await minimalImage()).slice(0, 19);
    const uname = warren('vm', 'run', '--image', id, '--', 'uname', '-r');
    assert.equal(uname.status, 0, uname.stderr);
    assert.match(uname.stdout.trim(), /-cloud-amd64$/);
    assert.notEqual(uname.stdout.trim(), (await import('node:os')).release());
    const seven = warren('vm', 'run', '--image', id, '--', 'sh', '-c', 'exit 7');
    assert.equal(seven.status, 7);
    assert.deepEqual(await readdir(join(dataDir, 'vms')), []);
  });

  test('bad input gets a clear error and a non-zero exit', () => {
    const r = warren('vm', 'run', '--image', 'not-an-id', '--', 'true');
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /INVALID_ARGUMENT/);
    assert.match(r.stderr, /fix:/);
  });
});
