// Driver (guest) side of a packed virtqueue, for our own front-end driver (host/frontend) and tests.
// It owns the descriptor ring, both event suppression structures and optional per-buffer-id
// indirect tables inside memory it is given as a Uint8Array whose first byte is at guest
// address `gpa`. It trusts nothing the device writes back.

import {
  DESC_SIZE,
  EVENT_SUPPRESS_BYTES,
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
  positionToOffWrap,
} from '../../virtqueue/layout.ts';
import { align, ringMemory, writeDescriptor, type DriverBuffer, type DriverRingOptions, type UsedElem } from './common.ts';

export interface PackedDriverLayout {
  descOffset: number;
  /** Driver event suppression area (we write it): SET_VRING_ADDR's "avail" address. */
  driverEventOffset: number;
  /** Device event suppression area (the device writes it): SET_VRING_ADDR's "used" address. */
  deviceEventOffset: number;
  /** Per-buffer-id indirect tables of `indirectEntries` entries, id i at indirectOffset + i * indirectEntries * 16. */
  indirectOffset: number;
  bytes: number;
}

/** `size`: 1..32768, any integer. */
export type PackedDriverOptions = DriverRingOptions;

export class PackedDriverRing {
  readonly size: number;
  readonly eventIdx: boolean;
  readonly indirectEntries: number;
  readonly layout: PackedDriverLayout;
  readonly gpa: number;
  private readonly span: number;
  private readonly dv: DataView;
  private readonly ring16: Uint16Array;
  private readonly driverEvent: Uint32Array;
  private readonly deviceEvent: Uint32Array;
  private readonly freeIds: number[] = [];
  /** Ring slots each in-flight buffer id occupies; undefined when not in flight. */
  private readonly descCount: (number | undefined)[];
  private numFreeDescs: number;
  private availPos = 0;
  private usedPos = 0;
  private kickedPos = 0;
  private addedSinceKick = 0;
  /** 'next': interrupt for every used descriptor (getUsed re-arms); 'at': one fixed event; 'off'. */
  private interrupts: 'next' | 'at' | 'off' = 'next';
  private inflight = 0;

  static layoutFor(size: number, indirectEntries = 0): PackedDriverLayout {
    const descOffset = 0;
    const driverEventOffset = size * DESC_SIZE;
    const deviceEventOffset = driverEventOffset + EVENT_SUPPRESS_BYTES;
    const indirectOffset = align(deviceEventOffset + EVENT_SUPPRESS_BYTES, 16);
    return { descOffset, driverEventOffset, deviceEventOffset, indirectOffset, bytes: indirectOffset + size * indirectEntries * DESC_SIZE };
  }

  constructor(opts: PackedDriverOptions) {
    if (!isValidPackedQueueSize(opts.size)) throw new RangeError(`packed driver ring: size ${opts.size} is not an integer in [1, 32768]`);
    this.size = opts.size;
    this.span = 2 * opts.size;
    this.eventIdx = opts.eventIdx;
    this.indirectEntries = opts.indirectEntries ?? 0;
    this.layout = PackedDriverRing.layoutFor(opts.size, this.indirectEntries);
    this.dv = ringMemory('packed driver ring', opts, this.layout.bytes);
    this.gpa = opts.gpa;
    const { buffer, byteOffset } = opts.memory;
    this.ring16 = new Uint16Array(buffer, byteOffset, 8 * this.size);
    this.driverEvent = new Uint32Array(buffer, byteOffset + this.layout.driverEventOffset, 1);
    this.deviceEvent = new Uint32Array(buffer, byteOffset + this.layout.deviceEventOffset, 1);
    for (let i = this.size - 1; i >= 0; i--) this.freeIds.push(i);
    this.descCount = new Array(this.size);
    this.numFreeDescs = this.size;
  }

  get descGpa(): number {
    return this.gpa + this.layout.descOffset;
  }
  get driverEventGpa(): number {
    return this.gpa + this.layout.driverEventOffset;
  }
  get deviceEventGpa(): number {
    return this.gpa + this.layout.deviceEventOffset;
  }
  get numFree(): number {
    return this.numFreeDescs;
  }
  get inFlight(): number {
    return this.inflight;
  }
  /** Next ring slot we fill, and our (driver) wrap counter. */
  get availIndex(): number {
    return this.availPos < this.size ? this.availPos : this.availPos - this.size;
  }
  get availWrapCounter(): boolean {
    return this.availPos < this.size;
  }
  /** Next ring slot we expect a used descriptor at, and the wrap counter it must carry. */
  get usedIndex(): number {
    return this.usedPos < this.size ? this.usedPos : this.usedPos - this.size;
  }
  get usedWrapCounter(): boolean {
    return this.usedPos < this.size;
  }

