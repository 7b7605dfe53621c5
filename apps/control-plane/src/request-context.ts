import { AsyncLocalStorage } from 'node:async_hooks';

/**
 * The API request being served, for code far from the route (the agent client sends its id to
 * host agents as `x-request-id`, so one request can be followed through both daemons' logs).
 */
export const requestContext = new AsyncLocalStorage<{ requestId: string }>();
