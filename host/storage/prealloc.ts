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
import { native } from '../native/index.ts';
import { constants as OS } from 'node:os';

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

function mib(n: number): string {
  return `${(n / 2 ** 20).toFixed(0)} MiB`;
}

/**
 * Makes every page of the memory disk's memfd (fd, `size` bytes; pages it has already, e.g. a
 * disk handed over by an old host, cost nothing) with one fallocate, after checking that the
 * memory is there. Throws a message saying what is short and what to do.
 */
export function preallocateMemoryDisk(fd: number, size: number, room: MemoryRoom | null = memoryRoom()): void {
  if (size === 0) return;
  const what = `--storage memory:${size},prealloc=on`;
  // Pages the memfd holds already (a disk an old host handed over, preallocated there) are in
  // use and so counted out of the room already: only the missing ones must fit.
  const have = Math.min(size, fstatSync(fd).blocks * 512);
  const need = size - have;
  if (room !== null && room.bytes < need) {
    const missing = have > 0 ? ` (${mib(need)} of its pages still to make)` : '';
    throw new Error(
      `${what}: the disk's ${mib(size)}${missing} cannot be committed: only ${mib(room.bytes)} is free (${room.from}). ` +
        'Give a smaller SIZE, free memory, or drop prealloc=on (pages are then made as they are written)',
    );
  }
  // mode 0: allocate, and grow nothing (the memfd is already SIZE bytes and sealed at that size).
  const r = native.fsFallocate(fd, 0, 0, size);
  if (r < 0) {
    throw new Error(
      `${what}: making the disk's ${mib(size)} of pages failed: ${errnoText(-r)}` +
        (-r === OS.errno.ENOSPC || -r === OS.errno.ENOMEM ? ' (not enough memory for it: give a smaller SIZE, free memory, or drop prealloc=on)' : ''),
    );
  }
}
