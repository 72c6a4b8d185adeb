// The fixed guest-physical layout every fuzz case uses, so a generated case can name concrete
// addresses (ring, scratch, guard) without running anything. One memfd of guest RAM at GPA 0.
import { UVA_BASE } from '../../host/frontend/driver-memory.ts';

export const RAM_BYTES = 1 << 20;
export { UVA_BASE };
/** Queue 0's ring (desc, avail, used, indirect tables) starts here. */
export const RING_GPA = 0;
/** Buffers of valid requests (the executor allocates from here). */
export const DATA_GPA = 0x20000;
export const DATA_END = 0xc0000;
/** Hostile chains' tables, headers and writable buffers. */
export const SCRATCH_GPA = 0xc0000;
export const SCRATCH_END = 0xe0000;
/** Referenced only by readable descriptors: the device must never change a byte of it. */
export const GUARD_GPA = 0xe0000;
export const GUARD_END = RAM_BYTES;
export const GUARD_BYTE = 0xa5;
export const SCRATCH_BYTE = 0x5a;
/** Target disk size (the host entry's memory disk) in 512-byte sectors. */
export const TARGET_DISK_BYTES = 4 << 20;
export const DISK_SECTORS = TARGET_DISK_BYTES / 512;
