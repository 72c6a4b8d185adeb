// virtio-blk requests over a DriverQueue (virtio 1.x, 5.2.6): a 16-byte header the device
// reads {type u32, ioprio u32, sector u64}, the data, and one status byte the device writes.

import type { DriverQueue, Readable } from './queue.ts';
import { VhostWasmError } from '../errors.ts';

export const BlkType = { IN: 0, OUT: 1, FLUSH: 4, GET_ID: 8 } as const;
export const BlkStatus = { OK: 0, IOERR: 1, UNSUPP: 2 } as const;
export const SECTOR = 512;
export const VIRTIO_BLK_ID_BYTES = 20;
/** Feature bits the helper knows how to use. */
export const VIRTIO_BLK_F_SEG_MAX = 2;
export const VIRTIO_BLK_F_BLK_SIZE = 6;
export const VIRTIO_BLK_F_FLUSH = 9;
export const VIRTIO_BLK_F_MQ = 12;

export class BlkError extends VhostWasmError {
  static override readonly code = 'ERR_FRONTEND_BLK_STATUS';
  override name = 'BlkError';
  constructor(message: string, readonly status: number) {
    super(message);
  }
}

export interface BlkRequestOptions {
  /** Split the data into this many descriptors (default 1): multi-descriptor chains. */
  segments?: number;
  /** Send the chain through an indirect table. */
  indirect?: boolean;
}

export interface BlkConfig {
  /** In 512-byte sectors. */
  capacity: number;
  sizeMax: number;
  segMax: number;
  blkSize: number;
  numQueues: number;
}

/** Parses the start of struct virtio_blk_config (at least 36 bytes for blk_size; 36+ for num_queues at 34). */
export function parseBlkConfig(b: Uint8Array): BlkConfig {
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const u32 = (o: number) => (o + 4 <= b.length ? dv.getUint32(o, true) : 0);
  return {
    capacity: dv.getUint32(0, true) + dv.getUint32(4, true) * 2 ** 32,
    sizeMax: u32(8),
    segMax: u32(12),
    blkSize: u32(20),
    numQueues: b.length >= 36 ? dv.getUint16(34, true) : 0,
  };
}

function header(type: number, sector: number): Uint8Array {
  if (!Number.isSafeInteger(sector) || sector < 0) throw new RangeError(`blk: bad sector ${sector}`);
  const h = new Uint8Array(16);
  const dv = new DataView(h.buffer);
  dv.setUint32(0, type, true);
  dv.setUint32(8, sector % 2 ** 32, true);
  dv.setUint32(12, Math.floor(sector / 2 ** 32), true);
  return h;
}

/** Cuts n bytes into `segments` near-equal pieces (at least 1 byte each). */
function split(n: number, segments: number): number[] {
  const k = Math.max(1, Math.min(segments, n));
  const base = Math.floor(n / k);
  const out: number[] = [];
  for (let i = 0; i < k; i++) out.push(i < n % k ? base + 1 : base);
  return out;
}

export class BlkDevice {
  constructor(readonly queue: DriverQueue) {}

  private static statusOf(data: Uint8Array, what: string): void {
    const status = data[data.length - 1];
    if (status !== BlkStatus.OK) {
      const name = status === BlkStatus.IOERR ? 'IOERR' : status === BlkStatus.UNSUPP ? 'UNSUPP' : `status ${status}`;
      throw new BlkError(`${what} failed: ${name}`, status);
    }
  }

  /** Reads `len` bytes (a multiple of 512) starting at `sector`. */
  async read(sector: number, len: number, opts: BlkRequestOptions = {}): Promise<Uint8Array> {
    if (len <= 0 || len % SECTOR !== 0) throw new RangeError(`blk read: length ${len} is not a positive multiple of ${SECTOR}`);
    const c = await this.queue.submit([header(BlkType.IN, sector)], [...split(len, opts.segments ?? 1), 1], { indirect: opts.indirect });
    BlkDevice.statusOf(c.data, `read of ${len} bytes at sector ${sector}`);
    return c.data.subarray(0, len);
  }

  /** Writes `data` (a multiple of 512 bytes) at `sector`. */
  async write(sector: number, data: Uint8Array, opts: BlkRequestOptions = {}): Promise<void> {
    if (data.length === 0 || data.length % SECTOR !== 0) throw new RangeError(`blk write: length ${data.length} is not a positive multiple of ${SECTOR}`);
    const parts: Readable[] = [header(BlkType.OUT, sector)];
    let off = 0;
    for (const n of split(data.length, opts.segments ?? 1)) {
      parts.push(data.subarray(off, off + n));
      off += n;
    }
    const c = await this.queue.submit(parts, [1], { indirect: opts.indirect });
    BlkDevice.statusOf(c.data, `write of ${data.length} bytes at sector ${sector}`);
  }

  async flush(): Promise<void> {
    const c = await this.queue.submit([header(BlkType.FLUSH, 0)], [1]);
    BlkDevice.statusOf(c.data, 'flush');
  }

  /** The device's serial (up to 20 bytes, NUL-terminated when shorter). */
  async getId(): Promise<string> {
    const c = await this.queue.submit([header(BlkType.GET_ID, 0)], [VIRTIO_BLK_ID_BYTES, 1]);
    BlkDevice.statusOf(c.data, 'get-id');
    const id = c.data.subarray(0, VIRTIO_BLK_ID_BYTES);
    const end = id.indexOf(0);
    return Buffer.from(end < 0 ? id : id.subarray(0, end)).toString('latin1');
  }
}
