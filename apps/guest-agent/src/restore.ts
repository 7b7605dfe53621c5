/**
 * What the guest does around snapshots: the fix-up after a restore (clock, entropy) and the
 * session credentials, which live in a tmpfs and in this process's memory only.
 */
import { type ChildProcessWithoutNullStreams, execFile, spawn } from 'node:child_process';
import { chmod, chown, mkdir, open, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { promisify } from 'node:util';
import {
  CREDENTIALS_DIR,
  type GuestCredentials,
  type GuestSecrets,
  type PlacedSecrets,
  type RestoredRequest,
  type RestoredResult,
  SECRET_NAME_PATTERN,
  SECRETS_DIR,
  WarrenError,
} from '@warren/protocol/guest';

const run = promisify(execFile);
/** The guest's busybox: `date` and `mount` are its applets in every profile. */
export const BUSYBOX = process.env.WARREN_BUSYBOX ?? '/usr/lib/warren/busybox';
/** The workspace user's group may read the credentials; other users may not. */
const WORKSPACE_GID = 1000;
/** The tmpfs is small: credentials are capped at 1 MiB (MAX_CREDENTIAL_BYTES) with room for metadata. */
const CREDENTIALS_TMPFS = 'size=2m,nr_inodes=1024,mode=0750,nosuid,nodev,noexec';
/** Tenant secrets: at most 100 of 64 KiB (MAX_SECRETS_PER_TENANT, MAX_SECRET_VALUE_BYTES), and a replacement of each in flight. */
const SECRETS_TMPFS = 'size=16m,nr_inodes=1024,mode=0750,nosuid,nodev,noexec';

/**
 * Sets the clock to the host's and mixes the host's random bytes into the kernel's pool. The
 * clock is set to whole seconds (`date -s @N` is what busybox offers), rounded, after adding
 * the time this request took to arrive here.
 */
export async function fixUpAfterRestore(req: RestoredRequest, receivedAt: number): Promise<RestoredResult> {
  const entropy = Buffer.from(req.entropy, 'base64');
  // Writing to /dev/urandom mixes the bytes in; the virtio-rng device keeps feeding it after.
  const urandom = await open('/dev/urandom', 'w');
  try {
    await urandom.write(entropy);
  } finally {
    await urandom.close();
    entropy.fill(0);
  }
  const behindMs = req.unixMs - receivedAt;
  const target = req.unixMs + (Date.now() - receivedAt);
  await clock.set(Math.round(target / 1000));
  return { behindMs };
}

/** How long the waiting shell may take to set the clock before a `date` of its own is started. */
const CLOCK_SHELL_TIMEOUT_MS = 5_000;

/**
 * Sets the clock through a busybox shell started when the agent starts and kept waiting on its
 * stdin, so it is already running in every snapshot. After a revert, the first process the
 * guest starts is costly (under TCG its new QEMU translates all that code again); the shell
 * only forks its `date` applet, cheaper than starting a process from Node. Falls back to a
 * `date` of its own when the shell is gone or does not answer.
 */
class ClockSetter {
  #shell: ChildProcessWithoutNullStreams | undefined;
  #answers: ((line: string) => void)[] = [];

  /** Starts the waiting shell (again, if it ended). */
  start(): void {
    if (this.#shell && this.#shell.exitCode === null && !this.#shell.killed) return;
    const shell = spawn(
      BUSYBOX,
      ['sh', '-c', 'while read -r t; do date -u -s "@$t" >/dev/null 2>&1; echo $?; done'],
      {
        stdio: ['pipe', 'pipe', 'pipe'],
      },
    );
    shell.on('error', () => {});
    shell.stdin.on('error', () => {});
    let buffered = '';
    shell.stdout.setEncoding('utf8');
    shell.stdout.on('data', (chunk: string) => {
      buffered += chunk;
      for (let nl = buffered.indexOf('\n'); nl >= 0; nl = buffered.indexOf('\n')) {
        const line = buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
        this.#answers.shift()?.(line);
      }
      if (buffered.length > 1024) buffered = '';
    });
    shell.on('exit', () => {
      for (const answer of this.#answers.splice(0)) answer('gone');
      if (this.#shell === shell) this.#shell = undefined;
    });
    this.#shell = shell;
  }

  async set(seconds: number): Promise<void> {
    const shell = this.#shell;
    if (shell && shell.exitCode === null) {
      const answer = await new Promise<string>((resolve) => {
        const timer = setTimeout(() => resolve('timeout'), CLOCK_SHELL_TIMEOUT_MS);
        this.#answers.push((line) => {
          clearTimeout(timer);
          resolve(line);
        });
        shell.stdin.write(`${seconds}\n`);
      });
      if (answer === '0') return;
      if (answer === 'timeout') shell.kill('SIGKILL');
    }
    this.start();
    await run(BUSYBOX, ['date', '-u', '-s', `@${seconds}`]).catch((e) => {
      throw new WarrenError('INTERNAL', `cannot set the guest clock: ${(e as Error).message}`);
    });
  }
}

const clock = new ClockSetter();

/** Starts what a restore will need, before any snapshot is taken (the agent calls it at start). */
export function prepareForRestores(): void {
  clock.start();
}

/** Environment for new commands while credentials are in place. */
let credentialEnv: Record<string, string> = {};

export function sessionEnv(): Record<string, string> {
  return credentialEnv;
}

export async function isMounted(path: string): Promise<boolean> {
  const mounts = await readFile('/proc/mounts', 'utf8');
  return mounts.split('\n').some((l) => l.split(' ')[1] === path);
}

/** Puts the credentials in place, replacing any that were there. */
export async function placeCredentials(creds: GuestCredentials): Promise<void> {
  await wipeCredentials();
  // Its parent (/run/warren) must stay traversable for the workspace user.
  await mkdir(dirname(CREDENTIALS_DIR), { recursive: true, mode: 0o755 });
  await mkdir(CREDENTIALS_DIR, { recursive: true, mode: 0o750 });
  // A tmpfs of its own: never on a disk, gone at once when unmounted.
  await run(BUSYBOX, ['mount', '-t', 'tmpfs', '-o', CREDENTIALS_TMPFS, 'tmpfs', CREDENTIALS_DIR]);
  await chown(CREDENTIALS_DIR, 0, WORKSPACE_GID);
  await chmod(CREDENTIALS_DIR, 0o750);
  for (const [name, content] of Object.entries(creds.files)) {
    const path = `${CREDENTIALS_DIR}/${name}`;
    const bytes = Buffer.from(content, 'base64');
    await writeFile(path, bytes, { mode: 0o440, flag: 'wx' });
    bytes.fill(0);
    await chown(path, 0, WORKSPACE_GID);
  }
  credentialEnv = { ...creds.env };
}

/**
 * Removes the credentials and the tenant's secrets (a snapshot or a suspend must hold neither):
 * each file is overwritten with zeros before it is unlinked (the tmpfs's pages would otherwise
 * keep the bytes until reused), then each tmpfs is unmounted. Returns how many files there were.
 */
export async function wipeCredentials(): Promise<number> {
  credentialEnv = {};
  return (await wipeDir(CREDENTIALS_DIR)) + (await wipeDir(SECRETS_DIR));
}

async function wipeDir(dir: string): Promise<number> {
  let files = 0;
  if (!(await isMounted(dir).catch(() => false))) return 0;
  for (const name of await readdir(dir).catch(() => [] as string[])) {
    await zeroAndRemove(`${dir}/${name}`);
    files++;
  }
  await run(BUSYBOX, ['umount', dir]).catch((e) => {
    throw new WarrenError('INTERNAL', `cannot unmount ${dir}: ${(e as Error).message}`);
  });
  return files;
}

async function zeroAndRemove(path: string): Promise<void> {
  await zero(path);
  await rm(path, { force: true, recursive: true });
}

async function zero(path: string): Promise<void> {
  const f = await open(path, 'r+').catch(() => undefined);
  if (!f) return;
  try {
    const { size } = await f.stat();
    await f.write(Buffer.alloc(size), 0, size, 0);
    await f.sync();
  } finally {
    await f.close();
  }
}

/**
 * The tenant's secrets as environment variables, for an exec that asks (`secretEnv`): each
 * file of SECRETS_DIR named like a secret whose content is UTF-8 text without NUL. Read at each
 * exec, so a command started after a change sees the new value.
 */
export async function secretsEnv(): Promise<Record<string, string>> {
  const env: Record<string, string> = {};
  if (!(await isMounted(SECRETS_DIR).catch(() => false))) return env;
  const utf8 = new TextDecoder('utf-8', { fatal: true });
  for (const name of await readdir(SECRETS_DIR).catch(() => [] as string[])) {
    if (!SECRET_NAME_PATTERN.test(name)) continue;
    const bytes = await readFile(`${SECRETS_DIR}/${name}`).catch(() => undefined);
    if (!bytes) continue;
    try {
      const text = utf8.decode(bytes);
      if (!text.includes('\0')) env[name] = text;
    } catch {
      // Binary: a file only.
    } finally {
      bytes.fill(0);
    }
  }
  return env;
}

/**
 * Makes SECRETS_DIR hold exactly these secrets, in place: the tmpfs stays mounted (a process
 * that reads a secret never finds the directory gone), each file is replaced atomically (a new
 * file renamed over the old one, whose bytes are then zeroed through a handle opened before),
 * and a file no longer named is zeroed and removed.
 */
export async function placeSecrets(req: GuestSecrets): Promise<PlacedSecrets> {
  await mkdir(dirname(SECRETS_DIR), { recursive: true, mode: 0o755 });
  await mkdir(SECRETS_DIR, { recursive: true, mode: 0o750 });
  if (!(await isMounted(SECRETS_DIR))) {
    await run(BUSYBOX, ['mount', '-t', 'tmpfs', '-o', SECRETS_TMPFS, 'tmpfs', SECRETS_DIR]);
    await chown(SECRETS_DIR, 0, WORKSPACE_GID);
    await chmod(SECRETS_DIR, 0o750);
  }
  let removed = 0;
  for (const name of await readdir(SECRETS_DIR)) {
    if (Object.hasOwn(req.files, name)) continue;
    await zeroAndRemove(`${SECRETS_DIR}/${name}`);
    removed++;
  }
  for (const [name, content] of Object.entries(req.files)) {
    const path = `${SECRETS_DIR}/${name}`;
    const bytes = Buffer.from(content, 'base64');
    try {
      const current = await readFile(path).catch(() => undefined);
      if (current?.equals(bytes)) continue;
      current?.fill(0);
      const tmp = `${SECRETS_DIR}/.${name}.new`;
      await rm(tmp, { force: true });
      await writeFile(tmp, bytes, { mode: 0o440, flag: 'wx' });
      await chown(tmp, 0, WORKSPACE_GID);
      const old = await open(path, 'r+').catch(() => undefined);
      try {
        await rename(tmp, path);
        if (old) {
          const { size } = await old.stat();
          await old.write(Buffer.alloc(size), 0, size, 0);
        }
      } finally {
        await old?.close();
      }
    } finally {
      bytes.fill(0);
    }
  }
  return { files: Object.keys(req.files).length, removed };
}
