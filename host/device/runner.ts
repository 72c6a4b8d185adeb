// The data plane of one device, run inside that device's worker: guest memory mappings, the
// rings, kick watchers and the device itself. The session on the main thread owns every fd
// it passes in here (memory, kick, call, err); the runner only borrows them and never closes
// them, so a worker that is killed mid-call leaks nothing the main thread cannot close.

import { native } from '../native/index.ts';
import type { Mapping, Watcher } from '../native/api.ts';
import { GuestMemory, hex, type RegionSpec, type WindowBases } from '../memory/guest-memory.ts';
import { mapFdRange } from '../memory/fd-mapping.ts';
import { QueueFault, readChain, type DescriptorChain, type GuestRange } from '../virtqueue/split.ts';
import { createDeviceQueue, isValidRingSize, vringBaseError, PACKED_INITIAL_VRING_BASE, type DeviceQueue } from '../virtqueue/queue.ts';
import type { Answer, DeviceAction, DeviceEvent, Piece, Send, VirtioDevice } from './device.ts';
import { checkActions, describeViolation, MAX_TIMERS, type Answerable, type AnswerableTable, type CheckContext } from './answer-check.ts';
import type { DeviceNet, RxFrame, TxFrame } from '../net/device-net.ts';
import { FLOOD } from '../net/link.ts';
import type { IoExecutor, IoOp, IoResult } from '../io/executor.ts';
import { BackingTable } from '../io/backing-table.ts';
import { chooseExecutor } from '../io/choose-executor.ts';
import { WatchdogPhase, type LogStatus, type RegionMsg, type RingSnapshot, type CarriedSection, type StateBeginInfo, type StateReadResult, type VringAddrMsg, type WorkerStatus } from './rpc.ts';
import { DirtyLog } from '../memory/dirty-log.ts';
import { MAX_POLL_MAX_NS, PollWindow } from './poll-window.ts';
import { INFLIGHT_DESC_NUM_OFFSET, INFLIGHT_VERSION_OFFSET, InflightAreaError, SplitInflightRegion, splitInflightRegionBytes } from '../virtqueue/inflight.ts';
import { PackedInflightRegion, packedInflightRegionBytes } from '../virtqueue/inflight-packed.ts';
import { SplitQueue } from '../virtqueue/split.ts';
import { PackedQueue } from '../virtqueue/packed.ts';
import type { WorkerStateSection } from '../migration/section.ts';
import { copyFileToSection, copySectionToFile } from '../migration/section-fd.ts';
import { VirtioFeature, hasFeature } from './features.ts';
import { createLogger, errorText, type Logger } from '../log/logger.ts';
import { DeviceError } from './errors.ts';
import { readableRanges, rebindChain } from './chain-rebind.ts';
import { ownCopy } from './typed-rpc.ts';
import type { RequestMeter } from '../metrics/request-meter.ts';
import type { TokenBucket } from '../limits/token-bucket.ts';

// Thrown from here; its home is errors.ts.
export { DeviceError };

/**
 * handle() calls made in a row for io-failed events alone (a device whose second answer fails
 * its I/O again, and again): past this the rest waits for the next kick or completion, so one
 * bad backing cannot keep the worker in a loop.
 */
const MAX_FAILURE_ROUNDS = 8;

/**
 * A drain that runs batches back to back, while the driver keeps the ring from running dry,
 * decides a notification after this many batches or this many requests, whichever comes first.
 * Small batches are merged (the eventfd write, often a wake-up of the other side, is then the
 * costliest step per batch); a batch of NOTIFY_EVERY_REQUESTS or more is followed by its
 * notification as before, so a driver waiting for a large batch can refill while we go on.
 */
const NOTIFY_EVERY_BATCHES = 4;
const NOTIFY_EVERY_REQUESTS = 32;

/**
 * One drain's turn: after this many batches or requests, whichever comes first, a ring the
 * driver keeps from running dry is left for the event loop to have a turn (its other rings'
 * kicks, the main thread's messages, completions, timers) and drained on from setImmediate,
 * its kicks still suppressed: a guest that refills one ring as fast as the worker empties it
 * would otherwise keep the worker in that ring for good (QEMU's virtio-net tx and rust-vmm's
 * event loop bound their turns the same way). A full turn is 4 of the largest batches, so the
 * turn's cost (one pass of the event loop, a few us) is lost in the work it ends; a drain that
 * empties the ring first never yields.
 */
export const DRAIN_TURN_BATCHES = 16;
export const DRAIN_TURN_REQUESTS = 1024;

const EMPTY = new Uint8Array(0);

/** Where a request stands between pop and used ring. */
const enum ReqState {
  /** Handed to the device in the current handle() call (a request or io-failed event). */
  Due,
  /** The device held it: any later call may answer it. */
  Held,
  /** Answered: its I/O is with the executor. */
  Io,
  /** Its I/O failed: an io-failed event waits for the next handle() call. */
  Failed,
  /** Held when its ring stopped: an answer is still accepted (the device cannot know) and dropped. */
  Orphan,
}

/** One descriptor chain the device has been told about and that is not in the used ring yet. */
interface Req {
  readonly id: number;
  readonly ring: number;
  /** The ring's generation at pop: a completion after the ring stopped or reset is dropped. */
  readonly gen: number;
  readonly queue: DeviceQueue;
  readonly chain: DescriptorChain;
  state: ReqState;
  /** When it was handed to the device (RequestMeter.popped), for its latency. */
  readonly popped: number;
  /** The answer whose I/O is with the executor (the executor's token is the request). */
  answer: Answer | null;
  /** The handle() call (DueRound) that last had it due. */
  dueRound: number;
  /** GuestMemory.generation its chain's views were made in (chain-rebind.ts when it moved). */
  memGen: number;
  /**
   * Its readable buffers' guest ranges, taken at the first table change that unmaps memory
   * while it waits (null until then): its views of the old mapping are then detached, and an
   * answer that reads the payload reads it where these ranges are now.
   */
  readRanges: GuestRange[] | null;
}

/**
 * The requests due in the current handle() call, for the answer checks: looked up in the
 * runner's request table by a round mark instead of a Map filled per call (this runs once per
 * request). Valid from begin() until the next begin(); the checks finish before that.
 */
class DueRound implements AnswerableTable {
  private round = 0;
  private ids: number[] = [];
  private reqs: readonly (Req | undefined)[] = [];

  get size(): number {
    return this.ids.length;
  }

  begin(reqs: readonly (Req | undefined)[]): void {
    this.round++;
    // A new list, not `length = 0`: that is a runtime call (the length setter) per round, and
    // drops the list's store anyway.
    this.ids = [];
    this.reqs = reqs;
  }

  add(req: Req): void {
    req.dueRound = this.round;
    this.ids.push(req.id);
  }

  has(id: number): boolean {
    const r = this.reqs[id];
    return r !== undefined && r.dueRound === this.round;
  }

  get(id: number): Answerable | undefined {
    const r = this.reqs[id];
    return r !== undefined && r.dueRound === this.round ? r.chain : undefined;
  }

  keys(): Iterable<number> {
    return this.ids;
  }
}

export interface RunnerHooks {
  /** The guest broke a ring: tell the session (NEEDS_RESET, config-change notification). */
  ringBroken(index: number, reason: string): void;
  /** The device failed: every ring is halted until reset. */
  deviceFailed(reason: string): void;
  /** A ring without a call fd returned buffers (in-band notification via the session). */
  inbandCall(index: number): void;
  /**
   * The front-end shrank a file behind guest memory or the dirty log after we mapped it: the
   * fault guard contained the access, every ring is halted, and the connection must end.
   */
  memoryFault(reason: string): void;
  /**
   * Brackets every call into device code (and every notification write to a front-end's fd),
   * for the watchdog on the main thread: whatever runs past its deadline gets the worker killed.
   */
  enterDevice(phase?: WatchdogPhase): void;
  leaveDevice(): void;
  /** Per-request counters for the metrics endpoint (host/metrics), when the host keeps them. */
  meter?: RequestMeter;
  /** The device's (or its throttle group's) I/O budget, shared with its other threads and devices. */
  throttle?: TokenBucket;
  /**
   * Pre-copy's auto-converge bucket (host/migration/auto-converge.ts): charged with the bytes a
   * request carries to the device (a write's data), so it holds writes back and not reads.
   */
  converge?: TokenBucket;
  /** The device's network ports (--network), when it was granted any. */
  net?: DeviceNet;
  /** --poll-max-ns: the longest the worker spins on its rings before it waits for a kick (0 or absent: never). */
  pollMaxNs?: number;
  /** The device's mapped-reads stop cell (host/io/mapped-reads.ts), shared by its queue threads. */
  mappedReadsStop?: SharedArrayBuffer;
}

/** Frames handed to the device in one handle() call; the rest wait for the next. */
export const MAX_FRAMES_PER_CALL = 256;

/**
 * Most state bytes one device call reads or writes. The watchdog's deadline bounds every call,
 * and a device's work on its state grows with the bytes (the fs plugin parses ~37,000 inode
 * records per MiB as they arrive; a 256 KiB call of them once ran 110 ms on this 2-core machine
 * under heavy load): the session's 1 MiB transfers go to the device in 64 KiB pieces, whose
 * per-call cost (~10 us of glue) is noise next to the work.
 */
export const STATE_CALL_BYTES = 64 * 1024;

/** SET_INFLIGHT_FD's area: one region per queue (inflight.ts), each for rings of queueSize. */
interface InflightArea {
  mapping: Mapping;
  bytes: Uint8Array;
  numQueues: number;
  /** Descriptors each region tracks (desc_num): at least the rings' size. */
  descNum: number;
  /** Bytes from one queue's region to the next. */
  stride: number;
  /** The layout its regions were checked as (VIRTIO_F_RING_PACKED acked when it was set). */
  packed: boolean;
}

interface Vring {
  num: number;
  addr: VringAddrMsg | null;
  /** SET_VRING_BASE's value; undefined until sent (a packed ring's fresh base is not 0). */
  base: number | undefined;
  /** fd -1: not set yet; null: the front-end said "no fd" (in-band kicks / no calls). */
  kickFd: number | null | -1;
  callFd: number | null;
  /** callFd is O_NONBLOCK (checked when it arrived): notify with one write, no poll first. */
  callNonBlocking: boolean;
  errFd: number | null;
  enabled: boolean;
  queue: DeviceQueue | null;
  watcher: Watcher | null;
  /** Bumped when the ring stops or resets: completions of requests popped before are not its. */
  gen: number;
  /** A request of this ring completed since its last notification decision. */
  touched: boolean;
  /** Its queue's out-of-order completions (DeviceQueue.overtaken) counted into the meter so far; the first is logged once per ring start. */
  overtakenSeen: number;
  /** Armed while the throttle holds the ring back: it drains the ring again when the budget allows. */
  throttleTimer: ReturnType<typeof setTimeout> | null;
  /** Armed when a drain used up its turn with work left (DRAIN_TURN_*): it drains on after the event loop's turn. */
  resume: ReturnType<typeof setImmediate> | null;
}

