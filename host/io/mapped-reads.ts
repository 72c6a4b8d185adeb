// Reads of a tmpfs --storage file copied out of a read-only shared mapping of it instead of one
// pread each. A 4 KiB pread of a tmpfs file is ~85% the page-cache lookup (an xarray walk with a
// cache miss per level) and the copy; through a mapping, the lookup is the MMU's and the system
// call and the N-API crossing are gone: 0.84-0.90 us per 4 KiB read from JS against 1.70-1.78 us
// for native.pread (docs/BENCHMARKS.md, "tmpfs reads through a mapping"). io_uring does not help
// here: tmpfs has no non-blocking read (preadv2 RWF_NOWAIT answers EOPNOTSUPP), so every SQE is
// punted to an io-wq thread, 3.4-4.0 us per read.
//
// Two kernel behaviours bound where it is used:
// - A read fault on a hole of a tmpfs file allocates the page (pread of a hole does not), so a
//   mapping would fill in a sparse image as the guest reads it. Only a file with every block
//   allocated at the device's first read is mapped (MappedReads.mapAtFirstRead: not when the
//   device starts, since a plugin upgrade's or a host take-over's new instance starts while the
//   old one may still punch holes), and the first discard or
//   write-zeroes on it (which punch holes) stops the mapping for good. A device's queue threads
//   (--queue-threads) each map the file in their own executor, and a hole punched through one
//   ring may be read through another: the stop is one cell per device shared by all of its
//   threads (newMappedReadsStop), set before the hole is punched and loaded before every mapped
//   read (a plain load: no system call, no atomic read-modify-write). A read through another
//   thread that already passed that load while the hole is punched, of the very range, can
//   still fault a page of it back in: the guest raced its own discard.
// - A file made shorter behind our back raises SIGBUS on the pages past its new end (so does
//   a hole on a full tmpfs, where the fault cannot allocate the page). The addon's guard
//   (host/native/src/mapping.c) maps zero pages there and counts the fault; the count is read
//   after every copy (one N-API call, ~0.02 us), and a read that faulted stops the mapping and
//   is done again with pread (FAULTED), as are all later reads: every answer is what pread
//   gives for the file as it is (short past the new end, zeroes for a hole).
import { fstatSync } from 'node:fs';
import { native, type Mapping } from '../native/index.ts';

/**
 * The stop cell every queue thread of one device shares: an Int32 over a SharedArrayBuffer,
 * nonzero once any of them punched a hole in a file it maps (stopMappedReads).
 */
export function newMappedReadsStop(): SharedArrayBuffer {
  return new SharedArrayBuffer(Int32Array.BYTES_PER_ELEMENT);
}

/** Sets a device's stop cell: its threads' mappings stop at their next read. Before the hole is punched. */
export function stopMappedReads(cell: Int32Array): void {
  Atomics.store(cell, 0, 1);
}

/** read()'s answer when the mapping does not serve this read (past its end, across a window, stopped): pread it. */
export const NOT_MAPPED = -1;
/** read()'s answer when the copy faulted (the file shrank, or a hole on a full tmpfs): the mapping is stopped; pread it. */
export const FAULTED = -2;

export class MappedReads {
  /** undefined: not tried yet (the first read maps, see mapAtFirstRead); null: pread serves. */
  private mapping: Mapping | null | undefined = undefined;
  private readonly windows: Uint8Array[] = [];
  private readonly windowBytes = native.MAX_WINDOW;
  private seenFaults = native.mappingFaultCount();

  /**
   * `size`: bytes of the file to map (its size when the device started); `stopCell`: the
   * device's (newMappedReadsStop). Nothing is mapped before the first read: a new instance
   * (a plugin upgrade's, a host take-over's) starts while the old one still serves, and a hole
   * the old one punches meanwhile must be seen by the allocation check, which runs then.
   */
  constructor(
    private readonly fd: number,
    readonly size: number,
    private readonly stopCell: Int32Array,
  ) {}

  /** Still serving reads, or not yet tried (not stopped, no fault seen). */
  get active(): boolean {
    return this.mapping !== null;
  }

  /** Maps the file if every block of it is allocated now and no hole was punched by the device; else pread serves from now on. */
  private mapAtFirstRead(): Mapping | null {
    this.mapping = null;
    try {
      if (this.stopCell[0] !== 0) return null;
      const st = fstatSync(this.fd);
      if (!st.isFile() || st.size < this.size || st.blocks * 512 < this.size) return null;
      const mapping = native.mmap(this.fd, this.size, 0, false);
      try {
        for (let at = 0; at < this.size; at += this.windowBytes) this.windows.push(new Uint8Array(mapping.window(at, Math.min(this.windowBytes, this.size - at))));
      } catch (e) {
        this.windows.length = 0;
        mapping.unmap(); // pread serves it: nothing of it may stay mapped
        throw e;
      }
      this.mapping = mapping;
    } catch {
      // Not mapped only costs speed: pread serves it as before.
    }
    return this.mapping;
  }

  /**
   * Copies [offset, offset + total bytes of views) of the file into the views: the bytes copied
   * (all of them), NOT_MAPPED when the range is not wholly inside one window of the mapping (the
   * caller preads it), or FAULTED when the copy touched a page the file no longer backs (the
   * mapping is stopped; the caller preads it, overwriting the zeroes the guard left in the
   * views). Views must not be detached (the caller's EFAULT check comes first).
   */
  read(views: readonly Uint8Array[], offset: number, total: number): number {
    const mapping = this.mapping === undefined ? this.mapAtFirstRead() : this.mapping;
    if (mapping === null || offset + total > this.size) return NOT_MAPPED;
    if (this.stopCell[0] !== 0) {
      this.stop(); // another queue thread of the device punched a hole
      return NOT_MAPPED;
    }
    const w = Math.floor(offset / this.windowBytes);
    const at = offset - w * this.windowBytes;
    const win = this.windows[w]!;
    if (at + total > win.length) return NOT_MAPPED;
    let from = at;
    for (let i = 0; i < views.length; i++) {
      const v = views[i]!;
      v.set(win.subarray(from, from + v.length));
      from += v.length;
    }
    const faults = native.mappingFaultCount();
    if (faults !== this.seenFaults) {
      this.seenFaults = faults; // any mapping of the process: ours only if it counts one
      if (mapping.faults() > 0) {
        this.stop();
        return FAULTED;
      }
    }
    return total;
  }

  /** Reads go to pread from now on (a hole was punched, here or in another queue thread; the device is closing; a fault). */
  stop(): void {
    this.windows.length = 0;
    this.mapping?.unmap();
    this.mapping = null;
  }
}

/**
 * A MappedReads for a tmpfs file of `size` bytes, mapped at its first read if every block is
 * allocated then; null when it cannot be (empty, not a regular file, a hole punched by the
 * device already (`stopCell`), or the stat failed: pread serves it as before).
 */
export function mappedReadsFor(fd: number, size: number, stopCell: Int32Array): MappedReads | null {
  try {
    if (size <= 0 || stopCell[0] !== 0) return null;
    const st = fstatSync(fd);
    if (!st.isFile() || st.size < size) return null;
    return new MappedReads(fd, size, stopCell);
  } catch {
    return null;
  }
}
