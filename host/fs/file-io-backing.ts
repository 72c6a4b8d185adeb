// An open file of a virtio-fs share as an IoBacking (host/io/backing-table.ts): what the
// executors run FUSE_READ's backing-read pieces and FUSE_WRITE's transfers against. The fd
// belongs to the share (host/fs/share.ts) while the file is open; host/fs/file-backings.ts
// takes the entry out of the table when the guest closes it, and the fd is closed once no I/O
// on it is in flight (io_uring may still be reading into it when a FUSE_RELEASE arrives).
import { BackingError } from '../storage/backing.ts';
import type { IoBacking } from '../io/backing-table.ts';
import type { UringTarget } from '../io/uring-executor.ts';
import { native } from '../native/index.ts';
import { STAT_SLOTS } from '../native/fs-api.ts';
import { coalesceViews } from '../io/coalesce-views.ts';
import { constants as os } from 'node:os';

/**
 * FUSE_WRITEs up to this size are written with pwrite in their turn instead of through io_uring
 * (UringTarget.inlineWriteMax: on ext4 the ring hands every buffered write to a kernel thread).
 * One page: the guest's small writes (a create's first bytes, a log line) without the ring's
 * thread hand-off and second wake-up. Larger writes too when nothing else is in flight
 * (inlineWritesAlone: a guest writing a file sequentially); beside other requests they stay
 * asynchronous. Reads try the page cache first (nowaitReads). None of the three on FUSE.
 */
const INLINE_WRITE_MAX = 4096;

/** Linux's IOV_MAX: the most buffers one preadv/pwritev takes. */
const IOV_MAX = 1024;
const FALLOC_FL_KEEP_SIZE = 0x01;
const FALLOC_FL_PUNCH_HOLE = 0x02;
const FALLOC_FL_ZERO_RANGE = 0x10;

function fail(describe: string, op: string, len: number, offset: number, errno: number): never {
  const name = Object.entries(os.errno).find(([, v]) => v === errno)?.[0] ?? `errno ${errno}`;
  throw new BackingError(`${describe}: ${op} of ${len} bytes at ${offset} failed: ${name}`, { details: { errno } });
}

/**
 * An open file of the share as the executors see it: the IoBacking (synchronous calls, the
 * SyncExecutor's path on tmpfs) and its `uring` target (io_uring, on a disk). Ops pin it while
 * they are in flight; `release` closes the fd once none is (host/fs/file-backings.ts hands it
 * the fd when the share lets go of the file).
 */
export interface FsFileIo extends IoBacking {
  readonly uring: UringTarget;
  /** Ops in flight on it (io_uring): all, and writes. */
  readonly pins: number;
  readonly writePins: number;
  /**
   * The file is closed for the device: `close` (which closes the fd) runs now, or when the last
   * op in flight on it is done. Afterwards the fd reads -1, so nothing can reach a number that
   * may by then be another file's.
   */
  release(close: () => void): void;
  /** The share closed the fd itself (a device reset, nothing in flight): it reads -1 from now on. */
  forget(): void;
}

function lengthOf(views: readonly Uint8Array[]): number {
  let n = 0;
  for (const v of views) n += v.length;
  return n;
}

const NOTHING_LEFT: readonly Uint8Array[] = Object.freeze([]);

/**
 * One preadv/pwritev (`call`) for a whole request, where a pread per guest page would cost up to
 * 256 system calls for a 1 MiB FUSE_READ. Returns the bytes it moved and the views it left (the
 * rest of the one it stopped in, and those after) for the caller's per-buffer loop to finish: a
 * short transfer (end of file, a signal), or more than IOV_MAX buffers (not tried at all).
 */
function vectored(
  views: readonly Uint8Array[],
  call: (views: readonly Uint8Array[]) => number,
  fault: (errno: number) => never,
): { moved: number; rest: readonly Uint8Array[] } {
  if (views.length === 0 || views.length > IOV_MAX) return { moved: 0, rest: views };
  const r = call(views);
  if (r < 0) fault(-r);
  let i = 0;
  let left = r;
  while (i < views.length && left >= views[i].length) left -= views[i++].length;
  if (i === views.length) return { moved: r, rest: NOTHING_LEFT };
  return { moved: r, rest: [views[i].subarray(left), ...views.slice(i + 1)] };
}

/**
 * One stat buffer for every file's `size` (the executors read it in their turn, on the worker's
 * one thread, and the value is taken out before anything else can stat).
 */
const sizeStat = new Float64Array(STAT_SLOTS);

/**
 * An open file: its own io_uring target too (`uring` is the object itself). A class, not an
 * object literal of closures and getters per file: each open (every guest create's CREATE,
 * WRITE, RELEASE) made ~15 closures, a 136-byte stat buffer and two literals whose accessors V8
 * defines through the runtime, one call per getter (3% of the device worker's CPU in a create
 * from a TCG guest); methods on a prototype also share one set of compiled code and type
 * feedback instead of tiering up a fresh closure per file. The description (a message's text)
 * is made only when a message needs it.
 */
class FileIo implements FsFileIo, UringTarget {
  private fdNow: number;
  private pinCount = 0;
  private writePinCount = 0;
  private closer: (() => void) | null = null;
  private text: string | (() => string);
  // UringTarget's settings for a share's file (see INLINE_WRITE_MAX).
  readonly directAlign = 0;
  readonly inline = false;
  readonly inlineWriteMax: number | undefined;
  readonly inlineWritesAlone: boolean;
  readonly nowaitReads: boolean;
  readonly punt: boolean;
  readonly growable = true;
  readonly beforeWrite: (() => number) | undefined;

