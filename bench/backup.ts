/**
 * Backup and restore of a tenant's data volume: Warren (the host agent's backup jobs on a
 * running QEMU microVM, as in production, into the filesystem object store) against restic
 * (Debian's package) on the same data, in one run, N runs each (default 3), medians with min
 * and max.
 *
 *   flock /tmp/warren-vm.lock npm run bench:backup -- [--runs 3] [--data-mib 2048]
 *
 * The data: a `--data-mib` ext4 volume (2 GiB by default) filled to about 70% with real files of
 * this machine (documentation, programs, the repository's node_modules: text, binaries, many
 * small files), built once and cached in `<data dir>/cache/bench-backup/` (about 45 s), then
 * copied into a fresh VM before its first start. The VM runs throughout.
 *
 * Per run, into a new store (and a new restic repository):
 *   1. Warren first backup (full): the job from request to succeeded.
 *   2. A change of 1% of the volume in the guest, through the guest agent, as files: half in
 *      new files, half by replacing whole existing files (written beside and renamed over, as
 *      editors, git and package managers do); `sync`. Then Warren's second backup (incremental).
 *   3. Another 1%, scattered in place: 64 KiB rewritten inside each of 160 existing files spread
 *      over the volume (as a database writes its pages): the worst case for fixed 1 MiB chunks,
 *      since each small write makes a whole chunk be read and stored. Then the third backup.
 *   4. restic gets the SAME three points in time: each Warren backup is exported untimed to a raw
 *      file (the library's own restore, which also proves the backup whole), and restic backs up
 *      that one file path three times (`restic backup`, each after the file was replaced by the
 *      next point). restic is given the volume as Warren is: as one block device image; a
 *      changed file makes restic read all of it again, which is the work Warren's change
 *      tracking saves. (restic of the files inside the volume would be another comparison: it
 *      needs the filesystem mounted on the host, which Warren never does with a tenant's disk.)
 *   5. Restore: Warren's restore job of the third backup into the stopped VM (download, check,
 *      write, switch), against `restic restore latest` into an empty directory. The restored
 *      volume's sha256 is compared with the export, untimed.
 * Stored sizes: the object store's directory and the restic repository, after the three backups.
 *
 * Baseline printed in the same run: restic's figures. Targets (issue 12): Warren's incremental
 * backup at least 5x faster than restic's; Warren's restore no slower than restic's.
 */
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, existsSync } from 'node:fs';
import { mkdir, mkdtemp, open, readFile, rename, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { newKey, readManifest, restoreVolume } from '@warren/backup';
import { BackupJobs, imagesDirOf, loadConfig, openHost } from '@warren/host-agent';
import { buildImage, ImageStore } from '@warren/images';
import { createObjectStore } from '@warren/object-store';
import type { BackupJob } from '@warren/protocol';
import { REPO_ROOT } from '../test/helpers/image.ts';
import { median, positiveInt } from './common.ts';

const { values } = parseArgs({
  options: {
    runs: { type: 'string', default: '3' },
    'data-mib': { type: 'string', default: '2048' },
  },
});
const runs = positiveInt(values, 'runs');
const dataMiB = positiveInt(values, 'data-mib');
const MEMORY_MIB = 256;
const JOB_TIMEOUT_MS = 30 * 60_000;

const config = loadConfig();
const images = new ImageStore(imagesDirOf(config));
const { imageId } = await buildImage(images, { profile: 'minimal', cacheDir: join(config.dataDir, 'cache') });

/** What to undo, newest last; runs once, at the end, on failure or on a signal. */
const undo: (() => Promise<unknown>)[] = [];
async function cleanup(): Promise<void> {
  for (let step = undo.pop(); step; step = undo.pop())
    await step().catch((e) => console.error(`cleanup: ${(e as Error).message}`));
}
for (const sig of ['SIGINT', 'SIGTERM'] as const)
  process.once(sig, () => void cleanup().finally(() => process.exit(130)));

function sh(cmd: string, args: string[], env: Record<string, string> = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    p.stdout.on('data', (b) => (out += b));
    p.stderr.on('data', (b) => (err += b));
    p.on('error', reject);
    p.on('exit', (code) =>
      code === 0 ? resolve(out) : reject(new Error(`${cmd} ${args.join(' ')}: ${err.trim()}`)),
    );
  });
}

/**
 * Writes what is dirty before each timed step, so no step pays for the writeback of the one
 * before it (a restore right after the other system's 2 GiB restore would).
 */
async function settle(): Promise<void> {
  await sh('sync', []);
}

async function du(path: string): Promise<number> {
  return Number((await sh('du', ['-sb', path])).split('\t')[0]);
}

