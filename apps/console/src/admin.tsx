import { type ReactNode, useState } from 'react';
import { call } from './api.ts';
import { navigate, useData } from './hooks.ts';
import type { AuditEvent, Host, Operation, Tenant } from './types.ts';

export function Bar({
  label,
  used,
  total,
  unit,
}: {
  label: string;
  used: number;
  total: number;
  unit: string;
}) {
  const pct = total > 0 ? Math.min(100, Math.round((used / total) * 100)) : 0;
  return (
    <div className="bar">
      <span className="bar-label">
        {label} {used}/{total} {unit}
      </span>
      <div
        className={pct > 90 ? 'bar-track full' : 'bar-track'}
        role="progressbar"
        aria-label={`${label} booked`}
        aria-valuenow={pct}
        aria-valuemin={0}
        aria-valuemax={100}
      >
        <div className="bar-fill" style={{ width: `${pct}%` }} />
      </div>
    </div>
  );
}

export function Problem({ error }: { error: Error | undefined }) {
  return error ? (
    <p role="alert" className="error">
      {error.message}
    </p>
  ) : null;
}

export function HostsView() {
  const { data, error, reload } = useData(() => call<{ hosts: Host[] }>('GET', '/v1/hosts'), []);
  const [actionError, setActionError] = useState<Error>();
  return (
    <section>
      <h1>Hosts</h1>
      <Problem error={error ?? actionError} />
      <div className="cards">
        {data?.hosts.map((h) => (
          <article key={h.id} className="card" aria-label={`host ${h.name}`}>
            <h2>
              {h.name} <span className={`badge ${h.health}`}>{h.health}</span>
              {h.draining && <span className="badge draining">draining</span>}
            </h2>
            <p className="muted">
              {h.address} · agent {h.agentVersion} · {h.vmm} · cgroups {h.cgroups} · {h.tenants} tenants
            </p>
            <Bar label="vCPU" used={h.allocated.vcpus} total={h.capacity.vcpus} unit="" />
            <Bar label="Memory" used={h.allocated.memoryMiB} total={h.capacity.memoryMiB} unit="MiB" />
            <Bar label="Disk" used={h.allocated.diskMiB} total={h.capacity.diskMiB} unit="MiB" />
            <button
              type="button"
              onClick={async () => {
                setActionError(undefined);
                try {
                  await call('POST', `/v1/hosts/${encodeURIComponent(h.name)}/drain`, {
                    draining: !h.draining,
                  });
                  reload();
                } catch (e) {
                  setActionError(e as Error);
                }
              }}
            >
              {h.draining ? `Undrain ${h.name}` : `Drain ${h.name}`}
            </button>
          </article>
        ))}
      </div>
      {data && data.hosts.length === 0 && <p>No host has joined yet.</p>}
    </section>
  );
}

export function TenantsView() {
  const tenants = useData(() => call<{ tenants: Tenant[] }>('GET', '/v1/tenants'), []);
  const hosts = useData(() => call<{ hosts: Host[] }>('GET', '/v1/hosts'), []);
  const [search, setSearch] = useState('');
  const [state, setState] = useState('');
  const [host, setHost] = useState('');
  const [name, setName] = useState('');
  const [createError, setCreateError] = useState<Error>();
  const hostName = (id: string | null) => hosts.data?.hosts.find((h) => h.id === id)?.name ?? id ?? '—';
  const agentOf = (id: string | null) => hosts.data?.hosts.find((h) => h.id === id)?.agentVersion ?? '—';
  const shown = (tenants.data?.tenants ?? []).filter(
    (t) =>
      (!search || t.name.includes(search.toLowerCase()) || t.id.includes(search)) &&
      (!state || t.state === state) &&
      (!host || t.hostId === host),
  );
  const states = [...new Set((tenants.data?.tenants ?? []).map((t) => t.state))].sort();
  return (
    <section>
      <h1>Tenants</h1>
      <Problem error={tenants.error ?? createError} />
      <form
        className="row"
        onSubmit={async (e) => {
          e.preventDefault();
          setCreateError(undefined);
          try {
            await call('POST', '/v1/tenants', { name: name.trim() });
            setName('');
            tenants.reload();
          } catch (err) {
            setCreateError(err as Error);
          }
        }}
      >
        <label htmlFor="new-tenant">New tenant</label>
        <input
          id="new-tenant"
          value={name}
          onChange={(e) => setName(e.target.value)}
          placeholder="name"
          required
        />
        <button type="submit">Create</button>
      </form>
      <div className="row filters">
        <label htmlFor="search">Search</label>
        <input id="search" type="search" value={search} onChange={(e) => setSearch(e.target.value)} />
        <label htmlFor="state-filter">State</label>
        <select id="state-filter" value={state} onChange={(e) => setState(e.target.value)}>
          <option value="">any</option>
          {states.map((s) => (
            <option key={s}>{s}</option>
          ))}
        </select>
        <label htmlFor="host-filter">Host</label>
        <select id="host-filter" value={host} onChange={(e) => setHost(e.target.value)}>
          <option value="">any</option>
          {hosts.data?.hosts.map((h) => (
            <option key={h.id} value={h.id}>
              {h.name}
            </option>
          ))}
        </select>
      </div>
      <Table headers={['Name', 'State', 'Host', 'Image', 'Agent', 'Size']}>
        {shown.map((t) => (
          <tr key={t.id} data-tenant={t.name}>
            <td>
              <a
                href={`/console/tenants/${t.name}`}
                onClick={(e) => {
                  e.preventDefault();
                  navigate(`/console/tenants/${t.name}`);
                }}
              >
                {t.name}
              </a>
            </td>
            <td>
              <span className={`badge ${t.state}`} data-testid="state">
                {t.state}
              </span>
              {t.desiredState !== t.state && <span className="muted"> → {t.desiredState}</span>}
            </td>
            <td>{hostName(t.hostId)}</td>
            <td className="mono">{t.imageId.replace(/^sha256:/, '').slice(0, 12)}</td>
            <td>{agentOf(t.hostId)}</td>
            <td>
              {t.vcpus} vCPU · {t.memoryMiB} MiB
            </td>
          </tr>
        ))}
      </Table>
      {tenants.data && shown.length === 0 && <p>No tenant matches.</p>}
    </section>
  );
}

