// The device seam: what a virtio device is, as far as the host is concerned. The host owns
// the socket, guest memory, rings and fds; a device only sees request bytes and answers
// with response bytes. TypeScript devices implement this directly; WebAssembly plugins
// are adapted to it by host/plugin.
//
// A device instance lives in the worker that runs its rings; every call is synchronous
// there (a plugin call cannot yield anyway), so a slow device stalls only its own worker.

/** One request taken off a ring: the driver's readable buffers and room for the reply. */
export interface DeviceRequest {
  /** Driver -> device buffers (the chain's readable descriptors), in order. */
  readonly readable: readonly Uint8Array[];
  /** Total bytes the chain's writable descriptors can hold. */
  readonly writableLen: number;
}

/** The device's answer to one request. */
export interface DeviceResponse {
  /** Bytes to scatter into the chain's writable descriptors (length <= writableLen). */
  readonly data: Uint8Array;
}

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
}

export interface VirtioDevice {
  readonly info: DeviceInfo;
  readConfig(offset: number, size: number): Uint8Array;
  writeConfig(offset: number, data: Uint8Array): void;
  /** The driver acked these features and the rings are about to run. */
  activate(ackedFeatures: bigint): void;
  /** Back to the just-created state (RESET_DEVICE, reconnect). */
  reset(): void;
  /** Process a batch of requests from one queue; one response per request, same order. */
  process(queueIndex: number, requests: readonly DeviceRequest[]): DeviceResponse[];
  /** Serialized state from offset, at most size bytes. */
  getState(offset: number, size: number): StateChunk;
  /** Append a chunk (offsets arrive in order, starting at 0). */
  setState(offset: number, chunk: Uint8Array): void;
  /** The load is complete: validate and apply; returns an error message or null. */
  finishLoad(): string | null;
  /** Release resources (worker shutdown). */
  close?(): void;
}

/** A device module a worker can load by URL: its default export builds the device. */
export type DeviceFactory = (options: Record<string, unknown>) => VirtioDevice;
