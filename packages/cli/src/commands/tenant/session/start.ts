import { intFlag, oneOperand } from '../../../args.ts';
import { type ConnectionFlags, connect } from '../../../connection.ts';
import { readSecrets } from '../../../credentials.ts';
import { emit } from '../../../output.ts';

export const usage =
  'warren tenant session start NAME [--secret KEY=@FILE]... [--secret-env KEY=@FILE]... [--max-duration SEC] [--json]';

/** Prints the session id on stdout; end it with `warren tenant session end`. */
export async function run(
  args: ConnectionFlags & {
    secret?: string[];
    'secret-env'?: string[];
    'max-duration'?: string;
    json?: boolean;
  },
  _rest: string[],
  operands: string[],
): Promise<number> {
  const tenant = oneOperand(operands, 'tenant NAME', usage);
  const seconds = intFlag(args['max-duration'], '--max-duration');
  const credentials = await readSecrets(args.secret, args['secret-env']);
  const session = await (await connect(args)).sessions.start(tenant, {
    ...credentials,
    ...(seconds === undefined ? {} : { maxDurationMs: seconds * 1000 }),
  });
  emit(args.json ?? false, session, () => {
    process.stderr.write(
      `session ${session.id} on ${tenant}: clean snapshot ${session.snapshot}, until ${session.expiresAt}\n`,
    );
    process.stdout.write(`${session.id}\n`);
  });
  return 0;
}
