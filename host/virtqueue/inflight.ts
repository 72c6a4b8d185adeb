// The inflight area of vhost-user's "Inflight I/O tracking" (INFLIGHT_SHMFD,
// GET/SET_INFLIGHT_FD) for split rings: shared memory that outlives the back-end process, in
// which every popped request is marked until its used element is published. After a crash the
// front-end hands the same area to the next back-end, which resubmits what is still marked.
//
// Layout of one queue's region (docs/interop/vhost-user.rst, QueueRegionSplit), little-endian:
//   0  u64 features (0)      8 u16 version (1; 0 = never initialised)   10 u16 desc_num
//   12 u16 last_batch_head   14 u16 used_idx                             16 desc[desc_num]
// and each desc (DescStateSplit, 16 bytes): u8 inflight, u8 padding[5], u16 next, u64 counter.
//
// The write order is the spec's, so that a crash between any two stores is recoverable:
//   pop:  counter, then inflight = 1
//   push: desc[head].next = last_batch_head, last_batch_head = head, (the queue publishes the
//         used element and used idx), then inflight = 0, then used_idx = the ring's used idx.
// A crash after the used idx moved but before used_idx followed leaves used_idx behind the
// ring's: recovery then clears the batch list starting at last_batch_head. Our batches are one
// element long (the queue publishes used idx per element), which the list form covers.
//
// Everything read from the area came from the front-end (or a dead back-end): every field is
// checked before use, and a region that fails a check is refused as a whole.

import { VhostWasmError } from '../errors.ts';

/** QueueRegionSplit.version this host writes and reads. */
export const INFLIGHT_VERSION = 1;
const HEADER_BYTES = 16;
const DESC_BYTES = 16;
/** Each queue's region starts on a 64-byte boundary (what QEMU's reference back-end uses too). */
export const REGION_ALIGN = 64;

const OFF_FEATURES = 0;
const OFF_LAST_BATCH_HEAD = 12;
const OFF_USED_IDX = 14;
const D_INFLIGHT = 0;
const D_NEXT = 6;
const D_COUNTER = 8;

/** One queue's region, split or packed: its header and an entry per descriptor, REGION_ALIGN-rounded. */
export function inflightRegionBytes(headerBytes: number, descBytes: number, queueSize: number): number {
  return Math.ceil((headerBytes + descBytes * queueSize) / REGION_ALIGN) * REGION_ALIGN;
}

/** Bytes of one split queue's region for a ring of `queueSize` descriptors. */
export function splitInflightRegionBytes(queueSize: number): number {
  return inflightRegionBytes(HEADER_BYTES, DESC_BYTES, queueSize);
}

/** GET_INFLIGHT_FD's mmap size: one region per queue, back to back. */
export function splitInflightAreaBytes(numQueues: number, queueSize: number): number {
  return numQueues * splitInflightRegionBytes(queueSize);
}

/** Both region formats keep version and desc_num at these offsets of their header. */
export const INFLIGHT_VERSION_OFFSET = 8;
export const INFLIGHT_DESC_NUM_OFFSET = 10;

/** A region that fails its checks; the message says which field and what it should be. */
export class InflightAreaError extends VhostWasmError {
  static override readonly code = 'ERR_INFLIGHT_AREA';
  override name = 'InflightAreaError';
}

/**
 * Fills the headers of a fresh (zeroed) area as GET_INFLIGHT_FD hands it out: desc_num set,
 * version still 0 ("not initialised": the back-end that first runs the ring initialises it).
 */
export function formatSplitInflightArea(area: Uint8Array, numQueues: number, queueSize: number): void {
  formatInflightArea(area, numQueues, splitInflightRegionBytes(queueSize), queueSize);
}

/** Sets desc_num in the header of each of `numQueues` regions of `regionBytes` (either format). */
export function formatInflightArea(area: Uint8Array, numQueues: number, regionBytes: number, queueSize: number): void {
  const dv = new DataView(area.buffer, area.byteOffset, area.byteLength);
  for (let q = 0; q < numQueues; q++) dv.setUint16(q * regionBytes + INFLIGHT_DESC_NUM_OFFSET, queueSize, true);
}

