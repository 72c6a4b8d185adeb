declare module 'vhost:device/types@0.2.2' {
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
   * A port of a network: the host's switch joins every net device (and TAP interface)
   * granted the same network name; each gets a port number unique on that network.
   */
  export type Port = number;
  /**
   * A frame the host holds for the length of one `handle` call only.
   */
  export type FrameId = number;
  /**
   * A frame arrived on a granted network. Its bytes stay in the host: the plugin copies them
   * into a held rx buffer with a `frame-read` piece in this same call, or the frame is
   * dropped (counted) when the call returns.
   */
  export interface Frame {
    /**
     * Unique among the frames of this call.
     */
    id: FrameId,
    /**
     * Index of the device's network grant (0 = the first).
     */
    network: number,
    /**
     * The port it came from (for MAC learning).
     */
    fromPort: Port,
    /**
     * Bytes of the frame (Ethernet header included, no FCS).
     */
    len: number,
    /**
     * The first min(len, device-info.prefix-len) bytes: Ethernet/IP/L4 headers.
     */
    prefix: Uint8Array,
  }
  /**
   * Bytes [offset, offset + len) of frame `frame` of this call.
   */
  export interface FrameSlice {
    frame: FrameId,
    offset: number,
    len: number,
  }
  /**
   * Send readable bytes [source, source + len) of request `request` (a tx chain answered or
   * held in this same call) as one frame. The host copies them out of the guest's buffers
   * before it completes the request; the plugin never sees them beyond the prefix.
   */
  export interface Send {
    /**
     * Index of the device's network grant.
     */
    network: number,
    request: RequestId,
    source: number,
    /**
     * 14 to the network's mtu + 18 bytes.
     */
    len: number,
    /**
     * none: every other port of the network (flood); some(p): port p only (a port that has
     * left the network drops the frame, counted: the plugin cannot know it left).
     */
    to?: Port,
  }
  /**
   * One piece of the writable area, in order from its start.
   */
  export type Piece = PieceBytes | PieceBackingRead | PieceZeroes | PieceSkip | PieceFrameRead;
  /**
   * Literal bytes from the plugin (headers, status bytes, small replies).
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
   * Bytes of a frame delivered in this call (`event.frame`), copied by the host straight
   * into the guest's buffers. A frame may be read by several pieces of several answers
   * of the call (a frame spanning mergeable rx buffers).
   */
  export interface PieceFrameRead {
    tag: 'frame-read',
    val: FrameSlice,
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
   * A frame arrived on a granted network.
   */
  export interface EventFrame {
    tag: 'frame',
    val: Frame,
  }
  /**
   * A wake-up the plugin asked for, with `action.wake-after` or a wait it started
   * (`filesystem.setlk`); the value is its token.
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
   * Send bytes of a request as a frame on a granted network.
   */
  export interface ActionSend {
    tag: 'send',
    val: Send,
  }
  /**
   * Deliver `timer(token)` after at least `nanoseconds` (tuple: nanoseconds, token), in a
   * call of its own or with other events. At most 86,400 s; at most 64 timers wait per
   * device; a reset forgets them.
   */
  export interface ActionWakeAfter {
    tag: 'wake-after',
    val: [bigint, bigint],
  }
}
