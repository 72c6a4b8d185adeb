// The host side of the `filesystem` capability: one shared directory granted to one device.
// The plugin holds opaque handle numbers; this class maps them to what it holds (for a node:
// the kernel's file handle of the inode, or an O_PATH fd; for an open file: its I/O fd) and
// runs every operation through the native fd-relative calls in host/native/src/fs.c, which
// do the confinement (openat2 beneath the directory fd, single-component names, no symlink
// ever followed). Errors are errno numbers, as FUSE wants them; nothing a plugin passes can
// make this throw except a bug.
//
// Nodes and fds (--inode-file-handles, as virtiofsd's option of that name): with file
// handles (prefer, the default, where the filesystem and privileges allow; mandatory) a
// looked-up inode costs no fd: the share keeps its handle (host/native/src/fhandle.c) and
// opens it by handle for the moment an operation needs it. So a guest can hold 100,000
// inodes under a 20,000-fd hard limit. A deleted inode's handle answers ESTALE, never another
// file. With `never` (or prefer where handles do not work: the reason is logged once) every
// node holds an O_PATH fd, as before. Handles never leave this class.
//
// Every fd the share holds is taken from the process-wide fd budget (host/resources/
// fd-budget.ts), shared with every other device of the process: the share's thread holds a
// reserve of it while the share is open (joinFdBudget), and takes past that reserve only
// while the other devices' reserves stay free. Past what it may take (or past this share's
// own maxHandles) lookups, opens and creates answer ENFILE, with one log line per episode.
// releaseAll() gives every handle back (device reset), close() also the root and the reserve.
//
// Directories held by handle keep a few fds open between calls (dirFds below): every
// LOOKUP and CREATE in a directory otherwise opens it by handle and closes it again, 2 of a
// lookup's 6 syscalls. Those fds are charged to the budget like any other and given back first
// when it runs short.
import { constants as OS } from 'node:os';
import { native } from '../native/index.ts';
import { ENTRY_SLOTS, STAT_BITS, STAT_SLOTS } from '../native/fs-api.ts';
import { fdBudgetAccount, fdBudgetInfo, joinFdBudget, leaveFdBudget } from '../resources/fd-budget.ts';
import { createLogger } from '../log/logger.ts';
import { LogThrottle } from '../log/throttle.ts';
import { VhostWasmError } from '../errors.ts';
import { INODE_FILE_HANDLES, type InodeFileHandles } from './inode-handles.ts';
import { XATTR_MAX, isPosixAclName, withoutPosixAcl } from './xattr.ts';
import { XattrMap, type XattrRule } from './xattr-map.ts';
import { IdMap, type IdMapRule } from './id-map.ts';
import { CACHE_POLICIES, type CachePolicy } from './cache-policy.ts';
import { FsLocks, type FileLock } from './locks.ts';
import type { HandoffFile, LockHandoff } from './lock-handoff.ts';

export const E = OS.errno;

export type Errno = number;
/**
 * A WIT u64/s64 attribute: a number when it is a safe integer (nearly always), a bigint past
 * that (an overlayfs xino inode number, a sparse file past 2^53 bytes). The glue lowers both
 * (host/plugin/glue.ts, `_vhSet64`: a safe integer without making a BigInt; jco's own
 * BigInt path for the rest). Code doing arithmetic on one must handle both.
 */
export type Wide = number | bigint;
/**
 * A node's attributes. The 64-bit fields are numbers, not BigInts, whenever they are safe
 * integers: seven BigInts were ~170 of a GETATTR's ~1.5 KB of fresh objects in the worker.
 * Past 2^53 they are exact bigints (the native stat's exact bits, attrOf). dev stays a number:
 * the kernel's dev_t is 32 bits.
 */
export interface Attr {
  dev: number;
  ino: Wide;
  size: Wide;
  blocks: Wide;
  atime: Wide;
  mtime: Wide;
  ctime: Wide;
  atimeNsec: number;
  mtimeNsec: number;
  ctimeNsec: number;
  mode: number;
  nlink: number;
  uid: number;
  gid: number;
  rdev: number;
  blksize: number;
}
export interface Entry {
  node: bigint;
  attr: Attr;
}
export interface DirEntry {
  ino: bigint;
  next: bigint;
  kind: number;
  name: Uint8Array;
}
export interface FsStats {
  blocks: bigint;
  bfree: bigint;
  bavail: bigint;
  files: bigint;
  ffree: bigint;
  bsize: number;
  namelen: number;
  frsize: number;
}

/** --migration-on-error (the WIT enum's spelling): fail the load, or load and answer EIO. */
export type MigrationOnError = 'abort' | 'guest-error';
export { CACHE_POLICIES, type CachePolicy } from './cache-policy.ts';
export const MIGRATION_ON_ERROR: readonly MigrationOnError[] = ['abort', 'guest-error'];

/** An operation's value, or the errno it failed with. */
export type FsResult<T> = { ok: true; val: T } | { ok: false; errno: Errno };

export { INODE_FILE_HANDLES, type InodeFileHandles };

export interface ShareOptions {
  /** --inode-file-handles (default prefer). */
  inodeFileHandles?: InodeFileHandles;
  readOnly?: boolean;
  tag?: string;
  /** --migration-on-error: what a migration destination does with a file it cannot find again. */
  migrationOnError?: MigrationOnError;
  /** --xattr: extended attributes reach the share (otherwise every xattr call is ENOSYS). */
  xattr?: boolean;
  /**
   * --posix-acl (needs xattr, excludes translateUid/translateGid): the POSIX ACL xattrs pass
   * through and the plugin may offer FUSE_POSIX_ACL; without it they are EOPNOTSUPP.
   */
  posixAcl?: boolean;
  /** Most fds one device may hold at once; past it calls fail with ENFILE. */
  maxHandles?: number;
  /** Names the device in log lines. */
  label?: string;
  /** --cache (default auto). */
  cache?: CachePolicy;
  /** --translate-uid / --translate-gid rules (host/fs/id-map.ts). */
  translateUid?: readonly IdMapRule[];
  translateGid?: readonly IdMapRule[];
  /** --xattrmap rules (host/fs/xattr-map.ts); default: trusted./security. refused. */
  xattrmap?: readonly XattrRule[];
}

/** A spent fd budget is logged at most this often per share (with a count of the rest). */
const SPENT_LOG_INTERVAL_MS = 10_000;

/** One read or write moves at most this much (FUSE asks for max_write/max_read at most). */
export const MAX_FS_IO = 1 << 20;
export const DEFAULT_TAG = 'vhost-wasm';
/** virtio-fs config space holds a 36-byte tag. */
export const MAX_TAG_BYTES = 36;

const O_ACCMODE = 3;
const O_RDONLY = 0;
const O_RDWR = 2;
const O_DIRECTORY = 0o200000;
const O_TRUNC = 0o1000;
const FATTR = { MODE: 1, UID: 2, GID: 4, SIZE: 8, ATIME: 16, MTIME: 32, ATIME_NOW: 128, MTIME_NOW: 256 } as const;
const S_IFMT = 0o170000;
const S_IFREG = 0o100000;
const S_IFDIR = 0o040000;

/**
 * Permission bits a guest may set: never set-user-id, and set-group-id only on directories
 * (where it means "inherit the group"). The host process often runs as root, so a guest
 * that could plant a set-user-id file in a share would hand a root shell to anyone on the
 * host who can run it. (virtiofsd leaves this to its --killpriv/--sandbox options.)
 */
export function safeMode(fileMode: number, mode: number): number {
  const allowed = (fileMode & S_IFMT) === S_IFDIR ? 0o3777 : 0o1777;
  return mode & allowed;
}

const O_EXCL = 0o200;

/**
 * The guest's kernel already applied the guest's umask; the host process's own umask (often
 * 022) must not apply a second time, so a new file gets exactly the mode asked for. (Setting
 * umask(0) instead would change it for the whole host process.)
 */
function exactMode(fd: number, mode: number): boolean {
  return native.fsSetattr(fd, 'mode', mode) === 0;
}

/**
 * File handle types whose handles include the inode's generation (include/linux/exportfs.h:
 * FILEID_INO32_GEN and _PARENT, the 64-bit ones, btrfs's three; ext4, tmpfs, xfs and btrfs
 * make these), read from a record (host/native/src/fhandle.c: s32 handle_type at byte 8).
 */
const GENERATION_HANDLE_TYPES = new Set([0x1, 0x2, 0x81, 0x82, 0x4d, 0x4e, 0x4f]);
function handleHasGeneration(record: Uint8Array): boolean {
  return record.length >= 12 && GENERATION_HANDLE_TYPES.has(new DataView(record.buffer, record.byteOffset, record.byteLength).getInt32(8, true));
}

/**
 * `call` (a create) under this thread's umask `mask` (native fsUmask), or under the host's
 * own when `mask` is undefined. With FUSE_DONT_MASK (POSIX ACLs) the guest kernel leaves the
 * umask to the file system: the host kernel applies it where the parent has no default ACL
 * and lets the default ACL decide where it has one, in the same step as the create.
 */
function withUmask(mask: number | undefined, call: () => number): number {
  if (mask === undefined) return call();
  const prev = native.fsUmask(mask & 0o777);
  if (prev < 0) return prev;
  try {
    return call();
  } finally {
    native.fsUmask(prev);
  }
}

