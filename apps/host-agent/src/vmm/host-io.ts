import { readFile } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';

/**
 * Small pieces every driver that runs QEMU needs, kept here so the drivers do not carry copies.
 */

/** Connects to a unix socket a VMM serves (console, guest channel), or fails after `timeoutMs`. */
export function connectSocket(path: string, timeoutMs: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect(path);
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`no connection to ${path} within ${timeoutMs} ms`));
    }, timeoutMs);
    socket.once('connect', () => {
      clearTimeout(timer);
      resolve(socket);
    });
    socket.once('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
  });
}

/** Host TSC frequency; under TCG the guest's TSC runs at it (see the `tsc_early_khz` kernel argument). */
export async function hostTscKHz(): Promise<number | undefined> {
  const cpuinfo = await readFile('/proc/cpuinfo', 'utf8').catch(() => '');
  const mhz = Number(/^cpu MHz\s*:\s*([\d.]+)/m.exec(cpuinfo)?.[1]);
  return Number.isFinite(mhz) && mhz > 0 ? Math.round(mhz * 1000) : undefined;
}
