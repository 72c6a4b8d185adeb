// Which blocks of a memory disk were written since the last look: the pre-copy of a migration
// between our own hosts (docs/migration.md, "Pre-copy") sends the whole disk while the guest runs,
// then only the blocks written since, round after round, so that the rings stop for the last few.
//
// One bit per 4 KiB block in a SharedArrayBuffer that every thread mapping the disk shares (the
// device slot makes it beside the disk's memfd; queue threads get the same buffer). A writer sets
// the bits AFTER its bytes are in the disk; the pre-copy clears a word (Atomics.exchange) BEFORE
// copying the blocks it names. So a write racing a copy always leaves its bit set for the next
// round, and the last round, with the rings stopped, sees every write.
//
// This module imports no native code (a device module bundled on its own uses memory.ts).

export const DIRTY_BLOCK = 4096;
/** Word 0: 1 while tracking; the bitmap follows. */
const HEADER_WORDS = 1;

export class DirtyBlocks {
  private readonly words: Int32Array;
  readonly blocks: number;

  constructor(readonly buffer: SharedArrayBuffer, readonly diskSize: number) {
    this.blocks = Math.ceil(diskSize / DIRTY_BLOCK);
    const need = DirtyBlocks.bytesFor(diskSize);
    if (!(buffer instanceof SharedArrayBuffer) || buffer.byteLength < need) {
      throw new RangeError(`dirty-block map: ${buffer?.byteLength} bytes given, ${need} needed for a ${diskSize}-byte disk`);
    }
    this.words = new Int32Array(buffer, 0, need / 4);
  }

  static bytesFor(diskSize: number): number {
    return (HEADER_WORDS + Math.ceil(Math.ceil(diskSize / DIRTY_BLOCK) / 32)) * 4;
  }

  static create(diskSize: number): DirtyBlocks {
    return new DirtyBlocks(new SharedArrayBuffer(DirtyBlocks.bytesFor(diskSize)), diskSize);
  }

  get tracking(): boolean {
    return Atomics.load(this.words, 0) === 1;
  }

  /** Starts (or restarts) tracking with nothing marked. */
  start(): void {
    Atomics.store(this.words, 0, 1);
    for (let i = HEADER_WORDS; i < this.words.length; i++) Atomics.store(this.words, i, 0);
  }

  stop(): void {
    Atomics.store(this.words, 0, 0);
  }

  /** A write of [offset, offset + len) has landed (call after the bytes are in the disk). */
  mark(offset: number, len: number): void {
    // The common case (not migrating) costs one load.
    if (this.words[0] !== 1 || len <= 0) return;
    const first = Math.floor(offset / DIRTY_BLOCK);
    const last = Math.min(this.blocks - 1, Math.floor((offset + len - 1) / DIRTY_BLOCK));
    for (let b = first; b <= last; ) {
      const w = b >>> 5;
      const lo = b & 31;
      const hi = Math.min(31, lo + (last - b));
      const bits = hi - lo === 31 ? -1 : (((1 << (hi - lo + 1)) - 1) << lo) | 0;
      Atomics.or(this.words, HEADER_WORDS + w, bits);
      b += hi - lo + 1;
    }
  }

  /** Every block marked since the last take, as [offset, length) byte runs in order; clears them. */
  take(): [offset: number, length: number][] {
    const runs: [number, number][] = [];
    let runStart = -1;
    let runEnd = -1;
    for (let i = HEADER_WORDS; i < this.words.length; i++) {
      if (this.words[i] === 0) continue;
      const v = Atomics.exchange(this.words, i, 0);
      for (let bit = 0; bit < 32; bit++) {
        if ((v & (1 << bit)) === 0) continue;
        const b = (i - HEADER_WORDS) * 32 + bit;
        const at = b * DIRTY_BLOCK;
        if (at === runEnd) runEnd = Math.min(this.diskSize, at + DIRTY_BLOCK);
        else {
          if (runStart >= 0) runs.push([runStart, runEnd - runStart]);
          runStart = at;
          runEnd = Math.min(this.diskSize, at + DIRTY_BLOCK);
        }
      }
    }
    if (runStart >= 0) runs.push([runStart, runEnd - runStart]);
    return runs;
  }

  /** Marked blocks now (without clearing). */
  count(): number {
    let n = 0;
    for (let i = HEADER_WORDS; i < this.words.length; i++) {
      let v = this.words[i];
      while (v !== 0) {
        v &= v - 1;
        n++;
      }
    }
    return n;
  }
}
