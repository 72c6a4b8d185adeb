// The executor for file and block-device backings: io_uring (host/native/src/uring.c) on the
// device worker's thread. Reads and writes are READV/WRITEV whose iovecs are the guest-memory
// views the runner hands in, so the kernel moves the bytes between the backing and the guest
// with no copy of ours; many requests are in flight at once and complete in whatever order the
// kernel finishes them. The ring's eventfd, watched on this thread's loop, drives completions.
//
// Ordering: a request's ops run one after the other (writes and backing ops as given, then the
// reads), because a later op may depend on an earlier one and a failure stops the rest. Requests
// run side by side, except that a barrier starts only when nothing else is running and holds
// back everything submitted after it. That is the whole ordering story, kept here in JavaScript
// rather than in IOSQE_IO_DRAIN, so that it also covers ops this executor runs itself (discard)
// and a barrier's later ops.
//
// O_DIRECT (--direct): an op whose offset, length or buffers are not aligned to the backing's
// block goes through a page-aligned bounce buffer (read the covering blocks, copy; or
// read-modify-write the partial end blocks, then write). Such a read-modify-write runs alone,
// like a barrier, so that no other write to the same block can land between its read and write.
// A buffer whose address the kernel still finds misaligned (EINVAL) is retried once through the
// bounce buffer too.
//
// A target marked `inline` (a tmpfs file) is read and written with pread/pwrite in its turn
// instead. drain() waits everything out with real results (a ring stop or remap must not fail
// I/O that would finish); close() cancels what is still in the kernel.
import { fdatasyncSync } from 'node:fs';
import { constants as osConstants, release } from 'node:os';
import { deferTaskrunFits } from './uring-setup.ts';
import { native, type Mapping, type Uring, type UringIov, type Watcher } from '../native/index.ts';
import { errnoOf, runOnBacking, type IoBacking } from './backing-table.ts';
import { advanceViews, coalesceViews } from './coalesce-views.ts';
import { anyDetached, isDetached } from '../memory/guest-memory.ts';
import { FAULTED, NOT_MAPPED, type MappedReads } from './mapped-reads.ts';
import type { IoExecutor, IoOp, IoResult } from './executor.ts';

const { EBADF, ECANCELED, EFAULT, EINTR, EINVAL, EIO, EOPNOTSUPP } = osConstants.errno;

/** Segments one SQE may carry (the kernel's UIO_MAXIOV); a longer op continues in another SQE. */
const MAX_SEGMENTS = 1024;
/** Bytes per SQE: an op larger than this continues in another SQE. */
const MAX_SQE_BYTES = 1 << 30;

/** What the executor needs of a backing: an open fd and whether it is O_DIRECT. */
export interface UringTarget {
  /** The open regular file or block device. */
  readonly fd: number;
  /** The alignment O_DIRECT needs of offsets, lengths and buffers (512 or 4096); 0 when not O_DIRECT. */
  readonly directAlign: number;
  /** For the log: the path the operator gave. */
  readonly describe?: string;
  /**
   * Reads and writes never wait for a device (a tmpfs file: its page cache is the store), so
   * they are done right in their turn with pread/pwrite into the views: one copy, no ring. Through
   * io_uring such a read is punted to a kernel worker thread (tmpfs has no non-blocking read
   * path), which costs a thread hand-off per request and measured 3x slower.
   */
  readonly inline?: boolean;
  /**
   * An inline target's reads are copied out of a read-only mapping of the file while it is
   * active (host/io/mapped-reads.ts: half the CPU of a pread on tmpfs); what it does not serve
   * (past its end, stopped) is pread as before.
   */
  readonly mappedReads?: MappedReads | null;
  /**
   * Writes of at most this many bytes (not O_DIRECT) are done with pwrite in their turn, as on
   * an inline target, the rest through the ring. A virtio-fs share's files on a disk
   * (host/fs/file-io-backing.ts): a buffered write to ext4 through io_uring is punted to an
   * io-wq kernel thread (ext4 has no non-blocking buffered write path) and its completion wakes
   * the event loop a second time; a 100-byte FUSE_WRITE cost 34-43 µs of host CPU that way
   * against 16 µs inline (bench/fs-host.ts --only 'write 100', /tmp against /dev/shm,
   * docs/BENCHMARKS.md). A small write can still wait for the disk (a partial page not in the
   * page cache is read first; dirty-page throttling), as every write of a synchronous server does.
   */
  readonly inlineWriteMax?: number;
  /**
   * Writes of any size (not O_DIRECT) are done with pwritev in their turn when no other request
   * of this executor is in flight or waiting: with nothing to overlap, the ring's hand-off to an
   * io-wq thread and the completion's second wake-up are pure cost (a guest writing a file
   * sequentially sends one FUSE_WRITE at a time; a 1 MiB one cost 25-45% more host CPU through the
   * ring: docs/BENCHMARKS.md, 2026-12-07 10:30-11:30 UTC). The runner submits a batch's requests
   * one after another, so a batch of writes runs this way one by one (as a server without a
   * thread pool, virtiofsd's default, does); while ring I/O is in flight (a read of pages not
   * cached, an fsync) writes larger than inlineWriteMax go through the ring beside it.
   */
  readonly inlineWritesAlone?: boolean;
  /**
   * Reads try the page cache first, in their turn (preadv2 with RWF_NOWAIT into the views): a
   * hit is done there, with no SQE, no completion to reap and no second wake-up of the event
   * loop; what is not cached (EAGAIN, or the rest after a short copy) goes through the ring as
   * before. A virtio-fs share's files (host/fs/file-io-backing.ts): a guest re-reads what the
   * host's page cache holds far more often than not, and a 4 KiB FUSE_READ through the ring cost
   * ~6 µs more host CPU than its copy (docs/BENCHMARKS.md, 2026-12-07 10:30 UTC). Not for
   * O_DIRECT targets (no page cache to try).
   */
  readonly nowaitReads?: boolean;
  /**
   * Reads and writes go to an io-wq worker at once (IOSQE_ASYNC) instead of being tried inline
   * in io_uring_enter first. A file on FUSE: a FOPEN_DIRECT_IO read there waits for the FUSE
   * server inside io_uring_enter (kernel 6.18), so one slow or stuck request would hold the
   * device's thread and every request behind it (found by test/blk-reconnect-out-of-order). A
   * --storage file on FUSE (host/io/choose-executor.ts) and a virtio-fs share's files when the
   * share is on FUSE (host/fs/file-io-backing.ts, which then writes nothing inline either).
   */
  readonly punt?: boolean;
  /**
   * Discard and write-zeroes, done synchronously by the backing (fallocate with its fallbacks
   * for block devices and file systems without PUNCH_HOLE/ZERO_RANGE). Throws an error carrying
   * the errno (BackingError.errno, or a Node fs error). Absent: those ops fail with EOPNOTSUPP.
   */
  discard?(offset: number, len: number): void;
  writeZeroes?(offset: number, len: number): void;
  /**
   * A request naming it was submitted (`pin`) / is done (`unpin`), once per op. An fs file keeps
   * its fd open while pinned (host/fs/file-io-backing.ts): a FUSE_RELEASE that arrives while its
   * reads are in flight closes the fd only after them, so its number is never another file's
   * while the kernel may still use it.
   */
  pin?(write: boolean): void;
  unpin?(write: boolean): void;
}

