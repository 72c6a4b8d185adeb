// Per-request counters of one device worker thread, kept where the main thread can read them
// without asking: a SharedArrayBuffer of float64 cells the worker alone writes (plain stores,
// no atomics: one writer per buffer, and an aligned 8-byte store is never seen half-done on the
// platforms Node runs on) and the main thread reads at scrape time (device-meter.ts). A request
// costs a few additions and a store: no message, no allocation, and no clock read of its own.
// The clock is read per batch, not per request (performance.now() costs ~150 ns here, a
// quarter of the host core's whole cost per request): a request's start is the first pop of
// its batch, and completions are timed together when the worker notifies the front-end or
// finishes its turn (whichever comes first), which is when the guest can see them. The thread's
// CPU clock, a system call, is read at most every CPU_MARK_MS and after a call of 2 ms or more.
//
// The buffer belongs to the device (its DeviceMeter), not to the thread: a worker started after
// a failure continues the counters of the one it replaces, so they only ever grow.

// The module's `performance`, not the global one: in a worker thread the global is a lazy
// accessor (node:internal/util's defineReplaceableLazyAttribute), a getter call on every read.
import { performance } from 'node:perf_hooks';

/** Upper bounds (seconds) of the latency histograms: request (pop to used ring) and plugin call. */
export const LATENCY_BUCKETS = [
  0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
] as const;

const NB = LATENCY_BUCKETS.length;

/** Where each value lives in a thread's Float64Array. */
export const Cell = {
  /** Requests the device was handed (popped, or resubmitted from the inflight area). */
  requests: 0,
  /** Bytes of the device-readable ("out") descriptors of those requests. */
  bytesOut: 1,
  /** Bytes the device wrote back (the used length of completed requests). */
  bytesIn: 2,
  /** Requests popped and not yet completed or dropped. */
  inFlight: 3,
  /** Request latency histogram: sum of seconds, count, then one (non-cumulative) cell per bucket and one past the last. */
  latencySum: 4,
  latencyCount: 5,
  latencyBuckets: 6,
  /** Plugin (device code) call histogram, laid out the same way. */
  callSum: 6 + NB + 1,
  callCount: 7 + NB + 1,
  callBuckets: 8 + NB + 1,
  /** Bytes of the device's linear memories after its last call (0 for a TypeScript device). */
  memoryBytes: 8 + 2 * (NB + 1),
  /**
   * Seconds (wall clock) of calls in which the thread ran LONG_CALL_SECONDS or more of CPU: the
   * CPU-share governor's measure of a device's demand.
   */
  longCallSum: 9 + 2 * (NB + 1),
  /** Seconds the thread spun on its rings (adaptive polling): CPU it claims with no device call running, counted by the CPU-share governor too. */
  pollSpinSum: 10 + 2 * (NB + 1),
  /**
   * Seconds of calls that took LONG_CALL_SECONDS or more of wall clock, whether their code ran
   * that long or waited for a CPU: what keeps a demoted device demoted (host/limits/cpu-share.ts).
   */
  slowCallSum: 11 + 2 * (NB + 1),
  /**
   * Batches: groups of requests popped together and handed to the device in one handle() call
   * (with the failure rounds that call may need). What the calls are held to: one call into the
   * plugin per batch, nothing per request (test/daemon-metrics.test.ts).
   */
  batches: 12 + 2 * (NB + 1),
  /** handle() calls among the calls counted in callCount (the others: config, activate, state, reset, sections). */
  handleCalls: 13 + 2 * (NB + 1),
  /** Bytes a memory disk's reads and writes copied between guest memory and its pages (one copy each way: the bytes read and written). */
  memoryDiskCopied: 14 + 2 * (NB + 1),
  /**
   * Completions that overtook a request made available before them and still in flight
   * (DeviceQueue.overtaken, added up per ring by the runner when it decides on a notification).
   */
  outOfOrder: 15 + 2 * (NB + 1),
  /**
   * Requests whose storage I/O the executor has submitted and not finished (io_uring: in the
   * kernel's rings): a gauge the runner stores after each batch, each turn of completions, a
   * drain and a reset, so that what a disconnect or a remap leaves behind is seen from outside.
   */
  ioInFlight: 16 + 2 * (NB + 1),
  /**
   * The most CPU (seconds) one call into the device's code ran, of the calls that took
   * LONG_CALL_SECONDS or more of wall clock (an upper bound: CPU_MARK_MS); 0 while every call
   * took less. What a call costs on its own, whatever the machine's load: the measure to hold a
   * streaming state transfer's calls to, beside the deadline (which counts wall clock).
   */
  longestCallCpu: 17 + 2 * (NB + 1),
} as const;

