/**
 * The arguments and launcher scripts of a jailed QEMU, for every mode a host runs in (TCG or
 * KVM, with or without a NIC), and the capped console log. test/vm/jail.test.ts boots them.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { after, test } from 'node:test';
import {
  JAIL_PATHS,
  launcher,
  qemuArgs,
  TAP_FD,
  type VmLaunchSpec,
  writeCappedLog,
} from '@warren/host-agent';

const dir = await mkdtemp(join(tmpdir(), "wt-jail-'$(touch pwned)'-"));
after(() => rm(dir, { recursive: true, force: true }));

function spec(over: Partial<VmLaunchSpec> = {}): VmLaunchSpec {
  return {
    id: 'vm-x',
    dir,
    image: {
      id: 'img',
      manifest: { cmdline: "root=/dev/vda quiet it's" },
      kernelPath: '/store/blobs/k',
      initrdPath: '/store/blobs/i',
      rootfsPath: '/store/blobs/r',
    } as unknown as VmLaunchSpec['image'],
    cpus: 1,
    memoryMiB: 256,
    accel: 'tcg',
    jail: { uid: 600_123, gid: 600_123 },
    ...over,
  };
}
const net = { tap: 'wt-tap0', mac: '02:00:00:00:00:01', kernelArg: 'warren.net=10.0.0.2' };
const options = { tcgTranslationCacheMiB: 64 };
const build = (s: VmLaunchSpec, kvm?: { major: number; minor: number }) => {
  const args = qemuArgs(s, { ...options, ...(s.network ? { tapFd: TAP_FD } : {}) });
  const l = launcher(s, args, {
    binary: '/usr/bin/qemu-system-x86_64',
    ids: s.jail!,
    libDirs: [],
    fsizeBytes: 1 << 30,
    ...(kvm ? { kvm } : {}),
  });
  return { args, ...l.scripts };
};

test('QEMU is given only paths inside its jail, never a host path', () => {
  for (const s of [spec(), spec({ accel: 'kvm', network: net })]) {
    const { args } = build(s);
    const joined = args.join('\n');
    for (const host of [dir, '/store/']) assert.ok(!joined.includes(host), `${host} in ${joined}`);
    assert.ok(args.includes(JAIL_PATHS.kernel));
    assert.ok(args.some((a) => a.includes(`file.filename=${JAIL_PATHS.rootDisk}`)));
  }
});

test('TCG without a NIC: no netdev, no TAP opened, no /dev/kvm', () => {
  const { args, 'launch.sh': launch, 'jail.sh': jail } = build(spec());
  assert.deepEqual(args.slice(args.indexOf('-accel'), args.indexOf('-accel') + 2), [
    '-accel',
    'tcg,tb-size=64',
  ]);
  assert.ok(!args.includes('-netdev'));
  assert.ok(!launch.includes('/dev/net/tun'));
  assert.ok(!jail.includes('kvm'));
});

test('KVM: a /dev/kvm node of the VM uid in the jail', () => {
  const { args, 'jail.sh': jail } = build(spec({ accel: 'kvm' }), { major: 10, minor: 232 });
  assert.deepEqual(args.slice(args.indexOf('-accel'), args.indexOf('-accel') + 4), [
    '-accel',
    'kvm',
    '-cpu',
    'host',
  ]);
  assert.match(jail, /mknod -m 0600 '[^\n]*'\/dev\/kvm c 10 232\nchown 600123:600123 /);
});

test('a NIC: the launcher opens the TAP and QEMU gets it as a descriptor, with no /dev/net/tun of its own', () => {
  const { args, 'launch.sh': launch, 'jail.sh': jail } = build(spec({ network: net }));
  assert.ok(args.includes(`tap,id=net0,fd=${TAP_FD},vhost=off`));
  assert.match(args[args.indexOf('-append') + 1]!, / ipv6\.disable=1 warren\.net=10\.0\.0\.2$/);
  assert.match(launch, new RegExp(`exec ${TAP_FD}<>/dev/net/tun\\n.*TUNSETIFF.*'wt-tap0'`));
  // The TAP is opened in the host's network namespace, before unshare gives QEMU an empty one.
  assert.ok(launch.indexOf('/dev/net/tun') < launch.indexOf('unshare'));
  assert.ok(!jail.includes('/dev/net/tun'));
  assert.throws(() => qemuArgs(spec({ network: net }), options), /TAP descriptor/);
});

test('the launcher passes every argument to QEMU exactly, whatever quotes or $() they hold', async () => {
  const { args, 'jail.sh': jail } = build(spec({ network: net }));
  const setLine = jail.split('\n').find((l) => l.startsWith('set -- '))!;
  const r = spawnSync('/bin/sh', ['-c', `${setLine}\nfor a in "$@"; do printf '%s\\0' "$a"; done`], {
    cwd: dir,
    encoding: 'utf8',
  });
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(r.stdout.split('\0').slice(0, -1), args);
  // The VM directory's name (with a quote and a $()) stays one word: `sh -n` parses both scripts.
  for (const script of [jail, build(spec({ network: net }))['launch.sh']]) {
    assert.equal(spawnSync('/bin/sh', ['-n', '-c', script]).status, 0);
  }
  assert.ok(!(await readdir(dir)).includes('pwned'));
});

test('the console log never holds more than twice its cap, and keeps the latest output', async () => {
  const path = join(dir, 'console.log');
  const cap = 1000;
  const chunks = Array.from({ length: 57 }, (_, i) =>
    Buffer.from(`${String(i).padStart(3, '0')}:${'x'.repeat(96)}\n`),
  );
  await writeCappedLog(Readable.from(chunks), path, cap);
  const [current, rotated] = [await stat(path), await stat(`${path}.1`)];
  assert.ok(current.size <= cap && rotated.size <= cap, `${current.size} + ${rotated.size}`);
  assert.ok((await readFile(path, 'utf8')).endsWith(`056:${'x'.repeat(96)}\n`));
  assert.equal(current.mode & 0o777, 0o600);
  // Opening it again appends to what is there and still rotates at the cap.
  await writeCappedLog(Readable.from([Buffer.alloc(cap, 'y')]), path, cap);
  assert.ok((await stat(path)).size <= cap && (await stat(`${path}.1`)).size <= cap);
});

test('skill disks: read-only, after the root and data disks, each with its serial, bound read-only into the jail', () => {
  const skills = [
    { name: 'tools', digest: `sha256:${'a'.repeat(64)}`, path: '/data/skills/disks/a.ext4' },
    { name: 'more', digest: `sha256:${'b'.repeat(64)}`, path: '/data/skills/disks/b.ext4' },
  ];
  const { args, 'jail.sh': jailSh } = build(spec({ skills }));
  const devices = args.filter((_, i) => args[i - 1] === '-device' && args[i]!.startsWith('virtio-blk'));
  assert.deepEqual(devices, [
    'virtio-blk-device,drive=root',
    'virtio-blk-device,drive=data',
    'virtio-blk-device,drive=skill0,serial=wsk-0',
    'virtio-blk-device,drive=skill1,serial=wsk-1',
  ]);
  const skillNodes = args.filter((a) => a.includes('node-name=skill'));
  assert.equal(skillNodes.length, 2);
  for (const n of skillNodes)
    assert.match(n, /read-only=on,file\.driver=file,file\.filename=\/skill-\d\.img$/);
  // The VM's own copy (not the shared cache) is bound, read-only.
  const binds = jailSh.split('\n').filter((l) => l.startsWith('mount') && l.includes("/skill-0.img'"));
  assert.equal(binds.length, 1);
  assert.ok(binds[0]!.startsWith('mount -n --bind -o ro,nosuid,nodev,noexec '), binds[0]);
  assert.ok(binds[0]!.includes("/skills/0.img' "), binds[0]);
  assert.ok(!jailSh.includes('/data/skills/disks/'));
});
