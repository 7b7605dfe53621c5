/**
 * One definition of tenant VM sizes (packages/protocol RESOURCE_LIMITS): every size the control
 * plane accepts, the host agent's create schema accepts too, and both refuse the same
 * out-of-bounds ones. Before, the host refused 65+ vCPUs and more than 256 GiB of memory that
 * the control plane had placed, so such a tenant failed on its host.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { loadConfig as loadControlPlaneConfig } from '@warren/control-plane';
import { CreateVmRequest } from '@warren/host-agent';
import { CreateTenantRequest, RESOURCE_LIMITS, type ResourceKind } from '@warren/protocol';

const IMAGE = `sha256:${'a'.repeat(64)}`;
const KINDS = Object.keys(RESOURCE_LIMITS) as ResourceKind[];
const ENV_OF: Record<ResourceKind, string> = { vcpus: 'VCPUS', memoryMiB: 'MEMORY_MIB', diskMiB: 'DISK_MIB' };

/** The tenant request and the host's VM request for the same size (the host says `cpus`). */
function both(size: Record<ResourceKind, number>) {
  return {
    tenant: CreateTenantRequest.safeParse({ name: 'sized', ...size }),
    vm: CreateVmRequest.safeParse({
      image: IMAGE,
      cpus: size.vcpus,
      memoryMiB: size.memoryMiB,
      diskMiB: size.diskMiB,
    }),
  };
}

const defaults = Object.fromEntries(KINDS.map((k) => [k, RESOURCE_LIMITS[k].default])) as Record<
  ResourceKind,
  number
>;

test('every bound and default the control plane accepts, the host agent accepts', () => {
  for (const kind of KINDS) {
    const { min, max, default: dflt } = RESOURCE_LIMITS[kind];
    for (const value of [min, dflt, max]) {
      const { tenant, vm } = both({ ...defaults, [kind]: value });
      assert.ok(tenant.success, `control plane refuses ${kind}=${value}`);
      assert.ok(vm.success, `host agent refuses ${kind}=${value}: ${vm.error?.message}`);
    }
    // The platform's settings (default, quota, maximum) may be set to the bounds too.
    for (const value of [min, max]) {
      const env = Object.fromEntries(
        ['DEFAULT', 'QUOTA', 'MAX'].map((s) => [`WARREN_${s}_${ENV_OF[kind]}`, String(value)]),
      );
      assert.doesNotThrow(() => loadControlPlaneConfig(env), `${kind}=${value} as a setting`);
    }
  }
  const all = both({
    vcpus: RESOURCE_LIMITS.vcpus.max,
    memoryMiB: RESOURCE_LIMITS.memoryMiB.max,
    diskMiB: RESOURCE_LIMITS.diskMiB.max,
  });
  assert.ok(all.tenant.success && all.vm.success);
});

test('a size out of bounds is refused by both, and by the settings', () => {
  for (const kind of KINDS) {
    const { min, max } = RESOURCE_LIMITS[kind];
    for (const value of [min - 1, max + 1, min + 0.5]) {
      const { tenant, vm } = both({ ...defaults, [kind]: value });
      assert.equal(tenant.success, false, `control plane accepts ${kind}=${value}`);
      assert.equal(vm.success, false, `host agent accepts ${kind}=${value}`);
    }
    assert.throws(() => loadControlPlaneConfig({ [`WARREN_MAX_${ENV_OF[kind]}`]: String(max + 1) }));
  }
});

test('a VM created without sizes gets what a tenant created without them gets', () => {
  const vm = CreateVmRequest.parse({ image: IMAGE });
  const config = loadControlPlaneConfig({});
  assert.deepEqual(
    { vcpus: vm.cpus, memoryMiB: vm.memoryMiB, diskMiB: vm.diskMiB },
    { vcpus: config.defaultVcpus, memoryMiB: config.defaultMemoryMiB, diskMiB: config.defaultDiskMiB },
  );
});
