// Adaptive polling of a ring that ran dry, before the worker sleeps on its kick fd (the idea of
// QEMU's iothread poll-max-ns; no code from there). Going to sleep costs far more than the
// syscalls: measured on the 2-core machine (docs/BENCHMARKS.md), a worker that slept after every
// ring-full of 64 requests (a front-end that busy-polls its used ring refills only once it sees
// them) spent 2-3x the CPU per request of one that kept running, with ~12% more instructions:
// caches, TLB and branch history are cold after another process ran on the core. So a ring that
// ran dry is watched for up to `windowUs` with notifications still off; the window grows while
// the driver refills soon after we would have slept, and shrinks while it does not, so an idle or
// slow driver costs nothing after a few sleeps. Correctness does not depend on it: after the
// window the ring re-arms notifications and checks again, as it always did.

/** Longest spin after a ring runs dry, µs: a driver that comes back later than this gets woken by its kick. */
export const POLL_MAX_US = 50;
/** The first window after a short sleep, µs. */
const POLL_START_US = 4;
/** Avail-index checks between clock reads (performance.now is ~150 ns here). */
const CHECKS_PER_CLOCK = 16;

export class RingPoll {
  /** Current spin window, µs (0: go to sleep at once). */
  windowUs = 0;
  /** When the ring last went to sleep (ms, performance.now), or -1 when it is not asleep. */
  private sleptAt = -1;

  /**
   * The ring ran dry: look for a new request for up to the window. True as soon as one is there
   * (the caller keeps draining, notifications still off), false when the window passed.
   */
  spin(hasAvailable: () => boolean): boolean {
    if (this.windowUs <= 0) return false;
    const end = performance.now() + this.windowUs / 1000;
    for (;;) {
      for (let i = 0; i < CHECKS_PER_CLOCK; i++) if (hasAvailable()) return true;
      if (performance.now() >= end) return false;
    }
  }

  /** The ring re-armed notifications and sleeps until its next kick. */
  sleeping(): void {
    this.sleptAt = performance.now();
  }

  /**
   * A kick woke the ring: a sleep shorter than the longest window says spinning would have
   * found the request sooner and cheaper (grow); a longer one says the driver is slow or idle
   * (shrink, down to not spinning at all).
   */
  woken(): void {
    if (this.sleptAt < 0) return;
    const sleptUs = (performance.now() - this.sleptAt) * 1000;
    this.sleptAt = -1;
    if (sleptUs <= POLL_MAX_US) this.windowUs = Math.min(POLL_MAX_US, Math.max(POLL_START_US, this.windowUs * 2, sleptUs * 2));
    else this.windowUs = this.windowUs >= 2 * POLL_START_US ? this.windowUs / 2 : 0;
  }
}
