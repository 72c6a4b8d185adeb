// A driver-side virtqueue in the front-end's guest RAM: the split ring, its kick and call
// eventfds, and the buffers of in-flight requests. Each request gets one contiguous block of
// guest RAM (readable bytes first, then writable space), freed when the device returns it.
// Kicks are batched per microtask, so a burst of submit() calls costs one kickNeeded() check
// and at most one eventfd write.

import { native } from '../native/index.ts';
import type { Watcher } from '../native/api.ts';
import type { DriverBuffer } from './rings/common.ts';
import { SplitDriverRing } from './rings/split.ts';
import type { GuestRam } from './driver-memory.ts';

export interface QueueOptions {
  index: number;
  size: number;
  eventIdx: boolean;
  /** Entries per indirect table; 0 = no indirect descriptors. */
  indirectEntries: number;
  /** Ring index the queue starts at (SET_VRING_BASE must say the same); default 0. */
  startIndex?: number;
}

export interface SubmitOptions {
  /** Put the chain in an indirect table (requires indirectEntries > 0). */
  indirect?: boolean;
  /**
   * false: publish the chain but never kick for it (a device that polls its ring must find it
   * alone; kick() sends one later). Default: kick when the device asks for kicks.
   */
  kick?: boolean;
}

export interface Completion {
  /** Copy of every writable buffer, concatenated (the full space, whatever `len` says). */
  data: Uint8Array;
  /** What the device put in the used element. */
  len: number;
}

/** A readable buffer's contents, or just its length (device reads whatever is there). */
export type Readable = Uint8Array | number;

interface Pending {
  readable: Readable[];
  writable: number[];
  indirect: boolean;
  kick: boolean;
  resolve: (c: Completion) => void;
  reject: (e: Error) => void;
}

interface InFlight {
  block: number;
  writableGpa: number;
  writableLen: number;
  resolve: (c: Completion) => void;
  reject: (e: Error) => void;
}

const ALIGN = 16;
const roundUp = (n: number) => Math.ceil(n / ALIGN) * ALIGN;

export class DriverQueue {
  readonly index: number;
  readonly ring: SplitDriverRing;
  readonly kickFd: number;
  readonly callFd: number;
  private readonly mem: GuestRam;
  private readonly ringGpa: number;
  private readonly inflight: (InFlight | undefined)[];
  /** Requests waiting for descriptors or guest RAM, in submission order. */
  private readonly waiting: Pending[] = [];
  private watcher: Watcher | null = null;
  private kickScheduled = false;
  private failed: Error | null = null;
  private closed = false;
  /** Requests placed on the ring since creation (GET_VRING_BASE reports startIndex + added, mod 2^16). */
  added = 0;
  readonly startIndex: number;
  kicks = 0;
  calls = 0;
  private callsSuppressed = false;

  constructor(mem: GuestRam, opts: QueueOptions) {
    this.index = opts.index;
    this.mem = mem;
    const layout = SplitDriverRing.layoutFor(opts.size, opts.indirectEntries);
    this.ringGpa = mem.alloc(layout.bytes, 4096);
    this.ring = new SplitDriverRing({
      size: opts.size,
      memory: mem.view(this.ringGpa, layout.bytes),
      gpa: this.ringGpa,
      eventIdx: opts.eventIdx,
      indirectEntries: opts.indirectEntries,
      startIndex: opts.startIndex,
    });
    this.startIndex = opts.startIndex ?? 0;
    this.inflight = new Array(opts.size);
    this.kickFd = native.eventfd(0);
    this.callFd = native.eventfd(0);
  }

  /** Ring addresses as SET_VRING_ADDR wants them (front-end virtual addresses). */
  addresses(): { desc: number; avail: number; used: number } {
    return { desc: this.mem.uva(this.ring.descGpa), avail: this.mem.uva(this.ring.availGpa), used: this.mem.uva(this.ring.usedGpa) };
  }

  /** Starts waiting for used-buffer notifications. */
  start(): void {
    if (this.watcher !== null || this.closed) return;
    this.watcher = native.watch(this.callFd, 'r', () => this.onCall());
  }

  get inFlight(): number {
    return this.ring.inFlight;
  }

  /**
   * Queues one request: `readable` buffers the device reads, then `writable` buffers (byte
   * lengths) it fills. Resolves when the device returns it.
   */
  submit(readable: Readable[], writable: number | number[], opts: SubmitOptions = {}): Promise<Completion> {
    if (this.failed !== null) return Promise.reject(this.failed);
    if (this.closed) return Promise.reject(new Error(`queue ${this.index} is closed`));
    const w = typeof writable === 'number' ? (writable > 0 ? [writable] : []) : writable;
    return new Promise<Completion>((resolve, reject) => {
      const p: Pending = { readable, writable: w, indirect: opts.indirect ?? false, kick: opts.kick ?? true, resolve, reject };
      if (this.waiting.length > 0 || !this.place(p)) this.waiting.push(p);
    });
  }

