import type { AddressInfo } from 'node:net';
import { WarrenError } from '@warren/protocol';
import type { FastifyInstance } from 'fastify';
import pkg from '../../package.json' with { type: 'json' };
import { createRemoteApi } from '../api/remote.ts';
import { agentListenOf } from '../config.ts';
import type { Host } from '../host.ts';
import { capacityOf } from './capacity.ts';
import { ControlPlaneClient } from './client.ts';
import { loadCredentials, newAgentToken, resolveJoinToken, sameControlPlane } from './credentials.ts';
import { Reconciler } from './reconciler.ts';

export const AGENT_VERSION: string = pkg.version;

export interface ControlLink {
  reconciler: Reconciler;
  api: FastifyInstance;
  /** Base URL of the remote API as advertised to the control plane. */
  address: string;
  /** Stops heartbeating and closes the remote API; VMs keep running. */
  close(options?: { waitForTasks?: boolean }): Promise<void>;
}

/**
 * Joins this host to the control plane in WARREN_CONTROL_PLANE_URL: serves the remote API at
 * WARREN_AGENT_LISTEN and starts the reconciler. Returns once the API listens; joining and
 * heartbeats go on in the background and survive an unreachable control plane.
 */
export async function connectControlPlane(
  host: Host,
  log: (message: string) => void = () => {},
  options: { retryInitialMs?: number; retryMaxMs?: number } = {},
): Promise<ControlLink> {
  const { config } = host;
  const url = config.controlPlaneUrl;
  if (!url) throw new WarrenError('INVALID_ARGUMENT', 'WARREN_CONTROL_PLANE_URL is not set');
  const joinToken = await resolveJoinToken(config);
  const saved = await loadCredentials(config.dataDir);
  const credentials = saved && sameControlPlane(saved.controlPlaneUrl, url) ? saved : undefined;
  if (!credentials && !joinToken) {
    throw new WarrenError(
      'INVALID_ARGUMENT',
      `this host has not joined ${url} yet: set WARREN_JOIN_TOKEN or WARREN_JOIN_TOKEN_FILE`,
    );
  }
  // The token is fixed before joining because the API has to listen (and check it) first.
  const agentToken = credentials?.agentToken ?? newAgentToken();
  let reconciler: Reconciler | undefined;
  const api = createRemoteApi(host, {
    agentToken,
    onWake: () => reconciler?.wake(),
    proxyIdle: { idleMs: config.proxyIdleMs, wsIdleMs: config.proxyWsIdleMs },
    maxStreamsPerVm: config.maxStreamsPerVm,
    ...(config.metricsToken ? { metricsToken: config.metricsToken } : {}),
  });
  const listen = agentListenOf(config);
  await api.listen({ host: listen.host, port: listen.port });
  try {
    const port = (api.server.address() as AddressInfo).port;
    const address =
      config.agentAddress ?? `http://${listen.host.includes(':') ? `[${listen.host}]` : listen.host}:${port}`;
    if (!config.agentAddress && (listen.host === '0.0.0.0' || listen.host === '::'))
      log(`advertising ${address}, which other machines cannot use: set WARREN_AGENT_ADDRESS`);
    reconciler = new Reconciler({
      vms: host.vms,
      store: host.store,
      client: new ControlPlaneClient(url),
      controlPlaneUrl: url,
      dataDir: config.dataDir,
      hostName: config.hostName,
      address,
      agentToken,
      agentVersion: AGENT_VERSION,
      capacity: await capacityOf(config),
      cgroups: host.cgroups.state,
      vmm: host.vms.vmm.name,
      ...(joinToken ? { joinToken } : {}),
      ...(credentials ? { credentials } : {}),
      heartbeatMs: config.heartbeatMs,
      health: {
        intervalMs: config.healthIntervalMs,
        timeoutMs: config.healthTimeoutMs,
        failures: config.healthFailures,
        graceMs: config.healthGraceMs,
      },
      startMaxAttempts: config.startMaxAttempts,
      quarantineMs: config.quarantineMs,
      ...options,
      log,
      onTaskError: (code) => host.metrics?.reconcileErrors.inc({ code }),
    });
    reconciler.start();
    log(`remote API on ${listen.host}:${port} (advertised as ${address}); control plane ${url}`);
    const r = reconciler;
    return {
      reconciler: r,
      api,
      address,
      async close(closeOptions) {
        await r.stop(closeOptions);
        await api.close();
      },
    };
  } catch (e) {
    await api.close();
    throw e;
  }
}