/** What recovery found in a queue's region: the chains to resubmit, oldest first. */
export interface InflightRecovery {
  /** Heads still marked in flight, ordered by their counter (the order they were popped). */
  heads: number[];
  /** The avail index to continue at: used idx + heads.length (null: fresh region, keep SET_VRING_BASE's). */
  nextAvail: number | null;
  /** Entries of an interrupted used-ring update that were cleared (0 when none was interrupted). */
  clearedLastBatch: number;
}

/** One split queue's region, as the queue reads and writes it. */
export class SplitInflightRegion {
  private readonly dv: DataView;
  private readonly bytes: Uint8Array;
  /** The next counter value: above every counter in the region once recovered. */
  private counter = 1;

  /** `region`: exactly this queue's bytes (splitInflightRegionBytes(size) of them). */
  constructor(
    region: Uint8Array,
    readonly size: number,
    readonly queue: number,
  ) {
    if (region.byteLength < splitInflightRegionBytes(size)) {
      throw new InflightAreaError(`queue ${queue}: inflight region is ${region.byteLength} bytes, a ring of ${size} needs ${splitInflightRegionBytes(size)}`);
    }
    this.bytes = region;
    this.dv = new DataView(region.buffer, region.byteOffset, region.byteLength);
  }

  get version(): number {
    return this.dv.getUint16(INFLIGHT_VERSION_OFFSET, true);
  }
  get descNum(): number {
    return this.dv.getUint16(INFLIGHT_DESC_NUM_OFFSET, true);
  }
  get usedIdx(): number {
    return this.dv.getUint16(OFF_USED_IDX, true);
  }
  get lastBatchHead(): number {
    return this.dv.getUint16(OFF_LAST_BATCH_HEAD, true);
  }
  isInflight(head: number): boolean {
    return this.bytes[HEADER_BYTES + DESC_BYTES * head + D_INFLIGHT] !== 0;
  }
  /** Heads marked in flight (tests, diagnostics). */
  inflightHeads(): number[] {
    const out: number[] = [];
    for (let i = 0; i < this.size; i++) if (this.isInflight(i)) out.push(i);
    return out;
  }
  counterOf(head: number): number {
    const o = HEADER_BYTES + DESC_BYTES * head + D_COUNTER;
    return this.dv.getUint32(o, true) + this.dv.getUint32(o + 4, true) * 2 ** 32;
  }

  /**
   * Throws InflightAreaError when the region cannot be trusted. A version-0 region is a fresh
   * one (nothing to resubmit) whatever else it holds; it is initialised by recover().
   */
  check(): void {
    const q = `queue ${this.queue}`;
    const version = this.version;
    if (version === 0) return;
    if (version !== INFLIGHT_VERSION) {
      throw new InflightAreaError(`${q}: inflight region version is ${version}, this back-end reads version ${INFLIGHT_VERSION} (or 0 for a fresh region)`);
    }
    const features = this.dv.getBigUint64(OFF_FEATURES, true);
    if (features !== 0n) throw new InflightAreaError(`${q}: inflight region has feature flags 0x${features.toString(16)}; none are defined`);
    if (this.descNum !== this.size) {
      throw new InflightAreaError(`${q}: inflight region tracks ${this.descNum} descriptors but the ring has ${this.size}`);
    }
    if (this.lastBatchHead >= this.size) {
      throw new InflightAreaError(`${q}: inflight region's last_batch_head ${this.lastBatchHead} is not below the ring size ${this.size}`);
    }
    for (let i = 0; i < this.size; i++) {
      const o = HEADER_BYTES + DESC_BYTES * i;
      const f = this.bytes[o + D_INFLIGHT];
      if (f > 1) throw new InflightAreaError(`${q}: inflight flag of descriptor ${i} is ${f}, not 0 or 1`);
      if (this.dv.getUint16(o + D_NEXT, true) >= this.size) {
        throw new InflightAreaError(`${q}: descriptor ${i}'s next ${this.dv.getUint16(o + D_NEXT, true)} is not below the ring size ${this.size}`);
      }
    }
  }

