/**
 * The libvirt driver against a real libvirtd and real microVMs: boot from a launch spec, the guest
 * agent over the virtio-serial channel, the VM's own uid and cgroup, quit, kill, crash detection,
 * and re-attach from a fresh driver instance. Afterwards `virsh list --all` holds nothing of ours,
 * and whatever libvirt daemon this file started is stopped. (G1's contract suite takes these over.)
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import {
  type CgroupHandle,
  chooseAccelerator,
  detectCgroups,
  GuestClient,
  type RunningVm,
  type VmLaunchSpec,
} from '@warren/host-agent';
import { ImageStore, run } from '@warren/images';
import {
  domainName,
  domainPrefix,
  LibvirtDriver,
  QEMU_LOG_DIR,
} from '../../apps/host-agent/src/vmm/libvirt/index.ts';
import { collect } from '../helpers/host.ts';
import { minimalImage, TEST_IMAGES_DIR } from '../helpers/image.ts';
import { libvirtSkipReason, startLibvirtForTests, type TestLibvirt } from '../helpers/libvirt.ts';
import { until } from '../helpers/until.ts';

const skip = libvirtSkipReason();
/** uids of this file's VMs: outside the range test hosts allocate from (600000 up). */
const UID_BASE = 689_000;
const driverOptions = { tcgTranslationCacheMiB: 64, consoleLogBytes: 1024 * 1024 };

