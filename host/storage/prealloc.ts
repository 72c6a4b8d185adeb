// --storage memory:SIZE,prealloc=on: the memory disk's pages made when the host starts.
//
// Why: a fresh tmpfs page costs microseconds to make (~2.7 us on the VM of docs/BENCHMARKS.md,
// where every first touch is an EPT fault on the host too), so a disk whose pages do not exist
// yet makes its first writes, and above all a migration LOAD into it, wait for page making: a
// LOAD of 256 MiB into fresh pages cannot pass ~0.14x memcpy there. QEMU's answer for guest RAM
// is the same opt-in (memory-backend-*,prealloc=on), with the same costs: the memory is
// committed at start, and start-up takes as long as making the pages does.
//
// And why check first: fallocate(2) on a memfd allocates page by page until memory runs out,
// and then the kernel's OOM killer picks a process (not necessarily this one, whose memfd pages
// are not its RSS). A host that cannot have the memory says so at start instead, in words;
// fallocate's own ENOSPC/ENOMEM (a tighter limit than the ones read here) is reported the same
// way. Once made, the pages stay (discards zero them, memory-disk.ts), so no write and no LOAD
// later finds a page missing: no SIGBUS, no OOM at run time.
import { fstatSync, readFileSync } from 'node:fs';
import { native, type Mapping } from '../native/index.ts';
import { VhostWasmError } from '../errors.ts';
import { constants as OS } from 'node:os';
import { createLogger } from '../log/logger.ts';

const log = createLogger('storage');

/** Memory this host may still take, as the kernel and its memory cgroup say (bytes), with where the figure comes from. */
export interface MemoryRoom {
  bytes: number;
  from: string;
}

/**
 * The tightest of MemAvailable and, at every level of this process's memory cgroup from its own
 * up to the root of the mounted hierarchy, the limit minus the usage (v2 or v1); null if none
 * can be read. Every level: a limit is often set on an ancestor (a systemd slice, a pod) and
 * the kernel enforces each; and a container without its own cgroup namespace sees the host's
 * path in /proc/self/cgroup while its own cgroup is mounted as the hierarchy's root. `root` is
 * "/" (another for tests: a tree laid out like /proc and /sys/fs/cgroup).
 */
export function memoryRoom(root = '/'): MemoryRoom | null {
  const rooms: MemoryRoom[] = [];
  const avail = /^MemAvailable:\s+(\d+) kB$/m.exec(readOr(`${root}proc/meminfo`));
  if (avail) rooms.push({ bytes: Number(avail[1]) * 1024, from: 'MemAvailable in /proc/meminfo' });
  for (const line of readOr(`${root}proc/self/cgroup`).split('\n')) {
    const m = /^\d+:([^:]*):(\/.*)$/.exec(line);
    if (!m) continue;
    const [, controllers, path] = m;
    const mount = controllers === '' ? 'sys/fs/cgroup' : controllers.split(',').includes('memory') ? 'sys/fs/cgroup/memory' : null;
    if (mount === null) continue;
    const [limitFile, usageFile] = controllers === '' ? ['memory.max', 'memory.current'] : ['memory.limit_in_bytes', 'memory.usage_in_bytes'];
    const parts = path.split('/').filter((x) => x !== '' && x !== '.' && x !== '..');
    for (let n = parts.length; n >= 0; n--) {
      const dir = `/${mount}${n === 0 ? '' : '/'}${parts.slice(0, n).join('/')}`;
      // "max" (v2) or a page-rounded 2^63 (v1) is no limit; an unreadable file is none known.
      const limit = Number(readOr(`${root}${dir.slice(1)}/${limitFile}`).trim() || NaN);
      const usage = Number(readOr(`${root}${dir.slice(1)}/${usageFile}`).trim() || NaN);
      if (Number.isFinite(limit) && limit > 0 && limit < 2 ** 62 && Number.isFinite(usage)) {
        rooms.push({ bytes: Math.max(0, limit - usage), from: `the memory cgroup's ${limitFile} minus ${usageFile} (${dir})` });
      }
    }
  }
  return rooms.length === 0 ? null : rooms.reduce((a, b) => (b.bytes < a.bytes ? b : a));
}

