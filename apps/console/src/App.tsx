import { useEffect, useState } from 'react';
import { AuditView, HostsView, OperationsView, TenantsView } from './admin.tsx';
import { ApiError, currentSession, type Session, signIn, signOut, subscribe } from './api.ts';
import { LiveContext, navigate, usePath } from './hooks.ts';
import { TenantView } from './tenant.tsx';

export function App() {
  const [session, setSession] = useState<Session | null | undefined>(undefined);
  const [live, setLive] = useState(0);
  const [streaming, setStreaming] = useState(false);
  const path = usePath();

  useEffect(() => {
    currentSession().then(
      (s) => setSession(s ?? null),
      () => setSession(null),
    );
  }, []);

  useEffect(() => {
    if (!session) return;
    let timer: ReturnType<typeof setTimeout> | undefined;
    return subscribe((type) => {
      if (type === 'stream.open') setStreaming(true);
      if (type === 'poll') setStreaming(false);
      // Events come in bursts (a state change, its operation, its audit entry): one reload.
      clearTimeout(timer);
      timer = setTimeout(() => setLive((n) => n + 1), 150);
    });
  }, [session]);

  if (session === undefined) return <p className="loading">Loading…</p>;
  if (session === null) return <SignIn onSignedIn={setSession} />;

  const home = session.kind === 'admin' ? '/console/tenants' : `/console/tenants/${session.tenantName}`;
  const rel = path.replace(/^\/console\/?/, '');
  const parts = rel.split('/').filter(Boolean).map(decodeURIComponent);
  let view: React.ReactNode;
  if (parts[0] === 'tenants' && parts[1]) view = <TenantView name={parts[1]} session={session} />;
  else if (session.kind === 'tenant') view = <TenantView name={session.tenantName ?? ''} session={session} />;
  else if (parts[0] === 'hosts') view = <HostsView />;
  else if (parts[0] === 'operations') view = <OperationsView />;
  else if (parts[0] === 'audit') view = <AuditView />;
  else view = <TenantsView />;

  const links =
    session.kind === 'admin'
      ? [
          ['/console/tenants', 'Tenants'],
          ['/console/hosts', 'Hosts'],
          ['/console/operations', 'Operations'],
          ['/console/audit', 'Audit log'],
        ]
      : [[home, session.tenantName ?? 'Tenant']];
  return (
    <LiveContext.Provider value={live}>
      <header className="top">
        <a
          className="brand"
          href={home}
          onClick={(e) => {
            e.preventDefault();
            navigate(home);
          }}
        >
          Warren
        </a>
        <nav aria-label="Main">
          {links.map(([href, label]) => (
            <a
              key={href}
              href={href}
              aria-current={path.startsWith(href!) ? 'page' : undefined}
              onClick={(e) => {
                e.preventDefault();
                navigate(href!);
              }}
            >
              {label}
            </a>
          ))}
        </nav>
        <span className="who">
          <span className={streaming ? 'dot on' : 'dot'} title={streaming ? 'live' : 'polling'} />
          {session.kind === 'admin' ? 'admin' : `tenant ${session.tenantName}`}
          <button
            type="button"
            onClick={async () => {
              await signOut();
              setSession(null);
              navigate('/console/');
            }}
          >
            Sign out
          </button>
        </span>
      </header>
      <main>{view}</main>
    </LiveContext.Provider>
  );
}

function SignIn({ onSignedIn }: { onSignedIn: (s: Session) => void }) {
  const [token, setToken] = useState('');
  const [error, setError] = useState('');
  const [busy, setBusy] = useState(false);
  return (
    <main className="signin">
      <h1>Warren console</h1>
      <form
        onSubmit={async (e) => {
          e.preventDefault();
          setBusy(true);
          setError('');
          try {
            const s = await signIn(token.trim());
            setToken('');
            onSignedIn(s);
          } catch (err) {
            setError(err instanceof ApiError ? err.message : String(err));
          } finally {
            setBusy(false);
          }
        }}
      >
        <label htmlFor="token">Admin token or tenant key</label>
        <input
          id="token"
          type="password"
          autoComplete="off"
          value={token}
          onChange={(e) => setToken(e.target.value)}
          placeholder="wrn_admin_… or wrn_key_…"
          required
        />
        <button type="submit" disabled={busy}>
          Sign in
        </button>
        {error && (
          <p role="alert" className="error">
            {error}
          </p>
        )}
        <p className="hint">
          The token is exchanged for a session cookie and not kept by this page. Sessions last 12 hours by
          default.
        </p>
      </form>
    </main>
  );
}