function regionSpec(r: RegionMsg): RegionSpec {
  const { backing, mapping } = mapFdRange(r.fd, r.size, r.mmapOffset, true);
  return {
    guestPhysAddr: r.guestPhysAddr,
    size: r.size,
    userspaceAddr: r.userspaceAddr,
    mmapOffset: r.mmapOffset,
    backing,
    release: () => mapping.unmap(),
  };
}

export class DeviceRunner {
  readonly memory = new GuestMemory();
  private readonly rings: Vring[];
  private features = 0n;
  private protocolFeatures = false;
  private failed: string | null = null;
  /** Inside asNewBuild: this instance is an upgrade's new build, the guest's rings are the old one's. */
  private newBuild = false;
  /**
   * markUpgradeCandidate was called and no ring of the guest's has started here yet: a live
   * upgrade's new build being given the session's settings (features, memory table, rings'
   * addresses) while the old one serves. A failure now is the new build's alone, as inside
   * asNewBuild.
   */
  private candidate = false;
  private readonly log: Logger;
  /** Requests handed to the device per call: bounded so one kick cannot monopolise the worker. */
  private readonly maxBatch: number;
  /** The dirty-log area from SET_LOG_BASE (mapped here; the session closes the fd). */
  private dirtyLog: DirtyLog | null = null;
  private logMapping: Mapping | null = null;
  /** VHOST_F_LOG_ALL acked: every guest-memory write is marked in dirtyLog. */
  private logAll = false;
  /** The inflight area from SET_INFLIGHT_FD (mapped here; the session closes the fd). */
  private inflightArea: InflightArea | null = null;
  /** native.mappingFaultCount() when last looked at: it moves when any guarded mapping faulted. */
  private seenFaults = native.mappingFaultCount();
  /** Set once a memory fault was reported: nothing runs again in this worker's memory table. */
  private memoryFaulted: string | null = null;

  // --- requests between pop and used ring (WIT 0.2's events and actions) -------------------
  /** By request id; an id is reused only after its request completed. */
  private reqs: (Req | undefined)[] = [];
  private freeIds: number[] = [];
  /**
   * A memory generation under which every request alive was popped (set when a request is
   * made with none alive; -1: unknown), so rebindStale need not look at each answer's request
   * until the table changes under a request. Ids are dense: alive = reqs.length - freeIds.length.
   */
  private freshGen = -1;
  /** Requests the device holds (and orphans of stopped rings), by id. */
  private readonly held = new Map<number, Req>();
  /** io-failed events for the next handle() call. */
  private pendingEvents: DeviceEvent[] = [];
  /** The backings answers may name; the executor moves the bytes. */
  private backings: BackingTable;
  private executor: IoExecutor;
  /** The current handle() call's due requests, for the checks (one table, refilled per call). */
  private readonly due = new DueRound();
  private readonly backingAt = (i: number): ReturnType<BackingTable['get']> => this.backings.get(i);
  /** Inside a batch: completions are notified at its end, not from a microtask. */
  private inBatch = 0;
  private flushScheduled = false;

  // --- events that are not requests: frames (--network) and timers (wake-after) ------------
  /** The driver acked features since the last reset: the device may be given frames and timers. */
  private activated = false;
  /** wake-after timers armed, by a host-side key. */
  private readonly timers = new Map<number, ReturnType<typeof setTimeout>>();
  private timerKey = 0;
  /** Timers that fired, their tokens waiting for the next handle() call. */
  private firedTimers: bigint[] = [];
  private eventsScheduled = false;

  // --- adaptive polling (poll-window.ts) ---------------------------------------------------
  /** null: --poll-max-ns 0, the worker never spins. */
  private readonly pollWindow: PollWindow | null;
  /** When the last poll before a wait began (process.hrtime ns), 0 when none is pending: the next kick's block time starts there. */
  private waitStart = 0;
  private polling = false;
  private pollResumeScheduled = false;

  constructor(
    /** Replaced only by replaceDevice (a reset after the device failed). */
    public device: VirtioDevice,
    private readonly hooks: RunnerHooks,
    label: string,
  ) {
    this.log = createLogger(`device ${label}`);
    this.rings = Array.from({ length: device.info.numQueues }, () => this.freshRing());
    this.maxBatch = Math.max(1, Math.min(256, device.info.maxQueueSize));
    this.pollWindow = hooks.pollMaxNs ? new PollWindow(hooks.pollMaxNs) : null;
    this.backings = backingsOf(device);
    this.executor = this.makeExecutor(this.backings);
    device.setWaker?.((token) => this.wake(token));
    if (hooks.net) hooks.net.onFrames = () => this.scheduleEvents();
  }

  /** A wait the device started on the host resolved (filesystem.setlk): `timer(token)` goes to its next call. */
  private wake(token: bigint): void {
    if (!this.running) return;
    this.firedTimers.push(token);
    this.scheduleEvents();
  }

  /** The device may be called with frames and timers: activated, not failed, its memory intact. */
  private get running(): boolean {
    return this.activated && this.failed === null && this.memoryFaulted === null;
  }

  /**
   * Frames arrived or a timer fired: one handle() call for them (and whatever else is waiting)
   * once the current turn of the event loop is done, so a burst of messages is one call.
   */
  private scheduleEvents(): void {
    if (this.eventsScheduled) return;
    this.eventsScheduled = true;
    setImmediate(() => {
      this.eventsScheduled = false;
      if (!this.running) {
        this.hooks.net?.dropAll();
        return;
      }
      if (this.inBatch > 0) return; // the batch running takes them (its rounds include waiting events)
      try {
        this.runBatch([]);
      } catch (e) {
        this.batchFailed(-1, e);
      }
      if (this.running && ((this.hooks.net?.pending ?? 0) > 0 || this.firedTimers.length > 0)) this.scheduleEvents();
    });
  }

  /** wake-after: a timer event after at least `ns`, unless a reset comes first. */
  private arm(ns: bigint, token: bigint): void {
    const key = this.timerKey++;
    const ms = Number(ns / 1_000_000n) + (ns % 1_000_000n > 0n ? 1 : 0);
    this.timers.set(
      key,
      setTimeout(() => {
        this.timers.delete(key);
        this.firedTimers.push(token);
        this.scheduleEvents();
      }, ms),
    );
  }

  private clearTimers(): void {
    for (const t of this.timers.values()) clearTimeout(t);
    this.timers.clear();
    this.firedTimers = [];
  }

  private readonly countCopied = (bytes: number): void => this.hooks.meter?.copied(bytes);

  private makeExecutor(table: BackingTable): IoExecutor {
    // io_uring for files and block devices and a disk share's files, one copy for memory disks
    // (host/io/choose-executor.ts).
    // The meter is read at each copy: a warm-up's scratch meter counts its own (worker.ts warmUp).
    const executor = chooseExecutor(table, this.log, this.countCopied, this.hooks.mappedReadsStop).executor;
    // Answers are started after each device call: an index the call gives up stays until then.
    table.useRounds();
    const settle = executor.settle?.bind(executor);
    table.settle =
      settle === undefined
        ? null
        : (until) => {
            // Called from inside a device call (filesystem.fsync): what completes meanwhile is
            // written to its used ring; a ring the guest broke is broken here, not thrown into
            // the plugin.
            try {
              settle(until);
            } catch (e) {
              this.batchFailed(-1, e);
            }
          };
    return executor;
  }

  private freshRing(): Vring {
    return { num: 0, addr: null, base: undefined, kickFd: -1, callFd: null, callNonBlocking: false, errFd: null, enabled: false, queue: null, watcher: null, gen: 0, touched: false, overtakenSeen: 0, throttleTimer: null, resume: null };
  }

  private ring(index: number): Vring {
    const r = this.rings[index];
    if (r === undefined) {
      throw new Error(`ring index ${index} is out of range: this device has ${this.rings.length} queue(s)`);
    }
    return r;
  }

  // --- device calls, bracketed for the watchdog -------------------------------------------

  private call<T>(fn: () => T): T {
    this.hooks.enterDevice(WatchdogPhase.call);
    try {
      return fn();
    } catch (e) {
      this.deviceThrew(e);
      throw e;
    } finally {
      this.hooks.leaveDevice();
    }
  }

  /**
   * A device that trapped or broke its contract is never called again (a plugin marks itself
   * unusable): fail it now, so the front-end sees NEEDS_RESET and a reset brings a fresh
   * instance, instead of a device that refuses every later call, reset included.
   */
  private deviceThrew(e: unknown): void {
    const unusable = (this.device as { unusable?: () => string | null }).unusable?.() ?? null;
    if (unusable !== null || e instanceof DeviceError) this.fail(errorText(e));
  }

  readConfig(offset: number, size: number): Uint8Array {
    const cs = this.device.info.configSize;
    if (!Number.isInteger(offset) || !Number.isInteger(size) || offset < 0 || size < 0 || offset + size > cs) {
      throw new Error(`config read [${offset}, +${size}) is outside the device's ${cs}-byte config space`);
    }
    const data = this.call(() => this.device.readConfig(offset, size));
    if (!(data instanceof Uint8Array) || data.length !== size) {
      throw this.deviceFault(`device returned ${data instanceof Uint8Array ? data.length : typeof data} config bytes for a ${size}-byte read`);
    }
    return data;
  }

  writeConfig(offset: number, data: Uint8Array): void {
    const cs = this.device.info.configSize;
    if (offset < 0 || offset + data.length > cs) {
      throw new Error(`config write [${offset}, +${data.length}) is outside the device's ${cs}-byte config space`);
    }
    this.call(() => this.device.writeConfig(offset, data));
  }

  setFeatures(features: bigint, protocolFeatures: boolean): void {
    this.features = features;
    this.protocolFeatures = protocolFeatures;
    this.call(() => this.device.activate(features));
    this.activated = true;
  }

  // --- memory ----------------------------------------------------------------------------

  /** `windowsNow`: every window mapped at once (GuestMemory.mapWindows), not on first access. */
  setMemTable(regions: RegionMsg[], windowsNow = false): void {
    // Map everything first: a bad region leaves the old table in place.
    const specs: RegionSpec[] = [];
    try {
      for (const r of regions) specs.push(regionSpec(r));
      new GuestMemory(specs.map((s) => ({ ...s, release: undefined }))); // validates overlap/bounds only
    } catch (e) {
      for (const s of specs) s.release?.();
      throw e;
    }
    // In-flight I/O targets the old mappings: it completes before they go, and failed I/O gets
    // its second answer (the status the guest reads) while they are still there.
    this.settle();
    this.keepRequestRanges();
    // Rings hold views into the old table; the queue re-resolves them on the next access.
    for (const old of [...this.memory.regions]) this.memory.removeRegion(old);
    for (const s of specs) this.memory.addRegion(s);
    if (windowsNow) this.memory.mapWindows();
  }

  addMemRegion(r: RegionMsg): void {
    const spec = regionSpec(r);
    try {
      this.memory.addRegion(spec);
    } catch (e) {
      spec.release?.();
      throw e;
    }
  }

  removeMemRegion(m: { guestPhysAddr: number; size: number; userspaceAddr: number }): void {
    this.settle();
    this.keepRequestRanges();
    this.memory.removeRegion(m);
  }

