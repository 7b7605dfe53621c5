import type { PlatformEvent } from '@warren/sdk';
import { noOperands } from '../../args.ts';
import { type ConnectionFlags, connect } from '../../connection.ts';

export const usage = 'warren events [--follow] [--tenant NAME] [--types tenant,operation,...] [--json]';

/**
 * The control plane's event stream: the events it still holds (its in-memory buffer), then,
 * with --follow, new ones as they happen until interrupted. --json prints one event per line
 * (NDJSON), as the API sends them.
 */
export async function run(
  args: ConnectionFlags & { follow?: boolean; tenant?: string; types?: string; json?: boolean },
  _rest: string[],
  operands: string[],
): Promise<number> {
  noOperands(operands, usage);
  const client = await connect(args);
  const abort = new AbortController();
  const stop = () => abort.abort();
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  try {
    for await (const e of client.events.stream({
      lastEventId: '0',
      follow: args.follow ?? false,
      signal: abort.signal,
      ...(args.tenant ? { tenant: args.tenant } : {}),
      ...(args.types ? { types: args.types.split(',') } : {}),
    })) {
      process.stdout.write(args.json ? `${JSON.stringify(e)}\n` : `${line(e)}\n`);
    }
  } finally {
    process.off('SIGINT', stop);
    process.off('SIGTERM', stop);
  }
  return 0;
}

/** One line per event: time, type, and what it is about. */
function line(e: PlatformEvent): string {
  const what = (() => {
    switch (e.type) {
      case 'tenant.updated': {
        const t = e.data.tenant;
        const from =
          e.data.previousState && e.data.previousState !== t.state ? `${e.data.previousState} -> ` : '';
        return `${t.name} ${from}${t.state} (desired ${t.desiredState})${t.lastError ? ` ${t.lastError.code}` : ''}`;
      }
      case 'tenant.deleted':
        return e.data.tenantName;
      case 'operation.updated': {
        const o = e.data.operation;
        const progress = o.progress
          ? ` ${Math.floor((100 * o.progress.bytesDone) / Math.max(1, o.progress.bytesTotal))}%`
          : '';
        return `${o.kind} ${o.tenantName} ${o.status}${progress}${o.error ? ` ${o.error.code}` : ''} (${o.id})`;
      }
      case 'host.updated':
        return `${e.data.host.name} ${e.data.host.health}${e.data.host.draining ? ' draining' : ''}`;
      case 'host.removed':
        return e.data.hostName;
      case 'audit.recorded': {
        const a = e.data.event;
        return `${a.actor} ${a.action} ${a.target} ${a.result}`;
      }
      case 'stream.reset':
        return `events may have been missed (${e.data.reason})`;
    }
  })();
  return `${e.at}  ${e.type.padEnd(17)} ${what}`;
}
