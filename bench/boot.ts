/**
 * Cold boot to guest-agent ready, per VMM driver and image profile: median of N boots
 * (default 5), with the accelerator used. Every driver in DRIVERS runs in the same run, through
 * the host agent's own VmManager (so QEMU is jailed, or libvirt makes the domain, exactly as in
 * production); a driver whose prerequisites are missing is named with the reason. Each boot is
 * a fresh VM (new overlay and data volume) whose VMM starts cold; the image digests are verified
 * once beforehand, not per boot.
 *
 *   npm run bench:boot -- [--runs 5] [--profiles minimal,standard] [--drivers qemu,libvirt]
 *
 * Baseline printed in the same run: a bare QEMU start to its QMP greeting (no guest boot),
 * so the figure can be read as "QEMU start + kernel + init + Node + agent".
 */

import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { DRIVERS, imagesDirOf, loadConfig, openHost, VMM_NAMES, type VmmName } from '@warren/host-agent';
import { buildImage, ImageStore, type Profile } from '@warren/images';
import { bareQemuStarts, median } from './common.ts';

const { values } = parseArgs({
  options: {
    runs: { type: 'string', default: '5' },
    profiles: { type: 'string', default: 'minimal,standard' },
    drivers: { type: 'string', default: VMM_NAMES.join(',') },
  },
});
const runs = Number(values.runs);
const config = loadConfig();
const store = new ImageStore(imagesDirOf(config));
const profiles = values.profiles!.split(',') as Profile[];
const images = new Map<Profile, string>();
for (const profile of profiles) {
  const { imageId } = await buildImage(store, { profile, cacheDir: join(config.dataDir, 'cache') });
  await store.verify(imageId);
  images.set(profile, imageId);
}

// Baseline: QEMU process start until its QMP socket exists (no guest, no jail).
const bare = await bareQemuStarts(config.qemuBinary, runs);
console.log(`baseline  bare QEMU start to QMP socket: median ${median(bare).toFixed(0)} ms over ${runs}`);

for (const name of values.drivers!.split(',') as VmmName[]) {
  const entry = DRIVERS[name];
  if (!entry) throw new Error(`no VMM driver ${name}; drivers: ${VMM_NAMES.join(', ')}`);
  const env = { ...process.env, WARREN_VMM: name };
  const missing = await entry.prerequisites(loadConfig(env));
  if (missing) {
    console.log(`${name.padEnd(8)} skipped: ${missing}`);
    continue;
  }
  const services = await entry.services?.(loadConfig(env), (m) => console.log(`${name.padEnd(8)} ${m}`));
  const dataDir = await mkdtemp(join(tmpdir(), 'wb-'));
  // Cold boots, whatever WARREN_TEMPLATE_START says: template starts are bench/wake.ts's figure.
  const host = await openHost(
    loadConfig(env, { dataDir, imagesDir: imagesDirOf(config), network: 'off', templateStart: 'off' }),
  );
  console.log(`${name.padEnd(8)} accelerator: ${host.accel.accel} (${host.accel.reason})`);
  try {
    for (const profile of profiles) {
      const times: number[] = [];
      for (let i = 0; i < runs; i++) {
        const vm = await host.vms.create({ image: images.get(profile)!, memoryMiB: 512, diskMiB: 64 });
        const t0 = performance.now();
        await host.vms.start(vm.id);
        times.push(performance.now() - t0);
        await host.vms.destroy(vm.id);
      }
      console.log(
        `${name.padEnd(8)} ${profile.padEnd(9)} cold boot to guest agent ready: median ${median(times).toFixed(0)} ms over ${runs} ` +
          `(min ${Math.min(...times).toFixed(0)}, max ${Math.max(...times).toFixed(0)}); ` +
          `${(median(times) / median(bare)).toFixed(1)}x the bare QEMU start`,
      );
    }
  } finally {
    for (const vm of await host.vms.list()) await host.vms.destroy(vm.id).catch(() => {});
    host.vms.close();
    await rm(dataDir, { recursive: true, force: true });
    await services?.stop();
  }
}
