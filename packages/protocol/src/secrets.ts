/**
 * Tenant secrets (`/v1/tenants/{t}/secrets`): values set through the API, kept encrypted in the
 * control plane's store, and delivered by the host agent into the guest as files in a tmpfs at
 * SECRETS_DIR/<NAME>. A value is never returned by the API once set: lists carry names and
 * versions only. The one place each limit is defined.
 */
import { z } from 'zod';
import { TenantId } from './control-api.ts';
import { SECRET_NAME_PATTERN } from './guest-api.ts';
/** The largest value of one secret, in bytes. */
export const MAX_SECRET_VALUE_BYTES = 64 * 1024;
/** The most secrets one tenant may hold (so all of them fit the guest's secrets tmpfs). */
export const MAX_SECRETS_PER_TENANT = 100;

export const SecretName = z
  .string()
  .regex(
    SECRET_NAME_PATTERN,
    'a secret name is 1 to 64 characters of upper-case letters, digits and _, not starting with a digit (like an environment variable: OPENAI_API_KEY)',
  );

/**
 * `PUT /v1/tenants/{t}/secrets/{name}`: the value as UTF-8 text, or base64 with `encoding:
 * base64` for binary values. The size limit applies to the decoded bytes; the error never
 * repeats the value.
 */
export const SetSecretRequest = z
  .strictObject({
    value: z.string().max(Math.ceil(MAX_SECRET_VALUE_BYTES / 3) * 4 + 4, secretTooLarge()),
    encoding: z.enum(['utf8', 'base64']).default('utf8'),
  })
  .refine((r) => secretBytes(r.value, r.encoding).length <= MAX_SECRET_VALUE_BYTES, {
    message: secretTooLarge(),
    path: ['value'],
  })
  .refine((r) => r.encoding !== 'base64' || /^[A-Za-z0-9+/]*={0,2}$/.test(r.value), {
    message: 'a base64 value holds only A-Z, a-z, 0-9, +, / and trailing =',
    path: ['value'],
  });
export type SetSecretRequest = z.input<typeof SetSecretRequest>;

function secretTooLarge(): string {
  return `a secret value is at most ${MAX_SECRET_VALUE_BYTES} bytes; keep larger material (a certificate bundle) in the tenant's volume and a key to it here`;
}

/** The bytes of a value as sent (`utf8` text or `base64`). */
export function secretBytes(value: string, encoding: 'utf8' | 'base64' = 'utf8'): Buffer {
  return encoding === 'base64' ? Buffer.from(value, 'base64') : Buffer.from(value, 'utf8');
}

/** What the API says about a secret: never its value. */
export const SecretInfo = z.object({
  name: SecretName,
  /** 1 when first set, one more at every set after. */
  version: z.number().int().min(1),
  createdAt: z.string(),
  updatedAt: z.string(),
});
export type SecretInfo = z.infer<typeof SecretInfo>;
export const SecretList = z.object({ secrets: z.array(SecretInfo) });
export type SecretList = z.infer<typeof SecretList>;

/**
 * `POST /v1/agent/secrets` (a host agent's token): the secrets of one tenant placed on that
 * host, values in base64. `generation` is the tenant's secrets generation these are (the
 * desired list's `secretsGeneration`).
 */
export const AgentSecretsRequest = z.strictObject({ tenantId: TenantId });
export type AgentSecretsRequest = z.infer<typeof AgentSecretsRequest>;
export const AgentSecrets = z.object({
  tenantId: TenantId,
  generation: z.number().int().min(0),
  secrets: z
    .array(
      z.object({
        name: SecretName,
        version: z.number().int().min(1),
        value: z.string().max(Math.ceil(MAX_SECRET_VALUE_BYTES / 3) * 4 + 4),
      }),
    )
    .max(MAX_SECRETS_PER_TENANT),
});
export type AgentSecrets = z.infer<typeof AgentSecrets>;
