// Device side of a split virtqueue. Everything read from the rings is guest-controlled: every
// index, address and length is checked before use, and the first violation breaks the queue
// (a QueueFault; the session then reports DEVICE_NEEDS_RESET) instead of being worked around.

import { hex } from '../memory/guest-memory.ts';
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
} from './layout.ts';
import { DescriptorChain, QueueSetupError, appendBuffer, descriptorName, indirectTable, type Fail } from './chain.ts';
import { QueueCore, type QueueCoreConfig } from './core.ts';
import type { InflightRecovery, SplitInflightRegion } from './inflight.ts';

// They moved to chain.ts (shared with the packed queue); importers of this module keep working.
export { QueueFault, QueueSetupError, DescriptorChain, type GuestRange } from './chain.ts';

export interface SplitQueueConfig extends QueueCoreConfig {
  descGpa: number;
  availGpa: number;
  /** Also what usedLogGpa defaults to. */
  usedGpa: number;
  /** SET_VRING_BASE: first avail index to process (default 0). */
  nextAvail?: number;
  /** Next used index; default: used.idx as found in guest memory (the ring's history survives a reconnect). */
  nextUsed?: number;
}

export class SplitQueue extends QueueCore<DescriptorChain> {
  readonly descGpa: number;
  readonly availGpa: number;
  readonly usedGpa: number;

  private readonly mask: number;
  private desc!: DataView;
  /** [0] flags, [1] idx, [2 + i] ring[i], [2 + size] used_event. */
  private avail!: Uint16Array;
  /** [0] flags, [1] idx. */
  private usedHdr!: Uint16Array;
  /** [2 * i] id, [2 * i + 1] len. */
  private usedRing!: Uint32Array;
  /** [0] avail_event; only with EVENT_IDX. */
  private availEvent: Uint16Array | undefined;

  private nextAvailIdx: number;
  private nextUsedIdx: number;
  /** Where walk() is, for the messages of walkFail (one bound function instead of a closure per chain). */
  private walkAvail = 0;
  private walkHead = 0;
  private walkIdx = 0;
  private readonly walkFail: Fail = (reason) => this.fail(reason, this.walkAvail, this.walkHead, this.walkIdx);
  private shadowAvail: number;
  private signalledUsed: number;

  constructor(cfg: SplitQueueConfig) {
    if (!isValidQueueSize(cfg.size)) {
      throw new QueueSetupError(cfg.index, `queue size ${cfg.size} is not a power of two in [1, 32768]`);
    }
    super(cfg, cfg.usedGpa);
    this.mask = cfg.size - 1;
    this.descGpa = cfg.descGpa;
    this.availGpa = cfg.availGpa;
    this.usedGpa = cfg.usedGpa;
    // virtio 1.x alignment; also what lets us use aligned typed arrays below.
    if (cfg.descGpa % 16 !== 0) throw new QueueSetupError(cfg.index, `descriptor table GPA ${hex(cfg.descGpa)} is not 16-byte aligned`);
    if (cfg.availGpa % 2 !== 0) throw new QueueSetupError(cfg.index, `avail ring GPA ${hex(cfg.availGpa)} is not 2-byte aligned`);
    if (cfg.usedGpa % 4 !== 0) throw new QueueSetupError(cfg.index, `used ring GPA ${hex(cfg.usedGpa)} is not 4-byte aligned`);
    this.mapRings(true);
    const base = cfg.nextAvail ?? 0;
    if (!Number.isInteger(base) || base < 0 || base > 0xffff) throw new QueueSetupError(cfg.index, `vring base ${base} is not a u16`);
    this.nextAvailIdx = base;
    this.shadowAvail = base;
    const used = cfg.nextUsed ?? this.usedHdr[1];
    if (!Number.isInteger(used) || used < 0 || used > 0xffff) throw new QueueSetupError(cfg.index, `next used ${used} is not a u16`);
    this.nextUsedIdx = used;
    this.signalledUsed = used;
  }

  get nextAvail(): number {
    return this.nextAvailIdx;
  }
  get nextUsed(): number {
    return this.nextUsedIdx;
  }
  /** GET_VRING_BASE reply `num`: the next avail index to process (a free-running u16). */
  override get vringBase(): number {
    return this.nextAvailIdx;
  }

  /**
   * The next available chain, or null when the driver has published nothing new.
   * Throws QueueFault on a protocol violation, and on every call once broken.
   */
  pop(): DescriptorChain | null {
    this.check();
    if (this.shadowAvail === this.nextAvailIdx) {
      // Acquire: ring entries and descriptors are read only after the idx that published them.
      this.shadowAvail = Atomics.load(this.avail, 1);
      const pending = (this.shadowAvail - this.nextAvailIdx) & 0xffff;
      if (pending > this.size) {
        const seen = this.shadowAvail;
        this.shadowAvail = this.nextAvailIdx;
        this.fail(`avail idx jumped to ${seen}, ${pending} entries ahead of ${this.nextAvailIdx} (queue size ${this.size})`, this.nextAvailIdx);
      }
      if (pending === 0) return null;
    }
    const availIndex = this.nextAvailIdx;
    const head = this.avail[2 + (availIndex & this.mask)];
    if (head >= this.size) this.fail(`head descriptor index ${head} >= queue size ${this.size}`, availIndex, head, head);
    if (this.isInFlight(head)) this.fail(`head ${head} is already in flight`, availIndex, head, head);
    const chain = this.walk(head, availIndex);
    this.nextAvailIdx = (availIndex + 1) & 0xffff;
    this.track(head, chain);
    return chain;
  }

