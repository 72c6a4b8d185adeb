// A raw image file or a block device (a loop device, a partition), opened by the host (O_RDWR,
// or O_RDONLY for a read-only grant; O_DIRECT with --direct); the plugin only ever sees
// offsets. Synchronous pread/pwrite: they run in the device worker, whose whole job is this
// device, and a request cannot complete before its I/O anyway.
//
// Flush is fdatasync(2). Discard punches a hole (fallocate PUNCH_HOLE|KEEP_SIZE), write-zeroes
// is fallocate ZERO_RANGE; a file system without them (EOPNOTSUPP) gets the next best thing,
// said once in the log. On a block device the kernel wants both aligned to its logical block
// (blkdev_fallocate, Linux 4.9+), so partial blocks at either end are zeroed with writes.
import { closeSync, constants, fdatasyncSync, openSync, readSync, writeSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { native, type Mapping } from '../native/index.ts';
import { BackingError, type Backing } from './backing.ts';

const ZEROES = Buffer.alloc(1024 * 1024);
const EOPNOTSUPP = osConstants.errno.EOPNOTSUPP;

function reason(e: unknown): string {
  const err = e as NodeJS.ErrnoException;
  if (err?.code) return `${err.code}: ${err.message.replace(/^\w+: /, '')}`;
  return e instanceof Error ? e.message : String(e);
}

function errnoName(n: number): string {
  return Object.entries(osConstants.errno).find(([, v]) => v === n)?.[0] ?? `errno ${n}`;
}

export interface FileBackingOptions {
  /** O_DIRECT (cache=none): unaligned requests go through an aligned bounce buffer. */
  direct?: boolean;
  /** Where the one-time "this file system lacks ..." notices go (the device's log). */
  log?: (message: string) => void;
}

/**
 * Page-aligned scratch memory for O_DIRECT: a memfd mapping, because a JavaScript buffer's
 * address (and so its alignment) is not ours to choose. Grows to the largest request seen.
 */
class AlignedBuffer {
  private mapping: Mapping | null = null;
  private view = Buffer.alloc(0);

  get(len: number): Buffer {
    if (this.view.length >= len) return this.view.subarray(0, len);
    const size = Math.ceil(len / (1 << 20)) * (1 << 20);
    const fd = native.memfdCreate('vhost-wasm-bounce', false);
    try {
      native.ftruncate(fd, size);
      const m = native.mmap(fd, size, 0, true);
      this.mapping?.unmap();
      this.mapping = m;
      this.view = Buffer.from(m.window(0, size));
    } finally {
      native.close(fd);
    }
    return this.view.subarray(0, len);
  }

  release(): void {
    this.mapping?.unmap();
    this.mapping = null;
    this.view = Buffer.alloc(0);
  }
}

function errnoError(n: number): Error {
  return Object.assign(new Error(errnoName(n)), { code: errnoName(n) });
}

export class FileBacking implements Backing {
  private handle: number;
  private scratch = Buffer.alloc(128 * 1024);
  private readonly bounce = new AlignedBuffer();
  /** What fallocate turned out not to support here, so the notice is logged once. */
  private noZeroRange = false;
  private noPunchHole = false;

  private constructor(
    fd: number,
    readonly size: number,
    readonly readOnly: boolean,
    readonly describe: string,
    /** I/O alignment O_DIRECT needs (1 without --direct). */
    readonly ioAlign: number,
    /** fallocate alignment: a block device's logical block, 1 for a file. */
    private readonly fallocAlign: number,
    private readonly log: (message: string) => void,
  ) {
    this.handle = fd;
    // What direct I/O (or the block device) aligns to; a buffered file takes anything.
    this.blockSize = Math.max(ioAlign, fallocAlign) >= 4096 ? 4096 : 512;
  }

  /** The open file or block device (for an executor that does its own I/O on it); -1 once closed. */
  get fd(): number {
    return this.handle;
  }

  /** What O_DIRECT needs of offsets, lengths and buffer addresses: ioAlign under --direct, else 0. */
  get directAlign(): number {
    return this.ioAlign > 1 ? this.ioAlign : 0;
  }

  readonly blockSize: number;

  /** Opens `path`; every way it can fail says which file and why. */
  static open(path: string, readOnly: boolean, options: FileBackingOptions = {}): FileBacking {
    const direct = options.direct === true;
    let fd: number;
    try {
      fd = openSync(path, (readOnly ? constants.O_RDONLY : constants.O_RDWR) | (direct ? constants.O_DIRECT : 0));
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      if (direct && err?.code === 'EINVAL') {
        throw new BackingError(`--storage ${path} --direct: the file system does not support O_DIRECT (tmpfs does not); drop --direct or put the image on a disk file system`);
      }
      const how = readOnly ? 'reading' : 'reading and writing (give --read-only for a read-only disk)';
      throw new BackingError(`--storage ${path}: cannot open for ${how}: ${reason(e)}`);
    }
    try {
      let info;
      try {
        info = native.backingInfo(fd);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'EINVAL') {
          throw new BackingError(`--storage ${path}: not a regular file or block device (only raw images and block devices are supported)`);
        }
        throw e;
      }
      let ioAlign = 1;
      if (direct) {
        if (info.directAlign <= 0) {
          throw new BackingError(`--storage ${path} --direct: the file system does not report its direct-I/O alignment (STATX_DIOALIGN); drop --direct`);
        }
        ioAlign = info.directAlign;
        // A partial last block could only be written by extending the file.
        if (info.size % ioAlign !== 0) {
          throw new BackingError(`--storage ${path} --direct: the size ${info.size} is not a multiple of the ${ioAlign}-byte direct-I/O alignment; resize the image (truncate -s) or drop --direct`);
        }
      }
      if (ioAlign > 4096) {
        throw new BackingError(`--storage ${path} --direct: direct I/O here needs ${ioAlign}-byte alignment; only 512 and 4096 are supported (drop --direct)`);
      }
      const fallocAlign = info.blockDevice ? Math.max(info.directAlign, 1) : 1;
      return new FileBacking(fd, info.size, readOnly, path, ioAlign, fallocAlign, options.log ?? (() => {}));
    } catch (e) {
      closeSync(fd);
      throw e instanceof BackingError ? e : new BackingError(`--storage ${path}: ${reason(e)}`);
    }
  }

  private fail(op: string, offset: number, len: number, e: unknown): never {
    // The errno travels with the error: a device answers a failed I/O by it (WIT io-failure).
    const name = (e as NodeJS.ErrnoException)?.code ?? (e instanceof Error ? e.message : '');
    const errno = (osConstants.errno as Record<string, number>)[name];
    throw new BackingError(`${this.describe}: ${op} of ${len} bytes at ${offset} failed: ${reason(e)}`, { cause: e, ...(errno === undefined ? {} : { details: { errno } }) });
  }

  private preadAll(buf: Buffer, position: number): void {
    for (let done = 0; done < buf.length; ) {
      const n = readSync(this.handle, buf, done, buf.length - done, position + done);
      // The file shrank under us (someone else truncated it): not data we can vouch for.
      if (n === 0) throw new Error(`unexpected end of file at ${position + done}`);
      done += n;
    }
  }

  private pwriteAll(buf: Uint8Array, position: number): void {
    for (let done = 0; done < buf.length; ) {
      done += writeSync(this.handle, buf, done, buf.length - done, position + done);
    }
  }

  read(offset: number, len: number): Uint8Array {
    try {
      if (this.ioAlign > 1) {
        // O_DIRECT: read the whole aligned blocks around the range into the bounce buffer.
        const a = this.ioAlign;
        const start = Math.floor(offset / a) * a;
        const end = Math.ceil((offset + len) / a) * a;
        const buf = this.bounce.get(end - start);
        this.preadAll(buf, start);
        return buf.subarray(offset - start, offset - start + len);
      }
      if (this.scratch.length < len) this.scratch = Buffer.alloc(len);
      const out = this.scratch.subarray(0, len);
      this.preadAll(out, offset);
      return out;
    } catch (e) {
      this.fail('read', offset, len, e);
    }
  }

  write(offset: number, data: Uint8Array): void {
    try {
      if (this.ioAlign > 1) this.writeDirect(offset, data);
      else this.pwriteAll(data, offset);
    } catch (e) {
      this.fail('write', offset, data.length, e);
    }
  }

  /**
   * O_DIRECT write through the bounce buffer (the plugin's data has no alignment we can know).
   * A range that does not cover whole blocks is read-modify-write: the partial blocks at its
   * ends are read first. That is safe without a lock because a backing belongs to one device,
   * served by one worker thread that does one request at a time, synchronously: no other write
   * of ours can land between the read and the write. (Another process writing the same image
   * is no more protected than with any shared image.) Should a device's queues ever run on
   * several threads against one backing, this needs a lock over the blocks being rewritten.
   */
  private writeDirect(offset: number, data: Uint8Array): void {
    if (data.length === 0) return;
    const a = this.ioAlign;
    const start = Math.floor(offset / a) * a;
    const end = Math.ceil((offset + data.length) / a) * a;
    const buf = this.bounce.get(end - start);
    if (offset !== start) this.preadAll(buf.subarray(0, a), start);
    const tailAt = end - a - start;
    if (offset + data.length !== end && !(offset !== start && tailAt === 0)) this.preadAll(buf.subarray(tailAt, tailAt + a), end - a);
    buf.set(data, offset - start);
    this.pwriteAll(buf, start);
  }

  flush(): void {
    try {
      fdatasyncSync(this.handle);
    } catch (e) {
      this.fail('flush', 0, 0, e);
    }
  }

  discard(offset: number, len: number): void {
    this.zeroRange('discard', offset, len, false);
  }

  writeZeroes(offset: number, len: number): void {
    this.zeroRange('write-zeroes', offset, len, true);
  }

  /**
   * Zeroes [offset, offset+len) with fallocate: ZERO_RANGE for write-zeroes (blocks stay
   * allocated), PUNCH_HOLE for discard (blocks go back to the file system). Both read back as
   * zeroes. A block device only takes whole logical blocks: the partial ends are written.
   */
  private zeroRange(op: string, offset: number, len: number, keepAllocated: boolean): void {
    if (len === 0) return;
    const a = this.fallocAlign;
    const start = Math.ceil(offset / a) * a;
    const end = Math.floor((offset + len) / a) * a;
    if (end <= start) return this.writeZeroBytes(offset, len);
    if (start > offset) this.writeZeroBytes(offset, start - offset);
    this.fallocateZero(op, start, end - start, keepAllocated);
    if (offset + len > end) this.writeZeroBytes(end, offset + len - end);
  }

  private fallocateZero(op: string, offset: number, len: number, keepAllocated: boolean): void {
    const { KEEP_SIZE, PUNCH_HOLE, ZERO_RANGE } = native.FALLOC_FL;
    if (keepAllocated && !this.noZeroRange) {
      const r = native.fsFallocate(this.handle, ZERO_RANGE | KEEP_SIZE, offset, len);
      if (r === 0) return;
      if (r !== -EOPNOTSUPP) this.fail(`${op} (fallocate ZERO_RANGE)`, offset, len, errnoError(-r));
      this.noZeroRange = true;
      this.log(`${this.describe}: fallocate ZERO_RANGE is not supported here (EOPNOTSUPP); write-zeroes punches holes instead${this.noPunchHole ? ' (not supported either: zeroes are written)' : ''}`);
    }
    if (!this.noPunchHole) {
      const r = native.fsFallocate(this.handle, PUNCH_HOLE | KEEP_SIZE, offset, len);
      if (r === 0) return;
      if (r !== -EOPNOTSUPP) this.fail(`${op} (fallocate PUNCH_HOLE)`, offset, len, errnoError(-r));
      this.noPunchHole = true;
      this.log(`${this.describe}: fallocate PUNCH_HOLE is not supported here (EOPNOTSUPP); discard and write-zeroes write zeroes instead`);
    }
    this.writeZeroBytes(offset, len);
  }

  private writeZeroBytes(offset: number, len: number): void {
    for (let done = 0; done < len; ) {
      const n = Math.min(ZEROES.length, len - done);
      this.write(offset + done, ZEROES.subarray(0, n));
      done += n;
    }
  }

  close(): void {
    if (this.handle < 0) return;
    closeSync(this.handle);
    this.handle = -1;
    this.bounce.release();
  }
}