const UTIME_NOW = (1 << 30) - 1;
const UTIME_OMIT = (1 << 30) - 2;

interface Slot {
  /** The fd held, or -1 for a node held by its file handle alone. */
  fd: number;
  /** 'node' = an inode (O_PATH fd or file handle); 'file' = open for I/O (regular file or directory). */
  kind: 'node' | 'file';
  /** A node's file-handle record (host/native/src/fhandle.c), when it is held that way. */
  fh?: Uint8Array;
  /** A directory: its fd opened by handle may be kept in the share's dirFds. */
  dir?: boolean;
  /** A regular file held by handle (its type at lookup; an inode's never changes): OPEN opens it by handle directly. */
  reg?: boolean;
  /** An open file: the O_ACCMODE bits it was opened with (host/fs/lock-handoff.ts matches by them). */
  acc?: number;
  /**
   * An open directory: where its fd stands after readdirRecords' last getdents64, so a listing
   * that goes on from there reads without a seek (which on ext4 re-hashes a block).
   */
  dirPos?: bigint;
}

/** Directory fds opened by handle kept between calls (a guest works in a few directories at a time). */
const DIR_FD_CACHE = 16;
/** Cache nothing while this device may take fewer than this many more fds from the process-wide budget. */
const DIR_FD_HEADROOM = 4 * DIR_FD_CACHE;

/** Most bytes of getdents64 records one readdir reads at once; at least DIRENT_MIN (one longest name fits). */
const DIRENT_BUF = 32768;
const DIRENT_MIN = 1024;
/** Bytes per record a readdir sizes its read by: a 19-byte head and a name of ~30 bytes, 8-aligned. */
const DIRENT_GUESS = 56;

/** Most bytes one readdirRecords counts (FUSE's largest READDIR reply); a record's head. */
const RECORDS_MAX = 1 << 20;
const RECORD_HEAD = 24;
/** Most bytes a readdirRecords caller may add per entry (a READDIRPLUS entry adds 128). */
const RECORD_EXTRA_MAX = 4096;

/** Entries one share's table may hold (nodes by handle cost no fd, so fds do not bound it). */
const MAX_TABLE = 1 << 21;
/** fsNameToHandle's record: 12 bytes of head and at most MAX_HANDLE_SZ (128) of handle. */
const FH_RECORD_MAX = 140;

/** Whether `a` is the first `n` bytes of `b` (a loop: a file handle is ~20 bytes, less than a native call costs). */
function sameBytes(a: Uint8Array, b: Uint8Array, n: number): boolean {
  if (a.length !== n) return false;
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return false;
  return true;
}

/**
 * Whether attribute `n` (Attr's: a safe-integer number, or the exact bigint past that) is the
 * plugin's u64 `b`. A safe integer equals a BigInt only when the BigInt converts to it (nothing
 * at or past 2^53 rounds below it). A number that is no safe integer was rounded somewhere: it
 * is the same as nothing (the caller then looks the name up afresh).
 */
function sameU64(n: Wide, b: bigint): boolean {
  return typeof n === 'bigint' ? n === b : Number.isSafeInteger(n) && Number(b) === n;
}

/** 2^53: a u64/s64 the native stat converted to a double is exact when its magnitude is below this. */
const EXACT = 2 ** 53;

const ok = <T>(val: T): FsResult<T> => ({ ok: true, val });
const fail = (errno: Errno): FsResult<never> => ({ ok: false, errno });

export class FsShareError extends VhostWasmError {
  static override readonly code = 'ERR_FS_SHARE';
  override readonly name = 'FsShareError';
}

export class FsShare {
  readonly readOnly: boolean;
  readonly tag: string;
  readonly migrationOnError: MigrationOnError;
  readonly xattr: boolean;
  readonly posixAcl: boolean;
  readonly cache: CachePolicy;
  private readonly uids: IdMap;
  private readonly gids: IdMap;
  private readonly xattrNames: XattrMap;
  /**
   * The host name of the guest's security.capability when --xattrmap renames it (else null):
   * dropped by the share on truncate, chown and write (dropCapability), which the host kernel
   * does only for the real name.
   */
  readonly capabilityName: Uint8Array | null;
  /** How nodes are held: 'handles' (file handles) or 'fds' (an O_PATH fd each). */
  readonly nodesBy: 'handles' | 'fds';
  readonly inodeFileHandles: InodeFileHandles;
  private readonly rootFd: number;
  /**
   * fstatfs f_type of the root as opened (-1 if unknown): every file's, since lookups never
   * cross into a submount (RESOLVE_NO_XDEV). Read once, of the fd, not of `dir` (which may name
   * another directory by the time anyone asks).
   */
  readonly fsType: number;
  /** The root's mount id (fsMountId): lookupKnown's quick check sees a mount point by it; -errno if unknown. */
  private readonly mountId: number;
  /** The root opened O_RDONLY: open_by_handle_at decodes against it (it refuses O_PATH fds); -1 without handles. */
  private mountFd = -1;
  /** Fds the table holds now (nodes by handle hold none). */
  private heldFds = 0;
  private readonly fhBuf = new Uint8Array(FH_RECORD_MAX);
  private readonly handles = new Map<number, Slot>();
  /**
   * Handle id -> an fd of that directory opened by its file handle, least recently used
   * first (Map order). The fd pins the inode, so an entry is dropped when the guest removes or
   * renames over a directory entry (the dropped one may be the one removed: its handle must
   * answer ESTALE again once nothing else holds it), when its handle closes, and all of them
   * when fds run short (budgeted()) or the table is released.
   */
  private readonly dirFds = new Map<number, number>();
  /** using() calls in progress, and cached fds whose close waits for them to return. */
  private depth = 0;
  private readonly deferredClose: number[] = [];
  private nextId = 1;
  private readonly maxHandles: number;
  /** A native stat (STAT_SLOTS); fsLookupEntry adds the fd it kept and the record's length. */
  private readonly statBuf = new Float64Array(ENTRY_SLOTS);
  /** The same slots as 64-bit integers: the exact values of fields past 2^53 (attrOf). */
  private readonly statU64 = new BigUint64Array(this.statBuf.buffer);
  private readonly statS64 = new BigInt64Array(this.statBuf.buffer);
  /** getdents64 records, read into and parsed out of before each readdir returns. */
  private readonly direntBuf = Buffer.from(new ArrayBuffer(DIRENT_BUF));
  /** The same bytes as 32-bit words (records are 8-aligned): inos and positions copied without BigInts. */
  private readonly direntWords = new Uint32Array(this.direntBuf.buffer, 0, DIRENT_BUF / 4);
  /** readdirRecords' answer, grown to the largest asked for; lowered (copied) into the plugin before the next call. */
  private records = new Uint8Array(0);
  private recordWords = new Uint32Array(0);
  /** One value or name list (XATTR_MAX) at a time; results are copied out of it. */
  private xattrBuf: Uint8Array | null = null;
  private closed = false;
  private readonly spentLog: LogThrottle;
  /** Record locks and flock (host/fs/locks.ts): owner fds, waits. */
  readonly locks: FsLocks = new FsLocks({
    fileFd: (h) => this.fileFd(h),
    inodeOf: (fd) => {
      const a = this.stat(fd);
      return a.ok ? `${a.val.dev}:${a.val.ino}` : -a.errno;
    },
    reopen: (fd) => {
      // Read and write, so the owner can hold both kinds; a file the host may only read
      // (or a read-only share) gets read locks only (a write lock is then EBADF).
      let r = this.readOnly ? -E.EROFS : this.budgeted(native.fsReopen(fd, O_RDWR));
      if (r === -E.EACCES || r === -E.EROFS || r === -E.ETXTBSY || r === -E.EPERM) r = this.budgeted(native.fsReopen(fd, O_RDONLY));
      return r;
    },
    close: (fd) => native.fsClose(fd),
  });

