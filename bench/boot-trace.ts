/**
 * Where a cold boot's time goes: boots N fresh VMs (default 3) of one image through the host
 * agent's VmManager and the QEMU driver, as bench/boot.ts does, and prints the median of each
 * phase, from the host's side and from the guest's.
 *
 *   npm run bench:boot-trace -- [--runs 3] [--profile minimal] [--compare IMAGE_ID]
 *
 * `--compare` boots another image (e.g. one built by an older checkout) in the same run,
 * alternating with this checkout's, so a before/after comparison sees the same machine load.
 *
 * The guest's phases come from the milestones its init scripts and guest agent write to the
 * serial console (`warren-boot: NAME UPTIME`), timed on the host as they arrive in the VM's
 * console log (polled every 5 ms): the guest's own clock is not used, because under TCG it
 * starts only once the kernel is decompressed and then loses time. The host's phases come from
 * wrapping, at run time, the driver's `launch` and GuestClient's `connect` (no code changed).
 *
 * Baseline printed in the same run: a bare QEMU start to its QMP socket (as bench/boot.ts).
 */

import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { DRIVERS, GuestClient, imagesDirOf, loadConfig, openHost } from '@warren/host-agent';
import { buildImage, ImageStore, type Profile } from '@warren/images';
import { bareQemuStarts, median } from './common.ts';

const { values } = parseArgs({
  options: {
    runs: { type: 'string', default: '3' },
    profile: { type: 'string', default: 'minimal' },
    compare: { type: 'string' },
  },
});
const runs = Number(values.runs);
const profile = values.profile as Profile;

/**
 * Milestones the guest agent logs after the fact, at its start (the moment Node started and
 * finished its bootstrap): placed by their guest uptime relative to `agent-loaded`.
 */
const RETROACTIVE = new Set(['node-start', 'node-bootstrapped']);

/** Guest milestones in boot order, and the phase that ends at each. */
const MILESTONES: [name: string, phase: string][] = [
  ['initramfs', 'firmware, kernel decompression and boot, to the initramfs /init'],
  ['modules', 'initramfs: load the virtio modules'],
  ['root-mounted', 'initramfs: wait for /dev/vda, mount the root disk'],
  ['sysinit-done', 'switch_root, busybox init, rc.sysinit (mounts, network, data volume)'],
  ['agent-launch', 'init to the guest agent launcher'],
  ['node-start', 'exec of node'],
  ['node-bootstrapped', 'Node bootstrap'],
  ['agent-loaded', 'agent bundle: compile and evaluate'],
  ['agent-port-open', 'agent start-up to the control port opened'],
  ['agent-first-session', "port opened to the host's connection seen"],
  ['agent-first-request', "HTTP/2 handshake to the host's first request"],
];

const config = loadConfig();
const store = new ImageStore(imagesDirOf(config));
const { imageId } = await buildImage(store, { profile, cacheDir: join(config.dataDir, 'cache') });
await store.verify(imageId);

const bare = await bareQemuStarts(config.qemuBinary, runs);

// Host-side probes, reset per boot.
const probe = { launchStart: 0, launchEnd: 0, connects: 0, connected: 0 };
const entry = DRIVERS.qemu as { create: (typeof DRIVERS)['qemu']['create'] };
const create = entry.create;
entry.create = (c, log) => {
  const driver = create(c, log);
  const launch = driver.launch.bind(driver);
  driver.launch = async (spec) => {
    probe.launchStart = performance.now();
    try {
      return await launch(spec);
    } finally {
      probe.launchEnd = performance.now();
    }
  };
  return driver;
};
const connect = GuestClient.connect.bind(GuestClient);
GuestClient.connect = async (...args) => {
  probe.connects++;
  const client = await connect(...args);
  probe.connected ||= performance.now();
  return client;
};

