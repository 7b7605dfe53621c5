import { parseOrThrow, TenantState } from '@warren/protocol';
import { noOperands } from '../../args.ts';
import { type ConnectionFlags, connect } from '../../connection.ts';
import { emit, mib, table } from '../../output.ts';

export const usage = 'warren tenant list [--state STATE] [--host HOST] [--versions] [--json]';

export async function run(
  args: ConnectionFlags & { state?: string; host?: string; versions?: boolean; json?: boolean },
  _rest: string[],
  operands: string[],
): Promise<number> {
  noOperands(operands, usage);
  if (args.versions) return listVersions(args);
  const state = args.state === undefined ? undefined : parseOrThrow(TenantState, args.state);
  const warren = await connect(args);
  const tenants = await warren.tenants.list({
    ...(state ? { state } : {}),
    ...(args.host ? { host: args.host } : {}),
  });
  emit(args.json ?? false, { tenants }, () =>
    table(
      tenants.map((t) => ({
        name: t.name,
        // A host that stopped heartbeating leaves only the last state it reported (a lost
        // tenant has no host at all).
        state: t.hostHealthy || t.state === 'lost' ? t.state : `${t.state} (host down)`,
        desired: t.desiredState,
        host: t.hostId ?? '-',
        vcpus: t.vcpus,
        memory: mib(t.memoryMiB),
        disk: mib(t.diskMiB),
      })),
      ['name', 'state', 'desired', 'host', 'vcpus', 'memory', 'disk'],
    ),
  );
  return 0;
}

/** `--versions` (admin): what each tenant runs, so drift across tenants shows. */
async function listVersions(args: ConnectionFlags & { json?: boolean }): Promise<number> {
  const tenants = await (await connect(args)).skills.allVersions();
  emit(args.json ?? false, { tenants }, () =>
    table(
      tenants.map((v) => ({
        name: v.name,
        image: v.image.slice(0, 19),
        skills: v.skills.map((s) => `${s.name}@${s.version ?? '?'}`).join(',') || '-',
        config: v.config.digest ?? '-',
      })),
      ['name', 'image', 'skills', 'config'],
    ),
  );
  return 0;
}
