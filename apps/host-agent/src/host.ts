import { mkdir } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { ImageStore } from '@warren/images';
import { createObjectStore } from '@warren/object-store';
import type { CgroupState } from '@warren/protocol';
import type { Logger } from '@warren/telemetry';
import { chooseAccelerator } from './accel.ts';
import { BackupJobs } from './backup/backup-jobs.ts';
import {
  blockDeviceOf,
  type CgroupDriver,
  detectCgroups,
  type IoLimit,
  supportsIoLimits,
} from './cgroups/cgroups.ts';
import { type HostAgentConfig, imagesDirOf, objectStoreConfigOf } from './config.ts';
import { lockDownDataDir } from './fs-modes.ts';
import { createHostMetrics, type HostMetrics } from './metrics.ts';
import { addressPlan } from './net/address.ts';
import { parseUpstream, systemResolver } from './net/dns-forwarder.ts';
import { HostNetwork } from './net/host-network.ts';
import { VmManager } from './vm/vm-manager.ts';
import type { VmmDriver } from './vmm/driver.ts';
import { DRIVERS } from './vmm/drivers.ts';

export interface Host {
  config: HostAgentConfig;
  store: ImageStore;
  vms: VmManager;
  /** Backup and restore jobs, against the object store WARREN_OBJECT_STORE names. */
  backups: BackupJobs;
  accel: { accel: 'kvm' | 'tcg'; reason: string };
  /** `state` is what the heartbeat reports: the cgroup version in use, or `off` by the operator's choice. */
  cgroups: { state: CgroupState; reason: string };
  /** Tenant networking; absent with WARREN_NETWORK=off. */
  network?: HostNetwork;
  /** Prometheus metrics (`/metrics`). */
  metrics: HostMetrics;
  /** The daemon's structured logger, also its APIs' Fastify logger; absent in tests in process. */
  logger?: Logger;
}

/**
 * Private modes on the agent's data directory (fs-modes.ts), except where others own the modes:
 * what the VMM driver sets the modes of itself in each VM directory (`ownModes`: the QEMU
 * driver's jail, traversable for the VM's own uid), and the image store and build
 * caches, which hold platform images and their inputs, no tenant data: the store keeps blobs
 * 0444 so a jailed QEMU can read its kernel, initrd and base image, and the builder copies modes
 * from its cache into the images it makes.
 */
export async function lockDownHostDataDir(config: HostAgentConfig, driver: VmmDriver): Promise<void> {
  const vmsDir = join(config.dataDir, 'vms');
  const platformDirs = new Set([imagesDirOf(config), join(config.dataDir, 'cache')]);
  const own = new Set(driver.ownModes ?? []);
  await lockDownDataDir(
    config.dataDir,
    (path) => platformDirs.has(path) || (own.has(basename(path)) && dirname(dirname(path)) === vmsDir),
  );
}

/** Wires the host side from validated configuration: the VMM driver (WARREN_VMM), image store, cgroups, VMs. */
export async function openHost(
  config: HostAgentConfig,
  log: (m: string) => void = () => {},
  logger?: Logger,
): Promise<Host> {
  const driver = DRIVERS[config.vmm].create(config, log);
  // Before anything is written: tenant disks and credentials are root's alone.
  await lockDownHostDataDir(config, driver);
  const accel = await chooseAccelerator(config.accel);
  log(`VMM: ${driver.name}; accelerator: ${accel.accel} (${accel.reason})`);
  const cg = await detectCgroups(config.cgroups, config.cgroupRoot);
  log(
    `resource limits: ${cg.driver ? cg.reason : `OFF, VMs run without CPU, memory and pids limits: ${cg.reason}`}`,
  );
  const io = cg.driver ? await ioLimitOf(config, cg.driver) : { reason: 'no cgroups' };
  log(io.limit ? `I/O limit per VM: ${io.reason}` : `no I/O limit per VM: ${io.reason}`);
  const store = new ImageStore(imagesDirOf(config));
  const network = config.network === 'on' ? await openNetwork(config, log) : undefined;
  const vms = await VmManager.open({
    dataDir: config.dataDir,
    store,
    driver,
    accel: accel.accel,
    ...(cg.driver ? { cgroups: cg.driver } : {}),
    bootTimeoutMs: config.bootTimeoutMs,
    stopTimeoutMs: config.stopTimeoutMs,
    idleCheckMs: config.idleCheckMs,
    wakeTimeoutMs: config.wakeTimeoutMs,
    capacityMemoryMiB: config.capacityMemoryMiB,
    pidsMax: config.pidsMax,
    ...(io.limit ? { ioLimit: io.limit } : {}),
    jailUids: { base: config.jailUidBase, count: config.jailUidCount },
    ...(network ? { network } : {}),
    templateStart: config.templateStart === 'on',
    log,
  });
  const backups = new BackupJobs({
    vms,
    store: createObjectStore(objectStoreConfigOf(config)),
    freezeTimeoutMs: config.backupFreezeTimeoutMs,
    concurrency: config.backupConcurrency,
    log,
  });
  return {
    config,
    store,
    vms,
    backups,
    accel,
    ...(network ? { network } : {}),
    cgroups: { state: cg.state, reason: cg.reason },
    metrics: createHostMetrics(vms),
    ...(logger ? { logger } : {}),
  };
}

/** The I/O limit each VM's cgroup gets, on the disk that holds the VMs' disks, if this host can have one. */
async function ioLimitOf(
  config: HostAgentConfig,
  driver: CgroupDriver,
): Promise<{ limit?: IoLimit; reason: string }> {
  if (config.vmIoMiBps === 0 && config.vmIops === 0)
    return { reason: 'turned off (WARREN_VM_IO_MIBPS=0, WARREN_VM_IOPS=0)' };
  if (!(await supportsIoLimits(driver))) {
    return {
      reason: `cgroup ${driver.version} at ${driver.root} has no ${driver.version === 'v1' ? 'blkio' : 'io'} controller`,
    };
  }
  await mkdir(config.dataDir, { recursive: true });
  const device = await blockDeviceOf(config.dataDir);
  if (!device) return { reason: `${config.dataDir} is not on a block device` };
  const limit = { device, bytesPerSecond: config.vmIoMiBps * 1024 * 1024, opsPerSecond: config.vmIops };
  return {
    limit,
    reason: `${config.vmIoMiBps} MiB/s and ${config.vmIops} operations/s each way on disk ${device}`,
  };
}

async function openNetwork(config: HostAgentConfig, log: (m: string) => void): Promise<HostNetwork> {
  let upstream = config.vmDnsUpstream ?? (await systemResolver());
  if (upstream && !config.vmDnsUpstream) {
    try {
      parseUpstream(upstream);
    } catch {
      log(
        `the host's nameserver ${upstream} cannot be used by the DNS forwarder: set WARREN_VM_DNS_UPSTREAM`,
      );
      upstream = undefined;
    }
  }
  if (!upstream) log('no upstream resolver: VMs get no DNS (set WARREN_VM_DNS_UPSTREAM)');
  return new HostNetwork({
    plan: addressPlan(config.vmNetwork),
    dnsPort: config.dnsPort,
    dnsLimits: {
      queriesPerSecond: config.vmDnsQueriesPerSecond,
      tcpPerVm: config.vmDnsTcpPerVm,
      tcpIdleMs: config.vmDnsTcpIdleMs,
    },
    dnsAllowlistNames: config.vmDnsAllowlistNames,
    blockedCidrs: config.vmBlockedCidrs,
    ...(upstream ? { dnsUpstream: upstream } : {}),
    dataDir: config.dataDir,
    log,
  });
}
