// Device side of a packed virtqueue (virtio 1.1+, "Packed Virtqueues", VIRTIO_F_RING_PACKED).
//
// One ring of 16-byte descriptors {addr u64, len u32, id u16, flags u16} carries both directions:
// the driver makes a descriptor available by setting AVAIL to its wrap counter and USED to the
// inverse; the device returns a buffer by writing one used descriptor (id, len, AVAIL = USED =
// its own wrap counter) at its used index, then skipping as many slots as the buffer's chain
// occupied. Two 4-byte event suppression structures {off_wrap u16, flags u16} replace the split
// ring's flags/event indexes: the driver area (written by the driver) controls used-buffer
// notifications, the device area (written by us) controls available-buffer notifications.
//
// Indexes are kept as positions (layout.ts, packedPosition), so every distance is a plain
// modular subtraction. Everything read from guest memory is checked; the first violation
// breaks the queue with a QueueFault, as SplitQueue does.

import { GuestMemory, hex } from '../memory/guest-memory.ts';
import {
  DESC_SIZE,
  EVENT_SUPPRESS_BYTES,
  MAX_QUEUE_SIZE,
  RING_EVENT_FLAGS_DESC,
  RING_EVENT_FLAGS_DISABLE,
  RING_EVENT_FLAGS_ENABLE,
  VIRTQ_DESC_F_AVAIL,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_USED,
  VIRTQ_DESC_F_WRITE,
  isValidPackedQueueSize,
  packedNeedEvent,
  packedPosition,
  positionToOffWrap,
} from './layout.ts';
import { DescriptorChain, QueueSetupError, appendBuffer, indirectTable, type Fail } from './chain.ts';
import { QueueCore, type QueueCoreConfig } from './core.ts';
import type { PackedInflightRecovery, PackedInflightRegion, RecordedDescriptor } from './inflight-packed.ts';
import { InflightAreaError } from './inflight.ts';

export interface PackedVringBase {
  /** Next ring slot the device will examine for an available descriptor. */
  availIdx: number;
  availWrap: boolean;
  /** Ring slot where the device writes its next used descriptor. */
  usedIdx: number;
  usedWrap: boolean;
}

/**
 * SET/GET_VRING_BASE payload `num` for packed rings (vhost-user.rst, "Vring descriptor indices
 * for packed virtqueues"): bits 0-14 avail index, bit 15 avail wrap counter, bits 16-30 used
 * index, bit 31 used wrap counter.
 */
export function encodePackedVringBase(b: PackedVringBase): number {
  return ((b.availIdx & 0x7fff) | (b.availWrap ? 0x8000 : 0) | ((b.usedIdx & 0x7fff) << 16) | (b.usedWrap ? 0x80000000 : 0)) >>> 0;
}

/**
 * Decodes a packed vring base. Older peers (DPDK before the spec named the upper half, and our
 * own front-end's first drafts) send only the avail half with the upper 16 bits zero; when that
 * reading is inconsistent (used more than a ring ahead of avail) the used index is taken to
 * equal the avail one, which is what a stopped ring with nothing in flight has.
 */
export function decodePackedVringBase(num: number, size: number): PackedVringBase {
  const b: PackedVringBase = {
    availIdx: num & 0x7fff,
    availWrap: (num & 0x8000) !== 0,
    usedIdx: (num >>> 16) & 0x7fff,
    usedWrap: (num & 0x80000000) !== 0,
  };
  if (num >>> 16 === 0 && b.availIdx < size) {
    let d = packedPosition(b.availIdx, b.availWrap, size) - packedPosition(0, false, size);
    if (d < 0) d += 2 * size;
    if (d > size) {
      b.usedIdx = b.availIdx;
      b.usedWrap = b.availWrap;
    }
  }
  return b;
}

/** `head` is the buffer id (from the chain's last descriptor); `availIndex` the ring slot of its first descriptor. */
export class PackedDescriptorChain extends DescriptorChain {
  /** Ring slots the chain occupies (1 for an indirect descriptor): how far its used descriptor moves the used index. */
  descCount = 0;
}

