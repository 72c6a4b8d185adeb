// The executor for memory disks (--storage memory:SIZE): the bytes live in this worker's own
// memory, so there is nothing to wait for and nothing to overlap. Each read or write is one copy
// between the guest's views and the disk's chunks, done in submit(); `done` fires before submit
// returns, so barriers hold trivially and nothing is ever in flight. Any other backing in the
// table (an fs file) is served through its own synchronous methods.
import { constants as osConstants } from 'node:os';
import { MemoryBacking } from '../storage/memory.ts';
import { isDetached } from '../memory/guest-memory.ts';
import { errnoOf, runOnBacking, type IoBacking } from './backing-table.ts';
import type { IoExecutor, IoOp, IoResult } from './executor.ts';

const { EBADF, EFAULT, EINVAL, EROFS } = osConstants.errno;

/** Bytes of the views; -1 when one is detached (its guest-memory mapping was unmapped). */
function viewBytes(views: readonly Uint8Array[]): number {
  let n = 0;
  for (let k = 0; k < views.length; k++) {
    const v = views[k];
    if (isDetached(v)) return -1;
    n += v.length;
  }
  return n;
}

export class MemoryExecutor implements IoExecutor {
  readonly inflight = 0;
  private closed = false;

  /**
   * `backing(i)`: the table's backing i (a --storage memory disk is an IoBacking whose `storage`
   * is a MemoryBacking), or undefined when there is none.
   */
  constructor(
    private readonly backing: (index: number) => IoBacking | undefined,
    /** Failures of other backings, for the operator's log (the device hears the errno). */
    private readonly logIoError: (message: string) => void = () => {},
    /**
     * Bytes a read or write copied between guest memory and a memory disk (MemoryBacking.copied,
     * counted where the copies are made): the request meter's, so a test through the host can
     * hold the memory disk to one copy per byte requested.
     */
    private readonly onCopied: (bytes: number) => void = () => {},
  ) {}

  submit<T>(ops: readonly IoOp[], _barrier: boolean, done: (result: IoResult, token: T) => void, token?: T): void {
    if (this.closed) throw new Error('MemoryExecutor.submit after close()');
    let errno = 0;
    let lastReadBytes = 0;
    // Writes and backing ops in their order first, then the reads (IoExecutor.submit). Plain
    // index loops: this runs once per request.
    for (let k = 0; k < ops.length && errno === 0; k++) {
      const op = ops[k];
      if (op.kind === 'read') continue;
      const r = this.run(op);
      if (r < 0) errno = -r;
    }
    for (let k = 0; k < ops.length && errno === 0; k++) {
      const op = ops[k];
      if (op.kind !== 'read') continue;
      const r = this.run(op);
      if (r < 0) errno = -r;
      else lastReadBytes = r;
    }
    // The reads ran last, so the last read is the last op.
    done({ errno, lastReadBytes: errno === 0 ? lastReadBytes : 0 }, token as T);
  }

  /** Bytes read (a read), 0, or -errno. The runner checked every range already; this is the last line, not the check. */
  private run(op: IoOp): number {
    const b = this.backing(op.backing);
    if (b === undefined) return -EBADF;
    const disk = b.storage;
    if (!(disk instanceof MemoryBacking)) return this.runOther(b, op);
    if (op.kind === 'flush') return 0;
    const len = op.kind === 'read' ? viewBytes(op.into) : op.kind === 'write' ? viewBytes(op.from) : op.len;
    if (len < 0) return -EFAULT;
    if (!Number.isSafeInteger(op.offset) || op.offset < 0 || !Number.isSafeInteger(len) || op.offset + len > disk.size) return -EINVAL;
    if (op.kind !== 'read' && disk.readOnly) return -EROFS;
    switch (op.kind) {
      case 'read': {
        const before = disk.copied;
        disk.readInto(op.offset, op.into);
        this.onCopied(disk.copied - before);
        return len;
      }
      case 'write': {
        const before = disk.copied;
        disk.writeFrom(op.offset, op.from);
        this.onCopied(disk.copied - before);
        return 0;
      }
      case 'discard':
        disk.discard(op.offset, op.len);
        return 0;
      case 'write-zeroes':
        disk.writeZeroes(op.offset, op.len);
        return 0;
    }
  }

  private runOther(b: IoBacking, op: IoOp): number {
    if ((op.kind === 'read' && viewBytes(op.into) < 0) || (op.kind === 'write' && viewBytes(op.from) < 0)) return -EFAULT;
    try {
      return runOnBacking(b, op);
    } catch (e) {
      this.logIoError((e as Error).message);
      return -errnoOf(e);
    }
  }

  drain(): void {
    // Nothing is ever in flight.
  }

  close(): void {
    this.closed = true;
  }
}
