// The typed surface of the native addon's system calls Node lacks: SCM_RIGHTS, eventfd, memfd,
// pipes, guarded mmap windows, poll, io_uring. The share's confined file-system calls and the
// fd budget are NativeFs (fs-api.ts), which Native extends. Everything above this file is
// TypeScript. Every fd the addon creates is O_CLOEXEC, and every socket/pipe/eventfd
// it creates is O_NONBLOCK (the host never blocks an event loop on an fd).
//
// Errors: a failing syscall throws an Error whose `code` is the errno name ('EBADF'),
// with `errno` (number) and `syscall` ('recvmsg') set, like Node's own fs errors.
// "Would block" is never an exception: calls that can hit EAGAIN return the documented
// sentinel instead.

import type { NativeFs } from './fs-api.ts';

export interface RecvResult {
  /** Bytes received; 0 means the peer closed the connection (EOF). */
  bytes: number;
  /** Fds received with these bytes (SCM_RIGHTS, MSG_CMSG_CLOEXEC), in order. */
  fds: number[];
  /**
   * True when the kernel truncated the ancillary data (MSG_CTRUNC): the peer sent more fds
   * than `maxFds`. The fds that did arrive are still returned and must be closed.
   */
  fdsTruncated: boolean;
}

/** A shared mapping of (part of) a file, mapped once, exposed as windows of at most 1 GiB. */
export interface Mapping {
  /** Length of the mapping in bytes (may exceed 4 GiB). */
  readonly size: number;
  /**
   * An ArrayBuffer over [offset, offset+length) of the mapping; length <= MAX_WINDOW.
   * Windows are detached (byteLength becomes 0) when the mapping is unmapped, so a stale
   * view reads nothing instead of faulting.
   */
  window(offset: number, length: number): ArrayBuffer;
  /** munmap; detaches every window created from this mapping. Idempotent. */
  unmap(): void;
  /**
   * How many faults the SIGBUS guard contained inside this mapping (the file behind it shrank
   * under us; the faulting pages now read as private zeros). Latched: never goes back to 0.
   */
  faults(): number;
  /**
   * Makes the pages of [offset, offset+length) exist and mapped in one call
   * (madvise MADV_POPULATE_WRITE with `write`, else _READ), instead of a page fault per page on
   * first touch. `write` needs a writable mapping; throws EFAULT if the file no longer covers
   * the range.
   */
  populate(offset: number, length: number, write: boolean): void;
}

/** What memoryFdInfo() reports about a front-end's memory fd. */
export interface MemoryFdInfo {
  type: 'file' | 'directory' | 'char' | 'block' | 'fifo' | 'socket' | 'other';
  /** st_size (0 for anything but a regular file). */
  size: number;
  /** F_GET_SEALS of a memfd (F_SEAL_SHRINK = 0x2); -1 when the fd cannot carry seals. */
  seals: number;
  /** The unit a contained fault replaces: the page size, or a hugetlbfs file's huge page size. */
  pageSize: number;
  /**
   * fstatfs f_type of the file system the open file is on (TMPFS_MAGIC for a memfd or a block
   * device's devtmpfs node, FUSE_SUPER_MAGIC, ...); -1 when fstatfs failed. The fd's own, which a
   * statfs of a path can differ from (renamed or replaced since it was opened).
   */
  fsType: number;
}

export interface Watcher {
  /** Change the interest set. */
  update(events: WatchEvents): void;
  /** Stop watching and release the handle. Idempotent. Does not close the fd. */
  close(): void;
  /** Let the thread's event loop end while this watcher is still open (events still arrive). */
  unref(): void;
}

export type WatchEvents = 'r' | 'w' | 'rw';

/** native.fdKind's answer. 'pipe' is anonymous, 'fifo' a named pipe; 'other' covers timerfd, signalfd, epoll, ... */
export type FdKind =
  | 'eventfd'
  | 'memfd'
  | 'file'
  | 'directory'
  | 'pipe'
  | 'fifo'
  | 'socket'
  | 'char-device'
  | 'block-device'
  | 'symlink'
  | 'other';

// ---- io_uring (host/native/src/uring.c) ----

/**
 * Segments of one read or write, flattened: [buffer, offset, length, buffer, offset, length, ...].
 * `buffer` is an ArrayBuffer (a Mapping window) or a view of one; offset/length are relative to it.
 * Flat so that queueing a request allocates no object per segment.
 */
export type UringIov = Array<ArrayBuffer | ArrayBufferView | number>;

