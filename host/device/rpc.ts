// Messages between the session (main thread) and a device worker. Few and never per request:
// ring setup, fd hand-offs, config access, stop, state transfer. Fds cross as numbers: they
// are process-wide, and the main thread stays their owner (see worker-client.ts).

import type { DeviceInfo } from './device.ts';
import type { LogLevel } from '../log/logger.ts';

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
 * - notify: a write to a front-end's call or err eventfd: the call deadline.
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

export function watchdogWord(phase: WatchdogPhase, msSinceEpoch: number): number {
  return (phase << 28) | (msSinceEpoch & WATCHDOG_MS_MASK);
}

/** The phase and the ms it has run, from a non-zero watchdog word. */
export function readWatchdogWord(word: number, msSinceEpoch: number): { phase: WatchdogPhase; ran: number } {
  return { phase: (word >>> 28) as WatchdogPhase, ran: (msSinceEpoch - (word & WATCHDOG_MS_MASK)) & WATCHDOG_MS_MASK };
}

export interface WorkerInit {
  source: DeviceSource;
  logLevel: LogLevel;
  /** Name for log lines ("blk0", the socket path, ...). */
  label: string;
  /** One Int32 over a SharedArrayBuffer: what the worker is doing and since when (watchdogWord), 0 when idle. */
  watchdog: SharedArrayBuffer;
  epoch: number;
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

/** Every call the session makes into a worker. */
export type WorkerCall =
  | { op: 'readConfig'; offset: number; size: number }
  | { op: 'writeConfig'; offset: number; data: Uint8Array }
  | { op: 'setFeatures'; features: bigint; protocolFeatures: boolean }
  | { op: 'setMemTable'; regions: RegionMsg[] }
  | { op: 'addMemRegion'; region: RegionMsg }
  | { op: 'removeMemRegion'; guestPhysAddr: number; size: number; userspaceAddr: number }
  | { op: 'ringNum'; index: number; num: number }
  | { op: 'ringAddr'; index: number; addr: VringAddrMsg }
  | { op: 'ringBase'; index: number; base: number }
  | { op: 'ringKick'; index: number; fd: number | null }
  | { op: 'ringCall'; index: number; fd: number | null }
  | { op: 'ringErr'; index: number; fd: number | null }
  | { op: 'ringEnable'; index: number; enable: boolean }
  | { op: 'ringInbandKick'; index: number }
  | { op: 'ringStop'; index: number }
  | { op: 'reset' }
  | { op: 'status' }
  // Device-state transfer (SET_DEVICE_STATE_FD) and dirty logging (SET_LOG_BASE, LOG_ALL).
  | { op: 'stateBegin' }
  // `section` absent: the device's own bytes; else a worker-side section (WorkerStateSection).
  | { op: 'stateRead'; offset: number; size: number; section?: number }
  | { op: 'stateBeginLoad'; section: number; size: number }
  | { op: 'stateWrite'; offset: number; chunk: Uint8Array; section?: number }
  | { op: 'stateFinish'; section?: number }
  | { op: 'stateAbort'; section?: number }
  | { op: 'setLogBase'; fd: number; size: number; offset: number }
  | { op: 'setLogAll'; on: boolean }
  | { op: 'logStatus' };

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

export interface WorkerStatus {
  running: number[];
  failed: string | null;
  brokenQueues: number[];
}

/** worker -> main */
export type WorkerToMain =
  | { type: 'ready'; info: DeviceInfo }
  | { type: 'init-failed'; error: string }
  | { type: 'reply'; id: number; ok: true; value: unknown }
  | { type: 'reply'; id: number; ok: false; error: string }
  /** A ring broke (guest fault); the device needs a reset. */
  | { type: 'ring-broken'; index: number; reason: string }
  /** The device itself failed (plugin trap, bad return value): every ring stopped. */
  | { type: 'device-failed'; reason: string }
  /** Used buffers were returned on a ring that has no call fd (in-band notifications). */
  | { type: 'inband-call'; index: number }
  /** The front-end shrank a file behind guest memory or the dirty log: end its connection. */
  | { type: 'memory-fault'; reason: string };

/** main -> worker */
export interface MainToWorker {
  id: number;
  call: WorkerCall;
}
