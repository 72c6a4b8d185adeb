// The front-end driver's own memory, the RAM it plays the guest with: memfds it creates and maps,
// described to the back-end as a region table. (The back-end's view of a front-end's memory, the
// translation table a device reads rings through, is host/memory/guest-memory.ts.) Each region
// is at most one mapping window (1 GiB), so a GPA range inside a region is always one
// Uint8Array and no request straddles regions.
//
// Back-ends translate ring addresses through `userspace_addr`; we never hand out real pointers,
// only a fake but consistent UVA (UVA_BASE + gpa), which is all QEMU's contract promises too.

import { native } from '../native/index.ts';
import type { Mapping } from '../native/api.ts';
import type { MemoryRegionWithFd } from '../protocol/messages.ts';
import { RangeAllocator } from './allocator.ts';

export const UVA_BASE = 0x7f0000000000;

export interface RamOptions {
  /** Total bytes of guest RAM (a multiple of 4096). */
  bytes: number;
  /** Split into regions of this size (default: as few as the 1 GiB window allows). */
  regionBytes?: number;
  /**
   * Put every region in one memfd at increasing offsets (like one QEMU memory backend split
   * around a hole) so back-ends must honour mmap_offset. Default: one memfd per region.
   */
  sharedFd?: boolean;
  /** Guest-physical gap left between regions (default 0), so GPA != offset. */
  gpaGap?: number;
  name?: string;
}

export interface RamRegion {
  readonly index: number;
  readonly gpa: number;
  readonly size: number;
  readonly uva: number;
  readonly fd: number;
  readonly mmapOffset: number;
  readonly bytes: Uint8Array;
  readonly alloc: RangeAllocator;
}

const PAGE = 4096;

export class GuestRam {
  readonly regions: readonly RamRegion[];
  private readonly mappings: Mapping[];
  private readonly fds: number[];
  private closed = false;

  private constructor(regions: RamRegion[], mappings: Mapping[], fds: number[]) {
    this.regions = regions;
    this.mappings = mappings;
    this.fds = fds;
  }

  static create(opts: RamOptions): GuestRam {
    const { bytes } = opts;
    const regionBytes = opts.regionBytes ?? Math.min(bytes, native.MAX_WINDOW);
    const gap = opts.gpaGap ?? 0;
    if (bytes <= 0 || bytes % PAGE !== 0) throw new RangeError(`guest RAM: ${bytes} bytes is not a positive multiple of ${PAGE}`);
    if (regionBytes <= 0 || regionBytes % PAGE !== 0 || regionBytes > native.MAX_WINDOW) {
      throw new RangeError(`guest RAM: region size ${regionBytes} must be a multiple of ${PAGE} up to ${native.MAX_WINDOW}`);
    }
    if (gap < 0 || gap % PAGE !== 0) throw new RangeError(`guest RAM: gap ${gap} is not a multiple of ${PAGE}`);
    const count = Math.ceil(bytes / regionBytes);
    if (count > 8) throw new RangeError(`guest RAM: ${count} regions exceed the 8 one SET_MEM_TABLE carries`);
    const name = opts.name ?? 'vhost-wasm-frontend';
    const fds: number[] = [];
    const mappings: Mapping[] = [];
    const regions: RamRegion[] = [];
    try {
      let sharedFd = -1;
      if (opts.sharedFd) {
        sharedFd = native.memfdCreate(name, false);
        fds.push(sharedFd);
        native.ftruncate(sharedFd, bytes);
      }
      let gpa = 0;
      for (let i = 0; i < count; i++) {
        const size = Math.min(regionBytes, bytes - i * regionBytes);
        let fd = sharedFd;
        let offset = i * regionBytes;
        if (fd < 0) {
          fd = native.memfdCreate(`${name}-${i}`, false);
          fds.push(fd);
          native.ftruncate(fd, size);
          offset = 0;
        }
        const m = native.mmap(fd, size, offset, true);
        mappings.push(m);
        regions.push({
          index: i,
          gpa,
          size,
          uva: UVA_BASE + gpa,
          fd,
          mmapOffset: offset,
          bytes: new Uint8Array(m.window(0, size)),
          alloc: new RangeAllocator(gpa, size),
        });
        gpa += size + gap;
      }
    } catch (e) {
      for (const m of mappings) m.unmap();
      for (const fd of fds) native.close(fd);
      throw e;
    }
    return new GuestRam(regions, mappings, fds);
  }

  /** The region table as SET_MEM_TABLE / ADD_MEM_REG carry it (fds stay owned by this object). */
  memTable(): MemoryRegionWithFd[] {
    return this.regions.map((r) => ({
      guestPhysAddr: BigInt(r.gpa),
      memorySize: BigInt(r.size),
      userspaceAddr: BigInt(r.uva),
      mmapOffset: BigInt(r.mmapOffset),
      fd: r.fd,
    }));
  }

  regionOf(gpa: number): RamRegion {
    for (const r of this.regions) if (gpa >= r.gpa && gpa < r.gpa + r.size) return r;
    throw new RangeError(`guest RAM: GPA 0x${gpa.toString(16)} is in no region`);
  }

  /** Front-end virtual address of a GPA (what SET_VRING_ADDR speaks). */
  uva(gpa: number): number {
    const r = this.regionOf(gpa);
    return r.uva + (gpa - r.gpa);
  }

  /** A live view of [gpa, gpa+len), which must lie in one region. */
  view(gpa: number, len: number): Uint8Array {
    const r = this.regionOf(gpa);
    const off = gpa - r.gpa;
    if (off + len > r.size) throw new RangeError(`guest RAM: [0x${gpa.toString(16)}, +${len}) crosses the end of region ${r.index}`);
    return r.bytes.subarray(off, off + len);
  }

  /** Allocates from the first region with room; -1 when none has. */
  tryAlloc(len: number, align = 16): number {
    for (const r of this.regions) {
      const a = r.alloc.alloc(len, align);
      if (a >= 0) return a;
    }
    return -1;
  }

  alloc(len: number, align = 16): number {
    const a = this.tryAlloc(len, align);
    if (a < 0) throw new RangeError(`guest RAM: no room for ${len} bytes (aligned ${align})`);
    return a;
  }

  free(gpa: number): void {
    this.regionOf(gpa).alloc.free(gpa);
  }

  /** Unmaps and closes the memfds; views become empty. Idempotent. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const m of this.mappings) m.unmap();
    for (const fd of this.fds) native.close(fd);
  }
}
