/**
 * Cold boot to guest-agent ready, per image profile: median of N boots (default 5),
 * with the accelerator used. Each boot is a fresh VM (new overlay and data volume) whose
 * QEMU starts cold; the image digests are verified once beforehand, not per boot.
 *
 *   npm run bench:boot -- [--runs 5] [--profiles minimal,standard]
 *
 * Baseline printed in the same run: a bare QEMU start to its QMP greeting (no guest boot),
 * so the figure can be read as "QEMU start + kernel + init + Node + agent".
 */

import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { imagesDirOf, loadConfig, openHost } from '@warren/host-agent';
import { buildImage, ImageStore, type Profile } from '@warren/images';

const { values } = parseArgs({
  options: {
    runs: { type: 'string', default: '5' },
    profiles: { type: 'string', default: 'minimal,standard' },
  },
});
const runs = Number(values.runs);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const config = loadConfig();
const store = new ImageStore(imagesDirOf(config));
const dataDir = await mkdtemp(join(tmpdir(), 'wb-'));
const host = await openHost(loadConfig(process.env, { dataDir, imagesDir: imagesDirOf(config) }));
console.log(`accelerator: ${host.accel.accel} (${host.accel.reason})`);

try {
  // Baseline: QEMU process start until its QMP socket exists (no guest).
  const bare: number[] = [];
  for (let i = 0; i < runs; i++) {
    const sock = join(dataDir, `bare-${i}.sock`);
    const t0 = performance.now();
    const q = spawn(config.qemuBinary, [
      '-M',
      'microvm',
      '-nodefaults',
      '-nographic',
      '-S',
      '-qmp',
      `unix:${sock},server=on,wait=off`,
    ]);
    while (!existsSync(sock)) await sleep(2);
    bare.push(performance.now() - t0);
    q.kill('SIGKILL');
  }
  console.log(`baseline  bare QEMU start to QMP socket: median ${median(bare).toFixed(0)} ms over ${runs}`);

  for (const profile of values.profiles!.split(',') as Profile[]) {
    const { imageId } = await buildImage(store, { profile, cacheDir: join(config.dataDir, 'cache') });
    await store.verify(imageId);
    const times: number[] = [];
    for (let i = 0; i < runs; i++) {
      const vm = await host.vms.create({ image: imageId, memoryMiB: 512, diskMiB: 64 });
      const t0 = performance.now();
      await host.vms.start(vm.id);
      times.push(performance.now() - t0);
      await host.vms.destroy(vm.id);
    }
    console.log(
      `${profile.padEnd(9)} cold boot to guest agent ready: median ${median(times).toFixed(0)} ms over ${runs} ` +
        `(min ${Math.min(...times).toFixed(0)}, max ${Math.max(...times).toFixed(0)}); ` +
        `${(median(times) / median(bare)).toFixed(1)}x the bare QEMU start`,
    );
  }
} finally {
  for (const vm of await host.vms.list()) await host.vms.destroy(vm.id).catch(() => {});
  host.vms.close();
  await rm(dataDir, { recursive: true, force: true });
}
