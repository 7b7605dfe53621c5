import { ERROR_CODES } from '@warren/protocol';
import { z } from 'zod';
import type { RegisteredRoute } from './route.ts';

/** The OpenAPI 3.1 document, generated from the same zod schemas that validate requests. */
export function openApiDocument(routes: RegisteredRoute[], version: string): unknown {
  const json = (s: z.ZodType) =>
    z.toJSONSchema(s, { io: 'input', unrepresentable: 'any', target: 'draft-2020-12' });
  const paths: Record<string, Record<string, unknown>> = {};
  for (const r of routes) {
    const path = r.url.replace(/:([a-z]+)/g, '{$1}');
    const params = [...r.url.matchAll(/:([a-z]+)/g)].map((m) => ({
      name: m[1],
      in: 'path',
      required: true,
      schema: { type: 'string' },
    }));
    const query: unknown[] = [];
    if (r.query) {
      const schema = json(r.query) as { properties?: Record<string, unknown>; required?: string[] };
      for (const [name, s] of Object.entries(schema.properties ?? {})) {
        query.push({ name, in: 'query', required: schema.required?.includes(name) ?? false, schema: s });
      }
    }
    const success: Record<string, unknown> = { description: 'success' };
    if (r.response.schema) success.content = { 'application/json': { schema: json(r.response.schema) } };
    else if (r.response.contentType) success.content = { [r.response.contentType]: {} };
    paths[path] ??= {};
    paths[path][r.method.toLowerCase()] = {
      summary: r.summary,
      'x-warren-auth': r.auth,
      ...(r.auth === 'public' ? { security: [] } : {}),
      parameters: [...params, ...query],
      ...(r.body && !r.streamBody
        ? { requestBody: { required: true, content: { 'application/json': { schema: json(r.body) } } } }
        : {}),
      ...(r.streamBody
        ? { requestBody: { required: true, content: { 'application/octet-stream': {} } } }
        : {}),
      responses: {
        [String(r.response.status)]: success,
        default: {
          description: 'error',
          content: { 'application/json': { schema: { $ref: '#/components/schemas/Error' } } },
        },
      },
    };
  }
  return {
    openapi: '3.1.0',
    info: { title: 'Warren control plane', version },
    servers: [{ url: '/' }],
    security: [{ bearer: [] }],
    paths,
    components: {
      securitySchemes: {
        bearer: { type: 'http', scheme: 'bearer' },
      },
      schemas: {
        Error: {
          type: 'object',
          required: ['error'],
          properties: {
            error: {
              type: 'object',
              required: ['code', 'message', 'fix'],
              properties: {
                code: { type: 'string', enum: Object.keys(ERROR_CODES) },
                message: { type: 'string' },
                fix: { type: 'string' },
                details: { type: 'object' },
              },
            },
          },
        },
      },
    },
  };
}
