/**
 * The platform's nftables ruleset, rendered from the VMs on this host and their network
 * policies. Always the whole of it, applied in one `nft -f -` transaction that replaces the
 * previous tables: there is no incremental update that could leave a half-changed firewall,
 * and the same VMs and policies always give the same text (sorted, no timestamps), so a
 * restarted agent reproduces exactly what was there.
 */
import type { NetworkPolicy } from '@warren/protocol';
import {
  type AddressPlan,
  cidrContains,
  formatCidr,
  parseCidr,
  TAP_PREFIX,
  type VmNetwork,
} from './address.ts';

export const NFT_TABLE = 'warren';

export interface RulesetVm {
  id: string;
  network: VmNetwork;
  policy: NetworkPolicy;
}

export interface RulesetOptions {
  plan: AddressPlan;
  /** Where the host agent's DNS forwarder listens; guests reach it as <gateway>:53. */
  dnsPort: number;
  /**
   * More destinations no VM may reach: the host's own networks (host-network.ts reads them on
   * every apply) and the operator's WARREN_VM_BLOCKED_CIDRS. Canonical CIDRs.
   */
  blocked?: readonly string[];
}

/**
 * Destinations no VM may reach, whatever its policy: "this network", private (RFC 1918),
 * shared/CGNAT, loopback, link-local (the cloud metadata server 169.254.169.254), IETF protocol
 * assignments, benchmarking, multicast and reserved (which includes broadcast). The host's own
 * addresses are not listed: traffic to them takes the input hook, where VMs get only DNS.
 */
export const BLOCKED_DESTINATIONS: readonly string[] = [
  '0.0.0.0/8',
  '10.0.0.0/8',
  '100.64.0.0/10',
  '127.0.0.0/8',
  '169.254.0.0/16',
  '172.16.0.0/12',
  '192.0.0.0/24',
  '192.168.0.0/16',
  '198.18.0.0/15',
  '224.0.0.0/4',
  '240.0.0.0/4',
];

const ANY_TAP = `"${TAP_PREFIX}*"`;

/**
 * Provider services at public addresses, which the ranges above do not cover, each a way from a
 * VM into the provider's control of the host:
 * - 168.63.129.16/32: Azure's WireServer (also its DNS, DHCP and health-probe source); it hands
 *   out the host VM's extension settings and certificates, and answers any guest on the host.
 * - 161.26.0.0/16: IBM Cloud's service network (its DNS resolvers 161.26.0.10/11, NTP, package
 *   mirrors), reachable from every IBM Cloud server.
 * The metadata servers of AWS, GCP, Azure, Oracle, DigitalOcean, Hetzner (169.254.169.254),
 * Tencent (169.254.0.23) and Alibaba (100.100.100.200) are in link-local and shared space above.
 */
export const PROVIDER_SERVICE_ADDRESSES: readonly string[] = ['168.63.129.16/32', '161.26.0.0/16'];

/**
 * Every blocked destination, the VM network included (VM to VM is blocked anyway; this also
 * covers an operator's VM network outside the private ranges), as an nftables interval set
 * takes them: sorted, and without a network inside another (overlaps are refused).
 */
function blockedSet(plan: AddressPlan, extra: readonly string[]): string[] {
  const ranges = [...BLOCKED_DESTINATIONS, ...PROVIDER_SERVICE_ADDRESSES, ...extra].map((c) => parseCidr(c));
  ranges.push({ base: plan.base, prefix: plan.prefix });
  const outer = ranges.filter(
    (r, i) =>
      !ranges.some(
        (o, j) => j !== i && cidrContains(o, r) && (o.prefix < r.prefix || (o.prefix === r.prefix && j < i)),
      ),
  );
  return outer.sort((a, b) => a.base - b.base).map(formatCidr);
}

