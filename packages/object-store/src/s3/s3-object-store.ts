import { Readable } from 'node:stream';
import {
  AbortMultipartUploadCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListMultipartUploadsCommand,
  type ListMultipartUploadsCommandOutput,
  ListObjectsV2Command,
  type ListObjectsV2CommandOutput,
  S3Client,
  S3ServiceException,
} from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { WarrenError } from '@warren/protocol';
import type { S3ObjectStoreConfig } from '../config.ts';
import {
  assertAge,
  assertKey,
  assertPrefix,
  checkedBody,
  type IncompleteCollected,
  type ObjectInfo,
  type ObjectStore,
  type PutOptions,
} from '../object-store.ts';

/**
 * Objects in an S3-protocol bucket: AWS, MinIO, GCS's interoperability API. Only the core
 * protocol is used (PutObject, multipart upload, GetObject, HeadObject, DeleteObject,
 * ListObjectsV2, ListMultipartUploads) and the SDK's newer default checksums are turned off, since servers other than
 * AWS reject or mangle them. A PUT or a multipart completion is atomic on S3, so an object is
 * either complete or absent; a failed multipart upload is aborted so its parts do not linger.
 */
export class S3ObjectStore implements ObjectStore {
  readonly name = 's3';
  readonly #client: S3Client;
  readonly #bucket: string;
  readonly #partSize: number;
  readonly #queueSize: number;
  readonly #pageSize: number;

  constructor(config: S3ObjectStoreConfig) {
    this.#bucket = config.bucket;
    this.#partSize = config.partSizeBytes;
    this.#queueSize = config.queueSize;
    this.#pageSize = config.listPageSize;
    this.#client = new S3Client({
      ...(config.endpoint ? { endpoint: config.endpoint } : {}),
      region: config.region,
      forcePathStyle: config.forcePathStyle,
      credentials: { accessKeyId: config.accessKeyId, secretAccessKey: config.secretAccessKey },
      // The standard retry strategy: exponential backoff with jitter, throttling-aware.
      maxAttempts: config.maxAttempts,
      retryMode: 'standard',
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
    });
  }

  async put(key: string, body: Readable | Buffer, options: PutOptions = {}): Promise<void> {
    assertKey(key);
    const source = checkedBody(key, body, options.contentLength);
    const upload = new Upload({
      client: this.#client,
      params: { Bucket: this.#bucket, Key: key, Body: source },
      partSize: this.#partSize,
      queueSize: this.#queueSize,
      leavePartsOnError: false,
    });
    try {
      await upload.done();
    } catch (err) {
      source.destroy();
      throw this.#error(key, err);
    }
  }

  async get(key: string): Promise<Readable> {
    assertKey(key);
    try {
      const out = await this.#client.send(new GetObjectCommand({ Bucket: this.#bucket, Key: key }));
      if (!(out.Body instanceof Readable)) throw new Error('GetObject returned no stream');
      return out.Body;
    } catch (err) {
      throw this.#error(key, err);
    }
  }

  async head(key: string): Promise<{ size: number } | undefined> {
    assertKey(key);
    try {
      const out = await this.#client.send(new HeadObjectCommand({ Bucket: this.#bucket, Key: key }));
      return { size: out.ContentLength ?? 0 };
    } catch (err) {
      if (status(err) === 404) return undefined;
      throw this.#error(key, err);
    }
  }

  async delete(key: string): Promise<void> {
    assertKey(key);
    try {
      await this.#client.send(new DeleteObjectCommand({ Bucket: this.#bucket, Key: key }));
    } catch (err) {
      if (status(err) === 404) return;
      throw this.#error(key, err);
    }
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    assertPrefix(prefix);
    let token: string | undefined;
    do {
      let page: ListObjectsV2CommandOutput;
      try {
        page = await this.#client.send(
          new ListObjectsV2Command({
            Bucket: this.#bucket,
            Prefix: prefix,
            MaxKeys: this.#pageSize,
            ...(token ? { ContinuationToken: token } : {}),
          }),
        );
      } catch (err) {
        throw this.#error(prefix, err);
      }
      for (const item of page.Contents ?? []) {
        if (item.Key !== undefined) yield { key: item.Key, size: item.Size ?? 0 };
      }
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token);
  }

  /**
   * Multipart uploads whose process died before completing or aborting them keep their parts
   * (billed, invisible to ListObjects) until aborted. A server that does not implement the
   * listing (s3rver, some gateways) is reported as `unsupported`: a bucket lifecycle rule
   * (AbortIncompleteMultipartUpload) does the same job there.
   */
  async collectIncomplete(olderThanMs: number): Promise<IncompleteCollected> {
    assertAge(olderThanMs);
    const cutoff = Date.now() - olderThanMs;
    let removed = 0;
    let keyMarker: string | undefined;
    let uploadIdMarker: string | undefined;
    for (;;) {
      let page: ListMultipartUploadsCommandOutput;
      try {
        page = await this.#client.send(
          new ListMultipartUploadsCommand({
            Bucket: this.#bucket,
            MaxUploads: this.#pageSize,
            ...(keyMarker ? { KeyMarker: keyMarker } : {}),
            ...(uploadIdMarker ? { UploadIdMarker: uploadIdMarker } : {}),
          }),
        );
      } catch (err) {
        if (status(err) === 501 || (err as Error)?.name === 'NotImplemented')
          return {
            removed,
            unsupported: `the server does not list multipart uploads (${(err as Error).name})`,
          };
        throw this.#error('(multipart uploads)', err);
      }
      for (const upload of page.Uploads ?? []) {
        if (!upload.Key || !upload.UploadId || !upload.Initiated || upload.Initiated.getTime() >= cutoff)
          continue;
        try {
          await this.#client.send(
            new AbortMultipartUploadCommand({
              Bucket: this.#bucket,
              Key: upload.Key,
              UploadId: upload.UploadId,
            }),
          );
          removed++;
        } catch (err) {
          // Completed or aborted meanwhile.
          if (status(err) !== 404) throw this.#error(upload.Key, err);
        }
      }
      if (!page.IsTruncated) return { removed };
      keyMarker = page.NextKeyMarker;
      uploadIdMarker = page.NextUploadIdMarker;
      if (!keyMarker && !uploadIdMarker) return { removed };
    }
  }

  async close(): Promise<void> {
    this.#client.destroy();
  }

  #error(key: string, err: unknown): WarrenError {
    if (err instanceof WarrenError) return err;
    if (status(err) === 404 && (err as Error).name !== 'NoSuchBucket')
      return new WarrenError('NOT_FOUND', `object ${key} does not exist`, { cause: err });
    // The SDK's messages name the operation and the server's reason, never the credentials.
    const reason = err instanceof Error ? `${err.name}: ${err.message}` : String(err);
    return new WarrenError(
      'OBJECT_STORE_UNAVAILABLE',
      `object ${key}: S3 store failed (${reason.slice(0, 300)})`,
      {
        cause: err,
      },
    );
  }
}

function status(err: unknown): number | undefined {
  return err instanceof S3ServiceException ? err.$metadata.httpStatusCode : undefined;
}
