/**
 * Images built by the host agent daemon (POST /v1/images/build on its local API) are usable by
 * the guest's unprivileged user although the agent itself runs under umask 077: the build runs
 * in a process of its own under 022, so /usr and the rest of the root filesystem are readable
 * and runnable by everyone, while the agent's own files stay private. The rootfs is read with
 * debugfs, without booting it, so the VM lock is not needed.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { ImageStore } from '@warren/images';
import { WarrenError } from '@warren/protocol';
import { HostAgentClient } from '@warren/sdk';
import { REPO_ROOT, TEST_CACHE_DIR } from '../helpers/image.ts';
import { until } from '../helpers/until.ts';

const MAIN = join(REPO_ROOT, 'apps/host-agent/src/main.ts');
const dataDir = await mkdtemp(join(tmpdir(), 'wt-imgbuild-'));
// The kernel step's download, copied so the test neither fetches it again nor writes the
// shared cache (its first download happens in a VM test, under the VM lock).
await mkdir(join(dataDir, 'cache'), { recursive: true });
if (existsSync(join(TEST_CACHE_DIR, 'kernels'))) {
  const cp = spawnSync('cp', ['-a', join(TEST_CACHE_DIR, 'kernels'), join(dataDir, 'cache', 'kernels')]);
  assert.equal(cp.status, 0, String(cp.stderr));
}
let stderr = '';
const agent: ChildProcess = spawn(process.execPath, [MAIN], {
  env: { ...process.env, WARREN_DATA_DIR: dataDir, WARREN_NETWORK: 'off', WARREN_CGROUPS: 'off' },
  stdio: ['ignore', 'ignore', 'pipe'],
});
agent.stderr!.on('data', (b) => (stderr += b));
const exited = new Promise<void>((resolve) => agent.once('exit', () => resolve()));
after(async () => {
  if (agent.exitCode === null && agent.signalCode === null) {
    agent.kill('SIGTERM');
    await exited;
  }
  await rm(dataDir, { recursive: true, force: true });
});
const socketPath = join(dataDir, 'host-agent.sock');
await until(`the agent listens (${stderr})`, () => existsSync(socketPath), 30_000);
const client = new HostAgentClient({ socketPath });

/** Permission bits of `path` inside the ext4 image `fs`, as debugfs reads them. */
function modeIn(fs: string, path: string): number {
  const r = spawnSync('debugfs', ['-R', `stat ${path}`, fs], { encoding: 'utf8' });
  const m = /Mode:\s+0?([0-7]+)/.exec(r.stdout);
  assert.ok(m, `debugfs found no ${path} in ${fs}: ${r.stderr}`);
  return Number.parseInt(m[1]!, 8) & 0o7777;
}

/** The image build worker the agent runs now, if any. */
function buildWorker(): number | undefined {
  const children = readFileSync(`/proc/${agent.pid}/task/${agent.pid}/children`, 'utf8').trim();
  for (const pid of children.split(/\s+/).filter(Boolean).map(Number)) {
    let cmdline = '';
    try {
      cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    } catch {
      continue; // gone meanwhile
    }
    if (cmdline.includes('image-build-worker')) return pid;
  }
  return undefined;
}

test('the guest may read and run its root filesystem; the agent keeps umask 077', async () => {
  assert.match(readFileSync(`/proc/${agent.pid}/status`, 'utf8'), /^Umask:\s+0077$/m);
  const result = await client.buildImage({ profile: 'minimal', force: true });
  assert.equal(result.cached, false);
  const store = new ImageStore(join(dataDir, 'images'));
  const rootfs = (await store.verify(result.imageId)).rootfsPath;
  // Directories to traverse, programs to run, files to read: for group and others too.
  for (const dir of ['/', '/usr', '/usr/lib', '/usr/lib/warren', '/etc', '/bin', '/home']) {
    const mode = modeIn(rootfs, dir);
    assert.equal(mode & 0o055, 0o055, `${dir} has mode ${mode.toString(8)}`);
  }
  for (const program of ['/usr/lib/warren/busybox', '/usr/lib/warren/node', '/usr/lib/warren/guest-agent']) {
    const mode = modeIn(rootfs, program);
    assert.equal(mode & 0o055, 0o055, `${program} has mode ${mode.toString(8)}`);
  }
  for (const file of [
    '/usr/lib/warren/guest-agent.js',
    '/usr/lib/warren/guest-agent-loader.cjs',
    '/usr/lib/warren/guest-agent.cache',
    '/etc/passwd',
    '/etc/group',
    '/etc/inittab',
  ]) {
    const mode = modeIn(rootfs, file);
    assert.equal(mode & 0o044, 0o044, `${file} has mode ${mode.toString(8)}`);
  }
  // Modes the build sets on purpose stay as set.
  assert.equal(modeIn(rootfs, '/etc/shadow'), 0o600);
  assert.equal(modeIn(rootfs, '/tmp'), 0o1777);
  // The build's umask did not become the agent's.
  assert.match(readFileSync(`/proc/${agent.pid}/status`, 'utf8'), /^Umask:\s+0077$/m);
});

test('a build process that dies gives an error saying so', async () => {
  let killed: number | undefined;
  const err = await client
    .buildImage(
      { profile: 'minimal', force: true },
      {
        onProgress: () => {
          if (killed !== undefined) return;
          killed = buildWorker() ?? 0;
          if (killed) process.kill(killed, 'SIGKILL');
        },
      },
    )
    .then(
      () => assert.fail('the build succeeded'),
      (e) => e,
    );
  assert.ok(killed, 'no build worker ran while the build reported progress');
  assert.ok(err instanceof WarrenError, String(err));
  assert.equal(err.code, 'IMAGE_BUILD_FAILED');
  assert.match(err.message, /the image build process ended \(SIGKILL\) without a result/);
  // The agent lives on and builds again.
  const again = await client.buildImage({ profile: 'minimal', force: false });
  assert.equal(typeof again.imageId, 'string');
});
