/** What the benches share: reading their numeric flags, summing up their runs, and the bare-QEMU baseline. */

import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

/** A `--name` flag's value (parseArgs gives strings) as a positive whole number, or throws. */
export function positiveInt<K extends string>(values: { readonly [k in K]?: unknown }, name: K): number {
  const n = Number(values[name]);
  if (!Number.isInteger(n) || n < 1) throw new Error(`--${name}: a positive integer, got ${values[name]}`);
  return n;
}

/** The middle of `xs` (for an even count, the upper of the two middle values). */
export function median(xs: number[]): number {
  return [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
}

/**
 * The boot benches' baseline: `runs` starts of a bare QEMU (`-S`, no guest, no jail), each timed
 * from the spawn until its QMP socket exists, so a boot figure reads as "QEMU start + the rest".
 */
export async function bareQemuStarts(qemuBinary: string, runs: number): Promise<number[]> {
  const scratch = await mkdtemp(join(tmpdir(), 'wb-'));
  const times: number[] = [];
  try {
    for (let i = 0; i < runs; i++) {
      const sock = join(scratch, `bare-${i}.sock`);
      const t0 = performance.now();
      const q = spawn(qemuBinary, [
        '-M',
        'microvm',
        '-nodefaults',
        '-nographic',
        '-S',
        '-qmp',
        `unix:${sock},server=on,wait=off`,
      ]);
      while (!existsSync(sock)) await sleep(2);
      times.push(performance.now() - t0);
      q.kill('SIGKILL');
    }
  } finally {
    await rm(scratch, { recursive: true, force: true });
  }
  return times;
}