async function sha256(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const b of createReadStream(path)) h.update(b as Buffer);
  return h.digest('hex');
}

/** The cached volume: an ext4 image made as the host agent makes a data volume, with real files in it. */
async function dataset(): Promise<string> {
  const dir = join(config.dataDir, 'cache', 'bench-backup');
  const file = join(dir, `data-${dataMiB}.img`);
  if (existsSync(file)) return file;
  await mkdir(dir, { recursive: true });
  const tree = await mkdtemp(join(tmpdir(), 'wb-backup-tree-'));
  try {
    const budget = dataMiB * 1024 * 1024 * 0.7;
    let used = 0;
    for (const [from, name] of [
      ['/usr/share', 'share'],
      [join(REPO_ROOT, 'node_modules'), 'node_modules'],
      ['/usr/bin', 'bin'],
      ['/usr/lib', 'lib'],
    ] as const) {
      const size = await du(from);
      if (used + size > budget) continue;
      await sh('cp', ['-a', from, join(tree, name)]);
      used += size;
    }
    console.log(
      `dataset: ${(used / 2 ** 20).toFixed(0)} MiB of files in a ${dataMiB} MiB volume (once, cached in ${dir})`,
    );
    await sh('mkfs.ext4', [
      '-q',
      '-F',
      '-L',
      'workspace',
      '-E',
      'root_owner=1000:1000',
      '-d',
      tree,
      `${file}.tmp`,
      `${dataMiB}M`,
    ]);
    await rename(`${file}.tmp`, file);
  } finally {
    await rm(tree, { recursive: true, force: true });
  }
  return file;
}

async function waitJob(jobs: BackupJobs, id: string): Promise<BackupJob> {
  const deadline = Date.now() + JOB_TIMEOUT_MS;
  for (;;) {
    const job = jobs.get(id);
    if (job.state === 'succeeded') return job;
    if (job.state === 'failed') throw new Error(`job ${id} failed: ${job.error?.code} ${job.error?.message}`);
    if (Date.now() > deadline) throw new Error(`job ${id} did not end in ${JOB_TIMEOUT_MS} ms`);
    await sleep(20);
  }
}

const backupId = () => `bak_${randomBytes(8).toString('hex')}`;
const s = (ms: number) => `${(ms / 1000).toFixed(2)} s`;
const mib = (b: number) => `${(b / 2 ** 20).toFixed(0)} MiB`;
function summary(xs: number[], unit: (x: number) => string): string {
  return `median ${unit(median(xs))} (min ${unit(Math.min(...xs))}, max ${unit(Math.max(...xs))})`;
}

/** The two kinds of 1% change (see the file comment), each followed by an incremental backup. */
const PATTERNS = ['files', 'scattered'] as const;
type Pattern = (typeof PATTERNS)[number];

interface Figures {
  full: number[];
  files: number[];
  scattered: number[];
  restore: number[];
  stored: number[];
}
const figures = (): Figures => ({ full: [], files: [], scattered: [], restore: [], stored: [] });
const warren = figures();
const restic = figures();
/** The last job's time in the point in time (freeze, switch, thaw, files opened) and in merging back. */
const phase = { backupPoint: 0, mergeBackupLayers: 0 };
/** Those, per incremental backup: [point, merge]. */
const phases: Record<Pattern, [number, number][]> = { files: [], scattered: [] };
/** What each incremental backup read of the volume, per pattern. */
const warrenRead: Record<Pattern, number[]> = { files: [], scattered: [] };

const source = await dataset();
const scratch = await mkdtemp(join(tmpdir(), 'wb-backup-'));
undo.push(() => rm(scratch, { recursive: true, force: true }));
const dataDir = join(scratch, 'host');
const host = await openHost(
  loadConfig(process.env, { dataDir, imagesDir: imagesDirOf(config), network: 'off' }),
);
undo.push(async () => {
  for (const vm of await host.vms.list()) await host.vms.destroy(vm.id).catch(() => {});
  host.vms.close();
});
console.log(
  `accelerator: ${host.accel.accel} (${host.accel.reason}); restic: ${(await sh('restic', ['version'])).trim()}`,
);

