/**
 * The nftables ruleset renderer: a pure function of the VMs and their policies, the same text
 * for the same state whatever order it comes in, and each policy rendered as documented. That
 * the kernel accepts and enforces it is shown with real packets in test/net.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  addressPlan,
  BLOCKED_DESTINATIONS,
  loadConfig,
  PROVIDER_SERVICE_ADDRESSES,
  parseCidr,
  type RulesetVm,
  renderEmpty,
  renderRuleset,
  vmNetworkAt,
} from '@warren/host-agent';
import type { NetworkPolicy } from '@warren/protocol';

const plan = addressPlan('10.213.0.0/16');
const options = { plan, dnsPort: 10053 };
const internet: NetworkPolicy = { egress: 'internet', allowlist: [], bandwidthMbit: null };

function vm(id: string, index: number, policy: NetworkPolicy = internet): RulesetVm {
  return { id, network: vmNetworkAt(plan, index, id), policy };
}

/** CIDRs in address order, as the interval set lists them. */
function byAddress(cidrs: readonly string[]): string[] {
  return [...cidrs].sort((a, b) => parseCidr(a).base - parseCidr(b).base);
}

/** The elements of the blocked set. */
function blockedOf(text: string): string[] {
  const m = /\tset blocked \{[^}]*elements = \{ ([^}]*) \}/.exec(text);
  assert.ok(m, 'no blocked set');
  return m[1]!.split(', ');
}

/** The body of one chain, rule lines without indentation. */
function chainOf(text: string, name: string): string[] {
  const start = text.indexOf(`\tchain ${name} {\n`);
  assert.ok(start >= 0, `no chain ${name}`);
  const end = text.indexOf('\n\t}', start);
  return text
    .slice(start, end)
    .split('\n')
    .slice(1)
    .map((l) => l.trim());
}

