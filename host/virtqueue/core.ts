// What a device-side virtqueue is, whichever ring layout carries it: the chains it has handed
// out and not had back (the in-flight table), the first guest violation that broke it (the
// fault latch), the dirty log its guest writes go to, and its views of guest memory, taken again
// when the memory table changes. SplitQueue and PackedQueue extend it with how their layout
// finds available descriptors and publishes used ones; nothing here knows a ring's layout.

import { MemoryFault, hex, type GuestMemory, type WindowBases } from '../memory/guest-memory.ts';
import type { DirtyLog } from '../memory/dirty-log.ts';
import { QueueFault, QueueSetupError, markRanges, writeChainLogged, zeroChainLogged, type DescriptorChain } from './chain.ts';

/**
 * Where a queue records pop and push for crash recovery (the inflight area, inflight.ts).
 * Called with the ids the queue has already checked (in range, in flight).
 */
export interface InflightRecorder {
  popped(id: number): void;
  /** Before the used element for `id` is published. */
  usedBegin(id: number): void;
  /** After the used idx (now `usedIdx`) was published. */
  usedEnd(id: number, usedIdx: number): void;
}

/** What both layouts are configured with besides their ring addresses. */
export interface QueueCoreConfig {
  /** Queue index, only for messages. */
  index: number;
  memory: GuestMemory;
  size: number;
  eventIdx: boolean;
  indirectDesc: boolean;
  /** VHOST_F_LOG_ALL: log every write to guest memory here. */
  log?: DirtyLog | null;
  /** GPA the device-written ring area is logged against (log_guest_addr of SET_VRING_ADDR). */
  usedLogGpa?: number;
}

export abstract class QueueCore<C extends DescriptorChain> {
  readonly index: number;
  readonly size: number;
  readonly eventIdx: boolean;
  readonly indirectDesc: boolean;

  protected readonly memory: GuestMemory;
  private memGen = -1;
  /** Indexed by head (split) or buffer id (packed); both are below the queue size. */
  private readonly inflight: (C | undefined)[];
  private inflightCount = 0;
  /**
   * The ids in flight as a list in the order they were popped (the order the driver made them
   * available; resubmitted ones in their recorded order): a completion of any id but the first
   * overtook an older request still in flight. Two stores per pop and per completion.
   */
  private readonly olderOf: Int32Array;
  private readonly newerOf: Int32Array;
  private newest = -1;
  private overtakes = 0;
  private faultErr: QueueFault | undefined;
  private log: DirtyLog | null;
  private usedLogGpa: number;
  private readonly defaultUsedLogGpa: number;
  /** The inflight area's region for this queue (INFLIGHT_SHMFD), or null: nothing recorded. */
  protected recorder: InflightRecorder | null = null;

  /**
   * `usedAreaGpa`: SET_VRING_ADDR's "used" address (split: used ring; packed: device event
   * area), which log_guest_addr names again and which logging falls back to without it.
   * The caller has checked `cfg.size`; it sizes the in-flight table.
   */
  protected constructor(cfg: QueueCoreConfig, usedAreaGpa: number) {
    this.index = cfg.index;
    this.size = cfg.size;
    this.memory = cfg.memory;
    this.eventIdx = cfg.eventIdx;
    this.indirectDesc = cfg.indirectDesc;
    this.inflight = new Array(cfg.size);
    this.olderOf = new Int32Array(cfg.size);
    this.newerOf = new Int32Array(cfg.size);
    this.log = cfg.log ?? null;
    this.defaultUsedLogGpa = usedAreaGpa;
    this.usedLogGpa = cfg.usedLogGpa ?? usedAreaGpa;
  }

  /** SET/GET_VRING_BASE `num` for this queue's current state (each layout has its own format). */
  abstract get vringBase(): number;

  /** Chains popped and not yet returned with pushUsed. */
  get inFlight(): number {
    return this.inflightCount;
  }
  /**
   * Completions so far that overtook a request made available before them and still in flight
   * (out-of-order completion: what the inflight area's counters and last batch list exist for).
   */
  get overtaken(): number {
    return this.overtakes;
  }
  get broken(): boolean {
    return this.faultErr !== undefined;
  }
  /** The fault that broke the queue, if any. */
  get fault(): QueueFault | undefined {
    return this.faultErr;
  }

  /** VHOST_F_LOG_ALL switched on/off, or a new log area (SET_LOG_BASE). */
  setLog(log: DirtyLog | null, usedLogGpa: number = this.defaultUsedLogGpa): void {
    // Chains popped while nothing was logged kept no writable ranges: their writes from now on
    // are logged by range, taken here while their views still say where they are.
    if (log !== null && this.inflightCount > 0) {
      let bases: WindowBases | null = null;
      for (const c of this.inflight) if (c !== undefined && c.ranges === null) c.keepRanges((bases ??= this.memory.windowBases()));
    }
    this.log = log;
    this.usedLogGpa = usedLogGpa;
  }

  /** Whether chains popped now keep their writable ranges at pop (DescriptorChain): while logging. */
  protected get logging(): boolean {
    return this.log !== null;
  }

