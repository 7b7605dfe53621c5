/** The API's shapes as the console reads them (the wire schemas live in @warren/protocol). */
export interface Resources {
  vcpus: number;
  memoryMiB: number;
  diskMiB: number;
}
export interface Host {
  id: string;
  name: string;
  address: string;
  capacity: Resources;
  allocated: Resources;
  health: string;
  draining: boolean;
  agentVersion: string;
  cgroups: string;
  vmm: string;
  tenants: number;
}
export interface Tenant {
  id: string;
  name: string;
  state: string;
  desiredState: string;
  imageId: string;
  vcpus: number;
  memoryMiB: number;
  diskMiB: number;
  hostId: string | null;
  hostHealthy: boolean;
  network: { egress: string; allow?: string[]; [k: string]: unknown };
  dashboardPort: number | null;
  lastError: { code: string; message: string } | null;
  idleTimeout: { setting: string | null; effective: string };
  createdAt: string;
}
export interface Operation {
  id: string;
  kind: string;
  tenantName: string;
  status: string;
  error: { code: string; message: string } | null;
  progress?: { bytesDone: number; bytesTotal: number } | null;
  createdAt: string;
}
export interface AuditEvent {
  id: number;
  at: string;
  actor: string;
  action: string;
  target: string;
  result: string;
  status: number;
}
