// What the split and the packed driver rings share: how they are given their memory, the
// buffers they take and the completions they hand back, and how a descriptor is written
// (both layouts start a descriptor with addr u64 and len u32; the two u16s after differ).

import { DESC_SIZE } from '../../virtqueue/layout.ts';

export interface DriverBuffer {
  gpa: number;
  len: number;
}

/** A completed request: its head (split) or buffer id (packed), and the bytes the device wrote. */
export interface UsedElem {
  head: number;
  len: number;
}

export interface DriverRingOptions {
  size: number;
  /** Ring memory; byteOffset must be 4-aligned. */
  memory: Uint8Array;
  /** Guest address of memory[0]; must be 16-aligned. */
  gpa: number;
  eventIdx: boolean;
  /** Max descriptors per indirect table; 0 (default) reserves no indirect tables. */
  indirectEntries?: number;
}

export const align = (n: number, a: number) => Math.ceil(n / a) * a;

/**
 * The ring memory as a zeroed DataView of `bytes` bytes, after checking it is large enough and
 * aligned as the layouts need. `who` names the ring in messages.
 */
export function ringMemory(who: string, opts: DriverRingOptions, bytes: number): DataView {
  if (opts.memory.length < bytes) throw new RangeError(`${who}: needs ${bytes} bytes of ring memory, got ${opts.memory.length}`);
  if (opts.gpa % 16 !== 0 || opts.memory.byteOffset % 4 !== 0) throw new RangeError(`${who}: memory must be 16-aligned (GPA) and 4-aligned (view)`);
  opts.memory.fill(0, 0, bytes);
  return new DataView(opts.memory.buffer, opts.memory.byteOffset, bytes);
}

/** Writes descriptor `{gpa, len, word12, word14}` at byte `off` (split: flags, next; packed: id, flags). */
export function writeDescriptor(dv: DataView, off: number, gpa: number, len: number, word12: number, word14: number): void {
  dv.setUint32(off, gpa % 0x100000000, true);
  dv.setUint32(off + 4, Math.floor(gpa / 0x100000000), true);
  dv.setUint32(off + 8, len, true);
  dv.setUint16(off + 12, word12, true);
  dv.setUint16(off + 14, word14, true);
}
