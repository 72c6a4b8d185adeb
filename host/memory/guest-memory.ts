// Guest physical memory as the front-end described it (SET_MEM_TABLE / ADD_MEM_REG): a set of
// regions, each backed by one mapping that we only ever touch through windows of at most
// `windowSize` bytes (N-API caps an external ArrayBuffer at 4 GiB; the addon hands out 1 GiB).
//
// The table is mutated in place (addRegion/removeRegion) and bumps `generation` on every
// change, so long-lived users (virtqueues) keep one GuestMemory and re-resolve their cached
// views only when the generation moved.

import { VhostWasmError } from '../errors.ts';

/**
 * A view of guest memory whose mapping was unmapped (native Mapping.unmap detaches its windows):
 * it reads as empty, and must not pass for an empty buffer.
 */
export function isDetached(v: Uint8Array): boolean {
  return v.length === 0 && v.buffer.byteLength === 0;
}

/** Whether any of the views is detached (isDetached). */
export function anyDetached(views: readonly Uint8Array[]): boolean {
  for (let i = 0; i < views.length; i++) if (isDetached(views[i]!)) return true;
  return false;
}

/** Anything that can expose windows of a mapping: a native `Mapping`, or a test fake. */
export interface Backing {
  readonly size: number;
  /** An ArrayBuffer aliasing [offset, offset+length) of the mapping. */
  window(offset: number, length: number): ArrayBuffer;
  /**
   * Faults the native fault guard contained in this mapping: the file behind it shrank after
   * it was mapped, so some pages read as zeros that the front-end never sees. Absent: cannot fault.
   */
  faults?(): number;
}

export interface RegionSpec {
  guestPhysAddr: number;
  size: number;
  /** Front-end virtual address of the region (SET_VRING_ADDR speaks in these). */
  userspaceAddr: number;
  /** Offset in the fd the caller mapped; kept for reporting, the backing already starts there. */
  mmapOffset: number;
  /** Mapping of exactly this region: backing offset 0 is guestPhysAddr. */
  backing: Backing;
  /** Called once when the region leaves the table (removeRegion, close): unmap, close the fd. */
  release?: () => void;
}

/** Largest address + 1 we can represent exactly; u64 values at or above it are "outside memory". */
export const ADDR_LIMIT = 2 ** 53;
export const DEFAULT_WINDOW_SIZE = 2 ** 30;
/** What we advertise in GET_MAX_MEM_SLOTS (QEMU's own ceiling for vhost-user is 509). */
export const MAX_MEM_SLOTS = 509;

export class MemoryTableError extends VhostWasmError {
  static override readonly code = 'ERR_MEMORY_TABLE';
  override name = 'MemoryTableError';
}

export class MemoryFault extends VhostWasmError {
  static override readonly code = 'ERR_MEMORY_FAULT';
  override name = 'MemoryFault';
  constructor(readonly gpa: number, readonly length: number, readonly reason: string) {
    super(`guest memory fault at [${hex(gpa)}, +${length}): ${reason}`);
  }
}

export function hex(n: number): string {
  return '0x' + n.toString(16);
}

/** Wraps a single ArrayBuffer (tests, the driver's own rings); only whole-buffer windows exist. */
export function arrayBufferBacking(buf: ArrayBuffer): Backing {
  return {
    size: buf.byteLength,
    window(offset: number, length: number): ArrayBuffer {
      if (offset !== 0 || length !== buf.byteLength) {
        // A plain ArrayBuffer cannot alias a sub-range; a window size below the buffer size
        // would silently split memory into copies.
        throw new RangeError(`arrayBufferBacking: window(${offset}, ${length}) must cover the whole ${buf.byteLength}-byte buffer`);
      }
      return buf;
    },
  };
}

class Region {
  readonly gpa: number;
  readonly end: number; // exclusive
  readonly uva: number;
  readonly size: number;
  private readonly windows: (ArrayBuffer | undefined)[] = [];

