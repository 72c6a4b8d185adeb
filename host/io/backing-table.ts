// The backings a device's answers may name (`types.backing` in wit/device.wit): index 0 is the
// operator's --storage grant, and a virtio-fs device gets an index for each open file it hands
// out through `filesystem.backing(handle)` (host/fs registers it here and unregisters it when
// the plugin closes the file). The answer checks (host/device/answer-check.ts) look every
// index up here; the executors (host/io/) do the I/O on what they find.

import { BackingError, type Backing } from '../storage/backing.ts';
import { constants as osConstants } from 'node:os';
import type { IoOp } from './executor.ts';
import type { UringTarget } from './uring-executor.ts';

/** What an executor needs of one backing, whatever is behind it (a disk store, an fs file). */
/**
 * One op through a backing's own synchronous methods (every executor's path for what it does not
 * move itself): the bytes a read moved, else 0. Throws what the backing throws (BackingError).
 */
export function runOnBacking(b: IoBacking, op: IoOp): number {
  switch (op.kind) {
    case 'read':
      return b.readInto(op.offset, op.into);
    case 'write':
      b.writeFrom(op.offset, op.from);
      return 0;
    case 'flush':
      b.flush();
      return 0;
    case 'discard':
      b.discard(op.offset, op.len);
      return 0;
    case 'write-zeroes':
      b.writeZeroes(op.offset, op.len);
      return 0;
  }
}

export interface IoBacking {
  /** For messages: the --storage value, or the share-relative role of an fs file. */
  readonly describe: string;
  /** No transfer, discard or write-zeroes may name it (--read-only, or an fs file opened O_RDONLY). */
  readonly readOnly: boolean;
  /** Bytes in it now. */
  readonly size: number;
  /**
   * false: a --storage store of fixed size: every extent must lie inside `size`.
   * true: a file (virtio-fs): a write may extend it, and a read past its end comes back short.
   */
  readonly growable: boolean;
  /**
   * Fills `into` (in order) from `offset`; returns the bytes read, fewer than asked only at the
   * end of a growable backing (the rest of `into` is then zero-filled, as the guest sees it).
   * Throws BackingError (with `details.errno`) when the I/O fails.
   */
  readInto(offset: number, into: readonly Uint8Array[]): number;
  /** Writes every byte of `from` (in order) at `offset`; throws BackingError on failure. */
  writeFrom(offset: number, from: readonly Uint8Array[]): void;
  flush(): void;
  discard(offset: number, len: number): void;
  writeZeroes(offset: number, len: number): void;
  /** The host/storage object behind a --storage grant (executors with their own I/O paths read its kind). */
  readonly storage?: Backing;
  /**
   * Run by the runner on the device's thread before a transfer to this backing is handed to the
   * executor: 0, or the errno that fails the request (its I/O does not start). An fs file
   * whose share renames security.capability drops it here (FsShare.dropCapability); absent
   * for every other backing.
   */
  readonly beforeWrite?: () => number;
  /** How io_uring reaches it (an fs file: its fd, and pins that keep the fd open while I/O is in flight). */
  readonly uring?: UringTarget;
}

/** Why a backing index cannot be used; the answer checks turn it into the "backing granted" rule. */
export type LookupMiss = 'not granted';

/** Linux errno of a failed backing call (EIO when the failure carries none). */
export function errnoOf(e: unknown): number {
  const details = (e as { details?: Record<string, unknown> } | null)?.details;
  const n = details?.errno;
  if (typeof n === 'number' && Number.isInteger(n) && n > 0) return n;
  const code = (e as { code?: unknown } | null)?.code;
  if (typeof code === 'string') {
    const v = (osConstants.errno as Record<string, number>)[code];
    if (typeof v === 'number') return v;
  }
  return osConstants.errno.EIO;
}

