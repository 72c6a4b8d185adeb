// Driver (guest) side of a split virtqueue, for our own front-end driver (host/frontend) and tests.
// It owns the layout of desc/avail/used (and optional indirect tables) inside memory it is
// given as a Uint8Array whose first byte is at guest address `gpa`; it knows nothing about how
// the device maps that memory. It trusts nothing the device writes back either.

import {
  DESC_SIZE,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
  VRING_AVAIL_F_NO_INTERRUPT,
  VRING_USED_F_NO_NOTIFY,
  availBytes,
  descTableBytes,
  isValidQueueSize,
  usedBytes,
  vringNeedEvent,
} from '../../virtqueue/layout.ts';
import { align, ringMemory, writeDescriptor, type DriverBuffer, type DriverRingOptions, type UsedElem } from './common.ts';

export interface SplitDriverLayout {
  descOffset: number;
  availOffset: number;
  usedOffset: number;
  /** Per-head indirect tables of `indirectEntries` entries each, head h at indirectOffset + h * indirectEntries * 16. */
  indirectOffset: number;
  /** Total bytes the ring memory must have. */
  bytes: number;
}

export interface SplitDriverOptions extends DriverRingOptions {
  /**
   * Ring index to start at (default 0): avail idx, used idx and used_event all begin here, as
   * on a ring that already carried this many requests (the device must be given the same base
   * with SET_VRING_BASE). Lets tests run a ring across the 16-bit wrap or resume a migrated one.
   */
  startIndex?: number;
}

export class SplitDriverRing {
  readonly size: number;
  readonly eventIdx: boolean;
  readonly indirectEntries: number;
  readonly layout: SplitDriverLayout;
  readonly gpa: number;
  private readonly dv: DataView;
  /** [0] flags, [1] idx, [2 + i] ring, [2 + size] used_event */
  private readonly avail: Uint16Array;
  /** [0] flags, [1] idx */
  private readonly usedHdr: Uint16Array;
  private readonly usedRing: Uint32Array;
  private readonly availEvent: Uint16Array;
  private readonly free: number[] = [];
  /** Descriptors each in-flight head holds (to free them), undefined when not in flight. */
  private readonly chains: (number[] | undefined)[];
  private availIdx = 0;
  private kickedAvail = 0;
  private lastUsed = 0;
  private interruptsOn = true;
  private inflight = 0;

  static layoutFor(size: number, indirectEntries = 0): SplitDriverLayout {
    const descOffset = 0;
    const availOffset = descTableBytes(size);
    const usedOffset = align(availOffset + availBytes(size), 4);
    const indirectOffset = align(usedOffset + usedBytes(size), 16);
    return { descOffset, availOffset, usedOffset, indirectOffset, bytes: indirectOffset + size * indirectEntries * DESC_SIZE };
  }

  constructor(opts: SplitDriverOptions) {
    if (!isValidQueueSize(opts.size)) throw new RangeError(`driver ring: size ${opts.size} is not a power of two in [1, 32768]`);
    this.size = opts.size;
    this.eventIdx = opts.eventIdx;
    this.indirectEntries = opts.indirectEntries ?? 0;
    this.layout = SplitDriverRing.layoutFor(opts.size, this.indirectEntries);
    this.dv = ringMemory('driver ring', opts, this.layout.bytes);
    this.gpa = opts.gpa;
    const { buffer, byteOffset } = opts.memory;
    this.avail = new Uint16Array(buffer, byteOffset + this.layout.availOffset, 3 + this.size);
    this.usedHdr = new Uint16Array(buffer, byteOffset + this.layout.usedOffset, 2);
    this.usedRing = new Uint32Array(buffer, byteOffset + this.layout.usedOffset + 4, 2 * this.size);
    this.availEvent = new Uint16Array(buffer, byteOffset + this.layout.usedOffset + 4 + 8 * this.size, 1);
    const start = opts.startIndex ?? 0;
    if (!Number.isInteger(start) || start < 0 || start > 0xffff) throw new RangeError(`driver ring: start index ${start} is not a u16`);
    if (start !== 0) {
      this.availIdx = this.kickedAvail = this.lastUsed = start;
      this.avail[1] = start;
      this.usedHdr[1] = start;
      if (this.eventIdx) this.avail[2 + this.size] = start;
    }
    for (let i = this.size - 1; i >= 0; i--) this.free.push(i);
    this.chains = new Array(this.size);
  }

  get descGpa(): number {
    return this.gpa + this.layout.descOffset;
  }
  get availGpa(): number {
    return this.gpa + this.layout.availOffset;
  }
  get usedGpa(): number {
    return this.gpa + this.layout.usedOffset;
  }
  get numFree(): number {
    return this.free.length;
  }
  get inFlight(): number {
    return this.inflight;
  }
  /** The avail idx published so far (the device's next avail once it drained everything). */
  get availIndex(): number {
    return this.availIdx;
  }

