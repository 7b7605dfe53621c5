import { readFile } from 'node:fs/promises';
import { WarrenError } from '@warren/protocol';

/**
 * `--config FILE=PATH` (repeatable): the tenant's own values for configuration file FILE, read
 * from the JSON object in PATH; `FILE=` (no path) removes the tenant's values for FILE.
 */
export async function configFlags(
  values: string[] | undefined,
): Promise<Record<string, Record<string, unknown> | null> | undefined> {
  if (!values?.length) return undefined;
  const out: Record<string, Record<string, unknown> | null> = {};
  for (const v of values) {
    const eq = v.indexOf('=');
    if (eq <= 0)
      throw new WarrenError(
        'INVALID_ARGUMENT',
        `--config ${v}: use FILE=PATH (a JSON object), or FILE= to remove`,
      );
    const file = v.slice(0, eq);
    const path = v.slice(eq + 1);
    out[file] = path === '' ? null : await readJsonObject(path, `--config ${file}`);
  }
  return out;
}

export async function readJsonObject(path: string, what: string): Promise<Record<string, unknown>> {
  let doc: unknown;
  try {
    doc = JSON.parse(await readFile(path, 'utf8'));
  } catch (e) {
    throw new WarrenError(
      'INVALID_ARGUMENT',
      `${what}: cannot read ${path} as JSON: ${(e as Error).message}`,
    );
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc))
    throw new WarrenError('INVALID_ARGUMENT', `${what}: ${path} must hold a JSON object`);
  return doc as Record<string, unknown>;
}

/** `--rollout 25%` or `--rollout 25`. */
export function rolloutFlag(value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const m = /^(\d{1,3})%?$/.exec(value.trim());
  const n = m ? Number(m[1]) : Number.NaN;
  if (!(n >= 0 && n <= 100))
    throw new WarrenError('INVALID_ARGUMENT', `--rollout ${value}: a percentage 0-100, e.g. 25%`);
  return n;
}
