// filesystem.backing: an open file of the share becomes a backing the plugin may name in its
// answers (FUSE_READ as a backing-read piece, FUSE_WRITE as a transfer), so the host moves
// the bytes between guest memory and the file without them entering the plugin.
//
// The device's backing table belongs to the runner (host/io/backing-table.ts; index 0 is
// --storage); this module decides what goes in and when it comes out: one index per open-file
// handle, given on the first call and the same on every later one, taken out when the handle
// is closed and all at once on a device reset.
//
// Closing a file whose I/O may be in flight (io_uring on a disk share): the share lets go of
// the handle at once (its locks, its place in the fd count) and hands the fd over; the index
// stays the file's until the device call's answers have started (BackingTable rounds: a READ
// answered before the RELEASE in the same batch still reads this file), and the fd is closed
// when the last op in flight on it is done. A closed fd's number is soon another file's, so it
// is never closed while the kernel may still use it.
import type { BackingTable } from '../io/backing-table.ts';
import { BackingError } from '../storage/backing.ts';
import { native } from '../native/index.ts';
import { fileIoBacking, type FsFileIo } from './file-io-backing.ts';
import { FUSE_SUPER_MAGIC } from '../memory/memory-fd.ts';
import { E, type FsResult, type FsShare } from './share.ts';

const O_ACCMODE = 3;
const O_RDONLY = 0;

export class FsFileBackings {
  private readonly indexOf = new Map<bigint, number>();
  private readonly ioOf = new Map<bigint, FsFileIo>();
  /** open(2) flags of each open-file handle, as the plugin opened it. */
  private readonly flagsOf = new Map<bigint, number>();
  /** The share is on FUSE: its files' I/O goes to io-wq at once (fileIoBacking's onFuse). */
  private readonly onFuse: boolean;

  constructor(
    private readonly share: FsShare,
    private readonly table: BackingTable,
  ) {
    // The executor is chosen by the share's filesystem (host/io/choose-executor.ts).
    table.shareDir = share.dir;
    table.shareFsType = share.fsType;
    this.onFuse = share.fsType === FUSE_SUPER_MAGIC;
  }

  /** A handle from open/create, with the flags it was opened with. */
  opened(h: bigint, flags: number): void {
    this.flagsOf.set(h, flags);
  }

  /** filesystem.backing(h): EBADF unless `h` is an open file of this share; ENFILE when the table is full. */
  backing(h: bigint): FsResult<number> {
    // The share first: a handle it no longer holds names nothing, whatever was cached.
    const fd = this.share.openFileFd(h);
    const flags = this.flagsOf.get(h);
    if (fd < 0 || flags === undefined) return { ok: false, errno: E.EBADF };
    const known = this.indexOf.get(h);
    if (known !== undefined) return { ok: true, val: known };
    // O_RDONLY, or a --read-only share: the answer checks refuse transfers to it.
    const readOnly = this.share.readOnly || (flags & O_ACCMODE) === O_RDONLY;
    // The description is made only for a message (a bigint's text per open was a conversion per create).
    const dir = this.share.dir;
    const share = this.share;
    const drop = !readOnly && share.capabilityName !== null ? (f: number) => share.dropCapability(f) : null;
    const io = fileIoBacking(fd, readOnly, () => `${dir}: open file ${h}`, this.onFuse, drop);
    let index: number;
    try {
      index = this.table.register(io);
    } catch (e) {
      if (e instanceof BackingError) return { ok: false, errno: E.ENFILE };
      throw e;
    }
    this.indexOf.set(h, index);
    this.ioOf.set(h, io);
    return { ok: true, val: index };
  }

  /** filesystem.close(h): the share closes `h`; a file with a backing is closed when its I/O is done. */
  close(h: bigint): void {
    const index = this.indexOf.get(h);
    const io = this.ioOf.get(h);
    this.indexOf.delete(h);
    this.ioOf.delete(h);
    this.flagsOf.delete(h);
    if (index === undefined || io === undefined) {
      this.share.closeHandle(h);
      return;
    }
    const fd = this.share.detachFile(h);
    this.table.unregister(index, fd < 0 ? () => io.forget() : () => io.release(() => native.fsClose(fd)));
  }

  /**
   * Before a FUSE_FSYNC of `h`: the writes to it already handed to the executor complete first,
   * so the sync covers every write answered before it (the guest may not have seen their replies
   * yet). Nothing to wait for when no write is in flight (always, on the synchronous path).
   */
  settleWrites(h: bigint): void {
    const io = this.ioOf.get(h);
    if (io === undefined || io.writePins === 0 || this.table.settle === null) return;
    this.table.settle(() => io.writePins === 0);
  }

  /** Before the share releases every handle (a device reset; the runner drained the executor first). */
  releaseAll(): void {
    for (const [h, index] of this.indexOf) {
      const io = this.ioOf.get(h);
      // The share closes the fd with every other handle right after this.
      this.table.unregister(index, () => io?.forget());
    }
    this.indexOf.clear();
    this.ioOf.clear();
    this.flagsOf.clear();
  }

  /** Open files that have a backing index (tests, leak checks). */
  get size(): number {
    return this.indexOf.size;
  }
}