try {
  // Where an incremental backup's time goes, seen from outside the job: the VmManager steps it
  // calls are wrapped here at run time (their code is not changed).
  const vms = host.vms as unknown as Record<string, (...a: unknown[]) => Promise<unknown>>;
  for (const step of ['backupPoint', 'mergeBackupLayers'] as const) {
    const original = vms[step]!.bind(host.vms);
    vms[step] = async (...args: unknown[]) => {
      const t = performance.now();
      try {
        return await original(...args);
      } finally {
        phase[step] = performance.now() - t;
      }
    };
  }
  const vm = await host.vms.create({ image: imageId, memoryMiB: MEMORY_MIB, cpus: 1, diskMiB: dataMiB });
  // Before the first start, the volume becomes the dataset (same size, label and owner as mkfs made it).
  const dataFile = join(host.vms.dirOf(vm.id), 'data.img');
  // cp writes into the existing file: its owner and mode stay the host agent's.
  await sh('cp', ['--sparse=always', source, dataFile]);
  await host.vms.start(vm.id);
  const exec = async (argv: string[]): Promise<string> => {
    let stdout = '';
    let stderr = '';
    const r = await (await host.vms.guest(vm.id)).exec(
      { argv },
      { onStdout: (b) => (stdout += b), onStderr: (b) => (stderr += b) },
    );
    if (r.exitCode !== 0) throw new Error(`${argv.join(' ')}: exit ${r.exitCode} ${stderr}`);
    return stdout;
  };
  // Existing files of 256 KiB or more, spread over the volume: what the changes touch.
  const files = (
    await exec([
      'sh',
      '-c',
      'find /workspace/share -type f -size +256k -exec stat -c "%s %n" {} + | sort -k2 | head -400',
    ])
  )
    .split('\n')
    .filter(Boolean)
    .map((line) => ({ size: Number(line.split(' ')[0]), path: line.slice(line.indexOf(' ') + 1) }))
    // Quoted into shell commands below: only names that need no escaping.
    .filter((f) => /^[\w./+-]+$/.test(f.path));

  /** The guest shell commands of one 1% change (about 20 MiB of a 2 GiB volume). */
  const onePercentKiB = Math.round((dataMiB * 1024) / 100);
  const change = (pattern: Pattern, run: number): string => {
    if (pattern === 'files') {
      // As programs write files: half in new files, half by replacing whole existing files
      // (written beside, renamed over, as editors, git and package managers do).
      const replaced: string[] = [];
      let kib = 0;
      for (const f of files) {
        if (kib >= onePercentKiB / 2) break;
        replaced.push(f.path);
        kib += Math.ceil(f.size / 1024);
      }
      return [
        `mkdir -p /workspace/new-${run}`,
        ...Array.from(
          { length: 10 },
          (_, k) =>
            `dd if=/dev/urandom of=/workspace/new-${run}/f${k} bs=1k count=${Math.floor(onePercentKiB / 20)} 2>/dev/null`,
        ),
        ...replaced.map((f) => `{ cat '${f}'; echo ${run}; } > '${f}.new' && mv '${f}.new' '${f}'`),
        'sync',
      ].join(' && ');
    }
    // As a database does: 64 KiB rewritten in place in each of 160 existing files spread
    // over the volume, the worst case for fixed 1 MiB chunks (each write dirties its own chunk).
    const perFile = 64;
    return [
      ...files
        .slice(0, Math.floor(onePercentKiB / perFile))
        .map(
          (f) =>
            `dd if=/dev/urandom of='${f.path}' bs=1k seek=${run * 8} count=${perFile} conv=notrunc 2>/dev/null`,
        ),
      'sync',
    ].join(' && ');
  };

  for (let i = 1; i <= runs; i++) {
    const storeDir = join(scratch, `store-${i}`);
    const store = createObjectStore({ kind: 'fs', root: storeDir });
    const jobs = new BackupJobs({ vms: host.vms, store, freezeTimeoutMs: 10_000, concurrency: 4 });
    const tenant = newKey();
    const keys = { tenant: tenant.toString('base64') };
    const metadata = {
      tenantId: 'ten_0000000000000001',
      tenantName: 'bench',
      imageId,
      resources: {},
      network: null,
    };
    const repo = join(scratch, `restic-${i}`);
    const renv = {
      RESTIC_REPOSITORY: repo,
      RESTIC_PASSWORD: 'bench',
      RESTIC_CACHE_DIR: join(scratch, 'restic-cache'),
    };
    /** Warren's backups of this run, in order: full, then one per pattern. */
    const ids: string[] = [];

    // 1. Warren, first backup.
    ids.push(backupId());
    await settle();
    let t0 = performance.now();
    await jobs.startBackup(vm.id, { id: ids[0]!, keys, metadata });
    await waitJob(jobs, ids[0]!);
    warren.full.push(performance.now() - t0);

    // 2-3. Each pattern of change, then an incremental backup.
    for (const pattern of PATTERNS) {
      await exec(['sh', '-c', change(pattern, i)]);
      const id = backupId();
      await settle();
      t0 = performance.now();
      await jobs.startBackup(vm.id, { id, keys, metadata, previous: ids.at(-1)! });
      const job = await waitJob(jobs, id);
      warren[pattern].push(performance.now() - t0);
      if (job.result?.mode !== 'incremental')
        throw new Error(`the backup after "${pattern}" was ${job.result?.mode} (${job.result?.reason})`);
      warrenRead[pattern].push(job.progress.bytesTotal);
      phases[pattern].push([phase.backupPoint, phase.mergeBackupLayers]);
      ids.push(id);
    }
    warren.stored.push(await du(storeDir));

    // 4. restic on the same points in time, exported untimed by the library's restore.
    const point = join(scratch, 'volume', 'data.img');
    const next = join(scratch, 'next.img');
    await mkdir(join(scratch, 'volume'), { recursive: true });
    const exportTo = async (id: string, path: string) => {
      const manifest = await readManifest(store, tenant, id);
      const volume = manifest.volumes.find((v) => v.name === 'data')!;
      const fh = await open(path, 'w');
      try {
        await fh.truncate(volume.size);
        await restoreVolume({
          store,
          keys: { tenant },
          manifest,
          backupId: id,
          volume: 'data',
          write: async (offset, buf) => {
            await fh.write(buf, 0, buf.length, offset);
          },
        });
      } finally {
        await fh.close();
      }
    };
    await sh('restic', ['init', '-q'], renv);
    for (const [k, id] of ids.entries()) {
      await exportTo(id, next);
      await rename(next, point);
      await settle();
      t0 = performance.now();
      await sh('restic', ['backup', '-q', point], renv);
      const took = performance.now() - t0;
      if (k === 0) restic.full.push(took);
      else restic[PATTERNS[k - 1]!].push(took);
    }
    restic.stored.push(await du(repo));
    const want = await sha256(point);

    // 5. Restores of the last point.
    const target = join(scratch, 'restic-restore');
    await rm(target, { recursive: true, force: true });
    await settle();
    t0 = performance.now();
    await sh('restic', ['restore', '-q', 'latest', '--target', target], renv);
    restic.restore.push(performance.now() - t0);
    await rm(target, { recursive: true, force: true });

    await host.vms.stop(vm.id);
    const job = backupId();
    await settle();
    t0 = performance.now();
    await jobs.startRestore(vm.id, { job, backup: ids.at(-1)!, keys });
    await waitJob(jobs, job);
    warren.restore.push(performance.now() - t0);
    const record = JSON.parse(await readFile(join(host.vms.dirOf(vm.id), 'vm.json'), 'utf8'));
    const restored = join(host.vms.dirOf(vm.id), record.disks.data[0]);
    if ((await sha256(restored)) !== want)
      throw new Error(`run ${i}: the restored volume differs from the backup's point in time`);
    await host.vms.start(vm.id);

    await store.close();
    await rm(storeDir, { recursive: true, force: true });
    await rm(repo, { recursive: true, force: true });
    await rm(point, { force: true });
    console.log(`run ${i}/${runs} done`);
  }

  console.log(`\nvolume ${dataMiB} MiB (${mib(onePercentKiB * 1024)} is 1%), ${runs} runs, medians`);
  const rows: [string, keyof Figures, (x: number) => string][] = [
    ['first backup', 'full', s],
    ['after 1% changed as files (new and replaced)', 'files', s],
    ['after 1% changed in place, scattered (64 KiB in each of 160 files)', 'scattered', s],
    ['restore', 'restore', s],
    ['stored after the three backups', 'stored', mib],
  ];
  for (const [label, key, unit] of rows) {
    console.log(label);
    console.log(`  warren ${summary(warren[key], unit)}`);
    console.log(`  restic ${summary(restic[key], unit)}`);
  }
  for (const pattern of PATTERNS) {
    const ratio = median(restic[pattern]) / median(warren[pattern]);
    console.log(
      `incremental (${pattern}): warren ${ratio.toFixed(1)}x faster than restic (target >= 5x); warren read ${summary(warrenRead[pattern], mib)}`,
    );
    console.log(
      `  of warren's: point in time ${summary(
        phases[pattern].map((p) => p[0]),
        s,
      )}; merging back ${summary(
        phases[pattern].map((p) => p[1]),
        s,
      )}; the rest is reading, sealing and storing`,
    );
  }
  const res = median(warren.restore) / median(restic.restore);
  console.log(`restore: warren takes ${res.toFixed(2)}x restic's time (target <= 1.0)`);
} finally {
  await cleanup();
}
