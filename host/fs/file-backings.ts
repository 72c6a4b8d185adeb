// filesystem.backing: an open file of the share becomes a backing the plugin may name in its
// answers (FUSE_READ as a backing-read piece, FUSE_WRITE as a transfer), so the host moves
// the bytes between guest memory and the file without them entering the plugin.
//
// The device's backing table belongs to the runner (index 0 is --storage); this module only
// decides what goes in and when it comes out: one index per open-file handle, given on the
// first call and the same on every later one, taken out before the handle is closed (a
// closed fd's number is soon another file's) and all at once on a device reset.
import { E, type FsResult, type FsShare } from './share.ts';

const O_ACCMODE = 3;
const O_RDONLY = 0;

/** An open file as the backing table receives it. */
export interface FsFileBacking {
  /** Owned by the share and closed right after `remove`: a table that keeps using it later dups it. */
  readonly fd: number;
  /** Opened O_RDONLY, or the share is --read-only: a transfer or write op to it is refused. */
  readonly readOnly: boolean;
  /** For messages: the share and the handle. */
  readonly describe: string;
}

/** The part of the device's backing table that filesystem.backing uses (implemented by the runner). */
export interface FsBackingTable {
  /** The file's new backing index, or null when the table is full. */
  add(file: FsFileBacking): number | null;
  /** The index names nothing from now on: answers naming it are refused. */
  remove(index: number): void;
}

export class FsFileBackings {
  private readonly indexOf = new Map<bigint, number>();
  /** open(2) flags of each open-file handle, as the plugin opened it. */
  private readonly flagsOf = new Map<bigint, number>();

  constructor(
    private readonly share: FsShare,
    private readonly table: FsBackingTable,
  ) {}

  /** A handle from open/create, with the flags it was opened with. */
  opened(h: bigint, flags: number): void {
    this.flagsOf.set(h, flags);
  }

  /** filesystem.backing(h): EBADF unless `h` is an open file of this share; ENFILE when the table is full. */
  backing(h: bigint): FsResult<number> {
    const known = this.indexOf.get(h);
    if (known !== undefined) return { ok: true, val: known };
    const fd = this.share.openFileFd(h);
    const flags = this.flagsOf.get(h);
    if (fd < 0 || flags === undefined) return { ok: false, errno: E.EBADF };
    const readOnly = this.share.readOnly || (flags & O_ACCMODE) === O_RDONLY;
    const index = this.table.add({ fd, readOnly, describe: `${this.share.dir} handle ${h}` });
    if (index === null) return { ok: false, errno: E.ENFILE };
    this.indexOf.set(h, index);
    return { ok: true, val: index };
  }

  /** Before the share closes `h`. */
  closing(h: bigint): void {
    const index = this.indexOf.get(h);
    if (index !== undefined) this.table.remove(index);
    this.indexOf.delete(h);
    this.flagsOf.delete(h);
  }

  /** Before the share releases every handle (a device reset). */
  releaseAll(): void {
    for (const index of this.indexOf.values()) this.table.remove(index);
    this.indexOf.clear();
    this.flagsOf.clear();
  }

  /** Open files that have a backing index (tests, leak checks). */
  get size(): number {
    return this.indexOf.size;
  }
}
