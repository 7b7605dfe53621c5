/**
 * `warren-platform`: the commands that run Warren's daemons on this machine, kept out of the
 * `warren` CLI so the CLI loads no daemon code (`warren up` and the two below reach here
 * through the CLI, which runs this program by name). `up` supervises both daemons; the other
 * two run one daemon in the foreground, for machines that run only one of them.
 */
import { parseArgs } from 'node:util';
import { reportError } from '@warren/cli/output';
import { isPlatformCommand, PLATFORM_COMMANDS, type PlatformCommand } from '@warren/cli/platform-commands';
import { WarrenError } from '@warren/protocol';
import * as up from './up.ts';

type Run = (args: never, operands: string[]) => Promise<number>;

/** Each runs until its daemon stops the process (SIGTERM, SIGINT). */
const RUN: Record<PlatformCommand, Run> = {
  up: (args, operands) => up.run(args, [], operands),
  'control-plane': async () => {
    const { runControlPlane } = await import('@warren/control-plane/daemon');
    await runControlPlane();
    return new Promise<number>(() => {});
  },
  'host-agent': async () => {
    const { runHostAgent } = await import('@warren/host-agent/daemon');
    await runHostAgent();
    return new Promise<number>(() => {});
  },
};

const usages = Object.values(PLATFORM_COMMANDS);

async function main(argv: string[]): Promise<number> {
  const json = argv.includes('--json');
  try {
    const { values, positionals } = parseArgs({
      args: argv,
      allowPositionals: true,
      strict: true,
      options: {
        json: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
        verbose: { type: 'boolean', short: 'v' },
        profile: { type: 'string' },
      },
    });
    const word = positionals[0];
    if (!isPlatformCommand(word)) {
      process.stderr.write(`usage:\n${usages.map((u) => `  ${u}`).join('\n')}\n`);
      return values.help ? 0 : 2;
    }
    const usage = PLATFORM_COMMANDS[word];
    if (values.help) {
      process.stderr.write(`usage: ${usage}\n`);
      return 0;
    }
    for (const option of Object.keys(values)) {
      if (!['json', 'verbose'].includes(option) && !usage.includes(`--${option}`)) {
        throw new WarrenError('INVALID_ARGUMENT', `--${option} is not an option here; usage: ${usage}`);
      }
    }
    return await RUN[word](values as never, positionals.slice(1));
  } catch (e) {
    const code = (e as { code?: unknown })?.code;
    const err =
      typeof code === 'string' && code.startsWith('ERR_PARSE_ARGS')
        ? new WarrenError('INVALID_ARGUMENT', `${(e as Error).message}; see \`warren --help\``)
        : e;
    return reportError(err, json);
  }
}

if (import.meta.main) process.exitCode = await main(process.argv.slice(2));
