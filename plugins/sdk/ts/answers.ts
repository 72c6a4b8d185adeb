// Builders for what a device answers. Each returns the exact WIT shape (no copy, no
// conversion): the host checks every answer anyway (docs/design/wit-0.2.md, "What the host
// checks"), so these only spare the author the {tag, val} spelling.
import type { Action, Answer, BackingOp, Extent, Piece, Transfer } from './wit.ts';

/** Literal bytes into the guest's writable buffers. */
export const bytes = (data: Uint8Array): Piece => ({ tag: 'bytes', val: data });
/** `len` zero bytes. */
export const zeroes = (len: number): Piece => ({ tag: 'zeroes', val: len });
/** Leave `len` bytes of the guest's buffer as they are (they count in the used length). */
export const skip = (len: number): Piece => ({ tag: 'skip', val: len });
/** `len` bytes of backing `backing` from `offset`, read by the host straight into the guest. */
export const backingRead = (backing: number, offset: bigint, len: number): Piece => ({
  tag: 'backing-read',
  val: { backing, offset, len },
});

export const extent = (backing: number, offset: bigint, len: number): Extent => ({ backing, offset, len });
/** Readable bytes [source, source + len) of the request go to backing `backing` at `offset`. */
export const transfer = (source: number, backing: number, offset: bigint, len: number): Transfer => ({
  source,
  to: { backing, offset, len },
});

export const flush = (backing: number): BackingOp => ({ kind: 'flush', backing, offset: 0n, len: 0n });
export const discard = (backing: number, offset: bigint, len: bigint): BackingOp => ({ kind: 'discard', backing, offset, len });
export const writeZeroes = (backing: number, offset: bigint, len: bigint): BackingOp => ({
  kind: 'write-zeroes',
  backing,
  offset,
  len,
});

export interface AnswerOptions {
  transfers?: Transfer[];
  ops?: BackingOp[];
  /** See `answer.length-at` in wit/device.wit (FUSE's out-header length after a short read). */
  lengthAt?: number;
  /** Start and complete only after every request answered before it (blk FLUSH). */
  barrier?: boolean;
}

/** Complete request `id` with `reply` (the writable area from its start). */
export function answer(id: number, reply: Piece[], options?: AnswerOptions): Action {
  const val: Answer = {
    id,
    transfers: options?.transfers ?? [],
    ops: options?.ops ?? [],
    reply,
    lengthAt: options?.lengthAt,
    barrier: options?.barrier ?? false,
  };
  return { tag: 'answer', val };
}

/** Keep request `id`: answer it in a later call (rx buffers, a blocked lock). */
export const hold = (id: number): Action => ({ tag: 'hold', val: id });
/** Deliver a `timer` event with `token` after at least `nanoseconds`. */
export const wakeAfter = (nanoseconds: bigint, token: bigint): Action => ({ tag: 'wake-after', val: [nanoseconds, token] });
/**
 * Readable bytes [source, source + len) of request `request` (answered or held in the same
 * call) go out as one frame on network `network`: to port `to`, or every other port when it is
 * undefined. `len` must be 14 to network.mtu(network) + 18, or the host fails the device.
 */
export const send = (network: number, request: number, source: number, len: number, to?: number): Action => ({
  tag: 'send',
  val: { network, request, source, len, to },
});
/** Bytes [offset, offset + len) of frame `frame` (an event of this call), copied by the host into the guest. */
export const frameRead = (frame: number, offset: number, len: number): Piece => ({ tag: 'frame-read', val: { frame, offset, len } });
