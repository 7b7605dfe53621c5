/**
 * Cold boot to guest-agent ready, per VMM driver and image profile: median of N boots
 * (default 5), with the accelerator used. For the `openclaw` profile also cold boot to the
 * gateway healthy: boot, the token delivered at its secret path (as the platform does after
 * a boot), the gateway started by the guest's init until its /healthz answers (asked from
 * inside the guest: the bench runs without tenant networking). It takes minutes under TCG:
 * `--profiles openclaw --runs 1`. Every driver in DRIVERS runs in the same run, through
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

import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import {
  DRIVERS,
  type GuestClient,
  imagesDirOf,
  loadConfig,
  openHost,
  VMM_NAMES,
  type VmmName,
} from '@warren/host-agent';
import { buildImage, ImageStore, OPENCLAW_GUEST, type Profile } from '@warren/images';
import { OPENCLAW_WORKLOAD } from '@warren/protocol';
import { bareQemuStarts, median } from './common.ts';

const { values } = parseArgs({
  options: {
    runs: { type: 'string', default: '5' },
    profiles: { type: 'string', default: 'minimal,standard' },
    drivers: { type: 'string', default: VMM_NAMES.join(',') },
  },
});
const runs = Number(values.runs);
/** How long the openclaw gateway may take to answer after its token is there (TCG: minutes). */
const GATEWAY_TIMEOUT_MS = 15 * 60_000;
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
      const gateway: number[] = [];
      for (let i = 0; i < runs; i++) {
        const openclaw = profile === 'openclaw';
        const vm = await host.vms.create({
          image: images.get(profile)!,
          memoryMiB: openclaw ? 2048 : 512,
          diskMiB: openclaw ? 256 : 64,
        });
        // As the platform does: the tenant's generated token is known before the start and
        // delivered by the VmManager right after the boot (the gateway starts when it lands).
        if (openclaw)
          await host.vms.setSecrets(vm.id, {
            // Values travel base64; the token itself is text.
            [OPENCLAW_WORKLOAD.tokenSecret]: Buffer.from(randomBytes(32).toString('base64url')).toString(
              'base64',
            ),
          });
        const t0 = performance.now();
        await host.vms.start(vm.id);
        times.push(performance.now() - t0);
        if (openclaw) gateway.push(await untilGatewayHealthy(await host.vms.guest(vm.id), t0));
        await host.vms.destroy(vm.id);
      }
      if (gateway.length) {
        console.log(
          `${name.padEnd(8)} ${profile.padEnd(9)} cold boot to gateway healthy: median ${median(gateway).toFixed(0)} ms over ${runs} ` +
            `(min ${Math.min(...gateway).toFixed(0)}, max ${Math.max(...gateway).toFixed(0)})`,
        );
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

/**
 * Asks the gateway's /healthz from inside the guest until it answers; milliseconds since `t0`
 * (the VM's start).
 */
async function untilGatewayHealthy(guest: GuestClient, t0: number): Promise<number> {
  const url = `http://127.0.0.1:${OPENCLAW_GUEST.defaultPort}/healthz`;
  const deadline = Date.now() + GATEWAY_TIMEOUT_MS;
  while (Date.now() < deadline) {
    const r = await guest.exec({
      argv: ['curl', '-sf', '-m', '5', '-o', '/dev/null', url],
      timeoutMs: 30_000,
    });
    if (r.exitCode === 0) return performance.now() - t0;
    await sleep(1000);
  }
  throw new Error(`the OpenClaw gateway did not answer ${url} within ${GATEWAY_TIMEOUT_MS} ms`);
}
