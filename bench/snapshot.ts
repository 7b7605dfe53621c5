/**
 * Snapshot create and revert-to-exec-ready: Warren (the host agent's VmManager over the QEMU
 * driver, jailed, as in production) against `virsh snapshot-create-as` / `snapshot-revert` of an
 * equivalent libvirt domain, in one run, N iterations each (default 5), medians with min and max.
 *
 *   flock /tmp/warren-vm.lock npm run bench:snapshot -- [--runs 5] [--memory 256]
 *
 * Both VMs run through the whole run, and iterations alternate between them (which goes first
 * alternates too), so load from elsewhere on the machine falls on both alike. Each iteration,
 * per system: take snapshot `s<i>` of the running VM (timed: "create"); write a file on the data
 * volume; revert to `s1` and run `true` through the guest agent (timed: "revert to exec-ready",
 * i.e. until that first exec has returned); then, untimed, check that the file is gone (so both
 * figures are of a revert that really happened), and time one more `true` (the warm exec, for
 * scale). Warren's revert also
 * includes the guest's clock and entropy fix-up (revertMs ends when the guest agent answered it);
 * virsh's does not (libvirt has no such step), its cost is printed apart and not added.
 *
 * The equivalent libvirt domain is the same guest: the same image (kernel, initrd, rootfs under a
 * qcow2 overlay), memory, vCPUs and CPU quota, `microvm` machine, TCG or KVM as Warren's VM, the
 * guest agent on a virtio-serial channel to a unix socket, reached with the same GuestClient. Its
 * XML is the libvirt driver's own (domain-xml.ts) with one change: the data volume is qcow2 (a
 * `qemu-img convert` of a fresh raw one), because libvirt 9.0 takes internal snapshots only when
 * every disk is qcow2 and cannot revert external ones. It is defined (persistent), like the
 * domains `virsh snapshot-*` is used on in seed 003, and runs as root (qemu.conf's user), not as
 * a VM uid: the uid changes no step of a snapshot or revert. The libvirt driver itself is not
 * used because it makes transient domains with a raw data volume (it declares no snapshots), so
 * the adaptation stays here rather than in apps/.
 *
 * Baseline printed in the same run: the virsh figures, and a bare QEMU start to its QMP socket
 * (a Warren revert starts a new QEMU, so that is its floor for the process).
 */

import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import {
  createVmDisks,
  DRIVERS,
  GuestClient,
  imagesDirOf,
  loadConfig,
  openHost,
  VirtioSerialTransport,
  vmDisks,
} from '@warren/host-agent';
import { buildImage, ImageStore, run } from '@warren/images';
import { hostTscKHz } from '../apps/host-agent/src/vmm/host-io.ts';
import {
  domainName,
  domainXml,
  LIBVIRT_FILES,
  QEMU_LOG_DIR,
  Virsh,
} from '../apps/host-agent/src/vmm/libvirt/index.ts';
import { median, positiveInt } from './common.ts';

const { values } = parseArgs({
  options: {
    runs: { type: 'string', default: '5' },
    memory: { type: 'string', default: '256' },
  },
});
const runs = positiveInt(values, 'runs');
const memoryMiB = positiveInt(values, 'memory');
const CPUS = 1;
const DATA_MIB = 64;
/** Boot of a fresh VM under TCG takes ~6 s here; generous, so a loaded machine does not fail the run. */
const BOOT_TIMEOUT_MS = 120_000;
const TRUE = { argv: ['true'] };
const DIRTY = { argv: ['sh', '-c', 'echo dirty > /workspace/dirty && sync'] };
const IS_DIRTY = { argv: ['test', '-e', '/workspace/dirty'] };

const config = loadConfig();
const store = new ImageStore(imagesDirOf(config));
const { imageId } = await buildImage(store, { profile: 'minimal', cacheDir: join(config.dataDir, 'cache') });
const image = await store.verify(imageId);