  /**
   * At ring start, with the used and avail idx found in guest memory: finishes an interrupted used-ring
   * update, initialises a fresh region, and answers what to resubmit. Throws
   * InflightAreaError (changing nothing) when the region contradicts the ring.
   */
  recover(ringUsedIdx: number, ringAvailIdx: number, ringSize: number = this.size): InflightRecovery {
    this.check();
    if (ringSize > this.size) {
      throw new InflightAreaError(`queue ${this.queue}: the inflight region tracks ${this.size} descriptors, the ring has ${ringSize}`);
    }
    if (this.version === 0) {
      // Fresh: nothing was ever tracked here. Start clean, whatever the bytes were.
      this.bytes.fill(0, HEADER_BYTES, HEADER_BYTES + DESC_BYTES * this.size);
      this.dv.setBigUint64(OFF_FEATURES, 0n, true);
      this.dv.setUint16(INFLIGHT_DESC_NUM_OFFSET, this.size, true);
      this.dv.setUint16(OFF_LAST_BATCH_HEAD, 0, true);
      this.dv.setUint16(OFF_USED_IDX, ringUsedIdx, true);
      this.dv.setUint16(INFLIGHT_VERSION_OFFSET, INFLIGHT_VERSION, true);
      this.counter = 1;
      return { heads: [], nextAvail: null, clearedLastBatch: 0 };
    }
    const behind = (ringUsedIdx - this.usedIdx) & 0xffff;
    const batch: number[] = [];
    if (behind !== 0) {
      // The back-end died after publishing `behind` used elements and before recording it:
      // those heads are in the list at last_batch_head and are no longer in flight.
      if (behind > ringSize) {
        throw new InflightAreaError(
          `queue ${this.queue}: the used ring's idx ${ringUsedIdx} is ${behind} ahead of the inflight region's used_idx ${this.usedIdx}, more than the ring's ${ringSize} descriptors`,
        );
      }
      let h = this.lastBatchHead;
      for (let i = 0; i < behind; i++) {
        batch.push(h);
        h = this.dv.getUint16(HEADER_BYTES + DESC_BYTES * h + D_NEXT, true); // checked < size
      }
    }
    const heads: number[] = [];
    for (let i = 0; i < this.size; i++) if (this.isInflight(i) && !batch.includes(i)) heads.push(i);
    // The region may track more descriptors than this ring has (see runner.setInflight): a
    // head beyond the ring is no request of it.
    const beyond = heads.find((h) => h >= ringSize);
    if (beyond !== undefined) throw new InflightAreaError(`queue ${this.queue}: the inflight region marks descriptor ${beyond} in flight, beyond the ring's ${ringSize}`);
    heads.sort((a, b) => this.counterOf(a) - this.counterOf(b));
    const published = (ringAvailIdx - ringUsedIdx) & 0xffff;
    if (heads.length > published) {
      // Every request in flight was made available and not yet used: more marks than that
      // are not requests the driver is waiting for.
      throw new InflightAreaError(
        `queue ${this.queue}: the inflight region marks ${heads.length} request(s) in flight, but the driver has only ${published} available and not used (avail idx ${ringAvailIdx}, used idx ${ringUsedIdx})`,
      );
    }
    // Only now, with every check passed, does the region change.
    for (const h of batch) this.bytes[HEADER_BYTES + DESC_BYTES * h + D_INFLIGHT] = 0;
    this.dv.setUint16(OFF_USED_IDX, ringUsedIdx, true);
    let max = 0;
    for (const h of heads) max = Math.max(max, this.counterOf(h));
    this.counter = max + 1;
    return { heads, nextAvail: (ringUsedIdx + heads.length) & 0xffff, clearedLastBatch: batch.length };
  }

  // --- the data path: called by the queue for every request ---------------------------------

  /** `head` was popped: give it the next counter, then mark it in flight. */
  popped(head: number): void {
    const o = HEADER_BYTES + DESC_BYTES * head;
    const c = this.counter++;
    this.dv.setUint32(o + D_COUNTER, c >>> 0, true);
    this.dv.setUint32(o + D_COUNTER + 4, Math.floor(c / 2 ** 32), true);
    this.bytes[o + D_INFLIGHT] = 1;
  }

  /** Before the used element for `head` is published: it heads the last batch list. */
  usedBegin(head: number): void {
    this.dv.setUint16(HEADER_BYTES + DESC_BYTES * head + D_NEXT, this.lastBatchHead, true);
    this.dv.setUint16(OFF_LAST_BATCH_HEAD, head, true);
  }

  /** After the used idx (now `usedIdx`) was published: `head` is no longer in flight. */
  usedEnd(head: number, usedIdx: number): void {
    this.bytes[HEADER_BYTES + DESC_BYTES * head + D_INFLIGHT] = 0;
    this.dv.setUint16(OFF_USED_IDX, usedIdx, true);
  }
}
