// Auto-converge for the pre-copy of a memory disk (docs/migration.md, "Pre-copy"): when live
// rounds stop shrinking because the guest writes about as fast as the rounds move, the guest's
// writes to that device are throttled for the rest of the migration, as QEMU's auto-converge
// throttles vCPUs for RAM, so that what is left for the stopped round is small.
//
// The throttle is a token bucket (host/limits/token-bucket.ts) of the device's own, apart from
// its operator-set I/O throttle: the runner charges it with the bytes each request carries to the
// device (a virtio-blk write's data; a read pays for its 16-byte header only), so it slows writes
// and leaves reads alone. It is lifted when the pre-copy ends (its FINAL save, a full save, a
// reset or disconnect), when a round fails, and when no round follows for LEASE_MS (a front-end
// that gave up without a word).

import { NO_THROTTLE, defaultBurst, isThrottled, type TokenBucket } from '../limits/token-bucket.ts';

/** A round is "shrinking" when it carries at most this share of the round before it. */
export const SHRINK_RATIO = 0.5;
/** Rounds smaller than this never engage the throttle: they cost a few ms with the rings stopped. */
export const ENGAGE_FLOOR_BYTES = 1 << 20;
/**
 * The first engagement allows this share of the write rate seen in that round; from then on each
 * live round that still carries ENGAGE_FLOOR_BYTES or more halves it (what the stopped round will
 * carry is the rate times a round's length, so the rate has to come down until that is small).
 */
export const FIRST_SHARE = 0.25;
/** The guest always keeps at least this much (bytes a second): a stalled guest is worse than a longer stop. */
export const MIN_RATE = 1 << 20;
/** Without a round for this long, the throttle is lifted (the front-end gave the pre-copy up). */
export const LEASE_MS = 10_000;

export interface ConvergeState {
  /** Bytes a second the device's guest writes may carry now; 0: not throttled. */
  rate: number;
  /** Rounds seen since the pre-copy started. */
  rounds: number;
}

export class AutoConverge {
  private prevBytes = -1;
  private prevAt = 0;
  private rounds = 0;
  private rate = 0;
  private lease: ReturnType<typeof setTimeout> | null = null;

  constructor(
    private readonly bucket: TokenBucket,
    private readonly log: { info(msg: string): void },
    private readonly now: () => number = () => performance.now(),
  ) {}

  get state(): ConvergeState {
    return { rate: this.rate, rounds: this.rounds };
  }

  /** A pre-copy starts: its first round takes the whole disk (nothing to judge yet). */
  start(): void {
    this.release('a new pre-copy started');
    this.prevBytes = -1;
    this.rounds = 1;
    this.prevAt = this.now();
    this.renew();
  }

  /**
   * A live round took `bytes` of blocks written since the round before. Engages the throttle if
   * that did not shrink by half, tightens it while rounds stay over the floor; returns the rate
   * now in force (0: none).
   */
  roundTaken(bytes: number): number {
    const t = this.now();
    const dt = Math.max(1, t - this.prevAt) / 1000;
    const prev = this.prevBytes;
    this.prevBytes = bytes;
    this.prevAt = t;
    this.rounds++;
    this.renew();
    if (prev < 0 || bytes < ENGAGE_FLOOR_BYTES || (this.rate === 0 && bytes <= prev * SHRINK_RATIO)) return this.rate;
    const why = this.rate === 0 ? 'not shrinking by half' : 'still 1 MiB or more while throttled';
    const next = Math.max(MIN_RATE, Math.floor(this.rate === 0 ? (bytes / dt) * FIRST_SHARE : this.rate / 2));
    if (next === this.rate) return this.rate;
    this.rate = next;
    this.bucket.set({ iops: 0, iopsBurst: 0, bytesPerSecond: next, bytesBurst: defaultBurst(next) });
    this.log.info(`pre-copy auto-converge: round ${this.rounds - 1} carries ${bytes} bytes after ${prev} bytes (${why}): guest writes throttled to ${next} bytes/s until the migration ends`);
    return this.rate;
  }

  /** A round went out whole: the pre-copy goes on (the lease is renewed). */
  roundDone(): void {
    if (this.rounds > 0) this.renew();
  }

  /** The pre-copy is over (or failed): the guest writes at full speed again. */
  release(why: string): void {
    if (this.lease !== null) clearTimeout(this.lease);
    this.lease = null;
    this.prevBytes = -1;
    this.rounds = 0;
    if (this.rate === 0 && !isThrottled(this.bucket.limits())) return;
    this.rate = 0;
    this.bucket.set(NO_THROTTLE);
    this.log.info(`pre-copy auto-converge: throttle lifted (${why})`);
  }

  private renew(): void {
    if (this.lease !== null) clearTimeout(this.lease);
    this.lease = setTimeout(() => {
      this.lease = null;
      this.release(`no pre-copy round for ${LEASE_MS / 1000} s`);
    }, LEASE_MS);
    this.lease.unref?.();
  }
}
