// A chain popped before the memory table changed (SET_MEM_TABLE, REM_MEM_REG, ADD_MEM_REG)
// holds views into the mappings of that time. In-flight I/O is drained before a mapping goes,
// but a request the device holds (an fs lock wait, a net rx buffer) or one whose failed I/O
// waits for the device's second answer is answered later, after the old mapping was unmapped:
// its views are detached then (length 0), and a reply copied into them would land nowhere
// while the used ring reported it written (a status byte never set reads as the guest left it:
// OK, for blk). The guest named its buffers by guest-physical address, so the reply goes where
// those addresses are now; an address no longer in guest memory is a fault the caller reports.

import { GuestMemory, MemoryFault, hex } from '../memory/guest-memory.ts';
import type { DescriptorChain } from '../virtqueue/chain.ts';

/** A view whose mapping was unmapped (native Mapping.unmap detaches its windows). */
function detached(v: Uint8Array): boolean {
  return v.length === 0 && v.buffer.byteLength === 0;
}

/**
 * Makes `chain`'s writable views views of its guest ranges in `memory` as it is now (the old
 * ones may be of an unmapped table). `readsPayload`: the answer reads the readable buffers
 * (transfers, a send), whose guest addresses are not kept: they must still be mapped.
 * Returns null, or why the chain's buffers cannot be reached (with the guest address).
 */
export function rebindChain(memory: GuestMemory, chain: DescriptorChain, readsPayload: boolean): string | null {
  if (readsPayload) {
    for (const v of chain.readable) {
      if (detached(v)) return 'its device-readable buffers were unmapped (REM_MEM_REG or SET_MEM_TABLE) before the device answered it, so its payload cannot be read';
    }
  }
  if (chain.writableRanges.length === 0) return null;
  const writable: Uint8Array[] = [];
  for (const r of chain.writableRanges) {
    if (r.len === 0) continue;
    try {
      memory.appendSlices(r.gpa, r.len, writable);
    } catch (e) {
      if (!(e instanceof MemoryFault)) throw e;
      return (
        `its writable buffer at guest address ${hex(r.gpa)} (+${r.len}) is no longer in guest memory ` +
        `(the front-end removed it with REM_MEM_REG or SET_MEM_TABLE before the device answered the request), so its reply cannot be written`
      );
    }
  }
  chain.writable = writable;
  return null;
}
