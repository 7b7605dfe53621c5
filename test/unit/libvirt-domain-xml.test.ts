/**
 * The libvirt driver's domain XML, a pure function of the launch spec: the machine, the disks,
 * the guest channel, limits and confinement, escaping of every value, and (where libvirt's
 * client is installed) validity against libvirt's own schema. test/vm/libvirt.test.ts boots it.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import type { VmLaunchSpec } from '@warren/host-agent';
import {
  domainName,
  domainPrefix,
  domainXml,
  metadataDir,
  parseLifecycleLine,
  WARREN_XMLNS,
} from '../../apps/host-agent/src/vmm/libvirt/index.ts';

const tmp = await mkdtemp(join(tmpdir(), 'wt-libvirt-xml-'));
after(() => rm(tmp, { recursive: true, force: true }));

// A data directory an operator may well have, with every character XML gives a meaning to.
const hostile = `/srv/warren & <co>'s "data"/vms/vm-x`;

function spec(over: Partial<VmLaunchSpec> = {}): VmLaunchSpec {
  const dir = over.dir ?? '/var/lib/warren/vms/vm-x';
  return {
    id: 'vm-x',
    dir,
    image: {
      id: 'img',
      manifest: { cmdline: "root=/dev/vda quiet it's <&>" },
      kernelPath: '/store/blobs/k',
      initrdPath: '/store/blobs/i',
      rootfsPath: '/store/blobs/r',
    } as unknown as VmLaunchSpec['image'],
    cpus: 2,
    memoryMiB: 256,
    accel: 'tcg',
    jail: { uid: 600_123, gid: 600_124 },
    ...over,
  };
}
const net = { tap: 'wt-tap0', mac: '02:00:00:00:00:01', kernelArg: 'warren.net=10.0.0.2' };
const options = {
  tcgTranslationCacheMiB: 64,
  hostTscKHz: 2_000_000,
  emulator: '/usr/bin/qemu-system-x86_64',
};

test('a microvm domain with direct kernel boot, both disks, the agent channel, rng and a console socket', () => {
  const xml = domainXml(spec(), options);
  assert.match(xml, /^<domain type='qemu'>/);
  assert.match(xml, /<name>warren-[0-9a-f]{8}-vm-x<\/name>/);
  assert.match(xml, /<type arch='x86_64' machine='microvm'>hvm<\/type>/);
  assert.match(xml, /<controller type='usb' model='none'\/>/);
  assert.match(xml, /<kernel>\/store\/blobs\/k<\/kernel>/);
  assert.match(xml, /<initrd>\/store\/blobs\/i<\/initrd>/);
  assert.match(
    xml,
    /<cmdline>console=ttyS0 root=\/dev\/vda quiet it&apos;s &lt;&amp;&gt; tsc_early_khz=2000000 warren.hostname=vm-x<\/cmdline>/,
  );
  assert.match(
    xml,
    /<source file='\/var\/lib\/warren\/vms\/vm-x\/root.qcow2'\/>\s*<backingStore type='file'>\s*<format type='raw'\/>\s*<source file='\/store\/blobs\/r'\/>/,
  );
  assert.match(
    xml,
    /<driver name='qemu' type='raw' discard='unmap'\/>\s*<source file='\/var\/lib\/warren\/vms\/vm-x\/data.img'\/>/,
  );
  assert.match(
    xml,
    /<channel type='unix'>\s*<source mode='bind' path='\/var\/lib\/warren\/vms\/vm-x\/agent.sock'\/>\s*<target type='virtio' name='org.warren.agent.0'\/>/,
  );
  assert.match(
    xml,
    /<serial type='unix'>\s*<source mode='bind' path='\/var\/lib\/warren\/vms\/vm-x\/console.sock'\/>/,
  );
  assert.match(xml, /<rng model='virtio'>/);
  assert.match(xml, /<tb-cache unit='MiB'>64<\/tb-cache>/);
  // microvm has no PCI: every virtio device needs a virtio-mmio address (root, data, serial controller, rng).
  assert.equal(xml.match(/<address type='virtio-mmio'\/>/g)?.length, 4);
  assert.doesNotMatch(xml, /<interface/);
  assert.doesNotMatch(xml, /cache='none'/);
});

test('limits: vCPUs, memory and a CPU quota for the whole domain', () => {
  const xml = domainXml(spec(), options);
  assert.match(xml, /<vcpu placement='static'>2<\/vcpu>/);
  assert.match(xml, /<memory unit='MiB'>256<\/memory>/);
  assert.match(xml, /<global_period>100000<\/global_period>\s*<global_quota>200000<\/global_quota>/);
});

test("QEMU runs as the VM's own uid and libvirt relabels nothing (the image store is shared)", () => {
  const xml = domainXml(spec(), options);
  assert.match(xml, /<seclabel type='static' model='dac' relabel='no'>\s*<label>\+600123:\+600124<\/label>/);
  assert.throws(() => domainXml(spec({ jail: undefined as never }), options), /no uid/);
});

test('KVM, a NIC on a pre-made TAP, and O_DIRECT disks when an I/O limit is in force', () => {
  const xml = domainXml(spec({ accel: 'kvm', network: net, directIo: true }), options);
  assert.match(xml, /^<domain type='kvm'>/);
  assert.match(xml, /<cpu mode='host-passthrough'\/>/);
  assert.doesNotMatch(xml, /tsc_early_khz|tb-cache/);
  assert.match(xml, /ipv6.disable=1 warren.net=10.0.0.2<\/cmdline>/);
  assert.match(
    xml,
    /<interface type='ethernet'>\s*<mac address='02:00:00:00:00:01'\/>\s*<target dev='wt-tap0' managed='no'\/>\s*<model type='virtio'\/>/,
  );
  assert.equal(xml.match(/cache='none'/g)?.length, 2);
  assert.equal(xml.match(/<address type='virtio-mmio'\/>/g)?.length, 5);
});

test('every value from the spec is escaped, and the metadata gives back the exact VM directory', () => {
  const s = spec({ dir: hostile });
  const xml = domainXml(s, options);
  assert.doesNotMatch(xml, /& <co>/);
  assert.match(xml, /&amp; &lt;co&gt;&apos;s &quot;data&quot;/);
  assert.equal(metadataDir(xml), hostile);
  // What `virsh dumpxml` gives back: libvirt's own formatting, double quotes, another prefix.
  const dumped = `<domain type="qemu" id="3"><metadata>\n<w:vm xmlns:w="${WARREN_XMLNS}">\n<w:id>vm-x</w:id>\n<w:dir>/srv/warren &amp; &lt;co&gt;'s "data"/vms/vm-x</w:dir>\n</w:vm>\n</metadata></domain>`;
  assert.equal(metadataDir(dumped), hostile);
  // Another namespace with the same element names is not Warren's.
  assert.equal(metadataDir(dumped.replace(WARREN_XMLNS, 'https://example.com/other')), undefined);
  assert.equal(metadataDir('<domain><name>x</name></domain>'), undefined);
});

test("domain names keep two agents' VMs apart and share one prefix per agent", () => {
  const a = domainName({ id: 'vm-x', dir: '/a/vms/vm-x' });
  const b = domainName({ id: 'vm-x', dir: '/b/vms/vm-x' });
  assert.notEqual(a, b);
  assert.ok(a.startsWith(domainPrefix('/a/vms')));
  assert.ok(domainName({ id: 'vm-y', dir: '/a/vms/vm-y' }).startsWith(domainPrefix('/a/vms')));
  assert.ok(!b.startsWith(domainPrefix('/a/vms')));
});

test("virsh's lifecycle event lines", () => {
  assert.deepEqual(
    parseLifecycleLine("event 'lifecycle' for domain 'warren-0123abcd-vm-x': Stopped Failed"),
    {
      domain: 'warren-0123abcd-vm-x',
      event: 'Stopped',
      detail: 'Failed',
    },
  );
  assert.equal(parseLifecycleLine('event loop ended'), undefined);
});

test("the XML is valid against libvirt's schema", async (t) => {
  if (!existsSync('/usr/bin/virt-xml-validate')) {
    t.skip('virt-xml-validate is not installed (package libvirt-clients, see scripts/install-deps.sh)');
    return;
  }
  for (const [name, s] of [
    ['tcg', spec()],
    ['kvm-net', spec({ accel: 'kvm', network: net, directIo: true })],
    ['hostile', spec({ dir: hostile })],
  ] as const) {
    const path = join(tmp, `${name}.xml`);
    await writeFile(path, domainXml(s, options));
    const r = spawnSync('/usr/bin/virt-xml-validate', [path, 'domain'], { encoding: 'utf8' });
    assert.equal(r.status, 0, `${name}: ${r.stdout}${r.stderr}`);
  }
});
