declare module 'vhost:device/filesystem@0.2.2' {
  /**
   * The mount tag the operator chose (--tag), for the device's config space.
   */
  export function tag(): string;
  /**
   * True when the operator granted the tree read-only (--read-only).
   */
  export function readOnly(): boolean;
  /**
   * A new node handle on the share root.
   */
  export function root(): Entry;
  /**
   * A new node handle on `name` in directory node `dir`; symlinks are not followed.
   */
  export function lookup(dir: Handle, name: Uint8Array): Entry;
  /**
   * As `lookup`, for a name the plugin believes is the inode of its node handle `known`,
   * (`dev`, `ino`): when the name is that very inode the entry's `node` is 0 and no handle is
   * made (nothing to close), otherwise (another inode, also a new file that reuses the inode
   * number) a new node handle as `lookup` gives. The same resolution as `lookup` (never
   * outside the share, no symlink followed). Added in 0.2.1: a plugin that calls
   * it needs a 0.2.1 host (docs/plugin-abi.md).
   */
  export function lookupKnown(dir: Handle, name: Uint8Array, known: Handle, dev: bigint, ino: bigint): Entry;
  /**
   * For node handles `a` and `b` whose entries had the same (dev, ino): true when they are the
   * same inode, false when one is a new file that was given the other's inode number after it
   * was deleted (or either is no node handle). Added in 0.2.1 with `lookup-known`.
   */
  export function sameNode(a: Handle, b: Handle): boolean;
  /**
   * Release a node or open-file handle.
   */
  export function close(h: Handle): void;
  export function getattr(h: Handle): Attr;
  /**
   * Change what `valid` selects (1 mode, 2 uid, 4 gid, 8 size, 16 atime, 32 mtime,
   * 128 atime = now, 256 mtime = now: FUSE's FATTR_* bits), then the new attributes.
   */
  export function setattr(h: Handle, valid: number, mode: number, uid: number, gid: number, size: bigint, atime: bigint, atimeNsec: number, mtime: bigint, mtimeNsec: number): Attr;
  /**
   * Open node `node` (a regular file or directory) for I/O with open(2) oflags (O_ACCMODE,
   * O_APPEND, O_TRUNC, O_SYNC, O_DSYNC, O_DIRECTORY; others are ignored).
   */
  export function open(node: Handle, oflags: number): Handle;
  /**
   * Create (or, without O_EXCL, open) regular file `name` in `dir`: its entry and an
   * open-file handle.
   */
  export function create(dir: Handle, name: Uint8Array, oflags: number, mode: number): [Entry, Handle];
  /**
   * A regular file, FIFO or socket (device nodes: EPERM).
   */
  export function mknod(dir: Handle, name: Uint8Array, mode: number): Entry;
  export function mkdir(dir: Handle, name: Uint8Array, mode: number): Entry;
  /**
   * As `create`, `mknod` and `mkdir`, for a guest kernel that leaves the umask to the file
   * system (FUSE_DONT_MASK, which comes with FUSE_POSIX_ACL): `mode` is not masked yet, and
   * the host creates under `umask` (its low 9 bits), so the kernel applies it where `dir` has
   * no default ACL and the default ACL decides the mode (and the new inode's ACLs) where it
   * has one, as for a local process. Added in 0.2.1: a plugin that calls
   * these needs a 0.2.1 host (docs/plugin-abi.md).
   */
  export function createWithUmask(dir: Handle, name: Uint8Array, oflags: number, mode: number, umask: number): [Entry, Handle];
  export function mknodWithUmask(dir: Handle, name: Uint8Array, mode: number, umask: number): Entry;
  export function mkdirWithUmask(dir: Handle, name: Uint8Array, mode: number, umask: number): Entry;
  /**
   * An unnamed regular file in directory `dir` (open(2)'s O_TMPFILE): its entry (nlink 0,
   * no name anywhere) and an open-file handle. oflags: O_ACCMODE (O_WRONLY or O_RDWR),
   * O_APPEND, O_SYNC, O_DSYNC, and O_EXCL, which makes it never linkable; others are ignored.
   * `umask` as for `create-with-umask` (none: `mode` is already masked and the file gets it
   * exactly). `link` of its node gives it a name; closed unlinked, nothing of it is left.
   * EOPNOTSUPP where the share's filesystem has no O_TMPFILE, EROFS on a read-only share.
   * Added in 0.2.2: a plugin that calls it needs a 0.2.2 host (docs/plugin-abi.md).
   */
  export function tmpfile(dir: Handle, oflags: number, mode: number, umask: number | undefined): [Entry, Handle];
  export function symlink(dir: Handle, name: Uint8Array, target: Uint8Array): Entry;
  /**
   * A new name in `dir` for the inode of node `node`.
   */
  export function link(node: Handle, dir: Handle, name: Uint8Array): Entry;
  export function unlink(dir: Handle, name: Uint8Array): void;
  export function rmdir(dir: Handle, name: Uint8Array): void;
  /**
   * renameat2; how: 1 = RENAME_NOREPLACE, 2 = RENAME_EXCHANGE, 4 = RENAME_WHITEOUT.
   */
  export function rename(oldDir: Handle, oldName: Uint8Array, newDir: Handle, newName: Uint8Array, how: number): void;
  export function readlink(node: Handle): Uint8Array;
  /**
   * Open file `file` as a backing an answer may name (`types.extent`): FUSE_READ answers
   * with a `backing-read` piece, FUSE_WRITE with a `transfer`, and the file's bytes never
   * enter the plugin. The index stays valid until `file` is closed (answers naming it after
   * that fail the device). A file opened read-only (O_RDONLY) is a read-only backing.
   */
  export function backing(file: Handle): number;
  /**
   * Entries of open directory `dir` from position `offset` (0 = start), at most `max`.
   */
  export function readdir(dir: Handle, offset: bigint, max: number): Array<DirEntry>;
  /**
   * Entries of open directory `dir` from position `offset` (0 = start), packed: as many
   * whole records as fit in `max-bytes` (at most 1 MiB counts) when each counts `per-entry`
   * bytes more (room the caller adds to each, at most 4096). A record is 8-byte aligned and
   * little-endian: ino u64, next u64 (the position to continue after it), name length u32
   * (1-255), d_type u32, the name's bytes, zeros to the next multiple of 8 (FUSE's
   * fuse_dirent). Empty only at the end of the directory; EINVAL when not even the next
   * entry fits (280 + `per-entry` bytes always do). The host reads no entry it does not
   * return, so a listing continued from the last record's `next` continues the directory
   * stream where it stopped (ext4 then keeps its hashed block between calls); for that an
   * answer may end short of full, by less than (the next record + 8) x (32 + `per-entry`) / 24
   * bytes (a directory's own records are 0-8 bytes shorter, 24 at least). The same entries as
   * `readdir` without a list element and an allocation per entry. Added in 0.2.1: a
   * plugin that calls it needs a 0.2.1 host (docs/plugin-abi.md).
   */
  export function readdirRecords(dir: Handle, offset: bigint, maxBytes: number, perEntry: number): Uint8Array;
  export function fsync(file: Handle, datasync: boolean): void;
  export function fallocate(file: Handle, mode: number, offset: bigint, len: bigint): void;
  /**
   * lseek(2) with whence 0 SET, 1 CUR, 2 END, 3 DATA, 4 HOLE.
   */
  export function lseek(file: Handle, offset: bigint, whence: number): bigint;
  export function statfs(h: Handle): FsStats;
  /**
   * Extended attributes of node or open file `h` (of a symlink: the link's own, never its
   * target's). Only when the operator allowed them (--xattr); otherwise every call answers
   * ENOSYS. Names in the `trusted.` and `security.` namespaces are refused with EPERM and
   * left out of `listxattr` (there is no mapping of them yet); the POSIX ACL names
   * (`system.posix_acl_access`, `system.posix_acl_default`) and the names that begin them
   * (`system.posix_acl`, `system.`) are EOPNOTSUPP and left out unless the operator gave
   * --posix-acl (`posix-acl`). Values and lists are at most
   * 65536 bytes (XATTR_SIZE_MAX). In 0.2.0 from the start.
   * The whole value of attribute `name`.
   */
  export function getxattr(h: Handle, name: Uint8Array): Uint8Array;
  /**
   * The attribute names, each followed by a NUL byte.
   */
  export function listxattr(h: Handle): Uint8Array;
  /**
   * Set `name` to `value`; how: 1 = XATTR_CREATE (EEXIST if it exists), 2 = XATTR_REPLACE
   * (ENODATA if it does not).
   */
  export function setxattr(h: Handle, name: Uint8Array, value: Uint8Array, how: number): void;
  export function removexattr(h: Handle, name: Uint8Array): void;
  /**
   * The first lock of another owner that conflicts with `lock` on open file `file` (kind 2
   * and the same range if none). Owners: FUSE's lock_owner.
   */
  export function getlk(file: Handle, owner: bigint, lock: FileLock): FileLock;
  /**
   * Take or release `lock` for `owner` on the inode of open file `file` (a record lock), or
   * with `flock` a flock(2) lock of the open file itself (`owner` unused). `wait` 0: a
   * conflict is EAGAIN. Otherwise `wait` is a token of the plugin's choice: a conflict answers
   * EINPROGRESS (115), the host keeps trying without blocking the device, and once it holds
   * the lock, or the attempt failed for good, or the file closes, the plugin gets the event
   * `timer(wait)` and asks again with wait 0 for the verdict. One wait per token at a time.
   */
  export function setlk(file: Handle, owner: bigint, lock: FileLock, flock: boolean, wait: bigint): void;
  /**
   * Give up the wait started with token `wait` (FUSE_INTERRUPT): no event follows.
   */
  export function lockCancel(wait: bigint): void;
  /**
   * copy_file_range(2): up to `len` bytes of open file `src` from `src-offset` to open file
   * `dst` at `dst-offset`, inside the host (the bytes never pass the plugin); the count copied.
   */
  export function copyFileRange(src: Handle, srcOffset: bigint, dst: Handle, dstOffset: bigint, len: bigint): bigint;
  /**
   * syncfs(2) of the filesystem node or open file `h` is on.
   */
  export function syncfs(h: Handle): void;
  export function migrationOnError(): MigrationErrorPolicy;
  export function cache(): CachePolicy;
  /**
   * True when the operator gave --posix-acl (which comes with --xattr): the plugin should
   * offer FUSE_POSIX_ACL (with FUSE_DONT_MASK and FUSE_SETXATTR_EXT), and the
   * `system.posix_acl_access` / `system.posix_acl_default` attributes pass through; without
   * it they answer EOPNOTSUPP and are left out of `listxattr`. Added in 0.2.1.
   */
  export function posixAcl(): boolean;
  /**
   * A node (an inode the host holds open with O_PATH) or an open file or directory.
   * Never 0. Each is released with `close` exactly once.
   */
  export type Handle = bigint;
  /**
   * A Linux errno value.
   */
  export type Errno = number;
  export interface Attr {
    dev: bigint,
    ino: bigint,
    size: bigint,
    blocks: bigint,
    atime: bigint,
    mtime: bigint,
    ctime: bigint,
    atimeNsec: number,
    mtimeNsec: number,
    ctimeNsec: number,
    /**
     * st_mode: file type and permission bits.
     */
    mode: number,
    nlink: number,
    uid: number,
    gid: number,
    rdev: number,
    blksize: number,
  }
  /**
   * A new node handle and the attributes of its inode.
   */
  export interface Entry {
    node: Handle,
    attr: Attr,
  }
  export interface DirEntry {
    ino: bigint,
    /**
     * The position to continue reading after this entry.
     */
    next: bigint,
    /**
     * d_type (DT_REG = 8, DT_DIR = 4, DT_LNK = 10, ...).
     */
    kind: number,
    name: Uint8Array,
  }
  export interface FsStats {
    blocks: bigint,
    bfree: bigint,
    bavail: bigint,
    files: bigint,
    ffree: bigint,
    bsize: number,
    namelen: number,
    frsize: number,
  }
  /**
   * A byte-range lock as FUSE carries it: [start, end], end included (2^63-1 or more: to the
   * end of any file); kind 0 F_RDLCK, 1 F_WRLCK, 2 F_UNLCK; pid: the guest's locker.
   */
  export interface FileLock {
    start: bigint,
    end: bigint,
    kind: number,
    pid: number,
  }
  /**
   * What a migration destination does when a file or directory the guest holds cannot be
   * found again in its share (--migration-on-error): `abort` fails the load (the migration
   * fails, the source keeps running); `guest-error` loads, and the guest's requests on
   * what was lost fail with EIO.
   * # Variants
   * 
   * ## `"abort"`
   * 
   * ## `"guest-error"`
   */
  export type MigrationErrorPolicy = 'abort' | 'guest-error';
  /**
   * How much the guest may cache (--cache, virtiofsd's option): `never` (entries and
   * attributes revalidated every time, file data uncached: direct I/O), `metadata` (both
   * cached for a day, data uncached), `auto` (1 s; data cached while the file is open, the
   * default), `always` (a day; data and directory listings kept across opens).
   * # Variants
   * 
   * ## `"never"`
   * 
   * ## `"metadata"`
   * 
   * ## `"auto"`
   * 
   * ## `"always"`
   */
  export type CachePolicy = 'never' | 'metadata' | 'auto' | 'always';
}
