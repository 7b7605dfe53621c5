/**
 * Backups and restores of a real microVM's data volume (QEMU driver, the filesystem object
 * store): the guest's freeze and its own thaw; a backup taken while a writer appends to a log
 * restores to its point in time (files written before it by digest, the log a clean prefix of
 * what the writer wrote); a second backup after a small change reads only the changed chunks,
 * and restores to its own point in time.
 *
 * One VM lives through the tests, in order (each restore restarts it).
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { LAYERS_DIR } from '@warren/host-agent';
import type { BackupJob, BackupMetadata, HostBackupRequest } from '@warren/protocol';
import { collect, openTestHost, type TestHost } from '../helpers/host.ts';
import { minimalImage } from '../helpers/image.ts';
import { until } from '../helpers/until.ts';

const sh = (script: string) => ({ argv: ['sh', '-c', script] });
const MiB = 1024 * 1024;
const DISK_MIB = 64;
/** The writer: numbered lines appended and synced one by one, until /workspace/stop exists. */
const WRITER =
  'i=0; while [ ! -e /workspace/stop ]; do i=$((i+1)); echo "line $i" >> /workspace/log; sync; done; touch /workspace/stopped';

function backupId(): string {
  return `bak_${randomBytes(8).toString('hex')}`;
}

const METADATA: BackupMetadata = {
  tenantId: 'ten_0123456789abcdef',
  tenantName: 'backup-test',
  imageId: 'minimal',
  resources: {},
  network: null,
};