/**
 * A backing the ring cannot serve (a memory disk, a file without an fd of ours): its ops run
 * synchronously on this thread, in their turn, through the backing's own methods.
 */
export interface SyncTarget {
  readonly sync: IoBacking;
}

export interface UringExecutorOptions {
  /** The backing with table index i, or undefined when the device has none there. */
  target(index: number): UringTarget | SyncTarget | undefined;
  /** Submission entries (the ring holds twice as many in flight). Default 128. */
  entries?: number;
  /** A failed op, for the operator's log (the device hears the errno). */
  logIoError?(message: string): void;
  /** Called once by close(), after the ring is gone: release what the targets hold (mappings). */
  onClose?(): void;
}

type ReadWriteOp = Extract<IoOp, { kind: 'read' | 'write' }>;

function errnoName(n: number): string {
  return Object.entries(osConstants.errno).find(([, v]) => v === n)?.[0] ?? `errno ${n}`;
}

const NO_RESULT: IoResult = { errno: 0, lastReadBytes: 0 };

/** Page-aligned scratch for O_DIRECT: a memfd mapping (a JavaScript buffer's address is not ours to choose). */
class Bounce {
  readonly view: Uint8Array;
  constructor(readonly mapping: Mapping) {
    this.view = new Uint8Array(mapping.window(0, mapping.size));
  }
  get size(): number {
    return this.mapping.size;
  }
}

class BouncePool {
  private readonly idle: Bounce[] = [];
  live = 0;

  take(len: number): Bounce {
    const i = this.idle.findIndex((b) => b.size >= len);
    if (i >= 0) return this.idle.splice(i, 1)[0]!;
    const size = Math.ceil(len / 65536) * 65536;
    const fd = native.memfdCreate('vhost-wasm-bounce', false);
    try {
      native.ftruncate(fd, size);
      this.live++;
      return new Bounce(native.mmap(fd, size, 0, true));
    } finally {
      native.close(fd);
    }
  }

  /** Only once the kernel is done with it (its op was reaped). */
  give(b: Bounce): void {
    if (this.idle.length < 4) this.idle.push(b);
    else this.drop(b);
  }

  private drop(b: Bounce): void {
    b.mapping.unmap();
    this.live--;
  }

  release(): void {
    for (const b of this.idle.splice(0)) this.drop(b);
  }
}

type Stage =
  | 'direct' // a readv/writev straight into the views
  | 'flush'
  | 'bounce-read' // the covering blocks into the bounce buffer
  | 'rmw-head' // a misaligned write's first block
  | 'rmw-tail' // ... and its last block
  | 'bounce-write'; // the bounce buffer out

type Target = UringTarget | SyncTarget | undefined;

const SQE_READV = 0;
const SQE_WRITEV = 1;
const SQE_FSYNC = 2;
type SqeKind = typeof SQE_READV | typeof SQE_WRITEV | typeof SQE_FSYNC;