  constructor(readonly spec: RegionSpec, readonly windowSize: number) {
    this.gpa = spec.guestPhysAddr;
    this.size = spec.size;
    this.end = spec.guestPhysAddr + spec.size;
    this.uva = spec.userspaceAddr;
  }

  /** Each window mapped so far, with its number. */
  eachWindow(f: (w: number, ab: ArrayBuffer) => void): void {
    this.windows.forEach((ab, w) => {
      if (ab !== undefined) f(w, ab);
    });
  }

  /** Window number `w`, mapped lazily and cached for the region's lifetime. */
  window(w: number): ArrayBuffer {
    let ab = this.windows[w];
    if (ab === undefined) {
      const off = w * this.windowSize;
      const len = Math.min(this.windowSize, this.size - off);
      ab = this.spec.backing.window(off, len);
      if (ab.byteLength !== len) {
        throw new MemoryTableError(`region at GPA ${hex(this.gpa)}: backing returned a ${ab.byteLength}-byte window for [${off}, +${len})`);
      }
      this.windows[w] = ab;
    }
    return ab;
  }
}

export interface GuestMemoryOptions {
  /** Bytes per window (default 1 GiB). Tests shrink it to exercise window boundaries. */
  windowSize?: number;
  maxRegions?: number;
}

/**
 * view() keeps the views of small buffers it made, by address and length: a driver's request
 * headers and status bytes live in per-slot (per-tag) structures it reuses for every request on
 * that slot (Linux virtio-blk: in each tag's request), so the same few hundred small views come
 * back again and again, and making a typed array is the largest single step of a chain's walk.
 * Data buffers (page-cache pages) rarely repeat and are not kept.
 */
const SMALL_VIEW_MAX = 256;
const SMALL_VIEW_SLOTS = 1024; // a power of two: direct-mapped by a hash of the address

export class GuestMemory {
  private byGpa: Region[] = [];
  private byUva: Region[] = [];
  private last: Region | undefined;
  private gen = 0;
  /** view()'s small views: slot -> view of [smallGpa[slot], +smallLen[slot]); emptied when the table changes. */
  private small: (Uint8Array | undefined)[] = new Array(SMALL_VIEW_SLOTS).fill(undefined);
  private readonly smallGpa = new Float64Array(SMALL_VIEW_SLOTS);
  private readonly smallLen = new Int32Array(SMALL_VIEW_SLOTS);
  readonly windowSize: number;
  readonly maxRegions: number;

  constructor(regions: RegionSpec[] = [], opts: GuestMemoryOptions = {}) {
    this.windowSize = opts.windowSize ?? DEFAULT_WINDOW_SIZE;
    this.maxRegions = opts.maxRegions ?? MAX_MEM_SLOTS;
    if (!Number.isSafeInteger(this.windowSize) || this.windowSize <= 0) {
      throw new RangeError(`windowSize must be a positive integer, got ${this.windowSize}`);
    }
    const built: Region[] = [];
    for (const spec of regions) {
      validateSpec(spec);
      built.push(new Region(spec, this.windowSize));
    }
    this.install(built);
  }

  /** Changes on every add/remove/close: cached views derived from an older table may be stale. */
  get generation(): number {
    return this.gen;
  }

  get regions(): readonly RegionSpec[] {
    return this.byGpa.map((r) => r.spec);
  }

  /**
   * Maps every window of every region now (they are otherwise mapped on first access). A window
   * is external memory to V8, which answers its growth with collections: done ahead, they run
   * now instead of at a ring's first access (an incoming migration's start, measured 3-9 ms).
   */
  mapWindows(): void {
    for (const r of this.byGpa) for (let w = 0; w * r.windowSize < r.size; w++) r.window(w);
  }

