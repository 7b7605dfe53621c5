/**
 * Snapshots and credentials on real microVMs (QEMU driver): what a revert brings back and
 * what it removes, on both disks and in memory; that credentials never reach a disk or a
 * snapshot file; and that a VM whose guest was wrecked (`rm -rf /`) is whole after a revert.
 *
 * One VM lives through the tests, in order; the snapshot `first` is taken at the start and
 * reverted to at the end, so it is at least 60 s old by then (the clock check needs that).
 */
import assert from 'node:assert/strict';
import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { LAYERS_DIR } from '@warren/host-agent';
import { anyFileHolds } from '../helpers/file-holds.ts';
import { collect, openTestHost, type TestHost } from '../helpers/host.ts';
import { minimalImage } from '../helpers/image.ts';
import { until } from '../helpers/until.ts';

const sh = (script: string) => ({ argv: ['sh', '-c', script] });
const SNAPSHOT_AGE_MS = 60_000;
/** Made at run time, so it is in no image or earlier run's file. */
const SECRET = `wrn-secret-${process.pid}-${Date.now().toString(36)}-ZQXJ`;

describe('snapshots on real VMs (qemu)', { timeout: 900_000 }, () => {
  let host: TestHost;
  const id = 'snap-a';
  let firstAt = 0;
  const run = async (script: string) => {
    const r = await collect(async (o) => (await host.vms.guest(id)).exec(sh(script), o));
    return { ...r, code: (r.exit as { exitCode: number | null }).exitCode };
  };

  before(async () => {
    const image = await minimalImage();
    host = await openTestHost({ WARREN_VMM: 'qemu' });
    await host.vms.create({ id, image, memoryMiB: 256, diskMiB: 64 });
    await host.vms.start(id);
  });
  after(async () => {
    await host?.dispose();
  });

  test('a snapshot of a running VM pauses it briefly and lists', async () => {
    const r = await run(
      'echo kept > /workspace/before && echo kept > /etc/before-root && (sleep 100001 </dev/null >/dev/null 2>&1 &) && sync',
    );
    assert.equal(r.code, 0, r.stderr);
    const made = await host.vms.createSnapshot(id, { name: 'first' });
    firstAt = Date.now();
    assert.equal(made.reused, false);
    assert.equal(made.snapshot.name, 'first');
    assert.equal(made.snapshot.memory, 'mapped');
    assert.equal(made.snapshot.parent, null);
    assert.ok(made.snapshot.bytes > 0);
    console.log(`# snapshot: paused ${made.snapshot.pausedMs} ms, ${made.snapshot.bytes} bytes`);
    const list = await host.vms.snapshots(id);
    assert.deepEqual(
      list.map((s) => s.name),
      ['first'],
    );
    // The VM runs on after it, and writes go to the new tops.
    assert.equal(
      (await run('echo after > /workspace/after && echo after > /etc/after-root && sync')).code,
      0,
    );
    assert.equal((await run('(sleep 100002 </dev/null >/dev/null 2>&1 &); echo started')).code, 0);
  });

  test('the files changed since a snapshot, on both disks, from the layers', async () => {
    const list = await host.vms.changedFiles(id, 'first');
    const seen = list.changes.map((c) => `${c.change} ${c.disk} ${c.path}`);
    assert.ok(seen.includes('added data /workspace/after'), seen.join('\n'));
    assert.ok(seen.includes('added root /etc/after-root'), seen.join('\n'));
    assert.ok(
      !seen.some((l) => l.endsWith('/workspace/before') || l.endsWith('/etc/before-root')),
      seen.join('\n'),
    );
    assert.equal(list.truncated, false);
  });

  test('reuse returns the snapshot while the VM is unchanged, and makes it anew once used', async () => {
    // Used since `first` (the execs above): a reuse replaces it... under another name here,
    // so `first` stays for the revert at the end.
    const a = await host.vms.createSnapshot(id, { name: 'clean', reuse: true });
    assert.equal(a.reused, false);
    const b = await host.vms.createSnapshot(id, { name: 'clean', reuse: true });
    assert.equal(b.reused, true, 'nothing was done in between');
    assert.equal(b.snapshot.createdAt, a.snapshot.createdAt);
    await run('true');
    const c = await host.vms.createSnapshot(id, { name: 'clean', reuse: true });
    assert.equal(c.reused, false, 'an exec is use');
    await assert.rejects(host.vms.createSnapshot(id, { name: 'clean' }), /already has a snapshot/);
  });

  test('credentials are readable in the guest, in no file of the VM, and gone after a wipe', async () => {
    await host.vms.putCredentials(id, { files: { token: SECRET }, env: { API_TOKEN: SECRET } });
    const read = await run('cat /run/warren/credentials/token; echo; echo "$API_TOKEN"');
    assert.equal(read.stdout, `${SECRET}\n${SECRET}\n`);
    // A snapshot during the session: the credentials are wiped around it, then back.
    const during = await host.vms.createSnapshot(id, { name: 'during' });
    assert.equal((await run('cat /run/warren/credentials/token')).stdout, SECRET, 'delivered again');
    const dir = host.vms.dirOf(id);
    const holder = await anyFileHolds(dir, Buffer.from(SECRET));
    assert.equal(holder, undefined, `the secret is in ${holder}`);
    assert.ok((await stat(join(dir, 'snapshots', during.snapshot.name, 'memory'))).size > 0);
    await host.vms.wipeCredentials(id);
    const gone = await run('ls -A /run/warren/credentials 2>/dev/null; echo "[$API_TOKEN]"');
    assert.equal(gone.stdout, '[]\n');
  });

  test('a revert brings back the snapshot: files, processes, data volume, clock', async () => {
    await until(
      'the snapshot `first` is 60 s old',
      () => Date.now() - firstAt >= SNAPSHOT_AGE_MS,
      120_000,
      500,
    );
    const reverted = await host.vms.revertSnapshot(id, 'first');
    console.log(`# revert: ${Math.round(reverted.revertMs)} ms to a ready guest`);
    const r = await run(
      'ls /workspace /etc/before-root /etc/after-root 2>&1; ps | grep -c "sleep 10000[1]"; ps | grep -c "sleep 10000[2]"; date +%s',
    );
    const lines = r.stdout.trim().split('\n');
    const guestSec = Number(lines.at(-1));
    assert.ok(
      Math.abs(guestSec - Date.now() / 1000) <= 2,
      `guest clock ${guestSec} vs host ${Date.now() / 1000}`,
    );
    assert.match(r.stdout, /before/);
    assert.doesNotMatch(r.stdout, /^after$/m, 'the data volume file written after the snapshot is gone');
    assert.match(r.stdout, /No such file or directory/, '/etc/after-root is gone');
    assert.equal(lines.at(-3), '1', 'the process running at snapshot time runs again');
    assert.equal(lines.at(-2), '0', 'the process started after the snapshot is gone');
    assert.equal((await run('cat /workspace/before /etc/before-root')).stdout, 'kept\nkept\n');
  });

  test('a reverted VM snapshots again (its memory into the stream) and reverts to that', async () => {
    await run('echo second > /workspace/second && sync');
    const s = await host.vms.createSnapshot(id, { name: 'second' });
    assert.equal(s.snapshot.memory, 'stream', 'a VM restored from a mapped file keeps RAM private');
    assert.equal(s.snapshot.parent, 'first');
    await run('rm /workspace/second');
    await host.vms.revertSnapshot(id, 'second');
    assert.equal((await run('cat /workspace/second')).stdout, 'second\n');
  });

  test('rm -rf --no-preserve-root / in the guest, then a revert: the VM execs normally', async () => {
    await host.vms.createSnapshot(id, { name: 'pre-wreck' });
    // GNU rm (standard image) wants --no-preserve-root; busybox's (minimal) refuses the option
    // and removes / without it.
    await run('rm -rf --no-preserve-root / 2>/dev/null || rm -rf / 2>/dev/null; sync');
    assert.notEqual(
      (await run('ls /etc/before-root').catch(() => ({ code: 1 }))).code,
      0,
      'the guest is wrecked',
    );
    await host.vms.revertSnapshot(id, 'pre-wreck');
    const r = await run('cat /etc/before-root /workspace/before; uname -s');
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, 'kept\nkept\nLinux\n');
  });

  test('deleting snapshots frees their files; layers others build on stay until unreferenced', async () => {
    const dir = host.vms.dirOf(id);
    for (const s of await host.vms.snapshots(id)) await host.vms.deleteSnapshot(id, s.name);
    assert.deepEqual(await host.vms.snapshots(id), []);
    assert.deepEqual(await readdir(join(dir, 'snapshots')), []);
    // What is left is the chain the VM runs on, nothing else (merging it is not done yet).
    const vm = await host.vms.get(id);
    const chain = [...vm.disks!.root, ...vm.disks!.data].filter((l) => l.startsWith(`${LAYERS_DIR}/`));
    assert.deepEqual(
      (await readdir(join(dir, LAYERS_DIR))).map((n) => `${LAYERS_DIR}/${n}`).sort(),
      chain.sort(),
    );
    await assert.rejects(host.vms.revertSnapshot(id, 'first'), /no snapshot named first/);
    assert.equal((await run('cat /workspace/before')).stdout, 'kept\n');
  });
});
