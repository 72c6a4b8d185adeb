// memory:SIZE: a disk outside the plugin's capped linear memory. In the host it lives in the
// device's memfd (memory-disk.ts; host/server/device-slot.ts makes it once per device), which
// every queue thread maps: a write acked on one queue is what a read on another sees, and the
// disk outlives a worker replaced after a failure. Without shared pages (a backing made on its
// own: tests, a TypeScript device, --print-capabilities) it is chunks of this thread's memory,
// allocated on first write. Either way a page never written costs nothing until touched, and
// discarding whole pages (chunks) gives them back.
//
// This module imports no native code, so a device module bundled on its own can use it.
import type { Backing } from './backing.ts';
import type { DirtyBlocks } from './dirty-blocks.ts';

/** Bytes of one chunk (a window into shared pages is at most 1 GiB). */
const CHUNK = 64 * 1024 * 1024;
const PAGE = 4096;

/** A memory disk's pages shared between threads: a memfd mapped in this one (memory-disk.ts). */
export interface SharedPages {
  /** The bytes [offset, offset + len) of the mapping (len <= CHUNK). */
  window(offset: number, len: number): ArrayBuffer;
  /** Gives the page-aligned range back to the system (it reads as zeroes through every mapping); false when it cannot. */
  punchHole(offset: number, len: number): boolean;
  /** Unmaps (the memfd stays its owner's). */
  close(): void;
}

export class MemoryBacking implements Backing {
  readonly describe: string;
  /** Any alignment is as fast as any other here; 512 is what a guest expects of a disk. */
  readonly blockSize = 512;
  /**
   * Shared pages: a window per chunk, all made at once. Else: this thread's chunks, undefined
   * until written. (A window is external memory to V8, which answers its growth with collections:
   * made on first use, a guest's first writes all over the disk, such as the first requests
   * after a migration's stop, paid 5-9 ms of them.)
   */
  private readonly chunks: (Uint8Array | undefined)[];
  /** Reads that cross a chunk boundary (or hit holes) are assembled here. */
  private scratch = Buffer.alloc(0);
  /**
   * Bytes copied into or out of the disk's pages so far, counted where each copy is made (zeroes
   * for holes are not copies). The memory executor holds it to one copy per byte requested.
   */
  copied = 0;

  /** `shared`: the device's memory disk mapped here (it must hold `size` bytes); absent: a disk of this thread's own. */
  constructor(
    readonly size: number,
    readonly readOnly: boolean,
    private readonly shared?: SharedPages,
    /** The device's dirty-block map (pre-copy): every write marks its blocks after it landed. */
    private readonly dirty?: DirtyBlocks,
  ) {
    if (!Number.isSafeInteger(size) || size < 0) throw new RangeError(`memory backing: bad size ${size}`);
    this.describe = `memory:${size}`;
    this.chunks = new Array(Math.ceil(size / CHUNK));
    if (shared) for (let i = 0; i < this.chunks.length; i++) this.writable(i);
  }

  private chunkLen(i: number): number {
    return Math.min(CHUNK, this.size - i * CHUNK);
  }

  /** Chunk i to read, or undefined for a hole (never in shared pages: unwritten pages read as zeroes there). */
  private readable(i: number): Uint8Array | undefined {
    return this.shared ? this.writable(i) : this.chunks[i];
  }

  private writable(i: number): Uint8Array {
    let c = this.chunks[i];
    if (c === undefined) {
      c = this.chunks[i] = this.shared ? new Uint8Array(this.shared.window(i * CHUNK, this.chunkLen(i))) : Buffer.alloc(this.chunkLen(i));
    }
    return c;
  }

