/**
 * The tenant network address plan: one /30 per VM out of WARREN_VM_NETWORK, the lowest free
 * one first; TAP names and MACs derived from the VM id; the settings that configure it.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  addressPlan,
  guestNetArg,
  loadConfig,
  lowestFreeIndex,
  macOf,
  parseCidr,
  parseUpstream,
  tapName,
  vmNetworkAt,
} from '@warren/host-agent';

test('the VM network is cut into /30s: host .1, guest .2 of each', () => {
  const plan = addressPlan('10.213.0.0/16');
  assert.equal(plan.slots, 16384);
  const first = vmNetworkAt(plan, 0, 'ten-0123456789abcdef');
  assert.deepEqual([first.hostIp, first.guestIp], ['10.213.0.1', '10.213.0.2']);
  const second = vmNetworkAt(plan, 1, 'ten-0123456789abcdef');
  assert.deepEqual([second.hostIp, second.guestIp], ['10.213.0.5', '10.213.0.6']);
  const last = vmNetworkAt(plan, plan.slots - 1, 'x');
  assert.deepEqual([last.hostIp, last.guestIp], ['10.213.255.253', '10.213.255.254']);
  assert.throws(() => vmNetworkAt(plan, plan.slots, 'x'), { code: 'INTERNAL' });
  assert.throws(() => vmNetworkAt(plan, -1, 'x'), { code: 'INTERNAL' });
  assert.equal(guestNetArg(second), 'warren.net=10.213.0.6/30,10.213.0.5,10.213.0.5');
});

test('a VM network with host bits set, too small or too large is refused', () => {
  assert.throws(() => addressPlan('10.213.0.1/16'), /did you mean 10\.213\.0\.0\/16/);
  assert.throws(() => addressPlan('10.213.0.0/30'), { code: 'INVALID_ARGUMENT' });
  assert.throws(() => addressPlan('10.0.0.0/7'), { code: 'INVALID_ARGUMENT' });
  assert.throws(() => addressPlan('10.213.0.0'), { code: 'INVALID_ARGUMENT' });
  assert.throws(() => addressPlan('10.213.0/16'), { code: 'INVALID_ARGUMENT' });
  assert.throws(() => addressPlan('10.213.0.256/24'), { code: 'INVALID_ARGUMENT' });
  assert.equal(addressPlan('192.168.77.0/29').slots, 2);
  assert.deepEqual(parseCidr('203.0.113.77/24'), parseCidr('203.0.113.0/24'));
});

test('the lowest free /30 is taken; a full network is NO_CAPACITY', () => {
  const plan = addressPlan('192.168.77.0/28');
  assert.equal(lowestFreeIndex(plan, []), 0);
  assert.equal(lowestFreeIndex(plan, [0, 1, 3]), 2);
  assert.equal(lowestFreeIndex(plan, [1, 2]), 0);
  assert.throws(() => lowestFreeIndex(plan, [0, 1, 2, 3]), { code: 'NO_CAPACITY' });
});

test('TAP names and MACs are stable per VM id, distinct between VMs, and valid', () => {
  const ids = ['ten-0123456789abcdef', 'ten-0123456789abcdee', 'vm-1', 'a'.repeat(40)];
  for (const id of ids) {
    assert.equal(tapName(id), tapName(id));
    assert.match(tapName(id), /^wrn[0-9a-f]{12}$/);
    assert.ok(tapName(id).length <= 15, 'Linux interface names are at most 15 bytes');
    // Locally administered (bit 1 of the first octet), unicast (bit 0 clear).
    assert.match(macOf(id), /^02(:[0-9a-f]{2}){5}$/);
  }
  assert.equal(new Set(ids.map(tapName)).size, ids.length);
  assert.equal(new Set(ids.map(macOf)).size, ids.length);
});

test('network settings: defaults, their variables, and bad values named', () => {
  const c = loadConfig({});
  assert.deepEqual(
    [c.network, c.vmNetwork, c.dnsPort, c.vmDnsUpstream],
    ['on', '10.213.0.0/16', 10053, undefined],
  );
  const set = loadConfig({
    WARREN_NETWORK: 'off',
    WARREN_VM_NETWORK: '172.31.0.0/20',
    WARREN_DNS_PORT: '5300',
    WARREN_VM_DNS_UPSTREAM: '192.0.2.53:5353',
  });
  assert.deepEqual(
    [set.network, set.vmNetwork, set.dnsPort, set.vmDnsUpstream],
    ['off', '172.31.0.0/20', 5300, '192.0.2.53:5353'],
  );
  assert.throws(() => loadConfig({ WARREN_VM_NETWORK: '10.213.0.1/16' }), /WARREN_VM_NETWORK/);
  assert.throws(() => loadConfig({ WARREN_NETWORK: 'yes' }), /WARREN_NETWORK/);
  assert.throws(() => loadConfig({ WARREN_VM_DNS_UPSTREAM: 'dns.example' }), /WARREN_VM_DNS_UPSTREAM/);
  assert.throws(() => loadConfig({ WARREN_DNS_PORT: '70000' }), /WARREN_DNS_PORT/);
});

test('upstream resolvers: IPv4 or IPv6, port 53 unless given', () => {
  assert.deepEqual(parseUpstream('192.0.2.53'), { host: '192.0.2.53', port: 53 });
  assert.deepEqual(parseUpstream('127.0.0.53:5353'), { host: '127.0.0.53', port: 5353 });
  assert.deepEqual(parseUpstream('2001:db8::53'), { host: '2001:db8::53', port: 53 });
  assert.deepEqual(parseUpstream('[2001:db8::53]:5300'), { host: '2001:db8::53', port: 5300 });
  assert.deepEqual(parseUpstream('fe80::1%eth0'), { host: 'fe80::1%eth0', port: 53 });
  for (const bad of [
    'dns.example',
    '192.0.2.53:0',
    '192.0.2.300',
    '[fe80::1',
    '[2001:db8::53]:0',
    '[2001:db8::53]:70000',
    '[1.2.3]:53',
  ]) {
    assert.throws(() => parseUpstream(bad), { code: 'INVALID_ARGUMENT' }, bad);
  }
});
