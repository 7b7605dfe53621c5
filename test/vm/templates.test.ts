/**
 * Template start on real microVMs (QEMU driver): two tenants started from one template share
 * no identifier or random state (hostname, machine-id, the first bytes of /dev/urandom), each
 * has its own data volume at /workspace, and a template start is timed against a cold boot.
 *
 * Networking is off here (no NIC), so addresses are not compared: test/net covers the link.
 */
import assert from 'node:assert/strict';
import { open, readdir, readFile, readlink, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { collect, openTestHost, type TestHost } from '../helpers/host.ts';
import { minimalImage } from '../helpers/image.ts';

const sh = (script: string) => ({ argv: ['sh', '-c', script] });
const MEMORY_MIB = 256;

describe('template start on real VMs (qemu)', { timeout: 900_000 }, () => {
  let host: TestHost;
  let coldHost: TestHost;
  let image: string;
  /** What each tenant read from /dev/urandom as its first command. */
  const firstBytes = new Map<string, string>();
  const timings: Record<string, number> = {};
  const run = async (h: TestHost, id: string, script: string) => {
    const r = await collect(async (o) => (await h.vms.guest(id)).exec(sh(script), o));
    const code = (r.exit as { exitCode: number | null }).exitCode;
    assert.equal(code, 0, `${id}: ${script}: ${r.stderr}`);
    return r.stdout.trim();
  };
  const startTimed = async (h: TestHost, id: string) => {
    const t = performance.now();
    await h.vms.start(id);
    return performance.now() - t;
  };

  before(async () => {
    image = await minimalImage();
    host = await openTestHost({ WARREN_VMM: 'qemu', WARREN_TEMPLATE_START: 'on' });
    coldHost = await openTestHost({ WARREN_VMM: 'qemu', WARREN_TEMPLATE_START: 'off' });
    // Different volume sizes: each tenant's kernel must see its own disk, not the template's.
    await host.vms.create({ id: 'tpl-a', image, memoryMiB: MEMORY_MIB, diskMiB: 64 });
    await host.vms.create({ id: 'tpl-b', image, memoryMiB: MEMORY_MIB, diskMiB: 96 });
    await coldHost.vms.create({ id: 'cold-a', image, memoryMiB: MEMORY_MIB, diskMiB: 64 });
  });
  after(async () => {
    await host?.dispose();
    await coldHost?.dispose();
  });

  test('the first start builds the template; tenants start from it with their own random state', async () => {
    timings.firstWithBuild = await startTimed(host, 'tpl-a');
    firstBytes.set('tpl-a', await run(host, 'tpl-a', 'head -c 32 /dev/urandom | od -An -tx1 | tr -d " \\n"'));
    // Its rendered configuration, known before the start, is in place when the start returns
    // (a workload that waits for its token, delivered next, starts with it).
    const config = '{"gateway":{"port":8080}}\n';
    host.vms.setConfig('tpl-b', {
      version: 'sha256:0123456789ab',
      files: [{ name: 'app.json', content: config }],
    });
    timings.template = await startTimed(host, 'tpl-b');
    firstBytes.set('tpl-b', await run(host, 'tpl-b', 'head -c 32 /dev/urandom | od -An -tx1 | tr -d " \\n"'));
    assert.equal(`${await run(host, 'tpl-b', 'cat /run/warren/config/app.json')}\n`, config);
    // Restored, not booted: the guest's kernel still has the template's command line.
    for (const id of ['tpl-a', 'tpl-b'])
      assert.match(
        await run(host, id, 'cat /proc/cmdline'),
        /warren\.template=1/,
        `${id} started from the template`,
      );
    const templates = await readdir(join(host.dataDir, 'templates'));
    assert.equal(templates.filter((n) => !n.startsWith('.')).length, 1, `one template: ${templates}`);
    const a = firstBytes.get('tpl-a')!;
    const b = firstBytes.get('tpl-b')!;
    assert.match(a, /^[0-9a-f]{64}$/);
    assert.notEqual(a, b, 'two tenants of one template read the same first bytes from /dev/urandom');
  });

  test('each tenant has its own hostname and machine-id', async () => {
    const names = await Promise.all(['tpl-a', 'tpl-b'].map((id) => run(host, id, 'hostname')));
    assert.deepEqual(names, ['tpl-a', 'tpl-b']);
    const ids = await Promise.all(['tpl-a', 'tpl-b'].map((id) => run(host, id, 'cat /etc/machine-id')));
    for (const id of ids) assert.match(id, /^[0-9a-f]{32}$/);
    assert.notEqual(ids[0], ids[1]);
    // Not the template's boot args: a tenant never sees the template's hostname.
    assert.doesNotMatch(names.join(' '), /^tpl-[0-9a-f]{12}$/m);
  });

  test('each tenant has its own data volume at /workspace, of its own size', async () => {
    await run(host, 'tpl-a', 'echo only-a > /workspace/mine && sync');
    assert.equal(await run(host, 'tpl-b', 'ls /workspace/mine 2>/dev/null || echo absent'), 'absent');
    assert.equal(await run(host, 'tpl-a', 'cat /workspace/mine'), 'only-a');
    for (const [id, mib] of [
      ['tpl-a', 64],
      ['tpl-b', 96],
    ] as const) {
      const mounted = await run(host, id, 'grep " /workspace " /proc/mounts');
      assert.match(mounted, /^\/dev\/vdb \/workspace ext4 /);
      const sectors = Number(await run(host, id, 'cat /sys/block/vdb/size'));
      assert.equal(sectors * 512, mib * 1024 * 1024, `${id}'s kernel sees its own volume's size`);
    }
  });

  test("the template's files are root's, private, and open in no tenant's QEMU", async () => {
    const root = join(host.dataDir, 'templates');
    const [name] = (await readdir(root)).filter((n) => !n.startsWith('.'));
    for (const file of ['root.qcow2', 'state']) {
      const s = await stat(join(root, name!, file));
      assert.equal(s.uid, 0);
      assert.equal(s.mode & 0o777, 0o400, file);
    }
    for (const id of ['tpl-a', 'tpl-b']) {
      const pid = (await host.vms.get(id)).pid!;
      const open = await Promise.all(
        (await readdir(`/proc/${pid}/fd`)).map((fd) => readlink(`/proc/${pid}/fd/${fd}`).catch(() => '')),
      );
      const maps = await readFile(`/proc/${pid}/maps`, 'utf8');
      assert.ok(!open.some((p) => p.includes('/templates/')), `${id}'s QEMU holds a template file: ${open}`);
      assert.ok(!maps.includes('/templates/'), `${id}'s QEMU maps a template file`);
    }
  });

  test('a template whose state was altered is not used: one rebuild serves two concurrent first starts', async () => {
    const root = join(host.dataDir, 'templates');
    const [name] = (await readdir(root)).filter((n) => !n.startsWith('.'));
    const before = JSON.parse(await readFile(join(root, name!, 'template.json'), 'utf8'));
    // What an attacker with the host's disk would do: change the memory every tenant starts from.
    const f = await open(join(root, name!, 'state'), 'r+');
    try {
      await f.write(Buffer.from('tampered'), 0, 8, 4096);
    } finally {
      await f.close();
    }
    const ids = ['tpl-c', 'tpl-d'];
    for (const id of ids) await host.vms.create({ id, image, memoryMiB: MEMORY_MIB, diskMiB: 64 });
    await Promise.all(ids.map((id) => host.vms.start(id)));
    const after = JSON.parse(await readFile(join(root, name!, 'template.json'), 'utf8'));
    assert.notEqual(after.createdAt, before.createdAt, 'the template was built again');
    const seen = await Promise.all(
      ids.map((id) => run(host, id, 'hostname; cat /proc/cmdline /proc/sys/kernel/random/boot_id')),
    );
    for (const [i, out] of seen.entries()) {
      const [hostname, cmdline] = out.split('\n');
      assert.equal(hostname, ids[i]);
      assert.match(cmdline!, /warren\.template=1/, `${ids[i]} started from the template`);
    }
    // The kernel makes boot_id at its first read, which the template never did: each has its own.
    assert.notEqual(seen[0]!.split('\n')[2], seen[1]!.split('\n')[2]);
    // The guest agent process is the template's: the same start time means the same build.
    const started = await Promise.all(
      ids.map(async (id) => (await (await host.vms.guest(id)).health()).agentStartedAt),
    );
    assert.equal(started[0], started[1], 'both started from one build');
    for (const id of ids) await host.vms.destroy(id);
  });

  test('a tenant started from a template survives a restart as a normal VM', async () => {
    await run(host, 'tpl-a', 'echo root-kept > /etc/tpl-kept && sync');
    await host.vms.stop('tpl-a');
    await host.vms.start('tpl-a');
    assert.equal(await run(host, 'tpl-a', 'cat /workspace/mine /etc/tpl-kept'), 'only-a\nroot-kept');
    assert.equal(await run(host, 'tpl-a', 'hostname'), 'tpl-a');
  });

  test('template start is timed against a cold boot', async () => {
    timings.cold = await startTimed(coldHost, 'cold-a');
    assert.equal(await run(coldHost, 'cold-a', 'hostname'), 'cold-a');
    console.log(
      `start to guest-agent ready, ${MEMORY_MIB} MiB: cold boot ${Math.round(timings.cold)} ms, ` +
        `template start ${Math.round(timings.template!)} ms ` +
        `(${(timings.cold / timings.template!).toFixed(1)}x), ` +
        `first start including the template build ${Math.round(timings.firstWithBuild!)} ms`,
    );
    assert.ok(timings.template! < timings.cold, 'a template start is faster than a cold boot');
  });
});
