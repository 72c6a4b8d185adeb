// An IoExecutor that does every op on the calling (device worker) thread, synchronously, in
// call order, through the backings of a BackingTable (host/storage's file and memory disks,
// host/fs's files). Each request is done before submit returns, so its `done` fires inside
// submit, barriers hold trivially, and nothing is ever in flight when drain() is called.
// It serves every backing; an asynchronous executor (io_uring) may take over the ones it can.

import type { IoExecutor, IoOp, IoResult } from './executor.ts';
import { errnoOf, runOnBacking, type BackingTable } from './backing-table.ts';
import { BackingError } from '../storage/backing.ts';
import { constants as osConstants } from 'node:os';

const EBADF = osConstants.errno.EBADF;
/** The result of every request that read nothing (no ops, writes, flushes): one object, not one per request. */
const NO_RESULT: IoResult = { errno: 0, lastReadBytes: 0 };

export class SyncExecutor implements IoExecutor {
  private closed = false;
  private running = 0;

  constructor(
    private readonly table: BackingTable,
    /** Backing failures, for the operator's log (the device hears the errno). */
    private readonly logIoError: (message: string) => void = () => {},
  ) {}

  get inflight(): number {
    return this.running;
  }

  submit<T>(ops: readonly IoOp[], _barrier: boolean, done: (result: IoResult, token: T) => void, token?: T): void {
    if (this.closed) throw new Error('I/O submitted to a closed executor');
    this.running++;
    let result: IoResult;
    try {
      result = this.run(ops);
    } finally {
      this.running--;
    }
    done(result, token as T);
  }

  private run(ops: readonly IoOp[]): IoResult {
    let lastReadBytes = 0;
    for (let i = 0; i < ops.length; i++) {
      const op = ops[i];
      const b = this.table.get(op.backing);
      // The answer checks looked the index up before the request was submitted; an fs file
      // closed since (by a later call of the same plugin) is a failed I/O, not a host error.
      if (b === undefined) return { errno: EBADF, lastReadBytes: 0 };
      try {
        lastReadBytes = runOnBacking(b, op);
      } catch (e) {
        if (!(e instanceof BackingError)) throw e;
        this.logIoError(e.message);
        return { errno: errnoOf(e), lastReadBytes: 0 };
      }
    }
    return lastReadBytes === 0 ? NO_RESULT : { errno: 0, lastReadBytes };
  }

  drain(): void {
    // Nothing outlives submit().
  }

  close(): void {
    this.closed = true;
  }
}
