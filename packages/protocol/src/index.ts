export * from './control-api.ts';
export * from './errors.ts';
export * from './frames.ts';
export * from './guest-api.ts';
export * from './http-headers.ts';
export * from './local-api.ts';
export * from './snapshots.ts';
export * from './validate.ts';
