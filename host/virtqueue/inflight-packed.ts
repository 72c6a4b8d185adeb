// The inflight area's region for a packed ring (docs/interop/vhost-user.rst, "Inflight I/O
// tracking", QueueRegionPacked). A packed ring has no descriptor table the driver leaves alone
// while a buffer is in flight: the slots of an out-of-order request may already carry used
// descriptors or the driver's next lap. So the region keeps a copy of every descriptor popped,
// in a pool of desc_num entries linked into a free list; a request in flight is its head
// entry (inflight = 1, counter, num, last) and the entries that follow it through `next`.
//
// Layout, little-endian. Header (32 bytes; desc[] is 8-byte aligned):
//   0 u64 features (0)   8 u16 version   10 u16 desc_num   12 u16 free_head   14 u16 old_free_head
//   16 u16 used_idx   18 u16 old_used_idx   20 u8 used_wrap_counter   21 u8 old_used_wrap_counter
// Each desc (DescStatePacked, 32 bytes):
//   0 u8 inflight   2 u16 next   4 u16 last   6 u16 num   8 u64 counter
//   16 u16 id   18 u16 flags   20 u32 len   24 u64 addr
// The free list ends at an index equal to desc_num (a fresh region links entry i to i + 1).
//
// Write order, so that a back-end killed between any two stores leaves a region the next one
// can read (the "old_" fields are the last consistent state, the others the one being built):
//   pop:  each descriptor is copied into the entry at free_head and free_head follows `next`;
//         then the head entry's num, last and counter, then inflight = 1, then old_free_head.
//   push: desc[e.last].next = free_head, free_head = e, used_idx/used_wrap_counter advanced by
//         e.num; (the queue writes the used descriptor's flags); then inflight = 0, then the
//         old_ fields are set to the new ones.
// Recovery (spec, "When reconnecting"): an interrupted push whose used descriptor was already
// published is committed, anything else in progress is rolled back to the old_ fields, the
// free list's entries are unmarked, and the heads still marked are resubmitted by counter.

import {
  INFLIGHT_DESC_NUM_OFFSET,
  INFLIGHT_VERSION,
  INFLIGHT_VERSION_OFFSET,
  InflightAreaError,
  formatInflightArea,
  inflightRegionBytes,
} from './inflight.ts';
import { VIRTQ_DESC_F_AVAIL, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_USED } from './layout.ts';

const HEADER_BYTES = 32;
const DESC_BYTES = 32;

const OFF_FEATURES = 0;
const OFF_VERSION = INFLIGHT_VERSION_OFFSET;
const OFF_DESC_NUM = INFLIGHT_DESC_NUM_OFFSET;
const OFF_FREE_HEAD = 12;
const OFF_OLD_FREE_HEAD = 14;
const OFF_USED_IDX = 16;
const OFF_OLD_USED_IDX = 18;
const OFF_USED_WRAP = 20;
const OFF_OLD_USED_WRAP = 21;

const D_INFLIGHT = 0;
const D_NEXT = 2;
const D_LAST = 4;
const D_NUM = 6;
const D_COUNTER = 8;
const D_ID = 16;
const D_FLAGS = 18;
const D_LEN = 20;
const D_ADDR = 24;

/** Bytes of one packed queue's region for a ring of `queueSize` descriptors. */
export function packedInflightRegionBytes(queueSize: number): number {
  return inflightRegionBytes(HEADER_BYTES, DESC_BYTES, queueSize);
}

/** GET_INFLIGHT_FD's mmap size for packed rings: one region per queue, back to back. */
export function packedInflightAreaBytes(numQueues: number, queueSize: number): number {
  return numQueues * packedInflightRegionBytes(queueSize);
}

/**
 * Fills the headers of a fresh (zeroed) area as GET_INFLIGHT_FD hands it out: desc_num set,
 * version still 0 (the back-end that first runs the ring links the free list).
 */
export function formatPackedInflightArea(area: Uint8Array, numQueues: number, queueSize: number): void {
  formatInflightArea(area, numQueues, packedInflightRegionBytes(queueSize), queueSize);
}

/** A descriptor as it was in the ring when popped (what a resubmission rebuilds its chain from). */
export interface RecordedDescriptor {
  /** The guest address as its two u32 halves (as the ring walkers take them). */
  addrLo: number;
  addrHi: number;
  len: number;
  flags: number;
}

/** One request to resubmit: its buffer id and its ring descriptors, in chain order. */
export interface PackedInflightRequest {
  id: number;
  descriptors: RecordedDescriptor[];
}

