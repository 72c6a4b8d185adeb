// Which executor moves a device's bytes, from what its backing table holds at 0 (--storage):
// a memory disk -> MemoryExecutor (one copy, synchronous); a file or block device -> io_uring
// (UringExecutor; other backings in the table run synchronously in their turn); a virtio-fs
// share's files (no --storage; host/fs registers them) -> io_uring on a disk, SyncExecutor on
// tmpfs; nothing -> SyncExecutor. Where io_uring is not
// available (a kernel without it, io_uring_disabled, a seccomp filter) the file is served by
// the SyncExecutor, and the log says so and why: one request at a time is a different product.
import { release } from 'node:os';
import { errnoCode, native } from '../native/index.ts';
import type { Logger } from '../log/logger.ts';
import { FileBacking } from '../storage/file.ts';
import { MemoryBacking } from '../storage/memory.ts';
import { FUSE_SUPER_MAGIC, TMPFS_MAGIC } from '../memory/memory-fd.ts';
import type { BackingTable } from './backing-table.ts';
import type { IoExecutor } from './executor.ts';
import { mappedReadsFor, newMappedReadsStop, stopMappedReads, type MappedReads } from './mapped-reads.ts';
import { MemoryExecutor } from './memory-executor.ts';
import { SyncExecutor } from './sync-executor.ts';
import { UringExecutor, type SyncTarget, type UringTarget } from './uring-executor.ts';

/** Submission entries per device ring: 256 requests in flight, more than QEMU's 128-entry virtqueue. */
const RING_ENTRIES = 128;

/**
 * A file backing as the ring sees it; a regular file on tmpfs goes inline (UringTarget.inline).
 * Decided by measurement and re-measured on this machine's kernel 6.18 (2026-12-07, a C loop of
 * 4 KiB random reads of a /dev/shm file, CPU per read of the whole process, kernel threads
 * included): pread 1.43 us; io_uring at depth 64 2.9-3.1 us with or without DEFER_TASKRUN or
 * COOP_TASKRUN, 2.7-2.9 with registered buffers. tmpfs reads still go to an io-wq worker thread,
 * so the ring costs twice the CPU of the system call; docs/BENCHMARKS.md, "the storage side".
 * Its reads are copied out of a mapping of the file when every block is allocated
 * (host/io/mapped-reads.ts: half the CPU of the pread again).
 */
function fileTarget(f: FileBacking, mapped: MappedReads[], mappedStop: Int32Array): UringTarget {
  let inline = false;
  let punt = false;
  try {
    // The file system of the open file, not of the operator's path: that may name another file
    // by now (renamed or replaced after the open). A block device's node is on devtmpfs, which
    // says TMPFS_MAGIC: its I/O is the device's, through the ring.
    const info = native.memoryFdInfo(f.fd);
    const fsType = info.type === 'block' ? 0 : info.fsType;
    inline = f.directAlign === 0 && fsType === TMPFS_MAGIC;
    punt = fsType === FUSE_SUPER_MAGIC;
  } catch {
    // Not knowing only costs speed: the ring serves it.
  }
  // Punched holes would be filled in again by reads through the mapping: it stops at the first,
  // in every queue thread of the device (the cell is theirs).
  const mappedReads = inline ? mappedReadsFor(f.fd, f.size, mappedStop) : null;
  if (mappedReads !== null) mapped.push(mappedReads);
  // Before a hole is punched (discard, write-zeroes): every thread's mapping stops, this one's now.
  const stopMapping = (): void => {
    stopMappedReads(mappedStop);
    mappedReads?.stop();
  };
  return {
    // Read at each use: a closed backing says -1 (EBADF), never a number since reused.
    get fd() {
      return f.fd;
    },
    directAlign: f.directAlign,
    describe: f.describe,
    inline,
    punt,
    mappedReads,
    discard: (offset, len) => {
      stopMapping();
      f.discard(offset, len);
    },
    writeZeroes: (offset, len) => {
      stopMapping();
      f.writeZeroes(offset, len);
    },
  };
}

export interface ExecutorChoice {
  executor: IoExecutor;
  kind: 'memory' | 'io_uring' | 'sync';
}

/**
 * `onCopied`: bytes a memory disk's reads and writes copied (MemoryExecutor), for the request
 * meter. `mappedStop`: the device's mapped-reads stop cell, shared by its queue threads
 * (newMappedReadsStop); absent: this executor's own.
 */
