import { randomBytes } from 'node:crypto';

/** Random ids with a type prefix (`ten_`, `host_`, `key_`, `op_`, `ses_`): 64 bits, lowercase hex. */
export function newId(prefix: 'ten' | 'host' | 'key' | 'op' | 'ses'): string {
  return `${prefix}_${randomBytes(8).toString('hex')}`;
}

export function now(): string {
  return new Date().toISOString();
}
