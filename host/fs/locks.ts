// POSIX record locks and flock for a share (FUSE_GETLK / FUSE_SETLK / FUSE_SETLKW).
//
// Record locks belong to a lock *owner* (the guest's process, or its open file for OFD locks)
// and an inode. On the host each (inode, owner) gets its own open file description, and the
// locks are OFD locks on it (F_OFD_SETLK): the kernel then sorts out conflicts between the
// guest's owners and with every other process on the host, exactly as for local processes.
// The owner's fd is closed when its last range is unlocked (the guest kernel unlocks the whole
// file when a process closes it), on a device reset and with the share.
//
// flock(2) locks belong to an open file: they are taken on the open file's own host fd, and
// go away when the guest releases it.
//
// A lock that must wait (SETLKW) never blocks the device worker: the host tries again on a
// timer (1 ms, doubling to 50 ms) and, once it holds the lock (or the attempt failed for good),
// wakes the plugin with the wait's token; the plugin then asks again without waiting for the
// verdict. There is no queue: a waiter can lose a race to a newcomer, which POSIX allows.
// Deadlock detection (EDEADLK) is not done: OFD locks have none either.
//
// When the front-end stops a ring (GET_VRING_BASE: a migration's stop, a reconnect), a waiting
// SETLKW would be lost: the base handed back covers it and nothing answers it afterwards. So a
// stop ends every wait first (stopWaits): each is woken, the plugin asks again, and while the
// stop lasts a lock that still conflicts answers ENOLCK instead of waiting again. ENOLCK, not
// EINTR: the guest kernel turns a FUSE lock's EINTR into ERESTARTSYS ("locking is
// restartable"), which only a pending signal turns into a restart; with none, the guest process
// would see errno 512. ENOLCK is what fcntl(F_SETLKW) and flock(2) answer when the lock
// manager cannot give a lock (as NFS's does when its lock protocol fails).

import { native } from '../native/index.ts';

export const F_RDLCK = 0;
export const F_WRLCK = 1;
export const F_UNLCK = 2;
const LOCK_SH = 1;
const LOCK_EX = 2;
const LOCK_UN = 8;
/** FUSE's end of a lock that runs to the end of any file (OFFSET_MAX). */
export const LOCK_END_MAX = (1n << 63n) - 1n;
const SAFE = BigInt(Number.MAX_SAFE_INTEGER);
/** Ranges remembered per owner (only to name the pid of a conflicting lock). */
export const MAX_RANGES = 4096;
/**
 * Waits one share keeps at once. Each is a retry timer (and, for an owner with no lock yet, an
 * fd reopened per try): filesystem.setlk is the plugin's to call, so past this a wait is refused
 * with ENOLCK. The fs plugin keeps at most 256 waiting SETLKWs, well inside it.
 */
export const MAX_LOCK_WAITS = 1024;
const ENOLCK = 37;
const RETRY_FIRST_MS = 1;
const RETRY_MAX_MS = 50;
const EAGAIN = 11;
const EINVAL = 22;

export interface FileLock {
  start: bigint;
  /** Inclusive; LOCK_END_MAX (or more) runs to the end of any file. */
  end: bigint;
  /** F_RDLCK, F_WRLCK or F_UNLCK. */
  kind: number;
  pid: number;
}

export interface Range {
  start: bigint;
  end: bigint;
  kind: number;
  pid: number;
}

interface Owner {
  readonly key: string;
  readonly inode: string;
  fd: number;
  /** The open file its last lock came through: its locks go when that file closes. */
  file: bigint;
  ranges: Range[];
  /**
   * Ranges were forgotten past MAX_RANGES: an empty list no longer means the description holds
   * nothing, so it is kept until the whole file is unlocked or the file closes.
   */
  forgot: boolean;
}

interface Wait {
  readonly token: bigint;
  readonly file: bigint;
  /** One more non-blocking attempt: 0 when the lock is held now, else -errno. */
  readonly attempt: () => number;
  delay: number;
  timer: NodeJS.Timeout | null;
}

/**
 * One record-lock owner as a live plugin upgrade hands it to the next instance in this process
 * (host/fs/lock-handoff.ts): the description that holds its OFD locks, and what the table knows.
 */
