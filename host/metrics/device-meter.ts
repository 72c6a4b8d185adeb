// What one device has done, for the metrics endpoint: the per-request cells its worker threads
// write (request-meter.ts), and what the main thread sees itself: resets the front-end asked
// for, faults (each device-failed, ring-broken or memory-fault event), workers started, and
// device state transfers with their duration. Owned by the device's slot, so it outlives the
// workers and the front-end connections of the device.

import { REQUEST_METER_BYTES, emptyHistogram, observe, readLongCallSeconds, readPollSpinSeconds, readSlowCallSeconds, readRequestCells, type HistogramSnapshot, type RequestSnapshot } from './request-meter.ts';

export const FAULT_KINDS = ['device-failed', 'ring-broken', 'memory-fault', 'start-failed'] as const;
export type FaultKind = (typeof FAULT_KINDS)[number];

export type TransferDirection = 'save' | 'load';

export interface TransferStats {
  ok: number;
  failed: number;
  /** Transfers that have begun and not ended. */
  running: number;
  /** Seconds from start to outcome, of those that ended. */
  duration: HistogramSnapshot;
}

export interface DeviceMeterSnapshot extends RequestSnapshot {
  resets: number;
  faults: Record<FaultKind, number>;
  workerStarts: number;
  transfers: Record<TransferDirection, TransferStats>;
}

/** A transfer as the session sees it (StateTransfer, RfcShmTransfer): its direction and outcome. */
export interface MeteredTransfer {
  readonly direction: TransferDirection;
  /** null on success, else why it failed. */
  readonly done: Promise<string | null>;
}

/**
 * Requests a device was handed, the batches they came in, and the calls into its code, for
 * device-stats: one handle() call per batch is the data path's promise (nothing per request
 * crosses into the plugin).
 */
export interface DeviceWork {
  requests: number;
  batches: number;
  /** handle() calls: one per batch, plus rounds that hand failed I/O, timers or frames back. */
  handleCalls: number;
  /** Every other call into its code: config, activate, reset, state and sections. */
  otherCalls: number;
  /** Bytes its reads and writes copied between guest memory and its memory disk (--storage memory:SIZE): one copy, so the bytes read and written. */
  memoryDiskCopiedBytes: number;
  /** Completions that overtook a request made available before them and still in flight: out-of-order completion, which a device that holds or runs requests concurrently allows. */
  completionsOutOfOrder: number;
  /** Now: requests popped from its rings and not yet in a used ring (nor dropped with a ring or a reset). */
  requestsInFlight: number;
  /** Now: requests whose storage I/O is submitted (io_uring) and not finished. 0 once a disconnect, remap or ring stop drained it. */
  ioInFlight: number;
  /**
   * The most CPU (seconds) one call into its code ran so far (a state chunk, a batch): read for
   * calls of 2 ms or more of wall clock, so 0 while every call took less. Its calls' deadline
   * counts wall clock; this is what a call costs whatever the machine's load.
   */
  longestCallCpuSeconds: number;
}

function transferStats(): TransferStats {
  return { ok: 0, failed: 0, running: 0, duration: emptyHistogram() };
}

export class DeviceMeter {
  /** One cell buffer per queue thread, by thread index; made on first use and kept. */
  private readonly threadCells: SharedArrayBuffer[] = [];
  private resets = 0;
  private readonly faults: Record<FaultKind, number> = { 'device-failed': 0, 'ring-broken': 0, 'memory-fault': 0, 'start-failed': 0 };
  workerStarts = 0;
  private readonly transfers: Record<TransferDirection, TransferStats> = { save: transferStats(), load: transferStats() };

  /** The cells queue thread `thread` writes (WorkerInit.meter). */
  cellsFor(thread: number): SharedArrayBuffer {
    if (!Number.isInteger(thread) || thread < 0) throw new RangeError(`queue thread ${thread}`);
    while (this.threadCells.length <= thread) this.threadCells.push(new SharedArrayBuffer(REQUEST_METER_BYTES));
    return this.threadCells[thread];
  }

  /** Seconds (wall clock) of the calls in which the device's code ran 2 ms or more of CPU so far, every queue thread together. */
  longCallSeconds(): number {
    return readLongCallSeconds(this.threadCells);
  }

  /** Seconds of the device's calls that took 2 ms or more of wall clock so far, run or waiting for a CPU. */
  slowCallSeconds(): number {
    return readSlowCallSeconds(this.threadCells);
  }

  /** Seconds the device's worker threads spun on their rings so far (adaptive polling; wall clock, as long calls). */
  pollSpinSeconds(): number {
    return readPollSpinSeconds(this.threadCells);
  }

  reset(): void {
    this.resets++;
  }

  fault(kind: FaultKind): void {
    this.faults[kind]++;
  }

  /** Times a state transfer from now until its outcome. */
  transfer(t: MeteredTransfer): void {
    const stats = this.transfers[t.direction];
    if (stats === undefined) return;
    const start = performance.now();
    stats.running++;
    void t.done.then(
      (err) => this.transferEnded(stats, start, err === null),
      () => this.transferEnded(stats, start, false),
    );
  }

  private transferEnded(stats: TransferStats, start: number, ok: boolean): void {
    stats.running--;
    if (ok) stats.ok++;
    else stats.failed++;
    observe(stats.duration, (performance.now() - start) / 1000);
  }

  /** The counts of DeviceWork now, every queue thread together. */
  work(): DeviceWork {
    const s = readRequestCells(this.threadCells);
    // The cells are read one by one while the workers write them: never shown below zero.
    return { requests: s.requests, batches: s.batches, handleCalls: s.handleCalls, otherCalls: Math.max(0, s.calls.count - s.handleCalls), memoryDiskCopiedBytes: s.memoryDiskCopied, completionsOutOfOrder: s.outOfOrder, requestsInFlight: s.inFlight, ioInFlight: s.ioInFlight, longestCallCpuSeconds: s.longestCallCpu };
  }

  snapshot(): DeviceMeterSnapshot {
    const copy = (s: TransferStats): TransferStats => ({ ...s, duration: { ...s.duration, buckets: [...s.duration.buckets] } });
    return {
      ...readRequestCells(this.threadCells),
      resets: this.resets,
      faults: { ...this.faults },
      workerStarts: this.workerStarts,
      transfers: { save: copy(this.transfers.save), load: copy(this.transfers.load) },
    };
  }
}