  /**
   * Before mappings go: the guest ranges of the waiting requests' views, while the views still
   * say where they are (chain-rebind.ts). Paid here, at a table change, not by
   * every request's walk.
   */
  private keepRequestRanges(): void {
    let bases: WindowBases | null = null; // one walk of the windows for all the requests, if any waits
    for (const req of this.reqs) {
      if (req === undefined) continue;
      // Writable ranges of any request alive (not kept at pop unless logging): its reply is
      // rebound to them (rebindStale), and a lost one is named by them (replyLost).
      if (req.chain.ranges === null && req.chain.writable.length > 0) req.chain.keepRanges((bases ??= this.memory.windowBases()));
      if (req.readRanges !== null || req.state === ReqState.Orphan) continue;
      req.readRanges = readableRanges(this.memory, req.chain, (bases ??= this.memory.windowBases()));
    }
  }

  // --- rings -------------------------------------------------------------------------------

  ringNum(index: number, num: number): void {
    const r = this.ring(index);
    if (r.queue) throw new Error(`SET_VRING_NUM on ring ${index} while it is running`);
    const max = this.device.info.maxQueueSize;
    const packed = this.packed;
    if (!Number.isInteger(num) || num > max || !isValidRingSize(packed, num)) {
      throw new Error(
        `ring ${index}: size ${num} is not ${packed ? 'between 1' : 'a power of two between 1'} and the device maximum ${max}${packed ? ' (packed ring)' : ''}`,
      );
    }
    r.num = num;
  }

  ringAddr(index: number, addr: VringAddrMsg): void {
    const r = this.ring(index);
    if (r.queue && r.addr && sameRingAddresses(r.addr, addr)) {
      // QEMU starts and stops dirty logging on running rings by re-sending their addresses with
      // VHOST_VRING_F_LOG set or cleared: only the used ring's log address changes.
      r.addr = addr;
      r.queue.setLog(this.activeLog(), this.usedLogGpa(addr));
      return;
    }
    if (r.queue) throw new Error(`SET_VRING_ADDR on ring ${index} while it is running`);
    // Check now, where the front-end can still be told (the ring only starts later, on a kick
    // or enable); they are checked again at start in case the memory table changed.
    for (const [what, uva] of [['descriptor table', addr.descUserAddr], ['avail ring', addr.availUserAddr], ['used ring', addr.usedUserAddr]] as const) {
      try {
        this.memory.uvaToGpa(uva);
      } catch (e) {
        throw new Error(`ring ${index}: ${what} address 0x${uva.toString(16)} is outside guest memory (${errorText(e)})`);
      }
    }
    r.addr = addr;
  }

  ringBase(index: number, base: number): void {
    const r = this.ring(index);
    if (r.queue) throw new Error(`SET_VRING_BASE on ring ${index} while it is running`);
    const err = vringBaseError(this.packed, base);
    if (err !== null) throw new Error(`ring ${index}: ${err}`);
    r.base = base;
  }

  ringKick(index: number, fd: number | null): void {
    const r = this.ring(index);
    if (fd !== null) requireEventfd(fd, index, 'kick');
    // The old fd is the session's to close once this returns: stop watching it first.
    this.stopWatching(r);
    r.kickFd = fd;
    try {
      this.maybeStart(index);
    } catch (e) {
      // Refused: the session closes fd, and its number may come back as another fd. Forget it,
      // so a later enable never watches (and reads) whatever reuses the number.
      this.stopWatching(r);
      r.kickFd = -1;
      throw e;
    }
  }

  ringCall(index: number, fd: number | null): void {
    const r = this.ring(index);
    if (fd !== null) requireEventfd(fd, index, 'call');
    r.callNonBlocking = fd !== null && native.isNonBlocking(fd);
    r.callFd = fd;
  }

  ringErr(index: number, fd: number | null): void {
    const r = this.ring(index);
    if (fd !== null) requireEventfd(fd, index, 'err');
    r.errFd = fd;
  }

  ringEnable(index: number, enable: boolean): void {
    const r = this.ring(index);
    r.enabled = enable;
    if (enable) this.maybeStart(index);
    else this.stopWatching(r); // keep the queue (and its indexes); resume on re-enable
  }

  ringInbandKick(index: number): void {
    const r = this.ring(index);
    if (r.queue && r.enabled) this.drain(index, r);
  }

  /** GET_VRING_BASE: stop the ring and return the next avail index to process. */
  ringStop(index: number): number {
    const r = this.ring(index);
    this.stopWatching(r);
    // Everything answered completes first (and failed I/O gets its second answer), so the
    // base handed back covers it; what the device still holds stays in flight (the inflight
    // area keeps it marked) and its late answer is dropped. Waits the device runs on the host
    // (a share's SETLKW) end first, so their requests are answered here rather than held; only
    // when this ring has a held request: the host's waits do not say which ring they are for,
    // so a ring stopped alone with nothing held leaves the other rings' waits waiting, but one
    // with a held request ends them all (a front-end stops every ring anyway).
    let heldHere = false;
    for (const req of this.held.values()) if (req.ring === index && req.state === ReqState.Held) heldHere = true;
    const stopWaits = heldHere && this.running ? this.device.stopWaits?.bind(this.device) : undefined;
    if (stopWaits) this.call(() => stopWaits(true));
    try {
      this.settle();
    } finally {
      if (stopWaits) this.call(() => stopWaits(false));
    }
    let orphans = 0;
    for (const req of this.held.values()) {
      if (req.ring === index && req.state === ReqState.Held) {
        req.state = ReqState.Orphan;
        orphans++;
      }
    }
    // Not silent: the front-end counts these as consumed (the base covers them) and never sees
    // them in the used ring of this ring, now or after a restart; only an inflight area
    // (SET_INFLIGHT_FD) brings them back, resubmitted to the device when the ring starts again.
    if (orphans > 0) {
      const area = this.inflightArea !== null && index < this.inflightArea.numQueues;
      this.log.warn(
        `ring ${index} stopped (GET_VRING_BASE) with ${orphans} request(s) the device holds: they are not completed on this ring ` +
          (area ? '(the inflight area keeps them; they are resubmitted when the ring starts with it again), ' : '(no inflight area: the guest will not get them back), ') +
          'and a later answer to them is dropped',
      );
    }
    r.gen++;
    if (r.queue) {
      this.countOvertaken(index, r, r.queue);
      this.log.debug(`ring ${index} stopped: ${r.queue.overtaken} completion(s) since it started overtook an earlier request still in flight`);
    }
    const base = r.queue ? r.queue.vringBase : (r.base ?? this.freshBase());
    r.queue = null;
    r.kickFd = -1;
    r.base = base;
    // Without protocol features a ring is enabled by starting; a stopped ring starts over.
    if (!this.protocolFeatures) r.enabled = false;
    return base;
  }

  /** Swaps in a fresh instance of the same device (same info) before a reset of a failed one. */
  replaceDevice(fresh: VirtioDevice): void {
    const shape = (i: VirtioDevice['info']) => `${i.deviceId}/${i.name}/${i.numQueues}/${i.maxQueueSize}/${i.features}/${i.configSize}`;
    if (shape(fresh.info) !== shape(this.device.info)) {
      fresh.close?.();
      throw new Error(`a fresh instance describes itself as ${shape(fresh.info)}, not ${shape(this.device.info)}`);
    }
    this.executor.drain();
    this.executor.close();
    this.device.setWaker?.(null);
    this.device.close?.();
    this.device = fresh;
    fresh.setWaker?.((token) => this.wake(token));
    this.backings = backingsOf(fresh);
    this.executor = this.makeExecutor(this.backings);
  }

  /**
   * Another queue thread of this device failed (worker-client.ts): fail here too, so the device
   * fails as a whole. False when this one had failed already.
   */
  halt(reason: string): boolean {
    if (this.failed) return false;
    this.fail(reason);
    return true;
  }

  reset(): void {
    this.executor.drain();
    this.hooks.meter?.ioInFlight(this.executor.inflight);
    this.dropRequests();
    // Frames and timers were for the device as it was: a reset device starts without them.
    this.activated = false;
    this.clearTimers();
    this.hooks.net?.dropAll();
    for (let i = 0; i < this.rings.length; i++) {
      const r = this.rings[i];
      this.stopWatching(r);
      if (r.queue) this.countOvertaken(i, r, r.queue);
      this.rings[i] = { ...this.freshRing(), gen: r.gen + 1 };
    }
    this.features = 0n;
    this.failed = null;
    // The session drops the connection on a memory fault and resets; the next front-end
    // sends a new memory table.
    this.memoryFaulted = null;
    // Logging is renegotiated after a reset (the front-end re-sends SET_LOG_BASE with LOG_ALL).
    this.logAll = false;
    this.dirtyLog = null;
    this.logMapping?.unmap();
    this.logMapping = null;
    // A reset device starts over: the front-end gets a new area (GET_INFLIGHT_FD) for it.
    this.dropInflightArea();
    this.call(() => this.device.reset());
  }

  status(): WorkerStatus {
    return {
      running: this.rings.flatMap((r, i) => (r.queue && r.watcher ? [i] : [])),
      failed: this.failed,
      brokenQueues: this.rings.flatMap((r, i) => (r.queue?.broken ? [i] : [])),
      processBound: this.device.processBound?.() ?? null,
    };
  }

  /** What cannot move to a new instance in this process (a live plugin upgrade), or null. */
  instanceBound(): string | null {
    const d = this.device;
    return this.call(() => (d.instanceBound ? d.instanceBound() : (d.processBound?.() ?? null)));
  }

  /** A live plugin upgrade's old instance, rings stopped: every upgrade-only section's bytes. */
  upgradeCarry(): CarriedSection[] {
    return this.upgradeSections().map((s) => {
      const size = this.call(() => s.size());
      return { id: s.id, bytes: size === 0 ? new Uint8Array(0) : this.sectionRead(s.id, 0, size).bytes };
    });
  }

  /** A live plugin upgrade's new instance, after its finish-load: the old one's upgrade-only sections. Answers a refusal or null. */
  upgradeTake(carried: CarriedSection[]): string | null {
    for (const c of carried) {
      this.sectionBeginLoad(c.id, c.bytes.length);
      if (c.bytes.length > 0) this.sectionWrite(c.id, 0, c.bytes);
      const why = this.sectionFinish(c.id);
      if (why !== null) return why;
    }
    return null;
  }

  /** Every ring's settings, fds and held requests, for a live upgrade (RingSnapshot). */
  ringSnapshot(): RingSnapshot[] {
    return this.rings.map((r, i) => {
      let held = 0;
      for (const req of this.held.values()) if (req.ring === i && req.state === ReqState.Held) held++;
      return {
        num: r.num,
        addr: r.addr,
        base: r.base ?? null,
        kickFd: r.kickFd,
        callFd: r.callFd,
        errFd: r.errFd,
        enabled: r.enabled,
        started: r.queue !== null,
        held,
      };
    });
  }

  close(): void {
    this.clearTimers();
    this.hooks.net?.close();
    for (const r of this.rings) this.stopWatching(r);
    this.executor.drain();
    this.executor.close();
    this.hooks.meter?.ioInFlight(0);
    this.dropRequests();
    this.memory.close();
    this.logMapping?.unmap();
    this.logMapping = null;
    this.dropInflightArea();
    this.device.close?.();
  }

