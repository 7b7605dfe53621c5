/**
 * Backups and restores of a stopped VM (no VM boots: new tops are made offline, the frozen data
 * layers are merged into the raw base by the agent itself), a top layer whose header lies about
 * the disk's size, and the backup routes' checks on the local and remote APIs.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, openSync, readFileSync, statSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { createApi, createRemoteApi } from '@warren/host-agent';
import type { BackupJob, BackupMetadata } from '@warren/protocol';
import { openTestHost, type TestHost } from '../helpers/host.ts';
import { minimalImage } from '../helpers/image.ts';
import { until } from '../helpers/until.ts';

const MiB = 1024 * 1024;
const METADATA: BackupMetadata = {
  tenantId: 'ten_0123456789abcdef',
  tenantName: 'stopped-test',
  imageId: 'minimal',
  resources: {},
  network: null,
};
const bakId = () => `bak_${randomBytes(8).toString('hex')}`;
const sha = (path: string) => createHash('sha256').update(readFileSync(path)).digest('hex');

function writeAt(file: string, offset: number, bytes: Buffer): void {
  const fd = openSync(file, 'r+');
  try {
    writeSync(fd, bytes, 0, bytes.length, offset);
  } finally {
    closeSync(fd);
  }
}

describe('backups of a stopped VM', { timeout: 300_000 }, () => {
  let host: TestHost;
  const id = 'bak-stopped';
  const keys = { tenant: randomBytes(32).toString('base64') };
  const finished = (jobId: string) =>
    until(
      `job ${jobId} ends`,
      () => {
        const job = host.backups.get(jobId);
        return job.state !== 'running' && job;
      },
      120_000,
      20,
    );
  const backup = async (previous?: string): Promise<BackupJob> => {
    const jobId = bakId();
    await host.backups.startBackup(id, {
      id: jobId,
      keys,
      metadata: METADATA,
      ...(previous ? { previous } : {}),
    });
    return finished(jobId);
  };
  const dataPath = (layer: string) => join(host.vms.dirOf(id), layer);

  before(async () => {
    host = await openTestHost({ WARREN_VMM: 'qemu' });
    await host.vms.create({ id, image: await minimalImage(), diskMiB: 32 });
  });
  after(async () => {
    await host?.dispose();
  });

  let first: BackupJob;
  let firstDigest = '';

  test('a stopped VM is backed up on new tops made offline, and its layers merged into the base', async () => {
    firstDigest = sha(dataPath('data.img'));
    first = await backup();
    assert.equal(first.state, 'succeeded', JSON.stringify(first.error));
    assert.equal(first.result!.mode, 'full');
    const chain = (await host.vms.get(id)).disks!.data;
    assert.equal(chain.length, 2, 'data.img under a new top');
    assert.equal((await host.vms.get(id)).backupMark?.id, first.id);
    // Changes the way a VM's writes would: into the top layer (qemu-io, as QEMU writes).
    const { execFileSync } = await import('node:child_process');
    execFileSync('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x5a 5M 64k', dataPath(chain[1]!)]);
    const second = await backup(first.id);
    assert.equal(second.state, 'succeeded', JSON.stringify(second.error));
    assert.equal(second.result!.mode, 'incremental', second.result!.reason);
    assert.equal(second.progress.bytesTotal, MiB, 'one chunk read');
    // The frozen layer went into data.img: one top over it again, and the mark with it.
    const after = await host.vms.get(id);
    assert.equal(after.disks!.data.length, 2);
    assert.equal(after.disks!.data[0], 'data.img');
    assert.notEqual(after.disks!.data[1], chain[1]);
    assert.deepEqual(after.backupMark?.chains.data, ['data.img']);
    const merged = readFileSync(dataPath('data.img'));
    assert.ok(
      merged.subarray(5 * MiB, 5 * MiB + 65536).every((b) => b === 0x5a),
      'the write is in the base',
    );
  });

  test('a restore into a stopped VM switches its data chain and leaves it stopped', async () => {
    const job = bakId();
    await host.backups.startRestore(id, { job, backup: first.id, keys });
    const done = await finished(job);
    assert.equal(done.state, 'succeeded', JSON.stringify(done.error));
    const status = await host.vms.get(id);
    assert.equal(status.state, 'stopped');
    assert.deepEqual(status.disks!.data, [`jail/disks/data-${job}.img`]);
    assert.equal(status.backupMark, undefined);
    assert.equal(sha(dataPath(status.disks!.data[0]!)), firstDigest, 'the volume as the first backup had it');
    // Nothing refers to the original volume any more (no snapshot): emptied, the file kept for the jail's bind.
    assert.equal(statSync(dataPath('data.img')).size, 0);
  });

  test('a top layer whose header claims another disk size is refused, not backed up', async () => {
    const fresh = await backup();
    assert.equal(fresh.state, 'succeeded', JSON.stringify(fresh.error));
    // What a guest that took over its QEMU could write into its own top layer: a disk twice as large.
    const top = (await host.vms.get(id)).disks!.data.at(-1)!;
    const size = Buffer.alloc(8);
    size.writeBigUInt64BE(64n * BigInt(MiB));
    writeAt(dataPath(top), 24, size);
    const refused = await backup(fresh.id);
    assert.equal(refused.state, 'failed');
    assert.match(refused.error!.message, /claims 67108864 bytes where its base has 33554432/);
  });

  test('the routes check bodies, keep keys out of answers, and the remote API sees tenant VMs only', async () => {
    const local = createApi(host);
    const key = randomBytes(31).toString('base64');
    const bad = await local.inject({
      method: 'POST',
      url: `/v1/vms/${id}/backups`,
      payload: { id: bakId(), keys: { tenant: key }, metadata: METADATA },
    });
    assert.equal(bad.statusCode, 400);
    assert.equal(bad.json().error.code, 'INVALID_ARGUMENT');
    assert.ok(!bad.body.includes(key), 'the key is echoed back');
    const extra = await local.inject({
      method: 'POST',
      url: `/v1/vms/${id}/restore`,
      payload: { job: bakId(), backup: bakId(), keys, path: '/etc/passwd' },
    });
    assert.equal(extra.statusCode, 400);
    assert.equal((await local.inject({ method: 'GET', url: `/v1/backup-jobs/${bakId()}` })).statusCode, 404);
    const remote = createRemoteApi(host, { agentToken: 'tok', onWake: () => {} });
    const refused = await remote.inject({
      method: 'POST',
      url: `/v1/vms/${id}/backups`,
      headers: { authorization: 'Bearer tok' },
      payload: { id: bakId(), keys, metadata: METADATA },
    });
    assert.equal(refused.json().error.code, 'VM_NOT_FOUND');
    // A job of a VM made through the local API is not the remote API's to see either.
    const jobs = await local.inject({
      method: 'POST',
      url: `/v1/vms/${id}/backups`,
      payload: { id: bakId(), keys, metadata: METADATA },
    });
    assert.equal(jobs.statusCode, 202, jobs.body);
    const seen = await remote.inject({
      method: 'GET',
      url: `/v1/backup-jobs/${jobs.json().id}`,
      headers: { authorization: 'Bearer tok' },
    });
    assert.equal(seen.json().error.code, 'VM_NOT_FOUND');
    await finished(jobs.json().id);
    await local.close();
    await remote.close();
  });
});
