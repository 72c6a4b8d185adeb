// `handle`, the one call per batch, lowered and lifted by the host: it writes the events into
// plugin memory and reads the actions out of it itself, by the canonical ABI of wit/device.wit
// (the layouts below; test/direct-handle.test.ts holds them to jco's own lowering and lifting
// of the same components), instead of jco's generated per-field code. jco's wrapper still
// runs around the core call (its task bookkeeping is what its import trampolines rely on), and
// jco's glue keeps every cold call.
//
// What comes back is untrusted like everything from a plugin: every list is checked against
// the memory, its alignment and the call's budget (the LiftGuard's rules, lift-guard.ts)
// before anything is read from it, every discriminant and bool against its cases, and the
// only copies made are of `bytes` pieces, which the budget bounds. A frame's bytes never
// enter plugin memory (only its prefix), and a send names guest bytes, not plugin bytes.

import type { BackingOp, BackingOpKind, DeviceAction, DeviceEvent, Piece, Transfer } from '../device/device.ts';
import { LiftError, type CallBudget, type HotHandle, type LiftGuard } from './lift-guard.ts';

// Canonical ABI layouts (sizes, alignments, field offsets) of the types interface.
const EVENT_SIZE = 32;
const EVENT_ALIGN = 8;
const ACTION_SIZE = 48;
const ACTION_ALIGN = 8;
const TRANSFER_SIZE = 32;
const OP_SIZE = 24;
const PIECE_SIZE = 32;
/** The arena for small `bytes` pieces, and the largest piece copied into one (larger ones get their own copy). */
const ARENA_BYTES = 16384;
const ARENA_PIECE_MAX = 256;
/** Frozen: a write into it throws (modules are strict) instead of leaking into every answer. */
const NONE = Object.freeze([]) as unknown as never[];
const OP_KINDS: readonly BackingOpKind[] = ['flush', 'discard', 'write-zeroes'];
/**
 * One-byte pieces (blk's status byte in every answer) as shared views, one per value: the host
 * only ever reads a piece (it copies it into the guest's buffer), and a view made per request
 * was a typed-array allocation per request.
 */
const ONE_BYTE: readonly Uint8Array[] = (() => {
  const all = new Uint8Array(256);
  return Array.from({ length: 256 }, (_, v) => {
    all[v] = v;
    return all.subarray(v, v + 1);
  });
})();

type CoreFn = (...args: number[]) => number;

/**
 * The direct call of one plugin instance. jco's wrapper of the export still runs around it
 * (glue.ts routes the core call through the LiftGuard's `hot` hook): it lowers an empty event
 * list, whose allocation this grows to the real one, and lifts what is left at the result
 * pointer, which this leaves as an empty list (or the plugin's error, which jco lifts and throws).
 */
export class DirectHandle {
  private realloc: CoreFn = () => 0;
  private memory: WebAssembly.Memory | null = null;
  private u8 = new Uint8Array(0);
  private dv = new DataView(new ArrayBuffer(0));
  // The budget of the call being lifted.
  private bytesLeft = 0;
  private itemsLeft = 0;
  /**
   * Where small `bytes` pieces are copied: one ArrayBuffer shared by many pieces, each piece a
   * view of its own range. An ArrayBuffer per piece cost more than the rest of the lifting
   * (allocation and its sweep in every scavenge), and so did one per call: a call that answers
   * one request (every FUSE reply, one request per batch from a TCG guest) allocated and zeroed
   * a 4 KiB arena for a 120-byte reply (~5% of the device worker's CPU per GETATTR). The arena
   * is append-only and outlives calls: a range is written once, by the call that hands it out,
   * and never again (an answer's pieces live until its I/O completes), and a full arena is
   * replaced, not rewound; the old one goes when its last piece does.
   */
  private arena = new Uint8Array(0);
  private arenaAt = 0;
  // The call in progress: its events, budget and lifted actions (null until lifted).
  private events: readonly DeviceEvent[] = NONE;
  private budget: CallBudget = { bytes: 0, items: 0 };
  private result: DeviceAction[] | null = null;

  constructor(private readonly guard: LiftGuard) {}

