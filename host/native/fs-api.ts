// The typed surface of the native addon's calls for the `filesystem` capability (host/native/src/fs.c)
// and the process-wide fd budget they draw from (src/fd_budget.c). fs.c is not just system
// calls: it holds the share's confinement policy (every lookup is openat2 beneath the dirfd with
// RESOLVE_BENEATH|NO_SYMLINKS|NO_MAGICLINKS|NO_XDEV, names are single validated components, and
// every fd it hands out is charged to the budget and owned by its thread).
//
// Errors: these return a result >= 0 or -errno (failures are the normal case for a file server),
// except fdBudget*, which throw like the rest of the addon.

/**
 * A stat's slots in the Float64Array fsStat, fsStatByHandle, fsLookupEntry and fsStatName fill
 * (host/native/src/fs_env.h, FS_STAT_N): dev ino mode nlink uid gid rdev size blksize blocks atime
 * atimeNsec mtime mtimeNsec ctime ctimeNsec as numbers, then from STAT_BITS the exact 64 bits of
 * ino, size, blocks (u64) and atime, mtime, ctime (s64), read through a BigUint64Array or
 * BigInt64Array of the same buffer only when the number is not a safe integer (it was rounded).
 */
export const STAT_SLOTS = 22;
export const STAT_BITS = 16;
/** fsLookupEntry's and fsStatName's out: a stat, then two more at STAT_SLOTS and STAT_SLOTS + 1. */
export const ENTRY_SLOTS = STAT_SLOTS + 2;