  read(offset: number, len: number): Uint8Array {
    const i = Math.floor(offset / CHUNK);
    const at = offset - i * CHUNK;
    const c = this.readable(i);
    // The common case, inside one chunk: a view of the disk, copied once by the caller.
    if (c !== undefined && at + len <= CHUNK) return c.subarray(at, at + len);
    if (this.scratch.length < len) this.scratch = Buffer.alloc(len);
    const out = this.scratch.subarray(0, len);
    this.copyOut(offset, out);
    return out;
  }

  /** [offset, offset + out.length) into `out`, holes as zeroes. */
  private copyOut(offset: number, out: Uint8Array): void {
    this.each(offset, out.length, (ci, at, n, done) => {
      const chunk = this.readable(ci);
      if (chunk === undefined) out.fill(0, done, done + n);
      else {
        out.set(chunk.subarray(at, at + n), done);
        this.copied += n;
      }
    });
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
    this.each(offset, data.length, (ci, at, n, done) => this.writable(ci).set(data.subarray(done, done + n), at));
    this.copied += data.length;
    this.dirty?.mark(offset, data.length);
  }

  /**
   * Copies [offset, offset + total length of `into`) straight into the views (guest memory):
   * one copy, holes read as zeroes. The caller checked the range (the memory executor's read).
   */
  readInto(offset: number, into: readonly Uint8Array[]): void {
    let pos = offset;
    for (let k = 0; k < into.length; k++) {
      const v = into[k];
      const n = v.length;
      // The usual case, inside one chunk that exists: one copy, no closure (this runs per request).
      const i = Math.floor(pos / CHUNK);
      const at = pos - i * CHUNK;
      const c = at + n <= CHUNK ? this.readable(i) : undefined;
      if (c !== undefined) {
        v.set(c.subarray(at, at + n));
        this.copied += n;
      } else this.copyOut(pos, v);
      pos += n;
    }
  }

  /** Copies the views (guest memory) to [offset, ...): one copy. The caller checked the range. */
  writeFrom(offset: number, from: readonly Uint8Array[]): void {
    let pos = offset;
    for (let k = 0; k < from.length; k++) {
      const v = from[k];
      const n = v.length;
      const i = Math.floor(pos / CHUNK);
      const at = pos - i * CHUNK;
      if (at + n <= CHUNK) {
        this.writable(i).set(v, at);
        this.copied += n;
      } else this.write(pos, v);
      pos += n;
    }
    this.dirty?.mark(offset, pos - offset);
  }

  flush(): void {
    // Nothing outlives the process anyway; a write is in the shared pages once it returns, so
    // every queue thread's later flush is ordered after it (docs/architecture.md, "Queue threads").
  }

  discard(offset: number, len: number): void {
    this.writeZeroes(offset, len);
  }

  writeZeroes(offset: number, len: number): void {
    if (this.shared) {
      this.zeroShared(offset, len);
      this.dirty?.mark(offset, len);
      return;
    }
    this.each(offset, len, (ci, at, n) => {
      const chunk = this.chunks[ci];
      if (chunk === undefined) return;
      if (at === 0 && n === chunk.length) this.chunks[ci] = undefined;
      else chunk.fill(0, at, at + n);
    });
  }

  /** Whole pages go back to the system (a hole punched in the memfd, seen by every mapping); the edges are zeroed. */
  private zeroShared(offset: number, len: number): void {
    const start = Math.ceil(offset / PAGE) * PAGE;
    const end = Math.floor((offset + len) / PAGE) * PAGE;
    if (end <= start) return this.fill(offset, len);
    if (start > offset) this.fill(offset, start - offset);
    // tmpfs has punched holes since Linux 3.5; should it refuse, zeroes written are as good.
    if (!this.shared!.punchHole(start, end - start)) this.fill(start, end - start);
    if (offset + len > end) this.fill(end, offset + len - end);
  }

  private fill(offset: number, len: number): void {
    this.each(offset, len, (ci, at, n) => this.writable(ci).fill(0, at, at + n));
  }

  close(): void {
    this.chunks.fill(undefined);
    this.shared?.close();
  }
}