class Request {
  /**
   * Each op's backing, looked up once at submit: an index the device gives up later (an fs file
   * closed, its index reused for another file) never redirects a request already submitted.
   */
  readonly targets: Target[];
  /** Index of the op running now. */
  at = 0;
  /** Bytes of the current op already moved. */
  moved = 0;
  /** Bytes the SQE in flight asked for. */
  sqeBytes = 0;
  lastReadBytes = 0;
  stage: Stage = 'direct';
  /** The current op goes through the bounce buffer (misaligned, or the kernel said EINVAL). */
  bounced = false;
  bounce: Bounce | null = null;
  /** Bounce geometry: aligned start, aligned length, bytes of it written so far. */
  bStart = 0;
  bLen = 0;
  bDone = 0;
  slot = -1;
  constructor(
    readonly ops: readonly IoOp[],
    targets: Target[],
    /** A barrier, or a read-modify-write that must run alone. */
    readonly alone: boolean,
    private readonly onDone: (result: IoResult, token: unknown) => void,
    private readonly token: unknown,
  ) {
    this.targets = targets;
    for (let i = 0; i < targets.length; i++) {
      const t = targets[i];
      if (t !== undefined && 'fd' in t && t.pin !== undefined) t.pin(ops[i]!.kind === 'write');
    }
  }

  /** Exactly once, whatever ended it: unpins its targets, then tells the runner. */
  done(result: IoResult): void {
    const { targets, ops } = this;
    for (let i = 0; i < targets.length; i++) {
      const t = targets[i];
      if (t !== undefined && 'fd' in t && t.unpin !== undefined) t.unpin(ops[i]!.kind === 'write');
    }
    this.onDone(result, this.token);
  }
}

function viewBytes(views: readonly Uint8Array[]): number {
  let n = 0;
  for (const v of views) n += v.length;
  return n;
}

/** Writes and backing ops in their order, then the reads (IoExecutor.submit). */
function ordered(ops: readonly IoOp[]): readonly IoOp[] {
  let sawRead = false;
  for (const op of ops) {
    if (op.kind === 'read') sawRead = true;
    else if (sawRead) return [...ops.filter((o) => o.kind !== 'read'), ...ops.filter((o) => o.kind === 'read')];
  }
  return ops;
}

/**
 * The iovec triples for the views from byte `skip` on, at most MAX_SEGMENTS segments and
 * MAX_SQE_BYTES bytes; `aligned` says whether every segment's offset and length (within its
 * buffer) is a multiple of `align` (always true when align is 0). Null when a view is detached:
 * its mapping was unmapped (guest memory went away under a request), which must not pass for
 * an empty buffer.
 */
function iovFrom(views: readonly Uint8Array[], skip: number, align: number): { iov: UringIov; bytes: number; aligned: boolean } | null {
  const iov: UringIov = [];
  let bytes = 0;
  let aligned = true;
  for (const v of views) {
    if (isDetached(v)) return null;
    if (skip >= v.length) {
      skip -= v.length;
      continue;
    }
    const len = Math.min(v.length - skip, MAX_SQE_BYTES - bytes);
    if (align > 0 && ((v.byteOffset + skip) % align !== 0 || len % align !== 0)) aligned = false;
    iov.push(v, skip, len);
    bytes += len;
    skip = 0;
    if (iov.length / 3 >= MAX_SEGMENTS || bytes >= MAX_SQE_BYTES) break;
  }
  return { iov, bytes, aligned };
}

/** Copies `len` bytes of `src` into the views starting `skip` bytes into them. */
function copyIntoViews(views: readonly Uint8Array[], skip: number, src: Uint8Array): void {
  let at = 0;
  for (const v of views) {
    if (at >= src.length) return;
    if (skip >= v.length) {
      skip -= v.length;
      continue;
    }
    const n = Math.min(v.length - skip, src.length - at);
    v.set(src.subarray(at, at + n), skip);
    at += n;
    skip = 0;
  }
}

/** Copies `dst.length` bytes of the views, from `skip` bytes into them, into dst. */
function copyFromViews(views: readonly Uint8Array[], skip: number, dst: Uint8Array): void {
  let at = 0;
  for (const v of views) {
    if (at >= dst.length) return;
    if (skip >= v.length) {
      skip -= v.length;
      continue;
    }
    const n = Math.min(v.length - skip, dst.length - at);
    dst.set(v.subarray(skip, skip + n), at);
    at += n;
    skip = 0;
  }
}

function zeroViews(views: readonly Uint8Array[], skip: number): void {
  for (const v of views) {
    if (skip >= v.length) {
      skip -= v.length;
      continue;
    }
    v.fill(0, skip);
    skip = 0;
  }
}

export class UringExecutor implements IoExecutor {
  private readonly ring: Uring;
  private readonly watcher: Watcher;
  private readonly target: (index: number) => UringTarget | SyncTarget | undefined;
  private readonly logIoError: (message: string) => void;
  private readonly onClose: (() => void) | undefined;
  private readonly bounces = new BouncePool();
  private readonly reaped: Float64Array;
  /** Reaped completions (userData, result pairs) not yet handled, from cqHead on. */
  private cq: number[] = [];
  private cqHead = 0;
  /** Requests started and not done, by the userData of their SQE (one SQE each at a time). */
  private readonly slots: (Request | undefined)[];
  private readonly freeSlots: number[];
  /** Submitted, not yet started: behind a barrier, or the ring was full. */
  private waiting: Request[] = [];
  /** Started, but their next SQE found the ring full. */
  private stalled: Request[] = [];
  private running = 0;
  private aloneRunning = false;
  private count = 0;
  private unsubmitted = 0;
  private submitScheduled = false;
  private pumping = false;
  /** What the last runInline() read moved (its op being the request's last). */
  private inlineLastRead = 0;
  private cancelling = false;
  private closed = false;