export interface PackedInflightRecovery {
  /** In the order they were popped (counter order). */
  requests: PackedInflightRequest[];
  /** Where the device writes its next used descriptor (null: fresh region, keep SET_VRING_BASE's). */
  usedIdx: number | null;
  usedWrap: boolean;
  /** Ring slots the resubmitted requests occupy: the avail index is that far past the used one. */
  ownedSlots: number;
  /** An interrupted push whose used descriptor had been published was completed (not run again). */
  committedPush: boolean;
  /** An interrupted pop or push was rolled back. */
  rolledBack: boolean;
}

/** One packed queue's region, as the queue reads and writes it. */
export class PackedInflightRegion {
  private readonly dv: DataView;
  private readonly bytes: Uint8Array;
  /** The next counter value: above every counter in the region once recovered. */
  private counter = 1;
  /** Head entry of each buffer id in flight (-1: none). */
  private readonly entryOf: Int32Array;
  /** The head entry of the chain being staged by stage(), until popped() commits it. */
  private stagedHead = -1;
  /** The ring's size (at most the region's entries), set by recover(): slots and the used index wrap at it. */
  private ringSize: number;

  /** `region`: exactly this queue's bytes (packedInflightRegionBytes(size) of them). */
  constructor(
    region: Uint8Array,
    readonly size: number,
    readonly queue: number,
  ) {
    if (region.byteLength < packedInflightRegionBytes(size)) {
      throw new InflightAreaError(`queue ${queue}: packed inflight region is ${region.byteLength} bytes, a ring of ${size} needs ${packedInflightRegionBytes(size)}`);
    }
    this.bytes = region;
    this.dv = new DataView(region.buffer, region.byteOffset, region.byteLength);
    this.entryOf = new Int32Array(size).fill(-1);
    this.ringSize = size;
  }

  private u16(off: number): number {
    return this.dv.getUint16(off, true);
  }
  private setU16(off: number, v: number): void {
    this.dv.setUint16(off, v, true);
  }
  private d(e: number): number {
    return HEADER_BYTES + DESC_BYTES * e;
  }

  get version(): number {
    return this.u16(OFF_VERSION);
  }
  get descNum(): number {
    return this.u16(OFF_DESC_NUM);
  }
  get freeHead(): number {
    return this.u16(OFF_FREE_HEAD);
  }
  get usedIdx(): number {
    return this.u16(OFF_USED_IDX);
  }
  get usedWrap(): boolean {
    return this.bytes[OFF_USED_WRAP] !== 0;
  }
  /** Buffer ids whose head entries are marked in flight (tests, diagnostics). */
  inflightIds(): number[] {
    const out: number[] = [];
    for (let e = 0; e < this.size; e++) if (this.bytes[this.d(e) + D_INFLIGHT] === 1) out.push(this.u16(this.d(e) + D_ID));
    return out.sort((a, b) => a - b);
  }
  private counterOf(e: number): number {
    const o = this.d(e) + D_COUNTER;
    return this.dv.getUint32(o, true) + this.dv.getUint32(o + 4, true) * 2 ** 32;
  }

  /**
   * Field checks that need no ring: throws InflightAreaError when the region cannot be
   * trusted. A version-0 region is a fresh one (initialised by recover()) whatever it holds.
   */
  check(): void {
    const q = `queue ${this.queue}`;
    const version = this.version;
    if (version === 0) return;
    if (version !== INFLIGHT_VERSION) {
      throw new InflightAreaError(`${q}: packed inflight region version is ${version}, this back-end reads version ${INFLIGHT_VERSION} (or 0 for a fresh region)`);
    }
    const features = this.dv.getBigUint64(OFF_FEATURES, true);
    if (features !== 0n) throw new InflightAreaError(`${q}: packed inflight region has feature flags 0x${features.toString(16)}; none are defined`);
    if (this.descNum !== this.size) throw new InflightAreaError(`${q}: packed inflight region tracks ${this.descNum} descriptors but the ring has ${this.size}`);
    for (const [name, off] of [['free_head', OFF_FREE_HEAD], ['old_free_head', OFF_OLD_FREE_HEAD]] as const) {
      if (this.u16(off) > this.size) throw new InflightAreaError(`${q}: packed inflight region's ${name} ${this.u16(off)} is beyond the ${this.size} entries`);
    }
    for (const [name, off] of [['used_idx', OFF_USED_IDX], ['old_used_idx', OFF_OLD_USED_IDX]] as const) {
      if (this.u16(off) >= this.size) throw new InflightAreaError(`${q}: packed inflight region's ${name} ${this.u16(off)} is not below the ring size ${this.size}`);
    }
    for (const [name, off] of [['used_wrap_counter', OFF_USED_WRAP], ['old_used_wrap_counter', OFF_OLD_USED_WRAP]] as const) {
      if (this.bytes[off] > 1) throw new InflightAreaError(`${q}: packed inflight region's ${name} is ${this.bytes[off]}, not 0 or 1`);
    }
    for (let e = 0; e < this.size; e++) {
      const o = this.d(e);
      const f = this.bytes[o + D_INFLIGHT];
      if (f > 1) throw new InflightAreaError(`${q}: inflight flag of entry ${e} is ${f}, not 0 or 1`);
      if (this.u16(o + D_NEXT) > this.size) throw new InflightAreaError(`${q}: entry ${e}'s next ${this.u16(o + D_NEXT)} is beyond the ${this.size} entries`);
    }
  }

