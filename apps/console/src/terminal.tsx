import { FitAddon } from '@xterm/addon-fit';
import { Terminal as XTerm } from '@xterm/xterm';
import '@xterm/xterm/css/xterm.css';
import { useEffect, useRef, useState } from 'react';

/**
 * An interactive shell in the tenant's VM: xterm.js over a WebSocket to a PTY exec in the guest
 * (`GET /v1/tenants/{t}/terminal`). Binary frames carry the terminal's bytes both ways (UTF-8 as
 * it is); text frames carry control messages (`{"resize": {cols, rows}}` from here,
 * `{"exit": {...}}` or `{"error": {...}}` from the platform).
 */
export function Terminal({ tenant }: { tenant: string }) {
  const box = useRef<HTMLDivElement>(null);
  const [status, setStatus] = useState('connecting…');
  useEffect(() => {
    const term = new XTerm({ convertEol: false, cursorBlink: true, fontSize: 14, scrollback: 2000 });
    const fit = new FitAddon();
    term.loadAddon(fit);
    term.open(box.current!);
    fit.fit();
    const proto = location.protocol === 'https:' ? 'wss' : 'ws';
    const ws = new WebSocket(
      `${proto}://${location.host}/console/api/v1/tenants/${encodeURIComponent(tenant)}/terminal?cols=${term.cols}&rows=${term.rows}`,
    );
    ws.binaryType = 'arraybuffer';
    const enc = new TextEncoder();
    ws.onopen = () => {
      setStatus('connected');
      term.focus();
    };
    ws.onmessage = (e) => {
      if (typeof e.data === 'string') {
        const m = JSON.parse(e.data) as { exit?: { exitCode: number | null }; error?: { message: string } };
        if (m.exit) setStatus(`exited (${m.exit.exitCode})`);
        if (m.error) setStatus(`error: ${m.error.message}`);
      } else term.write(new Uint8Array(e.data as ArrayBuffer));
    };
    ws.onclose = () => setStatus((s) => (s === 'connected' || s === 'connecting…' ? 'disconnected' : s));
    const input = term.onData((d) => {
      if (ws.readyState === WebSocket.OPEN) ws.send(enc.encode(d));
    });
    const resize = term.onResize(({ cols, rows }) => {
      if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ resize: { cols, rows } }));
    });
    const onWindow = () => fit.fit();
    addEventListener('resize', onWindow);
    return () => {
      removeEventListener('resize', onWindow);
      input.dispose();
      resize.dispose();
      ws.close();
      term.dispose();
    };
  }, [tenant]);
  return (
    <section className="panel terminal" aria-label="terminal">
      <p className="muted" role="status" data-testid="terminal-status">
        Terminal: {status}
      </p>
      <div ref={box} className="xterm-box" />
    </section>
  );
}