const dataDir = await mkdtemp(join(tmpdir(), 'wb-'));
const host = await openHost(
  loadConfig(
    { ...process.env, WARREN_VMM: 'qemu' },
    { dataDir, imagesDir: imagesDirOf(config), network: 'off', templateStart: 'off' },
  ),
);
const images = [imageId, ...(values.compare ? [values.compare] : [])];
const tables = new Map<string, Map<string, number[]>>(images.map((id) => [id, new Map()]));
const missing = new Set<string>();
console.log(
  `node ${process.version}; accelerator ${host.accel.accel}; ${profile} image ${imageId}${values.compare ? `, compared with ${values.compare}` : ''}`,
);
try {
  for (let i = 0; i < runs * images.length; i++) {
    const image = images[i % images.length]!;
    const rows = tables.get(image)!;
    const add = (phase: string, ms: number) => rows.set(phase, [...(rows.get(phase) ?? []), ms]);
    const vm = await host.vms.create({ image, memoryMiB: 512, diskMiB: 64 });
    Object.assign(probe, { launchStart: 0, launchEnd: 0, connects: 0, connected: 0 });
    const consoleFile = join(host.vms.dirOf(vm.id), 'console.log');
    const seen = new Map<string, number>();
    const uptimes = new Map<string, number>();
    const t0 = performance.now();
    const poll = setInterval(() => {
      const at = performance.now() - t0;
      let text = '';
      try {
        text = readFileSync(consoleFile, 'utf8');
      } catch {
        return; // Not created yet.
      }
      for (const m of text.matchAll(/^warren-boot: (\S+) ([\d.]+)\s*$/gm)) {
        if (seen.has(m[1]!)) continue;
        seen.set(m[1]!, at);
        uptimes.set(m[1]!, Number(m[2]) * 1000);
      }
    }, 5);
    try {
      await host.vms.start(vm.id);
    } finally {
      clearInterval(poll);
    }
    const ready = performance.now() - t0;
    await host.vms.destroy(vm.id);
    const loaded = seen.get('agent-loaded');
    for (const name of RETROACTIVE) {
      if (loaded !== undefined && uptimes.has(name))
        seen.set(name, loaded - (uptimes.get('agent-loaded')! - uptimes.get(name)!));
    }

    add('host: VmManager before the launch (image check, disks, cgroup)', probe.launchStart - t0);
    add('host: QEMU launch (jail, QMP, console, cont)', probe.launchEnd - probe.launchStart);
    let prev = probe.launchEnd - t0;
    for (const [name, phase] of MILESTONES) {
      const at = seen.get(name);
      if (at === undefined) {
        missing.add(name);
        continue;
      }
      add(`guest: ${phase}`, at - prev);
      prev = at;
    }
    add('host: the first request answered (health)', ready - prev);
    add('total: start() to guest agent ready', ready);
    add('  host connections made', probe.connects);
    console.log(
      `boot ${i + 1}/${runs * images.length} (${image.slice(7, 19)}): ${ready.toFixed(0)} ms, ${probe.connects} connection(s); milestones (s after start()): ${[
        ...seen,
      ]
        .map(([n, t]) => `${n} ${(t / 1000).toFixed(2)}`)
        .join(', ')}`,
    );
  }
} finally {
  for (const vm of await host.vms.list()) await host.vms.destroy(vm.id).catch(() => {});
  host.vms.close();
  await rm(dataDir, { recursive: true, force: true });
}

console.log(`\nbaseline: bare QEMU start to QMP socket, median ${median(bare).toFixed(0)} ms over ${runs}`);
if (missing.size)
  console.log(
    `milestones missing from the console (an image built before they existed?): ${[...missing].join(', ')}`,
  );
for (const [image, rows] of tables) {
  console.log(
    `${`\nimage ${image.slice(7, 19)}: phase (median of ${runs}, ms)`.padEnd(76)}median     min     max`,
  );
  for (const [phase, xs] of rows) {
    console.log(
      `${phase.padEnd(72)}${median(xs).toFixed(0).padStart(7)} ${Math.min(...xs)
        .toFixed(0)
        .padStart(7)} ${Math.max(...xs)
        .toFixed(0)
        .padStart(7)}`,
    );
  }
}