export interface OwnerRecord {
  fd: number;
  inode: string;
  owner: bigint;
  /** The open-file handle its last lock came through (the giving share's number). */
  file: bigint;
  ranges: Range[];
  forgot: boolean;
}

/** What the share lends the lock table: fds of its open files and reopened owner fds. */
export interface LockFiles {
  /** The host fd of open-file handle `file` (the share keeps it), or -1. */
  fileFd(file: bigint): number;
  /** "dev:ino" of an fd, or -errno. */
  inodeOf(fd: number): string | number;
  /** A new fd on the same inode as `fd`, for reading and (unless read-only) writing, or -errno. */
  reopen(fd: number): number;
  close(fd: number): void;
}

export class FsLocks {
  private readonly owners = new Map<string, Owner>();
  private readonly waits = new Map<bigint, Wait>();
  /** Open files with a flock taken through them (only to say a session holds locks: heldLocks). */
  private readonly flocked = new Set<bigint>();
  /** fsLock's answer: type, start, len, pid as the kernel's 64-bit integers (another process's lock may lie past 2^53). */
  private readonly out = new BigInt64Array(4);
  private waker: ((token: bigint) => void) | null = null;
  /** A ring is stopping: no new wait starts (ENOLCK instead). */
  private stopping = false;

  constructor(private readonly files: LockFiles) {}

  /** Where resolved waits are reported (the device runner's timer event); null: nobody listens. */
  setWaker(wake: ((token: bigint) => void) | null): void {
    this.waker = wake;
  }

  /** The first lock of another owner that conflicts with `lock`, or `lock` with kind F_UNLCK. */
  getlk(file: bigint, owner: bigint, lock: FileLock): { ok: true; val: FileLock } | { ok: false; errno: number } {
    const fd = this.files.fileFd(file);
    if (fd < 0) return { ok: false, errno: 9 /* EBADF */ };
    const span = spanOf(lock);
    if (typeof span === 'number' || lock.kind === F_UNLCK) return { ok: false, errno: EINVAL };
    const inode = this.files.inodeOf(fd);
    if (typeof inode === 'number') return { ok: false, errno: -inode };
    const mine = this.owners.get(ownerKey(inode, owner));
    // Asked on the owner's own description its locks never conflict; on the open file's fd
    // (which holds no record locks) every owner's do.
    const r = native.fsLock(mine?.fd ?? fd, 0, lock.kind, span[0], span[1], this.out);
    if (r < 0) return { ok: false, errno: -r };
    const kind = Number(this.out[0]);
    if (kind === F_UNLCK) return { ok: true, val: { ...lock, kind: F_UNLCK, pid: 0 } };
    const start = this.out[1];
    const end = this.out[2] === 0n ? LOCK_END_MAX : start + this.out[2] - 1n;
    return { ok: true, val: { start, end, kind, pid: this.pidOf(inode, owner, start, end) } };
  }

  /**
   * Takes or releases `lock` for `owner` (record lock) or, with `flock`, on the open file itself.
   * `wait` 0: EAGAIN on a conflict. Otherwise a conflict starts a wait and answers EINPROGRESS;
   * the waker gets `wait` once it resolved (the caller then asks again with wait 0). With
   * MAX_LOCK_WAITS waits already running, a conflict answers ENOLCK instead.
   */
  setlk(file: bigint, owner: bigint, lock: FileLock, flock: boolean, wait: bigint): { ok: true } | { ok: false; errno: number } {
    const fd = this.files.fileFd(file);
    if (fd < 0) return { ok: false, errno: 9 /* EBADF */ };
    if (wait !== 0n && this.waits.has(wait)) return { ok: false, errno: 16 /* EBUSY: token in use */ };
    let attempt: () => number;
    if (flock) {
      const op = lock.kind === F_UNLCK ? LOCK_UN : lock.kind === F_WRLCK ? LOCK_EX : lock.kind === F_RDLCK ? LOCK_SH : 0;
      if (op === 0) return { ok: false, errno: EINVAL };
      attempt = () => {
        const r = native.fsFlock(fd, op);
        if (r === 0) {
          if (op === LOCK_UN) this.flocked.delete(file);
          else this.flocked.add(file);
        }
        return r;
      };
    } else {
      const span = spanOf(lock);
      if (typeof span === 'number' || lock.kind < F_RDLCK || lock.kind > F_UNLCK) return { ok: false, errno: EINVAL };
      const inode = this.files.inodeOf(fd);
      if (typeof inode === 'number') return { ok: false, errno: -inode };
      attempt = () => this.setRecord(fd, file, inode, owner, lock, span);
    }
    const r = attempt();
    if (r === 0) return { ok: true };
    if (r !== -EAGAIN || wait === 0n) return { ok: false, errno: -r };
    if (this.waits.size >= MAX_LOCK_WAITS || this.stopping) return { ok: false, errno: ENOLCK };
    const w: Wait = { token: wait, file, attempt, delay: RETRY_FIRST_MS, timer: null };
    this.waits.set(wait, w);
    this.arm(w);
    return { ok: false, errno: 115 /* EINPROGRESS */ };
  }

