import type { z } from 'zod';
import { type ErrorCode, WarrenError } from './errors.ts';

/**
 * Parses `value` with `schema` or throws a WarrenError naming the first offending field.
 * `code` lets the host mark invalid guest replies as GUEST_PROTOCOL instead of user error.
 */
export function parseOrThrow<S extends z.ZodType>(
  schema: S,
  value: unknown,
  code: ErrorCode = 'INVALID_ARGUMENT',
): z.output<S> {
  const r = schema.safeParse(value);
  if (r.success) return r.data;
  const issue = r.error.issues[0];
  const where = issue?.path.length ? issue.path.map(String).join('.') : 'value';
  throw new WarrenError(code, `${where}: ${issue?.message ?? 'invalid'}`);
}
