import {
  AgentSecrets,
  AgentSecretsRequest,
  parseOrThrow,
  SecretInfo,
  SecretList,
  SecretName,
  SetSecretRequest,
} from '@warren/protocol';
import type { Api } from '../context.ts';

/**
 * Tenant secrets (`/v1/tenants/{t}/secrets`). A tenant key manages its own tenant's; no route
 * returns a value. The audit event names the secret and its version (`target` is
 * `<tenant>:<NAME>@v<version>`), never the value, and the request body is never logged.
 */
export function secretRoutes(api: Api): void {
  api.route(
    {
      method: 'PUT',
      url: '/v1/tenants/:tenant/secrets/:name',
      auth: 'tenant',
      summary:
        "Set one of the tenant's secrets (a new version when it exists); its host delivers it into the guest at /run/warren/secrets/NAME. The value is never returned",
      body: SetSecretRequest,
      response: { status: 200, schema: SecretInfo },
      audit: 'tenant.secret.set',
    },
    async ({ tenant, params, body, audit }) => {
      const name = parseOrThrow(SecretName, params.name);
      audit.target = `${tenant!.name}:${name}`;
      const set = await api.secrets.set(tenant!, name, body);
      audit.target = `${tenant!.name}:${name}@v${set.version}`;
      return set;
    },
  );

  api.route(
    {
      method: 'GET',
      url: '/v1/tenants/:tenant/secrets',
      auth: 'tenant',
      summary: "List the tenant's secrets: name, version and times, never a value",
      response: { status: 200, schema: SecretList },
    },
    async ({ tenant }) => ({ secrets: await api.secrets.list(tenant!) }),
  );

  api.route(
    {
      method: 'DELETE',
      url: '/v1/tenants/:tenant/secrets/:name',
      auth: 'tenant',
      summary: "Remove one of the tenant's secrets; its file disappears from the guest",
      response: { status: 204 },
      audit: 'tenant.secret.delete',
    },
    async ({ tenant, params, audit }) => {
      const name = parseOrThrow(SecretName, params.name);
      audit.target = `${tenant!.name}:${name}`;
      const removed = await api.secrets.remove(tenant!, name);
      audit.target = `${tenant!.name}:${name}@v${removed.version}`;
    },
  );

  api.route(
    {
      method: 'POST',
      url: '/v1/agent/secrets',
      auth: 'host',
      summary:
        "A host agent fetches the secrets of one tenant placed on it (values in base64) when the desired list's secretsGeneration changed",
      body: AgentSecretsRequest,
      response: { status: 200, schema: AgentSecrets },
    },
    async ({ body, principal }) =>
      api.secrets.forAgent(principal!.kind === 'host' ? principal!.hostId : '', body.tenantId),
  );
}
