import { type ChildProcess, spawn } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { noOperands } from '@warren/cli/args';
import { type LocalFiles, localFiles, readLocalUrl } from '@warren/cli/connection';
import { emit } from '@warren/cli/output';
import { PLATFORM_COMMANDS } from '@warren/cli/platform-commands';
import { buildHostImage, imagesDirOf, loadConfig } from '@warren/host-agent';
import { ImageStore } from '@warren/images';
import { Profile, parseOrThrow } from '@warren/protocol';
import { WarrenClient } from '@warren/sdk';

const usage = PLATFORM_COMMANDS.up;

/** The daemons' entry points, each of which runs its daemon when it is the main module. */
const DAEMONS = {
  'control-plane': fileURLToPath(import.meta.resolve('@warren/control-plane/daemon')),
  'host-agent': fileURLToPath(import.meta.resolve('@warren/host-agent/daemon')),
} as const;
/** A child that lived this long is considered to have worked; its crash count starts over. */
const HEALTHY_RUN_MS = 30_000;
/** Quick crashes in a row after which restarting is pointless (bad config, port taken, no KVM). */
const MAX_QUICK_CRASHES = 5;
const STOP_GRACE_MS = 30_000;

function log(message: string) {
  process.stderr.write(`warren: ${message}\n`);
}

/** One child process (the control plane or the host agent), restarted when it dies. */
class Child {
  readonly name: keyof typeof DAEMONS;
  readonly #env: NodeJS.ProcessEnv;
  readonly #onGiveUp: () => void;
  #proc: ChildProcess | undefined;
  #startedAt = 0;
  #quickCrashes = 0;
  #restartTimer: NodeJS.Timeout | undefined;
  #stopping = false;
  #exited: Promise<void> = Promise.resolve();

  constructor(name: keyof typeof DAEMONS, env: NodeJS.ProcessEnv, onGiveUp: () => void) {
    this.name = name;
    this.#env = env;
    this.#onGiveUp = onGiveUp;
  }

