import { useRef, useState } from 'react';
import { AuditView, OperationList, Problem } from './admin.tsx';
import { ApiError, call, download, exec, type Session, upload } from './api.ts';
import { useData } from './hooks.ts';
import { Terminal } from './terminal.tsx';
import type { Operation, Tenant } from './types.ts';

export function TenantView({ name, session }: { name: string; session: Session }) {
  const path = `/v1/tenants/${encodeURIComponent(name)}`;
  const { data: t, error, reload } = useData(() => call<Tenant>('GET', path), [path]);
  const [actionError, setActionError] = useState<Error>();
  const [terminal, setTerminal] = useState(false);
  if (error instanceof ApiError && error.status === 404) {
    return (
      <section>
        <h1>Not found</h1>
        <p role="alert">There is no tenant {name} that you can see.</p>
      </section>
    );
  }
  if (!t) return <Problem error={error} />;
  const act = async (verb: 'start' | 'stop') => {
    setActionError(undefined);
    try {
      await call('POST', `${path}/${verb}`);
      reload();
    } catch (e) {
      setActionError(e as Error);
    }
  };
  return (
    <section>
      <h1>
        {t.name}{' '}
        <span className={`badge ${t.state}`} data-testid="tenant-state">
          {t.state}
        </span>
      </h1>
      <Problem error={actionError} />
      <p className="muted">
        {t.id} · image <span className="mono">{t.imageId.replace(/^sha256:/, '').slice(0, 12)}</span> ·{' '}
        {t.vcpus} vCPU · {t.memoryMiB} MiB memory · {t.diskMiB} MiB disk · idle timeout{' '}
        {t.idleTimeout.effective}
        {t.desiredState !== t.state && ` · going ${t.desiredState}`}
        {!t.hostHealthy && ' · host not heartbeating'}
      </p>
      {t.lastError && <p className="error">Last error: {t.lastError.message}</p>}
      <div className="row">
        <button type="button" onClick={() => act('start')} disabled={t.desiredState === 'running'}>
          Start
        </button>
        <button type="button" onClick={() => act('stop')} disabled={t.desiredState === 'stopped'}>
          Stop
        </button>
        <DashboardLink tenant={t.name} />
        <button type="button" onClick={() => setTerminal((x) => !x)} disabled={t.state !== 'running'}>
          {terminal ? 'Close terminal' : 'Open terminal'}
        </button>
      </div>
      {terminal && t.state === 'running' && <Terminal tenant={t.name} />}
      <div className="grid">
        <Files tenant={t.name} running={t.state === 'running'} />
        <section className="panel" aria-labelledby="net-h">
          <h2 id="net-h">Network policy</h2>
          <p>
            Egress: <strong>{t.network.egress}</strong>
            {t.network.bandwidthMbit ? ` · ${String(t.network.bandwidthMbit)} Mbit/s` : ''}
          </p>
          {Array.isArray(t.network.allowlist) && t.network.allowlist.length > 0 && (
            <ul className="list">
              {(t.network.allowlist as unknown[]).map((r) => (
                <li key={JSON.stringify(r)} className="mono">
                  {JSON.stringify(r)}
                </li>
              ))}
            </ul>
          )}
          <p className="muted">Dashboard port {t.dashboardPort ?? '—'}</p>
        </section>
        {session.kind === 'admin' && <Keys tenant={t.name} />}
        <Listing
          title="Snapshots"
          path={`${path}/snapshots`}
          pick={(d: { snapshots: { name: string; createdAt: string; memory: unknown }[] }) =>
            d.snapshots.map((s) => [s.name, `${s.name} · ${new Date(s.createdAt).toLocaleString()}`])
          }
        />
        <Listing
          title="Sessions"
          path={`${path}/sessions`}
          pick={(d: { sessions: { id: string; state: string; createdAt: string }[] }) =>
            d.sessions.map((s) => [s.id, `${s.id} · ${s.state} · ${new Date(s.createdAt).toLocaleString()}`])
          }
        />
        <Listing
          title="Backups"
          path={`${path}/backups`}
          pick={(d: { backups: { id: string; state: string; createdAt: string }[] }) =>
            d.backups.map((b) => [b.id, `${b.id} · ${b.state} · ${new Date(b.createdAt).toLocaleString()}`])
          }
        />
        <TenantOperations tenant={t.name} />
      </div>
      <section className="panel" aria-labelledby="audit-h">
        <h2 id="audit-h">Audit log</h2>
        <AuditView tenant={t.name} />
      </section>
    </section>
  );
}

