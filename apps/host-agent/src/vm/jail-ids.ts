import { readdir, readFile } from 'node:fs/promises';
import { WarrenError } from '@warren/protocol';
import type { JailIds } from '../vmm/driver.ts';

/** The uids VMs' QEMUs run as: `count` ids from `base` (WARREN_JAIL_UID_BASE / _COUNT). */
export interface UidRange {
  base: number;
  count: number;
}

/**
 * Hands each VM its own uid (and the gid of the same number) for its QEMU. A uid is held from
 * allocation until the VM's record, which keeps it, is removed with the VM, so two VMs never
 * share one; a uid some process on the machine already runs as (another agent's VM, an account
 * that strayed into the range) is skipped too.
 */
export class JailIdAllocator {
  readonly #range: UidRange;
  /** The uids the VM records on disk hold. */
  readonly #held: () => Promise<Set<number>>;
  /** Handed out, but not yet in a record on disk. */
  readonly #reserved = new Set<number>();
  #picking: Promise<unknown> = Promise.resolve();

  constructor(range: UidRange, held: () => Promise<Set<number>>) {
    this.#range = range;
    this.#held = held;
  }

  /** Picks the lowest free uid and holds it until `persist` has written it to the VM's record. */
  async allocate<T>(persist: (ids: JailIds) => Promise<T>): Promise<T> {
    let uid = -1;
    const pick = this.#picking
      .catch(() => {})
      .then(async () => {
        const taken = new Set([...this.#reserved, ...(await this.#held()), ...(await uidsOfProcesses())]);
        for (let i = 0; i < this.#range.count; i++) {
          if (!taken.has(this.#range.base + i)) {
            uid = this.#range.base + i;
            break;
          }
        }
        if (uid < 0) {
          throw new WarrenError(
            'NO_CAPACITY',
            `all ${this.#range.count} VM uids from ${this.#range.base} are in use; raise WARREN_JAIL_UID_COUNT`,
          );
        }
        this.#reserved.add(uid);
      });
    this.#picking = pick;
    await pick;
    try {
      return await persist({ uid, gid: uid });
    } finally {
      this.#reserved.delete(uid);
    }
  }
}

/** The real uids of the processes running on this machine. */
async function uidsOfProcesses(): Promise<Set<number>> {
  const uids = new Set<number>();
  for (const name of await readdir('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const status = await readFile(`/proc/${name}/status`, 'utf8').catch(() => '');
    const uid = /^Uid:\s+(\d+)/m.exec(status)?.[1];
    if (uid) uids.add(Number(uid));
  }
  return uids;
}