  /**
   * At ring start. `slotFlags(slot)` reads a descriptor's flags in the ring (to see whether an
   * interrupted push had published its used descriptor); `ringUsedIdx`/`ringUsedWrap` are the
   * front-end's idea of the used index, taken for a fresh region. Throws InflightAreaError,
   * changing nothing, when the region's lists are inconsistent.
   */
  recover(slotFlags: (slot: number) => number, ringUsedIdx: number, ringUsedWrap: boolean, ringSize: number = this.size): PackedInflightRecovery {
    this.check();
    const q = `queue ${this.queue}`;
    const size = this.size;
    if (ringSize > size) throw new InflightAreaError(`${q}: the packed inflight region has ${size} entries, the ring has ${ringSize} descriptors`);
    if (this.version === 0) {
      // Fresh: every entry free, linked in order; the used index is the ring's.
      this.bytes.fill(0, HEADER_BYTES, HEADER_BYTES + DESC_BYTES * size);
      for (let e = 0; e < size; e++) this.setU16(this.d(e) + D_NEXT, e + 1);
      this.dv.setBigUint64(OFF_FEATURES, 0n, true);
      this.setU16(OFF_DESC_NUM, size);
      this.setU16(OFF_FREE_HEAD, 0);
      this.setU16(OFF_OLD_FREE_HEAD, 0);
      this.setU16(OFF_USED_IDX, ringUsedIdx);
      this.setU16(OFF_OLD_USED_IDX, ringUsedIdx);
      this.bytes[OFF_USED_WRAP] = ringUsedWrap ? 1 : 0;
      this.bytes[OFF_OLD_USED_WRAP] = ringUsedWrap ? 1 : 0;
      this.setU16(OFF_VERSION, INFLIGHT_VERSION);
      this.counter = 1;
      this.entryOf.fill(-1);
      this.ringSize = ringSize;
      return { requests: [], usedIdx: null, usedWrap: ringUsedWrap, ownedSlots: 0, committedPush: false, rolledBack: false };
    }

    // 1. An interrupted push: committed if its used descriptor reached the ring, else rolled back.
    let freeHead = this.u16(OFF_OLD_FREE_HEAD);
    let usedIdx = this.u16(OFF_OLD_USED_IDX);
    let usedWrap = this.bytes[OFF_OLD_USED_WRAP] === 1;
    let committedPush = false;
    const newUsed = this.u16(OFF_USED_IDX);
    const newWrap = this.bytes[OFF_USED_WRAP] === 1;
    for (const [name, v] of [['old_used_idx', usedIdx], ['used_idx', newUsed]] as const) {
      if (v >= ringSize) throw new InflightAreaError(`${q}: the packed inflight region's ${name} ${v} is not below the ring size ${ringSize}`);
    }
    if (newUsed !== usedIdx || newWrap !== usedWrap) {
      // Still the driver's available descriptor (AVAIL = wrap, USED = !wrap)? Then the push
      // never published it; anything else there means it did.
      const avail = usedWrap ? VIRTQ_DESC_F_AVAIL : VIRTQ_DESC_F_USED;
      if ((slotFlags(usedIdx) & (VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED)) !== avail) {
        freeHead = this.u16(OFF_FREE_HEAD);
        usedIdx = newUsed;
        usedWrap = newWrap;
        committedPush = true;
      }
    }
    const rolledBack = !committedPush && (freeHead !== this.u16(OFF_FREE_HEAD) || usedIdx !== newUsed || usedWrap !== newWrap);

    // 2. The free list, from the (rolled back or committed) free_head.
    const owner = new Int32Array(size).fill(-1); // -2: free; else the head entry owning it
    let free = 0;
    for (let e = freeHead; e !== size; e = this.u16(this.d(e) + D_NEXT)) {
      if (owner[e] !== -1) throw new InflightAreaError(`${q}: the packed inflight region's free list runs into entry ${e} twice (a loop)`);
      owner[e] = -2;
      free++;
    }

    // 3. Heads still marked and not free: each a chain of `num` entries ending at `last`.
    const heads: number[] = [];
    const requests = new Map<number, PackedInflightRequest>();
    const ids = new Set<number>();
    let owned = 0;
    for (let h = 0; h < size; h++) {
      const ho = this.d(h);
      if (this.bytes[ho + D_INFLIGHT] !== 1 || owner[h] === -2) continue;
      const num = this.u16(ho + D_NUM);
      const last = this.u16(ho + D_LAST);
      const id = this.u16(ho + D_ID);
      if (num < 1 || num > ringSize) throw new InflightAreaError(`${q}: in-flight entry ${h} claims ${num} descriptors (ring of ${ringSize})`);
      if (ids.has(id) || id >= ringSize) {
        throw new InflightAreaError(`${q}: in-flight entry ${h}'s buffer id ${id} is ${id >= ringSize ? `not below the ring size ${ringSize}` : 'in flight twice'}`);
      }
      ids.add(id);
      const descriptors: RecordedDescriptor[] = [];
      let e = h;
      for (let k = 0; k < num; k++) {
        if (e >= size) throw new InflightAreaError(`${q}: in-flight entry ${h}'s chain leaves the ${size} entries after ${k} of its ${num} descriptors`);
        if (owner[e] !== -1) {
          throw new InflightAreaError(`${q}: in-flight entry ${h}'s chain runs into entry ${e}, which ${owner[e] === -2 ? 'is free' : `belongs to entry ${owner[e]}`}`);
        }
        owner[e] = h;
        const o = this.d(e);
        const flags = this.u16(o + D_FLAGS);
        const lastOne = k === num - 1;
        if (((flags & VIRTQ_DESC_F_NEXT) !== 0) === lastOne) {
          throw new InflightAreaError(`${q}: in-flight entry ${h}'s descriptor ${k} of ${num} ${lastOne ? 'has' : 'lacks'} NEXT (flags 0x${flags.toString(16)})`);
        }
        if ((flags & VIRTQ_DESC_F_INDIRECT) !== 0 && num !== 1) throw new InflightAreaError(`${q}: in-flight entry ${h} has an INDIRECT descriptor inside a chain of ${num}`);
        descriptors.push({ addrLo: this.dv.getUint32(o + D_ADDR, true), addrHi: this.dv.getUint32(o + D_ADDR + 4, true), len: this.dv.getUint32(o + D_LEN, true), flags });
        if (lastOne && e !== last) throw new InflightAreaError(`${q}: in-flight entry ${h}'s chain ends at entry ${e}, but its last says ${last}`);
        if (!lastOne) e = this.u16(o + D_NEXT);
      }
      owned += num;
      heads.push(h);
      requests.set(h, { id, descriptors });
    }
    if (owned > ringSize) throw new InflightAreaError(`${q}: the packed inflight region holds ${owned} descriptors in flight, more than the ring's ${ringSize}`);
    if (owned + free !== size) {
      // Every entry is free or part of a request in flight: a pop takes its entries from the free
      // list and a push puts them back, and recovery's roll-back keeps that. An entry that is
      // neither is lost (the free list would run dry) or counted twice.
      throw new InflightAreaError(`${q}: the packed inflight region holds ${owned} descriptors in flight and ${free} free entries, not its ${size}`);
    }
    if (owned > 0) {
      // The slots from the used index on that are in flight still hold the driver's available
      // descriptors (the device writes used ones only at the used index): if the first does
      // not, the region's used index is not where the dead back-end stopped.
      const f = slotFlags(usedIdx);
      if (((f & VIRTQ_DESC_F_AVAIL) !== 0) !== usedWrap || ((f & VIRTQ_DESC_F_USED) !== 0) === usedWrap) {
        throw new InflightAreaError(
          `${q}: the packed inflight region has ${owned} descriptor(s) in flight from used index ${usedIdx} (wrap ${+usedWrap}), but the ring's descriptor there is not available (flags 0x${f.toString(16)})`,
        );
      }
    }
    heads.sort((a, b) => this.counterOf(a) - this.counterOf(b));

    // Every check passed: only now does the region change.
    for (let e = 0; e < size; e++) if (owner[e] === -2) this.bytes[this.d(e) + D_INFLIGHT] = 0;
    this.setU16(OFF_FREE_HEAD, freeHead);
    this.setU16(OFF_USED_IDX, usedIdx);
    this.bytes[OFF_USED_WRAP] = usedWrap ? 1 : 0;
    this.commitOld();
    this.entryOf.fill(-1);
    let max = 0;
    for (const h of heads) {
      this.entryOf[requests.get(h)!.id] = h;
      max = Math.max(max, this.counterOf(h));
    }
    this.counter = max + 1;
    this.ringSize = ringSize;
    return { requests: heads.map((h) => requests.get(h)!), usedIdx, usedWrap, ownedSlots: owned, committedPush, rolledBack };
  }