  // --- device state (SET_DEVICE_STATE_FD) ------------------------------------------------

  /** Before a transfer: the identity to tag the state with, and rings that still run. */
  stateBegin(): StateBeginInfo {
    const started = this.rings.flatMap((r, i) => (r.queue ? [i] : []));
    const id = (this.device as { identity?: { name?: unknown; version?: unknown } }).identity;
    const name = typeof id?.name === 'string' ? id.name : this.device.info.name;
    const version = typeof id?.version === 'string' ? id.version : '0';
    const sections = this.workerSections().map((s) => ({ id: s.id, name: s.name, size: this.call(() => s.size()) }));
    return { started, name, version, sections };
  }

  /** Host-held resources the device exposes as state sections (see WorkerStateSection). */
  private workerSections(): WorkerStateSection[] {
    const fn = (this.device as { stateSections?: () => WorkerStateSection[] }).stateSections;
    return typeof fn === 'function' ? fn.call(this.device) : [];
  }

  /** Sections only a live plugin upgrade moves (VirtioDevice.upgradeSections). */
  private upgradeSections(): WorkerStateSection[] {
    const fn = this.device.upgradeSections;
    return typeof fn === 'function' ? fn.call(this.device) : [];
  }

  private section(id: number): WorkerStateSection {
    const s = this.workerSections().find((x) => x.id === id) ?? this.upgradeSections().find((x) => x.id === id);
    if (!s) throw new Error(`the device has no state section ${id}`);
    return s;
  }

