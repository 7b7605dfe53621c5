/**
 * `warren`: one file per command under commands/<noun>/<verb>.ts, each loaded only when it
 * runs, so a command loads the SDK and nothing else (`npm run bench:cli` measures it). Every
 * command takes --json. Errors print their stable code and how to fix them. Exit codes: 0 ok,
 * 1 error, 2 usage error (INVALID_ARGUMENT); `tenant exec` and `vm run` exit with the
 * command's code.
 *
 * `up`, `control-plane`, `host-agent` and `rotate-master-key` run the daemons (or act on their files), which live in apps/platform: this
 * program runs that one's `warren-platform` by name (bin/warren does it directly when the
 * command comes first), so no daemon code is ever loaded here.
 */
import { spawn } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import * as nodeModule from 'node:module';
import { constants as osConstants } from 'node:os';
import { delimiter, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import cliPackage from '../package.json' with { type: 'json' };
import { isPlatformCommand, PLATFORM_COMMANDS } from './platform-commands.ts';

// V8 keeps the compiled code of the chunks this loads next (the SDK, zod) in the system's temp
// directory, so a second `warren` skips compiling them (Node 22.1+; a no-op elsewhere).
nodeModule.enableCompileCache?.();

interface Command {
  usage: string;
  /** `rest` is what follows `--`; `operands` the positionals after the command's words. */
  run: (args: never, rest: string[], operands: string[]) => Promise<number>;
}

const COMMANDS: Record<string, () => Promise<Command>> = {
  'tenant create': () => import('./commands/tenant/create.ts'),
  'tenant list': () => import('./commands/tenant/list.ts'),
  'tenant show': () => import('./commands/tenant/show.ts'),
  'tenant update': () => import('./commands/tenant/update.ts'),
  'tenant start': () => import('./commands/tenant/start.ts'),
  'tenant stop': () => import('./commands/tenant/stop.ts'),
  'tenant delete': () => import('./commands/tenant/delete.ts'),
  'tenant exec': () => import('./commands/tenant/exec.ts'),
  'tenant run': () => import('./commands/tenant/run.ts'),
  'tenant snapshot create': () => import('./commands/tenant/snapshot/create.ts'),
  'tenant snapshot list': () => import('./commands/tenant/snapshot/list.ts'),
  'tenant snapshot revert': () => import('./commands/tenant/snapshot/revert.ts'),
  'tenant snapshot delete': () => import('./commands/tenant/snapshot/delete.ts'),
  'tenant secret set': () => import('./commands/tenant/secret/set.ts'),
  'tenant secret list': () => import('./commands/tenant/secret/list.ts'),
  'tenant secret rm': () => import('./commands/tenant/secret/rm.ts'),
  'tenant session start': () => import('./commands/tenant/session/start.ts'),
  'tenant session list': () => import('./commands/tenant/session/list.ts'),
  'tenant session show': () => import('./commands/tenant/session/show.ts'),
  'tenant session changes': () => import('./commands/tenant/session/changes.ts'),
  'tenant session end': () => import('./commands/tenant/session/end.ts'),
  'tenant backup': () => import('./commands/tenant/backup/create.ts'),
  'tenant backups': () => import('./commands/tenant/backups.ts'),
  'tenant backup show': () => import('./commands/tenant/backup/show.ts'),
  'tenant backup delete': () => import('./commands/tenant/backup/delete.ts'),
  'tenant backup verify': () => import('./commands/tenant/backup/verify.ts'),
  'tenant backup drill': () => import('./commands/tenant/backup/drill.ts'),
  'tenant backup policy': () => import('./commands/tenant/backup/policy.ts'),
  'tenant restore': () => import('./commands/tenant/restore.ts'),
  'host list': () => import('./commands/host/list.ts'),
  'host show': () => import('./commands/host/show.ts'),
  'host drain': () => import('./commands/host/drain.ts'),
  'host remove': () => import('./commands/host/remove.ts'),
  'host adopt': () => import('./commands/host/adopt.ts'),
  'host rejoin': () => import('./commands/host/rejoin.ts'),
  'join-token create': () => import('./commands/join-token/create.ts'),
  'join-token list': () => import('./commands/join-token/list.ts'),
  'join-token revoke': () => import('./commands/join-token/revoke.ts'),
  'key create': () => import('./commands/key/create.ts'),
  'key list': () => import('./commands/key/list.ts'),
  'key revoke': () => import('./commands/key/revoke.ts'),
  audit: () => import('./commands/audit/list.ts'),
  events: () => import('./commands/events/follow.ts'),
  'image build': () => import('./commands/image/build.ts'),
  'image list': () => import('./commands/image/list.ts'),
  'vm run': () => import('./commands/vm/run.ts'),
  'skill push': () => import('./commands/skill/push.ts'),
  'skill list': () => import('./commands/skill/list.ts'),
  'skill channel set': () => import('./commands/skill/channel/set.ts'),
  'config template set': () => import('./commands/config/template/set.ts'),
  'config template list': () => import('./commands/config/template/list.ts'),
};

/** Options every command takes, whether or not its usage line shows them. */
const GLOBAL_OPTIONS = new Set(['json', 'help', 'verbose', 'api-url', 'token']);

async function help(): Promise<string> {
  const usages = [
    ...Object.values(PLATFORM_COMMANDS).slice(0, 1),
    ...(await Promise.all(Object.values(COMMANDS).map(async (load) => (await load()).usage))),
    ...Object.values(PLATFORM_COMMANDS).slice(1),
  ];
  return `usage:\n${usages.map((u) => `  ${u}`).join('\n')}
  warren --version

connection (API commands): --api-url URL and --token TOKEN, else WARREN_API_URL and WARREN_TOKEN,
else the control plane that \`warren up\` runs on this machine (${'$'}{WARREN_DATA_DIR:-/var/lib/warren}/control-plane/).
every command takes --json; docs/cli.md has an example of each.
`;
}

/** A usage error (INVALID_ARGUMENT, exit 2); the protocol is loaded only when one happens. */
async function usageError(message: string): Promise<Error> {
  const { WarrenError } = await import('@warren/protocol');
  return new WarrenError('INVALID_ARGUMENT', message);
}

/**
 * `warren-platform` in the node_modules/.bin of the checkout this CLI runs from (found upwards
 * from this file: the sources and the bundle sit at different depths), else on PATH.
 */
function findPlatform(): string | undefined {
  const candidates: string[] = [];
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let up = 0; up < 6; up++, dir = dirname(dir)) {
    candidates.push(join(dir, 'node_modules', '.bin', 'warren-platform'));
  }
  for (const dir of (process.env.PATH ?? '').split(delimiter)) candidates.push(join(dir, 'warren-platform'));
  return candidates.find((path) => {
    try {
      accessSync(path, constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}

/**
 * Runs a platform command in `warren-platform` with these same arguments. The child gets its
 * own process group, so a terminal's Ctrl-C reaches it once, through here, not twice.
 */
async function runPlatform(argv: string[]): Promise<number> {
  const platform = findPlatform();
  if (!platform) {
    throw await usageError(
      'this command is run by warren-platform (apps/platform), found neither in this checkout nor on PATH; run `npm install` in the Warren checkout, or `npm start`',
    );
  }
  const child = spawn(platform, argv, { stdio: 'inherit', detached: true });
  const forward = (signal: NodeJS.Signals) => child.kill(signal);
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(signal, forward);
  return new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', (code, signal) =>
      resolve(code ?? 128 + ((signal && osConstants.signals[signal]) || 0)),
    );
  });
}

async function main(argv: string[]): Promise<number> {
  const dash = argv.indexOf('--');
  const own = dash >= 0 ? argv.slice(0, dash) : argv;
  const rest = dash >= 0 ? argv.slice(dash + 1) : [];
  const json = own.includes('--json');
  // `warren skill push --version V` takes a value; everywhere else --version is the CLI's own.
  const versionTakesValue = own.includes('skill');
  try {
    const { values, positionals } = parseArgs({
      args: own,
      allowPositionals: true,
      strict: true,
      options: {
        json: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
        verbose: { type: 'boolean', short: 'v' },
        version: { type: versionTakesValue ? 'string' : 'boolean' },
        'api-url': { type: 'string' },
        token: { type: 'string' },
        force: { type: 'boolean' },
        profile: { type: 'string' },
        image: { type: 'string' },
        'image-profile': { type: 'string' },
        cpus: { type: 'string' },
        memory: { type: 'string' },
        disk: { type: 'string' },
        timeout: { type: 'string' },
        'no-wait': { type: 'boolean' },
        'idle-timeout': { type: 'string' },
        stdin: { type: 'boolean' },
        'with-secrets': { type: 'boolean' },
        state: { type: 'string' },
        host: { type: 'string' },
        tenant: { type: 'string' },
        follow: { type: 'boolean', short: 'f' },
        types: { type: 'string' },
        name: { type: 'string' },
        limit: { type: 'string' },
        undo: { type: 'boolean' },
        'single-use': { type: 'boolean' },
        secret: { type: 'string', multiple: true },
        'secret-env': { type: 'string', multiple: true },
        keep: { type: 'boolean' },
        quiet: { type: 'boolean', short: 'q' },
        'max-duration': { type: 'string' },
        'include-root': { type: 'boolean' },
        new: { type: 'string' },
        every: { type: 'string' },
        'keep-last': { type: 'string' },
        'keep-hourly': { type: 'string' },
        'keep-daily': { type: 'string' },
        'keep-weekly': { type: 'string' },
        'from-file': { type: 'string' },
        // warren-platform's, parsed here too so `warren rotate-master-key` reaches it.
        'new-key-file': { type: 'string' },
        skill: { type: 'string', multiple: true },
        config: { type: 'string', multiple: true },
        rollout: { type: 'string' },
        apply: { type: 'string' },
        versions: { type: 'boolean' },
      },
    });
    if (values.version === true && positionals.length === 0) {
      if (json) process.stdout.write(`${JSON.stringify({ version: cliPackage.version }, null, 2)}\n`);
      else process.stdout.write(`warren ${cliPackage.version}\n`);
      return 0;
    }
    if (isPlatformCommand(positionals[0])) return await runPlatform(argv);
    // The longest command name the words start with: `tenant snapshot create`, `tenant list`, `audit`.
    const words = [3, 2, 1].find((n) => COMMANDS[positionals.slice(0, n).join(' ')]) ?? 0;
    const load = COMMANDS[positionals.slice(0, words).join(' ')];
    if (!load) {
      process.stderr.write(await help());
      return values.help ? 0 : 2;
    }
    const command = await load();
    if (values.help) {
      process.stderr.write(`usage: ${command.usage}\n`);
      return 0;
    }
    const { onlyUsageOptions } = await import('./args.ts');
    onlyUsageOptions(values, command.usage, GLOBAL_OPTIONS);
    return await command.run(values as never, rest, positionals.slice(words));
  } catch (e) {
    const [{ reportError }, { fromParseError }] = await Promise.all([
      import('./output.ts'),
      import('./args.ts'),
    ]);
    return reportError(fromParseError(e), json);
  }
}

process.exitCode = await main(process.argv.slice(2));