function allowRules(policy: NetworkPolicy): string[] {
  const entries = policy.allowlist.map((e) => {
    const c = parseCidr(e.cidr);
    const ports = [...new Set(e.ports ?? [])].sort((a, b) => a - b);
    return { base: c.base, prefix: c.prefix, cidr: formatCidr(c), ports };
  });
  entries.sort(
    (a, b) => a.base - b.base || a.prefix - b.prefix || a.ports.join(',').localeCompare(b.ports.join(',')),
  );
  const seen = new Set<string>();
  const rules: string[] = [];
  for (const e of entries) {
    // No ports (or an empty list) means the whole network, every protocol.
    const rule =
      e.ports.length === 0
        ? `ip daddr ${e.cidr} accept`
        : `ip daddr ${e.cidr} meta l4proto { tcp, udp } th dport { ${e.ports.join(', ')} } accept`;
    if (!seen.has(rule)) rules.push(rule);
    seen.add(rule);
  }
  return rules;
}

function egressChain(vm: RulesetVm): string[] {
  const { policy } = vm;
  const rules: string[] = [];
  if (policy.bandwidthMbit !== null) {
    // Policing in the same table rather than tc shaping: the limit is then replaced atomically
    // with the rest of the policy and rebuilt by the same render. nft's bucket holds one second
    // of the rate, so a short burst passes at line speed; TCP then settles near the rate.
    rules.push(
      `limit rate over ${policy.bandwidthMbit * 125_000} bytes/second counter drop comment "${vm.id}: over ${policy.bandwidthMbit} Mbit/s"`,
    );
  }
  if (policy.egress === 'internet') rules.push('accept');
  else {
    if (policy.egress === 'allowlist') rules.push(...allowRules(policy));
    rules.push(`counter drop comment "${vm.id}: egress ${policy.egress}"`);
  }
  return rules;
}

function chain(name: string, rules: string[], hook?: string): string[] {
  return [`\tchain ${name} {`, ...(hook ? [`\t\t${hook}`] : []), ...rules.map((r) => `\t\t${r}`), '\t}'];
}

function vmap(items: [string, string][]): string {
  return `{ ${items.map(([k, v]) => `"${k}" : ${v}`).join(', ')} }`;
}

/** Removes both tables (if they exist) in one transaction: the state with no networked VM. */
export function renderEmpty(): string {
  return [
    `table inet ${NFT_TABLE} {}`,
    `delete table inet ${NFT_TABLE}`,
    `table arp ${NFT_TABLE} {}`,
    `delete table arp ${NFT_TABLE}`,
    '',
  ].join('\n');
}

/**
 * The complete ruleset for these VMs (at least one). Traffic of other interfaces is never
 * matched: every rule sits behind an `iifname`/`oifname "wrn*"` test, so the host's own
 * forwarding and services are left to whatever other firewall it has.
 */
