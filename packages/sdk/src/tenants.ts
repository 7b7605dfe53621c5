import { Readable } from 'node:stream';
import {
  CreateTenantRequest,
  type ExecExit,
  ExecExit as ExecExitSchema,
  FileQuery,
  FileWritten,
  ListTenantsQuery,
  parseOrThrow,
  Tenant,
  TenantExecRequest,
  TenantOperationResponse,
  UpdateTenantRequest,
  WarrenError,
} from '@warren/protocol';
import { z } from 'zod';
import { type Http, path } from './http.ts';
import { ndjsonObjects } from './ndjson.ts';

/**
 * The exec request as the API takes it, except that stdin may also be raw bytes: the SDK
 * base64-encodes them. A string is base64 already, as on the wire.
 */
export type ExecInput = Omit<TenantExecRequest, 'stdin'> & { stdin?: string | Uint8Array };

export interface ExecOptions {
  /** Each chunk of the command's stdout, as it arrives. */
  onStdout?: (chunk: Buffer) => void;
  onStderr?: (chunk: Buffer) => void;
  /** Aborting drops the connection, which makes the control plane kill the command. */
  signal?: AbortSignal;
}

export type FileData = Buffer | Uint8Array | NodeJS.ReadableStream | AsyncIterable<Uint8Array>;

const TenantList = z.object({ tenants: z.array(Tenant) });
// Lenient on extra fields so a newer control plane can add to the exit record.
const ExitLine = z.object(ExecExitSchema.shape);

export class Tenants {
  readonly #http: Http;

  constructor(http: Http) {
    this.#http = http;
  }

  /** Asks for a new tenant; the returned operation finishes when its VM runs. */
  async create(request: CreateTenantRequest): Promise<TenantOperationResponse> {
    const json = parseOrThrow(CreateTenantRequest, request);
    return this.#http.json(TenantOperationResponse, 'POST', '/v1/tenants', { json });
  }

  async list(query: ListTenantsQuery = {}): Promise<Tenant[]> {
    const q = parseOrThrow(ListTenantsQuery, query);
    return (await this.#http.json(TenantList, 'GET', '/v1/tenants', { query: q })).tenants;
  }

  /** `ref` is a tenant id (ten_…) or name. */
  async get(ref: string): Promise<Tenant> {
    return this.#http.json(Tenant, 'GET', path`/v1/tenants/${ref}`);
  }

  /**
   * Changes settings that need no new VM: `idleTimeout` (`15m`, `never`, null for the platform
   * default; a tenant key may change its own), `network` and `dashboardPort` (admin only).
   */
  async update(ref: string, request: UpdateTenantRequest): Promise<Tenant> {
    const json = parseOrThrow(UpdateTenantRequest, request);
    return this.#http.json(Tenant, 'PATCH', path`/v1/tenants/${ref}`, { json });
  }

  /** Starts the VM; a suspended tenant is an ordinary start (its host wakes it). */
  async start(ref: string): Promise<TenantOperationResponse> {
    return this.#http.json(TenantOperationResponse, 'POST', path`/v1/tenants/${ref}/start`);
  }

  async stop(ref: string): Promise<TenantOperationResponse> {
    return this.#http.json(TenantOperationResponse, 'POST', path`/v1/tenants/${ref}/stop`);
  }

  async delete(ref: string): Promise<TenantOperationResponse> {
    return this.#http.json(TenantOperationResponse, 'DELETE', path`/v1/tenants/${ref}`);
  }

  /**
   * Runs a command in the tenant's VM. Output is delivered while it streams; resolves with
   * the exit record once the command ends (a non-zero exit code is not an error).
   */
  async exec(ref: string, request: ExecInput, options: ExecOptions = {}): Promise<ExecExit> {
    const stdin =
      request.stdin instanceof Uint8Array ? Buffer.from(request.stdin).toString('base64') : request.stdin;
    const json = parseOrThrow(TenantExecRequest, { ...request, ...(stdin === undefined ? {} : { stdin }) });
    const res = await this.#http.request('POST', path`/v1/tenants/${ref}/exec`, {
      json,
      signal: options.signal,
    });
    return readExecStream(this.#http, res, options);
  }

  /** Writes a file in the tenant's VM, streaming `data`; `filePath` is absolute. */
  async upload(
    ref: string,
    filePath: string,
    data: FileData,
    options: { signal?: AbortSignal } = {},
  ): Promise<z.output<typeof FileWritten>> {
    const query = parseOrThrow(FileQuery, { path: filePath });
    const body = data instanceof Uint8Array ? data : (data as AsyncIterable<Uint8Array>);
    return this.#http.json(FileWritten, 'PUT', path`/v1/tenants/${ref}/files`, {
      query,
      body,
      signal: options.signal,
    });
  }

  /** Reads a file from the tenant's VM as a stream; API errors reject before any data. */
  async download(ref: string, filePath: string, options: { signal?: AbortSignal } = {}): Promise<Readable> {
    const query = parseOrThrow(FileQuery, { path: filePath });
    const res = await this.#http.request('GET', path`/v1/tenants/${ref}/files`, {
      query,
      signal: options.signal,
    });
    const body = res.body;
    if (!body) return Readable.from([]);
    const http = this.#http;
    // A connection lost mid-file surfaces as a WarrenError on the stream, like any other failure.
    async function* chunks() {
      try {
        for await (const chunk of body!) yield Buffer.from(chunk);
      } catch (e) {
        if ((e as Error)?.name === 'AbortError') {
          throw new WarrenError('CONFLICT', 'download cancelled by the caller', { cause: e });
        }
        throw http.unreachable(e, `while downloading ${filePath}`);
      }
    }
    return Readable.from(chunks(), { objectMode: false });
  }

  async downloadBuffer(
    ref: string,
    filePath: string,
    options: { signal?: AbortSignal } = {},
  ): Promise<Buffer> {
    const parts: Buffer[] = [];
    for await (const chunk of await this.download(ref, filePath, options)) parts.push(chunk as Buffer);
    return Buffer.concat(parts);
  }
}

/**
 * Reads an exec answer (`{"stdout"}`/`{"stderr"}` lines, then `{"exit"}` or `{"error"}`),
 * delivering output as it streams; resolves with the exit record. Shared with the host agent's
 * local API, whose exec stream is the same.
 */
export async function readExecStream(http: Http, res: Response, options: ExecOptions): Promise<ExecExit> {
  if (!res.body) throw new WarrenError('INTERNAL', 'the exec answer has no body');
  try {
    for await (const msg of ndjsonObjects(res.body, 'exec')) {
      if (typeof msg.stdout === 'string') options.onStdout?.(Buffer.from(msg.stdout, 'base64'));
      else if (typeof msg.stderr === 'string') options.onStderr?.(Buffer.from(msg.stderr, 'base64'));
      // Leaving the loop cancels the rest of the body and frees the connection.
      else if (msg.exit !== undefined) return parseOrThrow(ExitLine, msg.exit, 'INTERNAL');
      else if (msg.error !== undefined) throw WarrenError.fromBody(msg);
      // Anything else is a kind of line newer than this SDK: skipping it keeps old clients working.
    }
  } catch (e) {
    if (e instanceof WarrenError) throw e;
    if ((e as Error)?.name === 'AbortError') {
      throw new WarrenError('CONFLICT', 'exec cancelled by the caller', { cause: e });
    }
    throw http.unreachable(e, 'during exec');
  }
  throw new WarrenError(
    'API_UNREACHABLE',
    `the exec stream from ${http.baseUrl} ended before the command's exit status; the command may still be running`,
  );
}