  constructor(options: UringExecutorOptions) {
    this.target = options.target;
    this.logIoError = options.logIoError ?? (() => {});
    this.onClose = options.onClose;
    this.ring = native.uringCreate(options.entries ?? 128, deferTaskrunFits(release()));
    this.reaped = new Float64Array(2 * this.ring.capacity);
    this.slots = new Array(this.ring.capacity);
    this.freeSlots = Array.from({ length: this.ring.capacity }, (_, i) => this.ring.capacity - 1 - i);
    this.watcher = native.watch(this.ring.eventFd, 'r', () => this.onCompletions());
  }

  get inflight(): number {
    return this.count;
  }

  /** The kernel took DEFER_TASKRUN for this ring (false: a plain ring; see native Uring). */
  get deferTaskrun(): boolean {
    return this.ring.deferTaskrun;
  }

  submit<T>(ops: readonly IoOp[], barrier: boolean, done: (result: IoResult, token: T) => void, token?: T): void {
    if (this.closed) throw new Error('UringExecutor.submit after close()');
    if (this.cancelling) {
      // A completion handler submitting while close() cancels: nothing new starts now.
      done({ errno: ECANCELED, lastReadBytes: 0 }, token as T);
      return;
    }
    if (ops.length === 1 && this.runAtOnce(ops[0]!, barrier, done, token)) return;
    this.submitRequest(ops, barrier, done, token, 0);
  }

  /** submit() the usual way: a Request, queued in order; `moved`: bytes of its first op already done. */
  private submitRequest<T>(ops: readonly IoOp[], barrier: boolean, done: (result: IoResult, token: T) => void, token: T | undefined, moved: number): void {
    const o = ordered(ops);
    const targets: Target[] = new Array(o.length);
    for (let i = 0; i < o.length; i++) targets[i] = this.target(o[i]!.backing);
    const req = new Request(o, targets, barrier || this.needsReadModifyWrite(o, targets), done as (result: IoResult, token: unknown) => void, token);
    req.moved = moved;
    this.count++;
    this.waiting.push(req);
    this.pump();
  }

  /** Set by readCached(): the copy stopped at the end of the file (not at a page the cache lacks). */
  private cachedEof = false;

  /**
   * Copies what the page cache holds of the views' bytes (preadv2 RWF_NOWAIT, again after a
   * short copy, until the views are full, the file ends or a page is not cached): the bytes
   * copied (cachedEof says whether the file ended there), or -1 when nothing was copied this way
   * (views detached or too many, the first page not cached, the kernel refused: the ring serves
   * the read and reports any error as it always does).
   */
  private readCached(fd: number, views: readonly Uint8Array[], offset: number): number {
    this.cachedEof = false;
    if (views.length === 0) return -1;
    if (anyDetached(views)) return -1;
    let rest = coalesceViews(views);
    if (rest.length > MAX_SEGMENTS) return -1;
    let moved = 0;
    for (;;) {
      const r = native.fsPreadv(fd, rest, offset + moved, true);
      if (r === 0) {
        this.cachedEof = true;
        return moved;
      }
      if (r < 0) return moved > 0 ? moved : -1;
      moved += r;
      // The next call starts where this one stopped: in the view it stopped in, or after it.
      rest = advanceViews(rest, r);
      if (rest.length === 0) return moved;
    }
  }

  /**
   * The usual request on a tmpfs file, one read, write or flush on an inline target, when it
   * would start right away anyway (nothing waits, no barrier or read-modify-write runs, and a
   * barrier finds nothing running): done at once, without the Request bookkeeping (~0.3 us of
   * the ~1.1 us a 4 KiB read costs here; docs/BENCHMARKS.md, "the storage side"). False: not
   * such a request; submit() takes it the usual way. Inside pump() (a done() that submits), the
   * queue keeps the order.
   */
  private runAtOnce<T>(op: IoOp, barrier: boolean, done: (result: IoResult, token: T) => void, token: T | undefined): boolean {
    if (this.pumping || this.waiting.length > 0 || this.aloneRunning || (barrier && this.running > 0)) return false;
    if (op.kind !== 'read' && op.kind !== 'write' && op.kind !== 'flush') return false;
    const t = this.target(op.backing);
    if (t === undefined || !('fd' in t)) return false;
    if (op.kind === 'read' && t.nowaitReads === true && t.directAlign === 0 && t.inline !== true) {
      // Synchronous, so nothing is in flight to pin the target for.
      const got = this.readCached(t.fd, op.into, op.offset);
      if (got < 0) return false;
      const total = viewBytes(op.into);
      if (got < total && !this.cachedEof) {
        // Part was cached: the ring reads the rest, from where the copy stopped.
        this.submitRequest([op], false, done, token, got);
        return true;
      }
      done(got === 0 ? NO_RESULT : { errno: 0, lastReadBytes: got }, token as T);
      return true;
    }
    if (t.inline !== true || t.pin !== undefined) return false;
    const errno = this.runInline(op, true, t);
    const read = this.inlineLastRead;
    done(errno !== 0 ? { errno, lastReadBytes: 0 } : read === 0 || op.kind !== 'read' ? NO_RESULT : { errno: 0, lastReadBytes: read }, token as T);
    return true;
  }

