// What a device worker and the switch on the main thread share about one device's ports: the
// messages on the MessagePort between them, and the counters both sides keep in shared memory.
//
// Frames travel as ranges of SharedArrayBuffers: the sending worker copies the bytes of a
// batch's sends out of guest memory into one buffer (the one copy the host makes), the switch
// hands that same buffer to every destination (a flood costs no copy per port), and each
// receiving worker writes its frames from it straight into its guest's rx buffers. Posting a
// SharedArrayBuffer shares it; nothing is cloned.
//
// Every queue is bounded before anything is posted, so a guest flooding the switch costs
// bounded host memory: the worker counts what it has posted to the switch and not yet seen
// forwarded, the switch counts what it has posted to each destination and not yet seen taken
// off its inbox (delivered to the device or dropped). Past a bound a frame is dropped and
// counted, never queued.

import type { MessagePort } from 'node:worker_threads';

/** One grant of a device, as its worker sees it. */
export interface NetGrant {
  /** The network's name (--network NAME), for log lines. */
  readonly name: string;
  readonly mtu: number;
  /** The device's port on it (unique on the network, never reused). */
  readonly port: number;
}

/** Handed to a device worker at start (WorkerInit.net): its grants, its end of the link and the shared counters. */
export interface NetInit {
  readonly grants: readonly NetGrant[];
  readonly port: MessagePort;
  /** LinkCounters' buffer. */
  readonly counters: SharedArrayBuffer;
}

/** Flood: every other port of the network. */
export const FLOOD = -1;

/**
 * Worker -> switch: frames the device sent, in `buf`. `desc` holds four numbers per frame:
 * network (grant index), destination port (or FLOOD), offset in buf, length.
 */
export interface OutgoingFrames {
  readonly buf: SharedArrayBuffer;
  readonly desc: readonly number[];
}

/**
 * Switch -> worker: frames for this device, in `buf`. `desc` holds four numbers per frame:
 * network (the receiver's grant index), the port it came from, offset in buf, length.
 */
export interface IncomingFrames {
  readonly buf: SharedArrayBuffer;
  readonly desc: readonly number[];
}

/** Frames and bytes that may wait for one device (forwarded to it, not yet given to a handle call). */
export const INBOX_FRAMES = 512;
export const INBOX_BYTES = 4 << 20;
/** Frames and bytes one device may have posted to the switch and not yet seen forwarded. */
export const OUTBOX_FRAMES = 1024;
export const OUTBOX_BYTES = 8 << 20;

// Int32 cells, changed with Atomics by both sides.
const INBOX_F = 0;
const INBOX_B = 1;
const OUTBOX_F = 2;
const OUTBOX_B = 3;
const INT_CELLS = 4;

/** What a device's network traffic did, as the metrics and tests read it. */
export interface NetStats {
  /** Frames (and bytes) the device sent that the host took (copied out of guest memory). */
  txFrames: number;
  txBytes: number;
  /** Frames (and bytes) the device read into its guest (a frame-read in the call that delivered it). */
  rxFrames: number;
  rxBytes: number;
  /** Frames for this device dropped because its inbox was full (a flood towards it; written by the switch). */
  rxQueueDrops: number;
  /** Frames delivered to the device that it did not read in that call (no rx buffer held, say). */
  rxUnread: number;
  /** Frames for this device dropped because it was not running (not activated, failed, resetting). */
  rxNotRunning: number;
  /** Frames the device sent that were dropped because the switch was that far behind (written by the worker). */
  txDrops: number;
  /** Frames the device sent to a port that is not on the network (it left, or never was; written by the switch). */
  txNoPort: number;
  /** Frames the device sent past its send rate (--network-rate; written by the switch). */
  txRateDrops: number;
  /** Frames and bytes waiting for the device now (forwarded to it, not yet given to a call): at most INBOX_FRAMES and INBOX_BYTES. */
  rxQueuedFrames: number;
  rxQueuedBytes: number;
}

