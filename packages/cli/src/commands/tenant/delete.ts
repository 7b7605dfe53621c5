import { lifecycleCommand } from '../../lifecycle.ts';

export const usage = 'warren tenant delete NAME [--no-wait] [--json]';

/** Waits until the VM and its data are gone unless --no-wait. */
export const run = lifecycleCommand((warren, name) => warren.tenants.delete(name), 'deleting', usage);