/** Bytes of one thread's cells. */
export const REQUEST_METER_BYTES = (Cell.longestCallCpu + 1) * Float64Array.BYTES_PER_ELEMENT;

/**
 * A call whose code runs this long holds its thread in device code: a blk or rng plugin answers
 * a batch in microseconds (4K blk: ~5-15 us of CPU), a looping plugin runs to its deadline. Time
 * in such calls is what the CPU share limits (host/limits/cpu-share.ts).
 */
export const LONG_CALL_SECONDS = 0.002;

/**
 * How old (ms) the thread's CPU clock reading may be when a call starts. Reading it costs a
 * system call (~1 us here, more than the host core's whole cost per request), so it is not read per
 * call: a call that took LONG_CALL_SECONDS of wall clock reads it at its end, and what the thread
 * ran since the last reading, at most this long before the call began, bounds what the call ran
 * from above. A call counts as long when that bound reaches LONG_CALL_SECONDS: a looping call
 * always does; a call of microseconds preempted for milliseconds never does (its bound is at most
 * its own CPU plus this); one whose code ran 1.5-2 ms may. Whatever the call rate, a thread
 * reads it at most 1000 / CPU_MARK_MS times a second at call starts, and after each call of 2 ms.
 */
export const CPU_MARK_MS = 0.5;

function bucketOf(seconds: number): number {
  let i = 0;
  while (i < NB && seconds > LATENCY_BUCKETS[i]) i++;
  return i;
}

/** What completed() chains flushTask to: a microtask without queueMicrotask's per-call objects. */
const SETTLED = Promise.resolve();

/** The worker's writer (given to the runner through RunnerHooks.meter). */
/** Completions waiting to be timed (more are timed at once). */
const PENDING = 1024;

export class RequestMeter {
  private readonly c: Float64Array;
  private callStarted = -1;
  /** The thread's CPU clock (ns) when last read, and when that was (performance.now()): CPU_MARK_MS. */
  private cpuMark = 0;
  private cpuMarkAt = -Infinity;
  /** Start time of the batch being popped, or -1 once the device was called (the batch is over). */
  private batchStart = -1;
  /** Start times of completions not yet timed. */
  private readonly pending = new Float64Array(PENDING);
  private pendingCount = 0;
  private flushQueued = false;
  private readonly flushTask = () => {
    this.flushQueued = false;
    this.flush();
  };

  /** `threadCpuNs` reads the CPU clock of the thread that writes these cells (the worker's own). */
  constructor(
    cells: SharedArrayBuffer,
    private readonly threadCpuNs: () => number,
  ) {
    if (cells.byteLength < REQUEST_METER_BYTES) throw new RangeError(`request meter cells: ${cells.byteLength} bytes, ${REQUEST_METER_BYTES} needed`);
    this.c = new Float64Array(cells, 0, REQUEST_METER_BYTES / Float64Array.BYTES_PER_ELEMENT);
    // What a thread that died had in flight is gone with it: this one starts with nothing.
    this.c[Cell.inFlight] = 0;
    this.c[Cell.ioInFlight] = 0;
    this.c[Cell.memoryBytes] = 0;
  }

  /** A request handed to the device; returns its start time for completed(). */
  popped(readableLen: number): number {
    const c = this.c;
    c[Cell.requests]++;
    c[Cell.bytesOut] += readableLen;
    c[Cell.inFlight]++;
    if (this.batchStart < 0) this.batchStart = performance.now();
    return this.batchStart;
  }

  /** A batch of popped requests goes to the device (runner.ts runBatch). */
  batch(): void {
    this.c[Cell.batches]++;
  }

  /** The call that just ended (callEnd) was handle(): it is in callCount too, as every call is. */
  handleCall(): void {
    this.c[Cell.handleCalls]++;
  }

  /** A memory disk's read or write copied `bytes` (host/io/memory-executor.ts). */
  copied(bytes: number): void {
    this.c[Cell.memoryDiskCopied] += bytes;
  }