function readOr(path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return '';
  }
}

function errnoText(n: number): string {
  return Object.entries(OS.errno).find(([, v]) => v === n)?.[0] ?? `errno ${n}`;
}

/** A byte count in whole MiB, as page-making messages (and the daemon's about a preparing disk) give it. */
export function mib(n: number): string {
  return `${(n / 2 ** 20).toFixed(0)} MiB`;
}

/** Page making under way (preallocateMemoryDisk): cancel() stops it at its next 64 MiB chunk. */
export interface PageMaking {
  /** The disk's memfd mapped writable in this thread with every page made and mapped; rejects in words. */
  readonly done: Promise<Mapping>;
  /** Stops the work (a device-del while its pages are made): `done` then rejects, and the work's mapping is unmapped. */
  cancel(): void;
}

/**
 * Page making under way or waiting its turn in this process (a dup of its memfd, this module's,
 * and its size) until it ends or is cancelled. The memory check must count it: MemAvailable
 * shows only the pages it has made so far, and two device-adds side by side would otherwise
 * each find room for its whole disk, and together overcommit (an OOM kill, which the check
 * exists to prevent).
 */
const underWay = new Set<{ fd: number; size: number }>();

/** Bytes that page making under way has still to take: each disk's size less the pages it holds now. */
function stillToMake(): number {
  let n = 0;
  for (const j of underWay) n += Math.max(0, j.size - fstatSync(j.fd).blocks * 512);
  return n;
}

/**
 * Page-making jobs that run at once: half of libuv's threadpool (UV_THREADPOOL_SIZE, 4 by
 * default), at least one. Each job holds a pool thread for seconds per GiB, and Node's own work
 * waits for the same threads: the ES module loader's file reads (a device worker starting loads
 * its plugin glue with them), async fs calls, dns.lookup. With a job per thread (four disks
 * added together), every other device's start would wait for a disk to be done. More disks wait
 * their turn, in the order they came.
 */
export const PAGE_MAKING_JOBS = Math.max(1, Math.floor((Number(process.env.UV_THREADPOOL_SIZE) || 4) / 2));
let running = 0;
const waiting: (() => void)[] = [];

/** Resolves when a job may start; the job must call the release it gets, once, when it ends. */
function jobTurn(): Promise<() => void> {
  return new Promise((start) => {
    const go = () => {
      running++;
      let released = false;
      start(() => {
        if (released) return;
        released = true;
        running--;
        waiting.shift()?.();
      });
    };
    if (running < PAGE_MAKING_JOBS) go();
    else waiting.push(go);
  });
}

/** The error `done` rejects with when cancel() stopped it. */
export class PageMakingCancelled extends VhostWasmError {
  static override readonly code = 'ERR_PREALLOC_CANCELLED';
  override readonly name = 'PageMakingCancelled';
}

/**
 * Makes every page of the memory disk's memfd (fd, `size` bytes; pages it has already, e.g. a
 * disk handed over by an old host, cost nothing) with fallocate, and maps them in this thread
 * (a LOAD, a SAVE and pre-copy use that mapping) with MADV_POPULATE_WRITE (on kernels before
 * 5.14, by touching each page: makePages), after checking that
 * the memory is there. The check throws at once; the page making itself (~1.3 s per GiB here)
 * runs on libuv's threadpool (native preallocPages), so the event loop that serves every other
 * device is never held by it. `done` rejects with a message saying what is short and what to do.
 */