/**
 * An io_uring owned by the thread that created it. Operations are queued by readv/writev/fsync/
 * fallocate, handed to the kernel by submit(), and complete in any order: reap() returns
 * (userData, result) pairs, result being bytes moved (possibly fewer than asked: a short read at
 * the end of a file) or -errno (-5 EIO, -28 ENOSPC, -22 EINVAL for misaligned O_DIRECT).
 *
 * The kernel reads and writes the buffers after the queueing call has returned: the ring holds
 * them (strong references) until their completion is reaped, so the GC cannot free them, but an
 * explicit Mapping.unmap() would pull guest memory from under in-flight I/O. Drain first:
 * unmap only when `inflight` is 0 (or after close()).
 */
export interface Uring {
  /** Submission queue entries (the kernel may round `entries` up to a power of two). */
  readonly entries: number;
  /** Most operations in flight at once (queued, submitted or completed but not reaped). */
  readonly capacity: number;
  /**
   * Registered eventfd (IORING_REGISTER_EVENTFD, O_NONBLOCK): readable when completions were
   * posted. Watch it with native.watch; on wake-up, eventfdRead it first, then reap() until it
   * returns 0, so a completion that lands in between wakes the loop again.
   */
  readonly eventFd: number;
  /**
   * The kernel took SINGLE_ISSUER + DEFER_TASKRUN (Linux 6.1 on); false: they were not asked
   * for (uringCreate's deferTaskrun) or the kernel refused them, and this is a plain ring (same results, completion work interrupts the thread), for the log.
   */
  readonly deferTaskrun: boolean;
  /** Operations queued and not yet reaped. */
  readonly inflight: number;
  /**
   * Queue a preadv at `position` into the segments; false when `capacity` ops are in flight
   * (reap first). `punt` (IOSQE_ASYNC): straight to a kernel worker, never tried inline.
   */
  readv(fd: number, position: number, userData: number, iov: UringIov, punt?: boolean): boolean;
  /** Queue a pwritev at `position` from the segments; false at capacity. `punt` as readv's. */
  writev(fd: number, position: number, userData: number, iov: UringIov, punt?: boolean): boolean;
  /**
   * Queue fsync/fdatasync. `drain` (IOSQE_IO_DRAIN): it starts only after every operation
   * submitted before it on this ring has completed, the ordering a virtio flush needs.
   */
  fsync(fd: number, userData: number, datasync: boolean, drain: boolean): boolean;
  /** Queue fallocate(mode, offset, length); mode is a combination of FALLOC_FL flags. */
  fallocate(fd: number, mode: number, offset: number, length: number, userData: number): boolean;
  /** Hand queued operations to the kernel; returns how many (0 when the kernel said busy: reap, retry). */
  submit(): number;
  /**
   * Fill out with (userData, result) pairs, at most out.length/2; returns the number of pairs.
   * Never blocks. Queued operations go to the kernel in the same io_uring_enter that collects
   * completions (the ring runs completion work only when asked: DEFER_TASKRUN).
   */
  reap(out: Float64Array): number;
  /**
   * Ask the kernel to cancel every operation in flight: those it can stop complete with -ECANCELED
   * (or -EINTR), the rest complete normally. Reap them as usual. Returns how many were in flight.
   */
  cancelAll(): number;
  /**
   * Submit what is queued and block until at least one completion is posted (returns at once
   * when nothing is in flight). Returns how many completions are ready. Only for draining:
   * it blocks the thread's event loop.
   */
  wait(): number;
  /**
   * Cancel what can be cancelled, wait for every operation still in flight (their results are
   * dropped), release the buffers, close the ring and its eventfd. Returns how many were
   * dropped. Idempotent; a collected ring does the same.
   */
  close(): number;
}

/** The size and direct-I/O alignment of a storage backing. */
export interface BackingInfo {
  /** Bytes: st_size of a regular file, BLKGETSIZE64 of a block device (a loop device). */
  size: number;
  blockDevice: boolean;
  /** Alignment O_DIRECT needs: BLKSSZGET of a block device, STATX_DIOALIGN of a file; 0 if unknown. */
  directAlign: number;
}

export interface Native extends NativeFs {
  /** Largest window Mapping.window() hands out (1 GiB). */
  readonly MAX_WINDOW: number;