  /**
   * Queues one request: `readable` buffers then `writable` ones, as consecutive ring descriptors
   * or one indirect descriptor. Returns its buffer id, or null when there is no room.
   */
  add(readable: DriverBuffer[], writable: DriverBuffer[], opts: { indirect?: boolean } = {}): number | null {
    const n = readable.length + writable.length;
    if (n === 0) throw new RangeError('packed driver ring: a request needs at least one buffer');
    const slots = opts.indirect ? 1 : n;
    if (opts.indirect && n > this.indirectEntries) throw new RangeError(`packed driver ring: ${n} buffers exceed ${this.indirectEntries} indirect entries`);
    if (slots > this.numFreeDescs || this.freeIds.length === 0) return null;
    const id = this.freeIds.pop()!;
    const bufs = [...readable.map((b) => [b, 0] as const), ...writable.map((b) => [b, VIRTQ_DESC_F_WRITE] as const)];
    const start = this.availPos;
    if (opts.indirect) {
      const tableOff = this.layout.indirectOffset + id * this.indirectEntries * DESC_SIZE;
      bufs.forEach(([b, f], i) => writeDescriptor(this.dv, tableOff + i * DESC_SIZE, b.gpa, b.len, 0, f));
      this.publish(start, this.gpa + tableOff, n * DESC_SIZE, id, VIRTQ_DESC_F_INDIRECT);
    } else {
      // Every descriptor but the head first; the head's flags last make the whole chain available.
      for (let i = n - 1; i >= 0; i--) {
        const [b, f] = bufs[i];
        this.publish(this.advance(start, i), b.gpa, b.len, id, f | (i + 1 < n ? VIRTQ_DESC_F_NEXT : 0));
      }
    }
    this.availPos = this.advance(start, slots);
    this.addedSinceKick += slots;
    this.descCount[id] = slots;
    this.numFreeDescs -= slots;
    this.inflight++;
    return id;
  }

  private advance(pos: number, n: number): number {
    const p = pos + n;
    return p >= this.span ? p - this.span : p;
  }

  /** Writes ring descriptor at `pos`, its AVAIL/USED bits set for that position's lap; flags last (release). */
  private publish(pos: number, gpa: number, len: number, id: number, flags: number): void {
    const wrap = pos < this.size;
    const slot = wrap ? pos : pos - this.size;
    const off = this.layout.descOffset + slot * DESC_SIZE;
    writeDescriptor(this.dv, off, gpa, len, id, 0);
    Atomics.store(this.ring16, 8 * slot + 7, flags | (wrap ? VIRTQ_DESC_F_AVAIL : VIRTQ_DESC_F_USED));
  }

  /** Whether the device wants a kick for what was added since the last call. */
  kickNeeded(): boolean {
    const now = this.availPos;
    const old = this.kickedPos;
    const added = this.addedSinceKick;
    this.kickedPos = now;
    this.addedSinceKick = 0;
    if (added === 0) return false;
    const ev = Atomics.load(this.deviceEvent, 0);
    const flags = ev >>> 16;
    if (flags === RING_EVENT_FLAGS_DISABLE) return false;
    if (!this.eventIdx || flags !== RING_EVENT_FLAGS_DESC || added >= this.span) return true;
    return packedNeedEvent(ev & 0xffff, now, old, this.size);
  }

  private usedReady(): boolean {
    const wrap = this.usedPos < this.size;
    const slot = wrap ? this.usedPos : this.usedPos - this.size;
    const f = Atomics.load(this.ring16, 8 * slot + 7);
    const a = (f & VIRTQ_DESC_F_AVAIL) !== 0;
    const u = (f & VIRTQ_DESC_F_USED) !== 0;
    return a === u && u === wrap;
  }

  /**
   * Reaps completed requests in the order the device returned them. With interrupts enabled
   * and EVENT_IDX, then asks for an interrupt at the next used slot. Throws if the device
   * returned an id that is not in flight.
   */
  getUsed(): UsedElem[] {
    const out: UsedElem[] = [];
    while (this.usedReady()) {
      const slot = this.usedPos < this.size ? this.usedPos : this.usedPos - this.size;
      const off = this.layout.descOffset + slot * DESC_SIZE;
      const id = this.dv.getUint16(off + 12, true);
      // len is reserved unless the device set WRITE (it wrote something).
      const len = this.dv.getUint16(off + 14, true) & VIRTQ_DESC_F_WRITE ? this.dv.getUint32(off + 8, true) : 0;
      const n = id < this.size ? this.descCount[id] : undefined;
      if (n === undefined) throw new Error(`packed driver ring: device returned buffer id ${id} at slot ${slot}, which is not in flight`);
      this.descCount[id] = undefined;
      this.freeIds.push(id);
      this.numFreeDescs += n;
      this.inflight--;
      this.usedPos = this.advance(this.usedPos, n);
      out.push({ head: id, len });
    }
    if (this.interrupts === 'next' && this.eventIdx && out.length > 0) this.storeDriverEvent(RING_EVENT_FLAGS_DESC, this.usedPos);
    return out;
  }

  private storeDriverEvent(flags: number, pos: number): void {
    Atomics.store(this.driverEvent, 0, positionToOffWrap(pos, this.size) | (flags << 16));
  }

  /** Re-enable used-buffer notifications; true if used descriptors are already waiting (reap them). */
  enableInterrupts(): boolean {
    this.interrupts = 'next';
    this.storeDriverEvent(this.eventIdx ? RING_EVENT_FLAGS_DESC : RING_EVENT_FLAGS_ENABLE, this.usedPos);
    return this.usedReady();
  }

  /**
   * EVENT_IDX only: ask for one interrupt once the device has written used descriptors `ahead`
   * slots past the next one we expect (Linux's delayed callbacks). getUsed leaves this event in place
   * (enableInterrupts returns to one interrupt per used descriptor).
   */
  enableInterruptsAt(ahead: number): boolean {
    if (!this.eventIdx) throw new Error('packed driver ring: descriptor-specific events need EVENT_IDX');
    if (!Number.isInteger(ahead) || ahead < 0 || ahead >= this.size) throw new RangeError(`packed driver ring: event offset ${ahead} outside the ring`);
    this.interrupts = 'at';
    this.storeDriverEvent(RING_EVENT_FLAGS_DESC, this.advance(this.usedPos, ahead));
    return this.usedReady();
  }

  /** Suppress used-buffer notifications (a hint the device may ignore). */
  disableInterrupts(): void {
    this.interrupts = 'off';
    this.storeDriverEvent(RING_EVENT_FLAGS_DISABLE, this.usedPos);
  }
}