  private walk(head: number, availIndex: number): DescriptorChain {
    const memory = this.memory;
    const chain = new DescriptorChain(head, availIndex, memory, this.logging);
    let table = this.desc;
    let tableSize = this.size;
    let inIndirect = false;
    let idx = head;
    let count = 0;
    // walkFail names the descriptor being looked at: walkIdx follows idx.
    const fail = this.walkFail;
    this.walkAvail = availIndex;
    this.walkHead = head;
    for (;;) {
      this.walkIdx = idx;
      if (++count > tableSize) {
        fail(inIndirect ? `indirect chain longer than its table's ${tableSize} entries (loop?)` : `descriptor chain longer than queue size ${this.size} (loop?)`);
      }
      const o = idx * DESC_SIZE;
      const lo = table.getUint32(o, true);
      const hi = table.getUint32(o + 4, true);
      const len = table.getUint32(o + 8, true);
      const flags = table.getUint16(o + 12, true);
      const next = table.getUint16(o + 14, true);
      if (flags & VIRTQ_DESC_F_INDIRECT) {
        if (!this.indirectDesc) fail(`${descriptorName(idx, inIndirect ? idx : -1)} is INDIRECT but VIRTIO_F_INDIRECT_DESC was not negotiated`);
        if (inIndirect) fail(`indirect descriptor inside an indirect table (entry ${idx})`);
        if (flags & VIRTQ_DESC_F_NEXT) fail(`descriptor ${idx} has both INDIRECT and NEXT`);
        table = indirectTable(memory, lo, hi, len, fail);
        tableSize = len / DESC_SIZE;
        inIndirect = true;
        idx = 0;
        count = 0;
        continue;
      }
      appendBuffer(memory, chain, lo, hi, len, (flags & VIRTQ_DESC_F_WRITE) !== 0, idx, inIndirect ? idx : -1, fail);
      if (!(flags & VIRTQ_DESC_F_NEXT)) break;
      if (next >= tableSize) {
        fail(`${descriptorName(idx, inIndirect ? idx : -1)}: next index ${next} >= ${inIndirect ? 'indirect table size' : 'queue size'} ${tableSize}`);
      }
      idx = next;
    }
    return chain;
  }

  /**
   * Returns a popped chain to the driver with `writtenLen` bytes written, and publishes it.
   * Marks the written buffer bytes and the used-ring entry/idx in the dirty log when logging.
   */
  pushUsed(head: number, writtenLen: number): void {
    this.retire(head, writtenLen, 'head');
    const slot = this.nextUsedIdx & this.mask;
    this.usedRing[2 * slot] = head;
    this.usedRing[2 * slot + 1] = writtenLen;
    this.nextUsedIdx = (this.nextUsedIdx + 1) & 0xffff;
    // The element must be visible before the idx that publishes it. x86 keeps stores in order
    // anyway; the seq-cst store also keeps the JIT from sinking the element stores below it,
    // and (a locked xchg) doubles as the store->load fence needNotification relies on.
    Atomics.store(this.usedHdr, 1, this.nextUsedIdx);
    if (this.recorder !== null) this.recorder.usedEnd(head, this.nextUsedIdx);
    this.logUsedArea(4 + 8 * slot, 8);
    this.logUsedArea(2, 2);
  }

  /**
   * After a batch of pushUsed: whether the driver wants a used-buffer notification (call fd).
   * EVENT_IDX: only if used idx moved past used_event since the last notification decision.
   */
  needsNotification(): boolean {
    this.check();
    const now = this.nextUsedIdx;
    const old = this.signalledUsed;
    this.signalledUsed = now;
    if (now === old) return false;
    // pushUsed's seq-cst store of used idx orders this load after it (store->load), so a
    // driver that re-enabled interrupts after reading the old idx is not missed.
    if (this.eventIdx) return vringNeedEvent(Atomics.load(this.avail, 2 + this.size), now, old);
    return (Atomics.load(this.avail, 0) & VRING_AVAIL_F_NO_INTERRUPT) === 0;
  }