export function renderRuleset(vms: readonly RulesetVm[], options: RulesetOptions): string {
  if (vms.length === 0) return renderEmpty();
  const sorted = [...vms].sort((a, b) => a.network.index - b.network.index);
  const { plan, dnsPort } = options;
  const dnsTaps = sorted.filter((vm) => vm.policy.egress !== 'none').map((vm) => `"${vm.network.tap}"`);
  const inet: string[] = [
    `table inet ${NFT_TABLE} {`,
    '\tset blocked {',
    '\t\ttype ipv4_addr',
    '\t\tflags interval',
    `\t\telements = { ${blockedSet(plan, options.blocked ?? []).join(', ')} }`,
    '\t}',
    '\tset dns_taps {',
    '\t\ttype ifname',
    ...(dnsTaps.length ? [`\t\telements = { ${dnsTaps.join(', ')} }`] : []),
    '\t}',
    // Before conntrack, so a spoofed packet never even creates a connection entry.
    ...chain(
      'prerouting',
      [`iifname ${ANY_TAP} jump vm_source`],
      'type filter hook prerouting priority raw; policy accept;',
    ),
    ...chain('vm_source', [
      'meta nfproto ipv6 counter drop comment "no IPv6 from VMs"',
      `iifname vmap ${vmap(sorted.map((vm) => [vm.network.tap, `jump source_${vm.network.tap}`]))}`,
      'counter drop comment "a TAP no VM owns"',
    ]),
  ];
  for (const vm of sorted) {
    inet.push(
      ...chain(`source_${vm.network.tap}`, [
        `ether saddr ${vm.network.mac} ip saddr ${vm.network.guestIp} accept`,
        `counter drop comment "${vm.id}: spoofed source"`,
      ]),
    );
  }
  inet.push(
    ...chain(
      'forward',
      [`iifname ${ANY_TAP} jump vm_egress`, `oifname ${ANY_TAP} jump vm_ingress`],
      'type filter hook forward priority filter; policy accept;',
    ),
    // Checked on every packet, not only a connection's first: a policy change cuts flows already open.
    ...chain('vm_egress', [
      `oifname ${ANY_TAP} counter drop comment "VM to VM"`,
      'ip daddr @blocked counter drop comment "blocked destination"',
      `iifname vmap ${vmap(sorted.map((vm) => [vm.network.tap, `jump egress_${vm.network.tap}`]))}`,
      'counter drop comment "a TAP no VM owns"',
    ]),
  );
  for (const vm of sorted) inet.push(...chain(`egress_${vm.network.tap}`, egressChain(vm)));
  inet.push(
    ...chain('vm_ingress', [
      'ct state established,related accept',
      'counter drop comment "unsolicited to a VM"',
    ]),
    ...chain(
      'input',
      [
        `iifname ${ANY_TAP} jump vm_input`,
        // The forwarder listens on every address of the host; only redirected VM queries may use it.
        `meta l4proto { tcp, udp } th dport ${dnsPort} counter drop comment "DNS forwarder: VMs only"`,
      ],
      'type filter hook input priority filter; policy accept;',
    ),
    // Replies to connections the host opened (the dashboard proxy) pass; a VM opens nothing but DNS.
    ...chain('vm_input', [
      `iifname @dns_taps meta l4proto { tcp, udp } th dport ${dnsPort} ct status dnat accept`,
      `meta l4proto { tcp, udp } th dport ${dnsPort} ct direction original counter drop comment "DNS of egress none"`,
      'ct state established,related accept',
      'counter drop comment "VM to the host"',
    ]),
    ...chain(
      'nat_prerouting',
      [
        `iifname ${ANY_TAP} fib daddr type local meta l4proto { tcp, udp } th dport 53 redirect to :${dnsPort}`,
      ],
      'type nat hook prerouting priority dstnat; policy accept;',
    ),
    ...chain(
      'nat_postrouting',
      [`ip saddr ${plan.cidr} oifname != ${ANY_TAP} masquerade`],
      'type nat hook postrouting priority srcnat; policy accept;',
    ),
    '}',
  );
  // IPv4 rules cannot see ARP: without these a VM could claim another VM's address.
  const arp: string[] = [
    `table arp ${NFT_TABLE} {`,
    ...chain(
      'input',
      [`iifname ${ANY_TAP} jump vm_arp`],
      'type filter hook input priority filter; policy accept;',
    ),
    ...chain('vm_arp', [
      `iifname vmap ${vmap(sorted.map((vm) => [vm.network.tap, `jump arp_${vm.network.tap}`]))}`,
      'counter drop comment "a TAP no VM owns"',
    ]),
  ];
  for (const vm of sorted) {
    arp.push(
      ...chain(`arp_${vm.network.tap}`, [
        `arp saddr ether ${vm.network.mac} arp saddr ip ${vm.network.guestIp} accept`,
        `counter drop comment "${vm.id}: spoofed ARP"`,
      ]),
    );
  }
  arp.push('}');
  return [
    '# The Warren host agent renders this from its VMs and replaces it whole on every change.',
    `table inet ${NFT_TABLE} {}`,
    `delete table inet ${NFT_TABLE}`,
    ...inet,
    `table arp ${NFT_TABLE} {}`,
    `delete table arp ${NFT_TABLE}`,
    ...arp,
    '',
  ].join('\n');
}
