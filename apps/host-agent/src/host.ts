import { ImageStore } from '@warren/images';
import { chooseAccelerator } from './accel.ts';
import { detectCgroups } from './cgroups/cgroups.ts';
import { type HostAgentConfig, imagesDirOf } from './config.ts';
import { VmManager } from './vm/vm-manager.ts';
import { QemuDriver } from './vmm/qemu/qemu-driver.ts';

export interface Host {
  config: HostAgentConfig;
  store: ImageStore;
  vms: VmManager;
  accel: { accel: 'kvm' | 'tcg'; reason: string };
  cgroups: { version?: 'v1' | 'v2'; reason: string };
}

/** Wires the host side from validated configuration: image store, VMM driver, cgroups, VMs. */
export async function openHost(config: HostAgentConfig, log: (m: string) => void = () => {}): Promise<Host> {
  const accel = await chooseAccelerator(config.accel);
  log(`accelerator: ${accel.accel} (${accel.reason})`);
  const cg = await detectCgroups(config.cgroups);
  log(`resource limits: ${cg.driver ? cg.reason : `cgroups not used: ${cg.reason}`}`);
  const store = new ImageStore(imagesDirOf(config));
  const driver = new QemuDriver({
    binary: config.qemuBinary,
    tcgTranslationCacheMiB: config.tcgTranslationCacheMiB,
  });
  const vms = await VmManager.open({
    dataDir: config.dataDir,
    store,
    driver,
    accel: accel.accel,
    ...(cg.driver ? { cgroups: cg.driver } : {}),
    bootTimeoutMs: config.bootTimeoutMs,
    stopTimeoutMs: config.stopTimeoutMs,
    pidsMax: config.pidsMax,
    log,
  });
  return {
    config,
    store,
    vms,
    accel,
    cgroups: { ...(cg.driver ? { version: cg.driver.version } : {}), reason: cg.reason },
  };
}
