// Each ring's fds (kick, call, err), owned by the session and borrowed by the device worker.
// The order is the point of this module: the worker stops watching an fd first, then it is
// closed here. An fd closed earlier could have its number reused by the next fd the front-end
// sends, and a stale watcher would read that one instead.

import type { DeviceWorker } from '../device/worker-client.ts';
import type { Logger } from '../log/logger.ts';
import { closeFds } from './fds.ts';
import { RequestError } from './request-error.ts';

export type RingFdKind = 'kick' | 'call' | 'err';

type RingFds = Record<RingFdKind, number | null>;

const KINDS: readonly RingFdKind[] = ['kick', 'call', 'err'];

const noFds = (): RingFds => ({ kick: null, call: null, err: null });

export class RingFdTable {
  private rings: RingFds[];

  constructor(
    numQueues: number,
    private readonly log: Logger,
  ) {
    this.rings = Array.from({ length: numQueues }, noFds);
  }

  /** Refuses a ring index the device does not have. */
  check(index: number): void {
    if (index >= this.rings.length) {
      // QEMU's vhost-user-fs-pci does not hold its num-request-queues to GET_QUEUE_NUM: the
      // operator learns it here (the fs plugin's queue count is its request-queues option).
      throw new RequestError(
        `ring index ${index} is out of range: the device has ${this.rings.length} queue(s), as GET_QUEUE_NUM said; ` +
          'the front-end is set up for more rings than the device has (give the device more queues, or the front-end fewer)',
      );
    }
  }

  /**
   * SET_VRING_KICK / CALL / ERR: hands `fd` (ours from now on) to the worker; once it switched,
   * the previous fd of that kind is closed. `inband`: INBAND_NOTIFICATIONS was negotiated.
   */
  async set(worker: DeviceWorker, kind: RingFdKind, index: number, fd: number | null, inband: boolean): Promise<void> {
    try {
      this.check(index);
    } catch (e) {
      closeFds([fd], this.log);
      throw e;
    }
    if (kind === 'kick' && fd === null && !inband) {
      // Polling mode is not implemented: without a kick fd and without in-band kicks nothing
      // would ever tell us about new buffers.
      throw new RequestError(`SET_VRING_KICK for ring ${index} without an fd needs INBAND_NOTIFICATIONS, which was not negotiated`);
    }
    try {
      if (kind === 'kick') await worker.ringKick(index, fd);
      else if (kind === 'call') await worker.ringCall(index, fd);
      else await worker.ringErr(index, fd);
    } catch (e) {
      // A refusing worker has dropped the fd (DeviceRunner.ringKick); a worker that died in the
      // call may still watch it until its thread is gone. Only then is the fd ours to close.
      if (worker.dead) await worker.exited;
      closeFds([fd], this.log);
      throw e;
    }
    this.replace(index, kind, fd);
  }

  /** The worker has switched to `fd` (null: none): the previous fd of that kind is ours to close. */
  replace(index: number, kind: RingFdKind, fd: number | null): void {
    const slot = this.rings[index];
    const old = slot[kind];
    slot[kind] = fd;
    if (old !== null && old !== fd) closeFds([old], this.log);
  }

  /** Whether the front-end gave any ring an fd (a worker replaced now would not have it). */
  get anySet(): boolean {
    return this.rings.some((r) => KINDS.some((k) => r[k] !== null));
  }

  /** Closes every ring fd; the worker must no longer use them (reset, or its thread is gone). */
  closeAll(): void {
    for (let i = 0; i < this.rings.length; i++) {
      for (const k of KINDS) this.replace(i, k, null);
    }
  }

  /**
   * The killed worker's thread will not exit (blocked in a system call): it may still watch or
   * write these fds, so they are left open rather than closed under it (their numbers could be
   * reused while it holds them). A leak, bounded by one set per stuck worker, and logged.
   */
  abandon(): void {
    const fds = this.rings.flatMap((r) => KINDS.map((k) => r[k])).filter((fd) => fd !== null);
    if (fds.length > 0) this.log.warn(`leaving ${fds.length} ring fd(s) open: the device's old worker has not exited and may still use them`);
    this.rings = this.rings.map(noFds);
  }
}