  /** ADD_MEM_REG. Validated against the whole table; on error nothing changes. */
  addRegion(spec: RegionSpec): void {
    validateSpec(spec);
    this.install([...this.byGpa, new Region(spec, this.windowSize)]);
  }

  /**
   * REM_MEM_REG: removes the region with this GPA and size (and UVA, when given), calls its
   * release callback and returns its spec. Throws MemoryTableError if no region matches.
   */
  removeRegion(match: { guestPhysAddr: number; size: number; userspaceAddr?: number }): RegionSpec {
    const i = this.byGpa.findIndex(
      (r) => r.gpa === match.guestPhysAddr && r.size === match.size && (match.userspaceAddr === undefined || r.uva === match.userspaceAddr),
    );
    if (i < 0) {
      throw new MemoryTableError(`no region at GPA ${hex(match.guestPhysAddr)} size ${hex(match.size)} to remove`);
    }
    const [gone] = this.byGpa.splice(i, 1);
    this.install(this.byGpa);
    gone.spec.release?.();
    return gone.spec;
  }

  /** Releases every region (through each region's release callback); the table is empty after. */
  close(): void {
    const old = this.byGpa;
    this.install([]);
    let first: unknown;
    for (const r of old) {
      try {
        r.spec.release?.();
      } catch (e) {
        first ??= e;
      }
    }
    if (first !== undefined) throw first;
  }

  private install(regions: Region[]): void {
    if (regions.length > this.maxRegions) {
      throw new MemoryTableError(`memory table has ${regions.length} regions, at most ${this.maxRegions} allowed`);
    }
    const byGpa = [...regions].sort((a, b) => a.gpa - b.gpa);
    for (let i = 1; i < byGpa.length; i++) {
      const a = byGpa[i - 1];
      const b = byGpa[i];
      if (b.gpa < a.end) {
        throw new MemoryTableError(`region GPA [${hex(b.gpa)}, ${hex(b.end)}) overlaps [${hex(a.gpa)}, ${hex(a.end)})`);
      }
    }
    const byUva = [...regions].sort((a, b) => a.uva - b.uva);
    for (let i = 1; i < byUva.length; i++) {
      const a = byUva[i - 1];
      const b = byUva[i];
      if (b.uva < a.uva + a.size) {
        throw new MemoryTableError(
          `region userspace address [${hex(b.uva)}, ${hex(b.uva + b.size)}) overlaps [${hex(a.uva)}, ${hex(a.uva + a.size)})`,
        );
      }
    }
    this.byGpa = byGpa;
    this.byUva = byUva;
    this.last = undefined;
    // Views of a region that left the table must never be handed out again.
    this.small = new Array(SMALL_VIEW_SLOTS).fill(undefined);
    this.gen++;
  }

