import { WarrenError } from '@warren/protocol';
import { intFlag, oneOperand } from '../../args.ts';
import { type ConnectionFlags, connect } from '../../connection.ts';
import { readSecrets } from '../../credentials.ts';
import { exitStatusOf } from '../../output.ts';
import { changeLines, SHOWN_CHANGES } from '../../sessions.ts';

export const usage =
  'warren tenant run NAME [--secret KEY=@FILE]... [--secret-env KEY=@FILE]... [--keep] [--quiet] [--timeout SEC] [--max-duration SEC] [--json] -- CMD...';

/**
 * A whole safe-YOLO run: a session with the secrets (a clean snapshot first), CMD with its
 * output streamed, the files it changed (on stderr, unless --quiet), then the session ended:
 * the VM reverted to the clean snapshot, or kept with --keep. Exits with CMD's exit code.
 * Ctrl-C, a lost connection or any other failure still ends the session, and always reverts.
 */
export async function run(
  args: ConnectionFlags & {
    secret?: string[];
    'secret-env'?: string[];
    keep?: boolean;
    quiet?: boolean;
    timeout?: string;
    'max-duration'?: string;
    json?: boolean;
  },
  command: string[],
  operands: string[],
): Promise<number> {
  const tenant = oneOperand(operands, 'tenant NAME', usage);
  if (command.length === 0)
    throw new WarrenError('INVALID_ARGUMENT', `give the command after \`--\`; usage: ${usage}`);
  const timeout = intFlag(args.timeout, '--timeout');
  if (timeout === 0) throw new WarrenError('INVALID_ARGUMENT', '--timeout must be at least 1 second');
  const maxDuration = intFlag(args['max-duration'], '--max-duration');
  const credentials = await readSecrets(args.secret, args['secret-env']);
  const warren = await connect(args);
  const json = args.json ?? false;
  const say = (m: string) => {
    if (!args.quiet && !json) process.stderr.write(`warren: ${m}\n`);
  };
  const line = (key: string, b: Buffer) =>
    process.stdout.write(`${JSON.stringify({ [key]: b.toString('base64') })}\n`);

  // Every Ctrl-C (not only the first) aborts the command and leaves this process alive, so
  // the session is ended however often it is pressed.
  const abort = new AbortController();
  let session = '';
  const onSignal = () => {
    if (!abort.signal.aborted && session)
      process.stderr.write(`warren: interrupted; reverting session ${session}\n`);
    abort.abort();
  };
  const signals = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;
  for (const s of signals) process.on(s, onSignal);
  try {
    const result = await warren.sessions.run(
      tenant,
      {
        credentials,
        ...(maxDuration === undefined ? {} : { maxDurationMs: maxDuration * 1000 }),
        exec: { argv: command, ...(timeout === undefined ? {} : { timeoutMs: timeout * 1000 }) },
        keep: args.keep ?? false,
      },
      {
        onSession: (s) => {
          session = s.id;
          say(`session ${s.id} started on ${tenant} (clean snapshot ${s.snapshot})`);
        },
        onStdout: (b) => (json ? line('stdout', b) : process.stdout.write(b)),
        onStderr: (b) => (json ? line('stderr', b) : process.stderr.write(b)),
        onChanges: (list) => {
          const n = list.changes.length;
          say(
            `session ${session} changed ${n}${list.truncated ? '+' : ''} file${n === 1 ? '' : 's'}${n ? ':' : ''}`,
          );
          if (!args.quiet && !json) {
            for (const l of changeLines(list, SHOWN_CHANGES)) process.stderr.write(`  ${l}\n`);
          }
        },
        signal: abort.signal,
      },
    );
    if (json) process.stdout.write(`${JSON.stringify(result)}\n`);
    if (result.exit.timedOut) process.stderr.write(`warren: command timed out after ${timeout} s\n`);
    say(`session ${result.session.id} ended: ${result.session.outcome ?? result.session.state}`);
    return exitStatusOf(result.exit);
  } catch (e) {
    if (abort.signal.aborted && session) {
      say(`session ${session} ended: reverted`);
      return 130;
    }
    throw e;
  } finally {
    for (const s of signals) process.off(s, onSignal);
  }
}