/** What to undo, newest last: each step runs once, at the end, on failure or on a signal. */
const undo: (() => Promise<unknown>)[] = [];
let cleaning: Promise<void> | undefined;
/**
 * Runs the undo steps, newest first. One pass at a time: on a signal, the main flow's own
 * `finally` (its next step fails once things are gone) joins the pass already running instead of
 * starting a second one that would stop libvirtd under the first one's feet.
 */
function cleanup(): Promise<void> {
  cleaning ??= (async () => {
    for (let step = undo.pop(); step; step = undo.pop())
      await step().catch((e) => console.error(`cleanup: ${(e as Error).message}`));
  })().finally(() => {
    cleaning = undefined;
  });
  return cleaning;
}
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.once(sig, () => void cleanup().finally(() => process.exit(130)));
}

const ms = (x: number) => `${x.toFixed(0)} ms`;
function summary(xs: number[]): string {
  return `median ${ms(median(xs))} (min ${Math.min(...xs).toFixed(0)}, max ${Math.max(...xs).toFixed(0)})`;
}
function expectExit(what: string, r: { exitCode: number | null }, code: number): void {
  if (r.exitCode !== code) throw new Error(`${what}: exit ${r.exitCode}, expected ${code}`);
}

interface Figures {
  create: number[];
  revert: number[];
  /** `true` through the guest agent once the guest has run a while after the revert: the floor of the first exec. */
  warmExec: number[];
}

/** A bare QEMU start to its QMP socket (no guest, no jail), as in bench/boot.ts. */
async function bareQemuStart(): Promise<number[]> {
  const scratch = await mkdtemp(join(tmpdir(), 'wb-snap-bare-'));
  const times: number[] = [];
  try {
    for (let i = 0; i < runs; i++) {
      const sock = join(scratch, `bare-${i}.sock`);
      const t0 = performance.now();
      const q = spawn(
        config.qemuBinary,
        ['-M', 'microvm', '-nodefaults', '-nographic', '-S', '-qmp', `unix:${sock},server=on,wait=off`],
        {
          stdio: 'ignore',
        },
      );
      try {
        while (!existsSync(sock)) await sleep(2);
        times.push(performance.now() - t0);
      } finally {
        q.kill('SIGKILL');
      }
    }
  } finally {
    await rm(scratch, { recursive: true, force: true });
  }
  return times;
}

/**
 * Where one Warren revert spends its time, seen from outside the VmManager: the QEMU driver the
 * host is opened with is wrapped (here, at run time; the driver's code is not changed) to time
 * its `newTops` and `launch` (QEMU start, snapshot load over QMP, `cont`), to count the guest
 * channel connections made after it (more than one means a handshake was cut and retried), and
 * GuestClient's `restored` to see when the HTTP/2 handshake was done and the fix-up sent.
 */
const probe = { newTops: 0, launchStart: 0, launchEnd: 0, connects: 0, restoredStart: 0 };
function instrumentQemuDriver(): () => void {
  const entry = DRIVERS.qemu as { create: (typeof DRIVERS)['qemu']['create'] };
  const create = entry.create;
  const restored = GuestClient.prototype.restored;
  GuestClient.prototype.restored = function (this: GuestClient) {
    probe.restoredStart = performance.now();
    return restored.call(this);
  };
  entry.create = (c, log) => {
    const driver = create(c, log);
    const newTops = driver.newTops!.bind(driver);
    driver.newTops = async (...args) => {
      const t0 = performance.now();
      try {
        return await newTops(...args);
      } finally {
        probe.newTops = performance.now() - t0;
      }
    };
    const launch = driver.launch.bind(driver);
    driver.launch = async (spec) => {
      probe.launchStart = performance.now();
      const vm = await launch(spec);
      probe.launchEnd = performance.now();
      const connect = vm.transport.connect.bind(vm.transport);
      vm.transport.connect = (timeoutMs) => {
        probe.connects++;
        return connect(timeoutMs);
      };
      return vm;
    };
    return driver;
  };
  return () => {
    entry.create = create;
    GuestClient.prototype.restored = restored;
  };
}

