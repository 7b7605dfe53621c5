/**
 * Skill bundles and the rules of channels and configuration (issue 14): deterministic packing,
 * what a bundle may hold (hostile archives refused), which tenants a staged rollout reaches,
 * and how configuration files are rendered.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdir, mkdtemp, readdir, readFile, rm, symlink, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { packSkillDir, readSkillBundle, unpackSkillBundle } from '@warren/images/skill-bundle';
import { OPENCLAW_WORKLOAD, parseSkillRef } from '@warren/protocol';
import {
  mergeJson,
  nextChannel,
  renderConfig,
  resolveChannel,
  rolloutBucket,
} from '../../apps/control-plane/src/skills/resolve.ts';

/** A raw ustar header, for archives packSkillDir would never make. */
function tarHeader(name: string, type: string, size = 0, linkname = ''): Buffer {
  const h = Buffer.alloc(512);
  h.write(name, 0, 100);
  h.write('0000644\0', 100);
  h.write('0000000\0', 108);
  h.write('0000000\0', 116);
  h.write(`${size.toString(8).padStart(11, '0')}\0`, 124);
  h.write('00000000000\0', 136);
  h.write('        ', 148);
  h.write(type, 156);
  h.write(linkname, 157, 100);
  h.write('ustar\0', 257);
  h.write('00', 263);
  let sum = 0;
  for (const b of h) sum += b;
  h.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148);
  return h;
}

function archive(...parts: Buffer[]): Buffer {
  return Buffer.concat([...parts, Buffer.alloc(1024)]);
}

function file(name: string, body: string): Buffer[] {
  const data = Buffer.from(body);
  const pad = Buffer.alloc((512 - (data.length % 512)) % 512);
  return [tarHeader(name, '0', data.length), data, pad];
}

describe('skill bundles', () => {
  let work: string;
  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'wskb-'));
  });
  after(() => rm(work, { recursive: true, force: true }));

  test('packing is deterministic: same content, same digest, whatever the mtimes and modes', async () => {
    const a = join(work, 'a');
    const b = join(work, 'b');
    for (const [dir, mode] of [
      [a, 0o700],
      [b, 0o755],
    ] as const) {
      await mkdir(join(dir, 'zeta', 'scripts'), { recursive: true });
      await mkdir(join(dir, 'alpha'), { recursive: true });
      await writeFile(join(dir, 'zeta', 'SKILL.md'), '---\nname: zeta\n---\n');
      await writeFile(join(dir, 'zeta', 'scripts', 'go.sh'), '#!/bin/sh\n', { mode });
      await writeFile(join(dir, 'alpha', 'SKILL.md'), '---\nname: alpha\n---\n', { mode: 0o600 });
      await symlink('../zeta/SKILL.md', join(dir, 'alpha', 'zeta.md'));
    }
    await utimes(join(b, 'zeta', 'SKILL.md'), new Date(2001, 1, 1), new Date(2001, 1, 1));
    const pa = await packSkillDir(a);
    const pb = await packSkillDir(b);
    assert.equal(pa.digest, pb.digest);
    assert.deepEqual(pa.skills, ['alpha', 'zeta']);
    // A standard tar reads it, in sorted order.
    const listed = execFileSync('tar', ['-tvf', '-'], { input: pa.bundle }).toString();
    assert.match(listed, /root\/root|0\/0/);
    assert.deepEqual(execFileSync('tar', ['-tf', '-'], { input: pa.bundle }).toString().trim().split('\n'), [
      'alpha/',
      'alpha/SKILL.md',
      'alpha/zeta.md',
      'zeta/',
      'zeta/SKILL.md',
      'zeta/scripts/',
      'zeta/scripts/go.sh',
    ]);
    const out = join(work, 'out');
    await mkdir(out);
    await unpackSkillBundle(pa.bundle, out);
    assert.equal(await readFile(join(out, 'alpha', 'zeta.md'), 'utf8'), '---\nname: zeta\n---\n');
    assert.deepEqual(await readdir(out), ['alpha', 'zeta']);
  });

  test('a folder without SKILL.md, a top-level file, or an empty package is refused', async () => {
    const d = join(work, 'bad1');
    await mkdir(join(d, 'noskill'), { recursive: true });
    await writeFile(join(d, 'noskill', 'README.md'), 'x');
    await assert.rejects(packSkillDir(d), /skill folder noskill has no SKILL.md/);
    const e = join(work, 'bad2');
    await mkdir(join(e, 'ok'), { recursive: true });
    await writeFile(join(e, 'ok', 'SKILL.md'), 'x');
    await writeFile(join(e, 'stray.txt'), 'x');
    await assert.rejects(packSkillDir(e), /stray.txt is at the top level/);
    const f = join(work, 'bad3');
    await mkdir(f);
    await assert.rejects(packSkillDir(f), /no skill folder/);
  });

  test('a symlink escaping the package and a FIFO are refused when packing', async () => {
    const d = join(work, 'esc');
    await mkdir(join(d, 's'), { recursive: true });
    await writeFile(join(d, 's', 'SKILL.md'), 'x');
    await symlink('../../../etc/passwd', join(d, 's', 'pw'));
    await assert.rejects(packSkillDir(d), /points outside the package/);
    const g = join(work, 'fifo');
    await mkdir(join(g, 's'), { recursive: true });
    await writeFile(join(g, 's', 'SKILL.md'), 'x');
    execFileSync('mkfifo', [join(g, 's', 'pipe')]);
    await assert.rejects(packSkillDir(g), /devices, FIFOs and sockets are refused/);
  });

  test('hostile archives are refused when read: traversal, absolute paths, devices, escaping links', () => {
    const ok = [tarHeader('s/', '5'), ...file('s/SKILL.md', 'x')];
    assert.deepEqual(readSkillBundle(archive(...ok)).skills, ['s']);
    assert.throws(() => readSkillBundle(archive(...ok, ...file('s/../../evil', 'x'))), /\.\. segment/);
    assert.throws(() => readSkillBundle(archive(...ok, ...file('/etc/evil', 'x'))), /not a relative path/);
    assert.throws(
      () => readSkillBundle(archive(...ok, tarHeader('s/dev', '3'))),
      /only files, directories and symlinks/,
    );
    assert.throws(
      () => readSkillBundle(archive(...ok, tarHeader('s/hard', '1', 0, 's/SKILL.md'))),
      /tar type/,
    );
    assert.throws(() => readSkillBundle(archive(...ok, tarHeader('s/l', '2', 0, '/etc/passwd'))), /outside/);
    assert.throws(() => readSkillBundle(archive(...ok, tarHeader('s/l', '2', 0, '../../x'))), /outside/);
    assert.throws(() => readSkillBundle(archive(...ok, ...file('s/SKILL.md', 'y'))), /appears twice/);
    assert.throws(() => readSkillBundle(archive(...file('t/SKILL.md', 'x'))), /without\) its directory/);
    // Cut short, bad checksum, not a tar at all.
    assert.throws(() => readSkillBundle(Buffer.concat(ok)), /end marker/);
    const bad = archive(...ok);
    bad[0] = 'x'.charCodeAt(0);
    assert.throws(() => readSkillBundle(bad), /checksum/);
    assert.throws(() => readSkillBundle(Buffer.from('hello')), /not a tar/);
  });
});