  /**
   * Queues one request: `readable` buffers (device reads) then `writable` ones. Returns its head,
   * or null when there are not enough free descriptors (or indirect slots) for it.
   */
  add(readable: DriverBuffer[], writable: DriverBuffer[], opts: { indirect?: boolean } = {}): number | null {
    const n = readable.length + writable.length;
    if (n === 0) throw new RangeError('driver ring: a request needs at least one buffer');
    let head: number;
    if (opts.indirect) {
      if (n > this.indirectEntries) throw new RangeError(`driver ring: ${n} buffers exceed ${this.indirectEntries} indirect entries`);
      const d = this.free.pop();
      if (d === undefined) return null;
      head = d;
      const tableOff = this.layout.indirectOffset + head * this.indirectEntries * DESC_SIZE;
      let i = 0;
      for (const b of readable) this.writeDesc(tableOff + i * DESC_SIZE, b, 0, i + 1, ++i < n);
      for (const b of writable) this.writeDesc(tableOff + i * DESC_SIZE, b, VIRTQ_DESC_F_WRITE, i + 1, ++i < n);
      this.writeDesc(this.layout.descOffset + head * DESC_SIZE, { gpa: this.gpa + tableOff, len: n * DESC_SIZE }, VIRTQ_DESC_F_INDIRECT, 0, false);
      this.chains[head] = [head];
    } else {
      if (n > this.free.length) return null;
      const ids: number[] = [];
      for (let i = 0; i < n; i++) ids.push(this.free.pop()!);
      let i = 0;
      for (const b of readable) {
        this.writeDesc(this.layout.descOffset + ids[i] * DESC_SIZE, b, 0, ids[i + 1] ?? 0, i + 1 < n);
        i++;
      }
      for (const b of writable) {
        this.writeDesc(this.layout.descOffset + ids[i] * DESC_SIZE, b, VIRTQ_DESC_F_WRITE, ids[i + 1] ?? 0, i + 1 < n);
        i++;
      }
      head = ids[0];
      this.chains[head] = ids;
    }
    this.avail[2 + (this.availIdx & (this.size - 1))] = head;
    this.availIdx = (this.availIdx + 1) & 0xffff;
    // Descriptors and the ring slot before the idx that publishes them (seq-cst store; also
    // the store->load fence kickNeeded needs before it reads avail_event / used flags).
    Atomics.store(this.avail, 1, this.availIdx);
    this.inflight++;
    return head;
  }

  private writeDesc(off: number, b: DriverBuffer, flags: number, next: number, hasNext: boolean): void {
    writeDescriptor(this.dv, off, b.gpa, b.len, flags | (hasNext ? VIRTQ_DESC_F_NEXT : 0), hasNext ? next : 0);
  }

  /**
   * The device has taken everything published and asked to be kicked for the next entry
   * (avail_event at the avail index, or notifications re-enabled): it is idle, so requests
   * added now reach it together, in one batch, at the next kick. Tests that need two requests
   * in one device batch wait for this first.
   */
  deviceIdle(): boolean {
    if (this.eventIdx) return Atomics.load(this.availEvent, 0) === this.availIdx;
    return (Atomics.load(this.usedHdr, 0) & VRING_USED_F_NO_NOTIFY) === 0;
  }

  /** Whether the device wants a kick for what was added since the last call. */
  kickNeeded(): boolean {
    const now = this.availIdx;
    const old = this.kickedAvail;
    this.kickedAvail = now;
    if (now === old) return false;
    if (this.eventIdx) return vringNeedEvent(Atomics.load(this.availEvent, 0), now, old);
    return (Atomics.load(this.usedHdr, 0) & VRING_USED_F_NO_NOTIFY) === 0;
  }

  /**
   * Reaps completed requests. With interrupts enabled and EVENT_IDX, then asks for an interrupt
   * at the next used entry (used_event = last seen used idx). Throws if the device published
   * garbage (a head not in flight, more entries than in flight).
   */
  getUsed(): UsedElem[] {
    const idx = Atomics.load(this.usedHdr, 1);
    const n = (idx - this.lastUsed) & 0xffff;
    if (n > this.inflight) throw new Error(`driver ring: device used idx ${idx} is ${n} ahead of ${this.lastUsed}, only ${this.inflight} in flight`);
    const out: UsedElem[] = [];
    for (let k = 0; k < n; k++) {
      const slot = this.lastUsed & (this.size - 1);
      const head = this.usedRing[2 * slot];
      const len = this.usedRing[2 * slot + 1];
      const ids = head < this.size ? this.chains[head] : undefined;
      if (ids === undefined) throw new Error(`driver ring: device returned head ${head}, which is not in flight`);
      this.chains[head] = undefined;
      for (const d of ids) this.free.push(d);
      this.inflight--;
      this.lastUsed = (this.lastUsed + 1) & 0xffff;
      out.push({ head, len });
    }
    if (this.interruptsOn && this.eventIdx) Atomics.store(this.avail, 2 + this.size, this.lastUsed);
    return out;
  }

  /** Re-enable used-buffer notifications; true if entries are already waiting (reap them). */
  enableInterrupts(): boolean {
    this.interruptsOn = true;
    if (this.eventIdx) Atomics.store(this.avail, 2 + this.size, this.lastUsed);
    else Atomics.store(this.avail, 0, this.avail[0] & ~VRING_AVAIL_F_NO_INTERRUPT);
    return Atomics.load(this.usedHdr, 1) !== this.lastUsed;
  }

  /** Suppress used-buffer notifications (a hint the device may ignore). */
  disableInterrupts(): void {
    this.interruptsOn = false;
    // EVENT_IDX: park used_event half the index space away, as Linux does.
    if (this.eventIdx) Atomics.store(this.avail, 2 + this.size, (this.lastUsed + 0x8000) & 0xffff);
    else Atomics.store(this.avail, 0, this.avail[0] | VRING_AVAIL_F_NO_INTERRUPT);
  }
}
