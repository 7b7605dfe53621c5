/**
 * The VMM contract: every driver in DRIVERS (apps/host-agent/src/vmm/drivers.ts) boots real
 * microVMs and must behave the same through VmManager: boot, exec, files, disks of two VMs kept
 * apart, limits applied, stop/start keeping the data volume, re-attach after an agent restart,
 * crash detection, and destroy leaving nothing. A driver whose prerequisites this machine lacks
 * is reported as skipped, with the reason.
 *
 * Boots are few (three per driver): the assertions of one driver share its VMs, in order.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import { after, before, describe, test } from 'node:test';
import { cgroupsOf, DRIVERS, loadConfig, tapName, VMM_NAMES } from '@warren/host-agent';
import { collect, openTestHost, type TestHost } from '../helpers/host.ts';
import { minimalImage } from '../helpers/image.ts';
import { until } from '../helpers/until.ts';

const sh = (script: string) => ({ argv: ['sh', '-c', script] });

/** WARREN_TEST_VMMS=a,b runs only those drivers (the others are reported skipped). */
const only = process.env.WARREN_TEST_VMMS?.split(',');

for (const name of VMM_NAMES) {
  const env = { WARREN_VMM: name };
  const missing = await DRIVERS[name].prerequisites(loadConfig(env));
  const skip =
    only && !only.includes(name)
      ? `not in WARREN_TEST_VMMS=${only.join(',')}`
      : missing && `${name} cannot run here: ${missing}`;
  describe(`vmm contract: ${name}`, {
    timeout: 900_000,
    ...(skip ? { skip } : {}),
  }, () => {
    let host: TestHost;
    let image: string;
    let services: { stop(): Promise<void> } | undefined;
    // Shared by the tests below, which run in order: `a` lives through all of them, `b` is crashed.
    const a = `c-${name}-a`;
    const b = `c-${name}-b`;

    before(async () => {
      image = await minimalImage();
      services = await DRIVERS[name].services?.(loadConfig(env), (m) => console.log(`# ${name}: ${m}`));
      host = await openTestHost(env);
      assert.equal(host.vms.vmm.name, name);
    });
    after(async () => {
      await host?.dispose();
      await services?.stop();
    });

    test('boots two VMs to a ready guest agent; exec runs in the guest', async () => {
      await host.vms.create({ id: a, image, cpus: 2, memoryMiB: 256, diskMiB: 64 });
      await host.vms.create({ id: b, image, memoryMiB: 256, diskMiB: 32 });
      const started = await host.vms.start(a);
      assert.equal(started.state, 'running');
      assert.equal(started.vmm, name);
      assert.ok(started.pid && existsSync(`/proc/${started.pid}`), 'the VMM process runs');
      assert.equal((await host.vms.start(b)).state, 'running');
      const out = await collect((o) =>
        host.vms.guest(a).then((g) => g.exec(sh('echo hi; echo err >&2; exit 3'), o)),
      );
      assert.equal(out.stdout, 'hi\n');
      assert.equal(out.stderr, 'err\n');
      assert.equal((out.exit as { exitCode: number }).exitCode, 3);
    });

    test('files go in and out; the data volume is mounted at /workspace for the agent user', async () => {
      const g = await host.vms.guest(a);
      await g.writeFile('/workspace/in.txt', 'from the host\n');
      assert.equal((await g.readFileBuffer('/workspace/in.txt')).toString(), 'from the host\n');
      const mount = await collect((o) =>
        g.exec(sh('grep " /workspace " /proc/mounts; stat -c %u /workspace'), o),
      );
      assert.match(mount.stdout, /^\/dev\/vdb \/workspace ext4/);
      assert.match(mount.stdout, /\n1000\n$/);
    });

    test('two VMs from one image have independent root filesystems and data volumes', async () => {
      const ga = await host.vms.guest(a);
      await ga.exec(sh('echo root-a > /etc/marker && echo data-a > /workspace/marker && sync'));
      const inB = await collect((o) =>
        host.vms.guest(b).then((gb) => gb.exec(sh('cat /etc/marker /workspace/marker 2>&1; true'), o)),
      );
      assert.match(inB.stdout, /No such file/);
      assert.doesNotMatch(inB.stdout, /root-a|data-a/);
    });

    test('limits apply: vCPUs and memory in the guest, and the VMM in its cgroup with the VM limits', async () => {
      const g = await host.vms.guest(a);
      const seen = await collect((o) => g.exec(sh('nproc; grep MemTotal /proc/meminfo'), o));
      const [nproc, mem] = seen.stdout.split('\n');
      assert.equal(nproc, '2');
      const memKiB = Number(/(\d+) kB/.exec(mem ?? '')?.[1]);
      assert.ok(memKiB > 128 * 1024 && memKiB <= 256 * 1024, `guest MemTotal ${memKiB} kB for 256 MiB`);
      // The agent refuses to start without cgroups unless told `off`, which the test host is not.
      assert.notEqual(host.cgroups.state, 'off', host.cgroups.reason);
      if (host.vms.vmm.capabilities.ownsCgroups) return; // The driver's own limits: the guest's view above.
      const { pid } = await host.vms.get(a);
      assert.match(await cgroupsOf(pid!), new RegExp(`warren/${a}`));
      if (host.cgroups.state === 'v1') {
        const base = '/sys/fs/cgroup';
        assert.equal((await readFile(`${base}/cpu/warren/${a}/cpu.cfs_quota_us`, 'utf8')).trim(), '200000');
        const limit = Number(await readFile(`${base}/memory/warren/${a}/memory.limit_in_bytes`, 'utf8'));
        assert.equal(limit, (256 + 384) * 1024 * 1024);
        assert.ok(Number(await readFile(`${base}/pids/warren/${a}/pids.max`, 'utf8')) > 0);
      } else {
        assert.equal((await readFile(`/sys/fs/cgroup/warren/${a}/cpu.max`, 'utf8')).trim(), '200000 100000');
        const limit = Number(await readFile(`/sys/fs/cgroup/warren/${a}/memory.max`, 'utf8'));
        assert.equal(limit, (256 + 384) * 1024 * 1024);
      }
    });

    test('snapshots: a driver without the capabilities refuses them with SNAPSHOTS_UNSUPPORTED', async (t) => {
      const caps = host.vms.vmm.capabilities;
      if (caps.memorySnapshots && caps.diskSnapshots) {
        t.skip(`${name} snapshots VMs: test/vm/snapshots.test.ts covers it`);
        return;
      }
      await assert.rejects(host.vms.createSnapshot(a, { name: 'x' }), { code: 'SNAPSHOTS_UNSUPPORTED' });
      await assert.rejects(host.vms.revertSnapshot(a, 'x'), { code: 'SNAPSHOTS_UNSUPPORTED' });
      assert.deepEqual(await host.vms.snapshots(a), []);
    });

    test("backups: a driver that cannot freeze a running VM's disks refuses them with BACKUPS_UNSUPPORTED", async (t) => {
      if (host.vms.vmm.capabilities.diskSnapshots) {
        t.skip(`${name} freezes disks: test/vm/backups.test.ts covers it`);
        return;
      }
      const before = (await host.vms.get(a)).disks;
      const request = {
        id: 'bak_0123456789abcdef',
        keys: { tenant: Buffer.alloc(32, 1).toString('base64') },
        metadata: {
          tenantId: 'ten_0123456789abcdef',
          tenantName: 'x',
          imageId: 'x',
          resources: {},
          network: null,
        },
      };
      await assert.rejects(host.backups.startBackup(a, request), { code: 'BACKUPS_UNSUPPORTED' });
      await assert.rejects(
        host.vms.backupPoint(a, { includeRoot: false, freezeTimeoutMs: 1000 }, async () => undefined),
        { code: 'BACKUPS_UNSUPPORTED' },
      );
      assert.deepEqual((await host.vms.get(a)).disks, before);
    });

    test('stop powers the guest off; start again keeps the data volume and the root disk', async () => {
      const stopped = await host.vms.stop(a);
      assert.equal(stopped.state, 'stopped');
      assert.equal(stopped.lastExit?.graceful, true);
      assert.equal(stopped.lastExit?.reason, 'guest powered off');
      assert.equal((await host.vms.start(a)).state, 'running');
      const again = await collect((o) =>
        host.vms.guest(a).then((g) => g.exec(sh('cat /workspace/marker /etc/marker /workspace/in.txt'), o)),
      );
      assert.equal(again.stdout, 'data-a\nroot-a\nfrom the host\n');
    });

    test('an agent restart re-attaches: the same VMM process, still reachable', async (t) => {
      if (!host.vms.vmm.capabilities.reAttach) {
        t.skip(`${name} does not declare reAttach`);
        return;
      }
      const before = await host.vms.get(a);
      host = await host.reopen();
      const now = await host.vms.get(a);
      assert.equal(now.state, 'running');
      assert.equal(now.pid, before.pid, 'no second VMM was started');
      // The guest agent drops the old agent's channel first; the first handshake may meet that.
      await until(
        'the guest answers through the new manager',
        () => host.vms.guest(a).then((g) => g.health()),
        30_000,
      );
      const out = await collect((o) => host.vms.guest(a).then((g) => g.exec(sh('cat /workspace/marker'), o)));
      assert.equal(out.stdout, 'data-a\n');
    });

    test('a killed VMM is detected and reported as a crash', async () => {
      const { pid } = await host.vms.get(b);
      const exited = new Promise<{ graceful: boolean }>((resolve) =>
        host.vms.on('exit', (id, exit) => id === b && resolve(exit)),
      );
      process.kill(pid!, 'SIGKILL');
      assert.equal((await exited).graceful, false);
      const crashed = await host.vms.get(b);
      assert.equal(crashed.state, 'crashed');
      assert.equal(crashed.lastExit?.graceful, false);
      assert.ok(crashed.lastExit?.reason, 'the exit says why');
      await assert.rejects(host.vms.guest(b), { code: 'VM_NOT_RUNNING' });
    });

    test('destroy leaves nothing: directory, process, cgroup, TAP, backend traces', async () => {
      const pid = (await host.vms.get(a)).pid!;
      for (const id of [a, b]) {
        const dir = host.vms.dirOf(id);
        await host.vms.destroy(id);
        assert.equal(existsSync(dir), false, `${dir} is gone`);
        assert.equal(existsSync(`/sys/class/net/${tapName(id)}`), false, 'no TAP');
        if (host.cgroups.state === 'v1')
          assert.equal(existsSync(`/sys/fs/cgroup/memory/warren/${id}`), false);
        if (host.cgroups.state === 'v2') assert.equal(existsSync(`/sys/fs/cgroup/warren/${id}`), false);
        assert.deepEqual((await host.vms.vmm.traces?.(id, dir)) ?? [], [], 'nothing left in the backend');
      }
      assert.equal(existsSync(`/proc/${pid}`), false, 'the VMM process is gone');
      assert.deepEqual(await readdir(`${host.dataDir}/vms`), []);
    });
  });
}
