import { WarrenError } from '@warren/protocol';

/**
 * The exclusion between GC and backups (restic's prune lock, in memory): GC starts only when
 * no backup or restore runs, and no backup starts while GC runs, so a backup never counts on a
 * chunk GC is deleting. A restore does not start while GC runs either: it reads only chunks of
 * complete backups, which GC keeps, but waiting costs nothing and keeps the rule simple.
 * Across restarts the catalog carries it: a `running` row keeps GC out until it is reconciled
 * (BackupService.gc checks the table too).
 */
export class BackupGate {
  #backups = 0;
  #restores = 0;
  gcRunning = false;

  refuseWhileGc(): void {
    if (this.gcRunning)
      throw new WarrenError('CONFLICT', 'backup garbage collection is running; retry in a moment');
  }

  backupStarted(): void {
    this.refuseWhileGc();
    this.#backups++;
  }

  backupEnded(): void {
    this.#backups = Math.max(0, this.#backups - 1);
  }

  restoreStarted(): void {
    this.#restores++;
  }

  restoreEnded(): void {
    this.#restores = Math.max(0, this.#restores - 1);
  }

  /** Nothing runs that GC must wait for. */
  idle(): boolean {
    return this.#backups === 0 && this.#restores === 0 && !this.gcRunning;
  }

  /** Marks GC running until the returned function is called. */
  gcStarted(): () => void {
    if (!this.idle()) throw new WarrenError('CONFLICT', 'a backup or restore is running; GC waits for it');
    this.gcRunning = true;
    return () => {
      this.gcRunning = false;
    };
  }

  get running(): { backups: number; restores: number } {
    return { backups: this.#backups, restores: this.#restores };
  }
}
