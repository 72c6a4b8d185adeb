/// <reference path="./vhost-device-types.d.ts" />
declare module 'vhost:device/device@0.2.2' {
  export function identity(): PluginIdentity;
  export function info(): DeviceInfo;
  /**
   * `size` bytes of config space from `offset` (the host checks the range first).
   */
  export function readConfig(offset: number, size: number): Uint8Array;
  export function writeConfig(offset: number, data: Uint8Array): void;
  /**
   * The driver acked these device feature bits; rings start after this returns ok.
   */
  export function activate(ackedFeatures: bigint): void;
  /**
   * Back to the just-created state: requests held or in flight are forgotten (the host
   * drops them with the rings).
   */
  export function reset(): void;
  /**
   * Everything that happened since the last call (new requests of one or more queues, I/O
   * failures, frames, timers), at most one call per ring batch. The result holds exactly one
   * `answer` or `hold` per `request` and `io-failed` event of this call, in any order, and
   * may answer requests held earlier. An error, or an answer the host refuses (a range outside
   * the request or the backing, a write through a read-only grant, an unknown id), means the
   * device is broken: NEEDS_RESET, and nothing of the batch is written.
   */
  export function handle(events: Array<Event>): Array<Action>;
  /**
   * Serialized state from `offset`, at most `size` bytes (fewer only at the end).
   * offset + len(bytes) + remaining must be the same total on every call of one save.
   */
  export function getState(offset: bigint, size: number): StateChunk;
  /**
   * The next chunk of a state being loaded; offsets arrive in order from 0.
   */
  export function setState(offset: bigint, chunk: Uint8Array): void;
  /**
   * All chunks delivered: validate and apply, or say why not (the device is then reset).
   */
  export function finishLoad(): void;
  export type Event = import('vhost:device/types@0.2.2').Event;
  export type Action = import('vhost:device/types@0.2.2').Action;
  /**
   * Who wrote the state: the host tags saved state with it and refuses to load state
   * from another plugin name.
   */
  export interface PluginIdentity {
    name: string,
    version: string,
  }
  export interface DeviceInfo {
    /**
     * Virtio device id (4 = entropy, 2 = block, 26 = fs).
     */
    deviceId: number,
    numQueues: number,
    /**
     * Largest ring size the device accepts (a power of two, at most 32768).
     */
    maxQueueSize: number,
    /**
     * Device-specific feature bits (0-23 and 50+); the host adds transport bits.
     */
    features: bigint,
    configSize: number,
    /**
     * Readable bytes the plugin sees of each request (`request.prefix`), at most 4096.
     */
    prefixLen: number,
    /**
     * True when each queue may run in its own instance on its own thread (blk: every
     * request stands alone); false when one instance must see every queue (fs: one inode
     * table). With --queue-threads, only independent queues are spread.
     */
    queuesIndependent: boolean,
  }
  export interface StateChunk {
    bytes: Uint8Array,
    /**
     * Bytes of state after this chunk; 0 when the chunk ends the state.
     */
    remaining: bigint,
  }
}