  private find(gpa: number): Region | undefined {
    const last = this.last;
    if (last !== undefined && gpa >= last.gpa && gpa < last.end) return last;
    const rs = this.byGpa;
    let lo = 0;
    let hi = rs.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const r = rs[mid];
      if (gpa < r.gpa) hi = mid - 1;
      else if (gpa >= r.end) lo = mid + 1;
      else {
        this.last = r;
        return r;
      }
    }
    return undefined;
  }

  /**
   * The first region (by GPA; `index` counts from 0) whose mapping took a contained fault, or
   * null. Regions with faulted pages no longer share those pages with the front-end.
   */
  faultedRegion(): { index: number; spec: RegionSpec; faults: number } | null {
    for (let i = 0; i < this.byGpa.length; i++) {
      const spec = this.byGpa[i].spec;
      const faults = spec.backing.faults?.() ?? 0;
      if (faults > 0) return { index: i, spec, faults };
    }
    return null;
  }

  /** True when every byte of [gpa, gpa+len) is mapped (possibly across regions). */
  isMapped(gpa: number, len: number): boolean {
    if (!validRange(gpa, len)) return false;
    let cur = gpa;
    const end = gpa + len;
    while (cur < end) {
      const r = this.find(cur);
      if (r === undefined) return false;
      cur = r.end;
    }
    return true;
  }

  /**
   * A view over exactly [gpa, gpa+len). Only for ranges inside one window of one region (ring
   * structures); anything else is a MemoryFault, use gpaSlices for data buffers.
   */
  gpaToView(gpa: number, len: number): Uint8Array {
    if (!validRange(gpa, len)) throw new MemoryFault(gpa, len, 'address or length out of range');
    const r = this.find(gpa);
    if (r === undefined) throw new MemoryFault(gpa, len, 'not in any memory region');
    const off = gpa - r.gpa;
    if (len > r.size - off) {
      throw new MemoryFault(gpa, len, `runs past the end of region [${hex(r.gpa)}, ${hex(r.end)})`);
    }
    const w = Math.floor(off / r.windowSize);
    const woff = off - w * r.windowSize;
    if (woff + len > r.windowSize) {
      throw new MemoryFault(gpa, len, `crosses a ${r.windowSize}-byte mapping window boundary`);
    }
    return new Uint8Array(r.window(w), woff, len);
  }

  /** Views covering [gpa, gpa+len) in order, split at window and region boundaries. */
  gpaSlices(gpa: number, len: number): Uint8Array[] {
    const out: Uint8Array[] = [];
    this.appendSlices(gpa, len, out);
    return out;
  }

  /**
   * A view of [gpa, gpa+len) when the range lies inside one window of one region (the usual
   * guest buffer), else null (it is split, or not all mapped: gpaSlices says which). Throws
   * MemoryFault when the range is invalid or its first byte is not in any region.
   */
  view(gpa: number, len: number): Uint8Array | null {
    let slot = -1;
    if (len <= SMALL_VIEW_MAX) {
      slot = ((gpa >>> 4) ^ (gpa >>> 13)) & (SMALL_VIEW_SLOTS - 1);
      const v = this.small[slot];
      if (v !== undefined && this.smallGpa[slot] === gpa && this.smallLen[slot] === len) return v;
    }
    if (!validRange(gpa, len)) throw new MemoryFault(gpa, len, 'address or length out of range');
    const r = this.find(gpa);
    if (r === undefined) throw new MemoryFault(gpa, len, `byte ${hex(gpa)} is not in any memory region`);
    const off = gpa - r.gpa;
    const w = Math.floor(off / r.windowSize);
    const woff = off - w * r.windowSize;
    // Window w's length (what window(w) checked the backing gave): never past the region's end.
    // Computed, not read: ArrayBuffer's byteLength is a builtin call in optimized code.
    if (len > Math.min(r.windowSize, r.size - w * r.windowSize) - woff) return null;
    const v = new Uint8Array(r.window(w), woff, len);
    if (slot >= 0) {
      this.small[slot] = v;
      this.smallGpa[slot] = gpa;
      this.smallLen[slot] = len;
    }
    return v;
  }

  /** gpaSlices into an existing array (the virtqueue collects a whole chain into one list). */
  appendSlices(gpa: number, len: number, out: Uint8Array[]): void {
    if (!validRange(gpa, len)) throw new MemoryFault(gpa, len, 'address or length out of range');
    let cur = gpa;
    let left = len;
    while (left > 0) {
      const r = this.find(cur);
      if (r === undefined) {
        throw new MemoryFault(gpa, len, `byte ${hex(cur)} is not in any memory region`);
      }
      const off = cur - r.gpa;
      const w = Math.floor(off / r.windowSize);
      const woff = off - w * r.windowSize;
      const ab = r.window(w);
      const n = Math.min(left, ab.byteLength - woff);
      out.push(new Uint8Array(ab, woff, n));
      cur += n;
      left -= n;
    }
  }

  /**
   * The guest ranges `views` (made by this table: view, gpaSlices, appendSlices) cover, in
   * order, adjacent ones merged; null when one is not a view of a window this table mapped
   * (or was detached). For requests held across a table change, read before the old mappings
   * go: a view keeps no guest address, and an unmapped one keeps no offset either. `bases`:
   * windowBases() of this table, built once for all the requests of one change (by default
   * built for this call: a walk of every mapped window).
   */
  rangesOf(views: readonly Uint8Array[], bases: WindowBases = this.windowBases()): { gpa: number; len: number }[] | null {
    const out: { gpa: number; len: number }[] = [];
    for (const v of views) {
      const b = bases.get(v.buffer);
      if (b === undefined) return null;
      const gpa = b + v.byteOffset;
      const last = out.length > 0 ? out[out.length - 1] : undefined;
      if (last !== undefined && last.gpa + last.len === gpa) last.len += v.length;
      else out.push({ gpa, len: v.length });
    }
    return out;
  }

  /** Each window mapped now -> the GPA it starts at (for rangesOf); windows mapped later are not in it. */
  windowBases(): WindowBases {
    const bases = new Map<ArrayBufferLike, number>();
    for (const r of this.byGpa) r.eachWindow((w, ab) => bases.set(ab, r.gpa + w * r.windowSize));
    return bases;
  }

  /** Front-end virtual address -> GPA (vring addresses). Throws MemoryFault if unmapped. */
  uvaToGpa(uva: number): number {
    if (!Number.isSafeInteger(uva) || uva < 0) throw new MemoryFault(uva, 0, 'userspace address out of range');
    const rs = this.byUva;
    let lo = 0;
    let hi = rs.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const r = rs[mid];
      if (uva < r.uva) hi = mid - 1;
      else if (uva >= r.uva + r.size) lo = mid + 1;
      else return r.gpa + (uva - r.uva);
    }
    throw new MemoryFault(uva, 0, 'userspace address not in any memory region');
  }
}