describe('libvirt driver', { timeout: 900_000, skip }, () => {
  let libvirt: TestLibvirt | undefined;
  let root: string;
  let vmsDir: string;
  let driver: LibvirtDriver;
  const cgroups: CgroupHandle[] = [];
  const running = new Set<RunningVm>();
  let nextUid = UID_BASE;

  before(async () => {
    await minimalImage();
    libvirt = await startLibvirtForTests();
    root = await mkdtemp(join(tmpdir(), 'wt-libvirt-'));
    // QEMU opens the VM's disks as the VM's uid, which must get through (the driver checks and says so).
    await chmod(root, 0o711);
    vmsDir = join(root, 'vms');
    await mkdir(vmsDir, { mode: 0o711 });
    driver = new LibvirtDriver(driverOptions);
  });

  after(async () => {
    for (const vm of [...running]) {
      vm.kill();
      await vm.exited;
    }
    if (libvirt && vmsDir) {
      const left = await libvirt.domainsOf(vmsDir);
      for (const name of left) await libvirt.virsh.run(['destroy', name]).catch(() => {});
      await libvirt.stop();
      assert.deepEqual(left, [], 'every domain of this test ended with its test');
      for (const d of libvirt.started.daemons)
        await until(`${d.name} (pid ${d.pid}) is gone`, () => !existsSync(`/proc/${d.pid}`), 10_000);
      if (libvirt.started.wroteConfig) assert.equal(existsSync(libvirt.started.wroteConfig), false);
    }
    // virtlogd keeps each domain's QEMU log after the domain is gone; these are this file's.
    if (vmsDir) {
      const prefix = domainPrefix(vmsDir);
      for (const f of await readdir(QEMU_LOG_DIR).catch(() => [] as string[]))
        if (f.startsWith(prefix)) await rm(join(QEMU_LOG_DIR, f), { force: true });
    }
    for (const c of cgroups) await c.remove().catch(() => {});
    if (root) await rm(root, { recursive: true, force: true });
  });

  /** A VM directory with its two disks, as VmManager.create makes them, and a launch spec for it. */
  async function newVm(id: string): Promise<VmLaunchSpec> {
    const store = new ImageStore(TEST_IMAGES_DIR);
    const image = await store.verify(await minimalImage());
    const dir = join(vmsDir, id);
    // As the host agent makes it: root's alone (umask 077).
    await mkdir(dir, { mode: 0o700 });
    await driver.createDisks(dir, { baseImage: image.rootfsPath, dataMiB: 32 });
    const { driver: cg } = await detectCgroups('on');
    const cgroup = await cg?.create(`wt-libvirt-${id}`, {
      cpus: 1,
      memoryBytes: (256 + 384) * 1024 * 1024,
      pidsMax: 512,
    });
    if (cgroup) cgroups.push(cgroup);
    const uid = nextUid++;
    return {
      id,
      dir,
      image,
      cpus: 1,
      memoryMiB: 256,
      accel: (await chooseAccelerator('auto')).accel,
      jail: { uid, gid: uid },
      ...(cgroup ? { cgroup } : {}),
    };
  }

  async function launch(spec: VmLaunchSpec): Promise<RunningVm> {
    const vm = await driver.launch(spec);
    running.add(vm);
    vm.exited.then(() => running.delete(vm));
    return vm;
  }

  /** A client once the guest agent answers (the socket accepts as soon as QEMU runs, before the guest is up). */
  const guestOf = (vm: RunningVm) =>
    until(
      'the guest agent answers',
      async () => {
        const client = await GuestClient.connect(vm.transport, 5_000);
        try {
          await client.health(5_000);
          return client;
        } catch (e) {
          client.close();
          throw e;
        }
      },
      120_000,
      200,
    );

  test('boots from a launch spec; exec and files over the guest channel; runs as the VM uid in its cgroup; quit ends it', {
    timeout: 180_000,
  }, async () => {
    const spec = await newVm('vm-boot');
    const vm = await launch(spec);
    const guest = await guestOf(vm);
    const uname = await collect((o) => guest.exec({ argv: ['uname', '-r'] }, o));
    assert.equal(uname.stdout.trim(), spec.image.manifest.kernel.release);
    await guest.writeFile('/workspace/hello.txt', 'hello from libvirt\n');
    assert.equal((await guest.readFileBuffer('/workspace/hello.txt')).toString(), 'hello from libvirt\n');

    // Its own QEMU may pass through the VM directory, no other uid may.
    assert.match(await run('stat', ['-c', '%u %g %a', spec.dir]), new RegExp(`^0 ${spec.jail!.gid} 710\n$`));
    const status = await readFile(`/proc/${vm.pid}/status`, 'utf8');
    assert.match(status, new RegExp(`^Uid:\\s+${spec.jail!.uid}\\s`, 'm'));
    assert.match(status, /^CapEff:\s+0+$/m);
    assert.match(status, /^Seccomp:\s+2$/m);
    if (spec.cgroup) {
      const membership = await readFile(`/proc/${vm.pid}/cgroup`, 'utf8');
      assert.match(membership, /memory:\/warren\/wt-libvirt-vm-boot\n/);
      assert.match(membership, /pids:\/warren\/wt-libvirt-vm-boot\n/);
    }
    // The image store's shared files stay root's: libvirt relabelled nothing.
    for (const p of [spec.image.kernelPath, spec.image.initrdPath, spec.image.rootfsPath]) {
      assert.match(await run('stat', ['-c', '%u', p]), /^0\n$/);
    }
    guest.close();
    await vm.quit();
    const exit = await vm.exited;
    assert.deepEqual([exit.reason, exit.graceful], ['stopped by the host (virsh destroy)', true]);
    assert.deepEqual(await libvirt!.domainsOf(vmsDir), []);
    assert.match(await readFile(join(spec.dir, 'console.log'), 'utf8'), /\S/);
  });

  test('starting libvirt is idempotent: with libvirtd answering, a second call starts and writes nothing', async () => {
    assert.deepEqual(await driver.ensureDaemon(), { daemons: [] });
  });

  test('a guest power-off is reported as such', { timeout: 180_000 }, async () => {
    const spec = await newVm('vm-off');
    const vm = await launch(spec);
    const guest = await guestOf(vm);
    // The guest may power off before its answer reaches us.
    await guest.shutdown().catch(() => {});
    const exit = await vm.exited;
    assert.deepEqual([exit.reason, exit.graceful], ['guest powered off', true]);
  });

  test('kill, and a QEMU killed behind our back, are reported as ungraceful exits', {
    timeout: 240_000,
  }, async () => {
    const spec = await newVm('vm-kill');
    let vm = await launch(spec);
    await guestOf(vm).then((g) => g.close());
    vm.kill();
    let exit = await vm.exited;
    assert.deepEqual([exit.reason, exit.graceful], ['killed by the host (SIGKILL)', false]);
    await until(
      'the domain is gone',
      async () => !(await libvirt!.domainsOf(vmsDir)).includes(domainName(spec)),
    );

    vm = await launch(spec);
    process.kill(vm.pid, 'SIGKILL');
    exit = await vm.exited;
    assert.equal(exit.graceful, false);
    assert.match(exit.reason, /QEMU ended without a shutdown \(killed or crashed; libvirt: Stopped Failed\)/);
  });

  test('a fresh driver instance re-attaches to a running domain of its own, not to one of another agent, and destroys a paused one', {
    timeout: 180_000,
  }, async () => {
    const spec = await newVm('vm-attach');
    const first = await launch(spec);
    (await guestOf(first)).close();
    first.detach();
    running.delete(first);

    const fresh = new LibvirtDriver(driverOptions);
    // Another agent's VM directory with the same id: a different domain name, nothing to attach to.
    assert.equal(await fresh.attach({ ...spec, dir: join(root, 'other', 'vms', spec.id) }), undefined);
    const vm = await fresh.attach(spec);
    assert.ok(vm, 'the running domain was found');
    running.add(vm);
    vm.exited.then(() => running.delete(vm));
    assert.equal(vm.pid, first.pid);
    const guest = await guestOf(vm);
    const echo = await collect((o) => guest.exec({ argv: ['echo', 'still here'] }, o));
    assert.equal(echo.stdout, 'still here\n');
    guest.close();
    // A domain left paused (an agent that died inside launch) is not adopted but destroyed, and
    // the driver that watched it reports a destroy it did not ask for.
    await libvirt!.virsh.run(['suspend', domainName(spec)]);
    assert.equal(await new LibvirtDriver(driverOptions).attach(spec), undefined);
    const exit = await vm.exited;
    assert.deepEqual(
      [exit.reason, exit.graceful],
      ['domain destroyed outside Warren (virsh destroy)', false],
    );
    assert.equal(await fresh.attach(spec), undefined);
  });
});