export interface PackedQueueConfig extends QueueCoreConfig {
  /** 1..32768, not necessarily a power of two. */
  size: number;
  /** Descriptor ring (SET_VRING_ADDR's descriptor address), 16-byte aligned. */
  descGpa: number;
  /** Driver event suppression area (SET_VRING_ADDR's "avail" address), 4-byte aligned. */
  driverEventGpa: number;
  /** Device event suppression area (SET_VRING_ADDR's "used" address), 4-byte aligned; also what usedLogGpa defaults to. */
  deviceEventGpa: number;
  /** SET_VRING_BASE (decoded): first slot to examine and the driver wrap counter there. Default 0 / true. */
  nextAvail?: number;
  availWrap?: boolean;
  /** Where the next used descriptor goes. Default: the avail index and wrap (nothing in flight). */
  nextUsed?: number;
  usedWrap?: boolean;
}

const USED_BOTH = VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED;

export class PackedQueue extends QueueCore<PackedDescriptorChain> {
  readonly descGpa: number;
  readonly driverEventGpa: number;
  readonly deviceEventGpa: number;
  readonly packed = true;

  private readonly span: number; // 2 * size
  private desc!: DataView;
  /** The descriptor ring as u16s: flags of slot i at [8 * i + 7]. */
  private ring16!: Uint16Array;
  /** [0] = off_wrap | flags << 16 (little-endian), read as one unit. */
  private driverEvent!: Uint32Array;
  private deviceEvent!: Uint32Array;
  /** Last value we stored in the device area, -1 when unknown (skip redundant stores and logs). */
  private deviceEventShadow = -1;

  /** Where pop's walk is, for the messages of walkFail (one bound function instead of a closure per chain). */
  private walkFirst = 0;
  private walkSlot = 0;
  private readonly walkFail: Fail = (reason) => this.fail(reason, this.walkFirst, undefined, this.walkSlot);
  private availPos: number;
  private usedPos: number;
  private signalledPos: number;
  /** Used slots advanced since the last needsNotification (to detect > one position space). */
  private usedSinceSignal = 0;
  /** The inflight area's region (INFLIGHT_SHMFD): pop copies each chain's descriptors there. */
  private inflightRegion: PackedInflightRegion | null = null;

  constructor(cfg: PackedQueueConfig) {
    if (!isValidPackedQueueSize(cfg.size)) {
      throw new QueueSetupError(cfg.index, `packed queue size ${cfg.size} is not an integer in [1, ${MAX_QUEUE_SIZE}]`);
    }
    super(cfg, cfg.deviceEventGpa);
    this.span = 2 * cfg.size;
    this.descGpa = cfg.descGpa;
    this.driverEventGpa = cfg.driverEventGpa;
    this.deviceEventGpa = cfg.deviceEventGpa;
    if (!Number.isSafeInteger(cfg.descGpa) || cfg.descGpa % 16 !== 0) {
      throw new QueueSetupError(cfg.index, `descriptor ring GPA ${hex(cfg.descGpa)} is not 16-byte aligned`);
    }
    if (!Number.isSafeInteger(cfg.driverEventGpa) || cfg.driverEventGpa % 4 !== 0) {
      throw new QueueSetupError(cfg.index, `driver event suppression GPA ${hex(cfg.driverEventGpa)} is not 4-byte aligned`);
    }
    if (!Number.isSafeInteger(cfg.deviceEventGpa) || cfg.deviceEventGpa % 4 !== 0) {
      throw new QueueSetupError(cfg.index, `device event suppression GPA ${hex(cfg.deviceEventGpa)} is not 4-byte aligned`);
    }
    this.mapRings(true);
    const availIdx = cfg.nextAvail ?? 0;
    const availWrap = cfg.availWrap ?? true;
    const usedIdx = cfg.nextUsed ?? availIdx;
    const usedWrap = cfg.usedWrap ?? (cfg.nextUsed === undefined ? availWrap : true);
    for (const [what, v] of [['vring base avail index', availIdx], ['vring base used index', usedIdx]] as const) {
      if (!Number.isInteger(v) || v < 0 || v >= cfg.size) throw new QueueSetupError(cfg.index, `${what} ${v} is outside the ring of ${cfg.size}`);
    }
    this.availPos = packedPosition(availIdx, availWrap, cfg.size);
    this.usedPos = packedPosition(usedIdx, usedWrap, cfg.size);
    if (this.ownedSlots() > cfg.size) {
      throw new QueueSetupError(
        cfg.index,
        `vring base: used index ${usedIdx} (wrap ${+usedWrap}) is not within one ring behind avail index ${availIdx} (wrap ${+availWrap})`,
      );
    }
    this.signalledPos = this.usedPos;
  }

