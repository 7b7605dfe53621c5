/**
 * How the CLI finds the control plane and its token: --api-url/--token, then
 * WARREN_API_URL/WARREN_TOKEN, then the files of a local `warren up` in WARREN_DATA_DIR.
 */
import assert from 'node:assert/strict';
import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { resolveConnection } from '../../packages/cli/src/connection.ts';

const root = await mkdtemp(join(tmpdir(), 'wt-conn-'));
after(() => rm(root, { recursive: true, force: true }));

const LOCAL_URL = 'http://127.0.0.1:7070';

/** A WARREN_DATA_DIR as `warren up` leaves it (or with parts missing). */
async function dataDir(name: string, files: { api?: string; token?: string }): Promise<string> {
  const dir = join(root, name);
  await mkdir(join(dir, 'control-plane'), { recursive: true });
  if (files.api !== undefined) await writeFile(join(dir, 'control-plane', 'api.json'), files.api);
  if (files.token !== undefined) await writeFile(join(dir, 'control-plane', 'admin-token'), files.token);
  return dir;
}

const local = await dataDir('local', {
  api: JSON.stringify({ url: LOCAL_URL, pid: 1 }),
  token: 'admin-secret\n',
});
const empty = await dataDir('empty', {});

test('local discovery: api.json and the admin token file (trailing newline dropped)', async () => {
  assert.deepEqual(await resolveConnection({}, { WARREN_DATA_DIR: local }), {
    url: LOCAL_URL,
    token: 'admin-secret',
    urlSource: 'local',
    tokenSource: 'local',
  });
});

test('env beats local discovery, flags beat env', async () => {
  const env = { WARREN_DATA_DIR: local, WARREN_API_URL: 'http://env:1', WARREN_TOKEN: 'env-token' };
  assert.deepEqual(await resolveConnection({}, env), {
    url: 'http://env:1',
    token: 'env-token',
    urlSource: 'env',
    tokenSource: 'env',
  });
  assert.deepEqual(await resolveConnection({ 'api-url': 'http://flag:2', token: 'flag-token' }, env), {
    url: 'http://flag:2',
    token: 'flag-token',
    urlSource: 'flag',
    tokenSource: 'flag',
  });
  // Each is chosen on its own: a flag URL with the env token.
  const mixed = await resolveConnection({ 'api-url': 'http://flag:2' }, env);
  assert.deepEqual([mixed.url, mixed.token], ['http://flag:2', 'env-token']);
});

test('empty env values count as unset', async () => {
  const c = await resolveConnection({}, { WARREN_DATA_DIR: local, WARREN_API_URL: '', WARREN_TOKEN: '' });
  assert.deepEqual([c.urlSource, c.tokenSource], ['local', 'local']);
});

test('the local admin token goes only to the local control plane', async () => {
  // The URL `warren up` suggests exporting: same server, so the admin token applies.
  const same = await resolveConnection({}, { WARREN_DATA_DIR: local, WARREN_API_URL: `${LOCAL_URL}/` });
  assert.deepEqual([same.token, same.tokenSource], ['admin-secret', 'local']);
  await assert.rejects(
    resolveConnection({ 'api-url': 'https://elsewhere.example' }, { WARREN_DATA_DIR: local }),
    {
      code: 'UNAUTHENTICATED',
      message: /--token.*WARREN_TOKEN/,
    },
  );
});

test('no URL anywhere is a usage error that says what to do', async () => {
  await assert.rejects(resolveConnection({}, { WARREN_DATA_DIR: empty }), {
    code: 'INVALID_ARGUMENT',
    message: /--api-url.*WARREN_API_URL.*warren up/,
  });
  await assert.rejects(resolveConnection({}, { WARREN_DATA_DIR: join(root, 'missing') }), {
    code: 'INVALID_ARGUMENT',
  });
});

test('a malformed api.json is reported with its path', async () => {
  const bad = await dataDir('bad', { api: 'not json' });
  await assert.rejects(resolveConnection({}, { WARREN_DATA_DIR: bad }), { message: /api\.json/ });
});

test('a missing admin token file asks for --token', async () => {
  const noToken = await dataDir('no-token', { api: JSON.stringify({ url: LOCAL_URL }) });
  await assert.rejects(resolveConnection({}, { WARREN_DATA_DIR: noToken }), {
    code: 'UNAUTHENTICATED',
    message: /admin-token.*--token/,
  });
  // A token from env or flag needs no file.
  const c = await resolveConnection({ token: 't' }, { WARREN_DATA_DIR: noToken });
  assert.deepEqual([c.url, c.token], [LOCAL_URL, 't']);
});

test('an admin token file this user cannot read says so', {
  skip: process.getuid?.() === 0 ? 'root reads any file' : false,
}, async () => {
  const locked = await dataDir('locked', { api: JSON.stringify({ url: LOCAL_URL }), token: 'x\n' });
  await chmod(join(locked, 'control-plane', 'admin-token'), 0o000);
  await assert.rejects(resolveConnection({}, { WARREN_DATA_DIR: locked }), {
    code: 'UNAUTHENTICATED',
    message: /permission denied.*root/,
  });
});
