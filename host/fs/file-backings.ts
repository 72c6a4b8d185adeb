// filesystem.backing: an open file of the share becomes a backing the plugin may name in its
// answers (FUSE_READ as a backing-read piece, FUSE_WRITE as a transfer), so the host moves
// the bytes between guest memory and the file without them entering the plugin.
//
// The device's backing table belongs to the runner (host/io/backing-table.ts; index 0 is
// --storage); this module decides what goes in and when it comes out: one index per open-file
// handle, given on the first call and the same on every later one, taken out before the handle
// is closed (a closed fd's number is soon another file's) and all at once on a device reset.
import type { BackingTable } from '../io/backing-table.ts';
import { BackingError } from '../storage/backing.ts';
import { fileIoBacking } from './file-io-backing.ts';
import { E, type FsResult, type FsShare } from './share.ts';

const O_ACCMODE = 3;
const O_RDONLY = 0;

export class FsFileBackings {
  private readonly indexOf = new Map<bigint, number>();
  /** open(2) flags of each open-file handle, as the plugin opened it. */
  private readonly flagsOf = new Map<bigint, number>();

  constructor(
    private readonly share: FsShare,
    private readonly table: BackingTable,
  ) {}

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
    let index: number;
    try {
      index = this.table.register(fileIoBacking(fd, readOnly, `${this.share.dir}: open file ${h}`));
    } catch (e) {
      if (e instanceof BackingError) return { ok: false, errno: E.ENFILE };
      throw e;
    }
    this.indexOf.set(h, index);
    return { ok: true, val: index };
  }

  /** Before the share closes `h`. */
  closing(h: bigint): void {
    const index = this.indexOf.get(h);
    if (index !== undefined) this.table.unregister(index);
    this.indexOf.delete(h);
    this.flagsOf.delete(h);
  }

  /** Before the share releases every handle (a device reset). */
  releaseAll(): void {
    for (const index of this.indexOf.values()) this.table.unregister(index);
    this.indexOf.clear();
    this.flagsOf.clear();
  }

  /** Open files that have a backing index (tests, leak checks). */
  get size(): number {
    return this.indexOf.size;
  }
}
