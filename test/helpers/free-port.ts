import { type AddressInfo, createServer } from 'node:net';

/**
 * A TCP port that was free on `host` a moment ago, for a server that must be told its port
 * before it listens (a daemon's config, a forwarder that binds UDP and TCP on the same port).
 */
export async function freePort(host = '127.0.0.1'): Promise<number> {
  const probe = createServer();
  await new Promise<void>((r) => probe.listen(0, host, r));
  const { port } = probe.address() as AddressInfo;
  await new Promise((r) => probe.close(r));
  return port;
}