  constructor(readonly dir: string, opts: ShareOptions = {}) {
    this.readOnly = opts.readOnly ?? false;
    this.xattr = opts.xattr ?? false;
    this.posixAcl = opts.posixAcl ?? false;
    if (this.posixAcl && !this.xattr) throw new FsShareError('posix-acl needs xattr: POSIX ACLs are extended attributes');
    // An ACL entry names host ids, which the guest kernel checks against its own.
    if (this.posixAcl && (opts.translateUid?.length || opts.translateGid?.length)) {
      throw new FsShareError('posix-acl cannot go with translate-uid/translate-gid: ACL entries would name untranslated ids');
    }
    if (this.posixAcl) {
      // Creates run under the guest's umask in this thread only (fsUmask unshares CLONE_FS on
      // first use): find out now, not as every guest create failing with EPERM, when a seccomp
      // profile (Docker's default, without CAP_SYS_ADMIN) refuses unshare.
      const prev = native.fsUmask(0o022);
      if (prev < 0) {
        throw new FsShareError(
          `posix-acl needs a umask of this device's own thread (unshare(CLONE_FS)), which this system refused: ${errnoName(-prev)}; ` +
            'allow unshare in the seccomp profile, or serve without --posix-acl',
        );
      }
      native.fsUmask(prev);
    }
    this.cache = opts.cache ?? 'auto';
    if (!CACHE_POLICIES.includes(this.cache)) throw new FsShareError(`cache must be ${CACHE_POLICIES.join(', ')}, not "${String(this.cache)}"`);
    try {
      this.uids = new IdMap(opts.translateUid ?? [], '--translate-uid');
      this.gids = new IdMap(opts.translateGid ?? [], '--translate-gid');
    } catch (e) {
      throw new FsShareError((e as Error).message);
    }
    this.xattrNames = new XattrMap(opts.xattrmap);
    this.capabilityName = this.xattr ? this.xattrNames.capabilityHostName() : null;
    this.tag = opts.tag ?? DEFAULT_TAG;
    this.migrationOnError = opts.migrationOnError ?? 'abort';
    if (!MIGRATION_ON_ERROR.includes(this.migrationOnError)) {
      throw new FsShareError(`migration-on-error must be ${MIGRATION_ON_ERROR.join(' or ')}, not "${String(this.migrationOnError)}"`);
    }
    if (Buffer.byteLength(this.tag) === 0 || Buffer.byteLength(this.tag) > MAX_TAG_BYTES) {
      throw new FsShareError(`the mount tag must be 1-${MAX_TAG_BYTES} bytes, not "${this.tag}"`);
    }
    this.inodeFileHandles = opts.inodeFileHandles ?? 'prefer';
    if (!INODE_FILE_HANDLES.includes(this.inodeFileHandles)) {
      throw new FsShareError(`inode-file-handles must be ${INODE_FILE_HANDLES.join(', ')}, not "${String(this.inodeFileHandles)}"`);
    }
    this.maxHandles = opts.maxHandles ?? 65536;
    const log = createLogger(`fs ${opts.label ?? dir}`);
    this.spentLog = new LogThrottle(log, 'warn', SPENT_LOG_INTERVAL_MS);
    // This thread's reserve of the fd budget from now (fd-budget.ts: the fairness rule), so
    // the root itself comes out of it; every throw below leaves again.
    joinFdBudget(this.maxHandles);
    try {
      const fd = native.fsOpenRoot(dir);
      if (fd < 0) {
        const why = fd === -E.ENFILE ? ' (the process-wide fd budget for shared directories is spent)' : '';
        throw new FsShareError(`cannot open the shared directory ${dir}: ${errnoName(-fd)}${why}`);
      }
      this.rootFd = fd;
      this.fsType = native.memoryFdInfo(fd).fsType;
      this.mountId = native.fsMountId(fd);
      // Reopening held inodes goes through /proc/self/fd (see host/native/src/fs.c): without
      // /proc every open would fail later, so refuse now with the reason.
      const probe = native.fsPathOf(fd);
      if (probe < 0) {
        native.fsClose(fd);
        throw new FsShareError(`the filesystem grant needs /proc mounted (reopening through /proc/self/fd failed: ${errnoName(-probe)})`);
      }
      native.fsClose(probe);
      this.nodesBy = 'fds';
      if (this.inodeFileHandles !== 'never') {
        const why = this.probeHandles();
        if (why === null) {
          this.nodesBy = 'handles';
        } else if (this.inodeFileHandles === 'mandatory') {
          native.fsClose(fd);
          throw new FsShareError(
            `--inode-file-handles=mandatory, but file handles do not work on ${dir}: ${why} ` +
              '(use --inode-file-handles=prefer or never: then every looked-up inode holds an fd)',
          );
        } else {
          log.warn(`file handles do not work on ${dir} (${why}): every looked-up inode holds an fd, so the process's fd limit bounds how many files the guest can hold`);
        }
      }
    } catch (e) {
      leaveFdBudget();
      throw e;
    }
  }

  /** null if nodes can be held by file handle here, else why not. */
  private probeHandles(): string | null {
    const n = native.fsNameToHandle(this.rootFd, this.fhBuf);
    if (n < 0) return `name_to_handle_at: ${errnoName(-n)}${-n === E.EOPNOTSUPP ? ' (the filesystem has no file handles)' : ''}`;
    const m = native.fsReopen(this.rootFd, O_DIRECTORY);
    if (m < 0) return `opening the directory: ${errnoName(-m)}`;
    const fd = native.fsOpenByHandle(m, this.fhBuf.subarray(0, n));
    if (fd < 0) {
      native.fsClose(m);
      return `open_by_handle_at: ${errnoName(-fd)}${-fd === E.EPERM ? ' (it needs CAP_DAC_READ_SEARCH)' : ''}`;
    }
    native.fsClose(fd);
    this.mountFd = m;
    return null;
  }

  /** Handles currently open (tests, limits). */
  get openHandles(): number {
    return this.handles.size;
  }

  /** Fds the handles hold now (nodes held by file handle hold none; the directory fd cache is apart). */
  get openFds(): number {
    return this.heldFds;
  }

  /** Directory fds kept open between calls for nodes held by handle (at most DIR_FD_CACHE). */
  get cachedDirFds(): number {
    return this.dirFds.size;
  }

  /** Closes every cached directory fd (budget pressure, a removal, a reset). */
  private dropDirFds(): void {
    for (const fd of this.dirFds.values()) this.closeCached(fd);
    this.dirFds.clear();
  }

  /**
   * Closes every handle (the root stays): the device was reset, so whatever the plugin held
   * is gone with its state, whether or not the plugin closed it itself. Ids are not reused,
   * so a handle the plugin kept answers EBADF.
   */
  releaseAll(): number {
    this.locks.releaseAll();
    const n = this.handles.size;
    for (const s of this.handles.values()) if (s.fd >= 0) native.fsClose(s.fd);
    this.dropDirFds();
    this.handles.clear();
    this.heldFds = 0;
    this.spentLog.reset();
    return n;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.releaseAll();
    native.fsClose(this.rootFd);
    if (this.mountFd >= 0) native.fsClose(this.mountFd);
    leaveFdBudget();
  }

  /** A budgeted native call's result: a spent budget is logged (once per episode). */
  private budgeted(fd: number): number {
    if (fd === -E.ENFILE) {
      // Said while the budget is as the refusal found it; then, short of fds, the cache gives
      // its own back, so the guest's retry finds them.
      this.noteSpent();
      this.dropDirFds();
    }
    return fd;
  }

  private noteSpent(): void {
    const b = fdBudgetInfo();
    const mine = fdBudgetAccount();
    // ENFILE also comes from the kernel when the whole system's file table is full.
    const what = this.heldFds >= this.maxHandles || mine.room < 1 || this.handles.size >= MAX_TABLE ? 'fd budget spent' : "the system's file table is full (ENFILE from the kernel)";
    // Who holds what: this device (against its reserve), all devices, and what is kept free
    // for the other devices' reserves (fd-budget.ts: the fairness rule).
    this.spentLog.hit(
      `${what}: this share holds ${this.heldFds} fds (at most ${this.maxHandles}) for ${this.handles.size} handles (at most ${MAX_TABLE}); ` +
        `this device ${mine.held} of the budget (its reserve ${mine.reserve}), all devices ${b.used} of ${b.budget}, ` +
        `${b.unspentReserves} kept free for the reserves of the other ${Math.max(0, b.accounts - 1)} device(s) with a share; ` +
        'the guest gets ENFILE for new lookups, opens and creates until it releases some (or the device is reset)',
    );
  }

  // ---- handle table ----

  /**
   * A new handle for fd (consumed). A node on a share whose nodes go by file handle keeps
   * only its handle and the fd is closed (with prefer, an inode without a handle keeps its fd).
   */
  private add(fd: number, kind: Slot['kind'], dir = false, acc?: number): FsResult<bigint> {
    let slot: Slot = acc === undefined ? { fd, kind } : { fd, kind, acc };
    if (kind === 'node' && this.nodesBy === 'handles') {
      const n = native.fsNameToHandle(fd, this.fhBuf);
      if (n >= 0) {
        native.fsClose(fd);
        slot = { fd: -1, kind, fh: Buffer.from(this.fhBuf.subarray(0, n)), dir };
      } else if (this.inodeFileHandles === 'mandatory') {
        native.fsClose(fd);
        return fail(-n);
      }
    }
    return this.insert(slot);
  }

  /** A new handle for slot (its fd, if any, consumed: closed when the table is full). */
  private insert(slot: Slot): FsResult<bigint> {
    // The share's cap counts the cached directory fds too; held fds come first.
    if (slot.fd >= 0 && this.heldFds + this.dirFds.size >= this.maxHandles) this.dropDirFds();
    if (this.handles.size >= MAX_TABLE || (slot.fd >= 0 && this.heldFds >= this.maxHandles)) {
      if (slot.fd >= 0) native.fsClose(slot.fd);
      this.noteSpent();
      return fail(E.ENFILE);
    }
    // Ids are never reused while the share lives, so a stale handle cannot alias a new one.
    const id = this.nextId++;
    this.handles.set(id, slot);
    if (slot.fd >= 0) this.heldFds++;
    return ok(BigInt(id));
  }

  private slot(h: bigint, kind?: Slot['kind']): Slot | undefined {
    if (h <= 0n || h >= BigInt(this.nextId)) return undefined;
    const s = this.handles.get(Number(h));
    if (!s || (kind && s.kind !== kind)) return undefined;
    return s;
  }

