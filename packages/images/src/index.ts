export * from './builder.ts';
export * from './digest.ts';
export * from './manifest.ts';
export * from './run.ts';
export { AGENT_FILES, AGENT_LOADER } from './steps/guest-agent.ts';
export { OPENCLAW_GUEST } from './steps/openclaw.ts';
export * from './store.ts';
