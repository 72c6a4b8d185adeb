// Everything the host copies out of a plugin's linear memory goes through here (glue.ts
// rewrites jco's lifts to call it), so it is checked BEFORE it is copied:
// - a (pointer, length) pair must lie inside the memory: jco's own lift clamps one that
//   does not to a shorter or empty list, which turned a broken answer into a plausible one;
// - what an export returns is charged to a budget the adapter sets per call from what the
//   call may legitimately return (a response can never be longer than its request's
//   writable room, a state chunk never longer than asked): a plugin whose answer points
//   every entry at its whole memory is refused after copying at most that budget, instead
//   of making the host copy its memory once per entry;
// - strings are cut to a fixed length before decoding (errors, log lines, identity).
// Arguments a plugin passes to host imports (storage writes, file names, log lines) are
// checked against the memory and a per-argument cap; they are not charged to the export's budget.

import { cutMarker } from '../log/logger.ts';
import { VhostWasmError } from '../errors.ts';

/**
 * The plugin broke the canonical ABI in what it handed the host; the adapter fails the device
 * (a PluginError of kind 'invalid', this as its cause).
 */
export class LiftError extends VhostWasmError {
  static override readonly code = 'ERR_PLUGIN_LIFT';
  override readonly name = 'LiftError';
}

/** Longest string the host decodes from a plugin (error results, log lines); the rest is cut. */
export const MAX_PLUGIN_STRING = 1024;
/** Largest list<u8> one import argument may be (storage's and the filesystem's own per-call limits are lower). */
export const MAX_IMPORT_LIST = 16 * 1024 * 1024;

export interface CallBudget {
  /** list<u8> bytes the call's result may hold in all. */
  bytes: number;
  /** Entries the call's result lists (of lists) may hold in all. */
  items: number;
  /** For a result that is a list of byte lists: the most entry i may hold, and how to name it. */
  entry?: { limit(i: number): number; name(i: number): string };
}

const NOTHING: CallBudget = { bytes: 0, items: 0 };
const decoder = new TextDecoder();


/**
 * The host's own `handle` (direct-handle.ts), run by the glue in place of the core call inside
 * jco's export wrapper (so jco's task bookkeeping around imports stays intact): gets the core
 * function, cabi_realloc, the memory and the empty event list jco lowered; returns the result
 * pointer jco then lifts.
 */
export type HotHandle = (core: (ptr: number, len: number) => number, realloc: (...a: number[]) => number, memory: WebAssembly.Memory, argPtr: number) => number;

export class LiftGuard {
  /** Set around a direct `handle` call (adapter.ts); null: jco's own lowering and lifting. */
  hot: HotHandle | null = null;
  private budget: CallBudget = NOTHING;
  private entries = 0;
  private bytesLeft = 0;
  private itemsLeft = 0;
  private call = 'call';
  private mem: WebAssembly.Memory | null = null;
  private view = new Uint8Array(0);

  /** Before each export call: what its result may hold. */
  arm(call: string, budget: CallBudget = NOTHING): void {
    this.call = call;
    this.budget = budget;
    this.entries = 0;
    this.bytesLeft = budget.bytes;
    this.itemsLeft = budget.items;
  }

  /** A non-shared memory's buffer changes only on grow, which detaches the old one (length 0). */
  private bytesOf(mem: WebAssembly.Memory): Uint8Array {
    if (this.mem !== mem || this.view.length === 0) {
      this.mem = mem;
      this.view = new Uint8Array(mem.buffer);
    }
    return this.view;
  }

  private inside(mem: WebAssembly.Memory, ptr: number, len: number, what: string): Uint8Array {
    const view = this.bytesOf(mem);
    if (ptr + len > view.length) {
      throw new LiftError(`${this.call}: ${what} at ${ptr} of ${len} bytes lies outside the plugin's ${view.length}-byte memory`);
    }
    return view;
  }

  /** list<u8> in an export's result. */
  resultBytes(mem: WebAssembly.Memory, ptr: number, len: number): Uint8Array {
    ptr >>>= 0; // core i32 arguments arrive signed
    len >>>= 0;
    const view = this.inside(mem, ptr, len, 'a returned list');
    const entry = this.budget.entry;
    if (entry) {
      // Entries are lifted in order, right after their list (resultList).
      const i = this.entries++;
      if (len > entry.limit(i)) throw new LiftError(`${this.call}: ${entry.name(i)} has ${len} bytes but the request can hold only ${entry.limit(i)}`);
    }
    if (len > this.bytesLeft) {
      throw new LiftError(`${this.call}: returned more list bytes than the call allows (a ${len}-byte list with ${this.bytesLeft} bytes of its budget left)`);
    }
    this.bytesLeft -= len;
    return view.slice(ptr, ptr + len);
  }

  /** The element array of a list of lists or records in an export's result, before any element is read. */
  resultList(mem: WebAssembly.Memory, base: number, len: number, elementSize: number): void {
    base >>>= 0;
    len >>>= 0;
    // The description only for the error: a template string here was two number-to-string
    // conversions and a string per call (every handle() lifts one list, even when empty).
    if (base + len * elementSize > this.bytesOf(mem).length) this.inside(mem, base, len * elementSize, `a returned list of ${len} ${elementSize}-byte elements`);
    if (len > this.itemsLeft) {
      throw new LiftError(`${this.call}: returned a list of ${len} entries where at most ${this.itemsLeft} are allowed`);
    }
    this.itemsLeft -= len;
  }

  /** list<u8> passed to a host import. */
  argBytes(mem: WebAssembly.Memory, ptr: number, len: number): Uint8Array {
    ptr >>>= 0; // core i32 arguments arrive signed
    len >>>= 0;
    const view = this.inside(mem, ptr, len, 'a list argument');
    if (len > MAX_IMPORT_LIST) throw new LiftError(`${this.call}: passed a ${len}-byte list to a host import (at most ${MAX_IMPORT_LIST})`);
    return view.slice(ptr, ptr + len);
  }

  /** A string, returned or passed: at most MAX_PLUGIN_STRING bytes are decoded. */
  string(mem: WebAssembly.Memory, ptr: number, len: number): string {
    ptr >>>= 0; // core i32 arguments arrive signed
    len >>>= 0;
    const view = this.inside(mem, ptr, len, 'a string');
    if (len <= MAX_PLUGIN_STRING) return decoder.decode(view.subarray(ptr, ptr + len));
    return decoder.decode(view.subarray(ptr, ptr + MAX_PLUGIN_STRING)) + cutMarker(len - MAX_PLUGIN_STRING);
  }
}