  /** Views over the memory, taken again after anything that may have grown it (a grow detaches the old buffer). */
  private views(): void {
    // A grow detaches the old buffer, and views of a detached buffer have length 0: only then
    // is `memory.buffer` (an API getter, once per request here before) read again. The hook
    // empties the views when it is handed another memory.
    if (this.u8.length !== 0) return;
    const buf = this.memory!.buffer;
    this.u8 = new Uint8Array(buf);
    this.dv = new DataView(buf);
  }

  /**
   * `end` within the memory. Past the views, the buffer is read again before refusing: a memory
   * that grows without detaching (a shared one) keeps views of its old size.
   */
  private fits(end: number): boolean {
    if (end <= this.u8.length) return true;
    this.u8 = new Uint8Array(0);
    this.views();
    return end <= this.u8.length;
  }

  private alloc(old: number, align: number, size: number): number {
    const p = this.realloc(old, 0, align, size) >>> 0;
    this.views();
    if (p % align !== 0 || !this.fits(p + size)) throw new LiftError(`handle: cabi_realloc returned ${p} for ${size} bytes aligned to ${align}, outside the plugin's memory or misaligned`);
    return p;
  }

  /**
   * One handle call: `viaGlue` calls jco's export (with an empty event list), during which the
   * hook lowers `events`, calls the core function and lifts the actions under `budget`.
   */
  call(events: readonly DeviceEvent[], budget: CallBudget, viaGlue: () => unknown): DeviceAction[] {
    // The hook is made once (the constructor), the call's inputs and output are fields: a
    // closure and its context per call were an allocation per request.
    this.events = events;
    this.budget = budget;
    this.result = null;
    this.guard.hot = this.hook;
    try {
      viaGlue();
    } finally {
      this.guard.hot = null;
      this.events = NONE;
    }
    const actions = this.result;
    this.result = null;
    if (actions === null) throw new LiftError('handle: the direct call did not run (the glue did not call the hook)');
    return actions;
  }

  /** The LiftGuard's `hot` hook for the call in progress (see call()). */
  private readonly hook: HotHandle = (core, realloc, memory, argPtr) => {
    this.realloc = realloc;
    if (memory !== this.memory) {
      this.memory = memory;
      this.u8 = new Uint8Array(0);
    }
    this.views();
    const events = this.events;
    const n = events.length;
    // A fresh allocation, never a realloc of argPtr: jco's empty list is not a block the plugin's
    // allocator handed out, and componentize-js's cabi_realloc passes it to realloc() (heap
    // corruption: rng-ts spun or trapped out of bounds after ~70 batches of 64 x 64 KiB).
    const base = n === 0 ? argPtr >>> 0 : this.alloc(0, EVENT_ALIGN, n * EVENT_SIZE);
    this.lower(events, base);
    const ret = core(base, n) >>> 0;
    this.views();
    this.inside(ret, 12, 4, 'the result');
    if (this.u8[ret] !== 0) return ret; // an error (or garbage): jco lifts it, guarded, and throws
    this.bytesLeft = this.budget.bytes;
    this.itemsLeft = this.budget.items;
    this.result = this.actions(this.dv.getUint32(ret + 4, true), this.dv.getUint32(ret + 8, true));
    // Lifted: what jco lifts after us is an empty list (the SDK's post-return frees nothing for ok).
    this.dv.setUint32(ret + 4, 0, true);
    this.dv.setUint32(ret + 8, 0, true);
    return ret;
  };