  /**
   * An fd for handle h for the length of fn: the one it holds, or (a node held by file handle)
   * one opened by that handle and closed again after fn. EBADF for an unknown handle; ESTALE
   * when the inode is gone; ENFILE when no fd can be had.
   */
  private using<T>(h: bigint, kind: Slot['kind'] | undefined, fn: (fd: number) => FsResult<T>): FsResult<T> {
    const s = this.slot(h, kind);
    if (!s) return fail(E.EBADF);
    if (s.fd >= 0) return fn(s.fd);
    let fd: number;
    let kept = false;
    if (s.dir) {
      fd = this.dirFd(Number(h), s.fh!);
      kept = fd >= 0 && this.dirFds.get(Number(h)) === fd;
    } else {
      fd = this.budgeted(native.fsOpenByHandle(this.mountFd, s.fh!));
    }
    if (fd < 0) return fail(-fd);
    // Nested calls (rename, link) may evict or drop a cached fd the outer call still uses:
    // such closes wait until the outermost call returns.
    this.depth++;
    try {
      return fn(fd);
    } finally {
      if (!kept) native.fsClose(fd);
      if (--this.depth === 0 && this.deferredClose.length > 0) for (const f of this.deferredClose.splice(0)) native.fsClose(f);
    }
  }

  /**
   * Directory `id`'s fd from the cache, or opened by handle and cached; a negative errno when
   * it cannot be opened. A cached directory another process removed meanwhile keeps its
   * inode through our fd: it answers as an fd-held node would (nlink 0, ENOENT for names in
   * it), as virtiofsd's fd-held inodes do, until it is evicted, and ESTALE after.
   */
  private dirFd(id: number, fh: Uint8Array): number {
    const hit = this.dirFds.get(id);
    if (hit !== undefined) {
      this.dirFds.delete(id);
      this.dirFds.set(id, hit);
      return hit;
    }
    const fd = this.budgeted(native.fsOpenByHandle(this.mountFd, fh));
    if (fd < 0) return fd;
    if (this.dirFds.size >= DIR_FD_CACHE) {
      const [oldId, oldFd] = this.dirFds.entries().next().value as [number, number];
      this.dirFds.delete(oldId);
      this.closeCached(oldFd);
    }
    if (this.heldFds + this.dirFds.size >= this.maxHandles) return fd;
    // What this device may still take (its unspent reserve and what the pool allows it), not
    // the whole budget's free fds: those may be other devices' reserves.
    if (fdBudgetAccount().room < DIR_FD_HEADROOM) {
      this.dropDirFds();
      return fd;
    }
    this.dirFds.set(id, fd);
    return fd;
  }

  /** Closes a cached fd now, or when the outermost using() returns if a call may be using it. */
  private closeCached(fd: number): void {
    if (this.depth > 0) this.deferredClose.push(fd);
    else native.fsClose(fd);
  }

  private fileFd(h: bigint): number {
    return this.slot(h, 'file')?.fd ?? -1;
  }

  // ---- the guest's locks across a live plugin upgrade (host/fs/lock-handoff.ts) ----

  /** "dev:ino" of any fd, or null. */
  private inodeKey(fd: number): string | null {
    const a = this.stat(fd);
    return a.ok ? `${a.val.dev}:${a.val.ino}` : null;
  }

  /** This share's open files by "inode/access mode". */
  private openFilesByKey(): Map<string, bigint[]> {
    const out = new Map<string, bigint[]>();
    for (const [id, s] of this.handles) {
      if (s.kind !== 'file' || s.fd < 0) continue;
      const inode = this.inodeKey(s.fd);
      if (inode === null) continue;
      const key = `${inode}/${s.acc ?? 0}`;
      out.set(key, [...(out.get(key) ?? []), BigInt(id)]);
    }
    return out;
  }

  /** The open files the guest's locks name, or why the next instance could not tell them apart. */
  private lockedFiles(): HandoffFile[] | string {
    const t = this.locks.describe();
    const named = new Set<bigint>([...t.owners.map((o) => o.file), ...t.flocked]);
    if (named.size === 0) return [];
    const byKey = this.openFilesByKey();
    const files: HandoffFile[] = [];
    for (const id of named) {
      const s = this.slot(id, 'file');
      const inode = s ? this.inodeKey(s.fd) : null;
      if (!s || inode === null) return `an open file holding a lock (handle ${id}) cannot be examined`;
      const acc = s.acc ?? 0;
      const twins = byKey.get(`${inode}/${acc}`)?.length ?? 0;
      if (twins > 1) {
        return `the guest has inode ${inode} open ${twins} times with the same access mode and holds a lock through one of them: ` +
          'the new instance reopens them by name and could not tell which is which; retry once the guest closed the others or released the lock';
      }
      files.push({ id, inode, acc, fd: s.fd });
    }
    return files;
  }

  /** Null when the guest's locks can move to another instance of the device in this process (a live plugin upgrade), else why not. */
  lockHandoffBound(): string | null {
    const f = this.lockedFiles();
    return typeof f === 'string' ? f : null;
  }

  /** The guest's locks as the next instance takes them over (rings stopped; lockHandoffBound() was null). */
  lockHandoff(): LockHandoff {
    const files = this.lockedFiles();
    if (typeof files === 'string') throw new Error(files);
    const t = this.locks.describe();
    return { pid: process.pid, files, owners: t.owners, flocked: t.flocked };
  }

  /**
   * Takes over the previous instance's locks, after the plugin's finish-load reopened the open
   * files: every lock-holding description is duplicated here (a flocked open file's own fd is
   * made to refer to the old description), so the locks never drop. Null, or what failed
   * (whatever was taken is let go again; the new instance is then discarded).
   */
  adoptLocks(h: LockHandoff): string | null {
    if (h.pid !== process.pid) return `the locks were handed over by process ${h.pid}, not this one (${process.pid}): their fds mean nothing here`;
    if (h.owners.length === 0 && h.flocked.length === 0) return null;
    const mine = this.openFilesByKey();
    const map = new Map<bigint, bigint>();
    for (const f of h.files) {
      const c = mine.get(`${f.inode}/${f.acc}`) ?? [];
      if (c.length !== 1) return `open file ${f.id} (inode ${f.inode}) of the previous instance ${c.length === 0 ? 'was not reopened here' : `matches ${c.length} reopened files`}`;
      map.set(f.id, c[0]);
    }
    const files = new Map(h.files.map((f) => [f.id, f]));
    const undo = (why: string) => {
      this.locks.releaseAll();
      return `taking over the guest's locks: ${why}`;
    };
    for (const old of h.flocked) {
      const f = files.get(old)!;
      const slot = this.slot(map.get(old)!, 'file')!;
      // Checked before the dup3: afterwards the slot's fd would already be the other file.
      if (this.inodeKey(f.fd) !== f.inode) return undo(`fd ${f.fd} of the previous instance is not inode ${f.inode}`);
      const r = native.fsDup(f.fd, slot.fd);
      if (r === -E.EACCES) return undo(`fd ${f.fd} of the previous instance is not open with the access mode (${f.acc}) of the file reopened here`);
      if (r < 0) return undo(`the flock of inode ${f.inode}: ${errnoName(-r)}`);
      this.locks.adoptFlock(map.get(old)!);
    }
    for (const o of h.owners) {
      // An owner's locks are on the inode of the open file they came through, one of those
      // matched above (so on this share): any other inode is refused before anything is held.
      if (o.inode !== files.get(o.file)!.inode) return undo(`lock owner ${o.owner} names inode ${o.inode}, not its open file's (${files.get(o.file)!.inode})`);
      const fd = native.fsDup(o.fd, -1);
      if (fd < 0) return undo(`lock owner ${o.owner} of inode ${o.inode}: ${errnoName(-fd)}`);
      if (this.inodeKey(fd) !== o.inode) {
        native.fsClose(fd);
        return undo(`fd ${o.fd} of the previous instance is not inode ${o.inode}`);
      }
      try {
        this.locks.adoptOwner({ ...o, fd, file: map.get(o.file)! });
      } catch (e) {
        native.fsClose(fd);
        return undo((e as Error).message);
      }
    }
    return null;
  }

  /** The fd of open-file handle `h`, or -1: for filesystem.backing (host/fs/file-backings.ts). The share keeps owning it. */
  openFileFd(h: bigint): number {
    return this.fileFd(h);
  }

  private stat(fd: number): FsResult<Attr> {
    const r = native.fsStat(fd, this.statBuf);
    return r < 0 ? fail(-r) : ok(this.attrOf());
  }