  /**
   * `true`: the rings are stopping. Every wait resolves now (its waker runs, so the plugin asks
   * again and answers its held SETLKW before the ring stops) and, until `false`, a lock that
   * would have to wait answers ENOLCK. See the top of this file for why ENOLCK.
   */
  stopWaits(stop: boolean): void {
    this.stopping = stop;
    if (stop) for (const w of [...this.waits.values()]) this.resolve(w);
  }

  /** Waits running now (tests). */
  get waiting(): number {
    return this.waits.size;
  }

  /** Gives up the wait started with `token` (FUSE_INTERRUPT); no wake follows. */
  cancel(token: bigint): void {
    const w = this.waits.get(token);
    if (!w) return;
    if (w.timer) clearTimeout(w.timer);
    this.waits.delete(token);
  }

  /**
   * The open file `file` is about to close (FUSE_RELEASE): its waits end (woken: the verdict is
   * then EBADF), and so do the locks of owners whose last lock came through it. That is how an
   * OFD lock (its owner is the guest's open file) goes away, since the guest kernel sends no
   * unlock for it; a process's record locks went already, at FUSE_FLUSH, unless it has locked
   * through another open file since, which then keeps them.
   */
  fileClosing(file: bigint): void {
    this.flocked.delete(file);
    for (const w of [...this.waits.values()]) if (w.file === file) this.resolve(w);
    for (const o of [...this.owners.values()]) {
      if (o.file !== file) continue;
      this.files.close(o.fd);
      this.owners.delete(o.key);
    }
  }

  /** Every lock and wait goes (device reset, share closed): owner fds are closed. */
  releaseAll(): void {
    for (const w of this.waits.values()) if (w.timer) clearTimeout(w.timer);
    this.waits.clear();
    for (const o of this.owners.values()) this.files.close(o.fd);
    this.owners.clear();
    this.flocked.clear();
  }

  /**
   * Locks the guest holds now: record-lock owners with a range, and files with a flock. They are
   * this process's (OFD locks, flock on its fds) and cannot move to another one.
   */
  get heldLocks(): number {
    return this.owners.size + this.flocked.size;
  }

  /** The owners and flocked open files, for a live plugin upgrade (the fds stay this table's). */
  describe(): { owners: OwnerRecord[]; flocked: bigint[] } {
    const owners = [...this.owners.values()].map((o) => ({ fd: o.fd, inode: o.inode, owner: BigInt(o.key.slice(o.inode.length + 1)), file: o.file, ranges: o.ranges.map((r) => ({ ...r })), forgot: o.forgot }));
    return { owners, flocked: [...this.flocked] };
  }

  /**
   * Takes on an owner of another instance's table (a live plugin upgrade): `o.fd` is this
   * table's own duplicate of that owner's description, `o.file` this share's handle of the same
   * open file. Throws if the owner is already here (the table must start empty).
   */
  adoptOwner(o: OwnerRecord): void {
    const key = ownerKey(o.inode, o.owner);
    if (this.owners.has(key)) throw new Error(`lock owner ${o.owner} of inode ${o.inode} is already in the table`);
    this.owners.set(key, { key, inode: o.inode, fd: o.fd, file: o.file, ranges: o.ranges.map((r) => ({ ...r })), forgot: o.forgot });
  }