  sectionRead(id: number, offset: number, size: number): StateReadResult {
    this.requireStopped('read its state');
    const s = this.section(id);
    const total = this.call(() => s.size());
    if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isInteger(size) || size < 1 || offset + size > total) {
      throw new Error(`section ${s.name}: read [${offset}, +${size}) is outside its ${total} bytes`);
    }
    const bytes = this.call(() => s.read(offset, size));
    if (!(bytes instanceof Uint8Array) || bytes.length !== size) throw new Error(`section ${s.name}: read returned the wrong number of bytes`);
    return { bytes: ownCopy(bytes), remaining: total - offset - size };
  }

  sectionBeginLoad(id: number, size: number): void {
    this.requireStopped('load state');
    const s = this.section(id);
    this.call(() => s.beginLoad(size));
  }

  sectionWrite(id: number, offset: number, chunk: Uint8Array): void {
    this.requireStopped('load state');
    const s = this.section(id);
    this.call(() => s.write(offset, chunk));
  }

  /** SAVE a whole worker section straight into a state file (section-fd.ts); returns the CRC continued from `crc`. */
  sectionToFile(id: number, fd: number, fileOffset: number, len: number, crc: number): number {
    this.requireStopped('read its state');
    const s = this.section(id);
    const total = this.call(() => s.size());
    if (len !== total) throw new Error(`section ${s.name}: ${len} bytes asked for, it has ${total}`);
    return copySectionToFile(s, fd, fileOffset, len, crc, (fn) => this.call(fn));
  }

  /** LOAD a whole worker section straight from a state file (after sectionBeginLoad); returns the CRC continued from `crc`. */
  sectionFromFile(id: number, fd: number, fileOffset: number, len: number, crc: number): number {
    this.requireStopped('load state');
    return copyFileToSection(this.section(id), fd, fileOffset, len, crc, (fn) => this.call(fn));
  }

  sectionFinish(id: number): string | null {
    const s = this.section(id);
    return this.call(() => s.finish());
  }

  sectionAbort(id: number): void {
    const s = this.section(id);
    this.call(() => s.abort());
  }

  /**
   * One chunk of the device's state, copied into a fresh buffer that can be transferred. The
   * device is asked for it in pieces of at most STATE_CALL_BYTES, one call (and one deadline)
   * each.
   */
  stateRead(offset: number, size: number): StateReadResult {
    if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isInteger(size) || size < 1) {
      throw new Error(`state read [${offset}, +${size}): bad arguments`);
    }
    this.requireStopped('read its state');
    const pieces: Uint8Array[] = [];
    let got = 0;
    let remaining = 0;
    do {
      const at = offset + got;
      const n = Math.min(STATE_CALL_BYTES, size - got);
      const chunk = this.call(() => this.device.getState(at, n));
      const bytes = chunk?.bytes;
      remaining = chunk?.remaining;
      if (!(bytes instanceof Uint8Array) || bytes.length > n || !Number.isSafeInteger(remaining) || remaining < 0) {
        throw this.deviceFault(`${this.device.info.name}: getState(${at}, ${n}) returned a malformed chunk`);
      }
      if (bytes.length < n && remaining > 0) {
        throw this.deviceFault(`${this.device.info.name}: getState(${at}, ${n}) returned ${bytes.length} bytes with ${remaining} still remaining`);
      }
      pieces.push(ownCopy(bytes));
      got += bytes.length;
    } while (got < size && remaining > 0);
    if (pieces.length === 1) return { bytes: pieces[0], remaining };
    const bytes = new Uint8Array(got);
    for (let o = 0, i = 0; i < pieces.length; o += pieces[i].length, i++) bytes.set(pieces[i], o);
    return { bytes, remaining };
  }

  /** State bytes into the device, in calls of at most STATE_CALL_BYTES (one deadline each). */
  stateWrite(offset: number, chunk: Uint8Array): void {
    this.requireStopped('load state');
    if (!(chunk instanceof Uint8Array)) throw new Error('state write without bytes');
    for (let at = 0; at < chunk.length || at === 0; at += STATE_CALL_BYTES) {
      const piece = chunk.subarray(at, at + STATE_CALL_BYTES);
      this.call(() => this.device.setState(offset + at, piece));
      if (chunk.length === 0) break;
    }
  }

  stateFinish(): string | null {
    this.requireStopped('load state');
    let err: string | null;
    try {
      err = this.call(() => this.device.finishLoad());
    } finally {
      // No answers follow a load: what it closed goes now.
      this.backings.endRound();
    }
    if (err !== null && typeof err !== 'string') throw this.deviceFault(`${this.device.info.name}: finishLoad() returned ${typeof err}`);
    return err;
  }

  /** A load failed part-way: the device goes back to its just-created state. */
  stateAbort(): void {
    this.call(() => this.device.reset());
  }

  private requireStopped(what: string): void {
    const started = this.rings.flatMap((r, i) => (r.queue ? [i] : []));
    if (started.length > 0) {
      throw new Error(`cannot ${what} while ring(s) ${started.join(', ')} run: rings must be stopped with GET_VRING_BASE first`);
    }
  }

  // --- inflight area (SET_INFLIGHT_FD) -----------------------------------------------------

  /**
   * Maps [offset, offset+size) of fd as the inflight area of `numQueues` rings of `queueSize`
   * and checks every queue's region; a region that fails refuses the whole area (nothing is
   * kept, so the rings start empty). Rings must be stopped: a running queue records into the
   * area it started with.
   */
  setInflight(fd: number, size: number, offset: number, numQueues: number, queueSize: number): void {
    this.requireStopped('set the inflight area');
    // Whatever happens below, an area set before is not used again: a refused one means the
    // front-end's idea of what is in flight cannot be trusted.
    this.dropInflightArea();
    if (!Number.isInteger(numQueues) || numQueues < 1 || numQueues > this.rings.length) {
      throw new InflightAreaError(`inflight area for ${numQueues} queue(s): this device has ${this.rings.length}`);
    }
    // The front-end acks features before it asks for the area (QEMU: vhost_dev_prepare_inflight),
    // so the ring layout, and with it the region format, is known here.
    const packed = this.packed;
    if (!isValidRingSize(packed, queueSize)) {
      throw new InflightAreaError(`inflight area queue size ${queueSize} is not ${packed ? 'an integer' : 'a power of two'} in [1, 32768]`);
    }
    const regionBytes = packed ? packedInflightRegionBytes : splitInflightRegionBytes;
    const need = numQueues * regionBytes(queueSize);
    if (!Number.isSafeInteger(size) || size < need || !Number.isSafeInteger(offset) || offset < 0) {
      throw new InflightAreaError(`inflight area [${offset}, +${size}) is too small: ${numQueues} ${packed ? 'packed' : 'split'} queue(s) of ${queueSize} need ${need} bytes`);
    }
    // The regions may track more descriptors than the front-end's queue size says: QEMU 10's
    // vhost-user-blk asks for an area for its queue-size (128) and then runs rings of 1024, so
    // the area GET_INFLIGHT_FD makes is sized for the device's largest ring. Each region's
    // desc_num says how many it tracks; the regions sit back to back, size / numQueues apart.
    const stride = size / numQueues;
    if (!Number.isInteger(stride) || stride % 8 !== 0 || stride > regionBytes(32768)) {
      throw new InflightAreaError(`inflight area of ${size} bytes does not split into ${numQueues} ${packed ? 'packed' : 'split'} queue region(s) of at most ${regionBytes(32768)} bytes`);
    }
    const { backing, mapping } = mapFdRange(fd, size, offset, true);
    try {
      const bytes = new Uint8Array(backing.window(0, size));
      const head = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
      let descNum = head.getUint16(INFLIGHT_DESC_NUM_OFFSET, true);
      // All zeros (version 0, desc_num 0): a fresh area the front-end made itself, for rings of
      // the queue size it names; the ring start fills the header in.
      if (descNum === 0 && head.getUint16(INFLIGHT_VERSION_OFFSET, true) === 0) descNum = queueSize;
      if (descNum < queueSize) throw new InflightAreaError(`queue 0: inflight region tracks ${descNum} descriptors, fewer than the rings' ${queueSize}`);
      if (regionBytes(descNum) > stride) {
        throw new InflightAreaError(`queue 0: inflight region tracks ${descNum} descriptors, which need ${regionBytes(descNum)} bytes, but the regions are ${stride} bytes apart`);
      }
      const area: InflightArea = { mapping, bytes, numQueues, descNum, stride, packed };
      for (let q = 0; q < numQueues; q++) this.inflightRegion(area, q).check();
      this.inflightArea = area;
    } catch (e) {
      mapping.unmap();
      throw e;
    }
  }

  private inflightRegion(area: InflightArea, q: number): SplitInflightRegion | PackedInflightRegion {
    const bytes = area.bytes.subarray(q * area.stride, (q + 1) * area.stride);
    return area.packed ? new PackedInflightRegion(bytes, area.descNum, q) : new SplitInflightRegion(bytes, area.descNum, q);
  }

  private dropInflightArea(): void {
    this.inflightArea?.mapping.unmap();
    this.inflightArea = null;
  }

  /**
   * A ring starting with an inflight area: recover its region and take back what was in flight
   * (resubmitted by the caller before anything new). A region that cannot be used is refused
   * with the reason logged: the ring then starts empty, untracked, instead of resubmitting
   * garbage.
   */
  private restoreInflight(index: number, r: Vring, q: DeviceQueue): DescriptorChain[] {
    const area = this.inflightArea;
    if (area === null) return [];
    let why: string | null = null;
    if (index >= area.numQueues) why = `the area covers ${area.numQueues} queue(s)`;
    else if (area.packed !== q instanceof PackedQueue) why = `the area was set for ${area.packed ? 'packed' : 'split'} rings, this ring is ${area.packed ? 'split' : 'packed'}`;
    else if (r.num > area.descNum) why = `the area tracks ${area.descNum} descriptors per queue, this ring has ${r.num}`;
    if (why === null) {
      try {
        const region = this.inflightRegion(area, index);
        if (q instanceof PackedQueue) return this.restorePacked(index, r, q, region as PackedInflightRegion);
        const { chains, recovery } = (q as SplitQueue).restoreInflight(region as SplitInflightRegion);
        if (recovery.clearedLastBatch > 0) this.log.info(`ring ${index}: finished an interrupted used-ring update (${recovery.clearedLastBatch} request(s) had completed)`);
        if (chains.length > 0) this.log.info(`ring ${index}: resubmitting ${chains.length} in-flight request(s) from the inflight area, oldest first`);
        if (recovery.nextAvail !== null && r.base !== undefined && recovery.nextAvail !== r.base) {
          this.log.info(`ring ${index}: continuing at avail index ${recovery.nextAvail} (used idx + in flight), not the front-end's base ${r.base}`);
        }
        return chains;
      } catch (e) {
        if (!(e instanceof InflightAreaError)) throw e;
        why = e.message;
      }
    }
    this.log.error(`ring ${index}: inflight area not used: ${why}; the ring starts without resubmitting anything and without inflight tracking`);
    return [];
  }

  /** restoreInflight for a packed ring (its recovery says other things). */
  private restorePacked(index: number, r: Vring, q: PackedQueue, region: PackedInflightRegion): DescriptorChain[] {
    const before = r.base;
    const { chains, recovery } = q.restoreInflight(region);
    if (recovery.committedPush) this.log.info(`ring ${index}: finished an interrupted used-descriptor update (that request had completed)`);
    else if (recovery.rolledBack) this.log.info(`ring ${index}: rolled back an interrupted inflight-area update`);
    if (chains.length > 0) this.log.info(`ring ${index}: resubmitting ${chains.length} in-flight request(s) from the inflight area, oldest first`);
    if (recovery.usedIdx !== null && before !== undefined && q.vringBase !== before) {
      this.log.info(`ring ${index}: continuing at packed vring base 0x${q.vringBase.toString(16)} (the area's used index + in flight), not the front-end's 0x${before.toString(16)}`);
    }
    return chains;
  }

  /** Hands the chains restoreInflight took back to the device, in their order, before the ring drains. */
  private resubmit(index: number, r: Vring, q: DeviceQueue, chains: DescriptorChain[]): void {
    try {
      for (let at = 0; at < chains.length; at += this.maxBatch) {
        const batch = chains.slice(at, at + this.maxBatch).map((c) => this.newReq(index, r, q, c));
        if (!this.runBatch(batch)) return;
      }
    } catch (e) {
      this.batchFailed(index, e);
    }
  }

  /**
   * One handle() call for a ring batch (plus the io-failed events waiting), its answers checked
   * and carried out, then one notification per ring that completed something. False when a
   * contained memory fault halted every ring.
   */
  private runBatch(batch: Req[], notify = true): boolean {
    if (batch.length > 0) this.hooks.meter?.batch();
    this.inBatch++;
    try {
      this.handleRound(batch);
      for (let round = 0; this.pendingEvents.length > 0 && round < MAX_FAILURE_ROUNDS && !this.failed; round++) this.handleRound([]);
    } finally {
      this.inBatch--;
    }
    if (this.pendingEvents.length > 0) this.scheduleFlush();
    this.hooks.meter?.ioInFlight(this.executor.inflight);
    // Zero pages stood in for a shrunk file: what the batch read or wrote is not what the
    // guest has, so the guest is not told about it.
    if (this.checkMemoryFaults()) return false;
    if (notify) this.notifyTouched();
    return true;
  }

  /** A batch threw: a guest's ring fault breaks that ring, anything else fails the device. */
  private batchFailed(index: number, e: unknown): void {
    if (this.checkMemoryFaults()) return;
    if (e instanceof QueueFault) {
      const ring = this.rings[e.queue] ?? this.rings[index];
      this.breakRing(this.rings[e.queue] ? e.queue : index, ring, e.message);
    } else if (!this.failed) this.fail(errorText(e));
  }

  private newReq(ring: number, r: Vring, q: DeviceQueue, chain: DescriptorChain): Req {
    // No request alive: from this one on, until the table changes, none is stale (rebindStale).
    if (this.freeIds.length === this.reqs.length) this.freshGen = this.memory.generation;
    const id = this.freeIds.length > 0 ? this.freeIds.pop()! : this.reqs.length;
    const req: Req = { id, ring, gen: r.gen, queue: q, chain, state: ReqState.Due, popped: this.hooks.meter?.popped(chain.readableLen) ?? 0, answer: null, dueRound: 0, memGen: this.memory.generation, readRanges: null };
    this.reqs[id] = req;
    return req;
  }

  private freeReq(req: Req): void {
    if (this.reqs[req.id] !== req) return;
    this.reqs[req.id] = undefined;
    this.freeIds.push(req.id);
    if (this.held.size > 0) this.held.delete(req.id);
    this.hooks.meter?.released();
  }

  /** Forgets every request (reset, close): the rings that held them are dropped too. */
  private dropRequests(): void {
    this.reqs = [];
    this.freeIds = [];
    this.held.clear();
    this.pendingEvents = [];
    this.hooks.meter?.releasedAll();
  }

  /**
   * One handle() call: the waiting io-failed events and `fresh` requests go in, the actions
   * come back, are checked as a whole (a violation fails the device, nothing of the batch is
   * written), and are carried out: holds kept, answers turned into I/O.
   */
  private handleRound(fresh: Req[]): void {
    const events: DeviceEvent[] = this.pendingEvents;
    this.pendingEvents = [];
    // Timers that fired and frames that wait go with whatever else this call carries.
    let frames: RxFrame[] = NO_FRAMES;
    if (this.running) {
      for (const token of this.firedTimers) events.push({ kind: 'timer', token });
      this.firedTimers = [];
      const net = this.hooks.net;
      if (net && net.pending > 0) {
        frames = net.take(MAX_FRAMES_PER_CALL);
        const prefixLen = this.device.info.prefixLen;
        for (let id = 0; id < frames.length; id++) {
          const f = frames[id];
          const len = f.bytes.length;
          events.push({ kind: 'frame', frame: { id, network: f.network, fromPort: f.fromPort, len, prefix: f.bytes.subarray(0, Math.min(len, prefixLen)) } });
        }
      }
    }
    try {
      this.runRound(fresh, events, frames);
    } finally {
      // What the call unregistered (an fs file closed) goes only now that its answers started.
      this.backings.endRound();
    }
  }

  private runRound(fresh: Req[], events: DeviceEvent[], frames: RxFrame[]): void {
    const due = this.due;
    due.begin(this.reqs);
    for (let i = 0; i < events.length; i++) {
      const ev = events[i];
      if (ev.kind !== 'io-failed') continue;
      const req = this.reqs[ev.id]!;
      req.state = ReqState.Due;
      due.add(req);
    }
    const prefixLen = this.device.info.prefixLen;
    for (let i = 0; i < fresh.length; i++) {
      const req = fresh[i];
      const c = req.chain;
      const n = Math.min(c.readableLen, prefixLen);
      // A view of the first buffer when it holds the whole prefix (the usual case: one header
      // descriptor); otherwise the prefix alone is gathered. Never the payload.
      // A header descriptor of exactly the prefix (blk's 16 bytes) is handed over as it is: no view.
      const first = n === 0 ? EMPTY : c.readable[0];
      const prefix = n === 0 ? EMPTY : first.length === n ? first : first.length > n ? first.subarray(0, n) : readChain(c, n);
      const ev: DeviceEvent = { kind: 'request', request: { id: req.id, queue: req.ring, prefix, readableLen: c.readableLen, writableLen: c.writableLen } };
      // A list of none yet (the usual round: no timers, failures or frames) is begun as a literal
      // holding an object: the empty lists it would be pushed onto come from several sites, some
      // still of small-integer elements, and a push that must change an array's elements kind
      // is not inlined (the worker called the push builtin once per request).
      if (events.length === 0) events = [ev];
      else events.push(ev);
      due.add(req);
    }
    if (events.length === 0) return;
    let actions: DeviceAction[];
    try {
      actions = this.callHandle(events);
    } catch (e) {
      if (frames.length > 0) this.hooks.net!.delivered(0, 0, frames.length);
      throw e;
    }
    const ctx: CheckContext = {
      due,
      held: this.heldView(),
      backing: this.backingAt,
      frameLens: frames.length === 0 ? NO_LENS : frames.map((f) => f.bytes.length),
      networkMtus: this.hooks.net?.mtus ?? NO_LENS,
      timersFree: MAX_TIMERS - this.timers.size,
    };
    const violation = checkActions(actions, ctx);
    if (violation !== null) {
      if (frames.length > 0) this.hooks.net!.delivered(0, 0, frames.length);
      throw new DeviceError(`${this.device.info.name}: handle() returned an answer the host refuses: ${describeViolation(violation, actions)}; nothing of the batch was carried out`);
    }
    this.rebindStale(actions);
    let sends: TxFrame[] | null = null;
    for (const a of actions) {
      if (a.kind === 'hold') {
        const req = this.reqs[a.id]!;
        if (req.state !== ReqState.Orphan) req.state = ReqState.Held;
        this.held.set(a.id, req);
      } else if (a.kind === 'send') {
        // A request held when its ring stopped is the front-end's again: nothing of it is sent.
        if (this.reqs[a.send.request]!.state !== ReqState.Orphan) (sends ??= []).push(this.txFrame(a.send));
      } else if (a.kind === 'wake-after') {
        this.arm(a.nanoseconds, a.token);
      }
    }
    // Sent bytes are copied out of the guest's buffers before any answer can complete their request.
    if (sends !== null) this.hooks.net?.send(sends);
    const read = frames.length > 0 ? new Uint8Array(frames.length) : null;
    for (const a of actions) if (a.kind === 'answer') this.start(this.reqs[a.answer.id]!, read === null ? a.answer : withFrames(a.answer, frames, read));
    if (read !== null) {
      let n = 0;
      let bytes = 0;
      for (let i = 0; i < read.length; i++) {
        if (read[i] === 0) continue;
        n++;
        bytes += frames[i].bytes.length;
      }
      this.hooks.net!.delivered(n, bytes, frames.length - n);
    }
  }

  /**
   * Answers and sends to requests popped before the memory table last changed: their buffers
   * where their guest addresses are now, or the device fails before anything of the batch is
   * carried out (a reply that cannot land must not be reported as written).
   */
  private rebindStale(actions: readonly DeviceAction[]): void {
    const gen = this.memory.generation;
    // Every request alive was popped under this table (freshGen): none can be stale.
    if (gen === this.freshGen) return;
    for (let i = 0; i < actions.length; i++) {
      const a = actions[i];
      const id = a.kind === 'answer' ? a.answer.id : a.kind === 'send' ? a.send.request : -1;
      if (id < 0) continue;
      const req = this.reqs[id]!;
      if (req.memGen === gen || req.state === ReqState.Orphan) continue;
      // Only these read the request's readable bytes: a transfer always goes from them to a
      // backing (a write's payload; WIT `transfer`), a send from them to the switch. A read's
      // data comes in backing-read pieces, into writable buffers: its header may be gone.
      const reads = a.kind === 'send' || (a.kind === 'answer' && a.answer.transfers.length > 0);
      const why = rebindChain(this.memory, req.chain, req.readRanges, reads);
      if (why !== null) throw this.deviceFault(`request ${id} (descriptor head ${req.chain.head}) on ring ${req.ring}: ${why}`);
      // Readable views left as they were (not read by this action) are rebound by a later one.
      if (reads || req.chain.readable.length === 0) req.memGen = gen;
    }
  }

  /** A checked send: its bytes, read from the request's readable buffers when the switch takes them. */
  private txFrame(s: Send): TxFrame {
    const readable = this.reqs[s.request]!.chain.readable;
    return {
      network: s.network,
      to: s.to ?? FLOOD,
      len: s.len,
      fill: (into) => {
        let at = 0;
        for (const v of sliceViews(readable, s.source, s.len)) {
          into.set(v, at);
          at += v.length;
        }
      },
    };
  }


  /** Requests held earlier, as the checks see them (orphans too: the device may still answer). */
  private heldView(): AnswerableTable {
    if (this.held.size === 0) return EMPTY_MAP;
    const m = new Map<number, Answerable>();
    for (const [id, req] of this.held) m.set(id, req.chain);
    return m;
  }

  /** call(() => device.handle(...)) without a closure per batch: the same bracket and failure rule. */
  private callHandle(events: DeviceEvent[]): DeviceAction[] {
    this.hooks.enterDevice(WatchdogPhase.call);
    try {
      return this.device.handle(events);
    } catch (e) {
      this.deviceThrew(e);
      throw new DeviceError(`${this.device.info.name}: handle() failed: ${errorText(e)}`);
    } finally {
      this.hooks.leaveDevice();
      // Counted with the call's end (leaveDevice), as every call is: a call the watchdog cut short counts in neither.
      this.hooks.meter?.handleCall();
    }
  }

  /** A checked answer: its transfers, ops and backing reads go to the executor as guest-memory views. */
  private start(req: Req, answer: Answer): void {
    if (this.held.size > 0) this.held.delete(req.id);
    if (req.state === ReqState.Orphan) {
      this.freeReq(req);
      return;
    }
    req.state = ReqState.Io;
    const c = req.chain;
    // Most answers make one op (or none): `more` starts as a one-element literal, not an empty
    // array grown on its first push.
    let ops: IoOp[] = NO_OPS;
    const transfers = answer.transfers;
    for (let i = 0; i < transfers.length; i++) {
      const t = transfers[i];
      if (t.to.len === 0) continue;
      const before = this.backings.get(t.to.backing)?.beforeWrite;
      const no = before === undefined ? 0 : before();
      if (no !== 0) {
        // Fails as a failed write would: io-failed, and the plugin answers the guest's request.
        req.answer = answer;
        this.completed(req, answer, { errno: no, lastReadBytes: 0 });
        return;
      }
      ops = more(ops, { kind: 'write', backing: t.to.backing, offset: t.to.offset, from: sliceViews(c.readable, t.source, t.to.len) });
    }
    const bops = answer.ops;
    for (let i = 0; i < bops.length; i++) {
      const o = bops[i];
      ops = more(ops, o.kind === 'flush' ? { kind: 'flush', backing: o.backing } : { kind: o.kind, backing: o.backing, offset: o.offset, len: o.len });
    }
    let at = 0;
    const reply = answer.reply;
    for (let i = 0; i < reply.length; i++) {
      const p = reply[i];
      if (p.kind === 'backing-read') {
        if (p.extent.len > 0) ops = more(ops, { kind: 'read', backing: p.extent.backing, offset: p.extent.offset, into: sliceViews(c.writable, at, p.extent.len) });
        at += p.extent.len;
      } else at += p.kind === 'bytes' ? p.bytes.length : p.kind === 'frame-read' ? p.slice.len : p.len;
    }
    req.answer = answer;
    this.executor.submit(ops, answer.barrier, this.ioDone, req);
  }

  /** The executor's `done` for every request (its token): one function, not a closure per request. */
  private readonly ioDone = (result: IoResult, req: Req): void => this.completed(req, req.answer!, result);

  /** The executor is done with a request's I/O: reply written and used ring, or an io-failed event. */
  private completed(req: Req, answer: Answer, result: IoResult): void {
    if (this.reqs[req.id] !== req || req.state !== ReqState.Io) return; // dropped by a reset meanwhile
    if (this.memoryFaulted !== null) return;
    if (result.errno !== 0) {
      req.state = ReqState.Failed;
      this.pendingEvents.push({ kind: 'io-failed', id: req.id, errno: result.errno });
      this.scheduleFlush();
      return;
    }
    const r = this.rings[req.ring];
    if (r.gen !== req.gen || r.queue !== req.queue) {
      this.freeReq(req); // its ring stopped or reset: the front-end took the ring back
      return;
    }
    try {
      const q = req.queue;
      const c = req.chain;
      let at = 0;
      let used = 0;
      const reply = answer.reply;
      for (let i = 0; i < reply.length; i++) {
        const p = reply[i];
        switch (p.kind) {
          case 'bytes':
            // Literal pieces are small (headers, status bytes): copied into the chain.
            if (p.bytes.length > 0 && q.writeChain(c, p.bytes, at) !== p.bytes.length) throw this.replyLost(req, at, p.bytes.length);
            at += p.bytes.length;
            break;
          case 'zeroes':
            if (p.len > 0 && q.zeroChain(c, at, p.len) !== p.len) throw this.replyLost(req, at, p.len);
            at += p.len;
            break;
          case 'skip':
            at += p.len;
            break;
          case 'backing-read':
            at += p.extent.len;
            break;
        }
      }
      used = at;
      const last = reply.length > 0 ? reply[reply.length - 1] : undefined;
      if (last?.kind === 'backing-read' && result.lastReadBytes < last.extent.len) {
        // End of file inside the last read: the used length stops where the data does.
        used = at - (last.extent.len - result.lastReadBytes);
        if (answer.lengthAt !== null && answer.lengthAt !== undefined) {
          const le = new Uint8Array(4);
          new DataView(le.buffer).setUint32(0, used, true);
          q.writeChain(c, le, answer.lengthAt);
        }
      }
      this.freeReq(req);
      this.hooks.meter?.completed(req.popped, used);
      q.pushUsed(c.head, used);
      r.touched = true;
    } catch (e) {
      if (this.inBatch > 0) throw e;
      this.batchFailed(req.ring, e);
      return;
    }
    if (this.inBatch === 0) this.scheduleFlush();
  }

  /**
   * A reply piece landed short: a writable view went dead under the request (the checks made
   * sure every piece fits the chain). Never reported as written: the device fails.
   */
  private replyLost(req: Req, at: number, len: number): DeviceError {
    let gpa = -1;
    let skip = at;
    // Taken before the table change that unmapped the views (keepRequestRanges), or found now.
    for (const r of req.chain.rangesNow() ?? []) {
      if (skip < r.len) {
        gpa = r.gpa + skip;
        break;
      }
      skip -= r.len;
    }
    return this.deviceFault(
      `request ${req.id} (descriptor head ${req.chain.head}) on ring ${req.ring}: ${len} reply bytes at offset ${at} (guest address ${gpa < 0 ? 'unknown' : hex(gpa)}) ` +
        `could not be written: that guest memory is no longer mapped`,
    );
  }

  /** Completions outside a batch (an asynchronous executor): notify and hand failures back once the reaping is done. */
  private scheduleFlush(): void {
    if (this.inBatch > 0 || this.flushScheduled) return;
    this.flushScheduled = true;
    queueMicrotask(() => {
      this.flushScheduled = false;
      this.hooks.meter?.ioInFlight(this.executor.inflight);
      if (this.memoryFaulted !== null) return;
      try {
        if (this.pendingEvents.length > 0 && !this.failed) {
          this.inBatch++;
          try {
            for (let round = 0; this.pendingEvents.length > 0 && round < MAX_FAILURE_ROUNDS && !this.failed; round++) this.handleRound([]);
          } finally {
            this.inBatch--;
          }
        }
        if (this.checkMemoryFaults()) return;
        this.notifyTouched();
      } catch (e) {
        this.batchFailed(-1, e);
      }
      if (this.pendingEvents.length > 0 && !this.failed) this.scheduleFlush();
    });
  }

  /** One notification decision per ring that completed something since the last one. */
  private notifyTouched(): void {
    for (let i = 0; i < this.rings.length; i++) {
      const r = this.rings[i];
      if (!r.touched) continue;
      r.touched = false;
      if (r.queue) this.countOvertaken(i, r, r.queue);
      if (r.queue && !r.queue.broken) this.notify(i, r, r.queue);
    }
  }

  /**
   * Moves the queue's new out-of-order completions into the meter: one comparison per ring and
   * batch, the count itself kept by the queue (nothing per request here).
   */
  private countOvertaken(i: number, r: Vring, q: DeviceQueue): void {
    const n = q.overtaken;
    if (n === r.overtakenSeen) return;
    if (r.overtakenSeen === 0) this.log.debug(`ring ${i}: first out-of-order completion since the ring started (a request completed while one made available before it was still in flight)`);
    this.hooks.meter?.outOfOrder(n - r.overtakenSeen);
    r.overtakenSeen = n;
  }

  /**
   * Before a ring stops or guest memory is unmapped: everything answered completes, and failed
   * I/O gets its second answer (a few rounds at most), so nothing the device answered is left
   * half done.
   */
  private settle(): void {
    this.executor.drain();
    this.hooks.meter?.ioInFlight(this.executor.inflight);
    if (this.failed || this.memoryFaulted) return;
    try {
      this.inBatch++;
      try {
        // Fired timers and woken waits too (stopWaits above): their answers belong before the base.
        for (let round = 0; (this.pendingEvents.length > 0 || (this.running && this.firedTimers.length > 0)) && round < MAX_FAILURE_ROUNDS && !this.failed; round++) {
          this.handleRound([]);
          this.executor.drain();
        }
      } finally {
        this.inBatch--;
      }
      if (!this.checkMemoryFaults()) this.notifyTouched();
    } catch (e) {
      this.batchFailed(-1, e);
    }
  }

  // --- dirty log (SET_LOG_BASE, VHOST_F_LOG_ALL) -------------------------------------------

  /** Maps [offset, offset+size) of fd as the log; the previous area is unmapped. */
  setLogBase(fd: number, size: number, offset: number): void {
    if (!Number.isSafeInteger(size) || size <= 0 || !Number.isSafeInteger(offset) || offset < 0) {
      throw new Error(`log area [${offset}, +${size}) is not a valid range`);
    }
    const { backing, mapping } = mapFdRange(fd, size, offset, true);
    const log = new DirtyLog(backing, {
      onOutOfRange: (msg) => {
        if (log.outOfRange <= 3) this.log.warn(`${msg} (the front-end's log is smaller than guest memory)`);
      },
    });
    const old = this.logMapping;
    this.dirtyLog = log;
    this.logMapping = mapping;
    this.applyLog();
    old?.unmap();
  }

  setLogAll(on: boolean): void {
    this.logAll = on;
    this.applyLog();
  }

  logStatus(): LogStatus {
    return {
      mapped: this.dirtyLog !== null,
      size: this.dirtyLog?.size ?? 0,
      logging: this.activeLog() !== null,
      outOfRange: this.dirtyLog?.outOfRange ?? 0,
    };
  }

  private activeLog(): DirtyLog | null {
    return this.logAll ? this.dirtyLog : null;
  }

  private usedLogGpa(a: VringAddrMsg): number {
    return a.log ? a.logGuestAddr : this.memory.uvaToGpa(a.usedUserAddr);
  }

  private applyLog(): void {
    for (const r of this.rings) if (r.queue && r.addr) r.queue.setLog(this.activeLog(), this.usedLogGpa(r.addr));
  }

  private stopWatching(r: Vring): void {
    r.watcher?.close();
    r.watcher = null;
    if (r.throttleTimer !== null) clearTimeout(r.throttleTimer);
    r.throttleTimer = null;
    if (r.resume !== null) clearImmediate(r.resume);
    r.resume = null;
  }

  /**
   * The throttle says wait: the ring stops popping (its requests stay with the guest, which sees
   * back-pressure, not errors) and a timer drains it when the budget allows. Kicks meanwhile
   * find the timer armed and leave it be.
   */
  private holdBack(index: number, r: Vring, ms: number): void {
    if (r.throttleTimer !== null) return;
    r.throttleTimer = setTimeout(() => {
      r.throttleTimer = null;
      this.drain(index, r);
    }, Math.max(1, Math.ceil(ms)));
  }

  /** VIRTIO_F_RING_PACKED was acked: every ring of this device is packed. */
  private get packed(): boolean {
    return hasFeature(this.features, VirtioFeature.RING_PACKED);
  }

  /** The base of a ring the front-end never positioned: index 0, and for packed both wrap counters set. */
  private freshBase(): number {
    return this.packed ? PACKED_INITIAL_VRING_BASE : 0;
  }

  private maybeStart(index: number): void {
    const r = this.rings[index];
    if (r.kickFd === -1) return;
    // Without F_PROTOCOL_FEATURES a ring is enabled as soon as it has a kick fd (spec).
    if (!this.protocolFeatures) r.enabled = true;
    if (!r.enabled || this.failed || this.memoryFaulted) return;
    // One of the guest's rings runs here now (a warm-up's scratch ring runs inside asNewBuild).
    if (!this.newBuild) this.candidate = false;
    if (!r.queue) {
      if (r.num === 0 || r.addr === null) {
        throw new Error(`ring ${index} cannot start: ${r.num === 0 ? 'SET_VRING_NUM' : 'SET_VRING_ADDR'} was not sent`);
      }
      const a = r.addr;
      r.overtakenSeen = 0;
      r.queue = createDeviceQueue({
        index,
        packed: this.packed,
        memory: this.memory,
        size: r.num,
        descGpa: this.memory.uvaToGpa(a.descUserAddr),
        availGpa: this.memory.uvaToGpa(a.availUserAddr),
        usedGpa: this.memory.uvaToGpa(a.usedUserAddr),
        eventIdx: hasFeature(this.features, VirtioFeature.RING_EVENT_IDX),
        indirectDesc: hasFeature(this.features, VirtioFeature.RING_INDIRECT_DESC),
        vringBase: r.base ?? this.freshBase(),
        usedLogGpa: a.log ? a.logGuestAddr : undefined,
        log: this.activeLog(),
      });
      let resubmitted: DescriptorChain[] = [];
      try {
        resubmitted = this.restoreInflight(index, r, r.queue);
      } catch (e) {
        // A marked head whose descriptors are no valid chain: the guest's table, a guest fault.
        if (!(e instanceof QueueFault)) throw e;
        this.breakRing(index, r, e.message);
      }
      if (resubmitted.length > 0) this.resubmit(index, r, r.queue, resubmitted);
      // A ring that starts over an inflight area follows a back-end that died or handed the
      // device over, possibly between writing a used element and signalling it: the driver may
      // wait for a completion it was never told about. One call (a spurious one is harmless:
      // the driver reads its used ring) tells it.
      if (this.inflightArea !== null && !r.queue.broken) {
        try {
          this.signalCall(index, r);
        } catch (e) {
          this.breakRing(index, r, errorText(e));
        }
      }
    }
    if (r.kickFd !== null && r.watcher === null) {
      const fd = r.kickFd;
      r.watcher = native.watch(fd, 'r', (_readable, _writable, error) => {
        // Nothing thrown here may escape: it would kill the worker (and every ring with it)
        // for what is the front-end's fault on one ring.
        try {
          if (error) throw new Error('the kick fd reported an error (POLLERR)');
          native.eventfdRead(fd);
        } catch (e) {
          this.breakRing(index, r, `reading kick fd ${fd} failed: ${errorText(e)}`);
          return;
        }
        this.kicked();
        this.drain(index, r);
        this.pollRings();
      });
    }
    // Buffers may have been queued before the kick fd arrived (or while disabled).
    this.drain(index, r);
  }

  /**
   * After guest-memory accesses: did the fault guard contain a fault in one of our mappings?
   * Then the front-end shrank a file under us; report it once and halt everything.
   */
  private checkMemoryFaults(): boolean {
    if (this.memoryFaulted !== null) return true;
    const count = native.mappingFaultCount();
    if (count === this.seenFaults) return false;
    this.seenFaults = count; // another device's mapping may have faulted instead
    const region = this.memory.faultedRegion();
    const logFaults = this.dirtyLog?.faults() ?? 0;
    const inflightFaults = this.inflightArea?.mapping.faults() ?? 0;
    if (region === null && logFaults === 0 && inflightFaults === 0) return false;
    const reason =
      inflightFaults > 0 && region === null && logFaults === 0
        ? `front-end shrank the inflight area (${this.inflightArea!.bytes.byteLength} bytes) behind our back: the file behind it no longer covers it (${inflightFaults} page fault(s) contained)`
        : region !== null
        ? `front-end shrank memory region ${region.index} (GPA 0x${region.spec.guestPhysAddr.toString(16)}, size 0x${region.spec.size.toString(16)}) behind our back: ` +
          `the file behind it no longer covers the region (${region.faults} page fault(s) contained)`
        : `front-end shrank the dirty log area (${this.dirtyLog!.size} bytes) behind our back: the file behind it no longer covers it (${logFaults} page fault(s) contained)`;
    this.memoryFaulted = reason;
    for (const ring of this.rings) this.stopWatching(ring);
    this.log.error(`${reason}; halting every ring`);
    this.hooks.memoryFault(reason);
    return true;
  }

  /**
   * Processes everything available on a ring, in batches. The driver is notified when the ring
   * runs dry (before notifications are re-armed, so it can refill while we look once more), when
   * the drain stops early, and every NOTIFY_EVERY_BATCHES batches or NOTIFY_EVERY_REQUESTS
   * requests while the driver keeps the ring from running dry: never later than the end of this
   * turn of the event loop, and never without the driver's used_event / NO_INTERRUPT saying it
   * wants one (needsNotification judges the whole span since the last notification, so skipping
   * a check in between loses nothing). test/ring-notifications.test.ts holds it to that.
   * A drain that used up its turn (DRAIN_TURN_*) notifies and goes on after the event loop's
   * turn (resumeDrain); test/drain-fairness.test.ts holds it to that.
   */
  private drain(index: number, r: Vring): void {
    // This drain takes over from one that was waiting for its next turn.
    if (r.resume !== null) {
      clearImmediate(r.resume);
      r.resume = null;
    }
    const q = r.queue;
    if (!q || q.broken || this.failed || this.memoryFaulted) return;
    let unnotified = 0;
    let unnotifiedReqs = 0;
    let turnBatches = 0;
    let turnReqs = 0;
    try {
      for (;;) {
        q.disableNotifications();
        const batch: Req[] = [];
        let chain: DescriptorChain | null;
        const throttle = this.hooks.throttle;
        // Auto-converge's bucket is unlimited unless a pre-copy is being outrun: only then charged.
        const converge = this.hooks.converge?.limited ? this.hooks.converge : undefined;
        let wait = 0;
        while (batch.length < this.maxBatch) {
          if (throttle && (wait = throttle.waitMs()) > 0) break;
          if (converge && (wait = converge.waitMs()) > 0) break;
          if ((chain = q.pop()) === null) break;
          throttle?.take(chain.readableLen + chain.writableLen);
          converge?.take(chain.readableLen);
          batch.push(this.newReq(index, r, q, chain));
        }
        if (wait > 0) this.holdBack(index, r, wait);
        if (batch.length === 0) {
          if (this.checkMemoryFaults()) return;
          this.notifyTouched();
          // Held back: notifications stay off, the timer comes back for what is queued.
          if (wait > 0) return;
          if (q.enableNotifications()) continue;
          return;
        }
        if (!this.runBatch(batch, false)) return;
        unnotifiedReqs += batch.length;
        if (wait > 0 || ++unnotified >= NOTIFY_EVERY_BATCHES || unnotifiedReqs >= NOTIFY_EVERY_REQUESTS) {
          unnotified = unnotifiedReqs = 0;
          this.notifyTouched();
          if (wait > 0) return;
        }
        turnReqs += batch.length;
        if (++turnBatches >= DRAIN_TURN_BATCHES || turnReqs >= DRAIN_TURN_REQUESTS) {
          // The turn is used up with the ring maybe not dry: what completed is told now, kicks
          // stay suppressed (the driver need not kick a ring we come back to), and the rest
          // waits for the event loop's turn.
          this.notifyTouched();
          this.resumeDrain(index, r);
          return;
        }
      }
    } catch (e) {
      this.batchFailed(index, e);
      // Batches before the one that threw completed requests (maybe on other rings too): rings
      // still running are told now, as they would have been after each batch.
      if (this.failed || this.memoryFaulted !== null) return;
      try {
        this.notifyTouched();
      } catch (e2) {
        this.batchFailed(index, e2);
      }
    }
  }

  /**
   * Drains ring `index` again once the event loop had its turn. A stop, reset, disable or fault
   * of the ring (stopWatching) disarms it; a drain that starts meanwhile (a kick) takes over.
   */
  private resumeDrain(index: number, r: Vring): void {
    if (r.resume !== null) return;
    r.resume = setImmediate(() => {
      r.resume = null;
      this.drain(index, r);
      this.pollRings();
    });
  }

  /** A kick woke the worker: the wait since the last poll began tells the window how it did. */
  private kicked(): void {
    if (this.pollWindow === null || this.waitStart === 0) return;
    this.pollWindow.adjust(nowNs() - this.waitStart);
    this.waitStart = 0;
  }

  /** A ring the worker may poll: started, watched (a kick fd), intact, not held back by the throttle. */
  private pollable(r: Vring): r is Vring & { queue: DeviceQueue } {
    return r.queue !== null && !r.queue.broken && r.watcher !== null && r.throttleTimer === null;
  }

  /**
   * Adaptive polling, after a kick's drain and before the worker goes back to the event loop:
   * for up to the window, with the driver's kicks suppressed on every ring polled, look for new
   * chains and drain the ring that has them. When the window ends, kicks are re-enabled and
   * every ring re-checked before the worker blocks (a chain published in between would
   * otherwise wait for a kick the driver was told not to send). The spin runs in this worker's
   * thread, so its CPU time is the device's: metered (pollSpun) and held to the device's CPU share
   * as its long calls are (cpu-share.ts). A failed device, a
   * faulted memory table, a stopped ring or one the throttle holds back is never polled. The
   * executor's completion queue is not polled: with I/O in flight the worker does not spin.
   *
   * One call keeps the worker from its event loop for at most POLL_TURN_NS (plus the window and
   * the drains that began inside it): a guest that always publishes its next request within the
   * window would otherwise keep it here for good, and the main thread's messages (a ring stop,
   * an upgrade, a reset), the device's timers and the throttle's would never be served. When
   * the turn is over, kicks are asked for again and, if a ring has work, the rest of the poll
   * goes on after the event loop had its turn (setImmediate).
   */
  private pollRings(): void {
    const w = this.pollWindow;
    if (w === null || this.polling) return;
    this.polling = true;
    const turnEnd = nowNs() + POLL_TURN_NS;
    try {
      for (;;) {
        if (this.failed !== null || this.memoryFaulted !== null) return;
        const start = nowNs();
        let found = -1;
        // Work that only the event loop delivers (I/O completions of an asynchronous executor,
        // frames, timers, a scheduled flush) would wait out the spin: then no spin this time.
        if (w.ns > 0 && start < turnEnd && this.executor.inflight === 0 && !this.eventsScheduled && !this.flushScheduled) {
          for (let i = 0; i < this.rings.length; i++) this.pollRing(i, suppressKicks);
          const end = start + w.ns;
          do {
            for (let i = 0; i < this.rings.length && found < 0; i++) if (this.pollRing(i, hasWork)) found = i;
          } while (found < 0 && nowNs() < end);
          // CPU the device takes with no call running: the CPU-share governor counts it as its demand.
          this.hooks.meter?.pollSpun((nowNs() - start) / 1e9);
        }
        if (found < 0) {
          // Before blocking: kicks back on everywhere, and one more look. (Work found while
          // spinning leaves the other rings suppressed: the next pass ends here too.) A ring
          // that faults here breaks alone: the rings after it are still asked for kicks.
          for (let i = 0; i < this.rings.length; i++) if (this.pollRing(i, askForKicks) && found < 0) found = i;
          if (found < 0) {
            this.waitStart = start;
            return;
          }
          if (nowNs() >= turnEnd) {
            // The turn is over: the event loop first, then the ring that has work (its kick
            // may never come: the driver published it while told not to kick).
            this.resumePollSoon();
            return;
          }
        }
        w.adjust(nowNs() - start);
        this.drain(found, this.rings[found]);
      }
    } finally {
      this.polling = false;
    }
  }

  /** One ring's part of a poll, when the ring is pollable: a guest's fault there breaks that ring alone. */
  private pollRing(index: number, step: (q: DeviceQueue) => boolean): boolean {
    const r = this.rings[index];
    if (!this.pollable(r)) return false;
    try {
      return step(r.queue);
    } catch (e) {
      this.batchFailed(index, e);
      return false;
    }
  }

  /** pollRings again after the event loop's turn (its turn ran out with work on a ring). */
  private resumePollSoon(): void {
    if (this.pollResumeScheduled) return;
    this.pollResumeScheduled = true;
    setImmediate(() => {
      this.pollResumeScheduled = false;
      this.pollRings();
    });
  }

  private notify(index: number, r: Vring, q: DeviceQueue): void {
    if (!q.needsNotification()) return;
    this.signalCall(index, r);
  }

  /** Signals the ring's call fd (or the in-band call) whatever the driver's suppression says. */
  private signalCall(index: number, r: Vring): void {
    if (r.callFd === null) {
      this.hooks.inbandCall(index);
      return;
    }
    // Neither call blocks on a full counter (one means a notification is already pending:
    // dropping this one loses nothing). An O_NONBLOCK fd gets one write(2); a blocking one is
    // polled first (eventfdWrite), twice the syscalls. Still bracketed: a front-end that makes
    // its fd blocking after SET_VRING_CALL, or fills a blocking one between poll and write,
    // could make the write block, and the watchdog then fails this device only.
    this.hooks.enterDevice(WatchdogPhase.notify);
    try {
      if (r.callNonBlocking) native.eventfdSignal(r.callFd);
      else native.eventfdWrite(r.callFd);
    } catch (e) {
      throw new QueueFault(index, `signalling the call fd failed: ${errorText(e)}`);
    } finally {
      this.hooks.leaveDevice();
    }
  }

  private breakRing(index: number, r: Vring, reason: string): void {
    this.stopWatching(r);
    this.log.error(`ring ${index} is broken, the device needs a reset: ${reason}`);
    if (r.errFd !== null) {
      this.hooks.enterDevice(WatchdogPhase.notify);
      try {
        native.eventfdWrite(r.errFd);
      } catch (e) {
        this.log.warn(`ring ${index}: could not signal the error eventfd: ${errorText(e)}`);
      } finally {
        this.hooks.leaveDevice();
      }
    }
    this.hooks.ringBroken(index, reason);
  }

  /** The device broke its contract in what it returned: fail it, and hand back the error to throw. */
  private deviceFault(reason: string): DeviceError {
    this.fail(reason);
    return new DeviceError(reason);
  }

  private fail(reason: string): void {
    if (this.failed) return;
    this.failed = reason;
    for (const r of this.rings) this.stopWatching(r);
    if (this.newBuild || this.candidate) {
      // Nothing of the guest's ran here: the upgrade's caller refuses it with this reason, ends
      // this instance and resumes the old one, which serves on (host/session/upgrade.ts).
      this.log.error(`the new plugin build failed during the upgrade: ${reason}; nothing was halted, the old instance serves on`);
    } else {
      // The session logs the reason with NEEDS_RESET: a plugin's error text is logged once.
      this.log.error('device failed, every ring halted until the front-end resets it');
    }
    this.hooks.deviceFailed(reason);
  }

  /**
   * This instance is a live upgrade's new build until one of the guest's rings starts on it (the
   * old instance's rings restarting here) or the switch commits (`on` false: a thread none of
   * whose rings started, or a guest with no ring running, must not keep calling its later
   * failures the new build's while the old instance is gone): until then failures are the new
   * build's (see fail).
   */
  markUpgradeCandidate(on: boolean): void {
    this.candidate = on;
  }

  /**
   * Runs `fn` as a live upgrade's new instance before it owns any ring (its warm-up on scratch
   * rings, its load of the old instance's state): a failure there is the new build's alone.
   */
  asNewBuild<T>(fn: () => T): T {
    this.newBuild = true;
    let r: T;
    try {
      r = fn();
    } catch (e) {
      this.newBuild = false;
      throw e;
    }
    if (r instanceof Promise) return r.finally(() => (this.newBuild = false)) as T;
    this.newBuild = false;
    return r;
  }
}