describe('skill references and channels', () => {
  test('name@version and name@channel are told apart by their first character', () => {
    assert.deepEqual(parseSkillRef('tools@1.2.0'), { name: 'tools', version: '1.2.0' });
    assert.deepEqual(parseSkillRef('tools@stable'), { name: 'tools', channel: 'stable' });
    assert.equal(parseSkillRef('tools'), undefined);
    assert.equal(parseSkillRef('Tools@1'), undefined);
    assert.equal(parseSkillRef('tools@../x'), undefined);
  });

  test('a staged rollout reaches about its percentage, and raising it keeps the first stage', () => {
    const tenants = Array.from({ length: 2000 }, (_, i) => `ten_${i.toString(16).padStart(16, '0')}`);
    let ch = nextChannel(undefined, { version: '1.0.0' });
    assert.deepEqual(ch, {
      version: '1.0.0',
      previousVersion: null,
      rolloutPercent: 100,
      generation: 1,
      apply: 'next-start',
    });
    ch = nextChannel(ch, { version: '2.0.0', rolloutPercent: 25 });
    assert.equal(ch.previousVersion, '1.0.0');
    assert.equal(ch.generation, 2);
    const first = new Set(tenants.filter((t) => resolveChannel(ch, t, 'tools', 'stable') === '2.0.0'));
    assert.ok(first.size > 2000 * 0.2 && first.size < 2000 * 0.3, `${first.size} of 2000 at 25%`);
    for (const t of tenants) assert.ok(['1.0.0', '2.0.0'].includes(resolveChannel(ch, t, 'tools', 'stable')));
    ch = nextChannel(ch, { version: '2.0.0', rolloutPercent: 50 });
    assert.equal(ch.generation, 2);
    const second = new Set(tenants.filter((t) => resolveChannel(ch, t, 'tools', 'stable') === '2.0.0'));
    for (const t of first) assert.ok(second.has(t), `${t} left the rollout when it grew`);
    assert.ok(second.size > 2000 * 0.45 && second.size < 2000 * 0.55);
    ch = nextChannel(ch, { version: '2.0.0', rolloutPercent: 100 });
    assert.equal(ch.previousVersion, null);
    for (const t of tenants) assert.equal(resolveChannel(ch, t, 'tools', 'stable'), '2.0.0');
  });

  test('replacing a rollout midway keeps the rest on the version everyone had', () => {
    let ch = nextChannel(undefined, { version: '1.0.0', apply: 'now' });
    ch = nextChannel(ch, { version: '2.0.0', rolloutPercent: 10 });
    ch = nextChannel(ch, { version: '2.0.1', rolloutPercent: 10 });
    assert.equal(ch.previousVersion, '1.0.0');
    assert.equal(ch.generation, 3);
    assert.equal(ch.apply, 'now');
    // Rolling back to what everyone has is complete at once.
    ch = nextChannel(ch, { version: '1.0.0', rolloutPercent: 10 });
    assert.equal(ch.previousVersion, null);
    assert.equal(ch.rolloutPercent, 100);
  });

  test('the bucket depends on the generation, so a new version draws a new first stage', () => {
    const t = 'ten_00000000000000aa';
    const buckets = new Set(Array.from({ length: 20 }, (_, g) => rolloutBucket(t, 'tools', 'stable', g)));
    assert.ok(buckets.size > 5);
    assert.equal(rolloutBucket(t, 'tools', 'stable', 3), rolloutBucket(t, 'tools', 'stable', 3));
  });
});

