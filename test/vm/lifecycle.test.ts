/**
 * VM lifecycle against real QEMU microVMs: isolation of disks between VMs, persistence of
 * the data volume, complete destruction, crash detection, cgroup limits.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import { after, before, describe, test } from 'node:test';
import { cgroupsOf } from '@warren/host-agent';
import { collect, openTestHost, type TestHost } from '../helpers/host.ts';
import { minimalImage } from '../helpers/image.ts';

const sh = (script: string) => ({ argv: ['sh', '-c', script] });

describe('VM lifecycle', { timeout: 900_000 }, () => {
  let host: TestHost;
  let image: string;

  before(async () => {
    image = await minimalImage();
    host = await openTestHost();
  });
  after(() => host?.dispose());

  test('two VMs from one image have independent root filesystems and data volumes; data survives stop/start; destroy removes everything', async () => {
    const a = await host.vms.create({ id: 'vm-a', image, diskMiB: 64 });
    const b = await host.vms.create({ id: 'vm-b', image, diskMiB: 64 });
    await host.vms.start(a.id);
    await host.vms.start(b.id);
    const ga = await host.vms.guest(a.id);
    const gb = await host.vms.guest(b.id);

    await ga.exec(sh('echo root-a > /etc/marker && echo data-a > /workspace/marker && sync'));
    const inB = await collect((o) => gb.exec(sh('cat /etc/marker /workspace/marker 2>&1; true'), o));
    assert.match(inB.stdout, /No such file/);
    assert.doesNotMatch(inB.stdout, /root-a|data-a/);

    // The data volume is mounted at /workspace, owned by the agent user.
    const mount = await collect((o) =>
      ga.exec(sh('grep " /workspace " /proc/mounts; stat -c %u /workspace'), o),
    );
    assert.match(mount.stdout, /^\/dev\/vdb \/workspace ext4/);
    assert.match(mount.stdout, /\n1000\n$/);

    const stopped = await host.vms.stop(a.id);
    assert.equal(stopped.state, 'stopped');
    assert.equal(stopped.lastExit?.reason, 'guest powered off');
    await host.vms.start(a.id);
    const again = await collect((o) =>
      host.vms.guest(a.id).then((g) => g.exec(sh('cat /workspace/marker /etc/marker'), o)),
    );
    assert.equal(again.stdout, 'data-a\nroot-a\n');

    const dirA = host.vms.dirOf(a.id);
    const pid = (await host.vms.get(a.id)).pid!;
    await host.vms.destroy(a.id);
    assert.equal(existsSync(dirA), false);
    assert.equal(existsSync(`/proc/${pid}`), false);
    assert.deepEqual(await readdir(`${host.dataDir}/vms`), ['vm-b']);
    if (host.cgroups.state === 'v1') assert.equal(existsSync(`/sys/fs/cgroup/memory/warren/${a.id}`), false);
    if (host.cgroups.state === 'v2') assert.equal(existsSync(`/sys/fs/cgroup/warren/${a.id}`), false);
    await host.vms.destroy(b.id);
    assert.deepEqual(await readdir(`${host.dataDir}/vms`), []);
  });

  test('kill -9 of QEMU is detected and reported with its reason', async () => {
    const vm = await host.vms.create({ id: 'vm-crash', image, diskMiB: 32 });
    const running = await host.vms.start(vm.id);
    assert.equal(running.state, 'running');
    const exited = new Promise<string>((resolve) =>
      host.vms.once('exit', (_id, exit) => resolve(exit.reason)),
    );
    process.kill(running.pid!, 'SIGKILL');
    assert.match(await exited, /SIGKILL/);
    const after = await host.vms.get(vm.id);
    assert.equal(after.state, 'crashed');
    assert.match(after.lastExit!.reason, /QEMU killed by SIGKILL/);
    await assert.rejects(host.vms.guest(vm.id), { code: 'VM_NOT_RUNNING' });
    await host.vms.destroy(vm.id);
  });

  test('QEMU runs inside the VM cgroup with CPU, memory and pids limits', {
    skip: !existsSync('/sys/fs/cgroup'),
  }, async () => {
    // The agent refuses to start without cgroups unless told `off`, which the test host is not.
    assert.notEqual(host.cgroups.state, 'off', host.cgroups.reason);
    const vm = await host.vms.create({ id: 'vm-limits', image, cpus: 2, memoryMiB: 256, diskMiB: 32 });
    const { pid } = await host.vms.start(vm.id);
    const membership = await cgroupsOf(pid!);
    assert.match(membership, /warren\/vm-limits/);
    const nproc = await collect((o) => host.vms.guest(vm.id).then((g) => g.exec({ argv: ['nproc'] }, o)));
    assert.equal(nproc.stdout.trim(), '2');
    if (host.cgroups.state === 'v1') {
      const base = '/sys/fs/cgroup';
      assert.equal(
        (await readFile(`${base}/cpu/warren/vm-limits/cpu.cfs_quota_us`, 'utf8')).trim(),
        '200000',
      );
      const mem = Number(await readFile(`${base}/memory/warren/vm-limits/memory.limit_in_bytes`, 'utf8'));
      assert.equal(mem, (256 + 384) * 1024 * 1024);
      assert.ok(Number(await readFile(`${base}/pids/warren/vm-limits/pids.max`, 'utf8')) > 0);
    } else {
      assert.equal(
        (await readFile('/sys/fs/cgroup/warren/vm-limits/cpu.max', 'utf8')).trim(),
        '200000 100000',
      );
    }
    await host.vms.destroy(vm.id);
  });
});