  /** `n` more completions went to a used ring out of order (runner.ts countOvertaken). */
  outOfOrder(n: number): void {
    this.c[Cell.outOfOrder] += n;
  }

  /** A request in the used ring, `used` bytes written back, `start` from popped(): timed at the next flush(). */
  completed(start: number, used: number): void {
    this.c[Cell.bytesIn] += used;
    if (this.pendingCount === PENDING) this.flush();
    this.pending[this.pendingCount++] = start;
    if (!this.flushQueued) {
      this.flushQueued = true;
      // A reaction of a settled promise, not queueMicrotask: the same microtask queue, but
      // Node's queueMicrotask makes an AsyncResource and a bound function per call (~0.4 us
      // here, once per request from a guest that sends one at a time; this ~15 ns). flushTask
      // cannot throw (arithmetic on the cells), so no rejection can come of it.
      SETTLED.then(this.flushTask);
    }
  }

  /** Times the completions so far (the front-end is about to be notified, or the turn ends). */
  flush(): void {
    const n = this.pendingCount;
    if (n === 0) return;
    const c = this.c;
    const now = performance.now();
    // A batch's requests share one start time (popped()): its bucket is looked up once.
    let lastStart = NaN;
    let cell = 0;
    let s = 0;
    for (let i = 0; i < n; i++) {
      const start = this.pending[i];
      if (start !== lastStart) {
        lastStart = start;
        s = (now - start) / 1000;
        cell = Cell.latencyBuckets + bucketOf(s);
      }
      c[Cell.latencySum] += s;
      c[cell]++;
    }
    c[Cell.latencyCount] += n;
    this.pendingCount = 0;
  }

  /** The worker spun on its rings for `seconds` (one adaptive poll: runner.ts pollRings). */
  pollSpun(seconds: number): void {
    this.c[Cell.pollSpinSum] += seconds;
  }

  /** A request left the runner (completed, or dropped with its ring). */
  released(): void {
    this.c[Cell.inFlight]--;
  }

  /** Every request was dropped at once (reset, close). */
  releasedAll(): void {
    this.c[Cell.inFlight] = 0;
  }

  /** Requests with storage I/O in flight now (IoExecutor.inflight). */
  ioInFlight(n: number): void {
    this.c[Cell.ioInFlight] = n;
  }

  /** The device's memory now (after it was built, before any call). */
  memory(bytes: number): void {
    this.c[Cell.memoryBytes] = bytes;
  }

  /** Device code starts running (a call the watchdog times as a device call). */
  callStart(): void {
    this.flush();
    // Pops after this call belong to the next batch.
    this.batchStart = -1;
    const now = performance.now();
    if (now - this.cpuMarkAt > CPU_MARK_MS) {
      this.cpuMark = this.threadCpuNs();
      this.cpuMarkAt = now;
    }
    this.callStarted = now;
  }

  /** Whether a device call is being timed (callStart without its callEnd yet). */
  get inCall(): boolean {
    return this.callStarted >= 0;
  }

  /** Device code returned (or threw); `memoryBytes` is the device's memory now. */
  callEnd(memoryBytes: number): void {
    if (this.callStarted < 0) return;
    const c = this.c;
    const end = performance.now();
    const s = (end - this.callStarted) / 1000;
    this.callStarted = -1;
    c[Cell.callSum] += s;
    if (s >= LONG_CALL_SECONDS) {
      c[Cell.slowCallSum] += s;
      // Only a call that took this long can have run this long: the clock is read for it alone.
      const cpu = this.threadCpuNs();
      const ran = (cpu - this.cpuMark) / 1e9;
      if (ran >= LONG_CALL_SECONDS) c[Cell.longCallSum] += s;
      if (ran > c[Cell.longestCallCpu]) c[Cell.longestCallCpu] = ran;
      this.cpuMark = cpu;
      this.cpuMarkAt = end;
    }
    c[Cell.callCount]++;
    c[Cell.callBuckets + bucketOf(s)]++;
    c[Cell.memoryBytes] = memoryBytes;
  }
}

/** A histogram read from the cells: cumulative counts per LATENCY_BUCKETS bound, count and sum. */
export interface HistogramSnapshot {
  /** Cumulative: observations <= LATENCY_BUCKETS[i]. */
  buckets: number[];
  count: number;
  sum: number;
}

