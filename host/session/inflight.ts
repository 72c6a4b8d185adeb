// GET_INFLIGHT_FD and SET_INFLIGHT_FD (INFLIGHT_SHMFD): the session's side of inflight
// tracking. GET makes a fresh area in a sealed memfd and hands it to the front-end, which keeps
// it across back-end restarts; SET gives an area (that one, after a crash) to the device worker,
// which maps it, checks it and records every request's pop and push there (inflight.ts).

import { native } from '../native/index.ts';
import { F_SEAL_GROW, F_SEAL_SHRINK, checkMemoryFd } from '../memory/memory-fd.ts';
import { encodeInflightReply } from '../protocol/codec.ts';
import type { InflightDescription } from '../protocol/messages.ts';
import { formatSplitInflightArea, splitInflightAreaBytes } from '../virtqueue/inflight.ts';
import { formatPackedInflightArea, packedInflightAreaBytes } from '../virtqueue/inflight-packed.ts';
import { isValidPackedQueueSize, isValidQueueSize } from '../virtqueue/layout.ts';
import type { DeviceWorker } from '../device/worker-client.ts';
import type { Logger } from '../log/logger.ts';
import { closeFds } from './fds.ts';
import { RequestError, toNumber } from './request-error.ts';

/** The area keeps the size both sides mapped. */
const SEAL_SIZE = F_SEAL_SHRINK | F_SEAL_GROW;

/** Checks the ring geometry of a GET/SET_INFLIGHT_FD payload against the device. */
function checkGeometry(d: InflightDescription, deviceQueues: number, packed: boolean): void {
  if (d.numQueues < 1 || d.numQueues > deviceQueues) {
    throw new RequestError(`inflight area for ${d.numQueues} queue(s), but the device has ${deviceQueues}`);
  }
  if (packed ? !isValidPackedQueueSize(d.queueSize) : !isValidQueueSize(d.queueSize)) {
    throw new RequestError(`inflight area queue size ${d.queueSize} is not ${packed ? 'an integer' : 'a power of two'} in [1, 32768]`);
  }
}

/** Bytes of the area: the region format follows the ring layout (VIRTIO_F_RING_PACKED acked or not). */
function areaBytes(d: InflightDescription, packed: boolean): number {
  return packed ? packedInflightAreaBytes(d.numQueues, d.queueSize) : splitInflightAreaBytes(d.numQueues, d.queueSize);
}

/**
 * GET_INFLIGHT_FD: a zeroed area sized for the rings described; returns the reply and its fd
 * (the caller sends, then closes it). `packed`: VIRTIO_F_RING_PACKED is acked (QEMU sends
 * SET_FEATURES before GET_INFLIGHT_FD so that the back-end knows the format).
 */
export function createInflightArea(d: InflightDescription, deviceQueues: number, deviceMaxQueueSize: number, log: Logger, packed: boolean): { reply: Uint8Array; fd: number } {
  checkGeometry(d, deviceQueues, packed);
  // Regions for the device's largest ring, not just the queue size asked for: QEMU 10's
  // vhost-user-blk asks with its queue-size (128) and then sets rings of 1024 (SET_VRING_NUM).
  // Each region's desc_num says what it tracks (DeviceRunner.setInflight reads it back).
  const descNum = Math.max(d.queueSize, deviceMaxQueueSize);
  const size = areaBytes({ ...d, queueSize: descNum }, packed);
  const fd = native.memfdCreate('vhost-wasm-inflight', true);
  try {
    native.ftruncate(fd, size); // zero-filled
    const headers = new Uint8Array(size);
    (packed ? formatPackedInflightArea : formatSplitInflightArea)(headers, d.numQueues, descNum);
    native.pwrite(fd, headers, 0);
    native.memfdAddSeals(fd, SEAL_SIZE);
  } catch (e) {
    closeFds([fd], log);
    throw e;
  }
  log.info(`inflight area: ${size} bytes for ${d.numQueues} ${packed ? 'packed' : 'split'} queue(s) of up to ${descNum} (asked for ${d.queueSize})`);
  return { reply: encodeInflightReply({ mmapSize: BigInt(size), mmapOffset: 0n, numQueues: d.numQueues, queueSize: d.queueSize }), fd };
}

/**
 * SET_INFLIGHT_FD: checks the fd (a file covering the range) and hands it to the worker, which
 * maps and checks the regions. The fd is closed here whatever happens: the mapping keeps the
 * area alive.
 */
export async function setInflightArea(worker: DeviceWorker, d: InflightDescription, fd: number, deviceQueues: number, log: Logger, packed: boolean): Promise<void> {
  try {
    checkGeometry(d, deviceQueues, packed);
    const size = toNumber(d.mmapSize, 'inflight area size');
    const offset = toNumber(d.mmapOffset, 'inflight area offset');
    const need = areaBytes(d, packed);
    if (size < need) {
      throw new RequestError(`inflight area size ${size} is too small: ${d.numQueues} ${packed ? 'packed' : 'split'} queue(s) of ${d.queueSize} need ${need} bytes`);
    }
    checkMemoryFd(fd, offset, size, 'inflight area');
    await worker.setInflight(fd, size, offset, d.numQueues, d.queueSize);
    log.info(`inflight area set: ${d.numQueues} queue(s) of ${d.queueSize}; rings resubmit what it marks in flight when they start`);
  } finally {
    closeFds([fd], log);
  }
}
