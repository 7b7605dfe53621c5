/**
 * The host side of tenant networks: one persistent TAP per VM with the host end of its /30,
 * the platform's nftables tables, IPv4 forwarding, and the DNS forwarder. Everything here acts
 * on the network namespace the agent runs in.
 */
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { run } from '@warren/images';
import { WarrenError } from '@warren/protocol';
import { type AddressPlan, formatCidr, parseCidr, TAP_PREFIX, type VmNetwork } from './address.ts';
import { type DnsClientPolicy, DnsForwarder, type DnsLimits, parseUpstream } from './dns-forwarder.ts';
import { NFT_TABLE, type RulesetVm, renderEmpty, renderRuleset } from './ruleset.ts';

export interface HostNetworkOptions {
  plan: AddressPlan;
  dnsPort: number;
  /** The resolver the forwarder relays to; without one VMs get no DNS. */
  dnsUpstream?: string;
  dnsLimits: DnsLimits;
  /** What VMs with `egress: allowlist` may resolve (WARREN_VM_DNS_ALLOWLIST_NAMES). */
  dnsAllowlistNames: DnsClientPolicy['names'];
  /** The operator's extra blocked destinations (WARREN_VM_BLOCKED_CIDRS). */
  blockedCidrs: readonly string[];
  /** Tags this agent's TAPs (a digest of its data dir), so a sweep never touches another agent's. */
  dataDir: string;
  log?: (message: string) => void;
}

interface LinkInfo {
  ifname: string;
  ifalias?: string;
  addr_info?: { family: string; local: string; prefixlen?: number }[];
}

const HOST_UNSUPPORTED_HINT = 'install iproute2 and nftables, or set WARREN_NETWORK=off';

export class HostNetwork {
  readonly plan: AddressPlan;
  readonly dnsPort: number;
  readonly #o: HostNetworkOptions;
  readonly #owner: string;
  #forwarder: DnsForwarder | undefined;
  #applied: string | undefined;
  #forwarding = false;