function DashboardLink({ tenant }: { tenant: string }) {
  const [error, setError] = useState('');
  return (
    <>
      <button
        type="button"
        onClick={async () => {
          setError('');
          try {
            const s = await call<{ loginUrl: string }>('POST', '/v1/sessions', { tenant });
            window.open(s.loginUrl, '_blank', 'noopener');
          } catch (e) {
            setError((e as Error).message);
          }
        }}
      >
        Open dashboard
      </button>
      {error && (
        <span role="alert" className="error">
          {error}
        </span>
      )}
    </>
  );
}

function Listing<T>({ title, path, pick }: { title: string; path: string; pick: (d: T) => string[][] }) {
  const { data, error } = useData(() => call<T>('GET', path), [path]);
  const id = `h-${title.toLowerCase()}`;
  return (
    <section className="panel" aria-labelledby={id}>
      <h2 id={id}>{title}</h2>
      {error ? (
        <p className="muted">{error.message}</p>
      ) : (
        <ul className="list">
          {data && pick(data).length === 0 && <li className="muted">None.</li>}
          {data && pick(data).map(([k, label]) => <li key={k}>{label}</li>)}
        </ul>
      )}
    </section>
  );
}

function TenantOperations({ tenant }: { tenant: string }) {
  const { data } = useData(
    () =>
      call<{ operations: Operation[] }>(
        'GET',
        `/v1/operations?tenant=${encodeURIComponent(tenant)}&limit=10`,
      ),
    [tenant],
  );
  return (
    <section className="panel" aria-labelledby="ops-h">
      <h2 id="ops-h">Recent operations</h2>
      <OperationList operations={data?.operations} />
    </section>
  );
}

function Keys({ tenant }: { tenant: string }) {
  const { data, error } = useData(
    () =>
      call<{ keys: { id: string; name: string; prefix: string; lastUsedAt: string | null }[] }>(
        'GET',
        `/v1/keys?tenant=${encodeURIComponent(tenant)}`,
      ),
    [tenant],
  );
  return (
    <section className="panel" aria-labelledby="keys-h">
      <h2 id="keys-h">Keys</h2>
      <Problem error={error} />
      <ul className="list">
        {data?.keys.map((k) => (
          <li key={k.id}>
            <span className="mono">{k.prefix}…</span> {k.name}{' '}
            <span className="muted">
              {k.lastUsedAt ? `used ${new Date(k.lastUsedAt).toLocaleString()}` : 'never used'}
            </span>
          </li>
        ))}
      </ul>
    </section>
  );
}

/** Lists one directory through exec (the files API reads and writes whole files only). */
const LIST_SCRIPT =
  'cd -- "$1" || exit 1; for f in * .[!.]*; do [ -e "$f" ] || [ -L "$f" ] || continue; if [ -d "$f" ]; then printf "d\\t0\\t%s\\n" "$f"; else printf "f\\t%s\\t%s\\n" "$(wc -c < "$f" 2>/dev/null || echo 0)" "$f"; fi; done';