  /**
   * A --direct write, discard or write-zeroes whose offset or length is off the block: its
   * read-modify-write of the partial blocks (ours, or the file backing's for the zeroing ops)
   * runs alone, so no other write into those blocks lands between its read and its write.
   */
  private needsReadModifyWrite(ops: readonly IoOp[], targets: readonly Target[]): boolean {
    for (let i = 0; i < ops.length; i++) {
      const op = ops[i]!;
      if (op.kind === 'read' || op.kind === 'flush') continue;
      const t = targets[i];
      const a = t !== undefined && 'fd' in t ? t.directAlign : 0;
      const len = op.kind === 'write' ? viewBytes(op.from) : op.len;
      if (a > 0 && (op.offset % a !== 0 || len % a !== 0)) return true;
    }
    return false;
  }

  /** Starts waiting requests in order, as far as barriers and the ring's capacity allow. */
  private pump(): void {
    if (this.pumping) return; // a request that finished synchronously inside start(): the loop below goes on
    this.pumping = true;
    try {
      while (this.waiting.length > 0) {
        const req = this.waiting[0]!;
        if (this.aloneRunning || (req.alone && this.running > 0) || this.freeSlots.length === 0) break;
        this.waiting.shift();
        this.running++;
        if (req.alone) this.aloneRunning = true;
        req.slot = this.freeSlots.pop()!;
        this.slots[req.slot] = req;
        this.step(req);
      }
    } finally {
      this.pumping = false;
    }
  }

  private finish(req: Request, errno: number): void {
    this.slots[req.slot] = undefined;
    this.freeSlots.push(req.slot);
    if (req.bounce) this.bounces.give(req.bounce);
    req.bounce = null;
    this.running--;
    this.count--;
    if (req.alone) this.aloneRunning = false;
    req.done(errno === 0 ? (req.lastReadBytes === 0 ? NO_RESULT : { errno: 0, lastReadBytes: req.lastReadBytes }) : { errno, lastReadBytes: 0 });
    if (!this.cancelling) this.pump();
  }

  /** The current op is complete: go on with the next, or finish the request. */
  private nextOp(req: Request): void {
    req.at++;
    req.moved = 0;
    req.bounced = false;
    req.stage = 'direct';
    this.step(req);
  }

  /** Runs (or queues the SQE of) the current op of a started request. */
  private step(req: Request): void {
    for (;;) {
      if (req.at >= req.ops.length) return this.finish(req, 0);
      if (this.cancelling) return this.finish(req, ECANCELED);
      const op = req.ops[req.at]!;
      const t = req.targets[req.at];
      if (t === undefined) return this.finish(req, EBADF);
      if ('sync' in t) {
        const errno = this.runSync(req, op, t.sync);
        if (errno !== 0) return this.finish(req, errno);
        req.at++;
        continue;
      }
      if (op.kind === 'discard' || op.kind === 'write-zeroes') {
        const fn = op.kind === 'discard' ? t.discard : t.writeZeroes;
        if (fn === undefined) return this.finish(req, EOPNOTSUPP);
        try {
          fn.call(t, op.offset, op.len);
        } catch (e) {
          this.logIoError((e as Error).message);
          return this.finish(req, errnoOf(e));
        }
        req.at++;
        continue;
      }
      if (t.inline === true || (op.kind === 'write' && t.directAlign === 0 && this.writesInline(t, op.from))) {
        const errno = this.runInline(op, req.at === req.ops.length - 1, t);
        if (errno !== 0) return this.finish(req, errno);
        if (op.kind === 'read' && req.at === req.ops.length - 1) req.lastReadBytes = this.inlineLastRead;
        req.at++;
        continue;
      }
      if (op.kind === 'flush') {
        req.stage = 'flush';
        return this.queue(req, SQE_FSYNC, t, 0, null);
      }
      if (op.kind === 'read' && req.moved === 0 && t.nowaitReads === true && t.directAlign === 0) {
        // What the page cache holds is copied now; only the rest needs the ring.
        const got = this.readCached(t.fd, op.into, op.offset);
        if (got >= 0) {
          const last = req.at === req.ops.length - 1;
          if (this.cachedEof || got === viewBytes(op.into)) {
            if (last) req.lastReadBytes = got;
            else if (this.cachedEof) zeroViews(op.into, got); // past the end reads as zeroes
            req.at++;
            continue;
          }
          req.moved = got;
        }
      }
      const rw = op as ReadWriteOp;
      const views = rw.kind === 'read' ? rw.into : rw.from;
      const segs = iovFrom(views, req.moved, t.directAlign);
      if (segs === null) return this.finish(req, EFAULT);
      const { iov, bytes, aligned } = segs;
      if (bytes === 0) {
        if (op.kind === 'read' && req.at === req.ops.length - 1) req.lastReadBytes = req.moved;
        req.at++;
        req.moved = 0;
        continue;
      }
      if (t.directAlign > 0 && (req.bounced || !aligned || (op.offset + req.moved) % t.directAlign !== 0)) {
        req.bounced = true;
        return this.startBounce(req, rw, t);
      }
      req.stage = 'direct';
      req.sqeBytes = bytes;
      return this.queue(req, op.kind === 'read' ? SQE_READV : SQE_WRITEV, t, op.offset + req.moved, iov);
    }
  }

  /** A write to ring target `t` is done with pwritev in its turn (inlineWriteMax, inlineWritesAlone). */
  private writesInline(t: UringTarget, from: readonly Uint8Array[]): boolean {
    if (t.inlineWritesAlone === true && this.running === 1 && this.waiting.length === 0) return true;
    return t.inlineWriteMax !== undefined && viewBytes(from) <= t.inlineWriteMax;
  }

