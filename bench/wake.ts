/**
 * Issue 13's figures in one run, medians of N (default 5), each beside its target:
 *
 * - cold boot to exec-ready: `start` of a fresh VM with templates off, until `true` ran in it;
 * - template start to exec-ready: `start` of a fresh VM from its image's template (the first
 *   start, which builds the template, is printed apart and not counted);
 * - suspend: `suspend` of a running, idle VM, until it returned (QEMU gone);
 * - wake to exec-ready: `start` of the suspended VM until `true` ran in it;
 * - host memory of one idle running tenant (RSS of its QEMU, guest RAM included) against one
 *   suspended (no QEMU: 0, and the bytes its saved memory takes on disk).
 *
 *   flock /tmp/warren-vm.lock npm run bench:wake -- [--runs 5] [--profile minimal] [--memory 512]
 *
 * Everything goes through the host agent's VmManager over the QEMU driver, as bench/boot.ts
 * does (jailed QEMU, no network). Parts whose API this checkout lacks print "not available"
 * with the reason (feature-detected: `VmManager.suspend`, the `templateStart` setting).
 * Baseline in the same run: the cold boot, which the template start and the wake must beat
 * 5x; a bare QEMU start to its QMP socket is printed for scale.
 */

import { mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { type Host, imagesDirOf, loadConfig, openHost } from '@warren/host-agent';
import { buildImage, ImageStore, type Profile } from '@warren/images';
import { bareQemuStarts, median } from './common.ts';

const { values } = parseArgs({
  options: {
    runs: { type: 'string', default: '5' },
    profile: { type: 'string', default: 'minimal' },
    memory: { type: 'string', default: '512' },
  },
});
const runs = Number(values.runs);
const memoryMiB = Number(values.memory);
const profile = values.profile as Profile;
const ms = (x: number) => `${x.toFixed(0)} ms`;
const mib = (bytes: number) => `${(bytes / 1024 / 1024).toFixed(1)} MiB`;

const config = loadConfig();
const store = new ImageStore(imagesDirOf(config));
const { imageId } = await buildImage(store, { profile, cacheDir: join(config.dataDir, 'cache') });
await store.verify(imageId);

/** Memory a process holds: its resident set (guest RAM it touched included: a memfd it maps). */
async function rssBytes(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  return Number(/^VmRSS:\s+(\d+) kB/m.exec(status)?.[1] ?? 0) * 1024;
}

/** Bytes allocated on disk under `path` (sparse files count what they hold, not their length). */
async function diskBytes(path: string): Promise<number> {
  const st = await stat(path).catch(() => undefined);
  if (!st) return 0;
  if (!st.isDirectory()) return st.blocks * 512;
  let total = 0;
  for (const name of await readdir(path)) total += await diskBytes(join(path, name));
  return total;
}

interface Opened {
  host: Host;
  dataDir: string;
  logs: string[];
}

const opened: Opened[] = [];
async function open(env: NodeJS.ProcessEnv): Promise<Opened> {
  const dataDir = await mkdtemp(join(tmpdir(), 'wb-'));
  const logs: string[] = [];
  const host = await openHost(
    loadConfig(
      { ...process.env, WARREN_VMM: 'qemu', ...env },
      { dataDir, imagesDir: imagesDirOf(config), network: 'off' },
    ),
    (m) => logs.push(m),
  );
  const o = { host, dataDir, logs };
  opened.push(o);
  return o;
}

async function execReady(host: Host, id: string): Promise<void> {
  const result = await (await host.vms.guest(id)).exec({ argv: ['true'] });
  if (result.exitCode !== 0) throw new Error(`true exited ${result.exitCode} in VM ${id}`);
}

/** Starts a fresh VM; ms from `start` until `true` ran in it. The VM is left running. */
async function startToExec(host: Host): Promise<{ id: string; ms: number }> {
  const vm = await host.vms.create({ image: imageId, memoryMiB, diskMiB: 64 });
  const t0 = performance.now();
  await host.vms.start(vm.id);
  await execReady(host, vm.id);
  return { id: vm.id, ms: performance.now() - t0 };
}

const cold: number[] = [];
const template: number[] = [];
let templateBuild: number | undefined;
const suspend: number[] = [];
const wake: number[] = [];
const rssRunning: number[] = [];
const suspendedDisk: number[] = [];
const unavailable = { template: '', suspend: '' };
const bare: number[] = [];

const onInterrupt = () => {
  void cleanUp().finally(() => process.exit(130));
};
process.once('SIGINT', onInterrupt);

async function cleanUp(): Promise<void> {
  for (const o of opened.splice(0)) {
    for (const vm of await o.host.vms.list().catch(() => [])) await o.host.vms.destroy(vm.id).catch(() => {});
    o.host.vms.close();
    await rm(o.dataDir, { recursive: true, force: true });
  }
}

try {
  bare.push(...(await bareQemuStarts(config.qemuBinary, runs)));
  const templatesKnown = 'templateStart' in config;
  const coldHost = await open(templatesKnown ? { WARREN_TEMPLATE_START: 'off' } : {});
  const vms = coldHost.host.vms as unknown as { suspend?: (id: string) => Promise<unknown> };
  if (typeof vms.suspend !== 'function')
    unavailable.suspend = 'VmManager has no suspend() in this checkout (idle reclamation not merged)';

  // Cold boots; each booted VM then (if suspend exists) sits idle, is measured, suspended and woken.
  for (let i = 0; i < runs; i++) {
    const { id, ms: t } = await startToExec(coldHost.host);
    cold.push(t);
    console.log(`cold boot ${i + 1}/${runs}: ${ms(t)}`);
    if (!unavailable.suspend) {
      await sleep(2000); // idle: the boot's work is over
      const pid = (await coldHost.host.vms.get(id)).pid;
      if (pid) rssRunning.push(await rssBytes(pid));
      const t0 = performance.now();
      await vms.suspend!(id);
      suspend.push(performance.now() - t0);
      const status = (await coldHost.host.vms.get(id)) as {
        state: string;
        pid?: number;
        suspended?: { dir: string };
      };
      if (status.state !== 'suspended' || status.pid)
        throw new Error(`VM ${id} is ${status.state} after suspend`);
      suspendedDisk.push(
        await diskBytes(join(coldHost.host.vms.dirOf(id), status.suspended?.dir ?? 'suspend')),
      );
      const t1 = performance.now();
      await coldHost.host.vms.start(id);
      await execReady(coldHost.host, id);
      wake.push(performance.now() - t1);
      console.log(
        `  suspend ${ms(suspend.at(-1)!)}, wake to exec-ready ${ms(wake.at(-1)!)}, running RSS ${mib(rssRunning.at(-1) ?? 0)}, suspended on disk ${mib(suspendedDisk.at(-1)!)}`,
      );
    }
    await coldHost.host.vms.destroy(id);
  }

  if (!templatesKnown) {
    unavailable.template =
      'the host agent has no templateStart setting in this checkout (templates not merged)';
  } else {
    const tplHost = await open({ WARREN_TEMPLATE_START: 'on' });
    // The first start of an image (and shape) boots the VM whose snapshot becomes the template.
    const first = await startToExec(tplHost.host);
    templateBuild = first.ms;
    await tplHost.host.vms.destroy(first.id);
    for (let i = 0; i < runs; i++) {
      const before = tplHost.logs.length;
      const { id, ms: t } = await startToExec(tplHost.host);
      await tplHost.host.vms.destroy(id);
      const fromTemplate = tplHost.logs.slice(before).some((l) => l.includes('started from its template'));
      if (!fromTemplate) {
        unavailable.template = `start ${i + 1} booted instead of starting from the template: ${tplHost.logs.slice(before).join(' | ')}`;
        break;
      }
      template.push(t);
      console.log(`template start ${i + 1}/${runs}: ${ms(t)}`);
    }
  }
} finally {
  process.off('SIGINT', onInterrupt);
  await cleanUp();
}

const coldMs = median(cold);
const speedup = (x: number) => `${(coldMs / x).toFixed(1)}x faster than a cold boot`;
const line = (what: string, figure: string, target: string, met?: boolean) =>
  console.log(
    `${what.padEnd(40)} ${figure.padEnd(44)} target: ${target}${met === undefined ? '' : met ? ' (met)' : ' (NOT met)'}`,
  );
console.log(
  `\nnode ${process.version}; ${profile} image ${imageId.slice(0, 19)}, ${memoryMiB} MiB VMs; medians of ${runs}; bare QEMU start to QMP socket ${ms(median(bare))}`,
);
line(
  'cold boot to exec-ready',
  `${ms(coldMs)} (min ${ms(Math.min(...cold))}, max ${ms(Math.max(...cold))})`,
  'under 5000 ms',
  coldMs < 5000,
);
if (template.length === runs) {
  const t = median(template);
  line(
    'template start to exec-ready',
    `${ms(t)}, ${speedup(t)}`,
    '5x faster than a cold boot',
    coldMs / t >= 5,
  );
  console.log(`${''.padEnd(40)} (building the template: first start ${ms(templateBuild!)}, not counted)`);
} else
  line(
    'template start to exec-ready',
    `not available: ${unavailable.template}`,
    '5x faster than a cold boot',
  );
if (wake.length === runs) {
  const w = median(wake);
  line(
    'suspend',
    `${ms(median(suspend))} (min ${ms(Math.min(...suspend))}, max ${ms(Math.max(...suspend))})`,
    '-',
  );
  line('wake to exec-ready', `${ms(w)}, ${speedup(w)}`, '5x faster than a cold boot', coldMs / w >= 5);
  line(
    'host memory, idle running tenant',
    `${mib(median(rssRunning))} RSS (its QEMU, guest RAM included)`,
    '-',
  );
  line(
    'host memory, suspended tenant',
    `0 MiB RSS (no QEMU); ${mib(median(suspendedDisk))} saved memory on disk`,
    'no guest RAM held',
    true,
  );
} else {
  for (const what of ['suspend', 'wake to exec-ready', 'host memory, idle running vs suspended'])
    line(
      what,
      `not available: ${unavailable.suspend}`,
      what.startsWith('wake') ? '5x faster than a cold boot' : '-',
    );
}
