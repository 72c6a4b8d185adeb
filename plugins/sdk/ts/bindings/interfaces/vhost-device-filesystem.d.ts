declare module 'vhost:device/filesystem@0.2.0' {
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
   * A regular file (other types: EPERM).
   */
  export function mknod(dir: Handle, name: Uint8Array, mode: number): Entry;
  export function mkdir(dir: Handle, name: Uint8Array, mode: number): Entry;
  export function symlink(dir: Handle, name: Uint8Array, target: Uint8Array): Entry;
  /**
   * A new name in `dir` for the inode of node `node`.
   */
  export function link(node: Handle, dir: Handle, name: Uint8Array): Entry;
  export function unlink(dir: Handle, name: Uint8Array): void;
  export function rmdir(dir: Handle, name: Uint8Array): void;
  /**
   * renameat2; how: 1 = RENAME_NOREPLACE, 2 = RENAME_EXCHANGE.
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
   * left out of `listxattr` (there is no mapping of them yet). Values and lists are at most
   * 65536 bytes (XATTR_SIZE_MAX). Added to 0.1.0 after its first release: a plugin that
   * calls these needs a host that has them (docs/plugin-abi.md).
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
  export function migrationOnError(): MigrationErrorPolicy;
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
}
