/**
 * `warren`: one file per command under commands/<noun>/<verb>.ts. Every command takes
 * --json. Errors print their stable code and how to fix them.
 */
import { parseArgs } from 'node:util';
import * as imageBuild from './commands/image/build.ts';
import * as imageList from './commands/image/list.ts';
import * as vmRun from './commands/vm/run.ts';
import { reportError } from './output.ts';

const COMMANDS: Record<string, { usage: string; run: (args: never, rest: string[]) => Promise<number> }> = {
  'image build': imageBuild,
  'image list': imageList,
  'vm run': vmRun,
  'host-agent': {
    usage: 'warren host-agent   (runs the host agent daemon in the foreground)',
    run: async () => {
      const { runHostAgent } = await import('@warren/host-agent/daemon');
      await runHostAgent();
      return new Promise<number>(() => {});
    },
  },
};

function help(): string {
  return `usage:\n${Object.values(COMMANDS)
    .map((c) => `  ${c.usage}`)
    .join('\n')}\n`;
}

async function main(argv: string[]): Promise<number> {
  const dash = argv.indexOf('--');
  const own = dash >= 0 ? argv.slice(0, dash) : argv;
  const rest = dash >= 0 ? argv.slice(dash + 1) : [];
  const json = own.includes('--json');
  try {
    const { values, positionals } = parseArgs({
      args: own,
      allowPositionals: true,
      strict: true,
      options: {
        json: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
        verbose: { type: 'boolean', short: 'v' },
        force: { type: 'boolean' },
        profile: { type: 'string' },
        image: { type: 'string' },
        cpus: { type: 'string' },
        memory: { type: 'string' },
        disk: { type: 'string' },
        timeout: { type: 'string' },
      },
    });
    const key = positionals.slice(0, 2).join(' ');
    const command = COMMANDS[key] ?? COMMANDS[positionals[0] ?? ''];
    if (values.help || !command) {
      process.stderr.write(help());
      return values.help ? 0 : 2;
    }
    return await command.run(values as never, rest);
  } catch (e) {
    return reportError(e, json);
  }
}

process.exitCode = await main(process.argv.slice(2));
