// memory:SIZE: a disk in the device worker's own memory (outside the plugin's capped linear
// memory). Chunks are allocated on first write, so a large, mostly empty disk costs only what
// was written, and a discard covering a whole chunk gives it back.
import type { Backing } from './backing.ts';

const CHUNK = 64 * 1024 * 1024;

export class MemoryBacking implements Backing {
  readonly describe: string;
  /** Any alignment is as fast as any other here; 512 is what a guest expects of a disk. */
  readonly blockSize = 512;
  private readonly chunks: (Buffer | undefined)[];
  /** Reads that cross a chunk boundary (or hit holes) are assembled here. */
  private scratch = Buffer.alloc(0);

  constructor(readonly size: number, readonly readOnly: boolean) {
    if (!Number.isSafeInteger(size) || size < 0) throw new RangeError(`memory backing: bad size ${size}`);
    this.describe = `memory:${size}`;
    this.chunks = new Array(Math.ceil(size / CHUNK));
  }

  private chunkLen(i: number): number {
    return Math.min(CHUNK, this.size - i * CHUNK);
  }

  read(offset: number, len: number): Uint8Array {
    const i = Math.floor(offset / CHUNK);
    const at = offset - i * CHUNK;
    const c = this.chunks[i];
    // The common case, one written chunk: a view, copied once by the glue.
    if (c !== undefined && at + len <= CHUNK) return c.subarray(at, at + len);
    if (this.scratch.length < len) this.scratch = Buffer.alloc(len);
    const out = this.scratch.subarray(0, len);
    for (let done = 0; done < len; ) {
      const pos = offset + done;
      const ci = Math.floor(pos / CHUNK);
      const off = pos - ci * CHUNK;
      const n = Math.min(len - done, CHUNK - off);
      const chunk = this.chunks[ci];
      if (chunk === undefined) out.fill(0, done, done + n);
      else chunk.copy(out, done, off, off + n);
      done += n;
    }
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
    this.each(offset, data.length, (ci, at, n, done) => {
      const chunk = (this.chunks[ci] ??= Buffer.alloc(this.chunkLen(ci)));
      chunk.set(data.subarray(done, done + n), at);
    });
  }

  flush(): void {
    // Nothing outlives the process anyway.
  }

  discard(offset: number, len: number): void {
    this.writeZeroes(offset, len);
  }

  writeZeroes(offset: number, len: number): void {
    this.each(offset, len, (ci, at, n) => {
      const chunk = this.chunks[ci];
      if (chunk === undefined) return;
      if (at === 0 && n === chunk.length) this.chunks[ci] = undefined;
      else chunk.fill(0, at, at + n);
    });
  }

  close(): void {
    this.chunks.fill(undefined);
  }
}
