// The vhost-user dirty log (VHOST_F_LOG_ALL + SET_LOG_BASE): one bit per 4 KiB guest page,
// bit (gpa / 4096) of the area, LSB first within each byte. The front-end reads and clears the
// area concurrently, so every update is an atomic OR: a plain read-modify-write could erase a
// bit the front-end (or another queue's worker) set in the same byte. Atomics.or is allowed on
// a non-shared ArrayBuffer (only Atomics.wait needs a SharedArrayBuffer) and on x86 compiles to
// a locked OR, which is what the other process needs to see.

import type { Backing } from './guest-memory.ts';
import { DEFAULT_WINDOW_SIZE, hex } from './guest-memory.ts';

export const LOG_PAGE_SIZE = 4096;

export interface DirtyLogOptions {
  windowSize?: number;
  /**
   * Called when a write falls (partly) beyond the log: the front-end sized the log smaller than
   * guest memory. Reported, never thrown: losing a bit must not take the data path down.
   */
  onOutOfRange?: (message: string) => void;
}

export class DirtyLog {
  readonly size: number;
  private readonly windowSize: number;
  private readonly windows: (Uint8Array | undefined)[] = [];
  private readonly onOutOfRange: (message: string) => void;
  /** How many mark() calls hit pages beyond the log. */
  outOfRange = 0;

  constructor(
    private readonly backing: Backing,
    opts: DirtyLogOptions = {},
  ) {
    this.size = backing.size;
    this.windowSize = opts.windowSize ?? DEFAULT_WINDOW_SIZE;
    this.onOutOfRange = opts.onOutOfRange ?? (() => {});
  }

  /** Faults the native guard contained in the log's mapping (the log file shrank under us). */
  faults(): number {
    return this.backing.faults?.() ?? 0;
  }

  /** Pages the log can describe. */
  get pages(): number {
    return this.size * 8;
  }

  /**
   * Marks every page touched by [gpa, gpa+len). Returns false (after marking the pages that do
   * fit) when some page lies beyond the log.
   */
  mark(gpa: number, len: number): boolean {
    if (len <= 0) return true;
    if (!Number.isSafeInteger(gpa) || !Number.isSafeInteger(len) || gpa < 0) {
      this.report(`dirty log: bad range gpa=${gpa} len=${len}`);
      return false;
    }
    const first = Math.floor(gpa / LOG_PAGE_SIZE);
    const last = Math.floor((gpa + len - 1) / LOG_PAGE_SIZE);
    const limit = this.pages - 1;
    let ok = true;
    let end = last;
    if (last > limit) {
      ok = false;
      this.report(`dirty log: write at [${hex(gpa)}, +${len}) reaches page ${hex(last)}, log covers ${hex(this.pages)} pages`);
      end = limit;
    }
    for (let p = first; p <= end; ) {
      const byte = Math.floor(p / 8);
      const bit = p % 8;
      const n = Math.min(8 - bit, end - p + 1);
      const mask = ((1 << n) - 1) << bit;
      this.orByte(byte, mask);
      p += n;
    }
    return ok;
  }

  /** True when page `page` is marked (tests, diagnostics). */
  isDirty(page: number): boolean {
    if (page < 0 || page >= this.pages) return false;
    const byte = Math.floor(page / 8);
    const [view, i] = this.locate(byte);
    return (Atomics.load(view, i) & (1 << page % 8)) !== 0;
  }

  private orByte(byte: number, mask: number): void {
    const [view, i] = this.locate(byte);
    Atomics.or(view, i, mask);
  }

  private locate(byte: number): [Uint8Array, number] {
    const w = Math.floor(byte / this.windowSize);
    let view = this.windows[w];
    if (view === undefined) {
      const off = w * this.windowSize;
      const len = Math.min(this.windowSize, this.size - off);
      view = new Uint8Array(this.backing.window(off, len));
      this.windows[w] = view;
    }
    return [view, byte - w * this.windowSize];
  }

  private report(msg: string): void {
    this.outOfRange++;
    try {
      this.onOutOfRange(msg);
    } catch {
      // A failing logger must not turn a lost dirty bit into a crash either.
    }
  }
}
