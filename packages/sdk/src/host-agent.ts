/**
 * A client of one host agent's local API: the root-only unix socket the agent serves on its own
 * machine (docs/api.md, "local API"). The CLI's `vm run` and `image list|build` use it, so the
 * agent stays the only process that touches its data directory, under its lock.
 */
import {
  defaultHostAgentSocket,
  type ExecExit,
  ImageBuildProgress,
  type ImageBuildRequest,
  ImageBuildResult,
  parseOrThrow,
  StoredImage,
  TenantExecRequest,
  WarrenError,
} from '@warren/protocol';
import { z } from 'zod';
import { Http, path } from './http.ts';
import { ndjsonObjects } from './ndjson.ts';
import { nodeFetch } from './node-fetch.ts';
import { type ExecInput, type ExecOptions, readExecStream } from './tenants.ts';

export interface HostAgentClientOptions {
  /** The local API's socket; WARREN_HOST_AGENT_SOCKET, else `<WARREN_DATA_DIR>/host-agent.sock`. */
  socketPath?: string;
}

/** The socket a local host agent listens on, from the same variables the agent reads. */
export function hostAgentSocket(env: NodeJS.ProcessEnv = process.env): string {
  return env.WARREN_HOST_AGENT_SOCKET || defaultHostAgentSocket(env.WARREN_DATA_DIR || '/var/lib/warren');
}

/** A VM of the local API, as far as a client needs it (the agent sends more). */
const LocalVm = z.looseObject({ id: z.string(), state: z.string().optional() });
export type LocalVm = z.infer<typeof LocalVm>;

export interface CreateLocalVm {
  id?: string;
  image: string;
  cpus?: number;
  memoryMiB?: number;
  diskMiB?: number;
}

const ImageList = z.object({ images: z.array(StoredImage) });

/** What not reaching the socket means for the operator. */
function explainConnectError(e: NodeJS.ErrnoException): string {
  if (e.code === 'EACCES' || e.code === 'EPERM') {
    return 'permission denied (the socket is root-only; run the command as root)';
  }
  if (e.code === 'ENOENT' || e.code === 'ECONNREFUSED') {
    return 'no host agent listens there (start it: `warren up`, or `npm start`)';
  }
  return e.message;
}

export class HostAgentClient {
  readonly socketPath: string;
  readonly #http: Http;

  constructor(options: HostAgentClientOptions = {}) {
    this.socketPath = options.socketPath ?? hostAgentSocket();
    this.#http = new Http({
      // The host part is never resolved: every request goes to the socket.
      url: 'http://host-agent.local',
      fetch: nodeFetch({ socketPath: this.socketPath, explainConnectError }),
      describe: `the host agent at ${this.socketPath}`,
    });
  }

  async listImages(): Promise<z.output<typeof StoredImage>[]> {
    return (await this.#call(() => this.#http.json(ImageList, 'GET', '/v1/images'))).images;
  }

  /**
   * Builds an image on the agent's host (a cache hit when its recipe was built), calling
   * `onProgress` per step as the agent streams them.
   */
  async buildImage(
    request: ImageBuildRequest,
    options: { onProgress?: (p: ImageBuildProgress) => void; signal?: AbortSignal } = {},
  ): Promise<ImageBuildResult> {
    return this.#call(async () => {
      const res = await this.#http.request('POST', '/v1/images/build', {
        json: request,
        signal: options.signal,
      });
      if (!res.body) throw new WarrenError('INTERNAL', 'the image build answer has no body');
      try {
        for await (const msg of ndjsonObjects(res.body, 'image build')) {
          if (msg.progress !== undefined) {
            options.onProgress?.(parseOrThrow(ImageBuildProgress, msg.progress, 'INTERNAL'));
          } else if (msg.result !== undefined) return parseOrThrow(ImageBuildResult, msg.result, 'INTERNAL');
          else if (msg.error !== undefined) throw WarrenError.fromBody(msg);
        }
      } catch (e) {
        if (e instanceof WarrenError) throw e;
        throw this.#http.unreachable(e, 'during the image build');
      }
      throw new WarrenError(
        'HOST_AGENT_UNREACHABLE',
        `the host agent at ${this.socketPath} ended the image build stream without a result; its log says why`,
      );
    });
  }

  async createVm(request: CreateLocalVm): Promise<LocalVm> {
    return this.#call(() => this.#http.json(LocalVm, 'POST', '/v1/vms', { json: request }));
  }

  /** Boots the VM; resolves once its guest agent answers. */
  async startVm(id: string): Promise<LocalVm> {
    return this.#call(() => this.#http.json(LocalVm, 'POST', path`/v1/vms/${id}/start`));
  }

  /** Runs a command in the VM, streaming its output; aborting `signal` kills the command. */
  async exec(id: string, request: ExecInput, options: ExecOptions = {}): Promise<ExecExit> {
    const stdin =
      request.stdin instanceof Uint8Array ? Buffer.from(request.stdin).toString('base64') : request.stdin;
    const json = parseOrThrow(TenantExecRequest, { ...request, ...(stdin === undefined ? {} : { stdin }) });
    return this.#call(async () => {
      const res = await this.#http.request('POST', path`/v1/vms/${id}/exec`, {
        json,
        signal: options.signal,
      });
      return readExecStream(this.#http, res, options);
    });
  }

  /** Stops the VM at once and removes it with its disks. */
  async destroyVm(id: string): Promise<void> {
    await this.#call(() => this.#http.request('DELETE', path`/v1/vms/${id}`));
  }

  /** The agent's own failures keep their codes; not reaching it says which socket and how to fix it. */
  async #call<T>(fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (e) {
      if (e instanceof WarrenError && e.code === 'API_UNREACHABLE') {
        throw new WarrenError('HOST_AGENT_UNREACHABLE', e.message, { cause: e });
      }
      throw e;
    }
  }
}