/** vhost-user kick, call and err fds are eventfds; anything else could block or break the worker. */
function requireEventfd(fd: number, index: number, what: 'kick' | 'call' | 'err'): void {
  let kind: string;
  try {
    kind = native.fdKind(fd);
  } catch (e) {
    throw new Error(`ring ${index}: the ${what} fd cannot be checked: ${errorText(e)}`);
  }
  if (kind !== 'eventfd') {
    throw new Error(`ring ${index}: the ${what} fd is a ${kind}, not an eventfd; vhost-user ${what} fds must be eventfds (send one made with eventfd(2))`);
  }
}

function sameRingAddresses(a: VringAddrMsg, b: VringAddrMsg): boolean {
  return a.descUserAddr === b.descUserAddr && a.availUserAddr === b.availUserAddr && a.usedUserAddr === b.usedUserAddr;
}

const EMPTY_MAP: ReadonlyMap<number, Answerable> = new Map();
const NO_FRAMES: RxFrame[] = [];
const NO_LENS: readonly number[] = [];

/**
 * An answer whose frame-read pieces are views of the frames' bytes (no copy: the reply
 * writes them straight into the guest's buffers), marking in `read` which frames it reads.
 */
function withFrames(answer: Answer, frames: readonly RxFrame[], read: Uint8Array): Answer {
  let reply: Piece[] | null = null;
  for (let k = 0; k < answer.reply.length; k++) {
    const p = answer.reply[k];
    if (p.kind !== 'frame-read') continue;
    reply ??= answer.reply.slice();
    const { frame, offset, len } = p.slice;
    read[frame] = 1;
    reply[k] = { kind: 'bytes', bytes: frames[frame].bytes.subarray(offset, offset + len) };
  }
  return reply === null ? answer : { ...answer, reply };
}

