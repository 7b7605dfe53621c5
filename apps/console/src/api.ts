/**
 * The console's only way to the platform: `/console/api/v1/…`, the same routes and scope as
 * `/v1`, authenticated by the HttpOnly session cookie plus the session's CSRF token in a header
 * (docs/security.md). The token used to sign in is sent once and never stored by the page.
 */

export interface Session {
  kind: 'admin' | 'tenant';
  tenantId: string | null;
  tenantName: string | null;
  csrfToken: string;
  expiresAt: string;
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

let csrf = '';

async function errorOf(res: Response): Promise<ApiError> {
  try {
    const body = (await res.json()) as { error?: { code?: string; message?: string } };
    return new ApiError(res.status, body.error?.code ?? 'ERROR', body.error?.message ?? res.statusText);
  } catch {
    return new ApiError(res.status, 'ERROR', res.statusText);
  }
}

export async function signIn(token: string): Promise<Session> {
  const res = await fetch('/console/api/session', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ token }),
  });
  if (!res.ok) throw await errorOf(res);
  const s = (await res.json()) as Session;
  csrf = s.csrfToken;
  return s;
}

export async function currentSession(): Promise<Session | undefined> {
  const res = await fetch('/console/api/session');
  if (res.status === 401) return undefined;
  if (!res.ok) throw await errorOf(res);
  const s = (await res.json()) as Session;
  csrf = s.csrfToken;
  return s;
}

export async function signOut(): Promise<void> {
  await fetch('/console/api/session', { method: 'DELETE', headers: { 'x-warren-csrf': csrf } });
  csrf = '';
}

export async function call<T>(method: string, path: string, body?: unknown): Promise<T> {
  const headers: Record<string, string> = { 'x-warren-csrf': csrf };
  if (body !== undefined) headers['content-type'] = 'application/json';
  const res = await fetch(`/console/api${path}`, {
    method,
    headers,
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
  });
  if (!res.ok) throw await errorOf(res);
  if (res.status === 204) return undefined as T;
  return (await res.json()) as T;
}

/** Runs a command in the tenant's VM and collects its output (NDJSON lines of base64 chunks). */
export async function exec(
  tenant: string,
  argv: string[],
): Promise<{ stdout: string; stderr: string; code: number | null }> {
  const res = await fetch(`/console/api/v1/tenants/${encodeURIComponent(tenant)}/exec`, {
    method: 'POST',
    headers: { 'x-warren-csrf': csrf, 'content-type': 'application/json' },
    body: JSON.stringify({ argv, timeoutMs: 30_000 }),
  });
  if (!res.ok) throw await errorOf(res);
  const text = await res.text();
  const dec = new TextDecoder();
  let stdout = '';
  let stderr = '';
  let code: number | null = null;
  for (const line of text.split('\n')) {
    if (!line) continue;
    const m = JSON.parse(line) as {
      stdout?: string;
      stderr?: string;
      exit?: { exitCode: number | null };
      error?: { message: string; code: string };
    };
    if (m.stdout) stdout += dec.decode(Uint8Array.from(atob(m.stdout), (c) => c.charCodeAt(0)));
    if (m.stderr) stderr += dec.decode(Uint8Array.from(atob(m.stderr), (c) => c.charCodeAt(0)));
    if (m.exit) code = m.exit.exitCode;
    if (m.error) throw new ApiError(500, m.error.code, m.error.message);
  }
  return { stdout, stderr, code };
}

export function fileUrl(tenant: string, path: string): string {
  return `/console/api/v1/tenants/${encodeURIComponent(tenant)}/files?path=${encodeURIComponent(path)}`;
}

export async function download(tenant: string, path: string): Promise<Blob> {
  const res = await fetch(fileUrl(tenant, path), { headers: { 'x-warren-csrf': csrf } });
  if (!res.ok) throw await errorOf(res);
  return await res.blob();
}

/** XMLHttpRequest, for its upload progress events (fetch has none). */
export function upload(
  tenant: string,
  path: string,
  file: Blob,
  onProgress: (done: number, total: number) => void,
): Promise<void> {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open('PUT', fileUrl(tenant, path));
    xhr.setRequestHeader('x-warren-csrf', csrf);
    xhr.setRequestHeader('content-type', 'application/octet-stream');
    xhr.upload.onprogress = (e) => onProgress(e.loaded, e.total);
    xhr.onload = () => {
      if (xhr.status >= 200 && xhr.status < 300) resolve();
      else {
        let msg = xhr.statusText;
        try {
          msg = (JSON.parse(xhr.responseText) as { error: { message: string } }).error.message;
        } catch {}
        reject(new ApiError(xhr.status, 'UPLOAD_FAILED', msg));
      }
    };
    xhr.onerror = () => reject(new ApiError(0, 'UPLOAD_FAILED', 'the upload was cut off'));
    xhr.send(file);
  });
}

/**
 * The platform's event stream (`GET /v1/events`, server-sent events), read with fetch so the
 * CSRF header goes along. Calls `onEvent` with each event's type and data; reconnects with
 * `Last-Event-ID` after a cut. Until the stream exists (or while it fails), `onEvent('poll')`
 * every few seconds keeps the views fresh anyway.
 */
export function subscribe(onEvent: (type: string, data: unknown) => void): () => void {
  let stopped = false;
  let lastId = '';
  let poll: ReturnType<typeof setInterval> | undefined;
  const abort = new AbortController();
  const startPolling = () => {
    poll ??= setInterval(() => onEvent('poll', null), 3000);
  };
  const run = async () => {
    while (!stopped) {
      try {
        const headers: Record<string, string> = { 'x-warren-csrf': csrf, accept: 'text/event-stream' };
        if (lastId) headers['last-event-id'] = lastId;
        const res = await fetch('/console/api/v1/events', { headers, signal: abort.signal });
        if (!res.ok || !res.body) throw new Error(`events: ${res.status}`);
        if (poll) clearInterval(poll);
        poll = undefined;
        onEvent('stream.open', null);
        const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
        let buf = '';
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += value;
          let i = buf.indexOf('\n\n');
          while (i >= 0) {
            const block = buf.slice(0, i);
            buf = buf.slice(i + 2);
            let type = 'message';
            let data = '';
            for (const line of block.split('\n')) {
              if (line.startsWith('id:')) lastId = line.slice(3).trim();
              else if (line.startsWith('event:')) type = line.slice(6).trim();
              else if (line.startsWith('data:')) data += line.slice(5).trim();
            }
            if (data) {
              try {
                onEvent(type, JSON.parse(data));
              } catch {
                onEvent(type, null);
              }
            }
            i = buf.indexOf('\n\n');
          }
        }
      } catch {
        if (stopped) return;
        startPolling();
      }
      await new Promise((r) => setTimeout(r, 3000));
    }
  };
  void run();
  return () => {
    stopped = true;
    abort.abort();
    if (poll) clearInterval(poll);
  };
}
