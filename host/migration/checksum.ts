// The checksums of the device-state container and the pre-copy rounds. Container format 1 used
// CRC-32 (node:zlib, ~4.4 GB/s here); format 2 and pre-copy version 2 use CRC-32C from the addon
// (Intel ISA-L's crc32_iscsi, which picks its code for the CPU: native.crc32cImpl),
// which is several times faster and can be fused with a copy (copyCrc32c). Either is a
// corruption check, not an authenticity check.

import { crc32 } from 'node:zlib';
import { native } from '../native/index.ts';

/** The checksum of bytes continued from seed (0 to start). */
export type Checksum = (bytes: Uint8Array, seed?: number) => number;

export const crc32c: Checksum = (bytes, seed = 0) => native.crc32c(bytes, seed);

/** CRC-32 (zlib / IEEE 802.3), what container format 1 carries. */
export const crc32Ieee: Checksum = (bytes, seed = 0) => crc32(bytes, seed);

/** Copies src into the start of dst and returns src's CRC-32C continued from seed, in one pass. */
export function copyCrc32c(dst: Uint8Array, src: Uint8Array, seed = 0): number {
  return native.copyCrc32c(dst, src, seed);
}