export interface NativeFs {
  // Every fd fsOpenRoot/fsLookup/fsReopen/fsPathOf/fsCreate return is taken from the
  // process-wide fd budget first (-ENFILE when it is spent) and owned by the calling thread
  // until fsClose; a thread that ends closes what it still owns.
  /** O_PATH|O_DIRECTORY fd of the operator's share root. */
  fsOpenRoot(path: string): number;
  /** O_PATH|O_NOFOLLOW fd of `name` in dirfd (RESOLVE_BENEATH|NO_SYMLINKS|NO_MAGICLINKS|NO_XDEV). */
  fsLookup(dirfd: number, name: Uint8Array): number;
  /** A stat into out (STAT_SLOTS, aligned; RangeError naming the length otherwise). */
  fsStat(fd: number, out: Float64Array): number;
  /**
   * fsLookup + fsStat + fsNameToHandle (+ fsClose) in one call: 0 | -errno (the lookup or the
   * stat failed; nothing held). out (ENTRY_SLOTS): fsStat's, then the O_PATH fd kept (budgeted and
   * owned as fsLookup's) or -1, then the record's length in fh (the fd was closed), -errno when
   * name_to_handle_at failed (the fd is kept), or 0 for fh null (no handle asked; fd kept).
   */
  fsLookupEntry(dirfd: number, name: Uint8Array, out: Float64Array, fh: Uint8Array | null): number;
  /**
   * Entry `name` of dirfd without opening it (nothing budgeted): 0 | -errno. out (ENTRY_SLOTS): fsStat's
   * (no symlink followed), the mount id it is on, its record's length in fh (or -errno; 0 for
   * fh null). The stat is made before the record: see host/native/src/fs.c for what a match proves.
   */
  fsStatName(dirfd: number, name: Uint8Array, out: Float64Array, fh: Uint8Array | null): number;
  /** An fd open for I/O on the inode an O_PATH fd pins (regular files and directories only). */
  fsReopen(fd: number, flags: number): number;
  /**
   * An fd on the same open file description as `fd` (a regular file or directory; its locks
   * come with it): `onto` -1, a new one, budgeted and owned like the others; else `onto` (a share
   * fd this thread owns) is made to refer to it (dup3).
   */
  fsDup(fd: number, onto: number): number;
  /** A new O_PATH fd on the inode `fd` refers to. */
  fsPathOf(fd: number): number;
  /** openat2(O_CREAT|flags) of a regular file in dirfd; the fd is open for I/O. */
  fsCreate(dirfd: number, name: Uint8Array, flags: number, mode: number): number;
  /** An unnamed regular file in dirfd (O_TMPFILE), open for I/O; flags: access mode, O_APPEND/O_SYNC/O_DSYNC, O_EXCL. EOPNOTSUPP where the filesystem has none. */
  fsTmpfile(dirfd: number, flags: number, mode: number): number;
  /** mknod (regular file 'f'), mkdir ('d') or symlink ('l', to target) in dirfd. */
  fsMake(kind: 'f' | 'p' | 's' | 'd' | 'l', dirfd: number, name: Uint8Array, mode: number, target?: Uint8Array): number;
  /**
   * Sets the calling thread's own umask (the first call unshares the thread's fs attributes,
   * so no other thread sees it) -> the previous one | -errno. For creates under POSIX ACLs.
   */
  fsUmask(mask: number): number;
  fsLink(fd: number, dirfd: number, name: Uint8Array): number;
  fsUnlink(dirfd: number, name: Uint8Array, isDir: boolean): number;
  fsRename(olddirfd: number, oldname: Uint8Array, newdirfd: number, newname: Uint8Array, flags: number): number;
  fsReadlink(fd: number, buf: Uint8Array): number;
  fsSetattr(fd: number, what: 'mode' | 'owner' | 'size' | 'times', a: number, b?: number, c?: number, d?: number): number;
  fsPread(fd: number, buf: Uint8Array, offset: number): number;
  fsPwrite(fd: number, buf: Uint8Array, offset: number): number;
  /**
   * preadv/pwritev over 1..IOV_MAX buffers in one call; bytes moved (may be short) or -errno.
   * `nowait`: preadv2(RWF_NOWAIT), only what the page cache holds: -EAGAIN when the first byte
   * is not cached, short when a later one is not, -EOPNOTSUPP where the file system cannot.
   */
  fsPreadv(fd: number, bufs: readonly Uint8Array[], offset: number, nowait?: boolean): number;
  fsPwritev(fd: number, bufs: readonly Uint8Array[], offset: number): number;
  /** linux_dirent64 records from directory position `offset` (null: from where the fd is, no lseek). */
  fsGetdents(fd: number, buf: Uint8Array, offset: bigint | null): number;
  /** blocks bfree bavail files ffree bsize namelen frsize. */
  fsStatfs(fd: number, out: Float64Array): number;
  fsFsync(fd: number, datasync: boolean): number;
  fsFallocate(fd: number, mode: number, offset: number, len: number): number;
  /** The new offset (a bigint past 2^53 - 1: SEEK_HOLE at the end of a huge sparse file) | -errno. */
  fsLseek(fd: number, offset: number, whence: number): number | bigint;
  /** OFD record lock: set 0 = F_OFD_GETLK (out, as 64-bit integers: type, start, len, pid), 1 = F_OFD_SETLK; type F_RDLCK 0 / F_WRLCK 1 / F_UNLCK 2; len 0 = to EOF. */
  fsLock(fd: number, set: number, type: number, start: number, len: number, out: BigInt64Array): number;
  /** flock(2) with LOCK_NB: op LOCK_SH 1, LOCK_EX 2, LOCK_UN 8. */
  fsFlock(fd: number, op: number): number;
  /** copy_file_range(2) with explicit offsets: bytes copied (at most 1 GiB) or -errno. */
  fsCopyFileRange(fdIn: number, offIn: number, fdOut: number, offOut: number, len: number): number;
  /** syncfs(2) of the filesystem the fd (O_PATH allowed) is on. */
  fsSyncfs(fd: number): number;
  // Extended attributes of the inode an O_PATH fd pins (a symlink: the link itself), through
  // /proc/self/fd/N; nothing is opened. An empty buf asks only for the length.
  /** The value's length (copied into buf when it fits; -ERANGE when it does not). */
  fsGetxattr(fd: number, name: Uint8Array, buf: Uint8Array): number;
  /** NUL-terminated names' total length (copied into buf when it fits). */
  fsListxattr(fd: number, buf: Uint8Array): number;
  /** flags: XATTR_CREATE 1, XATTR_REPLACE 2. */
  fsSetxattr(fd: number, name: Uint8Array, value: Uint8Array, flags: number): number;
  fsRemovexattr(fd: number, name: Uint8Array): number;

