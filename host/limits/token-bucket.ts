// I/O throttling: a token bucket for requests (IOPS) and one for bytes, in a SharedArrayBuffer so
// that every queue thread of a device, and every device of a throttle group, draws from the same
// budget (as qemu-storage-daemon's throttle groups). The runner asks before each pop; a ring that
// must wait stops popping and re-arms a timer, so requests stay in the guest's ring (back-pressure)
// instead of failing.
//
// Each bucket fills at its rate up to its burst. A request may start while the ops bucket holds a
// whole token and the bytes bucket is above zero; it then takes one token and its bytes, which may
// take the bytes bucket below zero (a request larger than the burst still goes, and pays for it
// before the next one). Several threads may pass the check at once and overdraw a little: that
// debt is paid back like any other.

// The module's `performance`: the global one is a getter call on every read in a worker thread.
import { performance } from 'node:perf_hooks';

/** Limits of one device or group. A rate of 0 means "no limit" for that bucket. */
export interface ThrottleLimits {
  iops: number;
  /** Requests that may go at once after an idle spell (the bucket's size). */
  iopsBurst: number;
  bytesPerSecond: number;
  bytesBurst: number;
}

/** Bounds that keep the token arithmetic exact in a double; far beyond any device. */
export const MAX_IOPS = 10_000_000;
export const MAX_BYTES_PER_SECOND = 2 ** 44;

export const NO_THROTTLE: ThrottleLimits = { iops: 0, iopsBurst: 0, bytesPerSecond: 0, bytesBurst: 0 };

/** The burst when none is given: a tenth of a second's worth (qemu's default), at least one request / one byte. */
export function defaultBurst(rate: number): number {
  return rate === 0 ? 0 : Math.max(1, Math.ceil(rate / 10));
}

export function isThrottled(l: ThrottleLimits): boolean {
  return l.iops > 0 || l.bytesPerSecond > 0;
}

// Layout: Int32 [0] the lock word; Float64 from byte 8.
const enum F {
  iops,
  iopsBurst,
  opsTokens,
  bps,
  bytesBurst,
  bytesTokens,
  /** When the buckets were last filled (ms, performance.timeOrigin + now(): the same clock in every thread). */
  filledAt,
  /** Requests and bytes let through, for device-stats. */
  passedOps,
  passedBytes,
  /** Times a ring had to wait. */
  waits,
  length,
}
const BYTES = 8 + F.length * 8;

/**
 * Spins taken for the lock before going ahead without it. The lock is held for a few loads and
 * stores, never across device code; the bound only matters if a worker was terminated inside
 * that window, and then a slightly wrong count beats a stuck device.
 */
const MAX_SPINS = 100_000;

function now(): number {
  return performance.timeOrigin + performance.now();
}

export interface ThrottleCounters {
  passedOps: number;
  passedBytes: number;
  waits: number;
}

export class TokenBucket {
  private readonly lockWord: Int32Array;
  private readonly f: Float64Array;

  constructor(readonly buffer: SharedArrayBuffer) {
    if (buffer.byteLength !== BYTES) throw new Error(`a throttle cell is ${BYTES} bytes, not ${buffer.byteLength}`);
    this.lockWord = new Int32Array(buffer, 0, 1);
    this.f = new Float64Array(buffer, 8, F.length);
  }

  /** A fresh cell holding `limits`, its buckets full. */
  static create(limits: ThrottleLimits): TokenBucket {
    const b = new TokenBucket(new SharedArrayBuffer(BYTES));
    b.f[F.filledAt] = now();
    b.set(limits);
    b.f[F.opsTokens] = limits.iopsBurst;
    b.f[F.bytesTokens] = limits.bytesBurst;
    return b;
  }

  private locked<T>(fn: () => T): T {
    for (let i = 0; i < MAX_SPINS && Atomics.compareExchange(this.lockWord, 0, 0, 1) !== 0; i++);
    try {
      return fn();
    } finally {
      Atomics.store(this.lockWord, 0, 0);
    }
  }

  private fill(t: number): void {
    const f = this.f;
    const dt = Math.max(0, t - f[F.filledAt]) / 1000;
    f[F.filledAt] = Math.max(t, f[F.filledAt]);
    if (f[F.iops] > 0) f[F.opsTokens] = Math.min(f[F.iopsBurst], f[F.opsTokens] + dt * f[F.iops]);
    if (f[F.bps] > 0) f[F.bytesTokens] = Math.min(f[F.bytesBurst], f[F.bytesTokens] + dt * f[F.bps]);
  }

  /** New limits, from now on (set-limits): what is in the buckets is kept, up to the new bursts. */
  set(l: ThrottleLimits): void {
    this.locked(() => {
      this.fill(now());
      const f = this.f;
      f[F.iops] = l.iops;
      f[F.iopsBurst] = l.iopsBurst;
      f[F.opsTokens] = l.iops > 0 ? Math.min(f[F.opsTokens], l.iopsBurst) : 0;
      f[F.bps] = l.bytesPerSecond;
      f[F.bytesBurst] = l.bytesBurst;
      f[F.bytesTokens] = l.bytesPerSecond > 0 ? Math.min(f[F.bytesTokens], l.bytesBurst) : 0;
    });
  }

  limits(): ThrottleLimits {
    const f = this.f;
    return { iops: f[F.iops], iopsBurst: f[F.iopsBurst], bytesPerSecond: f[F.bps], bytesBurst: f[F.bytesBurst] };
  }

  counters(): ThrottleCounters {
    return { passedOps: this.f[F.passedOps], passedBytes: this.f[F.passedBytes], waits: this.f[F.waits] };
  }

  /**
   * Whether any limit is set, read without the lock: for a bucket that is unlimited nearly always
   * (pre-copy's auto-converge), so the hot path skips two lock holds per request. A limit set by
   * another thread at the same moment is seen from the next batch on.
   */
  get limited(): boolean {
    return this.f[F.iops] > 0 || this.f[F.bps] > 0;
  }

  /** 0 when a request may go now; otherwise the ms until one may (the caller re-arms a timer). */
  waitMs(): number {
    return this.locked(() => this.waitLocked());
  }

  /** A request of `bytes` went. */
  take(bytes: number): void {
    this.locked(() => this.takeLocked(bytes));
  }

  /**
   * For a caller that drops rather than waits: takes a request of `bytes` and returns true if one
   * may go now; otherwise returns false (counted as a wait). Check and take in one hold of the lock.
   */
  tryTake(bytes: number): boolean {
    return this.locked(() => {
      if (this.waitLocked() > 0) return false;
      this.takeLocked(bytes);
      return true;
    });
  }

  private waitLocked(): number {
    const f = this.f;
    if (f[F.iops] === 0 && f[F.bps] === 0) return 0;
    this.fill(now());
    let wait = 0;
    if (f[F.iops] > 0 && f[F.opsTokens] < 1) wait = ((1 - f[F.opsTokens]) / f[F.iops]) * 1000;
    if (f[F.bps] > 0 && f[F.bytesTokens] <= 0) wait = Math.max(wait, ((1 - f[F.bytesTokens]) / f[F.bps]) * 1000);
    if (wait > 0) f[F.waits]++;
    return wait;
  }

  private takeLocked(bytes: number): void {
    const f = this.f;
    if (f[F.iops] > 0) f[F.opsTokens] -= 1;
    if (f[F.bps] > 0) f[F.bytesTokens] -= bytes;
    f[F.passedOps]++;
    f[F.passedBytes] += bytes;
  }
}
