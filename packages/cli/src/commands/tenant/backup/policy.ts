import { intFlag, oneOperand } from '../../../args.ts';
import { everyMinutes } from '../../../backups.ts';
import { type ConnectionFlags, connect } from '../../../connection.ts';
import { emit } from '../../../output.ts';

export const usage =
  'warren tenant backup policy NAME [--every 30m|1h|1d|off] [--keep-last N] [--keep-hourly N] [--keep-daily N] [--keep-weekly N] [--json]';

type Flags = ConnectionFlags & {
  every?: string;
  'keep-last'?: string;
  'keep-hourly'?: string;
  'keep-daily'?: string;
  'keep-weekly'?: string;
  json?: boolean;
};

/** Without flags shows the policy; with some, changes those and keeps the rest. */
export async function run(args: Flags, _rest: string[], operands: string[]): Promise<number> {
  const tenant = oneOperand(operands, 'tenant NAME', usage);
  const warren = await connect(args);
  let policy = await warren.backups.policy(tenant);
  const changes = {
    ...(args.every === undefined ? {} : { everyMinutes: everyMinutes(args.every) }),
    ...optional('keepLast', intFlag(args['keep-last'], '--keep-last')),
    ...optional('keepHourly', intFlag(args['keep-hourly'], '--keep-hourly')),
    ...optional('keepDaily', intFlag(args['keep-daily'], '--keep-daily')),
    ...optional('keepWeekly', intFlag(args['keep-weekly'], '--keep-weekly')),
  };
  if (Object.keys(changes).length > 0)
    policy = await warren.backups.setPolicy(tenant, { ...policy, ...changes });
  emit(args.json ?? false, policy, () => {
    const every =
      policy.everyMinutes === null ? 'never (manual backups only)' : `every ${policy.everyMinutes} min`;
    process.stdout.write(
      `backups of ${tenant}: ${every}; keep last ${policy.keepLast}, hourly ${policy.keepHourly}, daily ${policy.keepDaily}, weekly ${policy.keepWeekly}\n`,
    );
  });
  return 0;
}

function optional<K extends string>(key: K, value: number | undefined): Partial<Record<K, number>> {
  return value === undefined ? {} : ({ [key]: value } as Record<K, number>);
}
