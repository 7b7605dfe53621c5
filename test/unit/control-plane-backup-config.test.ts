/**
 * The control plane's backup settings: its object store is named by the same variables as the
 * host agent's and, by default, is the same directory (one machine needs no setting); bad
 * settings stop it at start naming the variable and never echoing a value.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  objectStoreConfigOf as controlPlaneStore,
  loadConfig as loadControlPlaneConfig,
  masterKeyFileOf,
} from '@warren/control-plane';
import { objectStoreConfigOf as hostStore, loadConfig as loadHostConfig } from '@warren/host-agent';

test('with the same environment, the control plane and a host agent open the same object store', () => {
  const envs: Record<string, string>[] = [
    { WARREN_DATA_DIR: '/srv/warren' },
    { WARREN_DATA_DIR: '/srv/warren', WARREN_OBJECT_STORE_DIR: '/mnt/shared/objects' },
    {
      WARREN_OBJECT_STORE: 's3',
      WARREN_S3_ENDPOINT: 'http://127.0.0.1:9000',
      WARREN_S3_REGION: 'auto',
      WARREN_S3_BUCKET: 'warren-backups',
      WARREN_S3_ACCESS_KEY_ID: 'AKIDEXAMPLE',
      WARREN_S3_SECRET_ACCESS_KEY: 's3-secret-value',
      WARREN_S3_FORCE_PATH_STYLE: 'on',
    },
  ];
  for (const env of envs)
    assert.deepEqual(controlPlaneStore(loadControlPlaneConfig(env)), hostStore(loadHostConfig(env)));
  assert.deepEqual(controlPlaneStore(loadControlPlaneConfig({ WARREN_DATA_DIR: '/srv/warren' })), {
    kind: 'fs',
    root: '/srv/warren/objects',
  });
});

test('the master key file: <dataDir>/master.key unless WARREN_MASTER_KEY_FILE names another, absolute', () => {
  assert.equal(
    masterKeyFileOf(loadControlPlaneConfig({ WARREN_DATA_DIR: '/srv/warren' })),
    '/srv/warren/master.key',
  );
  assert.equal(
    masterKeyFileOf(loadControlPlaneConfig({ WARREN_MASTER_KEY_FILE: '/etc/warren/master.key' })),
    '/etc/warren/master.key',
  );
  assert.throws(
    () => loadControlPlaneConfig({ WARREN_MASTER_KEY_FILE: 'master.key' }),
    /WARREN_MASTER_KEY_FILE/,
  );
});

test('bad object store settings are refused naming the variable, never echoing the secret', () => {
  const cases: [Record<string, string>, RegExp][] = [
    [{ WARREN_OBJECT_STORE: 'tape' }, /^WARREN_OBJECT_STORE:/],
    [{ WARREN_OBJECT_STORE_DIR: 'relative/objects' }, /^WARREN_OBJECT_STORE_DIR:/],
    [
      {
        WARREN_OBJECT_STORE: 's3',
        WARREN_S3_ACCESS_KEY_ID: 'k',
        WARREN_S3_SECRET_ACCESS_KEY: 's3-secret-value',
      },
      /^WARREN_S3_BUCKET:/,
    ],
    [
      { WARREN_OBJECT_STORE: 's3', WARREN_S3_BUCKET: 'bkt', WARREN_S3_SECRET_ACCESS_KEY: 's3-secret-value' },
      /^WARREN_S3_ACCESS_KEY_ID:/,
    ],
    [
      {
        WARREN_OBJECT_STORE: 's3',
        WARREN_S3_BUCKET: 'bkt',
        WARREN_S3_ACCESS_KEY_ID: 'k',
        WARREN_S3_ENDPOINT: 'minio:9000',
        WARREN_S3_SECRET_ACCESS_KEY: 's3-secret-value',
      },
      /^WARREN_S3_ENDPOINT:/,
    ],
    [{ WARREN_BACKUP_POLL_MS: '5' }, /^WARREN_BACKUP_POLL_MS:/],
  ];
  for (const [env, message] of cases) {
    assert.throws(
      () => loadControlPlaneConfig(env),
      (e: Error & { code?: string }) => {
        assert.equal(e.code, 'INVALID_ARGUMENT');
        assert.match(e.message, message);
        assert.ok(!e.message.includes('s3-secret-value'), e.message);
        return true;
      },
    );
  }
});
