// A storage backing as a state section (runs in the device worker, where the backing lives).
// Only memory:SIZE disks travel with the device state: a file backing is storage the operator
// shares between hosts (like QEMU's shared-disk migration), so it contributes no section.
//
// To wire it (host/plugin/device-source.ts, where the backing is opened), give the device
// object a `stateSections` method:   device.stateSections = () => storageStateSections(backing)
// The runner serves it to the session through the stateRead/stateWrite RPC ops (section 0x100).
//
// A failed LOAD leaves the destination's disk partly overwritten: the destination is being
// discarded anyway when its CHECK fails (the source resumes), so the bytes are streamed
// straight into the disk rather than staged.

import type { Backing } from '../storage/backing.ts';
import { SectionId, type WorkerStateSection } from './section.ts';

export const STORAGE_SECTION_ID = SectionId.HOST_BASE;

// The runner asks the device for its sections on every state op: one section object per backing,
// so the LOAD progress (`loaded`) survives between beginLoad and the writes.
const sectionsByBacking = new WeakMap<Backing, WorkerStateSection>();

export function storageStateSections(backing: Backing | undefined): WorkerStateSection[] {
  if (backing === undefined || !backing.describe.startsWith('memory:')) return [];
  let s = sectionsByBacking.get(backing);
  if (s === undefined) {
    s = backingSection(backing);
    sectionsByBacking.set(backing, s);
  }
  return [s];
}

export function backingSection(b: Backing, id: number = STORAGE_SECTION_ID): WorkerStateSection {
  let loaded = -1;
  return {
    id,
    name: 'storage',
    size: () => b.size,
    // A memory disk's read is a view of its own memory, as a Buffer. It goes out as a plain
    // Uint8Array view of the same bytes: the runner copies what a section returns (with
    // Uint8Array#slice; Buffer#slice would be another view, and transferring it would detach the
    // disk), and that is the only copy between the disk and the state fd.
    read: (offset, len) => {
      const v = b.read(offset, len);
      return new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
    },
    beginLoad(size) {
      if (b.readOnly) throw new Error(`storage ${b.describe} is read-only here: it cannot load a disk`);
      if (size !== b.size) throw new Error(`storage is ${b.size} bytes here (${b.describe}), the state's disk is ${size} bytes`);
      loaded = 0;
    },
    write(offset, chunk) {
      if (loaded < 0) throw new Error('storage: write before beginLoad');
      if (offset !== loaded) throw new Error(`storage: bytes at ${offset}, expected ${loaded}`);
      b.write(offset, chunk);
      loaded += chunk.length;
    },
    finish: () => (loaded === b.size ? null : `storage: ${loaded} of ${b.size} bytes arrived`),
    abort() {
      loaded = -1;
    },
  };
}

/** A worker section used in-process (tests, tools): the async StateSection over it. */
export function asAsyncSection(s: WorkerStateSection): import('./section.ts').StateSection {
  return {
    id: s.id,
    name: s.name,
    size: async () => s.size(),
    read: async (o, l) => s.read(o, l),
    beginLoad: async (n) => s.beginLoad(n),
    write: async (o, c) => s.write(o, c),
    finish: async () => s.finish(),
    abort: async () => s.abort(),
  };
}