  // File handles (host/native/src/fhandle.c): an inode kept as its kernel file handle instead
  // of an fd. Records never leave the host (a forged one could open any inode of the filesystem).
  /** The file handle of the inode fd pins, as a record (u32 mount id, u32 size, s32 type, bytes) in out (>= 140 bytes): its length | -errno (EOPNOTSUPP: no handles on this filesystem). */
  fsNameToHandle(fd: number, out: Uint8Array): number;
  /** An O_PATH fd on a record's inode, decoded against mountFd's filesystem (budgeted like fsLookup) | -errno: ESTALE (deleted, or made on another mount), EPERM (no CAP_DAC_READ_SEARCH). */
  fsOpenByHandle(mountFd: number, record: Uint8Array): number;
  /** fsStat (out: STAT_SLOTS) of a record's inode, opened by handle and closed again in the call | -errno as fsOpenByHandle's. */
  fsStatByHandle(mountFd: number, record: Uint8Array, out: Float64Array): number;
  /** An fd open for I/O (fsReopen's flags) on a record's inode known to be a regular file (ENXIO, closed, if it is not); budgeted and owned | -errno as fsOpenByHandle's. */
  fsOpenFileByHandle(mountFd: number, record: Uint8Array, flags: number): number;
  /** The mount id of fd's mount, as a record carries it | -errno. */
  fsMountId(fd: number): number;

  /** Closes a share fd this thread got from the calls above and returns it to the budget; -EBADF (nothing closed) for any other fd. */
  fsClose(fd: number): number;
  /**
   * A share opened in this thread: the thread holds a reserve of the fd budget (at most
   * maxHandles) until every share that joined has left (host/native/src/fd_budget.c: the rule).
   */
  fsBudgetJoin(maxHandles: number): number;
  /** A share that joined closed. */
  fsBudgetLeave(): number;
  /** This thread's part of the budget now. */
  fsBudgetAccount(): FdBudgetAccount;

  // The process-wide fd budget for share handles (host/native/src/fd_budget.c), one for
  // every thread. host/resources/fd-budget.ts is the policy; these are the mechanism.
  /** First call: raise RLIMIT_NOFILE's soft limit to the hard one, budget = limit - reserve. Later calls only report. */
  fdBudgetInit(reserve: number): FdBudgetInfo;
  /** Moves n fds from the budget to the host's reserve (a device started). */
  fdBudgetReserve(n: number): FdBudgetInfo;
  /** Gives n reserved fds back to the budget (a device removed while the host runs). */
  fdBudgetRelease(n: number): FdBudgetInfo;
  /** Keeps n fds of the common pool for the host (memory regions), if it has n free; the fs devices' reserves stay as they were. */
  fdBudgetTakePool(n: number): boolean;
  /** Gives back what fdBudgetTakePool kept. */
  fdBudgetGivePool(n: number): FdBudgetInfo;
  fdBudgetInfo(): FdBudgetInfo;
}

export interface FdBudgetAccount {
  /** How many more fds this thread may take now (its unspent reserve and what the common pool allows). */
  room: number;
  /** Its reserve (0 with no share open). */
  reserve: number;
  /** Fds it holds from the budget. */
  held: number;
}

export interface FdBudgetInfo {
  /** Share fds all devices together may hold; -1 before fdBudgetInit. */
  budget: number;
  /** Share fds held now, across all threads. */
  used: number;
  /** RLIMIT_NOFILE soft limit now, and before the host raised it; the hard limit. */
  limit: number;
  limitBefore: number;
  hardLimit: number;
  /** Fds kept out of the budget for the host itself. */
  reserve: number;
  /** Threads (devices) holding a reserve of the budget: those with a share open. */
  accounts: number;
  /** Fds of those reserves their devices do not hold: nobody else may take them. */
  unspentReserves: number;
  /** Fds free to anyone now (the common pool: budget - used - unspentReserves, at least 0). */
  pool: number;
  /** The fair share each account's reserve is now (before its own maxHandles caps it); 0 without accounts. */
  fairReserve: number;
}