interface WarrenFigures extends Figures {
  paused: number[];
  /** How each snapshot kept memory: `mapped` (a booted VM's memfd, copied) or `stream` (a restored VM's). */
  kinds: string[];
  revertMs: number[];
  /** The VMM's part as VmManager reports it: to the guest running again on the snapshot's state. */
  resumedMs: number[];
  /** Revert start to the driver's launch (new disk tops, the old QEMU ended, records). */
  beforeLaunch: number[];
  newTops: number[];
  launch: number[];
  /** Launch returned to the fix-up sent: guest channel connect(s) and the HTTP/2 handshake. */
  handshake: number[];
  /** The fix-up sent to revertSnapshot returned. */
  fixup: number[];
  connects: number[];
  bytes: number;
  accel: 'kvm' | 'tcg';
}

/** A system under test, booted: its figures so far, and one timed iteration. */
interface Bench<F> {
  out: F;
  iteration(i: number): Promise<void>;
}

async function warren(): Promise<Bench<WarrenFigures>> {
  const env = { ...process.env, WARREN_VMM: 'qemu' };
  const dataDir = await mkdtemp(join(tmpdir(), 'wb-snap-'));
  undo.push(() => rm(dataDir, { recursive: true, force: true }));
  const restore = instrumentQemuDriver();
  undo.push(async () => restore());
  const host = await openHost(loadConfig(env, { dataDir, imagesDir: imagesDirOf(config), network: 'off' }));
  undo.push(async () => {
    for (const vm of await host.vms.list()) await host.vms.destroy(vm.id).catch(() => {});
    host.vms.close();
  });
  console.log(`warren   accelerator: ${host.accel.accel} (${host.accel.reason})`);
  const vm = await host.vms.create({ image: imageId, memoryMiB, cpus: CPUS, diskMiB: DATA_MIB });
  await host.vms.start(vm.id);
  const exec = async (req: typeof TRUE) => (await host.vms.guest(vm.id)).exec(req);
  const out: WarrenFigures = {
    create: [],
    paused: [],
    kinds: [],
    revert: [],
    warmExec: [],
    revertMs: [],
    resumedMs: [],
    beforeLaunch: [],
    newTops: [],
    launch: [],
    handshake: [],
    fixup: [],
    connects: [],
    bytes: 0,
    accel: host.accel.accel,
  };
  const iteration = async (i: number) => {
    let t0 = performance.now();
    const made = await host.vms.createSnapshot(vm.id, { name: `s${i}` });
    out.create.push(performance.now() - t0);
    out.paused.push(made.snapshot.pausedMs);
    out.kinds.push(made.snapshot.memory);
    if (i === 1) out.bytes = made.snapshot.bytes;
    expectExit('dirty the data volume', await exec(DIRTY), 0);
    probe.connects = 0;
    t0 = performance.now();
    const reverted = await host.vms.revertSnapshot(vm.id, 's1');
    const returned = performance.now();
    expectExit('first exec after the revert', await exec(TRUE), 0);
    out.revert.push(performance.now() - t0);
    out.revertMs.push(reverted.revertMs);
    out.resumedMs.push(reverted.resumedMs ?? Number.NaN);
    out.beforeLaunch.push(probe.launchStart - t0);
    out.newTops.push(probe.newTops);
    out.launch.push(probe.launchEnd - probe.launchStart);
    out.handshake.push(probe.restoredStart - probe.launchEnd);
    out.fixup.push(returned - probe.restoredStart);
    out.connects.push(probe.connects);
    expectExit('the file written after s1 is gone', await exec(IS_DIRTY), 1);
    t0 = performance.now();
    expectExit('warm exec', await exec(TRUE), 0);
    out.warmExec.push(performance.now() - t0);
  };
  return { out, iteration };
}

/** Where libvirtd (system) keeps each running domain's QEMU pid file. */
const QEMU_RUN_DIR = '/run/libvirt/qemu';

/** Connects to a guest agent on `socket`, retrying while the socket is not there yet or the handshake is cut. */
async function connectGuest(socket: string, timeoutMs: number): Promise<GuestClient> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await GuestClient.connect(
        new VirtioSerialTransport(socket),
        Math.min(10_000, Math.max(1, deadline - Date.now())),
      );
    } catch (e) {
      if (Date.now() >= deadline) throw e;
      // Shorter than the host agent's pause between attempts: any error here favours virsh.
      await sleep(10);
    }
  }
}