  /** Ring slot the device examines next. */
  get nextAvail(): number {
    const p = this.availPos;
    return p < this.size ? p : p - this.size;
  }
  /** Ring slot of the next used descriptor. */
  get nextUsed(): number {
    const p = this.usedPos;
    return p < this.size ? p : p - this.size;
  }
  get availWrapCounter(): boolean {
    return this.availPos < this.size;
  }
  get usedWrapCounter(): boolean {
    return this.usedPos < this.size;
  }
  /** GET_VRING_BASE reply `num` (both indexes and wrap counters). */
  override get vringBase(): number {
    return encodePackedVringBase({ availIdx: this.nextAvail, availWrap: this.availWrapCounter, usedIdx: this.nextUsed, usedWrap: this.usedWrapCounter });
  }
  /** Ring slots between the used and the avail index: owned by the device (in flight, or lost in a restart). */
  get inFlightDescriptors(): number {
    return this.ownedSlots();
  }

  private ownedSlots(): number {
    const d = this.availPos - this.usedPos;
    return d < 0 ? d + this.span : d;
  }

  private isAvail(pos: number): boolean {
    const size = this.size;
    const wrap = pos < size;
    const slot = wrap ? pos : pos - size;
    const f = Atomics.load(this.ring16, 8 * slot + 7);
    return ((f & VIRTQ_DESC_F_AVAIL) !== 0) === wrap && ((f & VIRTQ_DESC_F_USED) !== 0) !== wrap;
  }

  /** Whether the driver has made a descriptor available at the avail index (no side effects). */
  hasAvailable(): boolean {
    this.check();
    return this.isAvail(this.availPos);
  }

  /**
   * The next available chain, or null when the driver has published nothing new.
   * Throws QueueFault on a protocol violation, and on every call once broken.
   */
  pop(): PackedDescriptorChain | null {
    this.check();
    const pos = this.availPos;
    // Acquire: the flags load comes first; the rest of the descriptor (and the chain's other
    // descriptors, which the driver writes before the head's flags) is read after it.
    if (!this.isAvail(pos)) return null;
    const size = this.size;
    const first = pos < size ? pos : pos - size;
    const room = size - this.ownedSlots();
    const memory = this.memory;
    const chain = new PackedDescriptorChain(0, first, memory, this.logging);
    const dv = this.desc;
    let slot = first;
    let wrap = pos < size;
    let n = 0;
    let id: number;
    // walkFail names the ring descriptor being looked at: walkSlot follows slot.
    const fail = this.walkFail;
    this.walkFirst = first;
    for (;;) {
      this.walkSlot = slot;
      if (++n > room) {
        if (room === size) fail(`descriptor chain longer than queue size ${size}`);
        fail(`descriptor chain runs into the ${size - room} descriptors still in flight (queue size ${size})`);
      }
      const o = slot * DESC_SIZE;
      const lo = dv.getUint32(o, true);
      const hi = dv.getUint32(o + 4, true);
      const len = dv.getUint32(o + 8, true);
      const flags = dv.getUint16(o + 14, true);
      // The head was checked above; the spec requires AVAIL/USED to be right in every
      // descriptor of the list, and a wrong pair means the chain runs into stale slots.
      if (n > 1 && (((flags & VIRTQ_DESC_F_AVAIL) !== 0) !== wrap || ((flags & VIRTQ_DESC_F_USED) !== 0) === wrap)) {
        fail(`descriptor ${slot} continues a chain but is not available (flags ${hex(flags)})`);
      }
      if (flags & VIRTQ_DESC_F_INDIRECT) {
        if (!this.indirectDesc) fail(`descriptor ${slot} is INDIRECT but VIRTIO_F_INDIRECT_DESC was not negotiated`);
        if (flags & VIRTQ_DESC_F_NEXT) fail(`descriptor ${slot} has both INDIRECT and NEXT`);
        if (n > 1) fail(`descriptor ${slot} is INDIRECT inside a NEXT chain`);
        walkIndirect(memory, chain, indirectTable(memory, lo, hi, len, fail), slot, fail);
        id = dv.getUint16(o + 12, true);
        break;
      }
      appendBuffer(memory, chain, lo, hi, len, (flags & VIRTQ_DESC_F_WRITE) !== 0, slot, -1, fail);
      if (!(flags & VIRTQ_DESC_F_NEXT)) {
        id = dv.getUint16(o + 12, true);
        break;
      }
      if (++slot === size) {
        slot = 0;
        wrap = !wrap;
      }
    }
    if (id >= size) this.fail(`buffer id ${id} >= queue size ${size}`, first, id, slot);
    if (this.isInFlight(id)) this.fail(`buffer id ${id} is already in flight`, first, id, slot);
    chain.head = id;
    chain.descCount = n;
    let p = pos + n;
    if (p >= this.span) p -= this.span;
    this.availPos = p;
    if (this.inflightRegion !== null) this.inflightRegion.stage(dv, first, n);
    this.track(id, chain);
    return chain;
  }