  /**
   * The Attr of the native stat in statBuf. A u64/s64 field is its double when that is below
   * 2^53 in magnitude (exact: the common case costs a comparison), else the exact bits the
   * native side stored beside it (STAT_BITS) as a bigint.
   */
  private attrOf(): Attr {
    const b = this.statBuf;
    const u = this.statU64;
    const i = this.statS64;
    return {
      dev: b[0],
      ino: b[1] < EXACT ? b[1] : u[STAT_BITS],
      mode: b[2],
      nlink: Math.min(b[3], 0xffffffff),
      uid: this.uids.toGuest(b[4]),
      gid: this.gids.toGuest(b[5]),
      rdev: b[6] > 0xffffffff ? 0 : b[6],
      size: b[7] < EXACT ? b[7] : u[STAT_BITS + 1],
      blksize: b[8],
      blocks: b[9] < EXACT ? b[9] : u[STAT_BITS + 2],
      atime: b[10] < EXACT && b[10] > -EXACT ? b[10] : i[STAT_BITS + 3],
      atimeNsec: b[11],
      mtime: b[12] < EXACT && b[12] > -EXACT ? b[12] : i[STAT_BITS + 4],
      mtimeNsec: b[13],
      ctime: b[14] < EXACT && b[14] > -EXACT ? b[14] : i[STAT_BITS + 5],
      ctimeNsec: b[15],
    };
  }

  /** A node handle for O_PATH fd `fd` (consumed) with its attributes. */
  private entryOf(fd: number): FsResult<Entry> {
    const a = this.stat(fd);
    if (!a.ok) {
      native.fsClose(fd);
      return a;
    }
    const h = this.add(fd, 'node', (a.val.mode & S_IFMT) === S_IFDIR);
    if (!h.ok) return h;
    return ok({ node: h.val, attr: a.val });
  }

  /**
   * A node handle for `name` in directory fd `dirFd` with its attributes, in one native call
   * (fsLookupEntry: the lookup, its stat and its file handle; the fd closed when the handle is
   * had). Node 0 and no handle when it is the very inode of the plugin's node handle
   * `known.node`. (dev, ino) alone is not that: a node held by file handle does not pin its
   * inode, so a new file may have its number; the file handle (which holds the generation) is
   * compared too. A node held by O_PATH fd pins its inode: its number cannot be reused while
   * it is held.
   */
  private lookupFd(dirFd: number, name: Uint8Array, known?: { node: bigint; dev: bigint; ino: bigint }): FsResult<Entry> {
    const b = this.statBuf;
    const r = this.budgeted(native.fsLookupEntry(dirFd, name, b, this.nodesBy === 'handles' ? this.fhBuf : null));
    if (r < 0) return fail(-r);
    const fd = b[STAT_SLOTS];
    const fhLen = b[STAT_SLOTS + 1];
    const attr = this.attrOf();
    if (known && sameU64(attr.ino, known.ino) && sameU64(attr.dev, known.dev)) {
      const k = this.slot(known.node, 'node');
      if (k && (!k.fh || (fhLen > 0 && sameBytes(k.fh, this.fhBuf, fhLen)))) {
        if (fd >= 0) native.fsClose(fd);
        return ok({ node: 0n, attr });
      }
    }
    let slot: Slot;
    if (fhLen > 0) {
      const type = attr.mode & S_IFMT;
      slot = { fd: -1, kind: 'node', fh: Buffer.from(this.fhBuf.subarray(0, fhLen)), dir: type === S_IFDIR, reg: type === S_IFREG };
    } else if (this.nodesBy === 'handles' && this.inodeFileHandles === 'mandatory') {
      native.fsClose(fd);
      return fail(-fhLen);
    } else {
      slot = { fd, kind: 'node' };
    }
    const h = this.insert(slot);
    return h.ok ? ok({ node: h.val, attr }) : h;
  }

  // ---- the capability ----

  root(): FsResult<Entry> {
    const fd = this.budgeted(native.fsPathOf(this.rootFd));
    return fd < 0 ? fail(-fd) : this.entryOf(fd);
  }

  lookup(dir: bigint, name: Uint8Array): FsResult<Entry> {
    return this.using(dir, 'node', (d) => this.lookupFd(d, name));
  }

  /**
   * lookup-known: as lookup, for a name the plugin believes is the inode of its node handle
   * `known`, (dev, ino). When it is that very inode (entryOf), no handle is made (node 0): a
   * warm LOOKUP or READDIRPLUS entry then costs no table slot or close call. The name
   * resolves exactly as lookup's (fsLookup: beneath the directory, no symlink followed).
   */
  lookupKnown(dir: bigint, name: Uint8Array, known: bigint, dev: bigint, ino: bigint): FsResult<Entry> {
    return this.using(dir, 'node', (d) => this.stillKnown(d, name, known, dev, ino) ?? this.lookupFd(d, name, { node: known, dev, ino }));
  }

  /**
   * lookupKnown's quick way: the name's stat and file handle without opening it (fsStatName,
   * which says why that is the held inode's stat when the checks below pass). Node 0 and the
   * attributes when the name is still the inode of node handle `known`: (dev, ino) as held, on
   * the share's own mount (not a mount point), and for a node held by file handle the same
   * record. Otherwise (a changed name, any error) undefined: lookupFd answers it.
   */
  private stillKnown(d: number, name: Uint8Array, known: bigint, dev: bigint, ino: bigint): FsResult<Entry> | undefined {
    const k = this.slot(known, 'node');
    if (!k) return undefined;
    const b = this.statBuf;
    if (native.fsStatName(d, name, b, k.fh ? this.fhBuf : null) !== 0 || b[STAT_SLOTS] !== this.mountId) return undefined;
    const fhLen = b[STAT_SLOTS + 1];
    if (k.fh && !(fhLen > 0 && sameBytes(k.fh, this.fhBuf, fhLen))) return undefined;
    const attr = this.attrOf();
    return sameU64(attr.ino, ino) && sameU64(attr.dev, dev) ? ok({ node: 0n, attr }) : undefined;
  }

  /**
   * same-node: for node handles a and b whose entries had the same (dev, ino), whether they
   * are one inode. Two file handles are compared (they include the generation, which a new
   * file given a deleted one's number does not share); a node held by O_PATH fd pins its
   * inode, so its number was not reused. No system call.
   */
  sameNode(a: bigint, b: bigint): boolean {
    const sa = this.slot(a, 'node');
    const sb = this.slot(b, 'node');
    if (!sa || !sb) return false;
    if (!sa.fh || !sb.fh) return true;
    return sameBytes(sa.fh, sb.fh, sb.fh.length);
  }

  closeHandle(h: bigint): void {
    const s = this.slot(h);
    if (!s) return;
    if (s.kind === 'file') this.locks.fileClosing(h);
    this.handles.delete(Number(h));
    const cached = this.dirFds.get(Number(h));
    if (cached !== undefined) {
      this.dirFds.delete(Number(h));
      this.closeCached(cached);
    }
    if (s.fd >= 0) {
      native.fsClose(s.fd);
      this.heldFds--;
    }
  }

  /**
   * Closes open-file handle `h` as closeHandle does (its locks go), but hands its fd to the
   * caller instead of closing it: I/O on it may still be in flight (host/fs/file-backings.ts
   * closes it with native.fsClose once that is done). -1 when `h` is no open file.
   */
  detachFile(h: bigint): number {
    const s = this.slot(h, 'file');
    if (!s) return -1;
    this.locks.fileClosing(h);
    this.handles.delete(Number(h));
    if (s.fd >= 0) this.heldFds--;
    return s.fd;
  }

  getattr(h: bigint): FsResult<Attr> {
    const s = this.slot(h);
    if (!s) return fail(E.EBADF);
    // A node held by handle (not a cached directory): opened, stat'ed and closed in one call.
    if (s.fd < 0 && !s.dir) {
      const r = this.budgeted(native.fsStatByHandle(this.mountFd, s.fh!, this.statBuf));
      return r < 0 ? fail(-r) : ok(this.attrOf());
    }
    return this.using(h, undefined, (fd) => this.stat(fd));
  }

  setattr(
    h: bigint,
    valid: number,
    mode: number,
    uid: number,
    gid: number,
    size: bigint,
    atime: bigint,
    atimeNsec: number,
    mtime: bigint,
    mtimeNsec: number,
  ): FsResult<Attr> {
    if (!this.slot(h)) return fail(E.EBADF);
    if (this.readOnly && valid & (FATTR.MODE | FATTR.UID | FATTR.GID | FATTR.SIZE | FATTR.ATIME | FATTR.MTIME)) {
      return fail(E.EROFS);
    }
    return this.using(h, undefined, (fd) => this.setattrFd(fd, valid, mode, uid, gid, size, atime, atimeNsec, mtime, mtimeNsec));
  }

