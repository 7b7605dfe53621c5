import { WarrenError } from '@warren/protocol';
import { intFlag, oneOperand } from '../../args.ts';
import { type ConnectionFlags, connect } from '../../connection.ts';
import { exitStatusOf, interruptible } from '../../output.ts';

export const usage = 'warren tenant exec NAME [--timeout SEC] [--stdin] [--with-secrets] [--json] -- CMD...';

/** The API takes stdin as at most 8 MiB of base64 in the request. */
const MAX_STDIN_BYTES = 6 * 1024 * 1024;

/**
 * Runs CMD in the tenant's VM with its output streamed, and exits with its exit code
 * (128+n when signal n ended it). --json writes the API's NDJSON lines to stdout instead.
 * --with-secrets puts the tenant's secrets in CMD's environment as well as in their files.
 */
export async function run(
  args: ConnectionFlags & { timeout?: string; stdin?: boolean; 'with-secrets'?: boolean; json?: boolean },
  command: string[],
  operands: string[],
): Promise<number> {
  const name = oneOperand(operands, 'tenant NAME', usage);
  if (command.length === 0)
    throw new WarrenError('INVALID_ARGUMENT', `give the command after \`--\`; usage: ${usage}`);
  const timeout = intFlag(args.timeout, '--timeout');
  if (timeout === 0) throw new WarrenError('INVALID_ARGUMENT', '--timeout must be at least 1 second');
  const warren = await connect(args);
  const stdin = args.stdin ? await readStdin() : undefined;
  const line = (key: string, b: Buffer) =>
    process.stdout.write(`${JSON.stringify({ [key]: b.toString('base64') })}\n`);

  const interrupt = interruptible();
  try {
    const exit = await warren.tenants.exec(
      name,
      {
        argv: command,
        ...(timeout === undefined ? {} : { timeoutMs: timeout * 1000 }),
        ...(stdin === undefined ? {} : { stdin }),
        ...(args['with-secrets'] ? { secretEnv: true } : {}),
      },
      {
        onStdout: (b) => (args.json ? line('stdout', b) : process.stdout.write(b)),
        onStderr: (b) => (args.json ? line('stderr', b) : process.stderr.write(b)),
        signal: interrupt.signal,
      },
    );
    if (args.json) process.stdout.write(`${JSON.stringify({ exit })}\n`);
    if (exit.timedOut) process.stderr.write(`warren: command timed out after ${timeout} s\n`);
    return exitStatusOf(exit);
  } catch (e) {
    if (interrupt.interrupted()) return 130;
    throw e;
  } finally {
    interrupt.dispose();
  }
}

async function readStdin(): Promise<Buffer> {
  const parts: Buffer[] = [];
  let size = 0;
  for await (const chunk of process.stdin) {
    size += (chunk as Buffer).length;
    if (size > MAX_STDIN_BYTES) {
      throw new WarrenError(
        'PAYLOAD_TOO_LARGE',
        `--stdin takes at most ${MAX_STDIN_BYTES / 1048576} MiB; write larger input to a file in the tenant first`,
      );
    }
    parts.push(chunk as Buffer);
  }
  return Buffer.concat(parts);
}