  // Unix stream sockets.
  /** socket+bind+listen at `path` (does not unlink an existing file: EADDRINUSE). */
  listenUnix(path: string, backlog: number): number;
  /**
   * Connect to a listening socket (blocking connect, then switched to non-blocking). `noWait`:
   * a listener whose backlog is full throws EAGAIN at once instead of blocking the thread.
   */
  connectUnix(path: string, noWait?: boolean): number;
  /** accept4(SOCK_CLOEXEC|SOCK_NONBLOCK); -1 when no connection is pending. */
  accept(fd: number): number;
  /** A connected AF_UNIX SOCK_STREAM pair. */
  socketpair(): [number, number];
  /** True when fd is a listening AF_UNIX stream socket (validates --fd). */
  isListeningUnixSocket(fd: number): boolean;
  /**
   * The connected peer's credentials as the kernel recorded them at connect() (SO_PEERCRED):
   * who is asking, for the daemon's management socket.
   */
  peerCred(fd: number): { pid: number; uid: number; gid: number };
  /**
   * Opens (creating if needed) TAP interface `name` with IFF_TAP | IFF_NO_PI in the calling
   * thread's network namespace; the fd is O_NONBLOCK | O_CLOEXEC, one frame per read/write.
   * Needs CAP_NET_ADMIN (EPERM without it).
   */
  tapOpen(name: string): number;
  /** recvmsg into buf (up to buf.length bytes) accepting at most maxFds fds; null on EAGAIN. */
  recvMsg(fd: number, buf: Uint8Array, maxFds: number): RecvResult | null;
  /** sendmsg of buf with fds attached (SCM_RIGHTS) to its first byte; returns bytes sent, -1 on EAGAIN. MSG_NOSIGNAL. */
  sendMsg(fd: number, buf: Uint8Array, fds: number[]): number;

  // Plain fd I/O (non-blocking fds).
  /** read(2) into buf; -1 on EAGAIN, 0 at EOF. */
  read(fd: number, buf: Uint8Array): number;
  /** write(2) of buf; -1 on EAGAIN. */
  write(fd: number, buf: Uint8Array): number;
  /** pread(2)/pwrite(2) at a 64-bit offset (files and memfds). */
  pread(fd: number, buf: Uint8Array, offset: number): number;
  pwrite(fd: number, buf: Uint8Array, offset: number): number;
  close(fd: number): void;
  /** dup with O_CLOEXEC. */
  dup(fd: number): number;
  setNonBlocking(fd: number, on: boolean): void;
  /** fstat: file type and size. */
  fstat(fd: number): { size: number; isFile: boolean; isFifo: boolean; isSocket: boolean };

  /**
   * What fd is (fstat + its /proc/self/fd link), to check an fd a peer sent before using it:
   * a vhost-user kick, call or err fd must be an 'eventfd'.
   */
  fdKind(fd: number): FdKind;

  // eventfd. Neither call ever blocks, whatever the fd's O_NONBLOCK flag (a front-end's
  // eventfd may be blocking, and its flags are shared with the front-end, so never changed).
  eventfd(initval: number): number;
  /** Reads and clears the counter; -1 when it was zero. */
  eventfdRead(fd: number): number;
  /**
   * Adds n (default 1); false when the counter has no room for it (its reader stopped reading:
   * a notification is already pending). n > 1 needs an O_NONBLOCK fd.
   */
  eventfdWrite(fd: number, n?: number): boolean;
  /**
   * Adds 1 with a single write(2) (the per-batch call notification); false when the counter is
   * full. Unlike eventfdWrite it does not poll first, so it is only non-blocking on an O_NONBLOCK
   * fd: check isNonBlocking when the fd arrives, and use eventfdWrite for a blocking one.
   */
  eventfdSignal(fd: number): boolean;
  /** fcntl(F_GETFL) & O_NONBLOCK. */
  isNonBlocking(fd: number): boolean;

  // memfd / pipes
  memfdCreate(name: string, allowSealing: boolean): number;
  ftruncate(fd: number, size: number): void;
  pipe2(): [readFd: number, writeFd: number];
  /**
   * fcntl(F_SETPIPE_SZ): the pipe's capacity in bytes (rounded up by the kernel); returns the new
   * capacity. Optional: an addon built before it existed lacks it (callers check).
   */
  setPipeSize?(fd: number, bytes: number): number;
  /**
   * copy_file_range(2) from fdIn at offIn to fdOut at offOut (files, memfds); returns the bytes
   * copied (0: fdIn ends there). The kernel copies: nothing passes through JavaScript.
   */
  copyFileRange(fdIn: number, offIn: number, fdOut: number, offOut: number, len: number): number;
  /**
   * splice(2) with SPLICE_F_NONBLOCK between a pipe and a file (offset -1 for the pipe side);
   * returns the bytes moved, 0 at the input's EOF, -1 when the pipe is full or empty.
   */
  splice(fdIn: number, offIn: number, fdOut: number, offOut: number, len: number): number;