  private lower(events: readonly DeviceEvent[], base: number): void {
    for (let i = 0; i < events.length; i++) {
      const e = events[i];
      // Each lowering step may allocate (and so grow the memory): the element's address is
      // fixed, the views are taken again after every allocation.
      const at = base + i * EVENT_SIZE;
      switch (e.kind) {
        case 'request': {
          const r = e.request;
          const p = this.alloc(0, 1, r.prefix.length);
          this.u8.set(r.prefix, p);
          const dv = this.dv;
          dv.setUint8(at, 0);
          dv.setUint32(at + 8, r.id, true);
          dv.setUint16(at + 12, r.queue, true);
          dv.setUint32(at + 16, p, true);
          dv.setUint32(at + 20, r.prefix.length, true);
          dv.setUint32(at + 24, r.readableLen, true);
          dv.setUint32(at + 28, r.writableLen, true);
          break;
        }
        case 'io-failed':
          this.dv.setUint8(at, 1);
          this.dv.setUint32(at + 8, e.id, true);
          this.dv.setUint32(at + 12, e.errno, true);
          break;
        case 'frame': {
          // Only the prefix enters plugin memory; the frame's bytes stay in the host.
          const f = e.frame;
          const p = this.alloc(0, 1, f.prefix.length);
          this.u8.set(f.prefix, p);
          const dv = this.dv;
          dv.setUint8(at, 2);
          dv.setUint32(at + 8, f.id, true);
          dv.setUint32(at + 12, f.network, true);
          dv.setUint32(at + 16, f.fromPort, true);
          dv.setUint32(at + 20, f.len, true);
          dv.setUint32(at + 24, p, true);
          dv.setUint32(at + 28, f.prefix.length, true);
          break;
        }
        case 'timer':
          this.dv.setUint8(at, 3);
          this.dv.setBigUint64(at + 8, e.token, true);
          break;
      }
    }
  }

  /** [ptr, ptr + len) inside the memory and aligned, or a LiftError naming `what`. */
  private inside(ptr: number, len: number, align: number, what: string): void {
    if (ptr % align !== 0) throw new LiftError(`handle: ${what} at ${ptr} is not aligned to ${align}`);
    if (!this.fits(ptr + len)) throw new LiftError(`handle: ${what} at ${ptr} of ${len} bytes lies outside the plugin's ${this.u8.length}-byte memory`);
  }

  /** A list of `len` elements of `size` bytes at `ptr`: inside, aligned, within the items budget. */
  private list(ptr: number, len: number, size: number, align: number): void {
    // The name is built only for the error: a template string here was two number-to-string
    // conversions and a concatenation per list, three lists per answer.
    if (ptr % align !== 0 || !this.fits(ptr + len * size)) this.inside(ptr, len * size, align, `a returned list of ${len} ${size}-byte elements`);
    if (len > this.itemsLeft) throw new LiftError(`handle: returned a list of ${len} entries where at most ${this.itemsLeft} are allowed`);
    this.itemsLeft -= len;
  }

  /** A copy of a returned list<u8>, within the bytes budget. */
  private bytes(ptr: number, len: number): Uint8Array {
    this.inside(ptr, len, 1, 'a returned list');
    if (len > this.bytesLeft) {
      throw new LiftError(`handle: returned more list bytes than the call allows (a ${len}-byte list with ${this.bytesLeft} bytes of its budget left)`);
    }
    this.bytesLeft -= len;
    if (len === 1) return ONE_BYTE[this.u8[ptr]];
    if (len > ARENA_PIECE_MAX) return this.u8.slice(ptr, ptr + len);
    if (this.arenaAt + len > this.arena.length) {
      this.arena = new Uint8Array(ARENA_BYTES);
      this.arenaAt = 0;
    }
    // Byte by byte: a piece here is a few bytes, less than a subarray for set() would cost.
    const arena = this.arena;
    const u8 = this.u8;
    const at = this.arenaAt;
    for (let j = 0; j < len; j++) arena[at + j] = u8[ptr + j];
    this.arenaAt = at + len;
    return arena.subarray(at, at + len);
  }

  private u64(at: number): number {
    // Past 2^53 a number loses precision but stays past any backing: the checks refuse it.
    return this.dv.getUint32(at, true) + this.dv.getUint32(at + 4, true) * 0x100000000;
  }

  private bool(at: number, what: string): boolean {
    const b = this.u8[at];
    if (b > 1) throw new LiftError(`handle: returned a malformed value: ${what} is ${b}, not a bool`);
    return b === 1;
  }

