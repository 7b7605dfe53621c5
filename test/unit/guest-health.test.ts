/**
 * The health-check bookkeeping of the host agent (control/health.ts): how many failed checks
 * make a VM unhealthy, what ends it, and what the report says. The checks' answers are given
 * here as VmManager.probe would give them; test/vm/health.test.ts runs the real ones.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { GuestHealth } from '../../apps/host-agent/src/control/health.ts';
import { isDiskFull, type Probe } from '../../apps/host-agent/src/vm/vm-manager.ts';

const settings = { intervalMs: 1000, timeoutMs: 500, failures: 3, graceMs: 10_000 };

function health() {
  const logs: string[] = [];
  const h = new GuestHealth(
    settings,
    (id) => `/data/vms/${id}/console.log`,
    (m) => logs.push(m),
  );
  const check = (id: string, probe: Probe) => h.check([id], async () => probe);
  return { h, logs, check };
}

const failed = (pid: number, failure = 'guest agent did not answer within 500 ms'): Probe => ({
  state: 'failed',
  pid,
  failure,
});
const ok = (pid: number, restarted = false): Probe => ({ state: 'ok', pid, restarted });

test('a VM is unhealthy after the configured number of failed checks in a row, with the reason and console log', async () => {
  const { h, logs, check } = health();
  assert.equal(await check('ten-a', ok(10)), false);
  assert.equal(await check('ten-a', failed(10)), false);
  assert.equal(await check('ten-a', failed(10)), false);
  assert.equal(h.unhealthy('ten-a', 10), undefined);
  assert.equal(await check('ten-a', failed(10, 'cannot connect to guest channel: ECONNREFUSED')), true);
  const sick = h.unhealthy('ten-a', 10)!;
  assert.equal(sick.error.code, 'GUEST_UNHEALTHY');
  assert.match(
    sick.error.message,
    /no answer from its guest agent for \d+ s \(3 checks; last: cannot connect/,
  );
  assert.match(sick.error.message, /see \/data\/vms\/ten-a\/console\.log/);
  assert.ok(logs.some((l) => /VM ten-a: unhealthy: .* restarting it in 10000 ms unless it answers/.test(l)));
  // Another VMM process (the restarted VM) is not the unhealthy one.
  assert.equal(h.unhealthy('ten-a', 11), undefined);
});

test('an answer ends the streak; an agent restarted inside the guest is logged as such', async () => {
  const { h, logs, check } = health();
  await check('ten-b', ok(20));
  for (let i = 0; i < 3; i++) await check('ten-b', failed(20));
  assert.ok(h.unhealthy('ten-b', 20));
  assert.equal(await check('ten-b', ok(20, true)), true, 'healthy again is a change to report');
  assert.equal(h.unhealthy('ten-b', 20), undefined);
  assert.ok(
    logs.some((l) =>
      /VM ten-b: guest agent answers again after 3 failed health checks \(it was restarted inside the guest\): healthy/.test(
        l,
      ),
    ),
    logs.join('\n'),
  );
  // A failure that is not followed by enough others never makes it unhealthy.
  await check('ten-b', failed(20));
  await check('ten-b', ok(20));
  await check('ten-b', failed(20));
  await check('ten-b', failed(20));
  assert.equal(h.unhealthy('ten-b', 20), undefined);
});

test('busy VMs (a snapshot, a restart in progress) are not counted; VMs no longer checked are forgotten', async () => {
  const { h, check } = health();
  for (let i = 0; i < 2; i++) await check('ten-c', failed(30));
  for (let i = 0; i < 5; i++) await check('ten-c', { state: 'busy' });
  assert.equal(h.unhealthy('ten-c', 30), undefined);
  await check('ten-c', failed(30));
  assert.ok(h.unhealthy('ten-c', 30));
  await h.check([], async () => ({ state: 'busy' }));
  assert.equal(h.unhealthy('ten-c', 30), undefined);
});

test('isDiskFull: ENOSPC from a syscall, a child process saying so, or deeper in the cause chain', () => {
  assert.equal(isDiskFull(Object.assign(new Error('write failed'), { code: 'ENOSPC' })), true);
  assert.equal(isDiskFull(new Error('mkfs.ext4: No space left on device while writing out')), true);
  assert.equal(
    isDiskFull(new Error('start failed', { cause: Object.assign(new Error('x'), { code: 'ENOSPC' }) })),
    true,
  );
  assert.equal(isDiskFull(new Error('image integrity')), false);
  assert.equal(isDiskFull(undefined), false);
});
