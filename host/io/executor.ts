// The seam between the runner (which checks answers and owns the rings) and whatever moves
// bytes between guest memory and backings. The runner turns each checked answer into IoOps
// whose guest buffers are views into mapped guest memory (the chain's descriptors, split at
// the piece/transfer boundaries) and completes the request when `done` fires. Executors:
// host/io/sync-executor.ts (every backing, on the worker thread, in call order) and
// host/io/uring-executor.ts (file and block backings through io_uring: many in flight,
// completions out of order).

/** One guest-memory <-> backing movement (or a backing-only op) of one request. */
export type IoOp =
  /** preadv into the views (the chain's writable buffers). */
  | { readonly kind: 'read'; readonly backing: number; readonly offset: number; readonly into: readonly Uint8Array[] }
  /** pwritev from the views (the chain's readable buffers). */
  | { readonly kind: 'write'; readonly backing: number; readonly offset: number; readonly from: readonly Uint8Array[] }
  | { readonly kind: 'flush'; readonly backing: number }
  | { readonly kind: 'discard' | 'write-zeroes'; readonly backing: number; readonly offset: number; readonly len: number };

export interface IoResult {
  /** 0, or the Linux errno of the first op that failed (the rest of the request did not run). */
  readonly errno: number;
  /** Bytes the last op moved when it is a read (a short read at end of file); else 0. */
  readonly lastReadBytes: number;
}

export interface IoExecutor {
  /**
   * Run one request's ops: the writes and backing ops in the order given, then the reads.
   * `barrier`: start only after everything submitted before has completed, and hold back
   * everything submitted after until this completed. `done` is called exactly once, possibly
   * before submit returns (a synchronous executor), never after close(). `token` is handed to
   * `done` as it was given: the runner passes one bound `done` and the request as the token, so
   * a request costs no closure of its own.
   */
  submit<T>(ops: readonly IoOp[], barrier: boolean, done: (result: IoResult, token: T) => void, token?: T): void;
  /** Requests submitted and not yet done. */
  readonly inflight: number;
  /**
   * Block until nothing is in flight: everything submitted completes and its `done` fires with
   * its real result (what waits behind a barrier starts in its turn). Not cancelled: a ring stop,
   * a remap or a disconnect must not turn I/O that would have finished into guest-visible
   * errors, and file and block I/O always finishes. Before guest memory is unmapped or the rings
   * are dropped.
   */
  drain(): void;
  /**
   * drain() until `until()` holds, or nothing is in flight (executors that can have I/O in
   * flight: io_uring). For a wait on part of the I/O (one fs file's writes before its fsync).
   */
  settle?(until: () => boolean): void;
  /**
   * Cancel whatever is still in flight (`done` fires with ECANCELED, before close returns, for
   * what the kernel could stop), wait until nothing targets guest memory, release everything.
   */
  close(): void;
}
