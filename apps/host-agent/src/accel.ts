import { constants } from 'node:fs';
import { access, readFile } from 'node:fs/promises';
import { WarrenError } from '@warren/protocol';

export type Accelerator = 'kvm' | 'tcg';

export interface AcceleratorChoice {
  accel: Accelerator;
  reason: string;
}

/**
 * KVM only where it can run an ordinary guest: /dev/kvm must be usable *and* the CPU must
 * expose hardware virtualization (vmx/svm). A /dev/kvm without them exists on nested
 * setups such as PVM, where stock Linux guests crash or crawl, so its presence proves
 * nothing on its own.
 */
export async function chooseAccelerator(
  setting: 'auto' | Accelerator,
  probe: { devKvm?: string; cpuinfo?: string } = {},
): Promise<AcceleratorChoice> {
  const devKvm = probe.devKvm ?? '/dev/kvm';
  const kvmUsable = await access(devKvm, constants.R_OK | constants.W_OK).then(
    () => true,
    () => false,
  );
  const cpuinfo = await readFile(probe.cpuinfo ?? '/proc/cpuinfo', 'utf8').catch(() => '');
  const flags = /^flags\s*:\s*(.*)$/m.exec(cpuinfo)?.[1]?.split(/\s+/) ?? [];
  const hwVirt = flags.includes('vmx') || flags.includes('svm');

  if (setting === 'tcg') return { accel: 'tcg', reason: 'forced by configuration (WARREN_ACCEL=tcg)' };
  if (setting === 'kvm') {
    if (!kvmUsable) {
      throw new WarrenError(
        'HOST_UNSUPPORTED',
        `WARREN_ACCEL=kvm but ${devKvm} is not usable; unset it to fall back to TCG`,
      );
    }
    return { accel: 'kvm', reason: 'forced by configuration (WARREN_ACCEL=kvm)' };
  }
  if (kvmUsable && hwVirt)
    return { accel: 'kvm', reason: `${devKvm} usable and the CPU exposes hardware virtualization` };
  if (kvmUsable) {
    return {
      accel: 'tcg',
      reason: `${devKvm} exists but the CPU has no vmx/svm flag (nested PVM or similar): using TCG software emulation`,
    };
  }
  return { accel: 'tcg', reason: `${devKvm} not usable: using TCG software emulation` };
}
