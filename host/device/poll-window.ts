// Adaptive polling (issues #10 and #12): a device worker that waits in the event loop for the
// next kick pays a wake-up (eventfd -> epoll -> libuv -> JS) and, on this VM, cold caches on
// every request when its front-end idles between requests. Spinning on the rings for a short
// while before blocking catches a request that comes soon without either; spinning too long
// burns a CPU the guest may need. The window adapts the way QEMU's iothreads do (facts from
// util/aio-posix.c, adjust_polling_time): the time from the start of a poll to the next work
// (the "block time") is compared with the window after every wait.

/** Upper bound of --poll-max-ns: 1 ms of spinning per wait is already a CPU's worth for a busy guest. */
export const MAX_POLL_MAX_NS = 1_000_000;
/** A window that starts growing starts here (QEMU's 4 us). */
export const POLL_START_NS = 4000;
/**
 * The default of --poll-max-ns: off. Measured on this 2-core VM (docs/BENCHMARKS.md, "Adaptive
 * polling"): QEMU's 32768 gained nothing steady, larger windows lost badly when the cores were
 * oversubscribed (the spin takes the CPU the guest or front-end needs to send the next request).
 * A host whose device workers have cores of their own should start from 32768.
 */
export const DEFAULT_POLL_MAX_NS = 0;

/** Whether `value` is a valid --poll-max-ns: an integer from 0 (off) to MAX_POLL_MAX_NS. */
export function pollMaxNsError(value: number): string | null {
  if (!Number.isInteger(value) || value < 0 || value > MAX_POLL_MAX_NS) {
    return `must be an integer number of nanoseconds from 0 (polling off) to ${MAX_POLL_MAX_NS}, got ${value}`;
  }
  return null;
}

export class PollWindow {
  /** The current window (ns): how long the next wait spins before it blocks. */
  ns = 0;

  constructor(readonly maxNs: number) {}

  /**
   * After a wait that lasted `blockNs` from the start of its poll: work inside the window keeps
   * it; a wait longer than maxNs (polling could not have caught it) drops polling to 0; a wait
   * that a longer window would have caught grows it (4 us, then doubling, up to maxNs).
   */
  adjust(blockNs: number): void {
    if (blockNs <= this.ns) return;
    if (blockNs > this.maxNs) {
      this.ns = 0;
      return;
    }
    if (this.ns < this.maxNs) this.ns = Math.min(this.maxNs, this.ns === 0 ? POLL_START_NS : this.ns * 2);
  }
}
