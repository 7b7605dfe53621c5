/**
 * `warren-platform`: the commands that run Warren's daemons on this machine, kept out of the
 * `warren` CLI so the CLI loads no daemon code (`warren up` and the two below reach here
 * through the CLI, which runs this program by name). `up` supervises both daemons; the other
 * two run one daemon in the foreground, for machines that run only one of them.
 */
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { fromParseError, onlyUsageOptions } from '@warren/cli/args';
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
  'rotate-master-key': async (args: { 'new-key-file'?: string; json?: boolean }, operands) => {
    const usage = PLATFORM_COMMANDS['rotate-master-key'];
    if (!args['new-key-file'] || operands.length > 0)
      throw new WarrenError('INVALID_ARGUMENT', `usage: ${usage}`);
    const { loadConfig, rotateMasterKeyFiles } = await import('@warren/control-plane');
    const result = await rotateMasterKeyFiles(loadConfig(), resolve(args['new-key-file']), (m) =>
      process.stderr.write(`${m}\n`),
    );
    if (args.json) process.stdout.write(`${JSON.stringify(result)}\n`);
    return 0;
  },
};

const usages = Object.values(PLATFORM_COMMANDS);
const GLOBAL_OPTIONS = new Set(['json', 'verbose']);

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
        'new-key-file': { type: 'string' },
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
    onlyUsageOptions(values, usage, GLOBAL_OPTIONS);
    return await RUN[word](values as never, positionals.slice(1));
  } catch (e) {
    return reportError(fromParseError(e), json);
  }
}

if (import.meta.main) process.exitCode = await main(process.argv.slice(2));