interface VirshFigures extends Figures {
  /** The `virsh snapshot-revert` call alone. */
  revertCall: number[];
  /** Its return to the guest agent's handshake done. */
  reconnect: number[];
  fixup: number[];
  newQemu: number;
}

async function libvirt(accel: 'kvm' | 'tcg'): Promise<Bench<VirshFigures>> {
  const env = { ...process.env, WARREN_VMM: 'libvirt' };
  const entry = DRIVERS.libvirt;
  const missing = await entry.prerequisites(loadConfig(env));
  if (missing) throw new Error(`libvirt cannot run here: ${missing}`);
  const services = await entry.services!(loadConfig(env), (m) => console.log(`libvirt  ${m}`));
  undo.push(() => services.stop());
  const virsh = new Virsh();
  const dir = await mkdtemp(join(tmpdir(), 'wb-snap-virsh-'));
  undo.push(() => rm(dir, { recursive: true, force: true }));
  const spec = { id: 'bench-snapshot', dir, image, cpus: CPUS, memoryMiB, accel, jail: { uid: 0, gid: 0 } };
  const name = domainName(spec);
  await createVmDisks(dir, { baseImage: image.rootfsPath, dataMiB: DATA_MIB });
  const disks = vmDisks(dir);
  const dataQcow2 = join(dir, 'data.qcow2');
  await run('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', disks.data, dataQcow2]);
  await rm(disks.data);
  const tsc = await hostTscKHz();
  const xml = domainXml(spec, {
    emulator: config.qemuBinary.startsWith('/') ? config.qemuBinary : '/usr/bin/qemu-system-x86_64',
    tcgTranslationCacheMiB: config.tcgTranslationCacheMiB,
    ...(tsc ? { hostTscKHz: tsc } : {}),
  });
  const rawData = `<driver name='qemu' type='raw' discard='unmap'/>\n      <source file='${disks.data}'/>`;
  if (!xml.includes(rawData))
    throw new Error('domain-xml.ts changed: the data disk element to patch is not there');
  const xmlPath = join(dir, LIBVIRT_FILES.domain);
  await writeFile(
    xmlPath,
    xml.replace(
      rawData,
      `<driver name='qemu' type='qcow2' discard='unmap'/>\n      <source file='${dataQcow2}'/>`,
    ),
  );
  await virsh.run(['define', xmlPath]);
  undo.push(async () => {
    // Undefine before destroy: libvirt runs it after a job in flight (a revert interrupted by a
    // signal would start the domain again after a destroy) and leaves a running domain transient,
    // so the destroy ends it for good. Internal snapshots live in the qcow2 files (removed with
    // the directory); --snapshots-metadata drops libvirt's records of them.
    const failed = await virsh.run(['undefine', name, '--snapshots-metadata']).then(
      () => undefined,
      (e: Error) => e,
    );
    await virsh.run(['destroy', name]).catch(() => {});
    await rm(join(QEMU_LOG_DIR, `${name}.log`), { force: true });
    if (failed) throw failed;
  });
  await virsh.run(['start', name]);
  const socket = join(dir, LIBVIRT_FILES.agent);
  let guest = await connectGuest(socket, BOOT_TIMEOUT_MS);
  undo.push(async () => guest.close());
  await guest.health(BOOT_TIMEOUT_MS);
  const out: VirshFigures = {
    create: [],
    revert: [],
    warmExec: [],
    revertCall: [],
    reconnect: [],
    fixup: [],
    newQemu: 0,
  };
  const qemuPid = () => readFile(join(QEMU_RUN_DIR, `${name}.pid`), 'utf8').then((t) => t.trim());
  const iteration = async (i: number) => {
    let t0 = performance.now();
    await virsh.run(['snapshot-create-as', name, `s${i}`]);
    out.create.push(performance.now() - t0);
    expectExit('dirty the data volume', await guest.exec(DIRTY), 0);
    guest.close();
    const pid = await qemuPid();
    t0 = performance.now();
    await virsh.run(['snapshot-revert', name, 's1']);
    const reverted = performance.now();
    guest = await connectGuest(socket, BOOT_TIMEOUT_MS);
    out.revertCall.push(reverted - t0);
    out.reconnect.push(performance.now() - reverted);
    expectExit('first exec after the revert', await guest.exec(TRUE), 0);
    out.revert.push(performance.now() - t0);
    t0 = performance.now();
    await guest.restored();
    out.fixup.push(performance.now() - t0);
    if ((await qemuPid()) !== pid) out.newQemu++;
    expectExit('the file written after s1 is gone', await guest.exec(IS_DIRTY), 1);
    t0 = performance.now();
    expectExit('warm exec', await guest.exec(TRUE), 0);
    out.warmExec.push(performance.now() - t0);
  };
  return { out, iteration };
}