describe('configuration rendering', () => {
  test('JSON merge: objects merge, arrays and scalars replace, null removes', () => {
    assert.deepEqual(mergeJson({ a: { b: 1, c: [1, 2] }, d: 1 }, { a: { c: [3], e: 2 }, d: null }), {
      a: { b: 1, c: [3], e: 2 },
    });
  });

  test('openclaw.json gets the skill mount paths after any the template lists', () => {
    const out = renderConfig({
      defaults: {},
      templates: new Map([
        [
          'openclaw.json',
          { version: 2, body: { skills: { load: { extraDirs: ['/srv/x'] } }, gateway: { port: 1 } } },
        ],
      ]),
      values: { 'openclaw.json': { gateway: { port: 2 } }, 'extra.json': { a: 1 } },
      skillNames: ['tools', 'more'],
      maxFileBytes: 1024,
    });
    assert.ok(out);
    assert.deepEqual(
      out.files.map((f) => f.name),
      ['extra.json', 'openclaw.json'],
    );
    const doc = JSON.parse(out.files[1]!.content);
    assert.deepEqual(doc.skills.load.extraDirs, [
      '/srv/x',
      '/opt/warren/skills/tools',
      '/opt/warren/skills/more',
    ]);
    assert.equal(doc.gateway.port, 2);
    assert.match(out.version, /^sha256:[0-9a-f]{12}$/);
    assert.equal(
      renderConfig({ defaults: {}, templates: new Map(), values: {}, skillNames: [], maxFileBytes: 1024 }),
      null,
    );
    assert.throws(
      () =>
        renderConfig({
          defaults: {},
          templates: new Map(),
          values: { 'a.json': { x: 'y'.repeat(2000) } },
          skillNames: [],
          maxFileBytes: 1024,
        }),
      /larger than 1024 bytes/,
    );
  });

  test('a workload’s platform defaults render under the template and the tenant’s values, which win', () => {
    const origin = 'https://mybot.dash.example';
    const defaults = { [OPENCLAW_WORKLOAD.configFile]: OPENCLAW_WORKLOAD.configDefaults(origin) };
    const only = renderConfig({
      defaults,
      templates: new Map(),
      values: {},
      skillNames: [],
      maxFileBytes: 4096,
    });
    assert.ok(only);
    assert.deepEqual(JSON.parse(only.files[0]!.content), {
      gateway: { controlUi: { allowedOrigins: [origin] } },
    });
    const over = renderConfig({
      defaults,
      templates: new Map([
        ['openclaw.json', { version: 1, body: { gateway: { controlUi: { basePath: '/x' } } } }],
      ]),
      values: { 'openclaw.json': { gateway: { controlUi: { allowedOrigins: ['https://other.example'] } } } },
      skillNames: [],
      maxFileBytes: 4096,
    });
    assert.ok(over);
    assert.deepEqual(JSON.parse(over.files[0]!.content).gateway.controlUi, {
      allowedOrigins: ['https://other.example'],
      basePath: '/x',
    });
    // A tenant may drop the file altogether.
    assert.equal(
      renderConfig({
        defaults,
        templates: new Map(),
        values: { 'openclaw.json': null },
        skillNames: [],
        maxFileBytes: 4096,
      }),
      null,
    );
  });
});