  private setattrFd(
    fd: number,
    valid: number,
    mode: number,
    uid: number,
    gid: number,
    size: bigint,
    atime: bigint,
    atimeNsec: number,
    mtime: bigint,
    mtimeNsec: number,
  ): FsResult<Attr> {
    let r = 0;
    if (valid & FATTR.MODE) {
      const cur = this.stat(fd);
      if (!cur.ok) return cur;
      r = native.fsSetattr(fd, 'mode', safeMode(cur.val.mode, mode));
    }
    if (r >= 0 && valid & (FATTR.UID | FATTR.GID)) {
      // --translate-uid/gid: the guest's ids become the host's; a forbidden one is EPERM.
      const hu = valid & FATTR.UID ? this.uids.toHost(uid) : -1;
      const hg = valid & FATTR.GID ? this.gids.toHost(gid) : -1;
      if ((valid & FATTR.UID && hu < 0) || (valid & FATTR.GID && hg < 0)) r = -E.EPERM;
      else r = -this.dropCapability(fd) || native.fsSetattr(fd, 'owner', hu, hg);
    }
    if (r >= 0 && valid & FATTR.SIZE) {
      if (size > BigInt(Number.MAX_SAFE_INTEGER)) return fail(E.EFBIG);
      r = -this.dropCapability(fd) || native.fsSetattr(fd, 'size', Number(size));
    }
    if (r >= 0 && valid & (FATTR.ATIME | FATTR.MTIME)) {
      const t = (set: number, now: number, sec: bigint, nsec: number): [number, number] => {
        if (!(valid & set)) return [0, UTIME_OMIT];
        if (valid & now) return [0, UTIME_NOW];
        if (nsec >= 1e9 || sec > BigInt(Number.MAX_SAFE_INTEGER) || sec < -BigInt(Number.MAX_SAFE_INTEGER)) return [0, -1];
        return [Number(sec), nsec];
      };
      const [as, an] = t(FATTR.ATIME, FATTR.ATIME_NOW, atime, atimeNsec);
      const [ms, mn] = t(FATTR.MTIME, FATTR.MTIME_NOW, mtime, mtimeNsec);
      r = an < 0 || mn < 0 ? -E.EINVAL : native.fsSetattr(fd, 'times', as, an, ms, mn);
    }
    if (r < 0) return fail(-r);
    return this.stat(fd);
  }

  open(node: bigint, flags: number): FsResult<bigint> {
    const s = this.slot(node, 'node');
    if (!s) return fail(E.EBADF);
    if (this.readOnly && ((flags & O_ACCMODE) !== 0 || flags & O_TRUNC)) return fail(E.EROFS);
    if (s.reg && s.fd < 0 && handleHasGeneration(s.fh!)) {
      // Opened for I/O by its handle in one step (no O_PATH fd, no reopen through /proc): only
      // where the handle carries a generation, so that it cannot name a newer inode of the
      // same number (a FIFO or a device node, which opening for I/O would act on); others
      // take the O_PATH way, whose type check comes before any open for I/O.
      const fd = this.budgeted(native.fsOpenFileByHandle(this.mountFd, s.fh!, flags >>> 0));
      return this.addOpened(fd, flags);
    }
    return this.using(node, 'node', (n) => this.addOpened(this.budgeted(native.fsReopen(n, flags)), flags));
  }

  /** An fd open() made (or -errno): O_TRUNC drops a renamed capability first (dropCapability). */
  private addOpened(fd: number, flags: number): FsResult<bigint> {
    if (fd < 0) return fail(-fd);
    const no = flags & O_TRUNC ? this.dropCapability(fd) : 0;
    if (no) {
      native.fsClose(fd);
      return fail(no);
    }
    return this.add(fd, 'file', false, flags & O_ACCMODE);
  }

  /**
   * Drops the renamed security.capability (capabilityName) of the inode `fd` names: what the
   * host kernel does for the real name when a file is truncated, written or chowned, so that a
   * guest who rewrites a file with capabilities does not keep them (virtiofsd 1.13 likewise, on
   * open with O_TRUNC, every write, chown and truncate). Nothing to drop (ENODATA) or no xattrs
   * there (EOPNOTSUPP) is fine; 0 or the errno that stops the call.
   */
  dropCapability(fd: number): number {
    const name = this.capabilityName;
    if (name === null) return 0;
    const r = native.fsRemovexattr(fd, name);
    if (r >= 0 || r === -E.ENODATA || r === -E.EOPNOTSUPP) return 0;
    // Only a regular file can carry capabilities, and the kernel refuses user.* names on a
    // symlink or device node with EPERM: that refusal must not stop their chown (virtiofsd 1.13
    // lets it, and fails an lchown of a symlink under such a map; docs/virtio-fs.md).
    if (r === -E.EPERM) {
      const st = this.stat(fd);
      if (st.ok && (st.val.mode & S_IFMT) !== S_IFREG) return 0;
    }
    return -r;
  }

  /**
   * `umask`: create under it (withUmask), the mode not yet masked (FUSE_DONT_MASK); without
   * it the guest already masked `mode`, which the new file then gets exactly.
   */
  create(dir: bigint, name: Uint8Array, flags: number, mode: number, umask?: number): FsResult<[Entry, bigint]> {
    if (!this.slot(dir, 'node')) return fail(E.EBADF);
    if (this.readOnly) return fail(E.EROFS);
    return this.using(dir, 'node', (d) => this.createIn(d, name, flags, mode, umask));
  }

  private createIn(d: number, name: Uint8Array, flags: number, mode: number, umask?: number): FsResult<[Entry, bigint]> {
    // Exclusive first, so we know whether we made the file (and may set its mode).
    const want = safeMode(S_IFREG, mode);
    let fd = this.budgeted(withUmask(umask, () => native.fsCreate(d, name, flags | O_EXCL, want)));
    const made = fd >= 0;
    if (fd === -E.EEXIST && !(flags & O_EXCL)) {
      // An existing entry: fsCreate opens it only if it is a regular file (never a FIFO,
      // socket or device: ENXIO), through the inode it pinned, so this cannot block.
      // Under the guest's umask too: the entry may be gone again by now and made by this call.
      fd = this.budgeted(withUmask(umask, () => native.fsCreate(d, name, flags, want)));
    }
    if (fd < 0) return fail(-fd);
    // An existing file opened with O_TRUNC is truncated: as open() (a new one has nothing to drop).
    const no = !made && flags & O_TRUNC ? this.dropCapability(fd) : 0;
    if (no) {
      native.fsClose(fd);
      return fail(no);
    }
    return this.entryAndFile(fd, made, flags, want, umask);
  }

  /**
   * A file create or tmpfile opened (fd; `made`: by this call, so its mode is ours to set) as
   * its node and an open-file handle; on failure fd is closed and nothing of it stays.
   */
  private entryAndFile(fd: number, made: boolean, flags: number, want: number, umask: number | undefined): FsResult<[Entry, bigint]> {
    const e = this.nodeOfOpen(fd);
    if (!e.ok) {
      native.fsClose(fd);
      return e;
    }
    // Only when the host's umask took bits off (a chmod per create costs an inode update);
    // under the guest's umask the kernel's mode (umask or default ACL) is the one wanted.
    if (made && umask === undefined && (e.val.attr.mode & 0o7777) !== want && exactMode(fd, want)) e.val.attr.mode = (e.val.attr.mode & S_IFMT) | want;
    const f = this.add(fd, 'file', false, flags & O_ACCMODE);
    if (!f.ok) {
      this.closeHandle(e.val.node);
      return f;
    }
    return ok([e.val, f.val]);
  }

  /**
   * tmpfile (O_TMPFILE): an unnamed regular file in `dir`, its node and an open-file handle.
   * `umask` as for create. The node has no name until `link` gives it one; held by file handle
   * (nodeOfOpen) it pins nothing, so once the guest closes it unlinked the inode is gone from
   * the host with the last fd, as a local tmpfile is.
   */
  tmpfile(dir: bigint, flags: number, mode: number, umask?: number): FsResult<[Entry, bigint]> {
    if (!this.slot(dir, 'node')) return fail(E.EBADF);
    if (this.readOnly) return fail(E.EROFS);
    const want = safeMode(S_IFREG, mode);
    return this.using(dir, 'node', (d) => {
      const fd = this.budgeted(withUmask(umask, () => native.fsTmpfile(d, flags, want)));
      // Always made by this call: as createIn, the host's own umask must not apply a second time.
      return fd < 0 ? fail(-fd) : this.entryAndFile(fd, true, flags, want, umask);
    });
  }

  /**
   * A node handle for the very inode open file `fd` is (no second lookup by name to race),
   * with its attributes; fd stays open. By the file handle made from fd itself where nodes go
   * by handle (a stat and name_to_handle_at: no O_PATH fd through /proc to open and close),
   * else a new O_PATH fd on it.
   */
  private nodeOfOpen(fd: number): FsResult<Entry> {
    if (this.nodesBy === 'handles') {
      const a = this.stat(fd);
      if (!a.ok) return a;
      const n = native.fsNameToHandle(fd, this.fhBuf);
      if (n >= 0) {
        const type = a.val.mode & S_IFMT;
        const h = this.insert({ fd: -1, kind: 'node', fh: Buffer.from(this.fhBuf.subarray(0, n)), dir: type === S_IFDIR, reg: type === S_IFREG });
        return h.ok ? ok({ node: h.val, attr: a.val }) : h;
      }
      if (this.inodeFileHandles === 'mandatory') return fail(-n);
    }
    const p = this.budgeted(native.fsPathOf(fd));
    return p < 0 ? fail(-p) : this.entryOf(p);
  }

  private make(kind: 'f' | 'p' | 's' | 'd' | 'l', dir: bigint, name: Uint8Array, mode: number, target?: Uint8Array, umask?: number): FsResult<Entry> {
    if (!this.slot(dir, 'node')) return fail(E.EBADF);
    if (this.readOnly) return fail(E.EROFS);
    const e = this.using(dir, 'node', (d) => {
      const r = withUmask(umask, () => native.fsMake(kind, d, name, mode, target));
      return r < 0 ? fail(-r) : this.lookupFd(d, name);
    });
    if (e.ok && kind !== 'l' && umask === undefined && (e.val.attr.mode & 0o7777) !== mode) {
      const set = this.using(e.val.node, 'node', (fd) => ok(exactMode(fd, mode)));
      if (set.ok && set.val) return ok({ node: e.val.node, attr: { ...e.val.attr, mode: (e.val.attr.mode & S_IFMT) | mode } });
    }
    return e;
  }