/** A --storage backing (host/storage) as an IoBacking: fixed size, copies through its read(). */
export function storageIoBacking(b: Backing): IoBacking {
  return {
    describe: b.describe,
    readOnly: b.readOnly,
    size: b.size,
    growable: false,
    storage: b,
    readInto(offset, into) {
      let total = 0;
      for (const v of into) total += v.length;
      if (total === 0) return 0;
      // One read for the whole range: a file does one pread, a memory disk hands a view.
      const data = b.read(offset, total);
      let at = 0;
      for (const v of into) {
        v.set(data.subarray(at, at + v.length));
        at += v.length;
      }
      return total;
    },
    writeFrom(offset, from) {
      let at = offset;
      if (from.length > 1 && ((b as { ioAlign?: number }).ioAlign ?? 1) > 1) {
        // O_DIRECT (FileBacking.ioAlign): one bounce-buffered write for the whole range rather
        // than a read-modify-write of the partial blocks around every view.
        b.write(offset, Buffer.concat(from as Uint8Array[]));
        return;
      }
      for (const v of from) {
        if (v.length === 0) continue;
        b.write(at, v);
        at += v.length;
      }
    },
    flush: () => {
      // Read-only: nothing of ours to make durable (storage-imports.ts did the same).
      if (!b.readOnly) b.flush();
    },
    discard: (offset, len) => b.discard(offset, len),
    writeZeroes: (offset, len) => b.writeZeroes(offset, len),
  };
}

/**
 * One device's backings by index. Index 0 is reserved for --storage (absent when not granted);
 * registered files get the lowest free index above it, reused only after unregister.
 *
 * Rounds (useRounds, set by the runner that carries the answers out): a device call's answers
 * are checked and started only after the call returns, so an index the device gives up inside a
 * call (FUSE_RELEASE after a FUSE_READ in the same batch) must still name the same file until
 * they are: unregister then only marks it, and endRound() (after the call's answers started)
 * takes it out and runs its `then`. Without rounds (tests that call a plugin directly) it goes
 * at once.
 */
export class BackingTable {
  private readonly entries: (IoBacking | undefined)[] = [undefined];
  /** Files may not hold more indexes than this at once (an fs plugin opening files in a loop). */
  static readonly MAX_ENTRIES = 1 << 16;
  private rounds = false;
  /** Unregistered during the current round: [index, then]. */
  private retired: [number, (() => void) | undefined][] = [];
  /** The directory whose files this table's registered entries are (virtio-fs), for chooseExecutor. */
  shareDir: string | undefined;
  /** fstatfs f_type of that directory as the share opened it (FsShare.fsType); -1 when unknown. */
  shareFsType = -1;
  /**
   * Set by the runner when its executor can have I/O in flight: runs the executor until `until()`
   * holds (an fs file's in-flight writes done before an fsync). Null: nothing is ever in flight.
   */
  settle: ((until: () => boolean) => void) | null = null;

  constructor(storage?: IoBacking) {
    this.entries[0] = storage;
  }

  /** The backing at `index`, or undefined when the device was not granted it. */
  get(index: number): IoBacking | undefined {
    return Number.isInteger(index) && index >= 0 ? this.entries[index] : undefined;
  }

  /** Adds a backing (an fs file); returns its index. Throws when the table is full. */
  register(b: IoBacking): number {
    for (let i = 1; i < this.entries.length; i++) {
      if (this.entries[i] === undefined) {
        this.entries[i] = b;
        return i;
      }
    }
    if (this.entries.length >= BackingTable.MAX_ENTRIES) {
      throw new BackingError(`the device already holds ${BackingTable.MAX_ENTRIES - 1} file backings: close some first`);
    }
    this.entries.push(b);
    return this.entries.length - 1;
  }

  /**
   * The index is gone: answers naming it fail the device from now on (with rounds: from the end
   * of this round on). `then` runs once it is out. Index 0 cannot be dropped.
   */
  unregister(index: number, then?: () => void): void {
    if (!Number.isInteger(index) || index < 1 || index >= this.entries.length || this.entries[index] === undefined) {
      then?.();
      return;
    }
    if (this.rounds) {
      this.retired.push([index, then]);
      return;
    }
    this.drop(index);
    then?.();
  }

  private drop(index: number): void {
    this.entries[index] = undefined;
    while (this.entries.length > 1 && this.entries[this.entries.length - 1] === undefined) this.entries.pop();
  }

  /** Answers are carried out after each device call (the runner): unregister waits for endRound. */
  useRounds(): void {
    this.rounds = true;
  }

  /** The current call's answers have started: what it unregistered goes now. */
  endRound(): void {
    if (this.retired.length === 0) return;
    const gone = this.retired;
    this.retired = [];
    for (const [index] of gone) this.drop(index);
    for (const [, then] of gone) then?.();
  }

  /** Drops every registered file (a device reset); the --storage entry stays. */
  clearFiles(): void {
    const gone = this.retired;
    this.retired = [];
    this.entries.length = 1;
    for (const [, then] of gone) then?.();
  }

  /** Indexes in use (tests, diagnostics). */
  indexes(): number[] {
    return this.entries.flatMap((e, i) => (e === undefined ? [] : [i]));
  }
}
