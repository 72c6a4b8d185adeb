// Calls and messages between the session (main thread) and a device worker. Few and never per
// request: ring setup, fd hand-offs, config access, stop, state transfer. Fds cross as numbers:
// they are process-wide, and the main thread stays their owner (see worker-client.ts).

import type { LockCarryWire } from '../fs/lock-carry-wire.ts';
import type { FdCells } from './fd-ledger.ts';
import type { NetInit } from '../net/link.ts';
import type { DeviceInfo } from './device.ts';
import type { LogLevel } from '../log/logger.ts';
import type { SerializedError } from '../errors.ts';
import type { WarmUpResult } from './warm-up.ts';
import type { UpgradeInflight, UpgradeRingStart, UpgradeStopResult } from './upgrade-steps.ts';
import { op, type ApiOf, type RpcReply, type RpcRequest } from './typed-rpc.ts';

/** What a worker loads: a TypeScript/JS device module, or a WebAssembly plugin. */
export type DeviceSource =
  | { kind: 'module'; url: string; options?: Record<string, unknown> }
  | { kind: 'plugin'; path: string; options?: Record<string, unknown> };

/**
 * What a worker is doing while its watchdog slot is set; each has its own deadline.
 * - call: a call into device code (process, reset, state, config, ...): the call deadline.
 * - load: device code run while the device is built (a plugin's instantiation, identity, info):
 *   the load deadline (it includes compiling the plugin's core modules).
 * - prepare: host work before that (importing a module, transpiling a component): the start timeout.
 * - notify: a write to a front-end's call or err eventfd: the call deadline, counted only while
 *   the thread is not runnable (blocked in the write), never while it merely waits for a CPU.
 */
export const WatchdogPhase = { call: 1, load: 2, prepare: 3, notify: 4 } as const;
export type WatchdogPhase = (typeof WatchdogPhase)[keyof typeof WatchdogPhase];

/**
 * The watchdog slot is one Int32, so the main thread never reads a start time and a phase that
 * belong to different brackets: 0 when idle, else the phase in bits 28-30 and the start in bits
 * 0-27, as ms since the epoch modulo 2^28 (3 days: far beyond any deadline, and a worker may
 * run longer than an Int32 of milliseconds, 24 days, so elapsed time is taken modulo it too).
 */
export const WATCHDOG_MS_MASK = 2 ** 28 - 1;

/** Where the worker's thread id is in the watchdog slot (WorkerInit.watchdog). */
export const WATCHDOG_TID = 1;
export const WATCHDOG_SLOT_INTS = 2;

export function watchdogWord(phase: WatchdogPhase, msSinceEpoch: number): number {
  return (phase << 28) | (msSinceEpoch & WATCHDOG_MS_MASK);
}

/** The phase and the ms it has run, from a non-zero watchdog word. */
export function readWatchdogWord(word: number, msSinceEpoch: number): { phase: WatchdogPhase; ran: number } {
  return { phase: (word >>> 28) as WatchdogPhase, ran: (msSinceEpoch - (word & WATCHDOG_MS_MASK)) & WATCHDOG_MS_MASK };
}

/**
 * A worker asked only to transpile a plugin into the transpile cache (and check its world), not
 * to run it: a device that starts on connect has its plugin checked at add without its code
 * running, and transpiling (jco, seconds the first time) stays off the main thread.
 */
export interface PrepareRequest {
  prepareOnly: { path: string; cacheDir?: string };
}

export interface WorkerInit {
  source: DeviceSource;
  logLevel: LogLevel;
  /** The main thread's shared log-level cell (log/logger.ts), so a level changed later reaches the worker. */
  logLevelCell?: SharedArrayBuffer;
  /** Name for log lines ("blk0", the socket path, ...). */
  label: string;
  /**
   * Two Int32s over a SharedArrayBuffer: [0] what the worker is doing and since when
   * (watchdogWord), 0 when idle; [1] the worker's Linux thread id, 0 until it has written it.
   */
  watchdog: SharedArrayBuffer;
  epoch: number;
  /** This thread's per-request counters (host/metrics/request-meter.ts), kept by the device's slot. */
  meter?: SharedArrayBuffer;
  /** The device's I/O throttle cell (host/limits/token-bucket.ts), shared by its threads and its throttle group. */
  throttle?: SharedArrayBuffer;
  /** Pre-copy's auto-converge cell (host/migration/auto-converge.ts). */
  converge?: SharedArrayBuffer;
  /** --poll-max-ns (runner.ts's adaptive polling); absent: off. */
  pollMaxNs?: number;
  /** The device's mapped-reads stop cell (host/io/mapped-reads.ts), shared by its queue threads. */
  mappedReadsStop?: SharedArrayBuffer;
  /** The device's network ports (--network): its grants and its end of the link to the switch. */
  net?: NetInit;
}

export interface RegionMsg {
  guestPhysAddr: number;
  size: number;
  userspaceAddr: number;
  mmapOffset: number;
  fd: number;
}

