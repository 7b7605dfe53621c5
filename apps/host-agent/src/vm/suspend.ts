/**
 * Bookkeeping of suspended VMs that needs no VMM: where a suspend's files live and how they go.
 * The suspend and wake themselves are VmManager's (`suspend`, and `start` of a suspended VM),
 * what decides when to suspend is idle.ts.
 */
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { VmRecord } from './vm-records.ts';

/** Where a suspended VM's memory and device state live, relative to the VM directory. */
export const SUSPEND_DIR = 'suspend';

/**
 * Forgets a VM's suspend: the record is written first (a crash in between leaves files no
 * record names, which the next start-up removes, never a record naming files gone). A VM woken
 * from a `mapped` memory file still maps it privately: the name goes, the blocks stay until that
 * QEMU ends (pages it has not read yet are read from it on demand).
 */
export async function dropSuspend(
  dir: string,
  record: VmRecord,
  write: (record: VmRecord) => Promise<void>,
): Promise<void> {
  if (record.suspended) {
    delete record.suspended;
    await write(record);
  }
  await rm(join(dir, SUSPEND_DIR), { recursive: true, force: true });
}