  /**
   * Returns the popped buffer `id` with `writtenLen` bytes written: writes its used descriptor
   * at the used index (in any order relative to other in-flight buffers) and moves the used
   * index past the slots its chain occupied. Logs the written bytes and the descriptor.
   */
  pushUsed(id: number, writtenLen: number): void {
    const chain = this.retire(id, writtenLen, 'buffer id');
    const size = this.size;
    const pos = this.usedPos;
    const wrap = pos < size;
    const slot = wrap ? pos : pos - size;
    const o = slot * DESC_SIZE;
    this.desc.setUint32(o + 8, writtenLen, true);
    this.desc.setUint16(o + 12, id, true);
    // Release: id and len before the flags that hand the slot back (seq-cst store, which is
    // also the store->load fence needsNotification relies on).
    // WRITE in a used descriptor: the device wrote data (len is only meaningful with it).
    Atomics.store(this.ring16, 8 * slot + 7, (wrap ? USED_BOTH : 0) | (writtenLen > 0 ? VIRTQ_DESC_F_WRITE : 0));
    let p = pos + chain.descCount;
    if (p >= this.span) p -= this.span;
    this.usedPos = p;
    if (this.recorder !== null) this.recorder.usedEnd(id, p < size ? p : p - size);
    this.usedSinceSignal += chain.descCount;
    this.logRing(this.descGpa + o + 8, 8);
  }

  /**
   * After a batch of pushUsed: whether the driver wants a used-buffer notification. Driver
   * area flags DISABLE: no; ENABLE: yes; DESC (EVENT_IDX): iff the used index passed off_wrap
   * since the last decision.
   */
  needsNotification(): boolean {
    this.check();
    const moved = this.usedSinceSignal;
    const old = this.signalledPos;
    const now = this.usedPos;
    this.usedSinceSignal = 0;
    this.signalledPos = now;
    if (moved === 0) return false;
    // Ordered after pushUsed's seq-cst flags store: a driver that re-armed after reading the
    // old used descriptor is not missed.
    const ev = Atomics.load(this.driverEvent, 0);
    const flags = ev >>> 16;
    if (flags === RING_EVENT_FLAGS_DISABLE) return false;
    if (!this.eventIdx || flags !== RING_EVENT_FLAGS_DESC) return true;
    if (moved >= this.span) return true;
    return packedNeedEvent(ev & 0xffff, now, old, this.size);
  }

  /**
   * Ask the driver for kicks again (EVENT_IDX: for the descriptor at the avail index). Returns
   * true when a descriptor became available meanwhile: the caller must keep processing.
   */
  enableNotifications(): boolean {
    this.check();
    const off = positionToOffWrap(this.availPos, this.size);
    this.storeDeviceEvent(this.eventIdx ? off | (RING_EVENT_FLAGS_DESC << 16) : off | (RING_EVENT_FLAGS_ENABLE << 16));
    // The seq-cst store above is a full fence: the flags read below cannot move before it.
    return this.isAvail(this.availPos);
  }

  /** While the runner polls the ring: the same DISABLE flag (packed suppression has no "behind"). */
  suppressNotifications(): void {
    this.disableNotifications();
  }

  /** Ask the driver not to kick while we drain (a hint the driver may ignore). */
  disableNotifications(): void {
    this.check();
    const cur = this.deviceEventShadow < 0 ? 0 : this.deviceEventShadow & 0xffff;
    this.storeDeviceEvent(cur | (RING_EVENT_FLAGS_DISABLE << 16));
  }

