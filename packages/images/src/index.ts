export * from './builder.ts';
export * from './digest.ts';
export * from './manifest.ts';
export * from './run.ts';
export * from './store.ts';