  /**
   * One read, write or flush with plain system calls straight into/from the views; 0 or the
   * errno. A read that is the request's last op leaves the bytes it moved in inlineLastRead.
   */
  private runInline(op: IoOp, last: boolean, t: UringTarget): number {
    this.inlineLastRead = 0;
    try {
      if (op.kind === 'flush') {
        fdatasyncSync(t.fd);
        return 0;
      }
      if (op.kind !== 'read' && op.kind !== 'write') return EINVAL;
      const read = op.kind === 'read';
      const views = read ? op.into : op.from;
      if (anyDetached(views)) return EFAULT;
      const total = viewBytes(views);
      const mapped = read ? t.mappedReads : null;
      // A closed backing (fd -1) fails through pread, as it always did, rather than reading on.
      if (mapped != null && mapped.active && t.fd >= 0) {
        const got = mapped.read(views, op.offset, total);
        if (got === FAULTED) {
          // Read again below with pread: the answer is what pread gives for the file as it is now.
          this.logIoError(`${t.describe ?? `backing ${op.backing}`}: read of ${total} bytes at ${op.offset}: the copy from its mapping faulted (the file shrank, or a hole on a full tmpfs; the fault was contained): read again with pread, as are all its later reads`);
        } else if (got !== NOT_MAPPED) {
          if (last) this.inlineLastRead = got;
          return 0;
        }
      }
      let moved = 0;
      let rest = coalesceViews(views);
      // One system call for all the views (a 1 MiB FUSE_WRITE is up to 256 guest pages), again
      // from where a short transfer stopped.
      while (moved < total) {
        const pos = op.offset + moved;
        let n: number;
        if (rest.length === 1) n = read ? native.pread(t.fd, rest[0]!, pos) : native.pwrite(t.fd, rest[0]!, pos);
        else {
          const iov = rest.length > MAX_SEGMENTS ? rest.slice(0, MAX_SEGMENTS) : rest;
          n = read ? native.fsPreadv(t.fd, iov, pos) : native.fsPwritev(t.fd, iov, pos);
          if (n < 0) return this.inlineFailed(op, t, -n);
        }
        if (n === 0) {
          if (!read) return EIO; // a write that moves nothing would loop
          // End of file: the last op reports how far it got; an earlier one reads as zeroes.
          if (last) this.inlineLastRead = moved;
          else zeroViews(views, moved);
          return 0;
        }
        moved += n;
        rest = advanceViews(rest, n);
      }
      if (last) this.inlineLastRead = moved;
      return 0;
    } catch (e) {
      return this.inlineFailed(op, t, errnoOf(e));
    }
  }

  private inlineFailed(op: IoOp, t: UringTarget, errno: number): number {
    const what = op.kind === 'read' || op.kind === 'write' ? `${op.kind} of ${viewBytes(op.kind === 'read' ? op.into : op.from)} bytes at ${op.offset}` : op.kind;
    this.logIoError(`${t.describe ?? `backing ${op.backing}`}: ${what} failed: ${errnoName(errno)}`);
    return errno;
  }

  /** One op through a backing's own synchronous methods; 0 or the errno. */
  private runSync(req: Request, op: IoOp, b: IoBacking): number {
    try {
      const got = runOnBacking(b, op);
      if (op.kind === 'read' && req.at === req.ops.length - 1) req.lastReadBytes = got;
      return 0;
    } catch (e) {
      this.logIoError((e as Error).message);
      return errnoOf(e);
    }
  }

  /**
   * Queues one SQE for req (a kind and its arguments rather than a closure: no allocation per
   * request); at capacity the request waits for a reap (stalled), and its SQE is made again then.
   * `t` is the current op's ring target, which every caller has already told from a SyncTarget:
   * its fd and punt are read off it here, with no second lookup or `in` test per SQE.
   */
  private queue(req: Request, kind: SqeKind, t: UringTarget, pos: number, iov: UringIov | null): void {
    // close() waits for what is in the kernel; nothing new goes in meanwhile.
    if (this.cancelling) return this.finish(req, ECANCELED);
    let ok: boolean;
    try {
      const fd = t.fd;
      const punt = t.punt === true;
      ok = kind === SQE_READV ? this.ring.readv(fd, pos, req.slot, iov!, punt) : kind === SQE_WRITEV ? this.ring.writev(fd, pos, req.slot, iov!, punt) : this.ring.fsync(fd, req.slot, true, false);
    } catch (e) {
      // The addon refused the iovecs: a view detached (its memory was unmapped) or out of range.
      return this.finish(req, /detached/.test((e as Error).message) ? EFAULT : EINVAL);
    }
    if (!ok) {
      this.stalled.push(req);
      return;
    }
    this.unsubmitted++;
    if (!this.submitScheduled) {
      this.submitScheduled = true;
      // One io_uring_enter for everything the runner's batch queued.
      queueMicrotask(() => this.flushSubmissions());
    }
  }

  private flushSubmissions(): void {
    this.submitScheduled = false;
    if (this.closed || this.unsubmitted === 0) return;
    const n = this.ring.submit();
    this.unsubmitted = Math.max(0, this.unsubmitted - n);
  }

  // ---- O_DIRECT through the bounce buffer ----

