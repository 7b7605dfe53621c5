/**
 * What the guest agent needs of the protocol, and nothing that pulls in the control plane's
 * schemas: the guest's bundle is compiled and evaluated on every boot, under TCG at a
 * fraction of the host's speed, so every schema left out here is boot time saved.
 */
export * from './errors.ts';
export * from './frames.ts';
export * from './guest-api.ts';
export * from './validate.ts';
