import { lifecycleCommand } from '../../lifecycle.ts';

export const usage = 'warren tenant stop NAME [--no-wait] [--json]';

/** Waits until the VM has stopped unless --no-wait; its data volume is kept. */
export const run = lifecycleCommand((warren, name) => warren.tenants.stop(name), 'stopping', usage);