  private commitOld(): void {
    this.setU16(OFF_OLD_FREE_HEAD, this.u16(OFF_FREE_HEAD));
    this.setU16(OFF_OLD_USED_IDX, this.u16(OFF_USED_IDX));
    this.bytes[OFF_OLD_USED_WRAP] = this.bytes[OFF_USED_WRAP];
  }

  // --- the data path: called by the queue for every request ---------------------------------

  /**
   * A chain of `n` ring descriptors starting at `first` was walked and is about to be handed
   * out: copies them into entries from the free list (the queue's room check keeps at most
   * `size` descriptors in flight, so the list has them). popped() then marks it in flight.
   */
  stage(ring: DataView, first: number, n: number): void {
    const size = this.ringSize;
    const head = this.u16(OFF_FREE_HEAD);
    let e = head;
    let slot = first;
    for (let k = 0; k < n; k++) {
      // The area is shared with the front-end, which may scribble on it while we run.
      if (e >= this.size) throw new InflightAreaError(`queue ${this.queue}: the packed inflight region's free list ran out (entry ${e}): the area was changed under the back-end`);
      const o = this.d(e);
      const r = slot * 16;
      this.dv.setUint32(o + D_ADDR, ring.getUint32(r, true), true);
      this.dv.setUint32(o + D_ADDR + 4, ring.getUint32(r + 4, true), true);
      this.dv.setUint32(o + D_LEN, ring.getUint32(r + 8, true), true);
      this.setU16(o + D_ID, ring.getUint16(r + 12, true));
      this.setU16(o + D_FLAGS, ring.getUint16(r + 14, true));
      if (k === n - 1) this.setU16(this.d(head) + D_LAST, e);
      e = this.u16(o + D_NEXT);
      this.setU16(OFF_FREE_HEAD, e);
      if (++slot === size) slot = 0;
    }
    const ho = this.d(head);
    this.setU16(ho + D_NUM, n);
    const c = this.counter++;
    this.dv.setUint32(ho + D_COUNTER, c >>> 0, true);
    this.dv.setUint32(ho + D_COUNTER + 4, Math.floor(c / 2 ** 32), true);
    // The head entry's id is the chain's (the last descriptor's): a resubmission is found by it.
    if (n > 1) this.setU16(ho + D_ID, this.u16(this.d(this.u16(ho + D_LAST)) + D_ID));
    this.stagedHead = head;
  }

