/**
 * No image drift: a VM never boots from files that differ from their manifest digests.
 * The image store is a private copy of the test image, so the shared one stays intact.
 */
import assert from 'node:assert/strict';
import { chmod, cp, mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { type Host, loadConfig, openHost } from '@warren/host-agent';
import { ImageStore } from '@warren/images';
import { minimalImage, TEST_IMAGES_DIR } from '../helpers/image.ts';

async function flipByte(path: string, offset: number) {
  await chmod(path, 0o644);
  const fh = await open(path, 'r+');
  const buf = Buffer.alloc(1);
  await fh.read(buf, 0, 1, offset);
  buf[0]! ^= 0x01;
  await fh.write(buf, 0, 1, offset);
  await fh.close();
}

describe('image integrity', { timeout: 300_000 }, () => {
  let dir: string;
  let host: Host;
  let imageId: string;

  before(async () => {
    imageId = await minimalImage();
    dir = await mkdtemp(join(tmpdir(), 'wt-img-'));
    await cp(TEST_IMAGES_DIR, join(dir, 'images'), {
      recursive: true,
      filter: (src) => !src.startsWith(join(TEST_IMAGES_DIR, 'tmp')),
    });
    host = await openHost(loadConfig({}, { dataDir: dir, network: 'off' }));
  });
  after(async () => {
    host?.vms.close();
    await rm(dir, { recursive: true, force: true });
  });

  for (const role of ['rootfs', 'kernel'] as const) {
    test(`one changed byte in the ${role} is refused before boot, naming the file`, async () => {
      const store = new ImageStore(join(dir, 'images'));
      const manifest = await store.getManifest(imageId);
      const vm = await host.vms.create({ id: `vm-${role}`, image: imageId, diskMiB: 16 });
      const file = store.blobPath(manifest[role].digest);
      await flipByte(file, Math.floor(manifest[role].size / 2));
      try {
        await assert.rejects(host.vms.start(vm.id), (e: Error & { code?: string }) => {
          assert.equal(e.code, 'IMAGE_INTEGRITY');
          assert.ok(e.message.includes(file), e.message);
          assert.ok(e.message.includes(role), e.message);
          return true;
        });
        assert.equal((await host.vms.get(vm.id)).pid, undefined);
        await assert.rejects(host.vms.create({ image: imageId }), { code: 'IMAGE_INTEGRITY' });
      } finally {
        await flipByte(file, Math.floor(manifest[role].size / 2));
        await host.vms.destroy(vm.id);
      }
    });
  }

  test('a manifest edited on disk no longer matches its id', async () => {
    const store = new ImageStore(join(dir, 'images'));
    const hex = imageId.slice('sha256:'.length);
    const path = join(dir, 'images', 'manifests', `${hex}.json`);
    const fh = await open(path, 'a');
    await fh.write(' ');
    await fh.close();
    await assert.rejects(store.verify(imageId), { code: 'IMAGE_INTEGRITY' });
  });
});
