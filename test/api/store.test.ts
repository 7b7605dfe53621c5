/**
 * The store contract: every dialect runs the same suite (PostgreSQL joins the list when it
 * lands). Migrations, constraints and transactions are what the control plane relies on.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import {
  openStore,
  placeTenant,
  SqliteStoreDialect,
  type Store,
  type StoreDialect,
} from '@warren/control-plane';

const dir = await mkdtemp(join(tmpdir(), 'wstore-'));
const DIALECTS: { label: string; make: () => StoreDialect }[] = [
  { label: 'sqlite (file)', make: () => new SqliteStoreDialect(join(dir, 'contract.db')) },
  { label: 'sqlite (memory)', make: () => new SqliteStoreDialect(':memory:') },
];
after(() => rm(dir, { recursive: true, force: true }));

const host = (id: string, vcpus = 4) => ({
  id,
  name: id.replace('_', '-'),
  address: 'http://127.0.0.1:1',
  agent_token: 'x',
  cap_vcpus: vcpus,
  cap_memory_mib: 4096,
  cap_disk_mib: 10_000,
  alloc_vcpus: 0,
  alloc_memory_mib: 0,
  alloc_disk_mib: 0,
  susp_tenants: 0,
  susp_vcpus: 0,
  susp_memory_mib: 0,
  health: 'ok',
  draining: 0,
  agent_version: 't',
  images: JSON.stringify([{ id: 'sha256:img', profile: 'p', createdAt: '' }]),
  last_heartbeat_at: new Date().toISOString(),
  created_at: new Date().toISOString(),
});

for (const { label, make } of DIALECTS) {
  describe(`store contract: ${label}`, () => {
    let store: Store;
    before(async () => {
      store = await openStore(make());
    });
    after(() => store.close());

    const memory = label.includes('memory') ? 'an in-memory database does not outlive close()' : false;
    test('migrations are idempotent: opening twice keeps data', { skip: memory }, async () => {
      await store.db.insertInto('hosts').values(host('host_0000000000000001')).execute();
      await store.close();
      store = await openStore(make());
      const rows = await store.db.selectFrom('hosts').select('id').execute();
      assert.deepEqual(
        rows.map((r) => r.id),
        ['host_0000000000000001'],
      );
      await store.db.deleteFrom('hosts').execute();
    });

    test('unique names, and a failed transaction leaves nothing behind', async () => {
      await store.db.insertInto('hosts').values(host('host_a')).execute();
      await assert.rejects(
        store.db
          .insertInto('hosts')
          .values({ ...host('host_b'), name: 'host-a' })
          .execute(),
        /UNIQUE/i,
      );
      await assert.rejects(
        store.db.transaction().execute(async (trx) => {
          await trx.insertInto('hosts').values(host('host_c')).execute();
          throw new Error('abort');
        }),
        /abort/,
      );
      assert.equal(
        await store.db.selectFrom('hosts').select('id').where('id', '=', 'host_c').executeTakeFirst(),
        undefined,
      );
    });

    test('allocation can never go negative (check constraint)', async () => {
      await assert.rejects(
        store.db.updateTable('hosts').set({ alloc_vcpus: -1 }).where('id', '=', 'host_a').execute(),
        /CHECK|constraint/i,
      );
    });

    test('placement books capacity and refuses what does not fit', async () => {
      const since = new Date(Date.now() - 60_000).toISOString();
      const req = {
        resources: { vcpus: 2, memoryMiB: 1024, diskMiB: 100 },
        imageId: 'sha256:img',
        healthySince: since,
      };
      await store.db.transaction().execute((trx) => placeTenant(trx, req));
      await store.db.transaction().execute((trx) => placeTenant(trx, req));
      await assert.rejects(
        store.db.transaction().execute((trx) => placeTenant(trx, req)),
        (e: Error & { code?: string }) => e.code === 'NO_CAPACITY',
      );
      const h = await store.db
        .selectFrom('hosts')
        .selectAll()
        .where('id', '=', 'host_a')
        .executeTakeFirstOrThrow();
      assert.equal(h.alloc_vcpus, 4);
      assert.equal(h.alloc_memory_mib, 2048);
    });

    test('audit ids grow monotonically', async () => {
      const ev = {
        at: new Date().toISOString(),
        actor: 'a',
        action: 'x',
        target: 't',
        tenant_id: null,
        result: 'ok',
        status: 200,
        request_id: 'r',
      };
      await store.db.insertInto('audit_events').values(ev).execute();
      await store.db.insertInto('audit_events').values(ev).execute();
      const ids = (await store.db.selectFrom('audit_events').select('id').orderBy('id').execute()).map((r) =>
        Number(r.id),
      );
      assert.equal(ids.length, 2);
      assert.ok(ids[1]! > ids[0]!);
    });

    test('one active session per tenant (partial unique index); sessions go with their tenant', async () => {
      const t = new Date().toISOString();
      await store.db
        .insertInto('tenants')
        .values({
          id: 'ten_0000000000000001',
          name: 'sessions',
          state: 'running',
          desired_state: 'running',
          generation: 1,
          observed_generation: 1,
          image_id: 'sha256:img',
          vcpus: 1,
          memory_mib: 128,
          disk_mib: 16,
          quota_vcpus: 1,
          quota_memory_mib: 128,
          quota_disk_mib: 16,
          host_id: null,
          egress_mode: 'internet',
          egress_allowlist: '[]',
          bandwidth_mbit: null,
          dashboard_port: 8080,
          last_error_code: null,
          last_error_message: null,
          created_at: t,
          updated_at: t,
        })
        .execute();
      const session = (id: string, state: string) => ({
        id,
        tenant_id: 'ten_0000000000000001',
        snapshot: 'session-base',
        state,
        outcome: null,
        error_code: null,
        error_message: null,
        created_at: t,
        expires_at: t,
        ended_at: null,
      });
      await store.db.insertInto('tenant_sessions').values(session('ses_0000000000000001', 'ended')).execute();
      await store.db
        .insertInto('tenant_sessions')
        .values(session('ses_0000000000000002', 'failed'))
        .execute();
      await store.db
        .insertInto('tenant_sessions')
        .values(session('ses_0000000000000003', 'active'))
        .execute();
      for (const state of ['active', 'ending']) {
        await assert.rejects(
          store.db.insertInto('tenant_sessions').values(session('ses_0000000000000004', state)).execute(),
          /UNIQUE/i,
        );
      }
      await store.db
        .updateTable('tenant_sessions')
        .set({ state: 'ended' })
        .where('id', '=', 'ses_0000000000000003')
        .execute();
      await store.db
        .insertInto('tenant_sessions')
        .values(session('ses_0000000000000004', 'ending'))
        .execute();
      await store.db.deleteFrom('tenants').where('id', '=', 'ten_0000000000000001').execute();
      assert.deepEqual(await store.db.selectFrom('tenant_sessions').select('id').execute(), []);
    });
  });
}