/** The device's backing table (a plugin's: --storage and its fs files), or an empty one. */
function backingsOf(device: VirtioDevice): BackingTable {
  // Not instanceof: a device module run by the bundled host brings its own copy of the class.
  const t = (device as { backings?: { get?: unknown } }).backings;
  return t !== undefined && typeof t.get === 'function' ? (t as BackingTable) : new BackingTable();
}

/** An answer without I/O (frozen: executors only read their ops). */
const NO_OPS = Object.freeze([]) as unknown as IoOp[];

/** `list` with `op` appended: a fresh one-element array for the first. */
function more(list: IoOp[], op: IoOp): IoOp[] {
  if (list === NO_OPS) return [op];
  list.push(op);
  return list;
}

/** Views of bytes [offset, offset + len) of a chain's buffers, split where the buffers are (no copy). */
export function sliceViews(buffers: readonly Uint8Array[], offset: number, len: number): Uint8Array[] {
  // The usual case, one buffer holds it all: a one-element literal, not an empty array grown.
  const first = buffers.length > 0 ? buffers[0] : undefined;
  if (first !== undefined && len > 0 && offset + len <= first.length) return [offset === 0 && len === first.length ? first : first.subarray(offset, offset + len)];
  const out: Uint8Array[] = [];
  let skip = offset;
  let left = len;
  for (let i = 0; i < buffers.length; i++) {
    const b = buffers[i];
    if (left === 0) break;
    if (skip >= b.length) {
      skip -= b.length;
      continue;
    }
    const n = Math.min(b.length - skip, left);
    out.push(skip === 0 && n === b.length ? b : b.subarray(skip, skip + n));
    left -= n;
    skip = 0;
  }
  return out;
}

/**
 * The longest one pollRings call keeps its worker from the event loop before it lets the loop
 * run (the drains and the window begun before it ends come on top): twice the largest window.
 */
const POLL_TURN_NS = 2 * MAX_POLL_MAX_NS;

// pollRings' steps on one ring (made once: the spin allocates nothing).
const suppressKicks = (q: DeviceQueue): boolean => {
  q.suppressNotifications();
  return false;
};
const hasWork = (q: DeviceQueue): boolean => q.hasAvailable();
const askForKicks = (q: DeviceQueue): boolean => q.enableNotifications();

/** A monotonic clock in ns (performance.now's fraction is sub-microsecond; no BigInt per call in the spin). */
function nowNs(): number {
  return performance.now() * 1e6;
}