  constructor(
    fd: number,
    readonly readOnly: boolean,
    describe: string | (() => string),
    onFuse: boolean,
    dropCapability: ((fd: number) => number) | null,
  ) {
    this.fdNow = fd;
    // Only on a share whose --xattrmap renames security.capability: a write drops it first.
    this.beforeWrite = dropCapability === null ? undefined : () => (this.fdNow < 0 ? 0 : dropCapability(this.fdNow));
    this.text = describe;
    // A share on FUSE: a read or write there waits for the FUSE server, which may be slow or
    // stuck. Through the ring with IOSQE_ASYNC it waits in an io-wq thread (the rule for blk
    // backings on FUSE, UringTarget.punt), never in io_uring_enter or a pwrite on the device's
    // thread, where it would hold every other request of the device behind it.
    this.punt = onFuse;
    this.inlineWriteMax = onFuse ? undefined : INLINE_WRITE_MAX;
    this.inlineWritesAlone = !onFuse;
    // Nor the page-cache try (preadv2 RWF_NOWAIT) on the device's thread: FUSE
    // refuses it today (no FMODE_NOWAIT: EOPNOTSUPP), but a kernel that gives FUSE nowait reads could,
    // on a cached FUSE file, still wait there in fuse_update_attributes (a GETATTR to the
    // server) before looking at the cache: a stuck server would hold the device.
    this.nowaitReads = !onFuse;
  }

  get uring(): UringTarget {
    return this;
  }

  get describe(): string {
    const t = this.text;
    if (typeof t === 'string') return t;
    const made = t();
    this.text = made;
    return made;
  }

  get fd(): number {
    return this.fdNow;
  }

  get pins(): number {
    return this.pinCount;
  }

  get writePins(): number {
    return this.writePinCount;
  }

  pin(write: boolean): void {
    this.pinCount++;
    if (write) this.writePinCount++;
  }

  unpin(write: boolean): void {
    this.pinCount--;
    if (write) this.writePinCount--;
    if (this.pinCount === 0 && this.closer !== null) {
      const c = this.closer;
      this.closer = null;
      this.closeNow(c);
    }
  }

  private closeNow(close: () => void): void {
    this.fdNow = -1;
    close();
  }

  release(close: () => void): void {
    if (this.fdNow < 0) return;
    if (this.pinCount === 0) this.closeNow(close);
    else this.closer = close;
  }

  forget(): void {
    this.fdNow = -1;
    this.closer = null;
  }

  // A number, rounded past 2^53: a growable backing is never addressed that far (answer-check.ts,
  // MAX_FILE_OFFSET), so a rounded size still says "past anything addressable".
  get size(): number {
    const r = native.fsStat(this.fdNow, sizeStat);
    return r < 0 ? 0 : sizeStat[7];
  }

  readInto(offset: number, into0: readonly Uint8Array[]): number {
    const fd = this.fdNow;
    const into = coalesceViews(into0);
    const { moved, rest } = vectored(into, (v) => native.fsPreadv(fd, v, offset), (errno) => fail(this.describe, 'read', lengthOf(into), offset, errno));
    let at = offset + moved;
    let total = moved;
    let eof = false;
    for (const v of rest) {
      if (eof) {
        v.fill(0);
        continue;
      }
      let done = 0;
      while (done < v.length) {
        const r = native.fsPread(fd, v.subarray(done), at);
        if (r < 0) fail(this.describe, 'read', v.length - done, at, -r);
        if (r === 0) break;
        done += r;
        at += r;
      }
      total += done;
      if (done < v.length) {
        // End of file: the rest reads as zeroes, and the used length stops here.
        v.fill(0, done);
        eof = true;
      }
    }
    return total;
  }

  writeFrom(offset: number, from0: readonly Uint8Array[]): void {
    const fd = this.fdNow;
    const from = coalesceViews(from0);
    const { moved, rest } = vectored(from, (v) => native.fsPwritev(fd, v, offset), (errno) => fail(this.describe, 'write', lengthOf(from), offset, errno));
    let at = offset + moved;
    for (const v of rest) {
      let done = 0;
      while (done < v.length) {
        const r = native.fsPwrite(fd, v.subarray(done), at);
        if (r < 0) fail(this.describe, 'write', v.length - done, at, -r);
        // A write that moves nothing would loop forever: the WIT calls a short write ENOSPC.
        if (r === 0) fail(this.describe, 'write', v.length - done, at, os.errno.ENOSPC);
        done += r;
        at += r;
      }
    }
  }

  flush(): void {
    const r = native.fsFsync(this.fdNow, true);
    if (r < 0) fail(this.describe, 'flush', 0, 0, -r);
  }

  discard(offset: number, len: number): void {
    const r = native.fsFallocate(this.fdNow, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, len);
    if (r < 0) fail(this.describe, 'discard', len, offset, -r);
  }

  writeZeroes(offset: number, len: number): void {
    const r = native.fsFallocate(this.fdNow, FALLOC_FL_ZERO_RANGE, offset, len);
    if (r < 0) fail(this.describe, 'write-zeroes', len, offset, -r);
  }
}

/**
 * `describe`: the file's text for messages, or what makes it when one is needed. `onFuse`: the
 * share is on a FUSE file system (FsShare.fsType, fstatfs of its root once): the file's reads
 * and writes never wait on the device's thread. `dropCapability`: run before each write
 * (beforeWrite), when the share renames security.capability.
 */
export function fileIoBacking(
  fd: number,
  readOnly: boolean,
  describe: string | (() => string),
  onFuse = false,
  dropCapability: ((fd: number) => number) | null = null,
): FsFileIo {
  return new FileIo(fd, readOnly, describe, onFuse, dropCapability);
}