  /**
   * Ask the driver for kicks again. Returns true when buffers arrived meanwhile: the driver may
   * have published them while notifications were off and will not kick for them, so the caller
   * must keep processing instead of sleeping.
   */
  enableNotifications(): boolean {
    this.check();
    if (this.eventIdx) {
      Atomics.store(this.availEvent!, 0, this.nextAvailIdx);
      this.logUsedArea(4 + 8 * this.size, 2);
    } else {
      Atomics.store(this.usedHdr, 0, this.usedHdr[0] & ~VRING_USED_F_NO_NOTIFY);
      this.logUsedArea(0, 2);
    }
    // The seq-cst store above is a full fence: this idx read cannot be satisfied before it.
    return Atomics.load(this.avail, 1) !== this.nextAvailIdx;
  }

  /** Ask the driver not to kick while we are busy draining (a hint; EVENT_IDX needs no write). */
  disableNotifications(): void {
    this.check();
    if (this.eventIdx) return; // avail_event stays behind: the driver will not kick until it is moved
    Atomics.store(this.usedHdr, 0, this.usedHdr[0] | VRING_USED_F_NO_NOTIFY);
    this.logUsedArea(0, 2);
  }

  /**
   * Ask the driver not to kick at all while we poll the ring (adaptive polling, runner.ts).
   * Without EVENT_IDX that is NO_NOTIFY, as in disableNotifications. With EVENT_IDX, avail_event
   * goes one behind our avail index: the driver kicks only when its new entries cross
   * avail_event, which they then cannot (until 65535 more are published, and the poll window
   * ends long before). enableNotifications moves it back and re-checks, so nothing is lost.
   */
  suppressNotifications(): void {
    this.check();
    if (!this.eventIdx) {
      this.disableNotifications();
      return;
    }
    Atomics.store(this.availEvent!, 0, (this.nextAvailIdx - 1) & 0xffff);
    this.logUsedArea(4 + 8 * this.size, 2);
  }

  /** Whether the driver has published chains not yet popped (no side effects). */
  hasAvailable(): boolean {
    this.check();
    return Atomics.load(this.avail, 1) !== this.nextAvailIdx;
  }

  /**
   * Ring start with an inflight area (INFLIGHT_SHMFD): recovers `region` against the used idx
   * in guest memory, continues at the avail index it implies (what the front-end sent with
   * SET_VRING_BASE cannot know what was in flight when the old back-end died), takes the chains
   * still marked in flight again, oldest first, and records every later pop and push there.
   * The caller processes the returned chains before anything new. Throws InflightAreaError
   * (the queue then records nothing) when the region contradicts the ring, and QueueFault
   * when a marked head's descriptors are no valid chain.
   */
  restoreInflight(region: SplitInflightRegion): { chains: DescriptorChain[]; recovery: InflightRecovery } {
    this.check();
    if (this.inFlight !== 0) throw new Error(`virtqueue ${this.index}: inflight area attached after requests were popped`);
    const recovery = region.recover(this.nextUsedIdx, Atomics.load(this.avail, 1), this.size);
    if (recovery.nextAvail !== null) {
      this.nextAvailIdx = recovery.nextAvail;
      this.shadowAvail = recovery.nextAvail;
    }
    this.recorder = region;
    const chains: DescriptorChain[] = [];
    for (const head of recovery.heads) {
      // Walked again from the descriptor table, which the driver leaves alone until the head
      // comes back in the used ring; its avail slot is unknown (completions were out of order).
      const chain = this.walk(head, -1);
      this.track(head, chain);
      chains.push(chain);
    }
    return { chains, recovery };
  }

  protected override resolveViews(setup: boolean): void {
    const d = this.ringView(this.descGpa, descTableBytes(this.size), 'descriptor table', setup);
    const a = this.ringView(this.availGpa, availBytes(this.size), 'avail ring', setup);
    const u = this.ringView(this.usedGpa, usedBytes(this.size), 'used ring', setup);
    // Only if a region starts at an odd host offset: the typed arrays below need alignment.
    if (a.byteOffset % 2 !== 0 || u.byteOffset % 4 !== 0) this.setupFault(setup, 'ring is misaligned in its host mapping');
    this.desc = new DataView(d.buffer, d.byteOffset, d.byteLength);
    this.avail = new Uint16Array(a.buffer, a.byteOffset, 3 + this.size);
    this.usedHdr = new Uint16Array(u.buffer, u.byteOffset, 2);
    this.usedRing = new Uint32Array(u.buffer, u.byteOffset + 4, 2 * this.size);
    this.availEvent = this.eventIdx ? new Uint16Array(u.buffer, u.byteOffset + 4 + 8 * this.size, 1) : undefined;
  }
}

/** Gathers a chain's readable bytes into one buffer (copies; for small headers and tests). */
export function readChain(chain: DescriptorChain, maxLen = chain.readableLen): Uint8Array {
  const out = new Uint8Array(Math.min(maxLen, chain.readableLen));
  let at = 0;
  for (const b of chain.readable) {
    if (at === out.length) break;
    const n = Math.min(b.length, out.length - at);
    out.set(n === b.length ? b : b.subarray(0, n), at);
    at += n;
  }
  return out;
}