export interface VringAddrMsg {
  descUserAddr: number;
  availUserAddr: number;
  usedUserAddr: number;
  /** VHOST_VRING_F_LOG was set: log used-ring writes against logGuestAddr. */
  log: boolean;
  logGuestAddr: number;
}

/**
 * Every call the session makes into a worker, with its signature: the one place an operation
 * is declared. DeviceWorker (worker-client.ts) gets a method per entry, and the worker's
 * WorkerOperations (worker.ts) must implement each one (see typed-rpc.ts).
 */
export const deviceWorkerOps = {
  readConfig: op<(offset: number, size: number) => Uint8Array>(),
  writeConfig: op<(offset: number, data: Uint8Array) => void>(),
  setFeatures: op<(features: bigint, protocolFeatures: boolean) => void>(),
  setMemTable: op<(regions: RegionMsg[], windowsNow?: boolean) => void>(),
  addMemRegion: op<(region: RegionMsg) => void>(),
  removeMemRegion: op<(guestPhysAddr: number, size: number, userspaceAddr: number) => void>(),
  ringNum: op<(index: number, num: number) => void>(),
  ringAddr: op<(index: number, addr: VringAddrMsg) => void>(),
  ringBase: op<(index: number, base: number) => void>(),
  /** fd null: the front-end said "no fd" (in-band kicks); likewise for call and err. */
  ringKick: op<(index: number, fd: number | null) => void>(),
  ringCall: op<(index: number, fd: number | null) => void>(),
  ringErr: op<(index: number, fd: number | null) => void>(),
  ringEnable: op<(index: number, enable: boolean) => void>(),
  ringInbandKick: op<(index: number) => void>(),
  /** GET_VRING_BASE: stops the ring; answers the next avail index to process. */
  ringStop: op<(index: number) => number>(),
  /** After the device failed, the worker first swaps in a fresh instance (see worker.ts). */
  reset: op<() => void>(),
  /**
   * Another queue thread of the device failed: fail this one too (every ring halted, the
   * instance replaced on reset), since a device fails as a whole. Answers whether it was running.
   */
  halt: op<(reason: string) => boolean>(),
  status: op<() => WorkerStatus>(),
  /**
   * A live upgrade's new instance, before the old one stops (warm-up.ts): its ring machinery run
   * once on a scratch ring with the features the front-end acked, then reset. Answers what it did.
   */
  warmUp: op<(features: bigint, protocolFeatures: boolean, rings: number[], ledger: FdCells) => WarmUpResult>(),
  /**
   * A live upgrade's new instance, first of all (true): until one of the guest's rings starts on
   * it, or the switch commits (false), a failure is the new build's (logged so: the old instance
   * keeps the device), not the device's.
   */
  upgradeCandidate: op<(on: boolean) => void>(),
  /** A live upgrade's stop on the old instance, one call (upgrade-steps.ts): pause, held check, stop, first state bytes. */
  upgradeStop: op<(pause: number[], stop: number[], stateBytes: number) => UpgradeStopResult>({
    transferResult: (r) => (r.state ? [r.state.bytes.buffer as ArrayBuffer] : []),
  }),
  /** A live upgrade's restart on the new instance, one call (upgrade-steps.ts): last state chunk, finish-load, rings. Answers a refusal or null. */
  upgradeStart: op<(offset: number, chunk: Uint8Array, rings: UpgradeRingStart[], inflight: UpgradeInflight | null, carried: CarriedSection[]) => string | null>({
    transferArgs: (_offset, chunk) =>
      chunk.byteOffset === 0 && chunk.byteLength === chunk.buffer.byteLength && chunk.buffer instanceof ArrayBuffer ? [chunk.buffer] : [],
  }),
  /** VirtioDevice.instanceBound (else processBound): what cannot move to a new instance now, or null. */
  instanceBound: op<() => string | null>(),
  /** Rings stopped: the device's upgrade-only sections (a share's locks), whole, for a live plugin upgrade or host handover. */
  carrySections: op<() => CarriedSection[]>(),
  /**
   * A host handover, rings stopped: a share's locks in wire form (host/fs/lock-carry-wire.ts)
   * with duplicates of their fds taken now, which the caller owns and must close; null without locks.
   * Each duplicate is written into `ledger` as it is made (fd-ledger.ts): if the worker dies
   * before its reply, the main thread closes them.
   */
  lockCarry: op<(ledger: FdCells) => LockCarryWire | null>(),
  /** Before a host handover's stop (rings paused): how many fds and bytes lockCarry would carry now. */
  lockCarrySize: op<() => { fds: number; bytes: number }>(),
  /** What a live upgrade re-applies to a new instance: each ring's settings and fds (see RingSnapshot). */
  ringSnapshot: op<() => RingSnapshot[]>(),
  // Device-state transfer (SET_DEVICE_STATE_FD) and dirty logging (SET_LOG_BASE, LOG_ALL).
  stateBegin: op<() => StateBeginInfo>(),
  /** `section` absent: the device's own bytes; else a worker-side section (WorkerStateSection). */
  stateRead: op<(offset: number, size: number, section?: number) => StateReadResult>({
    // State chunks are fresh buffers (see DeviceRunner.stateRead): move, do not copy.
    transferResult: (r) => [r.bytes.buffer as ArrayBuffer],
  }),
  stateBeginLoad: op<(section: number, size: number) => void>(),
  stateWrite: op<(offset: number, chunk: Uint8Array, section?: number) => void>({
    // Moves chunk's buffer to the worker when chunk owns all of it, else copies.
    transferArgs: (_offset, chunk) =>
      chunk.byteOffset === 0 && chunk.byteLength === chunk.buffer.byteLength && chunk.buffer instanceof ArrayBuffer ? [chunk.buffer] : [],
  }),
  /** A whole worker section to / from a state file (memfd) the session holds open: copied in the worker, no bytes cross. */
  stateSectionToFile: op<(section: number, fd: number, fileOffset: number, len: number, crc: number) => number>(),
  stateSectionFromFile: op<(section: number, fd: number, fileOffset: number, len: number, crc: number) => number>(),
  /** Answers the device's refusal (a message) or null when the loaded state was accepted. */
  stateFinish: op<(section?: number) => string | null>(),
  stateAbort: op<(section?: number) => void>(),
  setLogBase: op<(fd: number, size: number, offset: number) => void>(),
  setLogAll: op<(on: boolean) => void>(),
  /** SET_INFLIGHT_FD: map and check the area (see DeviceRunner.setInflight). */
  setInflight: op<(fd: number, size: number, offset: number, numQueues: number, queueSize: number) => void>(),
  logStatus: op<() => LogStatus>(),
};

