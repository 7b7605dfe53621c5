/**
 * The address plan of tenant networks: WARREN_VM_NETWORK is cut into /30s, one per VM, each a
 * point-to-point link between a TAP on the host (`.1`) and the guest (`.2`). No bridge: VMs
 * never share an L2 segment, so whatever one VM sends reaches the host's routing and firewall,
 * never another VM directly. Pure functions; the allocation is persisted in the VM's vm.json.
 */
import { createHash } from 'node:crypto';
import { WarrenError } from '@warren/protocol';

/** Every platform TAP starts with this, so one wildcard (`wrn*`) in the ruleset matches them all. */
export const TAP_PREFIX = 'wrn';
/** Each VM's link: network, host, guest, broadcast. */
const SLOT_SIZE = 4;

export interface VmNetwork {
  /** Which /30 of WARREN_VM_NETWORK; the lowest free one at create. */
  index: number;
  tap: string;
  mac: string;
  /** The host side of the link: the guest's gateway and DNS server. */
  hostIp: string;
  guestIp: string;
}

export interface AddressPlan {
  /** The network in canonical form, e.g. `10.213.0.0/16`. */
  cidr: string;
  base: number;
  prefix: number;
  /** How many /30s (VMs) fit. */
  slots: number;
}

export function parseIpv4(text: string): number {
  const parts = text.split('.');
  if (parts.length !== 4 || parts.some((p) => !/^(0|[1-9]\d{0,2})$/.test(p) || Number(p) > 255)) {
    throw new WarrenError('INVALID_ARGUMENT', `not an IPv4 address: ${text}`);
  }
  return parts.reduce((n, p) => n * 256 + Number(p), 0);
}

export function formatIpv4(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
}

/** `a.b.c.d/len` (a bare address is /32), with the host bits cleared. */
export function parseCidr(text: string): { base: number; prefix: number } {
  const [addr = '', len, extra] = text.split('/');
  if (extra !== undefined || (len !== undefined && !/^(3[0-2]|[12]?\d)$/.test(len))) {
    throw new WarrenError('INVALID_ARGUMENT', `not an IPv4 CIDR: ${text}`);
  }
  const prefix = len === undefined ? 32 : Number(len);
  return { base: maskOf(parseIpv4(addr), prefix), prefix };
}

export function formatCidr(c: { base: number; prefix: number }): string {
  return `${formatIpv4(c.base)}/${c.prefix}`;
}

function maskOf(addr: number, prefix: number): number {
  return prefix === 0 ? 0 : (addr & (0xffffffff << (32 - prefix))) >>> 0;
}

/** True if `inner` lies entirely within `outer`. */
export function cidrContains(
  outer: { base: number; prefix: number },
  inner: { base: number; prefix: number },
): boolean {
  return inner.prefix >= outer.prefix && maskOf(inner.base, outer.prefix) === outer.base;
}

/** Validates WARREN_VM_NETWORK: an aligned IPv4 network with room for at least two VMs. */
export function addressPlan(cidr: string): AddressPlan {
  const { base, prefix } = parseCidr(cidr);
  if (formatCidr({ base, prefix }) !== cidr) {
    throw new WarrenError(
      'INVALID_ARGUMENT',
      `${cidr} has host bits set; did you mean ${formatCidr({ base, prefix })}?`,
    );
  }
  if (prefix < 8 || prefix > 29) {
    throw new WarrenError('INVALID_ARGUMENT', `${cidr}: the VM network needs a prefix between /8 and /29`);
  }
  return { cidr, base, prefix, slots: 2 ** (32 - prefix) / SLOT_SIZE };
}

/**
 * Derived from the VM id (not the index) so that a TAP left behind by a crash can be traced to
 * its VM; a hash rather than the id itself because interface names are at most 15 bytes.
 */
export function tapName(vmId: string): string {
  return `${TAP_PREFIX}${createHash('sha256').update(`tap:${vmId}`).digest('hex').slice(0, 12)}`;
}

/** A locally administered unicast MAC (first octet 02), stable for the VM id. */
export function macOf(vmId: string): string {
  const bytes = createHash('sha256').update(`mac:${vmId}`).digest().subarray(0, 5);
  return ['02', ...[...bytes].map((b) => b.toString(16).padStart(2, '0'))].join(':');
}

export function vmNetworkAt(plan: AddressPlan, index: number, vmId: string): VmNetwork {
  if (!Number.isInteger(index) || index < 0 || index >= plan.slots) {
    throw new WarrenError('INTERNAL', `network index ${index} is outside ${plan.cidr}`);
  }
  const net = plan.base + index * SLOT_SIZE;
  return {
    index,
    tap: tapName(vmId),
    mac: macOf(vmId),
    hostIp: formatIpv4(net + 1),
    guestIp: formatIpv4(net + 2),
  };
}

/** The lowest /30 no VM holds; NO_CAPACITY when the network is full. */
export function lowestFreeIndex(plan: AddressPlan, taken: Iterable<number>): number {
  const used = new Set(taken);
  for (let i = 0; i < plan.slots; i++) if (!used.has(i)) return i;
  throw new WarrenError(
    'NO_CAPACITY',
    `all ${plan.slots} VM links of WARREN_VM_NETWORK ${plan.cidr} are in use; give it a shorter prefix`,
  );
}

/** The guest's kernel command line argument its init reads: address/prefix, gateway, DNS server. */
export function guestNetArg(net: VmNetwork): string {
  return `warren.net=${net.guestIp}/30,${net.hostIp},${net.hostIp}`;
}