  /** Heads (split) or buffer ids (packed) currently in flight. */
  inFlightHeads(): number[] {
    const out: number[] = [];
    for (let i = 0; i < this.size; i++) if (this.inflight[i] !== undefined) out.push(i);
    return out;
  }

  /**
   * Copies `data` into the chain's writable buffers starting `offset` bytes in; returns the
   * bytes copied (bounded by writableLen). Logs the touched guest pages when logging.
   */
  writeChain(chain: DescriptorChain, data: Uint8Array, offset = 0): number {
    return writeChainLogged(chain, data, offset, this.log);
  }

  /** Zeros `len` bytes of the chain's writable buffers from `offset` on, as writeChain would copy zeros; returns the bytes zeroed. */
  zeroChain(chain: DescriptorChain, offset: number, len: number): number {
    return zeroChainLogged(chain, offset, len, this.log);
  }

  /** Takes this layout's views of its rings in guest memory; `setup` says how to refuse (see setupFault). */
  protected abstract resolveViews(setup: boolean): void;

  /** Takes the ring views: at setup, and again whenever the memory table changed (ADD/REM_MEM_REG). */
  protected mapRings(setup: boolean): void {
    this.resolveViews(setup);
    this.memGen = this.memory.generation;
  }

  /** Entry check of every ring operation: refuses once broken, follows memory table changes. */
  protected check(): void {
    if (this.faultErr !== undefined) {
      const f = this.faultErr;
      throw new QueueFault(this.index, `queue is broken: ${f.reason}`, f.availIndex, f.head, f.descIndex);
    }
    if (this.memGen !== this.memory.generation) this.mapRings(false);
  }

  /** Breaks the queue: this fault now, and a "queue is broken" one on every later call. */
  protected fail(reason: string, availIndex?: number, head?: number, descIndex?: number): never {
    const f = new QueueFault(this.index, reason, availIndex, head, descIndex);
    this.faultErr = f;
    throw f;
  }

  /** Unusable ring memory: at setup nothing started (QueueSetupError); later it breaks the running queue. */
  protected setupFault(setup: boolean, reason: string): never {
    if (setup) throw new QueueSetupError(this.index, reason);
    this.fail(reason);
  }

  /**
   * A ring part (`len` bytes at `gpa`) as one host view; rings are accessed in place, so a part
   * that is not contiguous in one mapping is refused.
   */
  protected ringView(gpa: number, len: number, what: string, setup: boolean): Uint8Array {
    try {
      return this.memory.gpaToView(gpa, len);
    } catch (e) {
      if (!(e instanceof MemoryFault)) throw e;
      this.setupFault(setup, `${what} [${hex(gpa)}, +${len}) is not contiguous guest memory: ${e.reason}`);
    }
  }

  /** Whether `id` (a head or buffer id below the queue size) names a chain in flight. */
  protected isInFlight(id: number): boolean {
    return this.inflight[id] !== undefined;
  }

  /** pop's last step: `chain` is in flight as `id` until pushUsed returns it. */
  protected track(id: number, chain: C): void {
    this.inflight[id] = chain;
    this.inflightCount++;
    this.olderOf[id] = this.newest;
    this.newerOf[id] = -1;
    if (this.newest >= 0) this.newerOf[this.newest] = id;
    this.newest = id;
    if (this.recorder !== null) this.recorder.popped(id);
  }

  /**
   * pushUsed's first step (`what` names `id` in messages): checks that `id` is in flight and
   * `writtenLen` fits its writable bytes (both come from the device, which may be wrong), takes
   * the chain out of the in-flight table and logs the bytes the device wrote into it. The
   * caller then publishes the used element and logs that.
   */
  protected retire(id: number, writtenLen: number, what: 'head' | 'buffer id'): C {
    this.check();
    const chain = Number.isInteger(id) && id >= 0 && id < this.size ? this.inflight[id] : undefined;
    if (chain === undefined) throw new Error(`virtqueue ${this.index}: pushUsed of ${what} ${id}, which is not in flight`);
    if (!Number.isInteger(writtenLen) || writtenLen < 0 || writtenLen > chain.writableLen) {
      throw new RangeError(`virtqueue ${this.index}: pushUsed(${what} ${id}) written length ${writtenLen} exceeds the chain's ${chain.writableLen} writable bytes`);
    }
    this.inflight[id] = undefined;
    this.inflightCount--;
    const older = this.olderOf[id];
    const newer = this.newerOf[id];
    if (older >= 0) {
      this.overtakes++;
      this.newerOf[older] = newer;
    }
    if (newer >= 0) this.olderOf[newer] = older;
    else this.newest = older;
    if (this.recorder !== null) this.recorder.usedBegin(id);
    if (this.log !== null) markRanges(this.log, chain.writableRanges, 0, writtenLen);
    return chain;
  }

  /** Logs a device write of `len` bytes at `gpa` in the ring memory (when logging). */
  protected logRing(gpa: number, len: number): void {
    if (this.log !== null) this.log.mark(gpa, len);
  }

  /** Logs a device write `offset` bytes into the used area (as log_guest_addr names it). */
  protected logUsedArea(offset: number, len: number): void {
    if (this.log !== null) this.log.mark(this.usedLogGpa + offset, len);
  }
}