export function OperationsView() {
  const [status, setStatus] = useState('running');
  const { data, error } = useData(
    () =>
      call<{ operations: Operation[] }>(
        'GET',
        `/v1/operations?limit=100${status ? `&status=${status}` : ''}`,
      ),
    [status],
  );
  return (
    <section>
      <h1>Operations</h1>
      <Problem error={error} />
      <div className="row filters">
        <label htmlFor="op-status">Status</label>
        <select id="op-status" value={status} onChange={(e) => setStatus(e.target.value)}>
          <option value="running">in progress</option>
          <option value="succeeded">succeeded</option>
          <option value="failed">failed</option>
          <option value="">any</option>
        </select>
      </div>
      <OperationList operations={data?.operations} />
    </section>
  );
}

export function OperationList({ operations }: { operations: Operation[] | undefined }) {
  if (!operations) return null;
  if (operations.length === 0) return <p>None.</p>;
  return (
    <ul className="list">
      {operations.map((o) => (
        <li key={o.id}>
          <span className={`badge ${o.status}`}>{o.status}</span> {o.kind} <strong>{o.tenantName}</strong>{' '}
          <span className="muted">{new Date(o.createdAt).toLocaleString()}</span>
          {o.progress && (
            <Bar label="progress" used={o.progress.bytesDone} total={o.progress.bytesTotal} unit="bytes" />
          )}
          {o.error && <span className="error"> {o.error.message}</span>}
        </li>
      ))}
    </ul>
  );
}

export function AuditView({ tenant }: { tenant?: string }) {
  const [action, setAction] = useState('');
  const [who, setWho] = useState(tenant ?? '');
  const q = new URLSearchParams({ limit: '100' });
  if (action) q.set('action', action);
  if (who) q.set('tenant', who);
  const { data, error } = useData(
    () => call<{ events: AuditEvent[] }>('GET', `/v1/audit?${q}`),
    [action, who],
  );
  return (
    <section>
      {!tenant && <h1>Audit log</h1>}
      <Problem error={error} />
      <div className="row filters">
        <label htmlFor="audit-action">Action</label>
        <input
          id="audit-action"
          value={action}
          onChange={(e) => setAction(e.target.value.trim())}
          placeholder="tenant.create"
        />
        {!tenant && (
          <>
            <label htmlFor="audit-tenant">Tenant</label>
            <input id="audit-tenant" value={who} onChange={(e) => setWho(e.target.value.trim())} />
          </>
        )}
      </div>
      <Table headers={['When', 'Actor', 'Action', 'Target', 'Result']}>
        {data?.events.map((e) => (
          <tr key={e.id}>
            <td>{new Date(e.at).toLocaleString()}</td>
            <td className="mono">{e.actor}</td>
            <td>{e.action}</td>
            <td>{e.target}</td>
            <td>
              {e.result} ({e.status})
            </td>
          </tr>
        ))}
      </Table>
    </section>
  );
}

/** A scrolling table with column headers; the rows are its children. */
function Table({ headers, children }: { headers: string[]; children: ReactNode }) {
  return (
    <div className="table-wrap">
      <table>
        <thead>
          <tr>
            {headers.map((h) => (
              <th key={h} scope="col">
                {h}
              </th>
            ))}
          </tr>
        </thead>
        <tbody>{children}</tbody>
      </table>
    </div>
  );
}