/** Statistics a worker writes (the switch writes rxQueueDrops, txNoPort and rxNotRunningSwitch). */
export const WORKER_FIELDS = ['txFrames', 'txBytes', 'rxFrames', 'rxBytes', 'rxUnread', 'rxNotRunning', 'txDrops'] as const satisfies readonly (keyof NetStats)[];

const STAT_FIELDS = ['txFrames', 'txBytes', 'rxFrames', 'rxBytes', 'rxQueueDrops', 'rxUnread', 'rxNotRunning', 'txDrops', 'txNoPort', 'txRateDrops'] as const satisfies readonly (keyof NetStats)[];
/**
 * Cells behind the statistics: each has one writer. rxNotRunning is counted by both sides (the
 * switch when no worker is attached, the worker when its device is not running), so it has a
 * cell for each, summed when read.
 */
const CELLS = [...STAT_FIELDS, 'rxNotRunningSwitch'] as const;
type Cell = (typeof CELLS)[number];

/**
 * The counters of one device's link. Each statistic has one writer (the worker or the switch),
 * so plain float stores suffice; the queue occupancy cells are shared and atomic.
 */
export class LinkCounters {
  readonly buffer: SharedArrayBuffer;
  private readonly cells: Int32Array;
  private readonly stats: Float64Array;

  constructor(buffer?: SharedArrayBuffer) {
    this.buffer = buffer ?? new SharedArrayBuffer(INT_CELLS * 4 + CELLS.length * 8);
    this.cells = new Int32Array(this.buffer, 0, INT_CELLS);
    this.stats = new Float64Array(this.buffer, INT_CELLS * 4, CELLS.length);
  }

  /** The switch reserves inbox room for a frame; false (nothing reserved) when the inbox is full. */
  reserveInbox(len: number): boolean {
    // Only the switch reserves and only the worker releases: a release racing this check can
    // only make it refuse a frame it could have taken, never overfill.
    if (Atomics.load(this.cells, INBOX_F) >= INBOX_FRAMES || Atomics.load(this.cells, INBOX_B) + len > INBOX_BYTES) return false;
    Atomics.add(this.cells, INBOX_F, 1);
    Atomics.add(this.cells, INBOX_B, len);
    return true;
  }

  /** The worker took frames off its inbox (given to the device or dropped). */
  releaseInbox(frames: number, bytes: number): void {
    Atomics.sub(this.cells, INBOX_F, frames);
    Atomics.sub(this.cells, INBOX_B, bytes);
  }

  /** The worker reserves outbox room for a batch (it alone reserves); false when the switch is that far behind. */
  reserveOutbox(frames: number, bytes: number): boolean {
    if (Atomics.load(this.cells, OUTBOX_F) + frames > OUTBOX_FRAMES || Atomics.load(this.cells, OUTBOX_B) + bytes > OUTBOX_BYTES) return false;
    Atomics.add(this.cells, OUTBOX_F, frames);
    Atomics.add(this.cells, OUTBOX_B, bytes);
    return true;
  }

  /** The switch has forwarded (or dropped) a batch the worker posted. */
  releaseOutbox(frames: number, bytes: number): void {
    Atomics.sub(this.cells, OUTBOX_F, frames);
    Atomics.sub(this.cells, OUTBOX_B, bytes);
  }

  /** Adds to a statistic; `field` must be one this side alone writes (see CELLS). */
  add(field: Cell, n: number): void {
    this.stats[CELLS.indexOf(field)] += n;
  }

  read(): NetStats {
    const out = { rxQueuedFrames: Atomics.load(this.cells, INBOX_F), rxQueuedBytes: Atomics.load(this.cells, INBOX_B) } as NetStats;
    STAT_FIELDS.forEach((f, i) => (out[f] = this.stats[i]));
    out.rxNotRunning += this.stats[CELLS.indexOf('rxNotRunningSwitch')];
    return out;
  }

  /** Frames waiting in the inbox (reserved by the switch, not yet taken by the worker). */
  get inboxFrames(): number {
    return Atomics.load(this.cells, INBOX_F);
  }
}
