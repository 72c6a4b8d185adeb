// A worker-held section (a memory disk) moved straight between its resource and a state file
// (SET_DEVICE_STATE_FD with a memfd), in the device worker: the file's range is mapped there and
// the bytes are copied once, resource <-> mapping, with the container's CRC-32C carried through
// (on SAVE in the same pass as the copy: copyCrc32c).
// The other way (section read -> RPC -> main thread -> write(2)) copies each byte three times
// and takes a round trip per chunk.
//
// The caller (the session, on the main thread) keeps the fd open while this runs and has
// already sized the file (SAVE) or checked it covers the range (LOAD). A front-end that shrinks
// the file meanwhile makes the mapping fault; the fault guard fills in zeros and this refuses.

import { copyCrc32c, crc32c } from './checksum.ts';
import { mapFdRange } from '../memory/fd-mapping.ts';
import type { WorkerStateSection } from './section.ts';

/** Bytes copied per step: each step is one call into the section, under the watchdog. */
const STEP = 64 << 20;

/** Runs fn for each step of [0, len) with a view of the file's bytes there. */
function eachStep(fd: number, fileOffset: number, len: number, writable: boolean, fn: (at: number, view: Uint8Array) => void): void {
  if (len === 0) return;
  const { backing, mapping } = mapFdRange(fd, len, fileOffset, writable);
  try {
    // One call makes every page of the range mapped (the SAVE's sink allocated them already),
    // instead of a page fault per 4 KiB on first touch.
    mapping.populate(0, mapping.size, writable);
    for (let at = 0; at < len; at += STEP) {
      const n = Math.min(STEP, len - at);
      fn(at, new Uint8Array(backing.window(at, n)));
    }
    if (mapping.faults() > 0) throw new Error('the state file was shrunk while the section was copied (its bytes are not all there)');
  } finally {
    mapping.unmap();
  }
}

/** SAVE: the section's bytes [0, len) into the file at fileOffset; returns the CRC-32C continued from `crc`. */
export function copySectionToFile(s: WorkerStateSection, fd: number, fileOffset: number, len: number, crc: number, call: <T>(fn: () => T) => T): number {
  eachStep(fd, fileOffset, len, true, (at, view) => {
    const bytes = call(() => s.read(at, view.length));
    if (!(bytes instanceof Uint8Array) || bytes.length !== view.length) throw new Error(`section ${s.name}: read returned the wrong number of bytes`);
    crc = copyCrc32c(view, bytes, crc);
  });
  return crc;
}

/** LOAD: the file's bytes [fileOffset, +len) into the section (after its beginLoad); returns the CRC-32C continued from `crc`. */
export function copyFileToSection(s: WorkerStateSection, fd: number, fileOffset: number, len: number, crc: number, call: <T>(fn: () => T) => T): number {
  eachStep(fd, fileOffset, len, false, (at, view) => {
    crc = crc32c(view, crc);
    call(() => s.write(at, view));
  });
  return crc;
}
