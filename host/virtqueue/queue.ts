// What the runner needs from a device-side virtqueue, whichever ring layout the driver chose
// (VIRTIO_F_RING_PACKED, bit 34). SplitQueue and PackedQueue both satisfy it (what they share
// is QueueCore, core.ts); createDeviceQueue builds the right one from SET_VRING_NUM/ADDR/BASE
// values, and each queue answers GET_VRING_BASE in its own layout's format (vringBase).

import type { DirtyLog } from '../memory/dirty-log.ts';
import type { QueueCoreConfig } from './core.ts';
import { isValidPackedQueueSize, isValidQueueSize } from './layout.ts';
import { QueueSetupError, SplitQueue, type DescriptorChain, type QueueFault } from './split.ts';
import { PackedQueue, decodePackedVringBase } from './packed.ts';

export const VIRTIO_F_RING_PACKED = 34;

const PACKED_INITIAL = { availIdx: 0, availWrap: true, usedIdx: 0, usedWrap: true };
/** A fresh packed ring's vring base (what QEMU sends before the ring ever ran). */
export const PACKED_INITIAL_VRING_BASE = 0x80008000;

export interface DeviceQueue {
  readonly index: number;
  readonly size: number;
  readonly eventIdx: boolean;
  readonly indirectDesc: boolean;
  /** Split: free-running u16 avail index. Packed: ring slot (vringBase has the wire value). */
  readonly nextAvail: number;
  readonly nextUsed: number;
  /**
   * GET_VRING_BASE reply `num`. Split: the next avail index (u16). Packed: avail index in bits
   * 0-14, avail wrap counter in bit 15, and the used index and wrap counter likewise in bits
   * 16-31. SET_VRING_BASE's value goes in as DeviceQueueConfig.vringBase, in the same format.
   */
  readonly vringBase: number;
  /** Chains popped and not yet returned with pushUsed. */
  readonly inFlight: number;
  /** Completions that overtook a request made available before them and still in flight. */
  readonly overtaken: number;
  readonly broken: boolean;
  readonly fault: QueueFault | undefined;
  /** Next available chain or null; QueueFault on a guest violation (and on every call once broken). */
  pop(): DescriptorChain | null;
  /** Return chain `head` (split: head descriptor index; packed: buffer id; both are chain.head). */
  pushUsed(head: number, writtenLen: number): void;
  writeChain(chain: DescriptorChain, data: Uint8Array, offset?: number): number;
  /** writeChain of `len` zero bytes at `offset`, without a source buffer. */
  zeroChain(chain: DescriptorChain, offset: number, len: number): number;
  /** After a batch of pushUsed: whether to signal the call fd. */
  needsNotification(): boolean;
  /** Re-arm kicks; true when work arrived meanwhile (keep draining). */
  enableNotifications(): boolean;
  disableNotifications(): void;
  /** No kicks at all until enableNotifications (EVENT_IDX included): the runner polls the ring meanwhile. */
  suppressNotifications(): void;
  hasAvailable(): boolean;
  /** Heads (split) or buffer ids (packed) in flight. */
  inFlightHeads(): number[];
  /** usedLogGpa: log_guest_addr of SET_VRING_ADDR (split: used ring; packed: device event area). */
  setLog(log: DirtyLog | null, usedLogGpa?: number): void;
}

export interface DeviceQueueConfig extends QueueCoreConfig {
  packed: boolean;
  /** The three SET_VRING_ADDR addresses as GPAs. Packed: descriptor ring, driver event area, device event area. */
  descGpa: number;
  availGpa: number;
  usedGpa: number;
  /**
   * SET_VRING_BASE `num` as received (split: u16 avail index; packed: both indexes and wrap
   * counters). Omit it when the front-end sent none: for a packed ring 0 is NOT the initial
   * state (that is 0x80008000: both indexes 0, both wrap counters 1), it means "one lap done".
   */
  vringBase?: number;
}

/** SET_VRING_NUM: split sizes are powers of two, packed sizes any integer; both at most 32768. */
export function isValidRingSize(packed: boolean, size: number): boolean {
  return packed ? isValidPackedQueueSize(size) : isValidQueueSize(size);
}

/** SET_VRING_BASE payload check, before the ring exists: null when fine, else why not. */
export function vringBaseError(packed: boolean, num: number): string | null {
  if (!Number.isInteger(num) || num < 0 || num > 0xffffffff) return `vring base ${num} is not a u32`;
  if (!packed && num > 0xffff) return `vring base ${num} is not a 16-bit ring index`;
  return null;
}

export function createDeviceQueue(cfg: DeviceQueueConfig): DeviceQueue {
  const base = cfg.vringBase ?? 0;
  const err = vringBaseError(cfg.packed, base);
  if (err !== null) throw new QueueSetupError(cfg.index, err);
  if (!cfg.packed) {
    const q: DeviceQueue = new SplitQueue({
      index: cfg.index,
      memory: cfg.memory,
      size: cfg.size,
      descGpa: cfg.descGpa,
      availGpa: cfg.availGpa,
      usedGpa: cfg.usedGpa,
      eventIdx: cfg.eventIdx,
      indirectDesc: cfg.indirectDesc,
      nextAvail: base,
      log: cfg.log,
      usedLogGpa: cfg.usedLogGpa,
    });
    return q;
  }
  const b = cfg.vringBase === undefined ? PACKED_INITIAL : decodePackedVringBase(cfg.vringBase, cfg.size);
  const q: DeviceQueue = new PackedQueue({
    index: cfg.index,
    memory: cfg.memory,
    size: cfg.size,
    descGpa: cfg.descGpa,
    driverEventGpa: cfg.availGpa,
    deviceEventGpa: cfg.usedGpa,
    eventIdx: cfg.eventIdx,
    indirectDesc: cfg.indirectDesc,
    nextAvail: b.availIdx,
    availWrap: b.availWrap,
    nextUsed: b.usedIdx,
    usedWrap: b.usedWrap,
    log: cfg.log,
    usedLogGpa: cfg.usedLogGpa,
  });
  return q;
}
