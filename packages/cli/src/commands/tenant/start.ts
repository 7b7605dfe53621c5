import { lifecycleCommand } from '../../lifecycle.ts';

export const usage = 'warren tenant start NAME [--no-wait] [--json]';

/** Waits until the tenant runs unless --no-wait. */
export const run = lifecycleCommand((warren, name) => warren.tenants.start(name), 'starting', usage);
