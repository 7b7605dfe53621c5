/**
 * Start-up of the `warren` CLI: wall time from spawn to exit of `warren --version` and of
 * `warren tenant list` against a local control plane that this bench starts (real, SQLite on
 * disk, a few tenants on a fake host), found the way an operator's CLI finds it: api.json and
 * the admin token under WARREN_DATA_DIR. Median of R runs each (default 10), interleaved.
 *
 *   npm run bench:cli -- [--runs 10] [--tenants 5] [--compare /path/to/other/bin/warren]
 *
 * Baselines in the same run: `node -e 0` on the same (pinned) Node binary, the floor of any
 * Node program; and the same two commands from the CLI's TypeScript sources
 * (packages/cli/src/main.ts), which is what `warren` ran before it was bundled. --compare adds
 * another `warren` program (e.g. an older checkout's node_modules/.bin/warren).
 */
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import {
  call,
  FAKE_IMAGE,
  FakeAgent,
  openTestControlPlane,
  type TestControlPlane,
} from '../test/helpers/api.ts';
import { REPO_ROOT } from '../test/helpers/image.ts';
import { median, positiveInt } from './common.ts';

const { values } = parseArgs({
  options: {
    runs: { type: 'string', default: '10' },
    tenants: { type: 'string', default: '5' },
    compare: { type: 'string' },
  },
});
const runs = positiveInt(values, 'runs');
const tenantCount = Number(values.tenants);
if (!Number.isInteger(tenantCount) || tenantCount < 0) throw new Error(`--tenants: got ${values.tenants}`);

const NODE = process.execPath;
const WARREN = join(REPO_ROOT, 'node_modules', '.bin', 'warren');
const SOURCES = join(REPO_ROOT, 'packages', 'cli', 'src', 'main.ts');

console.log(`node ${process.version} (${NODE}), ${cpus().length} x ${cpus()[0]?.model ?? 'unknown CPU'}`);

const dataDir = await mkdtemp(join(tmpdir(), 'wbench-cli-'));
let cp: TestControlPlane | undefined;
let agent: FakeAgent | undefined;
async function cleanup(): Promise<void> {
  await agent?.stop().catch(() => {});
  await cp?.close().catch(() => {});
  await rm(dataDir, { recursive: true, force: true });
}
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.once(sig, () => void cleanup().finally(() => process.exit(130)));
}

/** Runs one program to its end; resolves with its wall time in ms (it must exit 0). */
function timed(
  file: string,
  args: string[],
  env: NodeJS.ProcessEnv,
): Promise<{ ms: number; stdout: string }> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    execFile(file, args, { env, maxBuffer: 16 * 1024 * 1024 }, (error, stdout, stderr) => {
      const ms = performance.now() - t0;
      if (error) reject(new Error(`${file} ${args.join(' ')}: ${error.message}\n${stderr}`));
      else resolve({ ms, stdout });
    });
  });
}

try {
  // The control plane runs in this process, whose event loop is otherwise idle while a CLI
  // runs: it answers at once, so the figures are the CLI's own start-up and one round trip.
  cp = await openTestControlPlane({ heartbeatTimeoutMs: 3_600_000 }, dataDir);
  agent = await new FakeAgent('bench-host', { vcpus: 64, memoryMiB: 64 * 1024, diskMiB: 64 * 4096 }).start(
    cp.url,
    cp.joinToken,
  );
  for (let i = 0; i < tenantCount; i++) {
    const r = await call(cp.url, 'POST', '/v1/tenants', {
      token: cp.adminToken,
      body: { name: `bench-${i}`, image: FAKE_IMAGE },
    });
    if (r.status !== 202) throw new Error(`create tenant: ${r.status} ${r.text}`);
  }
  for (let round = 0; round < 2; round++) await agent.heartbeat();

  // No WARREN_API_URL / WARREN_TOKEN: the CLI finds the local control plane by its files.
  const env: NodeJS.ProcessEnv = { ...process.env, WARREN_DATA_DIR: dataDir };
  delete env.WARREN_API_URL;
  delete env.WARREN_TOKEN;

  type Target = { name: string; file: string; args: string[] };
  const targets: Target[] = [
    { name: 'node -e 0 (floor)', file: NODE, args: ['-e', '0'] },
    { name: 'warren --version', file: WARREN, args: ['--version'] },
    { name: 'warren tenant list', file: WARREN, args: ['tenant', 'list'] },
    { name: 'sources: --version', file: NODE, args: [SOURCES, '--version'] },
    { name: 'sources: tenant list', file: NODE, args: [SOURCES, 'tenant', 'list'] },
  ];
  if (values.compare) {
    targets.push(
      { name: 'compare: --help', file: values.compare, args: ['--help'] },
      { name: 'compare: tenant list', file: values.compare, args: ['tenant', 'list'] },
    );
  }

  // Every target once before measuring: the bundle is built if stale, the page cache is warm,
  // and `tenant list` is checked to list what was created.
  for (const t of targets) {
    const r = await timed(t.file, t.args, env).catch((e) => {
      // An older CLI may not know --version; its --help exits non-zero on some versions.
      if (t.name.startsWith('compare: --help')) return { ms: 0, stdout: '' };
      throw e;
    });
    if (t.args.includes('list') && !r.stdout.includes(`bench-${tenantCount - 1}`)) {
      throw new Error(`${t.name} did not list the tenants:\n${r.stdout}`);
    }
  }

  const times = new Map<string, number[]>(targets.map((t) => [t.name, []]));
  for (let run = 0; run < runs; run++) {
    // Interleaved, so drift (neighbours, page cache) hits every target alike.
    for (const t of targets) {
      const r = await timed(t.file, t.args, env).catch(() => undefined);
      if (r) times.get(t.name)!.push(r.ms);
    }
  }

  const floor = median(times.get(targets[0]!.name)!);
  console.log(`\n${tenantCount} tenants, ${runs} runs each (median wall ms, spawn to exit)\n`);
  console.log(
    `${'program'.padEnd(26)} ${'median'.padStart(7)} ${'min'.padStart(7)} ${'max'.padStart(7)} ${'- floor'.padStart(8)}`,
  );
  for (const t of targets) {
    const xs = times.get(t.name)!;
    if (xs.length === 0) {
      console.log(`${t.name.padEnd(26)} (failed)`);
      continue;
    }
    const m = median(xs);
    console.log(
      `${t.name.padEnd(26)} ${m.toFixed(0).padStart(7)} ${Math.min(...xs)
        .toFixed(0)
        .padStart(7)} ` +
        `${Math.max(...xs)
          .toFixed(0)
          .padStart(7)} ${(m - floor).toFixed(0).padStart(8)}`,
    );
  }
  console.log('\n- floor: what the program costs over starting the same Node binary and exiting.');
} finally {
  await cleanup();
}