  private actions(base: number, len: number): DeviceAction[] {
    this.list(base, len, ACTION_SIZE, ACTION_ALIGN);
    const dv = this.dv;
    const out: DeviceAction[] = new Array(len);
    for (let i = 0; i < len; i++) {
      const a = base + i * ACTION_SIZE;
      switch (this.u8[a]) {
        case 0: {
          const tPtr = dv.getUint32(a + 12, true);
          const tLen = dv.getUint32(a + 16, true);
          this.list(tPtr, tLen, TRANSFER_SIZE, 8);
          // Empty lists (a read has no transfers, most answers no ops) share one frozen array.
          const transfers: Transfer[] = tLen === 0 ? NONE : new Array(tLen);
          for (let k = 0; k < tLen; k++) {
            const t = tPtr + k * TRANSFER_SIZE;
            transfers[k] = { source: dv.getUint32(t, true), to: { backing: dv.getUint32(t + 8, true), offset: this.u64(t + 16), len: dv.getUint32(t + 24, true) } };
          }
          const oPtr = dv.getUint32(a + 20, true);
          const oLen = dv.getUint32(a + 24, true);
          this.list(oPtr, oLen, OP_SIZE, 8);
          const ops: BackingOp[] = oLen === 0 ? NONE : new Array(oLen);
          for (let k = 0; k < oLen; k++) {
            const o = oPtr + k * OP_SIZE;
            const kind = OP_KINDS[this.u8[o]];
            if (kind === undefined) throw new LiftError(`handle: returned a malformed value: backing-op kind ${this.u8[o]} of action ${i}`);
            ops[k] = { kind, backing: dv.getUint32(o + 4, true), offset: this.u64(o + 8), len: this.u64(o + 16) };
          }
          const pPtr = dv.getUint32(a + 28, true);
          const pLen = dv.getUint32(a + 32, true);
          this.list(pPtr, pLen, PIECE_SIZE, 8);
          const reply: Piece[] = new Array(pLen);
          for (let k = 0; k < pLen; k++) {
            const p = pPtr + k * PIECE_SIZE;
            switch (this.u8[p]) {
              case 0:
                reply[k] = { kind: 'bytes', bytes: this.bytes(dv.getUint32(p + 8, true), dv.getUint32(p + 12, true)) };
                break;
              case 1:
                reply[k] = { kind: 'backing-read', extent: { backing: dv.getUint32(p + 8, true), offset: this.u64(p + 16), len: dv.getUint32(p + 24, true) } };
                break;
              case 2:
                reply[k] = { kind: 'zeroes', len: dv.getUint32(p + 8, true) };
                break;
              case 3:
                reply[k] = { kind: 'skip', len: dv.getUint32(p + 8, true) };
                break;
              case 4:
                reply[k] = { kind: 'frame-read', slice: { frame: dv.getUint32(p + 8, true), offset: dv.getUint32(p + 12, true), len: dv.getUint32(p + 16, true) } };
                break;
              default:
                throw new LiftError(`handle: returned a malformed value: piece discriminant ${this.u8[p]} in action ${i}`);
            }
          }
          const optTag = this.u8[a + 36];
          if (optTag > 1) throw new LiftError(`handle: returned a malformed value: length-at option discriminant ${optTag} in action ${i}`);
          out[i] = {
            kind: 'answer',
            answer: {
              id: dv.getUint32(a + 8, true),
              transfers,
              ops,
              reply,
              lengthAt: optTag === 1 ? dv.getUint32(a + 40, true) : null,
              barrier: this.bool(a + 44, `barrier of action ${i}`),
            },
          };
          break;
        }
        case 1:
          out[i] = { kind: 'hold', id: dv.getUint32(a + 8, true) };
          break;
        case 2: {
          const toTag = this.u8[a + 24];
          if (toTag > 1) throw new LiftError(`handle: returned a malformed value: send's to option discriminant ${toTag} in action ${i}`);
          out[i] = {
            kind: 'send',
            send: {
              network: dv.getUint32(a + 8, true),
              request: dv.getUint32(a + 12, true),
              source: dv.getUint32(a + 16, true),
              len: dv.getUint32(a + 20, true),
              to: toTag === 1 ? dv.getUint32(a + 28, true) : null,
            },
          };
          break;
        }
        case 3:
          out[i] = { kind: 'wake-after', nanoseconds: dv.getBigUint64(a + 8, true), token: dv.getBigUint64(a + 16, true) };
          break;
        default:
          throw new LiftError(`handle: returned a malformed value: action discriminant ${this.u8[a]}`);
      }
    }
    return out;
  }
}
