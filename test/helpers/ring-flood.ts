// A guest that floods one ring: a worker thread of the test process (ring-flood-worker.ts) keeps
// the ring full as fast as the device empties it, so a device worker that drains a ring until
// it is empty would never leave it. The ring is set up on the front-end's connection by hand,
// as QEMU's vhost_virtqueue_start does (size, base, addresses, kick, call, enable); the
// front-end's own DriverQueues are left alone.
import { Worker } from 'node:worker_threads';
import type { VhostUserConnection } from '../../host/frontend/connection.ts';
import type { GuestRam } from '../../host/frontend/driver-memory.ts';
import { SplitDriverRing } from '../../host/frontend/rings/split.ts';
import { PackedDriverRing } from '../../host/frontend/rings/packed.ts';
import { native } from '../../host/native/index.ts';

export interface FloodInit {
  fd: number;
  regionGpa: number;
  regionSize: number;
  mmapOffset: number;
  ringGpa: number;
  size: number;
  eventIdx: boolean;
  /** VIRTIO_F_RING_PACKED was negotiated: the ring is a packed one. */
  packed: boolean;
  /** Writable buffers, one of 16 bytes per ring slot. */
  bufGpa: number;
  kickFd: number;
  /** Int32 cells: [0] stop, [1] requests the device returned (wraps at 2^31). */
  ctl: SharedArrayBuffer;
  /** The flood ends by itself after this long, whatever happens to the test (ms). */
  maxMs: number;
}

export const CTL_STOP = 0;
export const CTL_SERVED = 1;

export class RingFlood {
  private readonly ctl: Int32Array;
  private readonly exited: Promise<number>;
  private error: Error | null = null;

  private constructor(
    private readonly worker: Worker,
    ctl: SharedArrayBuffer,
    private readonly fds: number[],
  ) {
    this.ctl = new Int32Array(ctl);
    worker.on('error', (e) => (this.error = e));
    this.exited = new Promise((resolve) => worker.once('exit', resolve));
  }

  /**
   * Starts ring `index` (of `size` entries) on the front-end's connection, in its guest RAM,
   * with the features it negotiated, and floods it.
   */
  static async start(fe: { conn: VhostUserConnection; memory: GuestRam; eventIdx: boolean; packed?: boolean }, index: number, size: number): Promise<RingFlood> {
    const packed = fe.packed ?? false;
    // Split: descriptor table, avail and used ring; packed: descriptor ring, driver and device event areas.
    const [desc, avail, used, bytes] = packed
      ? ((l) => [l.descOffset, l.driverEventOffset, l.deviceEventOffset, l.bytes])(PackedDriverRing.layoutFor(size))
      : ((l) => [l.descOffset, l.availOffset, l.usedOffset, l.bytes])(SplitDriverRing.layoutFor(size));
    const ringGpa = fe.memory.alloc(bytes, 4096);
    const bufGpa = fe.memory.alloc(16 * size, 16);
    const region = fe.memory.regionOf(ringGpa);
    if (region !== fe.memory.regionOf(bufGpa)) throw new Error('flood: ring and buffers landed in different regions');
    const kickFd = native.eventfd(0);
    const callFd = native.eventfd(0);
    const eventIdx = fe.eventIdx;
    const conn = fe.conn;
    await conn.setVringNum(index, size);
    if (!packed) await conn.setVringBase(index, 0);
    await conn.setVringAddr({
      index,
      flags: 0,
      descUserAddr: BigInt(fe.memory.uva(ringGpa + desc)),
      availUserAddr: BigInt(fe.memory.uva(ringGpa + avail)),
      usedUserAddr: BigInt(fe.memory.uva(ringGpa + used)),
      logGuestAddr: 0n,
    });
    await conn.setVringKick(index, kickFd);
    await conn.setVringCall(index, callFd);
    await conn.setVringEnable(index, true);
    const ctl = new SharedArrayBuffer(8);
    const init: FloodInit = {
      fd: region.fd,
      regionGpa: region.gpa,
      regionSize: region.size,
      mmapOffset: region.mmapOffset,
      ringGpa,
      size,
      eventIdx,
      packed,
      bufGpa,
      kickFd,
      ctl,
      maxMs: 90_000,
    };
    // Node 20 loads a worker's entry before any --import hook applies: a JS entry registers tsx first.
    const entry = new URL('./ring-flood-worker.ts', import.meta.url).href;
    const boot = `import(${JSON.stringify(import.meta.resolve('tsx/esm/api'))}).then((m) => { m.register(); return import(${JSON.stringify(entry)}); })`;
    const worker = new Worker(boot, { eval: true, workerData: init });
    return new RingFlood(worker, ctl, [kickFd, callFd]);
  }

  /** Requests of the flooded ring the device has returned so far (the flood's used index, unwrapped). */
  get served(): number {
    if (this.error) throw this.error;
    return Atomics.load(this.ctl, CTL_SERVED);
  }

  /** Ends the flood (its thread stops refilling); resolves with the requests served. Close the front-end after. */
  async stop(): Promise<number> {
    Atomics.store(this.ctl, CTL_STOP, 1);
    await this.exited;
    if (this.error) throw this.error;
    return Atomics.load(this.ctl, CTL_SERVED);
  }

  /** The ring's kick and call eventfds (after the front-end closed: the back-end no longer uses them). */
  closeFds(): void {
    for (const fd of this.fds.splice(0)) native.close(fd);
  }
}
