declare module 'vhost:device/types@0.2.0' {
  /**
   * Host-chosen; unique among the device instance's requests that are not yet completed
   * (the host reuses an id only after its request completed).
   */
  export type RequestId = number;
  /**
   * A backing the plugin may name: 0 is the --storage grant; a virtio-fs open file gets its
   * index from `filesystem.backing`.
   */
  export type Backing = number;
  /**
   * One descriptor chain taken off a ring, without its payload.
   */
  export interface Request {
    id: RequestId,
    queue: number,
    /**
     * The first min(readable-len, device-info.prefix-len) readable bytes: blk's 16-byte
     * header, FUSE's in-header and op struct. Never more.
     */
    prefix: Uint8Array,
    /**
     * Bytes of the chain's readable (driver -> device) part, prefix included.
     */
    readableLen: number,
    /**
     * Bytes the chain's writable (device -> driver) part can hold.
     */
    writableLen: number,
  }
  /**
   * A byte range of a backing.
   */
  export interface Extent {
    backing: Backing,
    offset: bigint,
    len: number,
  }
  /**
   * One piece of the writable area, in order from its start.
   */
  export type Piece = PieceBytes | PieceBackingRead | PieceZeroes | PieceSkip;
  /**
   * Literal bytes from the plugin (headers, status bytes, small replies, frames).
   */
  export interface PieceBytes {
    tag: 'bytes',
    val: Uint8Array,
  }
  /**
   * Bytes read from a backing straight into the guest's buffers. A read that ends at the
   * end of a file comes back short only when it is the last piece: the used length is then
   * shorter (see `answer.length-at`). Past the size of a --storage backing: refused.
   */
  export interface PieceBackingRead {
    tag: 'backing-read',
    val: Extent,
  }
  /**
   * `len` zero bytes.
   */
  export interface PieceZeroes {
    tag: 'zeroes',
    val: number,
  }
  /**
   * Leave `len` bytes of the guest's buffer as they are (they count in the used length).
   */
  export interface PieceSkip {
    tag: 'skip',
    val: number,
  }
  /**
   * Readable bytes [source, source + to.len) of the request (counted from the start of its
   * readable part, prefix included) are written to the backing range `to`. A short write is
   * a failure (ENOSPC).
   */
  export interface Transfer {
    source: number,
    to: Extent,
  }
  /**
   * # Variants
   * 
   * ## `"flush"`
   * 
   * Everything written to the backing before is durable (fdatasync) afterwards.
   * ## `"discard"`
   * 
   * The range may read back as zeroes or as its old contents (fallocate PUNCH_HOLE).
   * ## `"write-zeroes"`
   * 
   * The range reads back as zeroes (fallocate ZERO_RANGE).
   */
  export type BackingOpKind = 'flush' | 'discard' | 'write-zeroes';
  export interface BackingOp {
    kind: BackingOpKind,
    backing: Backing,
    offset: bigint,
    len: bigint,
  }
  /**
   * What the device does with one request.
   */
  export interface Answer {
    id: RequestId,
    /**
     * Guest bytes that go to backings (blk write, FUSE_WRITE). Run before `ops`.
     */
    transfers: Array<Transfer>,
    ops: Array<BackingOp>,
    /**
     * The writable area, from its start: the used length is what the pieces cover.
     */
    reply: Array<Piece>,
    /**
     * After a short last `backing-read` (end of file), the host stores the final used length
     * as a little-endian u32 at this offset of the writable area (FUSE's out-header `len`).
     */
    lengthAt?: number,
    /**
     * Complete only after every request of this device answered before this one has
     * completed, and start this one's I/O only then (virtio-blk FLUSH ordering).
     */
    barrier: boolean,
  }
  /**
   * A transfer, op or backing-read of an answer failed. The host wrote nothing of that
   * answer's reply and completed nothing: the plugin answers the same id again (typically
   * with only `bytes` pieces carrying its error status: blk IOERR, FUSE -errno).
   */
  export interface IoFailure {
    id: RequestId,
    /**
     * Linux errno (5 EIO, 28 ENOSPC, ...).
     */
    errno: number,
  }
  /**
   * An Ethernet frame on a granted network (reserved for virtio-net; no host grants one yet).
   */
  export interface Frame {
    network: number,
    bytes: Uint8Array,
  }
  export type Event = EventRequest | EventIoFailed | EventFrame | EventTimer;
  export interface EventRequest {
    tag: 'request',
    val: Request,
  }
  export interface EventIoFailed {
    tag: 'io-failed',
    val: IoFailure,
  }
  /**
   * A frame arrived on a granted network (reserved).
   */
  export interface EventFrame {
    tag: 'frame',
    val: Frame,
  }
  /**
   * A wake-up the plugin asked for with `action.wake-after`; the value is its token.
   */
  export interface EventTimer {
    tag: 'timer',
    val: bigint,
  }
  export type Action = ActionAnswer | ActionHold | ActionSend | ActionWakeAfter;
  export interface ActionAnswer {
    tag: 'answer',
    val: Answer,
  }
  /**
   * Keep the request: it is answered in a later call (rx buffers, a blocked lock). The
   * host still owns its buffers and completes it only when it is answered (or resets).
   */
  export interface ActionHold {
    tag: 'hold',
    val: RequestId,
  }
  /**
   * Send a frame on a granted network (reserved).
   */
  export interface ActionSend {
    tag: 'send',
    val: Frame,
  }
  /**
   * Deliver `timer(token)` after at least `nanoseconds` (tuple: nanoseconds, token).
   */
  export interface ActionWakeAfter {
    tag: 'wake-after',
    val: [bigint, bigint],
  }
}