/** A table's mapped windows -> the guest-physical address each starts at (GuestMemory.windowBases). */
export type WindowBases = ReadonlyMap<ArrayBufferLike, number>;

function validRange(gpa: number, len: number): boolean {
  return Number.isSafeInteger(gpa) && Number.isSafeInteger(len) && gpa >= 0 && len >= 0 && gpa <= ADDR_LIMIT - len;
}

function validateSpec(s: RegionSpec): void {
  const where = `region GPA ${typeof s.guestPhysAddr === 'number' ? hex(s.guestPhysAddr) : String(s.guestPhysAddr)}`;
  for (const k of ['guestPhysAddr', 'size', 'userspaceAddr', 'mmapOffset'] as const) {
    const v = s[k];
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) {
      throw new MemoryTableError(`${where}: ${k} ${String(v)} is not an integer in [0, 2^53)`);
    }
  }
  if (s.size === 0) throw new MemoryTableError(`${where}: size is zero`);
  // Written as subtractions so the check itself cannot round.
  if (s.guestPhysAddr > ADDR_LIMIT - s.size) throw new MemoryTableError(`${where}: GPA + size ${hex(s.size)} overflows 2^53`);
  if (s.userspaceAddr > ADDR_LIMIT - s.size) {
    throw new MemoryTableError(`${where}: userspace address ${hex(s.userspaceAddr)} + size ${hex(s.size)} overflows 2^53`);
  }
  if (s.mmapOffset > ADDR_LIMIT - s.size) {
    throw new MemoryTableError(`${where}: mmap offset ${hex(s.mmapOffset)} + size ${hex(s.size)} overflows 2^53`);
  }
  if (s.backing === null || typeof s.backing !== 'object' || typeof s.backing.window !== 'function') {
    throw new MemoryTableError(`${where}: no backing mapping`);
  }
  if (s.backing.size < s.size) {
    throw new MemoryTableError(`${where}: backing maps ${hex(s.backing.size)} bytes, region needs ${hex(s.size)}`);
  }
}