  /** Open file `file` holds a flock (taken on its description by another instance: a live plugin upgrade). */
  adoptFlock(file: bigint): void {
    this.flocked.add(file);
  }

  /** Owner descriptions open now (tests). */
  get ownerFds(): number {
    return this.owners.size;
  }

  private setRecord(fd: number, file: bigint, inode: string, owner: bigint, lock: FileLock, span: [number, number]): number {
    const key = ownerKey(inode, owner);
    let o = this.owners.get(key);
    if (!o) {
      if (lock.kind === F_UNLCK) return 0; // nothing held: nothing to release
      const ofd = this.files.reopen(fd);
      if (ofd < 0) return ofd;
      o = { key, inode, fd: ofd, file, ranges: [], forgot: false };
      this.owners.set(key, o);
    }
    const r = native.fsLock(o.fd, 1, lock.kind, span[0], span[1], this.out);
    if (r === 0) {
      const ranges = applyRange(o.ranges, lock);
      if (ranges.length > MAX_RANGES) {
        // Only the pid a GETLK names depends on the oldest ranges: forgotten, but still locked.
        o.ranges = ranges.slice(ranges.length - MAX_RANGES);
        o.forgot = true;
      } else o.ranges = ranges;
      if (lock.kind !== F_UNLCK) o.file = file;
      if (lock.kind === F_UNLCK && lock.start === 0n && lock.end >= LOCK_END_MAX) o.forgot = false;
    }
    if (o.ranges.length === 0 && !o.forgot) {
      // No lock left on this description (or the first one failed): let it go.
      this.files.close(o.fd);
      this.owners.delete(key);
    }
    return r;
  }

  /** The pid the guest gave when it took the conflicting range (0 when it is the host's). */
  private pidOf(inode: string, owner: bigint, start: bigint, end: bigint): number {
    for (const o of this.owners.values()) {
      if (o.inode !== inode || o.key === ownerKey(inode, owner)) continue;
      for (const r of o.ranges) if (r.start <= end && r.end >= start) return r.pid;
    }
    return 0;
  }

  private arm(w: Wait): void {
    w.timer = setTimeout(() => {
      w.timer = null;
      if (this.waits.get(w.token) !== w) return;
      const r = w.attempt();
      if (r === -EAGAIN) {
        w.delay = Math.min(RETRY_MAX_MS, w.delay * 2);
        this.arm(w);
      } else this.resolve(w);
    }, w.delay);
  }

  private resolve(w: Wait): void {
    if (w.timer) clearTimeout(w.timer);
    this.waits.delete(w.token);
    this.waker?.(w.token);
  }
}

function ownerKey(inode: string, owner: bigint): string {
  return `${inode}/${owner}`;
}

/** [start, len] for fcntl (len 0: to the end), or -EINVAL for a range it cannot express here. */
function spanOf(lock: FileLock): [number, number] | number {
  if (lock.start < 0n || lock.end < lock.start || lock.start > SAFE) return -EINVAL;
  if (lock.end >= LOCK_END_MAX) return [Number(lock.start), 0];
  const len = lock.end - lock.start + 1n;
  if (len > SAFE) return -EINVAL;
  return [Number(lock.start), Number(len)];
}

/** POSIX lock arithmetic on one owner's ranges: `lock` replaces whatever it overlaps. */
function applyRange(ranges: Range[], lock: FileLock): Range[] {
  const s = lock.start;
  const e = lock.end >= LOCK_END_MAX ? LOCK_END_MAX : lock.end;
  const out: Range[] = [];
  for (const r of ranges) {
    if (r.end < s || r.start > e) out.push(r);
    else {
      if (r.start < s) out.push({ ...r, end: s - 1n });
      if (r.end > e) out.push({ ...r, start: e + 1n });
    }
  }
  if (lock.kind !== F_UNLCK) out.push({ start: s, end: e, kind: lock.kind, pid: lock.pid });
  return out;
}