  start(): void {
    this.#startedAt = Date.now();
    const proc = spawn(process.execPath, [DAEMONS[this.name]], {
      env: this.#env,
      stdio: ['ignore', 'inherit', 'inherit'],
    });
    this.#proc = proc;
    this.#exited = new Promise((resolve) => {
      proc.once('error', (e) => {
        log(`cannot start ${this.name}: ${e.message}`);
        resolve();
        this.#onGiveUp();
      });
      proc.once('exit', (code, signal) => {
        this.#proc = undefined;
        resolve();
        if (!this.#stopping) this.#crashed(code, signal);
      });
    });
  }

  #crashed(code: number | null, signal: NodeJS.Signals | null): void {
    const how = signal ? `was killed by ${signal}` : `exited with code ${code}`;
    this.#quickCrashes = Date.now() - this.#startedAt < HEALTHY_RUN_MS ? this.#quickCrashes + 1 : 1;
    if (this.#quickCrashes >= MAX_QUICK_CRASHES) {
      log(
        `${this.name} ${how}, ${MAX_QUICK_CRASHES} times in a row right after starting; giving up (its log is above)`,
      );
      this.#onGiveUp();
      return;
    }
    const delay = Math.min(30_000, 1000 * 2 ** (this.#quickCrashes - 1));
    log(`${this.name} ${how}; restarting it in ${delay / 1000} s`);
    this.#restartTimer = setTimeout(() => this.start(), delay);
  }

  /** SIGTERM (SIGKILL with `force`); resolves once the process is gone. */
  stop(force = false): Promise<void> {
    this.#stopping = true;
    clearTimeout(this.#restartTimer);
    this.#proc?.kill(force ? 'SIGKILL' : 'SIGTERM');
    return this.#exited;
  }
}

/**
 * Builds the image of `profile` into this host's store unless its recipe was built already,
 * before any daemon runs (so no host agent holds the store yet), printing each step.
 */
async function prepareImage(profile: Profile): Promise<void> {
  const config = loadConfig();
  const store = new ImageStore(imagesDirOf(config));
  let lastStep = 0;
  const result = await buildHostImage(config, store, {
    profile,
    force: false,
    onProgress: (p) => {
      if (p.step !== lastStep) {
        lastStep = p.step;
        log(`[${p.step}/${p.steps}] ${p.title}`);
      } else if (p.detail) process.stderr.write(`      ${p.detail.slice(0, 160)}\n`);
    },
  });
  log(`default image (${profile}) ${result.imageId}${result.cached ? ' (cached)' : ''}`);
}

/**
 * Runs the whole platform on this machine: the control plane, then (once it answers) a host
 * agent that joins it. Children share this terminal's stdout/stderr. SIGINT/SIGTERM stop both.
 * With --profile, first builds that image profile if this host has no image of its recipe, and
 * makes it the default profile of tenants unless WARREN_DEFAULT_PROFILE says otherwise.
 */
export async function run(
  args: { json?: boolean; profile?: string },
  _rest: string[],
  operands: string[],
): Promise<number> {
  noOperands(operands, usage);
  const files = localFiles();
  const env = { ...process.env };
  if (args.profile !== undefined) {
    const profile = parseOrThrow(Profile, args.profile);
    await prepareImage(profile);
    env.WARREN_DEFAULT_PROFILE = env.WARREN_DEFAULT_PROFILE || profile;
  }
  let failed = false;
  let stopping = false;
  let wake: () => void = () => {};
  const stopped = new Promise<void>((resolve) => {
    wake = resolve;
  });
  const children: Child[] = [];
  const stopAll = async (force: boolean) => {
    const timer = setTimeout(() => {
      log(`children still running ${STOP_GRACE_MS / 1000} s after SIGTERM; killing them`);
      for (const c of children) void c.stop(true);
    }, STOP_GRACE_MS);
    await Promise.all(children.map((c) => c.stop(force)));
    clearTimeout(timer);
    wake();
  };
  const onSignal = (signal: NodeJS.Signals) => {
    if (stopping) {
      log(`${signal} again: killing the children`);
      void stopAll(true);
      return;
    }
    stopping = true;
    log(`${signal}: stopping the host agent and the control plane (tenant VMs keep running)`);
    void stopAll(false);
  };
  const giveUp = () => {
    failed = true;
    if (!stopping) {
      stopping = true;
      void stopAll(false);
    }
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  try {
    const controlPlane = new Child('control-plane', env, giveUp);
    children.push(controlPlane);
    controlPlane.start();
    const url = await waitForControlPlane(files, () => stopping);
    if (url === undefined) {
      await stopped;
      return failed ? 1 : 0;
    }
    log(`control plane ready at ${url}`);
    log(`admin token: ${files.adminToken} (readable by root only)`);
    log(`try: export WARREN_API_URL=${url}; warren tenant create demo`);
    emit(args.json ?? false, { url, adminTokenFile: files.adminToken }, () => {});

    const hostAgent = new Child(
      'host-agent',
      {
        ...env,
        WARREN_CONTROL_PLANE_URL: env.WARREN_CONTROL_PLANE_URL || url,
        WARREN_JOIN_TOKEN_FILE: env.WARREN_JOIN_TOKEN_FILE || files.joinToken,
      },
      giveUp,
    );
    children.push(hostAgent);
    hostAgent.start();
    await stopped;
    return failed ? 1 : 0;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

/**
 * Resolves with the control plane's URL once api.json names one whose /v1/health answers (a
 * file left by an earlier run names a dead URL and is skipped), or undefined if stopped first.
 */
async function waitForControlPlane(files: LocalFiles, stopping: () => boolean): Promise<string | undefined> {
  const since = Date.now();
  let told = false;
  while (!stopping()) {
    const url = await readLocalUrl(files).catch(() => undefined);
    if (url) {
      try {
        await new WarrenClient({ url, token: '' }).health();
        return url;
      } catch {
        // Not listening yet, or a stale file.
      }
    }
    if (!told && Date.now() - since > 15_000) {
      told = true;
      log(`still waiting for the control plane to write ${files.apiJson} and answer on it…`);
    }
    await sleep(250);
  }
  return undefined;
}
