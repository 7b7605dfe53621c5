import type { Tenant, TenantOperationResponse } from '@warren/protocol';
import type { WarrenClient } from '@warren/sdk';
import { oneOperand } from './args.ts';
import { type ConnectionFlags, connect } from './connection.ts';
import { emit } from './output.ts';

/**
 * Follows a lifecycle operation to its end unless --no-wait, printing the tenant's states on
 * one stderr line as they change (`creating demo: pending… provisioning… running`). --json
 * prints the API's {tenant, operation}, as they are at the end.
 */
export async function follow(
  warren: WarrenClient,
  started: TenantOperationResponse,
  verbing: string,
  args: { json?: boolean; 'no-wait'?: boolean },
): Promise<TenantOperationResponse> {
  const json = args.json ?? false;
  if (args['no-wait']) {
    emit(json, started, () =>
      process.stderr.write(
        `${verbing} ${started.tenant.name}: accepted as operation ${started.operation.id}; follow it with \`warren tenant show ${started.tenant.name}\`\n`,
      ),
    );
    return started;
  }
  let last: string = started.tenant.state;
  let tenant: Tenant = started.tenant;
  process.stderr.write(`${verbing} ${started.tenant.name}: ${last}`);
  try {
    const operation = await warren.operations.wait(started.operation.id, {
      onProgress: (p) => {
        if (p.tenant) tenant = p.tenant;
        const state = p.tenant ? p.tenant.state : 'deleted';
        if (state !== last) process.stderr.write(`… ${state}`);
        last = state;
      },
    });
    process.stderr.write('\n');
    const done = { tenant, operation };
    emit(json, done, () => {});
    return done;
  } catch (e) {
    process.stderr.write('\n');
    throw e;
  }
}

/**
 * `tenant start|stop|delete NAME [--no-wait]`: the three differ only in the SDK call and the
 * word on the progress line, so each command file is one call of this.
 */
export function lifecycleCommand(
  call: (warren: WarrenClient, name: string) => Promise<TenantOperationResponse>,
  verbing: string,
  usage: string,
) {
  return async (
    args: ConnectionFlags & { 'no-wait'?: boolean; json?: boolean },
    _rest: string[],
    operands: string[],
  ): Promise<number> => {
    const name = oneOperand(operands, 'tenant NAME', usage);
    const warren = await connect(args);
    await follow(warren, await call(warren, name), verbing, args);
    return 0;
  };
}
