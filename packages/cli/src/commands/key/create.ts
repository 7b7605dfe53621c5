import { WarrenError } from '@warren/protocol';
import { noOperands } from '../../args.ts';
import { type ConnectionFlags, connect } from '../../connection.ts';

export const usage = 'warren key create --tenant NAME [--name LABEL] [--json]';

/**
 * stdout gets only the token (or, with --json, `{"key": {...}, "token": "..."}`), so it can
 * be captured; the API stores just its hash, so this is the one time it can be read.
 */
export async function run(
  args: ConnectionFlags & { tenant?: string; name?: string; json?: boolean },
  _rest: string[],
  operands: string[],
): Promise<number> {
  noOperands(operands, usage);
  if (!args.tenant) throw new WarrenError('INVALID_ARGUMENT', `--tenant is required; usage: ${usage}`);
  const created = await (await connect(args)).keys.create({
    tenant: args.tenant,
    ...(args.name ? { name: args.name } : {}),
  });
  if (args.json) {
    process.stdout.write(`${JSON.stringify(created, null, 2)}\n`);
    return 0;
  }
  process.stderr.write(
    `created key ${created.key.id} for tenant ${created.key.tenantName}; its token is shown only this once:\n`,
  );
  process.stdout.write(`${created.token}\n`);
  return 0;
}