export function preallocateMemoryDisk(fd: number, size: number, room: MemoryRoom | null = memoryRoom()): PageMaking {
  const what = `--storage memory:${size},prealloc=on`;
  // Pages the memfd holds already (a disk an old host handed over, preallocated there) are in
  // use and so counted out of the room already: only the missing ones must fit.
  const have = Math.min(size, fstatSync(fd).blocks * 512);
  const need = size - have;
  const promised = room === null ? 0 : stillToMake();
  // A disk that holds all its pages already (handed over) commits nothing: never refused for what other disks still take.
  if (room !== null && need > 0 && room.bytes - promised < need) {
    const free = Math.max(0, room.bytes - promised);
    const missing = have > 0 ? ` (${mib(need)} of its pages still to make)` : '';
    const others = promised > 0 ? `, ${mib(promised)} of it still to be taken by other disks whose pages are being made` : '';
    throw new Error(
      `${what}: the disk's ${mib(size)}${missing} cannot be committed: only ${mib(free)} is free (${room.from}${others}). ` +
        'Give a smaller SIZE, free memory, or drop prealloc=on (pages are then made as they are written)',
    );
  }
  const flag = new Int32Array(new SharedArrayBuffer(4));
  // Ours until the job ends: the caller may close its fd while the job waits its turn.
  const job = { fd: native.dup(fd), size };
  underWay.add(job);
  const done = jobTurn().then((release) => {
    try {
      // Cancelled while it waited: nothing was started.
      if (Atomics.load(flag, 0) !== 0) throw Object.assign(new Error('cancelled before it began'), { code: 'ECANCELED' });
      const making = makePages(native.preallocPages, job.fd, size, flag); // works on a dup of its own
      void making.then(release, release);
      return making;
    } catch (e) {
      release();
      throw e;
    }
  });
  void done.then(
    () => forget(job),
    () => forget(job),
  );
  const said = done.catch((e: unknown) => {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ECANCELED') throw new PageMakingCancelled(`${what}: page making stopped (the device was removed)`);
    const n = (e as NodeJS.ErrnoException).errno;
    const short = n === OS.errno.ENOSPC || n === OS.errno.ENOMEM;
    throw new Error(
      `${what}: making the disk's ${mib(size)} of pages failed: ${(e as NodeJS.ErrnoException).syscall ?? 'preallocPages'}: ${code ?? errnoText(n ?? 0)}` +
        (short ? ' (not enough memory for it: give a smaller SIZE, free memory, or drop prealloc=on)' : ''),
    );
  });
  return {
    done: said,
    cancel: () => {
      Atomics.store(flag, 0, 1);
      // It stops at its next chunk (or does not start) and its memfd is closed by its owner: nothing more to count.
      forget(job);
    },
  };
}

/** native.preallocPages, or a stand-in with its contract (tests inject the errno of an older kernel). */
export type PreallocPages = (fd: number, size: number, cancel: Int32Array, touch?: boolean) => Promise<Mapping>;

/** Set once madvise refused MADV_POPULATE_WRITE in this process: later disks touch their pages straight away. */
let populateWriteMissing = false;

/** Whether `e` is madvise's EINVAL for MADV_POPULATE_WRITE: the advice this kernel does not know (it came in Linux 5.14). */
export function populateWriteUnsupported(e: unknown): boolean {
  const x = e as NodeJS.ErrnoException;
  return x?.errno === OS.errno.EINVAL && typeof x.syscall === 'string' && x.syscall.includes('MADV_POPULATE_WRITE');
}

/**
 * The pages made and mapped by `pages` (native.preallocPages) with MADV_POPULATE_WRITE, or, on
 * a kernel before 5.14 that refuses that advice with EINVAL, by touching each page in (the same
 * work on the same threadpool, one fault per page instead of one call per chunk), said once
 * per process in the log. The fallocate that makes the pages is the same either way.
 */
export async function makePages(pages: PreallocPages, fd: number, size: number, cancel: Int32Array): Promise<Mapping> {
  if (!populateWriteMissing) {
    try {
      return await pages(fd, size, cancel);
    } catch (e) {
      if (!populateWriteUnsupported(e)) throw e;
      populateWriteMissing = true;
      log.info(
        'prealloc=on: this kernel does not know madvise MADV_POPULATE_WRITE (Linux 5.14 or later has it): ' +
          "memory disks' pages are mapped by touching each one instead, which takes longer",
      );
    }
  }
  return pages(fd, size, cancel, true);
}

/** Forgets that MADV_POPULATE_WRITE was refused (tests of makePages). */
export function resetPopulateWriteCheck(): void {
  populateWriteMissing = false;
}

/** A job that ended or was cancelled: no longer counted, its dup closed (the native work holds its own). */
function forget(job: { fd: number; size: number }): void {
  if (!underWay.delete(job)) return;
  native.close(job.fd);
}
