// First-fit allocator over one contiguous address range, with coalescing frees. The driver
// allocates one block per in-flight request, so the free list stays a few dozen extents long
// and a linear scan beats anything cleverer.

export interface Extent {
  start: number;
  len: number;
}

export class RangeAllocator {
  /** Free extents sorted by start, never adjacent (frees coalesce). */
  private readonly freeList: Extent[];
  /** start -> length of every live allocation, so free() needs only the address. */
  private readonly live = new Map<number, number>();
  private freeBytes: number;

  constructor(readonly base: number, readonly size: number) {
    if (!Number.isSafeInteger(base) || !Number.isSafeInteger(size) || base < 0 || size <= 0) {
      throw new RangeError(`allocator: bad range base ${base} size ${size}`);
    }
    this.freeList = [{ start: base, len: size }];
    this.freeBytes = size;
  }

  get available(): number {
    return this.freeBytes;
  }

  get allocations(): number {
    return this.live.size;
  }

  /** An address aligned to `align` (a power of two) with `len` bytes, or -1 when nothing fits. */
  alloc(len: number, align = 16): number {
    if (!Number.isInteger(len) || len <= 0) throw new RangeError(`allocator: bad length ${len}`);
    if (align <= 0 || (align & (align - 1)) !== 0) throw new RangeError(`allocator: alignment ${align} is not a power of two`);
    const list = this.freeList;
    for (let i = 0; i < list.length; i++) {
      const e = list[i];
      const start = Math.ceil(e.start / align) * align;
      const pad = start - e.start;
      if (pad + len > e.len) continue;
      const tail = e.len - pad - len;
      // Split into [pad before] [allocation] [tail after]; empty pieces vanish.
      const pieces: Extent[] = [];
      if (pad > 0) pieces.push({ start: e.start, len: pad });
      if (tail > 0) pieces.push({ start: start + len, len: tail });
      list.splice(i, 1, ...pieces);
      this.live.set(start, len);
      this.freeBytes -= len;
      return start;
    }
    return -1;
  }

  /** Releases an allocation by its address; freeing anything else is a caller bug and throws. */
  free(addr: number): void {
    const len = this.live.get(addr);
    if (len === undefined) throw new Error(`allocator: 0x${addr.toString(16)} is not an allocated block`);
    this.live.delete(addr);
    this.freeBytes += len;
    const list = this.freeList;
    let i = 0;
    while (i < list.length && list[i].start < addr) i++;
    const prev = i > 0 ? list[i - 1] : undefined;
    const next = i < list.length ? list[i] : undefined;
    const joinsPrev = prev !== undefined && prev.start + prev.len === addr;
    const joinsNext = next !== undefined && addr + len === next.start;
    if (joinsPrev && joinsNext) {
      prev.len += len + next.len;
      list.splice(i, 1);
    } else if (joinsPrev) {
      prev.len += len;
    } else if (joinsNext) {
      next.start = addr;
      next.len += len;
    } else {
      list.splice(i, 0, { start: addr, len });
    }
  }

  /** Length of the live allocation at addr, or undefined. */
  sizeOf(addr: number): number | undefined {
    return this.live.get(addr);
  }
}
