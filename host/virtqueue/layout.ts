// Split virtqueue layout constants shared by the device side and our driver side
// (virtio 1.x, "Split Virtqueues"). All fields are little-endian.

export const DESC_SIZE = 16;
export const VIRTQ_DESC_F_NEXT = 1;
export const VIRTQ_DESC_F_WRITE = 2;
export const VIRTQ_DESC_F_INDIRECT = 4;

/** avail.flags: the driver does not want used-buffer notifications (no EVENT_IDX). */
export const VRING_AVAIL_F_NO_INTERRUPT = 1;
/** used.flags: the device does not want available-buffer notifications (no EVENT_IDX). */
export const VRING_USED_F_NO_NOTIFY = 1;

export const MAX_QUEUE_SIZE = 32768;
/** `next` is a u16, so no indirect table can usefully hold more entries. */
export const MAX_INDIRECT_ENTRIES = 65536;

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

// The rings are accessed through host-endian typed arrays for the hot fields (so Atomics can
// order them); virtio 1.x is little-endian, so a big-endian host would need another path.
if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) {
  throw new Error('vhost-wasm virtqueues require a little-endian host');
}
