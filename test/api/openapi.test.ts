import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { ERROR_CODES } from '@warren/protocol';
import { call, openTestControlPlane, type TestControlPlane } from '../helpers/api.ts';

let t: TestControlPlane;
before(async () => {
  t = await openTestControlPlane();
});
after(() => t?.close());

test('/v1/openapi.json documents every route, its auth and the error codes', async () => {
  const res = await call(t.url, 'GET', '/v1/openapi.json');
  assert.equal(res.status, 200);
  const doc = res.body;
  assert.equal(doc.openapi, '3.1.0');
  for (const r of t.cp.routes) {
    const op = doc.paths[r.url.replace(/:([a-z]+)/g, '{$1}')]?.[r.method.toLowerCase()];
    assert.ok(op, `${r.method} ${r.url} missing from the document`);
    assert.equal(op['x-warren-auth'], r.auth);
    assert.ok(op.summary.length > 10);
    assert.ok(op.responses[String(r.response.status)], `${r.url}: no success response`);
  }
  const create = doc.paths['/v1/tenants'].post.requestBody.content['application/json'].schema;
  assert.deepEqual(create.required, ['name']);
  assert.equal(create.properties.name.maxLength, 63);
  assert.deepEqual(
    doc.components.schemas.Error.properties.error.properties.code.enum,
    Object.keys(ERROR_CODES),
  );
});

test('every response carries a request id, also errors', async () => {
  const res = await fetch(`${t.url}/v1/tenants`);
  assert.match(res.headers.get('x-request-id') ?? '', /^req_[0-9a-f]{16}$/);
  assert.equal(res.status, 401);
});
