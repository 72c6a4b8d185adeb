// memory:SIZE: a disk held in a memfd, outside the plugin's capped linear memory. The memfd is
// the device's, not a worker's (host/server/device-slot.ts makes it once per device): every
// queue thread of the device maps the same pages, so a write acked on one queue is what a read
// on another sees, and the disk outlives a worker that is replaced after a failure. A memfd
// takes pages only as they are written (read through the mapping, a page never written is
// zero and costs a page from then on).
import { native } from '../native/index.ts';
import type { Mapping } from '../native/api.ts';
import type { Backing } from './backing.ts';

/** Bytes of one window into the mapping (windows are at most native.MAX_WINDOW). */
const CHUNK = 64 * 1024 * 1024;
const PAGE = 4096;

export class MemoryBacking implements Backing {
  readonly describe: string;
  /** Any alignment is as fast as any other here; 512 is what a guest expects of a disk. */
  readonly blockSize = 512;
  private readonly fd: number | null;
  /** Made here (no fd given): ours to close. */
  private readonly ownFd: boolean;
  private readonly mapping: Mapping | null;
  /** One window per CHUNK bytes, made on first use. */
  private readonly chunks: (Uint8Array | undefined)[];
  /** Reads that cross a chunk boundary are assembled here. */
  private scratch = Buffer.alloc(0);

  /**
   * `fd`: the device's memfd holding the disk (at least `size` bytes; borrowed: the caller closes
   * it). Without one the disk gets a memfd of its own (one thread's disk: tests, --print-capabilities).
   */
  constructor(readonly size: number, readonly readOnly: boolean, fd?: number) {
    if (!Number.isSafeInteger(size) || size < 0) throw new RangeError(`memory backing: bad size ${size}`);
    this.describe = `memory:${size}`;
    this.chunks = new Array(Math.ceil(size / CHUNK));
    this.ownFd = fd === undefined;
    if (size === 0) {
      this.fd = null;
      this.mapping = null;
      return;
    }
    this.fd = fd ?? createMemoryDisk(size);
    try {
      const have = native.fstat(this.fd).size;
      if (have < size) throw new RangeError(`memory backing: the disk's memfd holds ${have} bytes, not ${size}`);
      this.mapping = native.mmap(this.fd, size, 0, !readOnly);
    } catch (e) {
      if (this.ownFd) native.close(this.fd);
      throw e;
    }
  }

  private chunk(i: number): Uint8Array {
    let c = this.chunks[i];
    if (c === undefined) {
      const at = i * CHUNK;
      c = this.chunks[i] = new Uint8Array(this.mapping!.window(at, Math.min(CHUNK, this.size - at)));
    }
    return c;
  }

  read(offset: number, len: number): Uint8Array {
    const i = Math.floor(offset / CHUNK);
    const at = offset - i * CHUNK;
    // The common case, inside one chunk: a view of the disk, copied once by the caller.
    if (at + len <= CHUNK) return this.chunk(i).subarray(at, at + len);
    if (this.scratch.length < len) this.scratch = Buffer.alloc(len);
    const out = this.scratch.subarray(0, len);
    this.each(offset, len, (ci, a, n, done) => out.set(this.chunk(ci).subarray(a, a + n), done));
    return out;
  }

  private each(offset: number, len: number, fn: (chunkIndex: number, at: number, n: number, done: number) => void): void {
    for (let done = 0; done < len; ) {
      const pos = offset + done;
      const ci = Math.floor(pos / CHUNK);
      const at = pos - ci * CHUNK;
      const n = Math.min(len - done, CHUNK - at);
      fn(ci, at, n, done);
      done += n;
    }
  }

  write(offset: number, data: Uint8Array): void {
    this.each(offset, data.length, (ci, at, n, done) => this.chunk(ci).set(data.subarray(done, done + n), at));
  }

  /**
   * Copies [offset, offset + total length of `into`) straight into the views (guest memory):
   * one copy. The caller checked the range (the memory executor's read).
   */
  readInto(offset: number, into: readonly Uint8Array[]): void {
    let pos = offset;
    for (const v of into) {
      this.each(pos, v.length, (ci, at, n, done) => v.set(this.chunk(ci).subarray(at, at + n), done));
      pos += v.length;
    }
  }

  /** Copies the views (guest memory) to [offset, ...): one copy. The caller checked the range. */
  writeFrom(offset: number, from: readonly Uint8Array[]): void {
    let pos = offset;
    for (const v of from) {
      this.write(pos, v);
      pos += v.length;
    }
  }

  flush(): void {
    // Nothing outlives the process anyway; a write is in the shared pages once it returns, so
    // every queue thread's later flush is ordered after it (docs/architecture.md, "Queue threads").
  }

  discard(offset: number, len: number): void {
    this.writeZeroes(offset, len);
  }

  /** Whole pages go back to the system (a hole punched in the memfd, seen by every mapping); the edges are zeroed. */
  writeZeroes(offset: number, len: number): void {
    const start = Math.ceil(offset / PAGE) * PAGE;
    const end = Math.floor((offset + len) / PAGE) * PAGE;
    if (end <= start || this.fd === null) return this.fill(offset, len);
    if (start > offset) this.fill(offset, start - offset);
    const { KEEP_SIZE, PUNCH_HOLE } = native.FALLOC_FL;
    const r = native.fsFallocate(this.fd, PUNCH_HOLE | KEEP_SIZE, start, end - start);
    // tmpfs has punched holes since Linux 3.5; should it refuse, zeroes written are as good.
    if (r !== 0) this.fill(start, end - start);
    if (offset + len > end) this.fill(end, offset + len - end);
  }

  private fill(offset: number, len: number): void {
    this.each(offset, len, (ci, at, n) => this.chunk(ci).fill(0, at, at + n));
  }

  close(): void {
    this.chunks.fill(undefined);
    this.mapping?.unmap();
    if (this.ownFd && this.fd !== null) native.close(this.fd);
  }
}

/** A zeroed memfd of `size` bytes for a memory disk, sealed at that size (the caller closes it). */
export function createMemoryDisk(size: number): number {
  const fd = native.memfdCreate('vhost-wasm-memory-disk', true);
  try {
    native.ftruncate(fd, size);
    // F_SEAL_SHRINK | F_SEAL_GROW: nobody can pull pages from under a mapping of it.
    native.memfdAddSeals(fd, 0x2 | 0x4);
  } catch (e) {
    native.close(fd);
    throw e;
  }
  return fd;
}
