// The device seam: what a virtio device is, as far as the host is concerned. The host owns
// the socket, guest memory, rings, fds and backings; a device sees request headers and
// decides, the host moves the bytes. TypeScript devices implement this directly;
// WebAssembly plugins are adapted to it by host/plugin.
//
// A device instance lives in the worker that runs its rings; every call is synchronous
// there (a plugin call cannot yield anyway), so a slow device stalls only its own worker.

// The data path is WIT 0.2's (wit/device.wit, interface `types`): a device sees each
// request's prefix and lengths and answers with what the host should do; the host checks
// every answer (host/device/answer-check.ts) and moves the bytes (host/io/). These are the
// same shapes in TypeScript, for plugins (lifted by host/plugin) and TypeScript devices alike.

/** One descriptor chain taken off a ring, without its payload. */
export interface DeviceRequest {
  /** Host-chosen; unique among this device's requests not yet completed. */
  readonly id: number;
  readonly queue: number;
  /** The first min(readableLen, info.prefixLen) readable bytes (a view: copy to keep). */
  readonly prefix: Uint8Array;
  readonly readableLen: number;
  readonly writableLen: number;
}

/** A byte range of a backing (0 = the --storage grant; fs files via filesystem.backing). */
export interface Extent {
  readonly backing: number;
  readonly offset: number;
  readonly len: number;
}

/** Bytes [offset, offset + len) of a frame delivered in the same handle() call. */
export interface FrameSlice {
  readonly frame: number;
  readonly offset: number;
  readonly len: number;
}

/** One piece of the writable area, in order from its start. */
export type Piece =
  | { readonly kind: 'bytes'; readonly bytes: Uint8Array }
  | { readonly kind: 'backing-read'; readonly extent: Extent }
  | { readonly kind: 'zeroes'; readonly len: number }
  | { readonly kind: 'skip'; readonly len: number }
  /** The host copies the frame's bytes straight into the guest's buffers. */
  | { readonly kind: 'frame-read'; readonly slice: FrameSlice };

/** Readable bytes [source, source + to.len) of the request go to the backing range `to`. */
export interface Transfer {
  readonly source: number;
  readonly to: Extent;
}

export type BackingOpKind = 'flush' | 'discard' | 'write-zeroes';

export interface BackingOp {
  readonly kind: BackingOpKind;
  readonly backing: number;
  readonly offset: number;
  readonly len: number;
}

/** What the device does with one request. */
export interface Answer {
  readonly id: number;
  readonly transfers: readonly Transfer[];
  readonly ops: readonly BackingOp[];
  readonly reply: readonly Piece[];
  /** After a short last backing-read, the final used length goes here as a LE u32. */
  readonly lengthAt: number | null;
  /** Start only after every request answered before it completed (virtio-blk FLUSH). */
  readonly barrier: boolean;
}

/**
 * A frame arrived on a granted network. Its bytes stay in the host: the device reads them into
 * a held rx buffer with a frame-read piece in the same handle() call, or the frame is dropped.
 */
export interface Frame {
  /** Unique among the frames of one handle() call; valid for that call only. */
  readonly id: number;
  /** Index of the device's network grant (0 = the first). */
  readonly network: number;
  /** The port it came from (for MAC learning). */
  readonly fromPort: number;
  /** Bytes of the frame, Ethernet header included. */
  readonly len: number;
  /** The first min(len, info.prefixLen) bytes (a view: copy to keep). */
  readonly prefix: Uint8Array;
}

/**
 * Readable bytes [source, source + len) of request `request` (answered or held in the same
 * call) go out as one frame on network `network`: to port `to`, or every other port (null).
 */
export interface Send {
  readonly network: number;
  readonly request: number;
  readonly source: number;
  readonly len: number;
  readonly to: number | null;
}