  /**
   * Ring start with an inflight area (INFLIGHT_SHMFD): recovers `region` against the
   * descriptor ring, continues at the used index it recorded (the front-end's SET_VRING_BASE
   * after a crash cannot know it) with the avail index past the slots still in flight, takes
   * those requests again, oldest first, rebuilt from the descriptors the region copied when
   * they were popped (their ring slots may hold anything by now), and records every later pop
   * and push there. The caller processes the returned chains before anything new. Throws
   * InflightAreaError (the queue then records nothing) when the region contradicts itself or
   * the ring, and QueueFault when a recorded chain is no valid chain.
   */
  restoreInflight(region: PackedInflightRegion): { chains: PackedDescriptorChain[]; recovery: PackedInflightRecovery } {
    this.check();
    if (this.inFlight !== 0) throw new Error(`virtqueue ${this.index}: inflight area attached after requests were popped`);
    const size = this.size;
    const recovery = region.recover((slot) => Atomics.load(this.ring16, 8 * slot + 7), this.nextUsed, this.usedWrapCounter, size);
    if (recovery.usedIdx !== null) {
      const used = packedPosition(recovery.usedIdx, recovery.usedWrap, size);
      let avail = used + recovery.ownedSlots;
      if (avail >= this.span) avail -= this.span;
      this.usedPos = used;
      this.signalledPos = used;
      this.availPos = avail;
    }
    const chains: PackedDescriptorChain[] = [];
    for (const r of recovery.requests) {
      const chain = this.rebuild(r.id, r.descriptors);
      this.track(r.id, chain);
      chains.push(chain);
    }
    // Set only now: track() above must not record the resubmitted chains as new pops.
    this.recorder = region;
    this.inflightRegion = region;
    return { chains, recovery };
  }

  /** A chain from descriptors the inflight region recorded (availIndex -1: its slots are unknown now). */
  private rebuild(id: number, descs: RecordedDescriptor[]): PackedDescriptorChain {
    const chain = new PackedDescriptorChain(id, -1, this.memory, this.logging);
    chain.descCount = descs.length;
    const fail = this.walkFail;
    this.walkFirst = -1;
    for (let k = 0; k < descs.length; k++) {
      const d = descs[k];
      this.walkSlot = k;
      if (d.flags & VIRTQ_DESC_F_INDIRECT) {
        if (!this.indirectDesc) fail(`resubmitted buffer ${id}: descriptor ${k} is INDIRECT but VIRTIO_F_INDIRECT_DESC was not negotiated`);
        walkIndirect(this.memory, chain, indirectTable(this.memory, d.addrLo, d.addrHi, d.len, fail), k, fail);
      } else {
        appendBuffer(this.memory, chain, d.addrLo, d.addrHi, d.len, (d.flags & VIRTQ_DESC_F_WRITE) !== 0, k, -1, fail);
      }
    }
    return chain;
  }

  private storeDeviceEvent(v: number): void {
    if (v === this.deviceEventShadow) return;
    this.deviceEventShadow = v;
    Atomics.store(this.deviceEvent, 0, v);
    this.logUsedArea(0, EVENT_SUPPRESS_BYTES);
  }

  protected override resolveViews(setup: boolean): void {
    const d = this.ringView(this.descGpa, this.size * DESC_SIZE, 'descriptor ring', setup);
    const drv = this.ringView(this.driverEventGpa, EVENT_SUPPRESS_BYTES, 'driver event suppression area', setup);
    const dev = this.ringView(this.deviceEventGpa, EVENT_SUPPRESS_BYTES, 'device event suppression area', setup);
    if (d.byteOffset % 2 !== 0 || drv.byteOffset % 4 !== 0 || dev.byteOffset % 4 !== 0) this.setupFault(setup, 'ring is misaligned in its host mapping');
    this.desc = new DataView(d.buffer, d.byteOffset, d.byteLength);
    this.ring16 = new Uint16Array(d.buffer, d.byteOffset, 8 * this.size);
    this.driverEvent = new Uint32Array(drv.buffer, drv.byteOffset, 1);
    this.deviceEvent = new Uint32Array(dev.buffer, dev.byteOffset, 1);
    this.deviceEventShadow = -1;
  }
}

/**
 * A packed indirect table is the whole chain: every entry is a buffer in order. Only WRITE is
 * meaningful in an entry (NEXT and the id are reserved and ignored); a nested table is a driver
 * error. `slot` is the ring descriptor that pointed at the table (messages only).
 */
function walkIndirect(memory: GuestMemory, chain: PackedDescriptorChain, table: DataView, slot: number, fail: Fail): void {
  const entries = table.byteLength / DESC_SIZE;
  for (let k = 0; k < entries; k++) {
    const o = k * DESC_SIZE;
    const flags = table.getUint16(o + 14, true);
    if (flags & VIRTQ_DESC_F_INDIRECT) fail(`indirect descriptor inside an indirect table (entry ${k})`);
    appendBuffer(memory, chain, table.getUint32(o, true), table.getUint32(o + 4, true), table.getUint32(o + 8, true), (flags & VIRTQ_DESC_F_WRITE) !== 0, slot, k, fail);
  }
}