function Files({ tenant, running }: { tenant: string; running: boolean }) {
  const [dir, setDir] = useState('/workspace');
  const [entries, setEntries] = useState<{ kind: string; size: number; name: string }[]>();
  const [status, setStatus] = useState('');
  const [progress, setProgress] = useState<number>();
  const input = useRef<HTMLInputElement>(null);
  const [getPath, setGetPath] = useState('');
  const full = (name: string) => `${dir.replace(/\/$/, '')}/${name}`;
  const list = async (d = dir) => {
    setStatus('');
    try {
      const r = await exec(tenant, ['sh', '-c', LIST_SCRIPT, 'sh', d]);
      if (r.code !== 0) throw new Error(r.stderr.trim() || `cannot list ${d}`);
      setEntries(
        r.stdout
          .split('\n')
          .filter((l) => l.split('\t').length === 3)
          .map((l) => {
            const [kind, size, name] = l.split('\t') as [string, string, string];
            return { kind, size: Number(size), name };
          })
          .sort((a, b) => (a.kind === b.kind ? a.name.localeCompare(b.name) : a.kind === 'd' ? -1 : 1)),
      );
    } catch (e) {
      setStatus((e as Error).message);
    }
  };
  const save = async (path: string) => {
    setStatus('');
    try {
      const blob = await download(tenant, path);
      const a = document.createElement('a');
      a.href = URL.createObjectURL(blob);
      a.download = path.split('/').pop() || 'file';
      a.click();
      setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
      setStatus(`downloaded ${path} (${blob.size} bytes)`);
    } catch (e) {
      setStatus((e as Error).message);
    }
  };
  return (
    <section className="panel files" aria-labelledby="files-h">
      <h2 id="files-h">Files</h2>
      {!running && <p className="muted">Start the tenant to browse its files.</p>}
      <form
        className="row"
        onSubmit={(e) => {
          e.preventDefault();
          void list();
        }}
      >
        <label htmlFor="dir">Directory</label>
        <input id="dir" value={dir} onChange={(e) => setDir(e.target.value)} />
        <button type="submit" disabled={!running}>
          List
        </button>
      </form>
      {entries && (
        <ul className="list" aria-label="directory entries">
          {dir !== '/' && (
            <li>
              <button
                type="button"
                className="link"
                onClick={() => {
                  const up = dir.replace(/\/[^/]+\/?$/, '') || '/';
                  setDir(up);
                  void list(up);
                }}
              >
                ..
              </button>
            </li>
          )}
          {entries.map((f) => (
            <li key={f.name}>
              {f.kind === 'd' ? (
                <button
                  type="button"
                  className="link"
                  onClick={() => {
                    setDir(full(f.name));
                    void list(full(f.name));
                  }}
                >
                  {f.name}/
                </button>
              ) : (
                <>
                  <button type="button" className="link" onClick={() => save(full(f.name))}>
                    {f.name}
                  </button>{' '}
                  <span className="muted">{f.size} bytes</span>
                </>
              )}
            </li>
          ))}
        </ul>
      )}
      <div className="row">
        <label htmlFor="upload">Upload to {dir}</label>
        <input id="upload" ref={input} type="file" disabled={!running} />
        <button
          type="button"
          disabled={!running}
          onClick={async () => {
            const file = input.current?.files?.[0];
            if (!file) return;
            setStatus('');
            setProgress(0);
            try {
              await upload(tenant, full(file.name), file, (done, total) =>
                setProgress(total ? done / total : 1),
              );
              // The listing first: it clears the status line when it starts.
              if (entries) await list();
              setStatus(`uploaded ${full(file.name)} (${file.size} bytes)`);
            } catch (e) {
              setStatus((e as Error).message);
            } finally {
              setProgress(undefined);
            }
          }}
        >
          Upload
        </button>
        {progress !== undefined && (
          <progress aria-label="upload progress" value={Math.round(progress * 100)} max={100} />
        )}
      </div>
      <form
        className="row"
        onSubmit={(e) => {
          e.preventDefault();
          void save(getPath);
        }}
      >
        <label htmlFor="get-path">Download path</label>
        <input
          id="get-path"
          value={getPath}
          onChange={(e) => setGetPath(e.target.value)}
          placeholder="/workspace/file.txt"
        />
        <button type="submit" disabled={!running || !getPath}>
          Download
        </button>
      </form>
      {status && (
        <p role="status" className="status">
          {status}
        </p>
      )}
    </section>
  );
}
