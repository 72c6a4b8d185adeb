// What the split and the packed device-side virtqueues share: the chain they hand out, their
// errors, and the checks on one descriptor's buffer or indirect table. The two ring layouts
// find descriptors differently, but a descriptor's {addr, len, WRITE} and an indirect table mean
// the same in both, so they are checked (and worded) in one place. Every helper that rejects
// guest input does so through the caller's `fail`, which breaks that queue.

import { GuestMemory, MemoryFault, hex, type WindowBases } from '../memory/guest-memory.ts';
import type { DirtyLog } from '../memory/dirty-log.ts';
import { DESC_SIZE, MAX_INDIRECT_ENTRIES } from './layout.ts';
import { VhostWasmError } from '../errors.ts';

/** The guest broke the virtqueue protocol; the queue refuses further work. */
export class QueueFault extends VhostWasmError {
  static override readonly code = 'ERR_QUEUE_FAULT';
  override name = 'QueueFault';
  constructor(
    readonly queue: number,
    readonly reason: string,
    readonly availIndex?: number,
    readonly head?: number,
    readonly descIndex?: number,
  ) {
    const where: string[] = [];
    if (availIndex !== undefined) where.push(`avail index ${availIndex}`);
    if (head !== undefined) where.push(`head ${head}`);
    if (descIndex !== undefined) where.push(`descriptor ${descIndex}`);
    super(`virtqueue ${queue}: ${reason}${where.length ? ` (${where.join(', ')})` : ''}`);
  }
}

/** The ring addresses/size given at setup are unusable (SET_VRING_NUM/ADDR); nothing started. */
export class QueueSetupError extends VhostWasmError {
  static override readonly code = 'ERR_QUEUE_SETUP';
  override name = 'QueueSetupError';
  constructor(
    readonly queue: number,
    reason: string,
  ) {
    super(`virtqueue ${queue}: ${reason}`);
  }
}

export interface GuestRange {
  gpa: number;
  len: number;
}

/**
 * A chain popped from a queue: its buffers as host views, in chain order.
 *
 * The writable descriptors' guest ranges (dirty logging, and rebinding the views after a memory
 * table change) are kept at pop only while the queue logs; otherwise they are found from the
 * views when first asked for (`writableRanges`, `keepRanges`), which saves every request two
 * `{gpa, len}` objects and their lists. The views say where they are only while their mappings
 * stand: whoever keeps a chain across a table change asks before it (the runner's
 * keepRequestRanges, the queue's setLog for chains in flight when logging starts).
 */
export class DescriptorChain {
  /** Device-readable buffers in chain order, split at mapping boundaries; zero-length ones omitted. */
  readable: readonly Uint8Array[] = NO_VIEWS;
  writable: readonly Uint8Array[] = NO_VIEWS;
  readableLen = 0;
  writableLen = 0;
  /** A device-writable descriptor was seen (a zero-length one has no view, and maybe no range). */
  sawWritable = false;
  /**
   * The writable descriptors as guest ranges, in order, once taken: at pop when the queue logs
   * (zero-length ones included), or from the views (keepRanges). Null: not taken yet.
   */
  ranges: readonly GuestRange[] | null;

  constructor(
    public head: number,
    /** The avail ring index this chain was taken from. */
    readonly availIndex: number,
    /** What the views are of; it stays the same object across table changes. */
    private readonly memory: GuestMemory,
    /** The queue logs: keep the ranges at pop (appendBuffer) instead of finding them later. */
    keepAtPop: boolean,
  ) {
    this.ranges = keepAtPop ? NO_RANGES : null;
  }

  /**
   * The writable descriptors as guest ranges, in order (dirty logging, rebinding). Found from the
   * views if not taken yet; throws if the views' mappings went before they were taken (a caller
   * that keeps chains across a table change missed keepRanges).
   */
  get writableRanges(): readonly GuestRange[] {
    const r = this.rangesNow();
    if (r === null) {
      throw new Error(`descriptor head ${this.head}: the guest ranges of its writable buffers were asked for after their mapping went, and were not kept before`);
    }
    return r;
  }

  /**
   * The writable ranges, taken now from the views if they were not kept (the windows looked up
   * only then); null when their mappings went before they were taken.
   */
  rangesNow(): readonly GuestRange[] | null {
    return this.ranges ?? this.keepRanges(this.memory.windowBases());
  }

