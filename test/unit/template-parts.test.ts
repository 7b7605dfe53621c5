/**
 * Parts of template starts that need no VM: the guest's reseed program runs on this (x86-64)
 * machine and reseeds its kernel's generator, a template's key changes with every part of a
 * VM's shape, and the QEMU arguments of a template boot and a template's NIC.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { arch, tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { promisify } from 'node:util';
import { reseedProgram } from '../../apps/guest-agent/src/identity.ts';
import { templateKeyName } from '../../apps/host-agent/src/vm/templates.ts';
import { qemuArgs } from '../../apps/host-agent/src/vmm/qemu/qemu-args.ts';

const run = promisify(execFile);

test('the reseed program asks the kernel to reseed (root) and is refused without privileges', async (t) => {
  if (arch() !== 'x64' || process.getuid?.() !== 0) {
    t.skip('needs an x86-64 host and root (the guest agent runs it as root in x86-64 guests)');
    return;
  }
  const dir = await mkdtemp(join(tmpdir(), 'wrn-reseed-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const program = join(dir, 'reseed');
  await writeFile(program, reseedProgram(), { mode: 0o755 });
  await run(program, []);
  // As nobody: RNDRESEEDCRNG needs CAP_SYS_ADMIN; the program exits with the errno (EPERM = 1).
  const refused = await run('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', program]).then(
    () => 0,
    (e: { code: number }) => e.code,
  );
  assert.equal(refused, 1);
});

test("a template's key differs for each part of a VM's shape", () => {
  const base = {
    imageId: 'sha256:aa',
    cpus: 1,
    memoryMiB: 256,
    accel: 'tcg' as const,
    vmm: 'qemu',
    nic: false,
  };
  const names = new Set(
    [
      base,
      { ...base, imageId: 'sha256:ab' },
      { ...base, cpus: 2 },
      { ...base, memoryMiB: 512 },
      { ...base, accel: 'kvm' as const },
      { ...base, vmm: 'libvirt' },
      { ...base, nic: true },
    ].map(templateKeyName),
  );
  assert.equal(names.size, 7);
  assert.equal(templateKeyName(base), templateKeyName({ ...base }));
});

test('a template boots in template mode, with a NIC on a hub port when its tenants have one', () => {
  const spec = {
    id: 'tpl-x',
    dir: '/var/lib/warren/templates/.b-x',
    image: {
      id: 'i',
      manifest: { cmdline: 'root=/dev/vda rw' },
      kernelPath: '/k',
      initrdPath: '/i',
      rootfsPath: '/r',
    },
    cpus: 1,
    memoryMiB: 256,
    accel: 'tcg' as const,
    template: { nic: true },
  } as unknown as Parameters<typeof qemuArgs>[0];
  const args = qemuArgs(spec, { tcgTranslationCacheMiB: 64 });
  const append = args[args.indexOf('-append') + 1]!;
  assert.match(append, /warren\.template=1/);
  assert.doesNotMatch(append, /warren\.net=/);
  assert.ok(args.includes('hubport,id=net0,hubid=0'), args.join(' '));
  assert.ok(!args.some((a) => a.startsWith('tap,')), 'no TAP for a template');
  const without = qemuArgs({ ...spec, template: { nic: false } }, { tcgTranslationCacheMiB: 64 });
  assert.ok(!without.some((a) => a.includes('virtio-net')));
});