export function chooseExecutor(table: BackingTable, log: Logger, onCopied?: (bytes: number) => void, mappedStop: SharedArrayBuffer = newMappedReadsStop()): ExecutorChoice {
  const logIoError = (message: string) => log.warn(`backing I/O failed: ${message}`);
  const storage = table.get(0)?.storage;
  if (storage instanceof MemoryBacking) return { executor: new MemoryExecutor((i) => table.get(i), logIoError, onCopied), kind: 'memory' };
  if (storage instanceof FileBacking) {
    const targets = new WeakMap<FileBacking, UringTarget>();
    const mapped: MappedReads[] = [];
    const stopCell = new Int32Array(mappedStop);
    const target = (i: number): UringTarget | SyncTarget | undefined => {
      const b = table.get(i);
      if (b === undefined) return undefined;
      const f = b.storage;
      if (!(f instanceof FileBacking)) return { sync: b };
      let t = targets.get(f);
      if (t === undefined) targets.set(f, (t = fileTarget(f, mapped, stopCell)));
      return t;
    };
    try {
      const executor = new UringExecutor({ target, entries: RING_ENTRIES, logIoError, onClose: () => mapped.forEach((m) => m.stop()) });
      const t = target(0) as UringTarget;
      log.debug(`storage I/O on ${storage.describe}: ${t.inline ? `tmpfs: ${t.mappedReads ? 'reads copied from a mapping of the file, writes with pwrite' : 'pread/pwrite'} in turn (io_uring would punt every read to a kernel thread)` : 'io_uring'}${storage.directAlign > 0 ? `, O_DIRECT (${storage.directAlign}-byte blocks)` : ''}`);
      // Not silent: the same results, but each completion interrupts the worker thread again.
      if (!t.inline && !executor.deferTaskrun) log.info(`storage I/O on ${storage.describe}: io_uring's SINGLE_ISSUER/DEFER_TASKRUN not used (kernel ${release()}: before 6.1, or it refused them; see host/io/uring-setup.ts): a plain ring, completions cost more CPU`);
      return { executor, kind: 'io_uring' };
    } catch (e) {
      const why = `${errnoCode(e) ?? 'error'}: ${(e as Error).message}`;
      log.warn(`io_uring is not available here (${why}): ${storage.describe} is served synchronously, one request at a time; its I/O is not asynchronous and queue depth does not help`);
    }
  }
  if (storage === undefined && table.shareDir !== undefined) {
    const fs = fsShareExecutor(table, table.shareDir, table.shareFsType, log, logIoError);
    if (fs !== null) return fs;
  }
  return { executor: new SyncExecutor(table, logIoError), kind: 'sync' };
}

/**
 * A virtio-fs share's files (FUSE_READ / FUSE_WRITE): on a disk file system through io_uring,
 * many requests in flight, each completing when its I/O does; on tmpfs one pread/pwrite in
 * turn (the SyncExecutor), as for a tmpfs --storage file (io_uring would punt every tmpfs read
 * to a kernel worker: bench/uring). Submounts are never crossed (host/native/src/fs.c:
 * RESOLVE_NO_XDEV), so the share root's file system is every file's. Null: the SyncExecutor.
 */
function fsShareExecutor(table: BackingTable, dir: string, fsType: number, log: Logger, logIoError: (message: string) => void): ExecutorChoice | null {
  // The share's root fd's file system (FsShare.fsType), not a statfs of `dir`, which may name
  // another directory by now; unknown (-1): the ring serves it, which only costs speed.
  if (fsType === TMPFS_MAGIC) {
    log.debug(`shared directory ${dir} is on tmpfs: file I/O with pread/pwrite in turn`);
    return null;
  }
  const target = (i: number): UringTarget | SyncTarget | undefined => {
    const b = table.get(i);
    if (b === undefined) return undefined;
    return b.uring ?? { sync: b };
  };
  try {
    const executor = new UringExecutor({ target, entries: RING_ENTRIES, logIoError });
    log.debug(`shared directory ${dir}: file I/O through io_uring${fsType === FUSE_SUPER_MAGIC ? ' (on FUSE: every read and write handed to a kernel worker at once, IOSQE_ASYNC)' : ''}`);
    return { executor, kind: 'io_uring' };
  } catch (e) {
    const why = `${errnoCode(e) ?? 'error'}: ${(e as Error).message}`;
    log.warn(`io_uring is not available here (${why}): the files of ${dir} are read and written synchronously, one request at a time`);
    return null;
  }
}