  /**
   * Takes (once) and returns the writable ranges from the views, `bases` being
   * memory.windowBases() now (one for all the chains of a table change). Null when a view is
   * not of a window mapped now (its mapping went: too late to say where it was).
   */
  keepRanges(bases: WindowBases): readonly GuestRange[] | null {
    if (this.ranges !== null) return this.ranges;
    const views = this.writable;
    const out: GuestRange[] = [];
    for (let i = 0; i < views.length; i++) {
      const v = views[i];
      const b = bases.get(v.buffer);
      if (b === undefined) return null;
      out.push({ gpa: b + v.byteOffset, len: v.length });
    }
    this.ranges = out;
    return out;
  }
}

/**
 * What a new chain's lists start as: one empty list for every chain, never written (withOne
 * makes a new list for a list's first entry), instead of three empty arrays per request. Frozen
 * and readonly: a push onto one would put an entry into every chain made after it.
 */
export const NO_VIEWS: readonly Uint8Array[] = Object.freeze([]);
export const NO_RANGES: readonly GuestRange[] = Object.freeze([]);

/** Breaks the queue with `reason` (the caller adds where in the ring it happened). */
export type Fail = (reason: string) => never;

const ADDR_HI_LIMIT = 0x200000; // high u32 of 2^53

/** How messages name a descriptor: ring slot `slot`, or entry `entry` of an indirect table (entry >= 0). */
export function descriptorName(slot: number, entry: number): string {
  return entry < 0 ? `descriptor ${slot}` : `indirect table entry ${entry}`;
}

/**
 * Appends one descriptor's buffer (address `hi:lo`, `len` bytes, device-writable or not) to
 * `chain`: its host slices, its length, and for a writable one its guest range. Refuses an
 * address beyond 2^53 or outside guest memory, a readable buffer after a writable one, and
 * chain lengths that overflow the u32 the used ring reports.
 */
export function appendBuffer(
  memory: GuestMemory,
  chain: DescriptorChain,
  lo: number,
  hi: number,
  len: number,
  write: boolean,
  slot: number,
  entry: number,
  fail: Fail,
): void {
  const addr = hi * 0x100000000 + lo;
  if (hi >= ADDR_HI_LIMIT) fail(`${descriptorName(slot, entry)}: address ${hex(addr)} outside guest memory`);
  if (write) {
    if (len > 0) chain.writable = withSlices(memory, addr, len, chain.writable, slot, entry, fail);
    chain.writableLen += len;
    if (chain.writableLen > 0xffffffff) fail(`writable length of the chain overflows u32`);
    chain.sawWritable = true;
    // Kept here only while the queue logs (see DescriptorChain): found from the views otherwise.
    if (chain.ranges !== null) chain.ranges = withOne(chain.ranges, { gpa: addr, len });
  } else {
    if (chain.sawWritable) fail(`${descriptorName(slot, entry)} is device-readable after a writable descriptor`);
    if (len > 0) chain.readable = withSlices(memory, addr, len, chain.readable, slot, entry, fail);
    chain.readableLen += len;
    if (chain.readableLen > 0xffffffff) fail(`readable length of the chain overflows u32`);
  }
}

/** `list` with the views of [addr, addr+len) after it (the list itself, or a new one: see withOne). */
function withSlices(memory: GuestMemory, addr: number, len: number, list: readonly Uint8Array[], slot: number, entry: number, fail: Fail): readonly Uint8Array[] {
  try {
    // The usual buffer lies in one window of one region: one view, no list of parts.
    const v = memory.view(addr, len);
    if (v !== null) return withOne(list, v);
    for (const part of memory.gpaSlices(addr, len)) list = withOne(list, part);
    return list;
  } catch (e) {
    if (e instanceof MemoryFault) fail(`${descriptorName(slot, entry)}: buffer [${hex(addr)}, +${len}) outside guest memory`);
    throw e;
  }
}

/**
 * `list` with `item` after it. A chain's lists start as the shared NO_VIEWS / NO_RANGES and hold
 * 1-3 entries (blk: a header, then data and status): a push onto `[]` grows a 17-slot store
 * (~100 instructions, three per request, and most of the walk's garbage), so lists of up to 3
 * are made anew as literals of their exact length (the shared empty ones are never written);
 * longer ones, made here, grow by push.
 */
function withOne<T>(list: readonly T[], item: T): readonly T[] {
  switch (list.length) {
    case 0:
      return [item];
    case 1:
      return [list[0], item];
    case 2:
      return [list[0], list[1], item];
    default:
      // 3 or more: a list made by the cases above (never a shared empty one), this chain's own.
      (list as T[]).push(item);
      return list;
  }
}

