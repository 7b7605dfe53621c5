import type { Tenant } from '@warren/protocol';
import { oneOperand } from '../../args.ts';
import { type ConnectionFlags, connect } from '../../connection.ts';
import { emit } from '../../output.ts';

export const usage = 'warren tenant show NAME [--json]';

export async function run(
  args: ConnectionFlags & { json?: boolean },
  _rest: string[],
  operands: string[],
): Promise<number> {
  const ref = oneOperand(operands, 'tenant NAME or id', usage);
  const warren = await connect(args);
  const t = await warren.tenants.get(ref);
  const versions = await warren.skills.versions(t.id);
  emit(args.json ?? false, { ...t, versions }, () => {
    const rows: [string, string][] = [
      ['name', t.name],
      ['id', t.id],
      [
        'state',
        `${t.state} (desired: ${t.desiredState})${t.hostHealthy || t.state === 'lost' ? '' : ', last known: its host is down'}`,
      ],
      ['host', t.hostId ?? '-'],
      ['image', t.imageId],
      [
        'skills',
        versions.skills.length === 0
          ? '-'
          : versions.skills
              .map((s) => `${s.ref} -> ${s.version ? `${s.name}@${s.version} (${s.digest})` : 'unresolved'}`)
              .join(', '),
      ],
      [
        'config',
        versions.config.digest === null
          ? '-'
          : `${versions.config.digest} (templates: ${versions.config.templates.map((x) => `${x.file} v${x.version}`).join(', ') || '-'}; tenant values v${versions.config.valuesVersion})`,
      ],
      ['resources', `${t.vcpus} vCPU, ${t.memoryMiB} MiB memory, ${t.diskMiB} MiB disk`],
      ['quota', `${t.quota.vcpus} vCPU, ${t.quota.memoryMiB} MiB memory, ${t.quota.diskMiB} MiB disk`],
      ['last error', lastError(t)],
      [
        'idle',
        `suspends after ${t.idleTimeout.effective}${t.idleTimeout.setting === null ? ' (platform default)' : ''}`,
      ],
      ['created', t.createdAt],
      ['updated', t.updatedAt],
    ];
    for (const [k, v] of rows) process.stdout.write(`${`${k}:`.padEnd(12)}${v}\n`);
  });
  return 0;
}

/**
 * The last error with its start attempts: "DISK_FULL: ... (3 attempts, next at …)", or, once
 * the host gave up, how to try again.
 */
function lastError(t: Tenant): string {
  if (!t.lastError) return '-';
  const base = `${t.lastError.code}: ${t.lastError.message}`;
  if (!t.attempts || t.attempts.count === 0) return base;
  const n = `${t.attempts.count} attempt${t.attempts.count === 1 ? '' : 's'}`;
  return t.attempts.nextAttemptAt
    ? `${base} (${n}, next at ${t.attempts.nextAttemptAt})`
    : `${base} (${n}; gave up, run \`warren tenant start ${t.name}\` to try again)`;
}