test('the same VMs and policies give byte-identical text, in whatever order they come', () => {
  const allow: NetworkPolicy = {
    egress: 'allowlist',
    allowlist: [{ cidr: '203.0.113.10/24', ports: [443, 80, 443] }, { cidr: '198.51.100.7' }],
    bandwidthMbit: 20,
  };
  const shuffled: NetworkPolicy = {
    ...allow,
    allowlist: [{ cidr: '198.51.100.7/32' }, { cidr: '203.0.113.0/24', ports: [80, 443] }],
  };
  const vms = [vm('ten-a', 0), vm('ten-b', 1, allow), vm('ten-c', 2, { ...internet, egress: 'none' })];
  const text = renderRuleset(vms, options);
  assert.equal(renderRuleset([...vms].reverse(), options), text);
  assert.equal(renderRuleset([vms[2]!, { ...vms[1]!, policy: shuffled }, vms[0]!], options), text);
  assert.doesNotMatch(text, /\d{4}-\d\d-\d\dT/, 'no timestamps');
  // One transaction that replaces both tables whole.
  assert.match(text, /^# .*\ntable inet warren \{\}\ndelete table inet warren\ntable inet warren \{\n/);
  assert.match(text, /\ntable arp warren \{\}\ndelete table arp warren\ntable arp warren \{\n/);
});

test('without networked VMs both tables are removed', () => {
  assert.equal(renderRuleset([], options), renderEmpty());
  assert.equal(
    renderEmpty(),
    'table inet warren {}\ndelete table inet warren\ntable arp warren {}\ndelete table arp warren\n',
  );
});

test('internet: everything public; private, shared, link-local, loopback, multicast and reserved never', () => {
  const text = renderRuleset([vm('ten-a', 0)], options);
  const tap = vmNetworkAt(plan, 0, 'ten-a').tap;
  assert.deepEqual(chainOf(text, `egress_${tap}`), ['accept']);
  const egress = chainOf(text, 'vm_egress');
  // Blocked destinations and VM to VM come before any VM's own policy.
  assert.equal(egress[0], 'oifname "wrn*" counter drop comment "VM to VM"');
  assert.equal(egress[1], 'ip daddr @blocked counter drop comment "blocked destination"');
  for (const c of ['10.0.0.0/8', '172.16.0.0/12', '192.168.0.0/16', '100.64.0.0/10', '169.254.0.0/16']) {
    assert.ok(BLOCKED_DESTINATIONS.includes(c), c);
  }
  assert.match(
    text,
    new RegExp(
      `elements = \\{ ${byAddress([...BLOCKED_DESTINATIONS, ...PROVIDER_SERVICE_ADDRESSES])
        .join(', ')
        .replaceAll('.', '\\.')} \\}`,
    ),
  );
  assert.deepEqual(chainOf(text, 'vm_ingress'), [
    'ct state established,related accept',
    'counter drop comment "unsolicited to a VM"',
  ]);
  assert.deepEqual(chainOf(text, 'vm_input'), [
    'iifname @dns_taps meta l4proto { tcp, udp } th dport 10053 ct status dnat accept',
    'meta l4proto { tcp, udp } th dport 10053 ct direction original counter drop comment "DNS of egress none"',
    'ct state established,related accept',
    'counter drop comment "VM to the host"',
  ]);
  assert.match(text, new RegExp(`elements = \\{ "${tap}" \\}`), 'its DNS is allowed');
  assert.match(text, /ip saddr 10\.213\.0\.0\/16 oifname != "wrn\*" masquerade/);
});

test('a VM network outside the blocked ranges is blocked too', () => {
  const own = addressPlan('192.0.2.0/24');
  const text = renderRuleset([{ ...vm('ten-a', 0), network: vmNetworkAt(own, 0, 'ten-a') }], {
    plan: own,
    dnsPort: 53,
  });
  assert.match(text, /192\.0\.0\.0\/24, 192\.0\.2\.0\/24, 192\.168\.0\.0\/16/);
  const inside = renderRuleset([vm('ten-a', 0)], options);
  assert.doesNotMatch(
    inside,
    /10\.213\.0\.0\/16,/,
    'covered by 10.0.0.0/8 already; an overlap would be refused',
  );
});

test('provider service addresses, the host’s own networks and the operator’s ranges are blocked (finding 9)', () => {
  const plain = blockedOf(renderRuleset([vm('ten-a', 0)], options));
  // Azure's WireServer and IBM Cloud's service network, by default.
  assert.ok(plain.includes('168.63.129.16/32'), plain.join());
  assert.ok(plain.includes('161.26.0.0/16'), plain.join());
  const text = renderRuleset([vm('ten-a', 0)], {
    ...options,
    // The host's uplink and another of its networks, twice over, and the operator's extras:
    // one inside a built-in range, one containing another.
    blocked: [
      '198.51.100.0/30',
      '203.0.113.0/24',
      '198.51.100.0/30',
      '10.1.0.0/16',
      '192.0.2.0/25',
      '192.0.2.0/24',
    ],
  });
  const blocked = blockedOf(text);
  for (const c of ['198.51.100.0/30', '203.0.113.0/24', '192.0.2.0/24', '168.63.129.16/32', '10.0.0.0/8']) {
    assert.ok(blocked.includes(c), `${c} in ${blocked.join()}`);
  }
  // An interval set refuses overlapping elements: each range once, none inside another.
  for (const c of ['10.1.0.0/16', '192.0.2.0/25']) assert.ok(!blocked.includes(c), c);
  assert.equal(new Set(blocked).size, blocked.length);
  assert.deepEqual(blocked, byAddress(blocked));
  // Blocked before any VM's own policy, so an allowlist cannot open them.
  const allow: NetworkPolicy = {
    egress: 'allowlist',
    allowlist: [{ cidr: '168.63.129.16/32' }, { cidr: '198.51.100.0/30' }],
    bandwidthMbit: null,
  };
  const allowing = renderRuleset([vm('ten-a', 0, allow)], { ...options, blocked: ['198.51.100.0/30'] });
  assert.equal(
    chainOf(allowing, 'vm_egress')[1],
    'ip daddr @blocked counter drop comment "blocked destination"',
  );
});

test('the operator’s blocked ranges: validated, canonical, from a comma-separated list', () => {
  assert.deepEqual(loadConfig({}).vmBlockedCidrs, []);
  assert.deepEqual(loadConfig({ WARREN_VM_BLOCKED_CIDRS: '192.0.2.7/24, 198.51.100.9' }).vmBlockedCidrs, [
    '192.0.2.0/24',
    '198.51.100.9/32',
  ]);
  assert.throws(
    () => loadConfig({ WARREN_VM_BLOCKED_CIDRS: '192.0.2.0/24,example.com' }),
    /WARREN_VM_BLOCKED_CIDRS/,
  );
  assert.throws(() => loadConfig({ WARREN_VM_BLOCKED_CIDRS: '192.0.2.0/33' }), /WARREN_VM_BLOCKED_CIDRS/);
});

test('none: no egress and no DNS', () => {
  const text = renderRuleset([vm('ten-a', 0), vm('ten-c', 1, { ...internet, egress: 'none' })], options);
  const c = vmNetworkAt(plan, 1, 'ten-c').tap;
  assert.deepEqual(chainOf(text, `egress_${c}`), ['counter drop comment "ten-c: egress none"']);
  assert.match(
    text,
    new RegExp(
      `set dns_taps \\{\n\t\ttype ifname\n\t\telements = \\{ "${vmNetworkAt(plan, 0, 'ten-a').tap}" \\}\n`,
    ),
  );
});

test('allowlist: only the listed networks and ports, normalised and sorted, then drop', () => {
  const policy: NetworkPolicy = {
    egress: 'allowlist',
    allowlist: [
      { cidr: '203.0.113.10/24', ports: [443, 80, 443] },
      { cidr: '198.51.100.7' },
      { cidr: '198.51.100.8', ports: [] },
    ],
    bandwidthMbit: null,
  };
  const text = renderRuleset([vm('ten-b', 0, policy)], options);
  assert.deepEqual(chainOf(text, `egress_${vmNetworkAt(plan, 0, 'ten-b').tap}`), [
    'ip daddr 198.51.100.7/32 accept',
    'ip daddr 198.51.100.8/32 accept',
    'ip daddr 203.0.113.0/24 meta l4proto { tcp, udp } th dport { 80, 443 } accept',
    'counter drop comment "ten-b: egress allowlist"',
  ]);
  const empty = renderRuleset([vm('ten-b', 0, { ...policy, allowlist: [] })], options);
  assert.deepEqual(chainOf(empty, `egress_${vmNetworkAt(plan, 0, 'ten-b').tap}`), [
    'counter drop comment "ten-b: egress allowlist"',
  ]);
});

test('a bandwidth limit polices the VM’s egress before its policy', () => {
  const text = renderRuleset([vm('ten-a', 0, { ...internet, bandwidthMbit: 8 })], options);
  assert.deepEqual(chainOf(text, `egress_${vmNetworkAt(plan, 0, 'ten-a').tap}`), [
    'limit rate over 1000000 bytes/second counter drop comment "ten-a: over 8 Mbit/s"',
    'accept',
  ]);
});

test('anti-spoofing: each TAP accepts only its VM’s MAC and IP, in IPv4 and ARP; IPv6 and unknown TAPs are dropped', () => {
  const a = vm('ten-a', 0);
  const b = vm('ten-b', 1);
  const text = renderRuleset([a, b], options);
  for (const v of [a, b]) {
    const { tap, mac, guestIp } = v.network;
    assert.deepEqual(chainOf(text, `source_${tap}`), [
      `ether saddr ${mac} ip saddr ${guestIp} accept`,
      `counter drop comment "${v.id}: spoofed source"`,
    ]);
    assert.deepEqual(chainOf(text, `arp_${tap}`), [
      `arp saddr ether ${mac} arp saddr ip ${guestIp} accept`,
      `counter drop comment "${v.id}: spoofed ARP"`,
    ]);
  }
  const source = chainOf(text, 'vm_source');
  assert.equal(source[0], 'meta nfproto ipv6 counter drop comment "no IPv6 from VMs"');
  assert.equal(source.at(-1), 'counter drop comment "a TAP no VM owns"');
  assert.match(chainOf(text, 'prerouting')[0]!, /priority raw/);
});

test('a policy change touches only that VM’s egress chain (and the DNS set for none)', () => {
  const lines = (b: NetworkPolicy) => renderRuleset([vm('ten-a', 0), vm('ten-b', 1, b)], options).split('\n');
  const diff = (x: string[], y: string[]) => ({
    added: y.filter((l) => !x.includes(l)).map((l) => l.trim()),
    removed: x.filter((l) => !y.includes(l)).map((l) => l.trim()),
  });
  const base = lines(internet);
  assert.deepEqual(diff(base, lines({ ...internet, bandwidthMbit: 5 })), {
    added: ['limit rate over 625000 bytes/second counter drop comment "ten-b: over 5 Mbit/s"'],
    removed: [],
  });
  const a = vmNetworkAt(plan, 0, 'ten-a').tap;
  const b = vmNetworkAt(plan, 1, 'ten-b').tap;
  assert.deepEqual(diff(base, lines({ ...internet, egress: 'none' })), {
    added: [`elements = { "${a}" }`, 'counter drop comment "ten-b: egress none"'],
    removed: [`elements = { "${a}", "${b}" }`],
  });
});

test('only platform TAPs are matched: every hook chain filters on wrn* first', () => {
  const text = renderRuleset([vm('ten-a', 0)], options);
  for (const name of ['prerouting', 'forward', 'input', 'nat_prerouting', 'nat_postrouting']) {
    const [hook, ...rules] = chainOf(text, name);
    assert.match(hook!, /^type (filter|nat) hook \w+ priority \w+; policy accept;$/);
    for (const rule of rules) {
      assert.ok(/(iifname|oifname) (!= )?"wrn\*"|th dport 10053/.test(rule), `${name}: ${rule}`);
    }
  }
});
