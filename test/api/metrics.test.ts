/**
 * The control plane's `/metrics`: refused without a credential (401) and with the wrong kind
 * (403, a tenant key or a host token), served to the admin token and WARREN_METRICS_TOKEN; it
 * parses with a strict Prometheus text-format parser (which is shown to refuse broken input), and
 * moves when the platform does: a request counts, tenants by state, host capacity, execs relayed.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import {
  call,
  convergeAllRunning,
  createTenantWithKey,
  FakeAgent,
  openTestControlPlane,
  type TestControlPlane,
} from '../helpers/api.ts';
import { parsePrometheusText, sampleValue } from '../helpers/prom-text.ts';

let t: TestControlPlane;
let agent: FakeAgent;
const METRICS_TOKEN = randomBytes(32).toString('base64url');

async function scrape(token = t.adminToken) {
  const res = await fetch(`${t.url}/metrics`, { headers: { authorization: `Bearer ${token}` } });
  assert.equal(res.status, 200, await res.clone().text());
  assert.match(res.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
  return parsePrometheusText(await res.text());
}

before(async () => {
  t = await openTestControlPlane({ metricsToken: METRICS_TOKEN });
  agent = await new FakeAgent('metrics-host', { vcpus: 8, memoryMiB: 16384, diskMiB: 100_000 }).start(
    t.url,
    t.joinToken,
  );
});

after(async () => {
  await agent?.stop();
  await t?.close();
});

describe('/metrics on the control plane', () => {
  test('the parser refuses what Prometheus would', () => {
    const good = '# HELP a_total x\n# TYPE a_total counter\na_total{k="v"} 1\n';
    assert.equal(sampleValue(parsePrometheusText(good), 'a_total', { k: 'v' }), 1);
    for (const bad of [
      'a_total 1', // no final newline
      '# TYPE a_total counter\na_total{k="v} 1\n', // unterminated label value
      '# TYPE a_total counter\na_total{1k="v"} 1\n', // bad label name
      '# TYPE a_total counter\na_total one\n', // not a number
      '# TYPE a_total counter\na_total 1\na_total 2\n', // duplicate series
      '# TYPE a_total counter\nb_total 1\n', // sample outside its family
      '# TYPE h histogram\nh_bucket{le="1"} 2\nh_bucket{le="+Inf"} 1\nh_sum 1\nh_count 1\n', // not cumulative
      '# TYPE h histogram\nh_bucket{le="1"} 1\nh_sum 1\nh_count 1\n', // no +Inf bucket
      '# TYPE a_total countr\n', // unknown type
    ]) {
      assert.throws(() => parsePrometheusText(bad), Error, JSON.stringify(bad));
    }
  });

  test('401 without a credential, 403 with the wrong kind, 200 with the admin or metrics token', async () => {
    const { key } = await createTenantWithKey(t, { name: 'm-auth' });
    const get = (token?: string) =>
      fetch(`${t.url}/metrics`, token ? { headers: { authorization: `Bearer ${token}` } } : {});
    assert.equal((await get()).status, 401);
    assert.equal((await get('garbage')).status, 401);
    assert.equal((await get(`wrn_key_${'A'.repeat(43)}`)).status, 401);
    const tenant = await get(key.token);
    assert.equal(tenant.status, 403);
    assert.equal(((await tenant.json()) as { error: { code: string } }).error.code, 'FORBIDDEN');
    assert.equal((await get(agent.token)).status, 403);
    assert.equal((await get(t.joinToken)).status, 403);
    await scrape(t.adminToken);
    await scrape(METRICS_TOKEN);
    // The metrics token is for metrics only.
    assert.equal((await call(t.url, 'GET', '/v1/tenants', { token: METRICS_TOKEN })).status, 401);
  });

  test('moves when the platform does: requests, tenants by state, host capacity, execs', async () => {
    const labels = { method: 'GET', route: '/v1/tenants/:tenant', status: '200' };
    const before = await scrape();
    await createTenantWithKey(t, { name: 'm-run' });
    await convergeAllRunning(t, [agent]);
    for (let i = 0; i < 3; i++) await call(t.url, 'GET', '/v1/tenants/m-run', { token: t.adminToken });
    const exec = await call(t.url, 'POST', '/v1/tenants/m-run/exec', {
      token: t.adminToken,
      body: { argv: ['true'] },
    });
    assert.equal(exec.status, 200);
    const after = await scrape();
    assert.equal(
      sampleValue(after, 'warren_http_requests_total', labels) -
        sampleValue(before, 'warren_http_requests_total', labels),
      3,
    );
    assert.equal(
      sampleValue(after, 'warren_http_request_duration_seconds_count', labels) -
        sampleValue(before, 'warren_http_request_duration_seconds_count', labels),
      3,
    );
    assert.equal(
      sampleValue(after, 'warren_exec_total', { result: 'ok' }) -
        sampleValue(before, 'warren_exec_total', { result: 'ok' }),
      1,
    );
    assert.equal(sampleValue(after, 'warren_tenants', { state: 'running', desired: 'running' }), 2);
    assert.equal(
      sampleValue(after, 'warren_host_capacity', { host: agent.name, resource: 'memory_mib' }),
      16384,
    );
    assert.ok(sampleValue(after, 'warren_host_allocated', { host: agent.name, resource: 'vcpus' }) >= 2);
    assert.equal(sampleValue(after, 'warren_host_healthy', { host: agent.name }), 1);
    const lag = sampleValue(after, 'warren_host_heartbeat_lag_seconds', { host: agent.name });
    assert.ok(lag >= 0 && lag < 60, String(lag));
    // A failure a heartbeat reports counts once, by its code.
    const id = (await call(t.url, 'GET', '/v1/tenants/m-run', { token: t.adminToken })).body.id;
    agent.report.set(id, { state: 'crashed', error: { code: 'VM_EXITED', message: 'gone' } });
    await agent.heartbeat();
    await agent.heartbeat();
    assert.equal(sampleValue(await scrape(), 'warren_reconcile_errors_total', { code: 'VM_EXITED' }), 1);
    agent.report.delete(id);
  });
});