/** The worker's operations as an interface (from deviceWorkerOps). */
export type DeviceWorkerApi = ApiOf<typeof deviceWorkerOps>;

/** stateBegin's answer: what the container is tagged with, and which rings still run. */
export interface StateBeginInfo {
  /** Rings that are started (must all be stopped with GET_VRING_BASE before a transfer). */
  started: number[];
  /** The plugin's identity (name + version); TypeScript devices report their info.name and "0". */
  name: string;
  version: string;
  /** Worker-side sections (host-held resources) saved next to the device's bytes. */
  sections: { id: number; name: string; size: number }[];
}

/** stateRead's answer (the bytes' buffer is transferred, not copied). */
/** A section only a live plugin upgrade moves (VirtioDevice.upgradeSections), whole. */
export interface CarriedSection {
  id: number;
  bytes: Uint8Array;
}

export interface StateReadResult {
  bytes: Uint8Array;
  remaining: number;
}

export interface LogStatus {
  /** A log area is mapped (SET_LOG_BASE). */
  mapped: boolean;
  size: number;
  /** VHOST_F_LOG_ALL is on: writes are being marked. */
  logging: boolean;
  /** Marks that fell beyond the log's end. */
  outOfRange: number;
}

/**
 * One ring as the runner has it (plugin-upgrade, host/session/upgrade.ts): what the front-end
 * set, and whether it runs. The fds are the session's (borrowed by the runner), so a new
 * worker of the same process can be given the same numbers.
 */
export interface RingSnapshot {
  num: number;
  addr: VringAddrMsg | null;
  /** SET_VRING_BASE's value, or where GET_VRING_BASE stopped it; null: never sent. */
  base: number | null;
  /** -1: no SET_VRING_KICK yet; null: in-band kicks. */
  kickFd: number | null;
  callFd: number | null;
  errFd: number | null;
  enabled: boolean;
  /** The ring has a queue (started; it may be disabled). */
  started: boolean;
  /** Requests of this ring the device holds (answered in a later call). */
  held: number;
}

export interface WorkerStatus {
  running: number[];
  failed: string | null;
  brokenQueues: number[];
  /** VirtioDevice.processBound: what cannot move to another process now, or null. */
  processBound: string | null;
}

/** worker -> main */
export type WorkerToMain =
  | { type: 'ready'; info: DeviceInfo }
  /** A PrepareRequest done: the plugin is in the transpile cache. */
  | { type: 'prepared' }
  | { type: 'init-failed'; error: SerializedError }
  | RpcReply
  /** A ring broke (guest fault); the device needs a reset. */
  | { type: 'ring-broken'; index: number; reason: string }
  /** The device itself failed (plugin trap, bad return value): every ring stopped. */
  | { type: 'device-failed'; reason: string }
  /** Used buffers were returned on a ring that has no call fd (in-band notifications). */
  | { type: 'inband-call'; index: number }
  /** The front-end shrank a file behind guest memory or the dirty log: end its connection. */
  | { type: 'memory-fault'; reason: string };

/** main -> worker: a call of one of deviceWorkerOps. */
export type MainToWorker = RpcRequest;