  /**
   * mmap(MAP_SHARED) of [offset, offset+size) of fd, 64-bit sizes and offsets. Refuses
   * (ERR_MAPPING_NOT_FILE) anything but a regular file or memfd, and (ERR_MAPPING_BEYOND_FILE)
   * a range the file does not cover. The mapping is guarded: a SIGBUS inside it (the file
   * shrank later) is contained and counted (Mapping.faults(), mappingFaultCount()) instead of
   * killing the process.
   */
  mmap(fd: number, size: number, offset: number, writable: boolean): Mapping;
  /**
   * A memory disk's pages made off the main thread (libuv's threadpool): fallocate of
   * [0, size) of fd, then a writable mmap of it populated with MADV_POPULATE_WRITE; resolves
   * with that (guarded) Mapping. The work holds a dup of fd and its own mapping until it ends,
   * so the caller may close fd meanwhile. Storing non-zero into cancel[0] (an Int32Array over a
   * SharedArrayBuffer) stops it between 64 MiB chunks. Rejects with an errno error (code
   * 'ENOSPC', 'ENOMEM', 'ECANCELED', ...; syscall: the step that failed). `touch`: the mapping
   * is populated by write-faulting each page in (an atomic add of 0: no byte changes) instead,
   * for kernels before 5.14, whose madvise refuses MADV_POPULATE_WRITE with EINVAL.
   */
  preallocPages(fd: number, size: number, cancel: Int32Array, touch?: boolean): Promise<Mapping>;
  /** fcntl(F_ADD_SEALS) on a memfd created with allowSealing (F_SEAL_SHRINK = 0x2, F_SEAL_GROW = 0x4). */
  memfdAddSeals(fd: number, seals: number): void;
  /**
   * fstat + F_GET_SEALS + fstatfs of a memory fd, for checks with messages of our own; any fd
   * works (a backing file, a directory, an O_PATH fd: seals -1), so it is also where the host
   * learns which file system an open file is on (fsType).
   */
  memoryFdInfo(fd: number): MemoryFdInfo;
  /** Faults contained in any guarded mapping of this process so far (cheap: poll it per batch). */
  mappingFaultCount(): number;

  /**
   * Watch fd for readiness on the calling thread's own event loop (uv_poll), so it works
   * inside worker_threads. The callback gets what is ready; `error` is set on POLLERR.
   * Handles still open when a worker exits are closed by a cleanup hook.
   */
  watch(fd: number, events: WatchEvents, cb: (readable: boolean, writable: boolean, error: boolean) => void): Watcher;

  /**
   * _exit(code): ends the process and every thread at once. Only for the host's last-resort
   * shutdown: process.exit() waits for every worker thread, and one blocked in a system call
   * never comes back.
   */
  exitNow(code: number): never;

  /**
   * CPU time thread `tid` of this process has used over its life, in ns (clock_gettime on the
   * thread's CPU clock; exact even while it runs), or -1 when no thread of this process has
   * that id (it ended).
   */
  threadCpuNs(tid: number): number;

  // ---- CRC-32C (host/native/src/checksum.c) ----
  /**
   * CRC-32C (Castagnoli) of bytes, continued from seed (a CRC so far; 0 to start), as zlib's
   * crc32 continues CRC-32: crc32c(b, crc32c(a)) === crc32c(a ‖ b). `portable` runs the addon's
   * slicing-by-8 table instead of ISA-L's code (tests compare the two).
   */
  crc32c(bytes: Uint8Array, seed?: number, portable?: boolean): number;
  /** Copies all of src to the start of dst (they must not overlap) and returns src's CRC-32C continued from seed: one pass over the bytes. */
  copyCrc32c(dst: Uint8Array, src: Uint8Array, seed?: number): number;
  /** Which CRC-32C code runs: 'isa-l' (Intel ISA-L's crc32_iscsi, which picks its code for the CPU once at load: VPCLMULQDQ folding where there is AVX-512). */
  readonly crc32cImpl: 'isa-l';

  // ---- io_uring (host/native/src/uring.c) ----
  /**
   * A new ring for the calling thread with `entries` submission entries (1..4096).
   * deferTaskrun (default true): try SINGLE_ISSUER + DEFER_TASKRUN (a kernel that refuses them
   * gives a plain ring); false: a plain ring (host/io/uring-setup.ts decides by kernel release).
   */
  uringCreate(entries: number, deferTaskrun?: boolean): Uring;
  /** Size and O_DIRECT alignment of an open regular file or block device. */
  backingInfo(fd: number): BackingInfo;
  /** fallocate mode flags for Uring.fallocate (linux/falloc.h). */
  readonly FALLOC_FL: { readonly KEEP_SIZE: number; readonly PUNCH_HOLE: number; readonly ZERO_RANGE: number };
  // ---- end io_uring ----
}