try {
  const bare = await bareQemuStart();
  console.log(`baseline bare QEMU start to QMP socket: ${summary(bare)}`);
  const warrenBench = await warren();
  const virshBench = await libvirt(warrenBench.out.accel);
  // Iterations alternate between the two (and which goes first), so load from elsewhere on the
  // machine falls on both alike; each system's VM idles while the other's is measured.
  for (let i = 1; i <= runs; i++) {
    const order = i % 2 ? [warrenBench, virshBench] : [virshBench, warrenBench];
    for (const b of order) await b.iteration(i);
  }
  const w = warrenBench.out;
  const v = virshBench.out;
  const lines = [
    `\n${runs} iterations each, ${memoryMiB} MiB guest, ${CPUS} vCPU, minimal image, ${w.accel}`,
    `warren   snapshot create:            ${summary(w.create)}; guest paused ${summary(w.paused)}; s1 holds ${(w.bytes / 1024 / 1024).toFixed(1)} MiB`,
    `           each (memory kept as):    ${w.create.map((x, i) => `${x.toFixed(0)} (${w.kinds[i]})`).join(', ')}`,
    `warren   revert to exec-ready:       ${summary(w.revert)}`,
    `           each:                     ${w.revert.map((x) => x.toFixed(0)).join(', ')}`,
    `           revertSnapshot (revertMs): ${summary(w.revertMs)}; VMM part (resumedMs) ${summary(w.resumedMs)}`,
    `             to the driver's launch:  ${summary(w.beforeLaunch)} (new tops ${summary(w.newTops)}, old QEMU ended, records)`,
    `             launch:                  ${summary(w.launch)} (QEMU start, snapshot load, cont)`,
    `             agent handshake:         ${summary(w.handshake)} (channel connections per revert: ${w.connects.join(', ')})`,
    `             clock fix-up:            ${summary(w.fixup)}`,
    `           first exec after it:      ${summary(w.revert.map((x, i) => x - w.revertMs[i]!))}`,
    `           warm exec, for scale:     ${summary(w.warmExec)}`,
    `virsh    snapshot-create-as:         ${summary(v.create)}`,
    `           each:                     ${v.create.map((x) => x.toFixed(0)).join(', ')}`,
    `virsh    revert to exec-ready:       ${summary(v.revert)} (snapshot-revert + agent reconnect + first exec; a new QEMU in ${v.newQemu} of ${runs})`,
    `           each:                     ${v.revert.map((x) => x.toFixed(0)).join(', ')}`,
    `           snapshot-revert call:     ${summary(v.revertCall)}`,
    `           agent reconnect:          ${summary(v.reconnect)}`,
    `           first exec after it:      ${summary(v.revert.map((x, i) => x - v.revertCall[i]! - v.reconnect[i]!))}`,
    `           clock fix-up (not added): ${summary(v.fixup)}`,
    `           warm exec, for scale:     ${summary(v.warmExec)}`,
    `ratio    revert, virsh / warren:     ${(median(v.revert) / median(w.revert)).toFixed(1)}x (target 5x)`,
    `ratio    create, virsh / warren:     ${(median(v.create) / median(w.create)).toFixed(1)}x`,
  ];
  console.log(lines.join('\n'));
} finally {
  await cleanup();
}
