import { NetworkPolicy } from '@warren/protocol';
import { guestNetArg, lowestFreeIndex, tapName, type VmNetwork, vmNetworkAt } from '../net/address.ts';
import type { HostNetwork } from '../net/host-network.ts';
import type { RulesetVm } from '../net/ruleset.ts';
import type { VmLaunchSpec } from '../vmm/driver.ts';
import type { VmRecord, VmRecords } from './vm-records.ts';

/**
 * The VMs' links to the host network: one /30 and one TAP per VM, allocated once and kept in its
 * record, and the firewall ruleset rendered from all records on disk. Without a HostNetwork
 * (WARREN_NETWORK=off) every method is a no-op and VMs get no NIC.
 */
export class VmLinks {
  readonly #records: VmRecords;
  readonly #network: HostNetwork | undefined;
  readonly #log: (message: string) => void;
  /** Network indexes handed out to creates that have not reached the disk yet. */
  readonly #reserved = new Set<number>();
  #allocating: Promise<unknown> = Promise.resolve();
  #syncing: Promise<void> = Promise.resolve();

  constructor(records: VmRecords, network: HostNetwork | undefined, log: (message: string) => void) {
    this.#records = records;
    this.#network = network;
    this.#log = log;
  }

  get enabled(): boolean {
    return this.#network !== undefined;
  }

  /**
   * Rebuilds the network state from the VMs on disk: TAPs of VMs that are gone are removed,
   * those of running VMs are repaired, and the ruleset is rendered and applied again. The same
   * VMs render the same ruleset, so this is idempotent.
   */
  async open(isRunning: (id: string) => boolean): Promise<void> {
    const network = this.#network;
    if (!network) return;
    const ids = await this.#records.ids();
    try {
      // By id, readable vm.json or not: a VM whose record cannot be read still owns its TAP.
      await network.sweep(new Set(ids.map((id) => tapName(id))));
      for (const id of ids) {
        const record = await this.#records.tryRead(id);
        if (record?.network && isRunning(id)) await network.ensureTap(id, record.network);
      }
      await this.sync();
    } catch (e) {
      // The kernel keeps the rules it had; no VM starts with a NIC until a sync succeeds.
      this.#log(`tenant network state not rebuilt: ${(e as Error).message}`);
    }
  }

  /**
   * Renders the ruleset from every VM on disk and applies it. Calls queue up and each reads the
   * disk when its turn comes, so the last one applied always reflects the latest state.
   */
  sync(): Promise<void> {
    const network = this.#network;
    if (!network) return Promise.resolve();
    const next = this.#syncing
      .catch(() => {})
      .then(async () => {
        const vms: RulesetVm[] = [];
        for (const record of await this.#records.all()) {
          if (record.network) {
            vms.push({
              id: record.id,
              network: record.network,
              policy: record.networkPolicy ?? NetworkPolicy.parse({}),
            });
          }
        }
        await network.apply(vms);
      });
    this.#syncing = next;
    return next;
  }

  /**
   * Picks the lowest free /30 and holds it until `persist` has written it to disk, so two
   * creates at once never get the same link. Addresses already on the host's interfaces
   * (another agent, an operator's) are skipped.
   */
  async allocate<T>(id: string, persist: (net: VmNetwork) => Promise<T>): Promise<T> {
    const network = this.#network;
    if (!network) throw new Error('no host network to allocate a link from');
    let index = -1;
    const pick = this.#allocating
      .catch(() => {})
      .then(async () => {
        const taken = new Set(this.#reserved);
        for (const r of await this.#records.all()) if (r.network) taken.add(r.network.index);
        const inUse = await network.addressesInUse();
        while (index < 0) {
          const i = lowestFreeIndex(network.plan, taken);
          const candidate = vmNetworkAt(network.plan, i, id);
          if (inUse.has(candidate.hostIp) || inUse.has(candidate.guestIp)) taken.add(i);
          else index = i;
        }
        this.#reserved.add(index);
      });
    this.#allocating = pick;
    await pick;
    try {
      return await persist(vmNetworkAt(network.plan, index, id));
    } finally {
      this.#reserved.delete(index);
    }
  }

  /** Before the VMM starts: its TAP and the rules that confine it, so the guest's first packet is filtered. */
  async prepare(record: VmRecord): Promise<void> {
    if (!record.network || !this.#network) return;
    await this.#network.ensureTap(record.id, record.network);
    await this.sync();
  }

  /** The NIC of the launch spec, if the VM has a link and networking is on. */
  nicOf(record: VmRecord): VmLaunchSpec['network'] {
    if (!record.network || !this.#network) return undefined;
    return { tap: record.network.tap, mac: record.network.mac, kernelArg: guestNetArg(record.network) };
  }

  /** Removes the VM's TAP; before its directory goes, so an agent dying in between can destroy it again. */
  async removeTap(record: VmRecord): Promise<void> {
    await this.#network?.removeTap(record.network?.tap ?? tapName(record.id));
  }

  /** After a VM with a link is gone: its stale rules match no interface and go with this sync. */
  async forget(record: VmRecord): Promise<void> {
    if (!record.network || !this.#network) return;
    await this.sync().catch((e) => {
      this.#log(`VM ${record.id} destroyed, but the firewall was not updated: ${(e as Error).message}`);
    });
  }
}