/**
 * The indirect table an INDIRECT descriptor (address `hi:lo`, `len` bytes) points at, after
 * checking its length and address. The flag checks around it differ by ring layout and stay
 * with the caller.
 */
export function indirectTable(memory: GuestMemory, lo: number, hi: number, len: number, fail: Fail): DataView {
  if (len === 0 || len % DESC_SIZE !== 0 || len > MAX_INDIRECT_ENTRIES * DESC_SIZE) {
    fail(`indirect table length ${len} is not a multiple of 16 in [16, ${MAX_INDIRECT_ENTRIES * DESC_SIZE}]`);
  }
  const addr = hi * 0x100000000 + lo;
  if (hi >= ADDR_HI_LIMIT) fail(`indirect table address ${hex(addr)} outside guest memory`);
  const parts: Uint8Array[] = [];
  try {
    memory.appendSlices(addr, len, parts);
  } catch (e) {
    if (e instanceof MemoryFault) fail(`indirect table [${hex(addr)}, +${len}) outside guest memory`);
    throw e;
  }
  if (parts.length === 1) return new DataView(parts[0].buffer, parts[0].byteOffset, len);
  // Guest-contiguous but split across mappings: read a private copy (it is only read once).
  const copy = new Uint8Array(len);
  let at = 0;
  for (const p of parts) {
    copy.set(p, at);
    at += p.length;
  }
  return new DataView(copy.buffer);
}

/** writeChain for any queue type: copy into the writable buffers, log what was touched. */
export function writeChainLogged(chain: DescriptorChain, data: Uint8Array, offset: number, log: DirtyLog | null): number {
  let skip = offset;
  let src = 0;
  for (const buf of chain.writable) {
    if (src === data.length) break;
    if (skip >= buf.length) {
      skip -= buf.length;
      continue;
    }
    const n = Math.min(buf.length - skip, data.length - src);
    // A view per piece is an allocation per request on the hot path: the whole of `data`
    // needs none, and a few bytes (a status byte) are cheaper copied one by one.
    if (src === 0 && n === data.length) buf.set(data, skip);
    else if (n <= 16) for (let k = 0; k < n; k++) buf[skip + k] = data[src + k];
    else buf.set(data.subarray(src, src + n), skip);
    src += n;
    skip = 0;
  }
  if (log !== null && src > 0) markRanges(log, chain.writableRanges, offset, src);
  return src;
}

/**
 * Uint8Array.prototype.fill, called as a known function: optimized code looked `fill` up on every
 * buffer through a generic property load (~70 instructions per request).
 */
const fillBytes = Uint8Array.prototype.fill;

/**
 * Zeros `len` bytes of the chain's writable buffers from `offset` bytes in (a reply's `zeroes`
 * piece), logging what was touched; returns the bytes zeroed. A fill in place: copying from a
 * zero buffer took a view of it per request and read 4 KiB to write 4 KiB.
 */
export function zeroChainLogged(chain: DescriptorChain, offset: number, len: number, log: DirtyLog | null): number {
  let skip = offset;
  let left = len;
  const bufs = chain.writable;
  for (let i = 0; i < bufs.length && left > 0; i++) {
    const buf = bufs[i];
    if (skip >= buf.length) {
      skip -= buf.length;
      continue;
    }
    const n = Math.min(buf.length - skip, left);
    // A few bytes (a status byte) are stored one by one: fill() is a C++ builtin, ~300
    // instructions of argument conversion per call whatever the length.
    if (n <= 16) for (let k = skip; k < skip + n; k++) buf[k] = 0;
    else fillBytes.call(buf, 0, skip, skip + n);
    left -= n;
    skip = 0;
  }
  const done = len - left;
  if (log !== null && done > 0) markRanges(log, chain.writableRanges, offset, done);
  return done;
}

/** Marks `len` bytes of `ranges` dirty, starting `offset` bytes into them (pushUsed: offset 0, the bytes the device wrote). */
export function markRanges(log: DirtyLog, ranges: readonly GuestRange[], offset: number, len: number): void {
  let skip = offset;
  let left = len;
  for (const r of ranges) {
    if (left === 0) break;
    if (skip >= r.len) {
      skip -= r.len;
      continue;
    }
    const n = Math.min(r.len - skip, left);
    log.mark(r.gpa + skip, n);
    left -= n;
    skip = 0;
  }
}