  /** `umask`: as for create. */
  mknod(dir: bigint, name: Uint8Array, mode: number, umask?: number): FsResult<Entry> {
    // FIFOs and sockets are inert in the share: OPEN of either is ENXIO here (the guest
    // kernel serves them itself and never asks). Device nodes are refused: a guest's root
    // could otherwise plant a node for a host disk where the host's users can open it.
    const type = mode & 0o170000;
    if (type === 0o010000) return this.make('p', dir, name, mode & 0o777, undefined, umask);
    if (type === 0o140000) return this.make('s', dir, name, mode & 0o777, undefined, umask);
    if (type !== 0 && type !== 0o100000) return fail(E.EPERM);
    return this.make('f', dir, name, safeMode(S_IFREG, mode), undefined, umask);
  }

  /** `umask`: as for create. */
  mkdir(dir: bigint, name: Uint8Array, mode: number, umask?: number): FsResult<Entry> {
    return this.make('d', dir, name, safeMode(S_IFDIR, mode), undefined, umask);
  }

  symlink(dir: bigint, name: Uint8Array, target: Uint8Array): FsResult<Entry> {
    return this.make('l', dir, name, 0, target);
  }

  link(node: bigint, dir: bigint, name: Uint8Array): FsResult<Entry> {
    if (!this.slot(node, 'node') || !this.slot(dir, 'node')) return fail(E.EBADF);
    if (this.readOnly) return fail(E.EROFS);
    return this.using(node, 'node', (n) =>
      this.using(dir, 'node', (d) => {
        const r = native.fsLink(n, d, name);
        return r < 0 ? fail(-r) : this.lookupFd(d, name);
      }),
    );
  }

  private remove(dir: bigint, name: Uint8Array, isDir: boolean): FsResult<void> {
    if (!this.slot(dir, 'node')) return fail(E.EBADF);
    if (this.readOnly) return fail(E.EROFS);
    return this.using(dir, 'node', (d) => {
      const r = native.fsUnlink(d, name, isDir);
      // The removed directory's fd may be cached: it must not keep the inode alive.
      if (isDir && r === 0) this.dropDirFds();
      return r < 0 ? fail(-r) : ok(undefined);
    });
  }

  unlink(dir: bigint, name: Uint8Array): FsResult<void> {
    return this.remove(dir, name, false);
  }

  rmdir(dir: bigint, name: Uint8Array): FsResult<void> {
    return this.remove(dir, name, true);
  }

  rename(oldDir: bigint, oldName: Uint8Array, newDir: bigint, newName: Uint8Array, flags: number): FsResult<void> {
    if (!this.slot(oldDir, 'node') || !this.slot(newDir, 'node')) return fail(E.EBADF);
    if (this.readOnly) return fail(E.EROFS);
    return this.using(oldDir, 'node', (o) =>
      this.using(newDir, 'node', (n) => {
        const r = native.fsRename(o, oldName, n, newName, flags);
        // A directory renamed over may be cached (see remove()).
        if (r === 0) this.dropDirFds();
        return r < 0 ? fail(-r) : ok(undefined);
      }),
    );
  }

  readlink(node: bigint): FsResult<Uint8Array> {
    return this.using(node, 'node', (n) => {
      const buf = new Uint8Array(4096);
      const r = native.fsReadlink(n, buf);
      return r < 0 ? fail(-r) : ok(buf.subarray(0, r));
    });
  }

  read(file: bigint, offset: bigint, len: number): FsResult<Uint8Array> {
    const f = this.fileFd(file);
    if (f < 0) return fail(E.EBADF);
    if (offset > BigInt(Number.MAX_SAFE_INTEGER)) return ok(new Uint8Array(0));
    const buf = new Uint8Array(Math.min(len, MAX_FS_IO));
    const r = native.fsPread(f, buf, Number(offset));
    return r < 0 ? fail(-r) : ok(buf.subarray(0, r));
  }

  write(file: bigint, offset: bigint, data: Uint8Array): FsResult<number> {
    const f = this.fileFd(file);
    if (f < 0) return fail(E.EBADF);
    if (this.readOnly) return fail(E.EROFS);
    if (data.length > MAX_FS_IO) return fail(E.EINVAL);
    if (offset > BigInt(Number.MAX_SAFE_INTEGER)) return fail(E.EFBIG);
    const no = this.dropCapability(f);
    if (no) return fail(no);
    const r = native.fsPwrite(f, data, Number(offset));
    return r < 0 ? fail(-r) : ok(r);
  }

  readdir(dir: bigint, offset: bigint, max: number): FsResult<DirEntry[]> {
    const slot = this.slot(dir, 'file');
    if (!slot) return fail(E.EBADF);
    const f = slot.fd;
    slot.dirPos = undefined;
    if (offset >= 2n ** 63n) return ok([]);
    const want = Math.max(0, Math.min(max, 4096));
    const out: DirEntry[] = [];
    // The kernel fills all of the buffer it is given (and the next call seeks back to where we
    // stopped), so a buffer sized for what was asked: READDIRPLUS asks ~25 entries per 4 KiB
    // page, and a 32 KiB buffer made ext4 read ~800 for them. Longer names only cost another call.
    const buf = this.direntBuf.subarray(0, Math.min(DIRENT_BUF, Math.max(DIRENT_MIN, want * DIRENT_GUESS)));
    let pos = offset;
    while (out.length < want) {
      const n = native.fsGetdents(f, buf, pos);
      if (n < 0) return fail(-n);
      if (n === 0) break;
      let at = 0;
      while (at < n && out.length < want) {
        // linux_dirent64: u64 ino, s64 off, u16 reclen, u8 type, name NUL-terminated.
        const ino = buf.readBigUInt64LE(at);
        const next = buf.readBigInt64LE(at + 8);
        const reclen = buf.readUInt16LE(at + 16);
        const kind = buf[at + 18];
        const end = buf.indexOf(0, at + 19);
        const name = new Uint8Array(buf.subarray(at + 19, end < 0 || end > at + reclen ? at + reclen : end));
        out.push({ ino, next: next < 0n ? 0n : next, kind, name });
        pos = next;
        at += reclen;
        if (reclen === 0) return fail(E.EIO);
      }
    }
    return ok(out);
  }

  /**
   * The entries of open directory `dir` from `offset` as FUSE's fuse_dirent records, whole ones
   * that fit in `maxBytes` when each counts `perEntry` more, near full (wit/device.wit
   * `readdir-records`): one buffer however many entries, where `readdir` makes an object, a
   * BigInt pair and a name copy (and the plugin an allocation) per entry. The answer is a view
   * of a buffer reused by the next call.
   *
   * It never reads an entry it does not return: each getdents64 gets only as many bytes as
   * surely fit once converted (a 24-byte record, the shortest, becomes 32 + perEntry), and the
   * next read goes on from there. A listing then continues at the directory fd's own position,
   * and ext4 keeps the hashed block it read instead of hashing it again on every request (it
   * does so whenever the position asked for is not where the last getdents64 stopped).
   */
  readdirRecords(dir: bigint, offset: bigint, maxBytes: number, perEntry: number): FsResult<Uint8Array> {
    const slot = this.slot(dir, 'file');
    if (!slot) return fail(E.EBADF);
    const f = slot.fd;
    if (perEntry >>> 0 > RECORD_EXTRA_MAX) return fail(E.EINVAL);
    if (offset >= 2n ** 63n) return ok(new Uint8Array(0));
    const cap = Math.min(maxBytes >>> 0, RECORDS_MAX);
    const extra = perEntry >>> 0;
    if (this.records.length < cap) {
      this.records = new Uint8Array(Math.max(cap, 4096));
      this.recordWords = new Uint32Array(this.records.buffer);
    }
    const out = this.records;
    const words = this.recordWords;
    const src = this.direntBuf;
    const srcWords = this.direntWords;
    let pos = offset;
    let used = 0;
    let charged = 0;
    for (;;) {
      const want = Math.min(DIRENT_BUF, Math.floor(((cap - charged) * 24) / (32 + extra))) & ~7;
      let n = want >= 24 ? native.fsGetdents(f, src.subarray(0, want), slot.dirPos === pos ? null : pos) : -E.EINVAL;
      if (n === -E.EINVAL) {
        // The next entry alone is longer than `want`: past the first, the reply ends here
        // (the next call starts with it); as the first, read it whole and see if it fits.
        if (used > 0) break;
        n = native.fsGetdents(f, src.subarray(0, DIRENT_MIN), slot.dirPos === pos ? null : pos);
      }
      // From here until the position is known again the fd stands who knows where.
      slot.dirPos = undefined;
      if (n < 0) return fail(-n);
      if (n === 0) {
        slot.dirPos = pos;
        break;
      }
      let last = 0;
      for (let at = 0; at < n; ) {
        const reclen = src[at + 16] | (src[at + 17] << 8);
        if (reclen < 24 || at + reclen > n || reclen & 7) return fail(E.EIO);
        let len = 0;
        const name = at + 19;
        while (len < reclen - 19 && src[name + len] !== 0) len++;
        if (len === 0 || len > 255) return fail(E.EIO);
        const rec = (RECORD_HEAD + len + 7) & ~7;
        // Only after the DIRENT_MIN read above: the entries past this one were read for nothing
        // (and the fd stands past them: the next call seeks).
        if (charged + rec + extra > cap) return used === 0 ? fail(E.EINVAL) : ok(out.subarray(0, used));
        const w = used >> 2;
        const r = at >> 2;
        words[w] = srcWords[r];
        words[w + 1] = srcWords[r + 1];
        // d_off: a negative position (never seen) reads as 0, as readdir answers it.
        const negative = srcWords[r + 3] >= 0x80000000;
        words[w + 2] = negative ? 0 : srcWords[r + 2];
        words[w + 3] = negative ? 0 : srcWords[r + 3];
        words[w + 4] = len;
        words[w + 5] = src[at + 18];
        const to = used + RECORD_HEAD;
        for (let i = 0; i < len; i++) out[to + i] = src[name + i];
        for (let i = to + len; i < used + rec; i++) out[i] = 0;
        used += rec;
        charged += rec + extra;
        last = r;
        at += reclen;
      }
      // Read on from the last entry's position (an s64, as the kernel gave it): where the fd is now.
      pos = (BigInt(srcWords[last + 3] | 0) << 32n) | BigInt(srcWords[last + 2]);
      slot.dirPos = pos;
    }
    return ok(out.subarray(0, used));
  }

