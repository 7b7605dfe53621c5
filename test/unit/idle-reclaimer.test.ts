/**
 * The idle reclaimer's decisions (apps/host-agent/src/vm/idle.ts): who is idle past its timeout,
 * who may be suspended to make room, in which order. The VMs are an in-process table here; the
 * real suspend and wake run on real VMs in test/vm/suspend.test.ts.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { IdleReclaimer } from '../../apps/host-agent/src/vm/idle.ts';

function table(vms: { id: string; state: string; memoryMiB: number }[], canSuspend = true) {
  const suspended: string[] = [];
  const reclaimer = new IdleReclaimer(
    {
      list: async () => vms.map((v) => ({ ...v })),
      suspend: async (id, o) => {
        if (o.unless()) return { state: 'running' };
        suspended.push(id);
        const vm = vms.find((v) => v.id === id)!;
        vm.state = 'suspended';
        return { state: 'suspended' };
      },
      canSuspend,
    },
    { checkMs: 60_000, capacityMemoryMiB: 512 },
  );
  return { reclaimer, suspended };
}

const A = 'ten-aaaaaaaaaaaaaaaa';
const B = 'ten-bbbbbbbbbbbbbbbb';
const C = 'ten-cccccccccccccccc';

test('makeRoom suspends the least recently used idle-eligible VM, only as many as needed', async () => {
  const { reclaimer, suspended } = table([
    { id: A, state: 'running', memoryMiB: 256 },
    { id: B, state: 'running', memoryMiB: 256 },
    { id: C, state: 'suspended', memoryMiB: 256 },
  ]);
  reclaimer.setTimeouts(
    new Map([
      [A, 60_000],
      [B, 60_000],
      [C, 60_000],
    ]),
  );
  reclaimer.touch(B);
  await new Promise((r) => setTimeout(r, 5));
  reclaimer.touch(A);
  await reclaimer.makeRoom(C, 256);
  assert.deepEqual(suspended, [B], 'B was used longest ago');
  await reclaimer.makeRoom(C, 256);
  assert.deepEqual(suspended, [B], 'it fits now');
});

test('a VM with a request open, without an idle timeout, or not a tenant VM is never suspended for room', async () => {
  const { reclaimer, suspended } = table([
    { id: A, state: 'running', memoryMiB: 256 },
    { id: B, state: 'running', memoryMiB: 256 },
    { id: 'keep-1', state: 'running', memoryMiB: 256 },
  ]);
  reclaimer.setTimeouts(
    new Map<string, number | null>([
      [A, 60_000],
      [B, null],
    ]),
  );
  const release = reclaimer.hold(A);
  await reclaimer.makeRoom(C, 256);
  assert.deepEqual(suspended, [], 'A is in use, B has no timeout, keep-1 is an operator VM');
  release();
  await reclaimer.makeRoom(C, 256);
  assert.deepEqual(suspended, [A]);
});

test('check suspends only VMs idle past their own timeout, and never while one of their requests is open', async () => {
  const { reclaimer, suspended } = table([
    { id: A, state: 'running', memoryMiB: 256 },
    { id: B, state: 'running', memoryMiB: 256 },
  ]);
  reclaimer.setTimeouts(
    new Map([
      [A, 1],
      [B, 60_000],
    ]),
  );
  reclaimer.touch(A);
  reclaimer.touch(B);
  const release = reclaimer.hold(A);
  await new Promise((r) => setTimeout(r, 10));
  await reclaimer.check();
  assert.deepEqual(suspended, []);
  release();
  await new Promise((r) => setTimeout(r, 10));
  await reclaimer.check();
  assert.deepEqual(suspended, [A]);
});

test('a VMM that cannot suspend never suspends', async () => {
  const { reclaimer, suspended } = table([{ id: A, state: 'running', memoryMiB: 1024 }], false);
  reclaimer.setTimeouts(new Map([[A, 1]]));
  await reclaimer.makeRoom(B, 1024);
  await reclaimer.check();
  assert.deepEqual(suspended, []);
});
