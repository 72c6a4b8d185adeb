// The two virtqueue ring layouts (virtio 1.x, "Split Virtqueues" and "Packed Virtqueues"), as
// both the device side (host/virtqueue) and our driver side (host/frontend/rings) read and write
// them. All fields are little-endian.

export const DESC_SIZE = 16;
export const VIRTQ_DESC_F_NEXT = 1;
export const VIRTQ_DESC_F_WRITE = 2;
export const VIRTQ_DESC_F_INDIRECT = 4;

export const MAX_QUEUE_SIZE = 32768;
/** `next` is a u16, so no indirect table can usefully hold more entries. */
export const MAX_INDIRECT_ENTRIES = 65536;

// Split virtqueues: a descriptor table, the avail ring (driver writes) and the used ring
// (device writes), each with its flags and index.

/** avail.flags: the driver does not want used-buffer notifications (no EVENT_IDX). */
export const VRING_AVAIL_F_NO_INTERRUPT = 1;
/** used.flags: the device does not want available-buffer notifications (no EVENT_IDX). */
export const VRING_USED_F_NO_NOTIFY = 1;

export function descTableBytes(size: number): number {
  return DESC_SIZE * size;
}
/** flags, idx, ring[size], used_event (present in the layout whether or not EVENT_IDX is on). */
export function availBytes(size: number): number {
  return 6 + 2 * size;
}
/** flags, idx, ring[size] of {id u32, len u32}, avail_event. */
export function usedBytes(size: number): number {
  return 6 + 8 * size;
}

export function isValidQueueSize(size: number): boolean {
  return Number.isInteger(size) && size >= 1 && size <= MAX_QUEUE_SIZE && (size & (size - 1)) === 0;
}

/**
 * virtio's vring_need_event: notify iff event_idx lies in [old, new) modulo 2^16, i.e. the other
 * side asked to be told when the index passes `eventIdx` and this batch moved it past.
 */
export function vringNeedEvent(eventIdx: number, newIdx: number, oldIdx: number): boolean {
  return ((newIdx - eventIdx - 1) & 0xffff) < ((newIdx - oldIdx) & 0xffff);
}

// Packed virtqueues (VIRTIO_F_RING_PACKED). One ring of 16-byte descriptors {addr u64, len u32,
// id u16, flags u16} carries both directions; two 4-byte event suppression structures
// {off_wrap u16, flags u16} replace the split ring's flags and event indexes.
//
// Indexes are "positions" in [0, 2 * size): slot = position mod size, and the wrap counter is 1
// on the first lap (position < size), 0 on the second. That makes every distance (in-flight
// slots, event windows) a plain modular subtraction.

/** Descriptor flag: available, set by the driver to its wrap counter. */
export const VIRTQ_DESC_F_AVAIL = 1 << 7;
/** Descriptor flag: used, set by the driver to the inverse of its wrap counter, by the device to its own. */
export const VIRTQ_DESC_F_USED = 1 << 15;

/** Event suppression flags (the `flags` field of both suppression structures). */
export const RING_EVENT_FLAGS_ENABLE = 0;
export const RING_EVENT_FLAGS_DISABLE = 1;
/** Only with VIRTIO_F_RING_EVENT_IDX: notify when the ring passes off_wrap. */
export const RING_EVENT_FLAGS_DESC = 2;
/** Bit 15 of off_wrap is the wrap counter the offset refers to. */
export const RING_EVENT_WRAP = 1 << 15;
export const EVENT_SUPPRESS_BYTES = 4;

/** Packed queue sizes need not be powers of two; 2^15 is the most a 15-bit offset can index. */
export function isValidPackedQueueSize(size: number): boolean {
  return Number.isInteger(size) && size >= 1 && size <= MAX_QUEUE_SIZE;
}

/** Position (see above) of ring slot `idx` on the lap whose wrap counter is `wrap`. */
export function packedPosition(idx: number, wrap: boolean, size: number): number {
  return wrap ? idx : idx + size;
}

/** The off_wrap encoding of a position: slot in bits 0-14, wrap counter in bit 15. */
export function positionToOffWrap(pos: number, size: number): number {
  return pos < size ? pos | RING_EVENT_WRAP : pos - size;
}

/**
 * Event-index test for packed rings: notify iff the position named by `offWrap` lies in
 * [oldPos, newPos) modulo 2 * size, i.e. the other side asked to be told when the ring
 * reaches that slot (on that lap) and this batch moved past it. Offsets beyond the ring
 * (a confused or hostile peer) are reduced modulo the position space; they only decide
 * whether to notify.
 */
export function packedNeedEvent(offWrap: number, newPos: number, oldPos: number, size: number): boolean {
  const span = 2 * size;
  let e = (offWrap & 0x7fff) + (offWrap & RING_EVENT_WRAP ? 0 : size);
  e %= span;
  let a = newPos - e - 1;
  if (a < 0) a += span;
  if (a < 0) a += span;
  let b = newPos - oldPos;
  if (b < 0) b += span;
  return a < b;
}

// The rings are accessed through host-endian typed arrays for the hot fields (so Atomics can
// order them); virtio 1.x is little-endian, so a big-endian host would need another path.
if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) {
  throw new Error('vhost-wasm virtqueues require a little-endian host');
}
