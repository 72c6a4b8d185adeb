// The memfd behind a memory:SIZE disk, which every queue thread of the device maps (memory.ts
// holds the disk's logic; this module is its native side, kept apart so that memory.ts needs
// no addon).
import { native } from '../native/index.ts';
import { F_SEAL_GROW, F_SEAL_SEAL, F_SEAL_SHRINK } from '../memory/memory-fd.ts';
import type { SharedPages } from './memory.ts';

/** A zeroed memfd of `size` bytes for a memory disk, sealed at that size (the caller closes it). */
export function createMemoryDisk(size: number): number {
  const fd = native.memfdCreate('vhost-wasm-memory-disk', true);
  try {
    native.ftruncate(fd, size);
    // F_SEAL_SHRINK | F_SEAL_GROW: nobody can pull pages from under a mapping of it. F_SEAL_SEAL:
    // nobody adds a seal later either; a holder of the fd (a front-end it was lent to by a disk
    // hand-over, docs/security.md) could otherwise add F_SEAL_FUTURE_WRITE and make every later
    // writable mapping of the disk fail (a new worker, an upgrade).
    native.memfdAddSeals(fd, F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW);
  } catch (e) {
    native.close(fd);
    throw e;
  }
  return fd;
}

/**
 * Maps the disk's memfd (borrowed: its owner closes it) in this thread. `prealloc`: the disk's
 * pages were made at start (prealloc.ts) and are kept: a discard zeroes instead of punching a
 * hole (which would give pages back, to be made again by the next write). This mapping is not
 * populated: that costs about as much as making the pages did (~2 us a page measured here), per
 * queue thread and again for every new worker (an upgrade's would add it to the stopped rings),
 * while a first touch of a page that exists is a minor fault.
 */
export function mapMemoryDisk(fd: number, size: number, readOnly: boolean, prealloc = false): SharedPages {
  const have = native.fstat(fd).size;
  if (have < size) throw new RangeError(`memory disk: its memfd holds ${have} bytes, not ${size}`);
  if (size === 0) return { window: () => new ArrayBuffer(0), punchHole: () => true, close: () => {} };
  const mapping = native.mmap(fd, size, 0, !readOnly);
  const { KEEP_SIZE, PUNCH_HOLE } = native.FALLOC_FL;
  return {
    window: (offset, len) => mapping.window(offset, len),
    punchHole: (offset, len) => !prealloc && native.fsFallocate(fd, PUNCH_HOLE | KEEP_SIZE, offset, len) === 0,
    close: () => mapping.unmap(),
  };
}