  /** Puts a request on the ring; false when descriptors or guest RAM ran out (try again later). */
  private place(p: Pending): boolean {
    let total = 0;
    for (const r of p.readable) total += roundUp(typeof r === 'number' ? r : r.length);
    let writableLen = 0;
    for (const n of p.writable) writableLen += n;
    total += roundUp(writableLen);
    const block = this.mem.tryAlloc(Math.max(total, ALIGN), ALIGN);
    if (block < 0) {
      // With nothing in flight no completion will ever free room: waiting would hang.
      if (this.ring.inFlight > 0) return false;
      p.reject(new RangeError(`queue ${this.index}: a ${total}-byte request does not fit in guest RAM`));
      return true;
    }
    const rd: DriverBuffer[] = [];
    let gpa = block;
    for (const r of p.readable) {
      const len = typeof r === 'number' ? r : r.length;
      if (typeof r !== 'number') this.mem.view(gpa, len).set(r);
      rd.push({ gpa, len });
      gpa += roundUp(len);
    }
    const writableGpa = gpa;
    const wr: DriverBuffer[] = [];
    for (const n of p.writable) {
      wr.push({ gpa, len: n });
      gpa += n;
    }
    let head: number | null;
    try {
      head = this.ring.add(rd, wr, { indirect: p.indirect });
    } catch (e) {
      this.mem.free(block);
      p.reject(e as Error);
      return true;
    }
    if (head === null) {
      this.mem.free(block);
      if (this.ring.inFlight > 0) return false;
      p.reject(new RangeError(`queue ${this.index}: ${rd.length + wr.length} descriptors do not fit in a ring of ${this.ring.size}`));
      return true;
    }
    this.inflight[head] = { block, writableGpa, writableLen, resolve: p.resolve, reject: p.reject };
    this.added++;
    if (p.kick) this.scheduleKick();
    else this.ring.kickNeeded(); // marks it as kicked-for: a later submit's kick decision is its own
    return true;
  }

  /** Kicks the device whatever its suppression says (after submit with kick: false). */
  kick(): void {
    this.kicks++;
    native.eventfdWrite(this.kickFd, 1);
  }

  private scheduleKick(): void {
    if (this.kickScheduled) return;
    this.kickScheduled = true;
    queueMicrotask(() => {
      this.kickScheduled = false;
      if (this.closed) return;
      if (this.ring.kickNeeded()) {
        this.kicks++;
        native.eventfdWrite(this.kickFd, 1);
      }
    });
  }

  private onCall(): void {
    if (this.closed) return;
    native.eventfdRead(this.callFd);
    this.calls++;
    this.poll();
  }

  /**
   * Asks the device for no used-buffer notifications, as a driver that busy-polls its used ring
   * does (EVENT_IDX: used_event parked half the index space away; otherwise NO_INTERRUPT). Reap
   * completions with reap(); poll() asks for calls again (as does a call that still arrives,
   * counted in `calls`).
   */
  suppressCalls(): void {
    this.callsSuppressed = true;
    this.ring.disableInterrupts();
  }

  /** Completes what the device has used so far without re-arming notifications (a polling driver); how many. */
  reap(): number {
    let n = 0;
    try {
      for (const u of this.ring.getUsed()) {
        this.complete(u.head, u.len);
        n++;
      }
    } catch (e) {
      this.fail(e as Error);
      return n;
    }
    // EVENT_IDX: park used_event again past what was just reaped, so it never comes into range.
    if (this.callsSuppressed) this.ring.disableInterrupts();
    while (this.waiting.length > 0 && this.place(this.waiting[0])) this.waiting.shift();
    return n;
  }

  /** Reaps used entries until none are left after re-arming notifications (no lost wake-up). */
  poll(): void {
    this.callsSuppressed = false; // enableInterrupts below asks for calls again
    try {
      do {
        for (const u of this.ring.getUsed()) this.complete(u.head, u.len);
      } while (this.ring.enableInterrupts());
    } catch (e) {
      this.fail(e as Error);
      return;
    }
    while (this.waiting.length > 0 && this.place(this.waiting[0])) this.waiting.shift();
  }

  private complete(head: number, len: number): void {
    const f = this.inflight[head]!;
    this.inflight[head] = undefined;
    const data = f.writableLen > 0 ? this.mem.view(f.writableGpa, f.writableLen).slice() : new Uint8Array(0);
    this.mem.free(f.block);
    f.resolve({ data, len });
  }

  /** The device broke the ring: every outstanding request fails with the reason. */
  private fail(e: Error): void {
    if (this.failed !== null) return;
    this.failed = e;
    for (let h = 0; h < this.inflight.length; h++) {
      const f = this.inflight[h];
      if (f === undefined) continue;
      this.inflight[h] = undefined;
      f.reject(e);
    }
    for (const p of this.waiting.splice(0)) p.reject(e);
  }

  /**
   * Stops watching and closes the eventfds; requests still outstanding are rejected. Their
   * guest RAM is not reused (the device may still own it), and is released with the RAM.
   */
  close(): void {
    if (this.closed) return;
    this.fail(new Error(`queue ${this.index} closed with requests outstanding`));
    this.closed = true;
    this.watcher?.close();
    this.watcher = null;
    native.close(this.kickFd);
    native.close(this.callFd);
  }
}
