/**
 * Per-VM CPU and memory for /metrics, read from a VM's cgroup files: v2 (`cpu.stat`
 * `usage_usec`, `memory.current`; production hosts) and v1 (`cpuacct.usage`,
 * `memory.usage_in_bytes`; these machines, where the VM boot in test/vm/platform.test.ts reads
 * them for real). Here: hierarchies laid out in a temporary directory as the kernel shows them.
 */
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { CgroupV1, CgroupV2 } from '../../apps/host-agent/src/cgroups/cgroups.ts';

const dirs: string[] = [];
after(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

async function root(): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'wcg-'));
  dirs.push(d);
  return d;
}

test('cgroup v2: CPU seconds from cpu.stat, bytes from memory.current', async () => {
  const r = await root();
  const dir = join(r, 'warren', 'ten-00000000000000aa');
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, 'cpu.stat'), 'usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n');
  await writeFile(join(dir, 'memory.current'), '268435456\n');
  assert.deepEqual(await new CgroupV2(r).open('ten-00000000000000aa').usage(), {
    cpuSeconds: 2.5,
    memoryBytes: 268435456,
  });
});

test('cgroup v1: CPU seconds from cpuacct.usage (its own hierarchy), bytes from memory.usage_in_bytes', async () => {
  const r = await root();
  for (const c of ['cpu', 'memory', 'pids', 'cpuacct'])
    await mkdir(join(r, c, 'warren', 'vm1'), { recursive: true });
  await writeFile(join(r, 'cpuacct', 'warren', 'vm1', 'cpuacct.usage'), '1500000000\n');
  await writeFile(join(r, 'memory', 'warren', 'vm1', 'memory.usage_in_bytes'), '1048576\n');
  const handle = new CgroupV1(r).open('vm1');
  // The VM's QEMU joins the cpuacct group too, or there is no CPU time to read.
  assert.ok(handle.procsFiles.includes(join(r, 'cpuacct', 'warren', 'vm1', 'cgroup.procs')));
  assert.deepEqual(await handle.usage(), { cpuSeconds: 1.5, memoryBytes: 1048576 });
});

test('missing or unreadable files give no value rather than a wrong one', async () => {
  const r = await root();
  await mkdir(join(r, 'warren', 'gone'), { recursive: true });
  await writeFile(join(r, 'warren', 'gone', 'memory.current'), 'max\n');
  assert.deepEqual(await new CgroupV2(r).open('gone').usage(), {});
  assert.deepEqual(await new CgroupV2(r).open('never-made').usage(), {});
});