  constructor(options: HostNetworkOptions) {
    this.#o = options;
    this.plan = options.plan;
    this.dnsPort = options.dnsPort;
    this.#owner = createHash('sha256').update(options.dataDir).digest('hex').slice(0, 12);
    if (options.dnsUpstream) {
      this.#forwarder = new DnsForwarder({
        port: options.dnsPort,
        upstream: parseUpstream(options.dnsUpstream),
        limits: options.dnsLimits,
        ...(options.log ? { log: options.log } : {}),
      });
    }
  }

  /** Creates the VM's TAP if missing and (re)applies its settings; safe to repeat. */
  async ensureTap(vmId: string, net: VmNetwork): Promise<void> {
    if (!linkExists(net.tap)) {
      await ip(['tuntap', 'add', 'dev', net.tap, 'mode', 'tap']);
    }
    // Before the link is up, so it never gets an IPv6 link-local address.
    await sysctl(`ipv6/conf/${net.tap}/disable_ipv6`, '1', true);
    // Strict reverse-path check (the firewall checks sources too), no redirects, and ARP
    // answers only for the address of this link.
    await sysctl(`ipv4/conf/${net.tap}/rp_filter`, '1');
    await sysctl(`ipv4/conf/${net.tap}/send_redirects`, '0');
    await sysctl(`ipv4/conf/${net.tap}/arp_ignore`, '1');
    await ip(['link', 'set', 'dev', net.tap, 'alias', this.#alias(vmId)]);
    await ip(['addr', 'replace', `${net.hostIp}/30`, 'dev', net.tap]);
    await ip(['link', 'set', 'dev', net.tap, 'up']);
  }

  /** Deletes a TAP (and with it its address and route); nothing when it is already gone. */
  async removeTap(tap: string): Promise<void> {
    if (!linkExists(tap)) return;
    await ip(['link', 'del', 'dev', tap]);
  }

  /** IPv4 addresses on this namespace's interfaces, so a new VM link avoids any already in use. */
  async addressesInUse(): Promise<Set<string>> {
    const links = JSON.parse(await ip(['-j', '-4', 'addr', 'show'])) as LinkInfo[];
    return new Set(links.flatMap((l) => (l.addr_info ?? []).map((a) => a.local)));
  }

  /** Deletes TAPs this agent made for VMs that no longer exist (a crash in the middle of a destroy). */
  async sweep(keep: ReadonlySet<string>): Promise<string[]> {
    const links = JSON.parse(await ip(['-j', 'link', 'show'])) as LinkInfo[];
    const removed: string[] = [];
    for (const l of links) {
      if (!l.ifname.startsWith(TAP_PREFIX) || keep.has(l.ifname)) continue;
      if (!l.ifalias?.startsWith(`warren:${this.#owner}:`)) continue;
      this.#o.log?.(`removing TAP ${l.ifname} (${l.ifalias}): its VM is gone`);
      await this.removeTap(l.ifname);
      removed.push(l.ifname);
    }
    return removed;
  }

  /**
   * The networks of the host's own interfaces (its uplinks, and any other network it is on),
   * which VMs may not reach: the gateway, the provider's other machines, the host's neighbours.
   * Read again on every apply, since an uplink can change under a running agent (DHCP).
   */
  async hostNetworks(): Promise<string[]> {
    const links = JSON.parse(await ip(['-j', '-4', 'addr', 'show'])) as LinkInfo[];
    const nets = new Set<string>();
    for (const l of links) {
      if (l.ifname === 'lo' || l.ifname.startsWith(TAP_PREFIX)) continue;
      for (const a of l.addr_info ?? []) {
        if (a.family === 'inet') nets.add(formatCidr(parseCidr(`${a.local}/${a.prefixlen ?? 32}`)));
      }
    }
    return [...nets].sort();
  }

  /**
   * Makes the firewall match these VMs: one `nft -f -` transaction that replaces the tables
   * (or removes them when no VM has a network), then forwarding and the DNS forwarder.
   */
  async apply(vms: readonly RulesetVm[]): Promise<void> {
    const blocked = vms.length ? [...(await this.hostNetworks()), ...this.#o.blockedCidrs] : [];
    const text = vms.length
      ? renderRuleset(vms, { plan: this.plan, dnsPort: this.dnsPort, blocked })
      : renderEmpty();
    if (text !== this.#applied) {
      // No networked VM and no table: nothing to remove, and a host without nftables runs
      // VMs without a network (the local API's) as before.
      const nothingToDo = vms.length === 0 && this.#applied === undefined && !(await this.#tablesExist());
      if (!nothingToDo) await nft(text);
      this.#applied = text;
    }
    // Egress `none` gets no DNS: the ruleset drops its queries, and the forwarder does not know it.
    const clients = new Map<string, DnsClientPolicy>();
    for (const vm of vms) {
      if (vm.policy.egress === 'none') continue;
      clients.set(vm.network.guestIp, {
        names: vm.policy.egress === 'allowlist' ? this.#o.dnsAllowlistNames : 'any',
      });
    }
    this.#forwarder?.setClients(clients);
    if (vms.length === 0) {
      this.#forwarder?.close();
      return;
    }
    // Only now: forwarding for VMs is never on before the rules that restrict it are.
    if (!this.#forwarding) {
      await sysctl('ipv4/ip_forward', '1');
      this.#forwarding = true;
    }
    if (this.#forwarder && !this.#forwarder.listening) {
      await this.#forwarder.start().catch((e: Error) => {
        this.#o.log?.(`DNS forwarder cannot listen on port ${this.dnsPort}: ${e.message}; VMs have no DNS`);
      });
    }
  }

  async #tablesExist(): Promise<boolean> {
    const exists = (family: string) =>
      run('nft', ['list', 'table', family, NFT_TABLE]).then(
        () => true,
        () => false,
      );
    return (await exists('inet')) || (await exists('arp'));
  }

  close(): void {
    this.#forwarder?.close();
  }

  #alias(vmId: string): string {
    return `warren:${this.#owner}:${vmId}`;
  }
}

/**
 * Through /proc/sys/net, which shows the caller's network namespace; /sys/class/net shows the
 * namespace sysfs was mounted in, which differs for an agent started with `nsenter --net`.
 */
function linkExists(name: string): boolean {
  return existsSync(`/proc/sys/net/ipv4/conf/${name}`);
}

function ip(args: string[]): Promise<string> {
  return run('ip', args, { errorCode: 'HOST_UNSUPPORTED' }).catch((e: WarrenError) => {
    throw new WarrenError('HOST_UNSUPPORTED', `${e.message} (${HOST_UNSUPPORTED_HINT})`, { cause: e });
  });
}

async function nft(text: string): Promise<void> {
  await run('nft', ['-f', '-'], { input: text, errorCode: 'HOST_UNSUPPORTED' }).catch((e: WarrenError) => {
    throw new WarrenError(
      'HOST_UNSUPPORTED',
      `applying the VM firewall: ${e.message} (${HOST_UNSUPPORTED_HINT})`,
      {
        cause: e,
      },
    );
  });
}

/** Writes a sysctl of the agent's own network namespace (/proc/sys/net is per namespace). */
async function sysctl(key: string, value: string, optional = false): Promise<void> {
  const path = `/proc/sys/net/${key}`;
  try {
    if ((await readFile(path, 'utf8')).trim() === value) return;
    await writeFile(path, value);
  } catch (e) {
    if (optional && (e as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw new WarrenError(
      'HOST_UNSUPPORTED',
      `cannot set net.${key.replaceAll('/', '.')}=${value}: ${(e as Error).message}`,
    );
  }
}
