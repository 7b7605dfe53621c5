export * from './confinement.ts';
export * from './daemon.ts';
export * from './domain-xml.ts';
export * from './libvirt-driver.ts';
export * from './virsh.ts';
