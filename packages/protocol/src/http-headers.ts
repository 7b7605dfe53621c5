/**
 * Header handling shared by the two proxies of the dashboard path (control plane and host
 * agent), so both drop exactly the same headers.
 */

/** Headers that describe one connection, not the message: never forwarded (RFC 9110 7.6.1). */
const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authenticate',
  'proxy-authorization',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'http2-settings',
]);

/** Header pairs of a message (Node's rawHeaders), without hop-by-hop headers and those its Connection header names. */
export function endToEndHeaders(rawHeaders: string[]): [string, string][] {
  const named = new Set<string>();
  for (let i = 0; i < rawHeaders.length; i += 2) {
    if (rawHeaders[i]!.toLowerCase() === 'connection') {
      for (const n of rawHeaders[i + 1]!.split(',')) named.add(n.trim().toLowerCase());
    }
  }
  const out: [string, string][] = [];
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = rawHeaders[i]!.toLowerCase();
    if (!HOP_BY_HOP.has(name) && !named.has(name)) out.push([name, rawHeaders[i + 1]!]);
  }
  return out;
}