export type DeviceEvent =
  | { readonly kind: 'request'; readonly request: DeviceRequest }
  /** A transfer, op or backing-read of the answer to `id` failed: nothing was written; answer again. */
  | { readonly kind: 'io-failed'; readonly id: number; readonly errno: number }
  | { readonly kind: 'frame'; readonly frame: Frame }
  | { readonly kind: 'timer'; readonly token: bigint };

export type DeviceAction =
  | { readonly kind: 'answer'; readonly answer: Answer }
  | { readonly kind: 'hold'; readonly id: number }
  | { readonly kind: 'send'; readonly send: Send }
  | { readonly kind: 'wake-after'; readonly nanoseconds: bigint; readonly token: bigint };

/** A chunk of serialized device state: the 2023 RFC's get_state(offset, size) contract. */
export interface StateChunk {
  readonly bytes: Uint8Array;
  /** Bytes left after offset + bytes.length (0 when this chunk ends the state). */
  readonly remaining: number;
}

export interface DeviceInfo {
  /** Virtio device id (2 = block, 4 = entropy, 26 = fs, ...). */
  readonly deviceId: number;
  /** Human-readable name for logs. */
  readonly name: string;
  readonly numQueues: number;
  readonly maxQueueSize: number;
  /** Device-specific virtio feature bits offered (the host adds transport bits). */
  readonly features: bigint;
  /** Size of the device's config space in bytes. */
  readonly configSize: number;
  /** Readable bytes of each request the device sees (DeviceRequest.prefix), <= 4096. */
  readonly prefixLen: number;
  /** Each queue may run in its own instance on its own thread (--queue-threads). */
  readonly queuesIndependent: boolean;
}

export interface VirtioDevice {
  readonly info: DeviceInfo;
  readConfig(offset: number, size: number): Uint8Array;
  writeConfig(offset: number, data: Uint8Array): void;
  /** The driver acked these features and the rings are about to run. */
  activate(ackedFeatures: bigint): void;
  /** Back to the just-created state (RESET_DEVICE, reconnect). */
  reset(): void;
  /**
   * What this instance holds that belongs to this process and cannot move to another one (a
   * live host handover): a sentence saying what, or null. A share's file locks, for one.
   */
  processBound?(): string | null;
  /**
   * What this instance holds that cannot move to a new instance in this process (a live plugin
   * upgrade), or null. Without it, processBound() answers for an upgrade too.
   */
  instanceBound?(): string | null;
  /**
   * Host-held state that moves to the new instance in a live plugin upgrade only (a share's
   * locks: host/fs/lock-handoff.ts): read from the old instance after its rings stopped, loaded
   * into the new one after its finish-load and before its rings start.
   */
  upgradeSections?(): import('../migration/section.ts').WorkerStateSection[];
  /**
   * Everything since the last call: exactly one answer or hold per request / io-failed event,
   * in any order, plus answers to requests held earlier. The host checks every action before
   * it acts on any (a bad one fails the device).
   */
  handle(events: readonly DeviceEvent[]): DeviceAction[];
  /** Serialized state from offset, at most size bytes. */
  getState(offset: number, size: number): StateChunk;
  /** Append a chunk (offsets arrive in order, starting at 0). */
  setState(offset: number, chunk: Uint8Array): void;
  /** The load is complete: validate and apply; returns an error message or null. */
  finishLoad(): string | null;
  /** Release resources (worker shutdown). */
  close?(): void;
  /**
   * Where the device's host-side waits report that they resolved (filesystem.setlk with a
   * token): the runner delivers `timer(token)` in a later handle() call. Set by the runner.
   */
  setWaker?(wake: ((token: bigint) => void) | null): void;
  /**
   * A ring is about to stop (GET_VRING_BASE), `true`, and has stopped, `false`. Between the two
   * the device's host-side waits resolve at once (their wakes are delivered before the ring
   * stops) and none starts, so nothing waiting on the host is left unanswered behind the base.
   */
  stopWaits?(stop: boolean): void;
}

/** A device module a worker can load by URL: its default export builds the device. */
export type DeviceFactory = (options: Record<string, unknown>) => VirtioDevice;