  private startBounce(req: Request, op: ReadWriteOp, t: UringTarget): void {
    const a = t.directAlign;
    const off = op.offset + req.moved;
    const len = viewBytes(op.kind === 'read' ? op.into : op.from) - req.moved;
    req.bStart = Math.floor(off / a) * a;
    req.bLen = Math.ceil((off + len) / a) * a - req.bStart;
    req.bDone = 0;
    if (req.bounce === null || req.bounce.size < req.bLen) {
      if (req.bounce) this.bounces.give(req.bounce);
      req.bounce = this.bounces.take(req.bLen);
    }
    if (op.kind === 'read') {
      req.stage = 'bounce-read';
      return this.queueBounce(req, t, false, req.bStart, 0, req.bLen);
    }
    if (off !== req.bStart) {
      req.stage = 'rmw-head';
      return this.queueBounce(req, t, false, req.bStart, 0, a);
    }
    this.afterHead(req, op, t);
  }

  private afterHead(req: Request, op: Extract<IoOp, { kind: 'write' }>, t: UringTarget): void {
    const a = t.directAlign;
    const off = op.offset + req.moved;
    const end = off + viewBytes(op.from) - req.moved;
    const tailBlock = req.bStart + req.bLen - a;
    // The last block needs reading unless the write ends on it exactly or the head read covered it.
    if (end !== req.bStart + req.bLen && !(off !== req.bStart && tailBlock === req.bStart)) {
      req.stage = 'rmw-tail';
      return this.queueBounce(req, t, false, tailBlock, tailBlock - req.bStart, a);
    }
    this.bounceWrite(req, op, t);
  }

  private bounceWrite(req: Request, op: Extract<IoOp, { kind: 'write' }>, t: UringTarget): void {
    const off = op.offset + req.moved;
    const len = viewBytes(op.from) - req.moved;
    copyFromViews(op.from, req.moved, req.bounce!.view.subarray(off - req.bStart, off - req.bStart + len));
    req.stage = 'bounce-write';
    this.queueBounce(req, t, true, req.bStart, 0, req.bLen);
  }

  private queueBounce(req: Request, t: UringTarget, write: boolean, pos: number, at: number, len: number): void {
    req.sqeBytes = len;
    const iov: UringIov = [req.bounce!.view, at, len];
    this.queue(req, write ? SQE_WRITEV : SQE_READV, t, pos, iov);
  }

  // ---- completions ----

  private onCompletions(): void {
    native.eventfdRead(this.ring.eventFd);
    try {
      this.reapAll();
    } finally {
      if (this.unsubmitted > 0) this.flushSubmissions();
    }
  }

  /**
   * Reaps until the ring has nothing more and handles each completion; a `done` that throws is
   * rethrown after the others ran. Reaped completions wait in `cq` until handled, so a `done`
   * that drains or closes (and so reaps again) handles them too instead of losing them.
   */
  private reapAll(): void {
    let failure: unknown = null;
    for (;;) {
      if (this.cqHead === this.cq.length) {
        this.cq.length = 0;
        this.cqHead = 0;
        if (this.stalled.length > 0) {
          // Slots were freed: what waited for room goes now.
          for (const r of this.stalled.splice(0)) {
            try {
              this.step(r);
            } catch (e) {
              failure ??= e;
            }
          }
        }
        if (this.closed) break;
        const got = this.ring.reap(this.reaped);
        if (got === 0) break;
        for (let k = 0; k < 2 * got; k++) this.cq.push(this.reaped[k]!);
      }
      const req = this.slots[this.cq[this.cqHead]!];
      const res = this.cq[this.cqHead + 1]!;
      this.cqHead += 2;
      if (req === undefined) continue;
      try {
        this.complete(req, res);
      } catch (e) {
        failure ??= e;
      }
    }
    if (failure !== null) throw failure;
  }

  private complete(req: Request, res: number): void {
    const op = req.ops[req.at]!;
    if (res === -ECANCELED || res === -EINTR) return this.finish(req, ECANCELED);
    if (res < 0 && !(res === -EINVAL && req.stage === 'direct' && !req.bounced)) {
      const t = req.targets[req.at];
      const name = (t !== undefined && 'fd' in t ? t.describe : undefined) ?? `backing ${op.backing}`;
      const what = op.kind === 'read' || op.kind === 'write' ? `${op.kind} of ${viewBytes(op.kind === 'read' ? op.into : op.from)} bytes at ${op.offset}` : op.kind;
      this.logIoError(`${name}: ${what} failed: ${errnoName(-res)}`);
    }
    if (req.stage === 'flush') return res < 0 ? this.finish(req, -res) : this.nextOp(req);
    const t = req.targets[req.at];
    if (t === undefined || 'sync' in t || (op.kind !== 'read' && op.kind !== 'write')) return this.finish(req, EBADF);
    const views = op.kind === 'read' ? op.into : op.from;
    const total = viewBytes(views);
    if (req.stage === 'direct') {
      if (res === -EINVAL && t.directAlign > 0 && !req.bounced) {
        // The kernel found a buffer address misaligned (its mapping's base, which we cannot see).
        req.bounced = true;
        return this.step(req);
      }
      if (res < 0) return this.finish(req, -res);
      if (res === 0) {
        if (op.kind === 'write') return this.finish(req, EIO); // a write that moves nothing would loop
        return this.endOfFile(req, op.into);
      }
      req.moved += res;
      if (req.moved < total) return this.step(req); // short, or the rest of a split op
      return this.opComplete(req, op.kind === 'read', total);
    }
    if (res < 0) return this.finish(req, -res);
    const bounce = req.bounce!.view;
    const a = t.directAlign;
    switch (req.stage) {
      case 'bounce-read': {
        const off = op.offset + req.moved;
        const want = total - req.moved;
        const got = Math.max(0, Math.min(res - (off - req.bStart), want));
        copyIntoViews(views, req.moved, bounce.subarray(off - req.bStart, off - req.bStart + got));
        req.moved += got;
        if (got < want) return res < req.bLen ? this.endOfFile(req, views) : this.step(req);
        return this.opComplete(req, true, total);
      }
      case 'rmw-head':
      case 'rmw-tail': {
        // A block past the end of a file reads short: its missing part is zeroes.
        const at = req.stage === 'rmw-head' ? 0 : req.bLen - a;
        if (res < a) bounce.fill(0, at + res, at + a);
        if (req.stage === 'rmw-head') return this.afterHead(req, op as Extract<IoOp, { kind: 'write' }>, t);
        return this.bounceWrite(req, op as Extract<IoOp, { kind: 'write' }>, t);
      }
      case 'bounce-write': {
        if (res === 0) return this.finish(req, EIO);
        req.bDone += res;
        if (req.bDone < req.bLen) {
          req.sqeBytes = req.bLen - req.bDone;
          const iov: UringIov = [bounce, req.bDone, req.bLen - req.bDone];
          const pos = req.bStart + req.bDone;
          return this.queue(req, SQE_WRITEV, t, pos, iov);
        }
        return this.opComplete(req, false, total);
      }
    }
  }

