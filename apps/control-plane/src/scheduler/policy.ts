import type { Resources } from '@warren/protocol';

/** What the scheduler needs to know of a host. */
export interface HostCandidate {
  id: string;
  capacity: Resources;
  allocated: Resources;
}

/**
 * Placement policy: spread. Among the hosts that fit, pick the one whose busiest resource
 * (vCPU, memory or disk, as a share of its capacity) would be least loaded after placement,
 * ties broken by the lower allocated memory share, then by id for determinism.
 *
 * Why spread rather than bin-pack: each tenant runs an autonomous agent whose load we cannot
 * predict, so neighbours on one host compete for CPU and I/O; spreading keeps that noise and
 * the blast radius of one host failure small. Bin-packing would keep whole hosts free for
 * large tenants and for scale-down; revisit when hosts are elastic.
 */
export function fits(h: HostCandidate, r: Resources): boolean {
  return (
    h.allocated.vcpus + r.vcpus <= h.capacity.vcpus &&
    h.allocated.memoryMiB + r.memoryMiB <= h.capacity.memoryMiB &&
    h.allocated.diskMiB + r.diskMiB <= h.capacity.diskMiB
  );
}

/** Lower is better. */
export function score(h: HostCandidate, r: Resources): [number, number] {
  const share = (a: number, add: number, cap: number) => (cap > 0 ? (a + add) / cap : 1);
  const cpu = share(h.allocated.vcpus, r.vcpus, h.capacity.vcpus);
  const mem = share(h.allocated.memoryMiB, r.memoryMiB, h.capacity.memoryMiB);
  const disk = share(h.allocated.diskMiB, r.diskMiB, h.capacity.diskMiB);
  return [Math.max(cpu, mem, disk), mem];
}

/** Candidates that fit, best first. */
export function rank<H extends HostCandidate>(hosts: H[], r: Resources): H[] {
  const scored = hosts.filter((h) => fits(h, r)).map((h) => ({ h, s: score(h, r) }));
  scored.sort(
    (a, b) => a.s[0] - b.s[0] || a.s[1] - b.s[1] || (a.h.id < b.h.id ? -1 : a.h.id > b.h.id ? 1 : 0),
  );
  return scored.map((x) => x.h);
}