  /** The staged chain is in flight as buffer `id`. */
  popped(id: number): void {
    const head = this.stagedHead;
    this.stagedHead = -1;
    this.bytes[this.d(head) + D_INFLIGHT] = 1;
    this.setU16(OFF_OLD_FREE_HEAD, this.u16(OFF_FREE_HEAD));
    this.entryOf[id] = head;
  }

  /** Before the used descriptor for `id` is written: its entries go back to the free list, the used index moves. */
  usedBegin(id: number): void {
    const e = this.entryOf[id];
    const eo = this.d(e);
    this.setU16(this.d(this.u16(eo + D_LAST)) + D_NEXT, this.u16(OFF_FREE_HEAD));
    this.setU16(OFF_FREE_HEAD, e);
    let used = this.u16(OFF_USED_IDX) + this.u16(eo + D_NUM);
    if (used >= this.ringSize) {
      used -= this.ringSize;
      this.bytes[OFF_USED_WRAP] ^= 1;
    }
    this.setU16(OFF_USED_IDX, used);
  }

  /** After the used descriptor's flags were written: `id` is no longer in flight. */
  usedEnd(id: number): void {
    const e = this.entryOf[id];
    this.entryOf[id] = -1;
    this.bytes[this.d(e) + D_INFLIGHT] = 0;
    this.commitOld();
  }
}