  private opComplete(req: Request, read: boolean, total: number): void {
    if (read && req.at === req.ops.length - 1) req.lastReadBytes = total;
    this.nextOp(req);
  }

  /**
   * A read reached the end of the file. The last op reports how far it got (the runner shortens
   * the reply); an earlier one reads as zeroes past the end, like pread into a zeroed buffer.
   */
  private endOfFile(req: Request, views: readonly Uint8Array[]): void {
    if (req.at === req.ops.length - 1) {
      req.lastReadBytes = req.moved;
      return this.finish(req, 0);
    }
    zeroViews(views, req.moved);
    this.nextOp(req);
  }

  // ---- drain / close ----

  /**
   * Blocks until everything submitted has completed, with its real result: what waits behind a
   * barrier or for ring space starts in its turn, and what is in the kernel is waited for, not
   * cancelled. A ring stop (GET_VRING_BASE), a memory remap or a disconnect must not turn I/O
   * that would have finished into guest-visible errors; file and block I/O always finishes.
   */
  drain(): void {
    if (this.closed || this.cancelling) return;
    let failure: unknown = null;
    while (this.count > 0) {
      try {
        this.pump();
        // Completions already reaped (by a caller further up the stack) or ready now.
        this.reapAll();
      } catch (e) {
        failure ??= e;
      }
      if (this.count === 0) break;
      if (this.ring.inflight === 0) {
        // Requests are left but none is in the kernel and none can start: a bookkeeping bug,
        // which waiting would turn into a hang.
        throw new Error(`UringExecutor.drain: ${this.count} requests left with nothing in flight (${this.waiting.length} waiting, ${this.stalled.length} stalled)`);
      }
      this.ring.wait(); // submits what is queued, too
      this.unsubmitted = 0;
    }
    if (failure !== null) throw failure;
  }

  /**
   * drain() until `until()` holds (or nothing is left): what completes meanwhile completes with
   * its real result. An fs FUSE_FSYNC waits here for the writes to its file already in flight.
   */
  settle(until: () => boolean): void {
    if (this.closed || this.cancelling) return;
    let failure: unknown = null;
    while (this.count > 0 && !until()) {
      try {
        this.pump();
        this.reapAll();
      } catch (e) {
        failure ??= e;
      }
      if (this.count === 0 || until()) break;
      if (this.ring.inflight === 0) {
        throw new Error(`UringExecutor.settle: ${this.count} requests left with nothing in flight (${this.waiting.length} waiting, ${this.stalled.length} stalled)`);
      }
      this.ring.wait();
      this.unsubmitted = 0;
    }
    if (failure !== null) throw failure;
  }

  /**
   * Cancels everything still in flight (done fires with ECANCELED; an op the kernel could not
   * stop reports its real result), waits until the kernel has let go of every buffer, and
   * releases the ring. done never fires after close() returns.
   */
  close(): void {
    if (this.closed) return;
    this.cancelling = true;
    let failure: unknown = null;
    const call = (fn: () => void): void => {
      try {
        fn();
      } catch (e) {
        failure ??= e;
      }
    };
    try {
      // Not started: they never touched guest memory.
      for (const req of this.waiting.splice(0)) {
        this.count--;
        call(() => req.done({ errno: ECANCELED, lastReadBytes: 0 }));
      }
      for (const req of this.stalled.splice(0)) call(() => this.finish(req, ECANCELED));
      // Completions already reaped (by a caller further up the stack) are handled first.
      call(() => this.reapAll());
      if (this.ring.inflight > 0) {
        this.ring.cancelAll();
        while (this.ring.inflight > 0) {
          this.ring.wait();
          call(() => this.reapAll());
        }
      }
    } finally {
      this.closed = true;
      this.watcher.close();
      this.ring.close();
      this.bounces.release();
      if (this.onClose !== undefined) call(this.onClose);
    }
    if (failure !== null) throw failure;
  }

  /** Bounce buffers mapped now (idle or in use): for leak checks. */
  get bounceMappings(): number {
    return this.bounces.live;
  }
}
