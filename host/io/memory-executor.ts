// The executor for memory disks (--storage memory:SIZE): the bytes live in this worker's own
// memory, so there is nothing to wait for and nothing to overlap. Each read or write is one copy
// between the guest's views and the backing's chunks, done in submit(); `done` fires before
// submit returns, so barriers hold trivially and nothing is ever in flight.
import { constants as osConstants } from 'node:os';
import type { MemoryBacking } from '../storage/memory.ts';
import type { IoExecutor, IoOp, IoResult } from './executor.ts';

const { EBADF, EFAULT, EINVAL, EROFS } = osConstants.errno;

/** Bytes of the views; -1 when one is detached (its guest-memory mapping was unmapped). */
function viewBytes(views: readonly Uint8Array[]): number {
  let n = 0;
  for (const v of views) {
    if (v.length === 0 && v.buffer.byteLength === 0) return -1;
    n += v.length;
  }
  return n;
}

export class MemoryExecutor implements IoExecutor {
  readonly inflight = 0;
  private closed = false;

  /** `backing(i)`: the memory backing with table index i, or undefined when there is none. */
  constructor(private readonly backing: (index: number) => MemoryBacking | undefined) {}

  submit(ops: readonly IoOp[], _barrier: boolean, done: (result: IoResult) => void): void {
    if (this.closed) throw new Error('MemoryExecutor.submit after close()');
    let errno = 0;
    let lastReadBytes = 0;
    // Writes and backing ops in their order first, then the reads (IoExecutor.submit).
    for (const pass of [false, true]) {
      for (const op of ops) {
        if ((op.kind === 'read') !== pass || errno !== 0) continue;
        errno = this.run(op);
        if (op.kind === 'read' && errno === 0) lastReadBytes = viewBytes(op.into);
      }
    }
    // The reads ran last, so the last read is the last op.
    done({ errno, lastReadBytes: errno === 0 ? lastReadBytes : 0 });
  }

  /** 0 or the errno. The runner checked every range already; this is the last line, not the check. */
  private run(op: IoOp): number {
    const b = this.backing(op.backing);
    if (b === undefined) return EBADF;
    if (op.kind === 'flush') return 0;
    const len = op.kind === 'read' ? viewBytes(op.into) : op.kind === 'write' ? viewBytes(op.from) : op.len;
    if (len < 0) return EFAULT;
    if (!Number.isSafeInteger(op.offset) || op.offset < 0 || len < 0 || op.offset + len > b.size) return EINVAL;
    if (op.kind !== 'read' && b.readOnly) return EROFS;
    switch (op.kind) {
      case 'read':
        b.readInto(op.offset, op.into);
        return 0;
      case 'write':
        b.writeFrom(op.offset, op.from);
        return 0;
      case 'discard':
        b.discard(op.offset, op.len);
        return 0;
      case 'write-zeroes':
        b.writeZeroes(op.offset, op.len);
        return 0;
    }
  }

  drain(): void {
    // Nothing is ever in flight.
  }

  close(): void {
    this.closed = true;
  }
}
