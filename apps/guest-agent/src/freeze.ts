/**
 * Freezing the data volume for a backup's point in time: `fsfreeze` flushes the filesystem and
 * holds new writes until the thaw, so the host's disk snapshot taken meanwhile is a clean state.
 *
 * The freeze always ends: a timer thaws the volume when the host's deadline passes, so a host
 * agent that dies mid-backup leaves the tenant's writers waiting at most that long. The timer
 * and the `fsfreeze` it runs use no libuv pool thread (timers and process spawns run on the
 * event loop), so file calls stuck on the frozen volume can never hold the thaw back; and file
 * calls wait for the thaw before they touch any path (`whenThawed`), so they never sit in the
 * pool's few threads blocked in the kernel while the port's reads and writes need them.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { DATA_VOLUME_MOUNT, type FreezeResult, WarrenError } from '@warren/protocol/guest';
import { BUSYBOX, isMounted } from './restore.ts';

const run = promisify(execFile);
/** How long one fsfreeze call may take (the freeze flushes the volume's dirty pages first). */
const FSFREEZE_TIMEOUT_MS = 60_000;

export class VolumeFreeze {
  readonly #mount: string;
  #timer: NodeJS.Timeout | undefined;
  #frozen = false;
  /** Freezes and thaws run one at a time, in the order asked. */
  #queue: Promise<unknown> = Promise.resolve();
  #waiters: (() => void)[] = [];

  constructor(mount = DATA_VOLUME_MOUNT) {
    this.#mount = mount;
  }

  get frozen(): boolean {
    return this.#frozen;
  }

  /** Freezes the volume (or keeps it frozen) until `timeoutMs` from now, or a thaw. */
  freeze(timeoutMs: number): Promise<FreezeResult> {
    const thawAt = Date.now() + timeoutMs;
    // Armed before the freeze runs: however long fsfreeze takes, the thaw comes by the deadline
    // (queued behind the freeze, so it never races it).
    this.#arm(timeoutMs);
    return this.#serial(async () => {
      if (!this.#frozen) {
        // Freezing a directory that is not a mount point would freeze the root filesystem,
        // and with it this agent.
        if (!(await isMounted(this.#mount)))
          throw new WarrenError('FILE_ERROR', `${this.#mount} is not mounted: nothing to freeze`);
        try {
          await this.#fsfreeze('--freeze');
        } catch (e) {
          clearTimeout(this.#timer);
          this.#timer = undefined;
          throw e;
        }
        this.#frozen = true;
      }
      return { thawAt };
    });
  }

  /** Thaws the volume; false when it was not frozen. */
  thaw(): Promise<boolean> {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    return this.#serial(async () => {
      if (!this.#frozen) return false;
      await this.#fsfreeze('--unfreeze');
      this.#frozen = false;
      return true;
    });
  }

  /**
   * Thaws a freeze an earlier agent process left (it died while frozen, and its timer with it);
   * run once at start. Not frozen is the usual answer, and not an error.
   */
  async thawLeftover(): Promise<void> {
    if (!(await isMounted(this.#mount).catch(() => false))) return;
    await run(BUSYBOX, ['fsfreeze', '--unfreeze', this.#mount], { timeout: FSFREEZE_TIMEOUT_MS }).catch(
      () => {},
    );
  }

  /** Resolves at once when the volume is not frozen, else at the thaw. */
  whenThawed(): Promise<void> {
    if (!this.#frozen && !this.#timer) return Promise.resolve();
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  #arm(timeoutMs: number): void {
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      void this.thaw().catch(() => {});
    }, timeoutMs);
  }

  #serial<T>(fn: () => Promise<T>): Promise<T> {
    const next = this.#queue.catch(() => {}).then(fn);
    this.#queue = next;
    return next.finally(() => {
      // Thawed, or a freeze that failed: file calls waiting for the volume go on.
      if (!this.#frozen && !this.#timer) for (const w of this.#waiters.splice(0)) w();
    });
  }

  async #fsfreeze(flag: '--freeze' | '--unfreeze'): Promise<void> {
    try {
      await run(BUSYBOX, ['fsfreeze', flag, this.#mount], { timeout: FSFREEZE_TIMEOUT_MS });
    } catch (e) {
      const err = e as { stderr?: string; message: string };
      throw new WarrenError(
        'FILE_ERROR',
        `fsfreeze ${flag} ${this.#mount} failed: ${(err.stderr || err.message).trim()}`,
      );
    }
  }
}
