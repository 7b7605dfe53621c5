/**
 * Host-agent settings for joining a control plane: defaults that work on one machine, and
 * bad values refused at start with the variable's name (never the value: tokens are secret).
 */
import assert from 'node:assert/strict';
import { chmod, mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { availableParallelism, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import {
  agentListenOf,
  capacityOf,
  defaultHostName,
  loadConfig,
  loadCredentials,
  objectStoreConfigOf,
  resolveJoinToken,
  saveCredentials,
} from '@warren/host-agent';
import { ResourceName } from '@warren/protocol';

const dir = await mkdtemp(join(tmpdir(), 'wt-cfg-'));
after(() => rm(dir, { recursive: true, force: true }));

test('without a control plane the defaults are those of a standalone agent', () => {
  const c = loadConfig({});
  assert.equal(c.controlPlaneUrl, undefined);
  assert.equal(c.joinToken, undefined);
  assert.equal(c.agentListen, '127.0.0.1:7071');
  assert.deepEqual(agentListenOf(c), { host: '127.0.0.1', port: 7071 });
  assert.equal(c.agentAddress, undefined);
  assert.equal(c.heartbeatMs, 2000);
  assert.equal(c.capacityVcpus, availableParallelism());
  assert.equal(c.capacityMemoryMiB, Math.max(512, Math.floor(totalmem() / 2 ** 20) - 1024));
  assert.equal(c.capacityDiskMiB, undefined);
  assert.ok(ResourceName.safeParse(c.hostName).success, c.hostName);
});

test('every setting is read from its variable', () => {
  const c = loadConfig({
    WARREN_CONTROL_PLANE_URL: 'http://cp.internal:8080',
    WARREN_JOIN_TOKEN: ' jt-secret ',
    WARREN_JOIN_TOKEN_FILE: '/etc/warren/join-token',
    WARREN_HOST_NAME: 'rack-1-host-7',
    WARREN_AGENT_LISTEN: '[::1]:0',
    WARREN_AGENT_ADDRESS: 'https://host7.example:7071',
    WARREN_HEARTBEAT_MS: '300',
    WARREN_CAPACITY_VCPUS: '16',
    WARREN_CAPACITY_MEMORY_MIB: '65536',
    WARREN_CAPACITY_DISK_MIB: '204800',
  });
  assert.equal(c.controlPlaneUrl, 'http://cp.internal:8080');
  assert.equal(c.joinToken, 'jt-secret');
  assert.equal(c.joinTokenFile, '/etc/warren/join-token');
  assert.equal(c.hostName, 'rack-1-host-7');
  assert.deepEqual(agentListenOf(c), { host: '::1', port: 0 });
  assert.equal(c.agentAddress, 'https://host7.example:7071');
  assert.equal(c.heartbeatMs, 300);
  assert.equal(c.capacityVcpus, 16);
  assert.equal(c.capacityMemoryMiB, 65536);
  assert.equal(c.capacityDiskMiB, 204800);
});

test('bad values are refused naming the variable, without echoing it', () => {
  const cases: [Record<string, string>, RegExp][] = [
    [{ WARREN_CONTROL_PLANE_URL: 'cp.internal:8080' }, /WARREN_CONTROL_PLANE_URL.*http\(s\) URL/],
    [{ WARREN_CONTROL_PLANE_URL: 'ftp://cp.internal' }, /WARREN_CONTROL_PLANE_URL/],
    [{ WARREN_HOST_NAME: 'Host_1' }, /WARREN_HOST_NAME.*DNS label/],
    [{ WARREN_HOST_NAME: 'a'.repeat(64) }, /WARREN_HOST_NAME.*63/],
    [{ WARREN_AGENT_LISTEN: '7071' }, /WARREN_AGENT_LISTEN.*host:port/],
    [{ WARREN_AGENT_LISTEN: '0.0.0.0:70000' }, /WARREN_AGENT_LISTEN.*0-65535/],
    [{ WARREN_AGENT_ADDRESS: 'not a url' }, /WARREN_AGENT_ADDRESS/],
    [{ WARREN_HEARTBEAT_MS: 'often' }, /WARREN_HEARTBEAT_MS/],
    [{ WARREN_HEARTBEAT_MS: '10' }, /WARREN_HEARTBEAT_MS.*100/],
    [{ WARREN_CAPACITY_VCPUS: '0' }, /WARREN_CAPACITY_VCPUS/],
    [{ WARREN_CAPACITY_MEMORY_MIB: '1.5' }, /WARREN_CAPACITY_MEMORY_MIB/],
    [{ WARREN_CAPACITY_DISK_MIB: '-1' }, /WARREN_CAPACITY_DISK_MIB/],
    [{ WARREN_JOIN_TOKEN_FILE: 'relative/path' }, /WARREN_JOIN_TOKEN_FILE/],
  ];
  for (const [env, message] of cases) {
    assert.throws(
      () => loadConfig(env),
      (e: Error & { code?: string }) => {
        assert.equal(e.code, 'INVALID_ARGUMENT');
        assert.match(e.message, message);
        for (const v of Object.values(env)) if (v.length > 4) assert.ok(!e.message.includes(v), e.message);
        return true;
      },
      JSON.stringify(env),
    );
  }
});

test('the default host name is the hostname reduced to a DNS label', () => {
  assert.equal(defaultHostName('Build-Box.example.com'), 'build-box');
  assert.equal(defaultHostName('WEIRD_name!!x'), 'weird-name-x');
  assert.equal(defaultHostName('--'), 'host');
  assert.equal(defaultHostName('x'.repeat(80)), 'x'.repeat(63));
});

test('the join token file is read when WARREN_JOIN_TOKEN is unset; an empty or missing file is an error', async () => {
  const file = join(dir, 'join-token');
  await writeFile(file, 'jt-from-file\n');
  assert.equal(await resolveJoinToken(loadConfig({ WARREN_JOIN_TOKEN_FILE: file })), 'jt-from-file');
  assert.equal(
    await resolveJoinToken(loadConfig({ WARREN_JOIN_TOKEN_FILE: file, WARREN_JOIN_TOKEN: 'jt-env' })),
    'jt-env',
  );
  assert.equal(await resolveJoinToken(loadConfig({})), undefined);
  await writeFile(file, '\n');
  await assert.rejects(resolveJoinToken(loadConfig({ WARREN_JOIN_TOKEN_FILE: file })), /is empty/);
  await assert.rejects(
    resolveJoinToken(loadConfig({ WARREN_JOIN_TOKEN_FILE: join(dir, 'missing') })),
    /WARREN_JOIN_TOKEN_FILE: cannot read/,
  );
});

test('disk capacity defaults to free space minus a reserve; an explicit value wins', async () => {
  const measured = await capacityOf(loadConfig({}, { dataDir: dir }));
  assert.ok(measured.diskMiB >= 1024);
  const fixed = await capacityOf(loadConfig({ WARREN_CAPACITY_DISK_MIB: '5000' }, { dataDir: dir }));
  assert.deepEqual(fixed.diskMiB, 5000);
});

test('credentials are saved 0600 and replaced atomically', async () => {
  const creds = {
    controlPlaneUrl: 'http://cp:1',
    hostId: 'host_0123456789abcdef',
    token: 'hb-token',
    agentToken: 'a'.repeat(43),
  };
  await saveCredentials(dir, creds);
  // A stale temp file from a crash with loose permissions must not be reused.
  await writeFile(join(dir, 'control-plane.json.tmp'), 'junk');
  await chmod(join(dir, 'control-plane.json.tmp'), 0o644);
  await saveCredentials(dir, { ...creds, token: 'hb-token-2' });
  assert.equal((await stat(join(dir, 'control-plane.json'))).mode & 0o777, 0o600);
  assert.equal((await loadCredentials(dir))?.token, 'hb-token-2');
  await writeFile(join(dir, 'control-plane.json'), '{');
  // A damaged file reads as "not joined": the agent joins again and replaces it.
  assert.equal(await loadCredentials(dir), undefined);
});

test('the object store: fs under the data directory by default, s3 from WARREN_S3_*', () => {
  assert.deepEqual(objectStoreConfigOf(loadConfig({ WARREN_DATA_DIR: '/srv/warren' })), {
    kind: 'fs',
    root: '/srv/warren/objects',
  });
  assert.deepEqual(
    objectStoreConfigOf(loadConfig({ WARREN_OBJECT_STORE: 'fs', WARREN_OBJECT_STORE_DIR: '/backup/warren' })),
    { kind: 'fs', root: '/backup/warren' },
  );
  const s3 = loadConfig({
    WARREN_OBJECT_STORE: 's3',
    WARREN_S3_ENDPOINT: 'https://storage.googleapis.com',
    WARREN_S3_REGION: 'auto',
    WARREN_S3_BUCKET: 'warren-backups',
    WARREN_S3_ACCESS_KEY_ID: 'GOOG1EXAMPLE',
    WARREN_S3_SECRET_ACCESS_KEY: 's3-secret-value',
    WARREN_S3_FORCE_PATH_STYLE: 'on',
  });
  assert.deepEqual(objectStoreConfigOf(s3), {
    kind: 's3',
    endpoint: 'https://storage.googleapis.com',
    region: 'auto',
    bucket: 'warren-backups',
    accessKeyId: 'GOOG1EXAMPLE',
    secretAccessKey: 's3-secret-value',
    forcePathStyle: true,
  });
  const cases: [Record<string, string>, RegExp][] = [
    [{ WARREN_OBJECT_STORE: 'tape' }, /WARREN_OBJECT_STORE\b/],
    [{ WARREN_OBJECT_STORE_DIR: 'relative/objects' }, /WARREN_OBJECT_STORE_DIR/],
    [
      {
        WARREN_OBJECT_STORE: 's3',
        WARREN_S3_ACCESS_KEY_ID: 'k',
        WARREN_S3_SECRET_ACCESS_KEY: 's3-secret-value',
      },
      /WARREN_S3_BUCKET/,
    ],
    [
      { WARREN_OBJECT_STORE: 's3', WARREN_S3_BUCKET: 'bkt', WARREN_S3_SECRET_ACCESS_KEY: 's3-secret-value' },
      /WARREN_S3_ACCESS_KEY_ID/,
    ],
    [
      {
        WARREN_OBJECT_STORE: 's3',
        WARREN_S3_BUCKET: 'bkt',
        WARREN_S3_ACCESS_KEY_ID: 'k',
        WARREN_S3_ENDPOINT: 'minio:9000',
        WARREN_S3_SECRET_ACCESS_KEY: 's3-secret-value',
      },
      /WARREN_S3_ENDPOINT/,
    ],
  ];
  for (const [env, message] of cases) {
    assert.throws(
      () => loadConfig(env),
      (e: Error & { code?: string }) => {
        assert.equal(e.code, 'INVALID_ARGUMENT');
        assert.match(e.message, message);
        assert.ok(!e.message.includes('s3-secret-value'), e.message);
        return true;
      },
      JSON.stringify(env),
    );
  }
});
