/**
 * `warren`: one file per command under commands/<noun>/<verb>.ts. Every command takes
 * --json. Errors print their stable code and how to fix them. Exit codes: 0 ok, 1 error,
 * 2 usage error (INVALID_ARGUMENT); `tenant exec` and `vm run` exit with the command's code.
 */
import { parseArgs } from 'node:util';
import { WarrenError } from '@warren/protocol';
import * as auditList from './commands/audit/list.ts';
import * as hostDrain from './commands/host/drain.ts';
import * as hostList from './commands/host/list.ts';
import * as hostRejoin from './commands/host/rejoin.ts';
import * as imageBuild from './commands/image/build.ts';
import * as imageList from './commands/image/list.ts';
import * as joinTokenCreate from './commands/join-token/create.ts';
import * as joinTokenList from './commands/join-token/list.ts';
import * as joinTokenRevoke from './commands/join-token/revoke.ts';
import * as keyCreate from './commands/key/create.ts';
import * as keyList from './commands/key/list.ts';
import * as keyRevoke from './commands/key/revoke.ts';
import * as platformUp from './commands/platform/up.ts';
import * as tenantCreate from './commands/tenant/create.ts';
import * as tenantDelete from './commands/tenant/delete.ts';
import * as tenantExec from './commands/tenant/exec.ts';
import * as tenantList from './commands/tenant/list.ts';
import * as tenantShow from './commands/tenant/show.ts';
import * as tenantStart from './commands/tenant/start.ts';
import * as tenantStop from './commands/tenant/stop.ts';
import * as vmRun from './commands/vm/run.ts';
import { reportError } from './output.ts';

interface Command {
  usage: string;
  /** `rest` is what follows `--`; `operands` the positionals after the command's words. */
  run: (args: never, rest: string[], operands: string[]) => Promise<number>;
}

const COMMANDS: Record<string, Command> = {
  up: platformUp,
  'tenant create': tenantCreate,
  'tenant list': tenantList,
  'tenant show': tenantShow,
  'tenant start': tenantStart,
  'tenant stop': tenantStop,
  'tenant delete': tenantDelete,
  'tenant exec': tenantExec,
  'host list': hostList,
  'host drain': hostDrain,
  'host rejoin': hostRejoin,
  'join-token create': joinTokenCreate,
  'join-token list': joinTokenList,
  'join-token revoke': joinTokenRevoke,
  'key create': keyCreate,
  'key list': keyList,
  'key revoke': keyRevoke,
  audit: auditList,
  'image build': imageBuild,
  'image list': imageList,
  'vm run': vmRun,
  'control-plane': {
    usage: 'warren control-plane   (runs the control plane daemon in the foreground)',
    run: async () => {
      const { runControlPlane } = await import('@warren/control-plane/daemon');
      await runControlPlane();
      return new Promise<number>(() => {});
    },
  },
  'host-agent': {
    usage: 'warren host-agent   (runs the host agent daemon in the foreground)',
    run: async () => {
      const { runHostAgent } = await import('@warren/host-agent/daemon');
      await runHostAgent();
      return new Promise<number>(() => {});
    },
  },
};

/** Options every command takes, whether or not its usage line shows them. */
const GLOBAL_OPTIONS = new Set(['json', 'help', 'verbose', 'api-url', 'token']);

function help(): string {
  return `usage:\n${Object.values(COMMANDS)
    .map((c) => `  ${c.usage}`)
    .join('\n')}

connection (API commands): --api-url URL and --token TOKEN, else WARREN_API_URL and WARREN_TOKEN,
else the control plane that \`warren up\` runs on this machine (${'$'}{WARREN_DATA_DIR:-/var/lib/warren}/control-plane/).
every command takes --json; docs/cli.md has an example of each.
`;
}

/** Turns node's parseArgs errors (unknown option, missing value) into usage errors. */
function usageError(e: unknown): unknown {
  const code = (e as { code?: unknown })?.code;
  if (typeof code === 'string' && code.startsWith('ERR_PARSE_ARGS')) {
    return new WarrenError('INVALID_ARGUMENT', `${(e as Error).message}; see \`warren --help\``);
  }
  return e;
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
        'api-url': { type: 'string' },
        token: { type: 'string' },
        force: { type: 'boolean' },
        profile: { type: 'string' },
        image: { type: 'string' },
        cpus: { type: 'string' },
        memory: { type: 'string' },
        disk: { type: 'string' },
        timeout: { type: 'string' },
        'no-wait': { type: 'boolean' },
        stdin: { type: 'boolean' },
        state: { type: 'string' },
        host: { type: 'string' },
        tenant: { type: 'string' },
        name: { type: 'string' },
        limit: { type: 'string' },
        undo: { type: 'boolean' },
        'single-use': { type: 'boolean' },
      },
    });
    const two = positionals.slice(0, 2).join(' ');
    const words = COMMANDS[two] ? 2 : 1;
    const command = COMMANDS[two] ?? COMMANDS[positionals[0] ?? ''];
    if (!command) {
      process.stderr.write(help());
      return values.help ? 0 : 2;
    }
    if (values.help) {
      process.stderr.write(`usage: ${command.usage}\n`);
      return 0;
    }
    // The usage line is the command's option list: one that is not in it is a mistake
    // (e.g. --undo on `tenant stop`), not something to ignore silently.
    for (const option of Object.keys(values)) {
      if (!GLOBAL_OPTIONS.has(option) && !command.usage.includes(`--${option}`)) {
        throw new WarrenError(
          'INVALID_ARGUMENT',
          `--${option} is not an option here; usage: ${command.usage}`,
        );
      }
    }
    return await command.run(values as never, rest, positionals.slice(words));
  } catch (e) {
    return reportError(usageError(e), json);
  }
}

process.exitCode = await main(process.argv.slice(2));
