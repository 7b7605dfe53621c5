import { connect } from 'node:net';
import type { Duplex } from 'node:stream';
import { WarrenError } from '@warren/protocol';

/**
 * How the host reaches the guest agent. Each VMM driver says which transport its VMs
 * use: QEMU here uses a virtio-serial port backed by a unix socket; Firecracker and
 * hosts with vhost-vsock will use vsock (Firecracker exposes it as a unix socket with a
 * `CONNECT <port>` handshake), without changing anything above this interface.
 */
export interface GuestTransport {
  readonly kind: 'virtio-serial' | 'vsock';
  /** Opens a fresh byte stream to the guest agent. */
  connect(timeoutMs: number): Promise<Duplex>;
}

export class VirtioSerialTransport implements GuestTransport {
  readonly kind = 'virtio-serial';
  readonly socketPath: string;

  constructor(socketPath: string) {
    this.socketPath = socketPath;
  }

  connect(timeoutMs: number): Promise<Duplex> {
    return new Promise((resolve, reject) => {
      const socket = connect(this.socketPath);
      const timer = setTimeout(() => {
        socket.destroy();
        reject(
          new WarrenError('GUEST_UNAVAILABLE', `no connection to ${this.socketPath} within ${timeoutMs} ms`),
        );
      }, timeoutMs);
      socket.once('connect', () => {
        clearTimeout(timer);
        resolve(socket);
      });
      socket.once('error', (err) => {
        clearTimeout(timer);
        reject(new WarrenError('GUEST_UNAVAILABLE', `cannot connect to guest channel: ${err.message}`));
      });
    });
  }
}
