/**
 * Each VM's QEMU is jailed (apps/host-agent/src/vmm/qemu/jail.ts): its own unprivileged uid,
 * its own namespaces, a root holding only its own files. The tests act as a QEMU an attacker
 * has taken over through device emulation would: with its credentials, from inside its
 * namespaces, they try to read another VM's disk, the agent's credentials and /etc/shadow.
 * And a guest flooding its serial console cannot fill the host's disk with console.log.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFile, readlink, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { collect, openTestHost, type TestHost } from '../helpers/host.ts';
import { minimalImage } from '../helpers/image.ts';
import { until } from '../helpers/until.ts';

const CONSOLE_CAP = 1024 * 1024;
/** A low disk bandwidth for these VMs, so that writing a few MiB takes measurably long. */
const IO_MIBPS = 4;

function run(argv: string[]) {
  const r = spawnSync(argv[0]!, argv.slice(1), { encoding: 'buffer', maxBuffer: 1 << 26 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr.toString() };
}

describe('QEMU jail', { timeout: 600_000 }, () => {
  let host: TestHost;
  const vm = { a: 'vm-jail-a', b: 'vm-jail-b' };

  before(async () => {
    const image = await minimalImage();
    host = await openTestHost({
      WARREN_CONSOLE_LOG_MIB: String(CONSOLE_CAP / 1024 / 1024),
      WARREN_VM_IO_MIBPS: String(IO_MIBPS),
    });
    for (const id of Object.values(vm)) {
      await host.vms.create({ id, image, diskMiB: 32 });
      await host.vms.start(id);
    }
  });
  after(() => host?.dispose());

  /** A VM's QEMU: its host pid and the credentials it runs with, from /proc. */
  async function qemuOf(id: string) {
    const { pid } = await host.vms.get(id);
    assert.ok(pid, `${id} runs`);
    const status = await readFile(`/proc/${pid}/status`, 'utf8');
    const uid = Number(/^Uid:\t(\d+)/m.exec(status)?.[1]);
    const gid = Number(/^Gid:\t(\d+)/m.exec(status)?.[1]);
    return { pid, uid, gid, status };
  }

  test('each QEMU runs under its own non-root uid, without capabilities, in its own namespaces', async () => {
    const a = await qemuOf(vm.a);
    const b = await qemuOf(vm.b);
    assert.notEqual(a.uid, b.uid);
    const ps = run(['ps', '-o', 'user=,pid=,cmd=', '-C', 'qemu-system-x86_64']).stdout.toString();
    for (const [id, q] of [
      [vm.a, a],
      [vm.b, b],
    ] as const) {
      const line = ps.split('\n').find((l) => l.trim().split(/\s+/)[1] === String(q.pid));
      assert.ok(line, `ps lists QEMU ${q.pid}:\n${ps}`);
      // No passwd entry: ps shows the number.
      assert.equal(line.trim().split(/\s+/)[0], String(q.uid), line);
      const record = JSON.parse(await readFile(join(host.vms.dirOf(id), 'vm.json'), 'utf8'));
      assert.deepEqual(
        record.jail,
        { uid: q.uid, gid: q.gid },
        `${id}'s record holds the uid its QEMU runs as`,
      );
      const { jailUidBase: base, jailUidCount: count } = host.config;
      assert.ok(
        q.uid >= base && q.uid < base + count,
        `QEMU of ${id} runs as uid ${q.uid}, outside ${base}+${count}`,
      );
      const status = q.status;
      assert.match(status, new RegExp(`^Uid:\\t${q.uid}\\t${q.uid}\\t${q.uid}\\t${q.uid}$`, 'm'));
      assert.match(status, new RegExp(`^Gid:\\t${q.gid}\\t${q.gid}\\t${q.gid}\\t${q.gid}$`, 'm'));
      assert.match(status, /^Groups:\s*$/m, 'no supplementary groups');
      assert.match(status, /^CapEff:\t0+$/m);
      assert.match(status, /^CapBnd:\t0+$/m);
      assert.match(status, /^NoNewPrivs:\t1$/m);
      assert.match(status, /^Seccomp:\t2$/m);
      for (const ns of ['mnt', 'pid', 'ipc', 'net']) {
        assert.notEqual(await readlink(`/proc/${q.pid}/ns/${ns}`), await readlink(`/proc/self/ns/${ns}`), ns);
      }
      // Both disks belong to the VM's uid alone.
      for (const disk of ['root.qcow2', 'data.img']) {
        const s = await stat(join(host.vms.dirOf(id), disk));
        assert.equal(s.uid, q.uid, disk);
        assert.equal(s.mode & 0o777, 0o600, disk);
      }
    }
  });

  test("from QEMU's own namespaces and credentials, another VM's disk, the agent's credentials and /etc/shadow cannot be read", async () => {
    const a = await qemuOf(vm.a);
    // The agent's credentials for the control plane, as it keeps them (mode 0600).
    const credentials = join(host.dataDir, 'control-plane.json');
    await writeFile(credentials, JSON.stringify({ agentToken: 'secret-of-the-agent' }), { mode: 0o600 });
    const targets = [
      join(host.vms.dirOf(vm.b), 'data.img'),
      join(host.vms.dirOf(vm.b), 'root.qcow2'),
      credentials,
      '/etc/shadow',
    ];

    // Inside A's QEMU: its mount, PID, IPC and network namespaces, its root and working
    // directory, its uid and gid.
    const inQemu = (argv: string[]) =>
      run([
        'nsenter',
        `--target=${a.pid}`,
        '--mount',
        '--pid',
        '--ipc',
        '--net',
        '--root',
        '--wd',
        `--setuid=${a.uid}`,
        `--setgid=${a.gid}`,
        '--',
        ...argv,
      ]);
    for (const path of targets) {
      const r = inQemu(['cat', path]);
      assert.notEqual(r.status, 0, `QEMU read ${path}`);
      assert.equal(r.stdout.length, 0, `QEMU read ${path}`);
      // Not even there: the jail holds nothing of the host but /usr.
      assert.match(r.stderr, /No such file or directory/, path);
    }
    // Control: this really is QEMU's view, where its own disk is readable.
    const own = inQemu(['head', '-c', '4096', '/data.img']);
    assert.equal(own.status, 0, own.stderr);
    assert.equal(own.stdout.length, 4096);
    const root = inQemu(['ls', '-A', '/']);
    assert.deepEqual(
      root.stdout
        .toString()
        .split('\n')
        .filter(Boolean)
        .filter((n) => !/^(bin|sbin|lib|lib32|lib64|libx32)$/.test(n))
        .sort(),
      // disks: this VM's snapshot layers; snapshot.mem: where a restored VM's memory file is bound.
      ['data.img', 'dev', 'disks', 'initrd', 'kernel', 'root.qcow2', 'rootfs', 'snapshot.mem', 'sock', 'usr'],
    );

    // The uid alone, outside the jail, stops the same reads: a second, independent layer.
    for (const path of targets) {
      const r = run(['setpriv', `--reuid=${a.uid}`, `--regid=${a.gid}`, '--clear-groups', '--', 'cat', path]);
      assert.notEqual(r.status, 0, `uid ${a.uid} read ${path}`);
      assert.match(r.stderr, /Permission denied/, path);
    }
  });

  test('a guest flooding its serial console leaves console.log and console.log.1 under the cap', async () => {
    const dir = host.vms.dirOf(vm.a);
    const guest = await host.vms.guest(vm.a);
    const flood = 5 * CONSOLE_CAP;
    let stderr = '';
    const exit = await guest.exec(
      { argv: ['sh', '-c', `yes 0123456789abcdef | head -c ${flood} > /dev/ttyS0`], timeoutMs: 300_000 },
      { onStderr: (c) => (stderr += c) },
    );
    assert.equal(exit.exitCode, 0, stderr);
    const sizes = async () =>
      Promise.all(
        ['console.log', 'console.log.1'].map((f) =>
          stat(join(dir, f)).then(
            (s) => s.size,
            () => 0,
          ),
        ),
      );
    await until(
      'the console output reached the host',
      async () => {
        const [current, rotated] = await sizes();
        return rotated! > 0 || current! > CONSOLE_CAP;
      },
      60_000,
    );
    const [current, rotated] = await sizes();
    assert.ok(current! <= CONSOLE_CAP, `console.log is ${current} bytes, over the cap of ${CONSOLE_CAP}`);
    assert.ok(rotated! <= CONSOLE_CAP, `console.log.1 is ${rotated} bytes, over the cap of ${CONSOLE_CAP}`);
    // And the VM is still fine.
    const echo = await collect((o) => guest.exec({ argv: ['echo', 'alive'] }, o));
    assert.equal(echo.stdout, 'alive\n');
  });

  test("a guest writing to its disk is held to the VM's I/O limit", async () => {
    // The agent refuses to start without cgroups unless told `off`, which the test host is not.
    assert.notEqual(host.cgroups.state, 'off', host.cgroups.reason);
    const guest = await host.vms.guest(vm.b);
    const mib = 4 * IO_MIBPS;
    const started = Date.now();
    let stderr = '';
    const exit = await guest.exec(
      {
        argv: ['dd', 'if=/dev/zero', 'of=/workspace/io', 'bs=1M', `count=${mib}`, 'conv=fsync'],
        timeoutMs: 120_000,
      },
      { onStderr: (c) => (stderr += c) },
    );
    assert.equal(exit.exitCode, 0, stderr);
    // Throttling only ever slows I/O down, so this bound cannot be met by luck: at the limit the
    // write takes mib / IO_MIBPS seconds (the first second's burst allowance taken off).
    const seconds = (Date.now() - started) / 1000;
    assert.ok(seconds >= mib / IO_MIBPS - 1, `${mib} MiB written in ${seconds} s, over ${IO_MIBPS} MiB/s`);
  });
});
