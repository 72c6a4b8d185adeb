// A chain popped before the memory table changed (SET_MEM_TABLE, REM_MEM_REG, ADD_MEM_REG)
// holds views into the mappings of that time. In-flight I/O is drained before a mapping goes,
// but a request the device holds (an fs lock wait, a net rx buffer) or one whose failed I/O
// waits for the device's second answer is answered later, after the old mapping was unmapped:
// its views are detached then (length 0), and a reply copied into them would land nowhere
// while the used ring reported it written (a status byte never set reads as the guest left it:
// OK, for blk), and a payload read from them (a held write's transfer, a send) would be lost.
// The guest named its buffers by guest-physical address, so the reply goes, and the payload is
// read, where those addresses are now; an address no longer in guest memory is a fault the
// caller reports. Writable ranges are kept at pop only while logging (DescriptorChain), readable
// ones never: both are taken when a table change finds the request waiting (readableRanges,
// DescriptorChain.keepRanges).

import { GuestMemory, MemoryFault, hex, isDetached, type WindowBases } from '../memory/guest-memory.ts';
import type { DescriptorChain, GuestRange } from '../virtqueue/chain.ts';

/**
 * The guest ranges of `chain`'s readable buffers, taken before the table change that unmaps
 * their views (GuestMemory.rangesOf): a chain keeps no guest addresses for them, so a request
 * popped cheaply (no range list per request) gets them only when it outlives a mapping.
 * Null when a view is not of `memory` as it is now (taken too late): the payload is then lost.
 * `bases`: memory.windowBases(), built once for every request of the change.
 */
export function readableRanges(memory: GuestMemory, chain: DescriptorChain, bases: WindowBases): GuestRange[] | null {
  return chain.readable.length === 0 ? [] : memory.rangesOf(chain.readable, bases);
}

/**
 * Makes `chain`'s writable views views of its guest ranges in `memory` as it is now (the old
 * ones may be of an unmapped table). `readsPayload`: the answer reads the readable buffers
 * (transfers, a send): they are made anew from `readable` (readableRanges, taken before the
 * change), or, when none were taken, must still be mapped.
 * Returns null, or why the chain's buffers cannot be reached (with the guest address).
 */
export function rebindChain(memory: GuestMemory, chain: DescriptorChain, readable: readonly GuestRange[] | null, readsPayload: boolean): string | null {
  if (readsPayload) {
    if (readable !== null) {
      const views = resolve(memory, readable);
      if (typeof views === 'string') return `its device-readable buffer at guest address ${views}, so its payload cannot be read`;
      chain.readable = views;
    } else {
      for (const v of chain.readable) {
        if (isDetached(v)) return 'its device-readable buffers were unmapped (REM_MEM_REG or SET_MEM_TABLE) before the device answered it and their guest addresses were not kept, so its payload cannot be read';
      }
    }
  }
  // Zero-length writable descriptors only, or none: no view to rebind.
  if (chain.writable.length === 0 && chain.ranges === null) return null;
  // Kept at pop (logging) or before the change (keepRequestRanges); found now if no table went since.
  const ranges = chain.rangesNow();
  if (ranges === null) {
    return 'its writable buffers were unmapped (REM_MEM_REG or SET_MEM_TABLE) before the device answered it and their guest addresses were not kept, so its reply cannot be written';
  }
  if (ranges.length === 0) return null;
  const writable = resolve(memory, ranges);
  if (typeof writable === 'string') return `its writable buffer at guest address ${writable}, so its reply cannot be written`;
  chain.writable = writable;
  return null;
}

/** Views of `ranges` in `memory` now, or the first range gone, worded for the caller's sentence. */
function resolve(memory: GuestMemory, ranges: readonly GuestRange[]): Uint8Array[] | string {
  const out: Uint8Array[] = [];
  for (const r of ranges) {
    if (r.len === 0) continue;
    try {
      memory.appendSlices(r.gpa, r.len, out);
    } catch (e) {
      if (!(e instanceof MemoryFault)) throw e;
      return (
        `${hex(r.gpa)} (+${r.len}) is no longer in guest memory ` +
        `(the front-end removed it with REM_MEM_REG or SET_MEM_TABLE before the device answered the request)`
      );
    }
  }
  return out;
}