export interface RequestSnapshot {
  requests: number;
  bytesOut: number;
  bytesIn: number;
  inFlight: number;
  latency: HistogramSnapshot;
  calls: HistogramSnapshot;
  /** Batches of requests handed to the device (Cell.batches). */
  batches: number;
  /** handle() calls among `calls.count` (every call into the device's code). */
  handleCalls: number;
  /** Bytes copied between guest memory and a memory disk (Cell.memoryDiskCopied). */
  memoryDiskCopied: number;
  /** Completions that overtook an earlier request still in flight (Cell.outOfOrder). */
  outOfOrder: number;
  /** Requests with storage I/O submitted and not finished (Cell.ioInFlight). */
  ioInFlight: number;
  /** The most CPU one call ran, the largest of any thread's (Cell.longestCallCpu). */
  longestCallCpu: number;
  memoryBytes: number;
}

export function emptyHistogram(): HistogramSnapshot {
  return { buckets: new Array<number>(NB).fill(0), count: 0, sum: 0 };
}

/** Adds one observation to a histogram kept on the main thread (state transfers). */
export function observe(h: HistogramSnapshot, seconds: number): void {
  for (let i = bucketOf(seconds); i < NB; i++) h.buckets[i]++;
  h.count++;
  h.sum += seconds;
}

function addHistogram(into: HistogramSnapshot, c: Float64Array, sum: number, count: number, buckets: number): void {
  let acc = 0;
  for (let i = 0; i < NB; i++) {
    acc += c[buckets + i];
    into.buckets[i] += acc;
  }
  into.sum += c[sum];
  into.count += c[count];
}

/** The sum over every thread's cells of one device (main thread, at scrape time). */
export function readRequestCells(all: readonly SharedArrayBuffer[]): RequestSnapshot {
  const s: RequestSnapshot = { requests: 0, bytesOut: 0, bytesIn: 0, inFlight: 0, latency: emptyHistogram(), calls: emptyHistogram(), batches: 0, handleCalls: 0, memoryDiskCopied: 0, outOfOrder: 0, ioInFlight: 0, longestCallCpu: 0, memoryBytes: 0 };
  for (const buf of all) {
    const c = new Float64Array(buf, 0, REQUEST_METER_BYTES / Float64Array.BYTES_PER_ELEMENT);
    s.requests += c[Cell.requests];
    s.bytesOut += c[Cell.bytesOut];
    s.bytesIn += c[Cell.bytesIn];
    // A gauge read while the worker moves it: never shown below zero.
    s.inFlight += Math.max(0, c[Cell.inFlight]);
    s.ioInFlight += c[Cell.ioInFlight];
    s.longestCallCpu = Math.max(s.longestCallCpu, c[Cell.longestCallCpu]);
    s.memoryBytes += c[Cell.memoryBytes];
    s.batches += c[Cell.batches];
    s.handleCalls += c[Cell.handleCalls];
    s.memoryDiskCopied += c[Cell.memoryDiskCopied];
    s.outOfOrder += c[Cell.outOfOrder];
    addHistogram(s.latency, c, Cell.latencySum, Cell.latencyCount, Cell.latencyBuckets);
    addHistogram(s.calls, c, Cell.callSum, Cell.callCount, Cell.callBuckets);
  }
  return s;
}

/** Seconds of calls whose code ran LONG_CALL_SECONDS or more of CPU, over every thread's cells. */
export function readLongCallSeconds(all: readonly SharedArrayBuffer[]): number {
  return sumCell(all, Cell.longCallSum);
}

/** Seconds of calls that took LONG_CALL_SECONDS or more of wall clock, over every thread's cells. */
export function readSlowCallSeconds(all: readonly SharedArrayBuffer[]): number {
  return sumCell(all, Cell.slowCallSum);
}

/** Seconds the device's threads spun on their rings (adaptive polling), over every thread's cells. */
export function readPollSpinSeconds(all: readonly SharedArrayBuffer[]): number {
  return sumCell(all, Cell.pollSpinSum);
}

function sumCell(all: readonly SharedArrayBuffer[], cell: number): number {
  let sum = 0;
  for (const buf of all) sum += new Float64Array(buf, 0, REQUEST_METER_BYTES / Float64Array.BYTES_PER_ELEMENT)[cell];
  return sum;
}