  fsync(file: bigint, datasync: boolean): FsResult<void> {
    const f = this.fileFd(file);
    if (f < 0) return fail(E.EBADF);
    const r = native.fsFsync(f, datasync);
    return r < 0 ? fail(-r) : ok(undefined);
  }

  fallocate(file: bigint, mode: number, offset: bigint, len: bigint): FsResult<void> {
    const f = this.fileFd(file);
    if (f < 0) return fail(E.EBADF);
    if (this.readOnly) return fail(E.EROFS);
    const max = BigInt(Number.MAX_SAFE_INTEGER);
    if (offset > max || len > max) return fail(E.EFBIG);
    // The host kernel drops a real capability here too (file_modified): so the renamed one.
    const no = this.dropCapability(f);
    if (no) return fail(no);
    const r = native.fsFallocate(f, mode, Number(offset), Number(len));
    return r < 0 ? fail(-r) : ok(undefined);
  }

  lseek(file: bigint, offset: bigint, whence: number): FsResult<bigint> {
    const f = this.fileFd(file);
    if (f < 0) return fail(E.EBADF);
    const max = BigInt(Number.MAX_SAFE_INTEGER);
    if (offset > max || offset < -max) return fail(E.EINVAL);
    const r = native.fsLseek(f, Number(offset), whence);
    return typeof r === 'bigint' ? ok(r) : r < 0 ? fail(-r) : ok(BigInt(r));
  }

  /** copy_file_range(2) between two open files of the share: the bytes copied (at most 1 GiB a call). */
  copyFileRange(src: bigint, srcOffset: bigint, dst: bigint, dstOffset: bigint, len: bigint): FsResult<bigint> {
    const i = this.fileFd(src);
    const o = this.fileFd(dst);
    if (i < 0 || o < 0) return fail(E.EBADF);
    if (this.readOnly) return fail(E.EROFS);
    const max = BigInt(Number.MAX_SAFE_INTEGER);
    if (srcOffset > max || dstOffset > max) return fail(E.EINVAL);
    // The destination is written: its renamed capability goes, as the kernel's real one does.
    const no = this.dropCapability(o);
    if (no) return fail(no);
    const n = native.fsCopyFileRange(i, Number(srcOffset), o, Number(dstOffset), Number(len > 1n << 30n ? 1n << 30n : len));
    return n < 0 ? fail(-n) : ok(BigInt(n));
  }

  /** syncfs(2) of the filesystem node or open file `h` is on. */
  syncfs(h: bigint): FsResult<void> {
    return this.using(h, undefined, (fd) => {
      const r = native.fsSyncfs(fd);
      return r < 0 ? fail(-r) : ok(undefined);
    });
  }

  /** FUSE_GETLK: the first conflicting lock of another owner (host/fs/locks.ts). */
  getlk(file: bigint, owner: bigint, lock: FileLock): FsResult<FileLock> {
    const r = this.locks.getlk(file, owner, lock);
    return r.ok ? ok(r.val) : fail(r.errno);
  }

  /** FUSE_SETLK(W): see FsLocks.setlk; `wait` 0 never waits, else EINPROGRESS and a wake later. */
  setlk(file: bigint, owner: bigint, lock: FileLock, flock: boolean, wait: bigint): FsResult<void> {
    const r = this.locks.setlk(file, owner, lock, flock, wait);
    return r.ok ? ok(undefined) : fail(r.errno);
  }

  /**
   * The errno that stops an xattr call on node or open file `h` first, or 0: ENOSYS without
   * --xattr (the guest kernel then stops asking), EBADF, for a refused name (host/fs/xattr.ts)
   * ENODATA to read it (it is hidden: lists leave it out too) and EPERM to change it, EROFS for
   * a change to a read-only share. (virtiofsd 1.13's "bad" --xattrmap rule answers the same.)
   */
  private xattrRefused(h: bigint, change: boolean): number {
    if (!this.xattr) return E.ENOSYS;
    if (!this.slot(h)) return E.EBADF;
    if (change && this.readOnly) return E.EROFS;
    return 0;
  }

  /**
   * The host's name for a guest's xattr name (--xattrmap), or the errno refusing it. The
   * POSIX ACL names and the starts of them are EOPNOTSUPP without --posix-acl
   * (host/fs/xattr.ts), before any mapping.
   */
  private hostXattrName(name: Uint8Array, change: boolean): Uint8Array | number {
    if (!this.posixAcl && isPosixAclName(name)) return E.EOPNOTSUPP;
    const n = this.xattrNames.toHost(name);
    // Reading a refused name finds nothing (it is hidden from lists too); changing it is refused.
    if (typeof n === 'number') return change || n !== E.EPERM ? n : E.ENODATA;
    return n.length > 255 ? E.ERANGE : n;
  }

  getxattr(h: bigint, guestName: Uint8Array): FsResult<Uint8Array> {
    const no = this.xattrRefused(h, false);
    if (no) return fail(no);
    const name = this.hostXattrName(guestName, false);
    if (typeof name === 'number') return fail(name);
    return this.using(h, undefined, (fd) => {
      const buf = (this.xattrBuf ??= new Uint8Array(XATTR_MAX));
      const r = native.fsGetxattr(fd, name, buf);
      return r < 0 ? fail(-r) : ok(buf.slice(0, r));
    });
  }

  listxattr(h: bigint): FsResult<Uint8Array> {
    const no = this.xattrRefused(h, false);
    if (no) return fail(no);
    return this.using(h, undefined, (fd) => {
      const buf = (this.xattrBuf ??= new Uint8Array(XATTR_MAX));
      const r = native.fsListxattr(fd, buf);
      if (r < 0) return fail(-r);
      const names = this.xattrNames.listToGuest(buf.subarray(0, r));
      return ok(this.posixAcl ? names : withoutPosixAcl(names));
    });
  }

  setxattr(h: bigint, guestName: Uint8Array, value: Uint8Array, flags: number): FsResult<void> {
    const no = this.xattrRefused(h, true);
    if (no) return fail(no);
    const name = this.hostXattrName(guestName, true);
    if (typeof name === 'number') return fail(name);
    if (value.length > XATTR_MAX) return fail(E.E2BIG);
    return this.using(h, undefined, (fd) => {
      const r = native.fsSetxattr(fd, name, value, flags >>> 0);
      return r < 0 ? fail(-r) : ok(undefined);
    });
  }

  removexattr(h: bigint, guestName: Uint8Array): FsResult<void> {
    const no = this.xattrRefused(h, true);
    if (no) return fail(no);
    const name = this.hostXattrName(guestName, true);
    if (typeof name === 'number') return fail(name);
    return this.using(h, undefined, (fd) => {
      const r = native.fsRemovexattr(fd, name);
      return r < 0 ? fail(-r) : ok(undefined);
    });
  }

  statfs(h: bigint): FsResult<FsStats> {
    return this.using(h, undefined, (fd) => {
      // Doubles, left so: a block or inode count past 2^53 (an exabyte file system) rounded in
      // its last bits misleads no df; exact bits as the stat's would buy nothing.
      const b = new Float64Array(8);
      const r = native.fsStatfs(fd, b);
      if (r < 0) return fail(-r);
      return ok({
        blocks: BigInt(b[0]),
        bfree: BigInt(b[1]),
        bavail: BigInt(b[2]),
        files: BigInt(b[3]),
        ffree: BigInt(b[4]),
        bsize: b[5],
        namelen: b[6],
        frsize: b[7],
      });
    });
  }
}

export function errnoName(n: number): string {
  for (const [k, v] of Object.entries(E)) if (v === n) return k;
  return `errno ${n}`;
}