describe('backups on real VMs (qemu)', { timeout: 900_000 }, () => {
  let host: TestHost;
  const id = 'bak-a';
  const keys = { tenant: randomBytes(32).toString('base64'), image: randomBytes(32).toString('base64') };
  const run = async (script: string) => {
    const r = await collect(async (o) => (await host.vms.guest(id)).exec(sh(script), o));
    const code = (r.exit as { exitCode: number | null }).exitCode;
    assert.equal(code, 0, `${script}: ${r.stderr}`);
    return r.stdout;
  };
  const lines = async () => Number((await run('wc -l < /workspace/log')).trim());
  const finished = (jobId: string) =>
    until(
      `job ${jobId} ends`,
      () => {
        const job = host.backups.get(jobId);
        return job.state !== 'running' && job;
      },
      300_000,
      50,
    );
  const backup = async (req: Omit<HostBackupRequest, 'keys' | 'metadata'>): Promise<BackupJob> => {
    const started = await host.backups.startBackup(id, { ...req, keys, metadata: METADATA });
    assert.equal(started.state, 'running');
    const job = await finished(req.id);
    assert.equal(job.state, 'succeeded', JSON.stringify(job.error));
    return job;
  };
  const restore = async (backup: string): Promise<BackupJob> => {
    const jobId = backupId();
    await host.backups.startRestore(id, { job: jobId, backup, keys });
    const job = await finished(jobId);
    assert.equal(job.state, 'succeeded', JSON.stringify(job.error));
    return job;
  };
  /** sha256 of each file, as the guest reads them. */
  const digests = (files: string[]) => run(`cd /workspace && sha256sum ${files.join(' ')}`);

  before(async () => {
    const image = await minimalImage();
    host = await openTestHost({ WARREN_VMM: 'qemu' });
    await host.vms.create({ id, image, memoryMiB: 256, diskMiB: DISK_MIB });
    await host.vms.start(id);
  });
  after(async () => {
    await host?.dispose();
  });

  test('a freeze the host never ends thaws by itself, and writers go on after it', async () => {
    const guest = await host.vms.guest(id);
    const { thawAt } = await guest.freeze(3_000);
    // The write waits for the thaw; the guest's clock says when it got through (in seconds).
    const doneAt = Number((await run('echo x >> /workspace/frozen && sync && date +%s')).trim());
    assert.ok(
      doneAt * 1000 + 999 >= thawAt,
      `the write finished at ${doneAt} s, before the thaw at ${thawAt} ms`,
    );
    assert.equal(await guest.thaw(), false, 'already thawed by the guest');
  });

  test('file calls during a freeze wait for the thaw without holding up the guest agent', async () => {
    const guest = await host.vms.guest(id);
    await guest.freeze(30_000);
    // More writes than the guest agent has libuv pool threads (UV_THREADPOOL_SIZE=8 in the
    // image): were they blocked in those threads on the frozen volume, every later request
    // (its port reads, a health check's statfs) would wait for the guest's own thaw timer.
    const writes = Array.from({ length: 12 }, (_, i) =>
      guest.writeFile(`/workspace/during-${i}`, `w${i}`).then(
        () => 'written',
        (e: Error) => e.message,
      ),
    );
    try {
      await guest.health(10_000);
      assert.equal(await guest.thaw(), true, 'thawed by the request, not by the timer');
    } finally {
      assert.deepEqual(await Promise.all(writes), Array(12).fill('written'));
    }
    assert.equal(await run('cat /workspace/during-0 /workspace/during-11'), 'w0w11');
  });

  let first = '';
  let second = '';
  let linesBefore = 0;
  let digestsBefore = '';
  let finalLog = '';
  let digestsSecond = '';

  test('a backup taken while a writer runs', async () => {
    await run(
      'cd /workspace && yes "workspace file" | head -c 3145728 > a.bin && mkdir -p d && echo one > d/b.txt && sync',
    );
    digestsBefore = await digests(['a.bin', 'd/b.txt']);
    await run(`(${WRITER}) </dev/null >/dev/null 2>&1 &`);
    linesBefore = await until(
      'the writer has written 20 lines',
      async () => (await lines()) >= 20 && lines(),
    );
    first = backupId();
    const job = await backup({ id: first });
    const r = job.result!;
    assert.equal(r.mode, 'full');
    assert.match(r.reason ?? '', /no previous backup/);
    assert.deepEqual(
      r.volumes.map((v) => [v.name, v.sizeBytes]),
      [['data', DISK_MIB * MiB]],
    );
    assert.ok(r.storedBytes > 0);
    assert.ok(job.progress.chunksNew > 0);
    // The writer went on through the backup and after it.
    const during = await lines();
    await until('the writer goes on after the backup', async () => (await lines()) > during + 5);
    await run('touch /workspace/stop');
    await until('the writer stopped', async () => (await run('ls /workspace')).includes('stopped'));
    finalLog = await run('cat /workspace/log');
    console.log(
      `# backup 1: ${r.durationMs} ms, ${r.storedBytes} bytes stored; writer at ${linesBefore} lines before it`,
    );
  });

  test('a second backup after a small change reads only the changed chunks', async () => {
    await run('cd /workspace && echo two > d/b.txt && head -c 20000 a.bin > c.txt && sync');
    digestsSecond = await digests(['a.bin', 'd/b.txt', 'c.txt', 'log']);
    second = backupId();
    const job = await backup({ id: second, previous: first });
    const r = job.result!;
    assert.equal(r.mode, 'incremental', r.reason);
    // The writer's last lines, the new files, and ext4's own metadata and journal: a few chunks
    // of the 64 the volume has.
    assert.ok(job.progress.bytesTotal <= 16 * MiB, `read ${job.progress.bytesTotal} bytes`);
    assert.ok(job.progress.bytesTotal > 0);
    console.log(`# backup 2 (incremental): read ${job.progress.bytesTotal} bytes, stored ${r.storedBytes}`);
  });

  test('a snapshot asked for while a backup runs takes its turn; both complete', async () => {
    const jobId = backupId();
    await host.backups.startBackup(id, { id: jobId, keys, metadata: METADATA, previous: second });
    const snap = await host.vms.createSnapshot(id, { name: 'during-backup' });
    const job = await finished(jobId);
    assert.equal(job.state, 'succeeded', JSON.stringify(job.error));
    assert.equal(snap.snapshot.name, 'during-backup');
    await host.vms.deleteSnapshot(id, 'during-backup');
    assert.equal(await digests(['a.bin', 'd/b.txt', 'c.txt', 'log']), digestsSecond);
  });

  test('a restore brings the volume back to the first backup’s point in time', async () => {
    await run('cd /workspace && echo later > later.txt && rm d/b.txt && sync');
    const vmDir = host.vms.dirOf(id);
    // A snapshot holds the volume the restore replaces: it must keep its layers.
    await host.vms.createSnapshot(id, { name: 'before-restore' });
    const oldChain = (await host.vms.get(id)).disks!.data;
    const job = await restore(first);
    assert.equal(job.result!.volumes[0]!.sizeBytes, DISK_MIB * MiB);
    const status = await host.vms.get(id);
    assert.equal(status.state, 'running', 'it ran before, so it runs after');
    assert.notDeepEqual(status.disks!.data, oldChain);
    assert.equal(status.disks!.data.length, 1, 'a new raw base, no layers');
    // Files written before the backup, by digest; nothing written after it.
    assert.equal(await digests(['a.bin', 'd/b.txt']), digestsBefore);
    const names = await run('ls /workspace');
    assert.ok(!names.includes('later.txt') && !names.includes('c.txt') && !names.includes('stop'), names);
    // The log: whole lines 1..n with n at least what the writer had before the backup began,
    // and the start of what it wrote in the end (nothing torn, nothing from after).
    const log = await run('cat /workspace/log');
    const n = log.split('\n').filter(Boolean).length;
    assert.ok(n >= linesBefore, `${n} lines restored, ${linesBefore} were written before the backup`);
    assert.ok(finalLog.startsWith(log) && log.endsWith('\n'), 'the restored log is a clean prefix');
    assert.ok(
      n < finalLog.split('\n').filter(Boolean).length,
      'lines written after the backup are not in it',
    );
    // Nothing left of the restore's temporary file.
    const layers = await readdir(join(vmDir, LAYERS_DIR));
    assert.ok(!layers.some((f) => f.startsWith('.restore-')), layers.join());
    const held = (await host.vms.snapshots(id)).length;
    assert.equal(held, 1);
    for (const layer of oldChain.slice(0, -1))
      assert.ok((await stat(join(vmDir, layer))).size > 0, `${layer} is the snapshot's`);
    // Once the snapshot goes, nothing refers to the old volume: its layers go, data.img is emptied.
    await host.vms.deleteSnapshot(id, 'before-restore');
    assert.equal((await stat(join(vmDir, 'data.img'))).size, 0);
    const left = await readdir(join(vmDir, LAYERS_DIR));
    assert.ok(!oldChain.slice(1).some((l) => left.includes(l.split('/').at(-1)!)), left.join());
    console.log(`# restore: ${job.result!.durationMs} ms; ${n} of the log's lines`);
  });

  test('the incremental backup restores to its own point in time', async () => {
    await restore(second);
    assert.equal(await digests(['a.bin', 'd/b.txt', 'c.txt', 'log']), digestsSecond);
    // The mark went with the old volume: the next backup reads everything, and says why.
    const next = await backup({ id: backupId(), previous: second });
    assert.equal(next.result!.mode, 'full');
    assert.match(next.result!.reason ?? '', /not the previous one/);
  });

  test('with the root disk: a restore brings both disks back, and the restored root backs up incrementally', async () => {
    await run('echo kept > /etc/root-marker && echo data-marker > /workspace/marker && sync');
    const withRoot = backupId();
    const job = await backup({ id: withRoot, includeRoot: true });
    assert.deepEqual(
      job.result!.volumes.map((v) => v.name),
      ['data', 'root'],
    );
    await run('rm /etc/root-marker && echo later > /etc/root-later && rm /workspace/marker && sync');
    const restored = await restore(withRoot);
    assert.deepEqual(restored.result!.volumes.map((v) => v.name).sort(), ['data', 'root']);
    const status = await host.vms.get(id);
    assert.equal(status.disks!.root.length, 1, 'a raw root of its own');
    assert.equal(await run('cat /etc/root-marker /workspace/marker'), 'kept\ndata-marker\n');
    assert.ok(!(await run('ls /etc')).split('\n').includes('root-later'));
    // The restored root is a raw bottom layer now: backed up, changed a little, backed up again.
    const a = await backup({ id: backupId(), includeRoot: true });
    await run('echo again > /etc/root-again && sync');
    const b = await backup({ id: backupId(), includeRoot: true, previous: a.id });
    assert.equal(b.result!.mode, 'incremental', b.result!.reason);
    assert.ok(b.progress.bytesTotal <= 32 * MiB, `read ${b.progress.bytesTotal} bytes`);
  });
});
