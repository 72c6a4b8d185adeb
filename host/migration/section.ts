// A section of a saved device state: one named, sized run of bytes inside the container.
// Section 1 is always the device's own bytes (a plugin's get-state/set-state chunks); host-held
// resources the device uses (a memory disk's contents, later) are further sections next to it,
// each implementing this interface where the resource lives. The container never holds a whole
// section in memory: it pulls or pushes chunks of at most the size it asks for.

/** The LOAD's pipe as a section taking its bytes straight from it sees it (StateReader). Nothing may have been read past what is asked. */
export interface PipeSource {
  /** The next `len` bytes go by splice(2) into the file `out` at outOffset. */
  spliceTo(out: number, outOffset: number, len: number): Promise<void>;
  /**
   * The next dst.length bytes are read into dst, each read checksummed (CRC-32C) right after it
   * landed, while it is still in the cache; returns the CRC continued from `crc`.
   */
  readCrc(dst: Uint8Array, crc: number): Promise<number>;
}

export interface StateSection {
  /** Stable numeric id written in the container (1 = device bytes, 0x100+ = host resources). */
  readonly id: number;
  /** Human-readable name, also written in the container (≤ 64 bytes of ASCII). */
  readonly name: string;
  /** SAVE: total bytes this section will produce. Called once, before the first read. */
  size(): Promise<number>;
  /** SAVE: bytes [offset, offset+len); must return exactly len bytes (offsets arrive in order). */
  read(offset: number, len: number): Promise<Uint8Array>;
  /**
   * SAVE: the read size this section prefers (default: the container's chunk size). Every read
   * is one round trip to the worker and one write to the channel, so a large host-held section
   * (a memory disk) moves in bigger pieces than a plugin's state, whose chunks must fit in its
   * capped memory.
   */
  readonly readSize?: number;
  /**
   * SAVE, optional: writes the whole section into the file `fd` at fileOffset (the sink made
   * the range exist) and returns the CRC-32C continued from `crc`, instead of read() calls.
   */
  copyToFile?(fd: number, fileOffset: number, len: number, crc: number): Promise<number>;
  /**
   * SAVE, optional: the section's bytes are [offset, offset + size) of the file `fd`, unchanging
   * until the transfer ends, so a pipe sink may splice them instead of read() calls; `crc` is
   * the CRC-32C of the section's bytes [at, at + len) continued from a seed (asked piece by
   * piece, in order, while the pipe is full: after the piece was spliced, which is sound only
   * because the bytes do not change until the transfer ends: the rings stay stopped until both
   * CHECKs answer). Null: not now.
   */
  spliceSource?(): { fd: number; offset: number; crc(seed: number, at: number, len: number): number } | null;
  /**
   * LOAD, optional: takes the whole section from the file `fd` at fileOffset (after beginLoad)
   * and returns the CRC-32C continued from `crc`, instead of write() calls.
   */
  copyFromFile?(fd: number, fileOffset: number, len: number, crc: number): Promise<number>;
  /**
   * LOAD, optional: takes the whole section from the state pipe (after beginLoad), splicing it
   * or reading it where it belongs, and returns the CRC-32C continued from `crc`, instead of
   * write() calls.
   */
  copyFromPipe?(pipe: PipeSource, len: number, crc: number): Promise<number>;
  /** LOAD: the section will receive `size` bytes (called before the first write). */
  beginLoad(size: number): Promise<void>;
  /** LOAD: append bytes at offset (in order, contiguous, starting at 0). Ownership of chunk passes. */
  write(offset: number, chunk: Uint8Array): Promise<void>;
  /** LOAD: all bytes arrived and the stream checked out; apply. Returns an error message or null. */
  finish(): Promise<string | null>;
  /**
   * LOAD, optional: every section's finish() succeeded, so the LOAD as a whole did. What may only
   * happen then (a memory disk becoming servable: its section checking out is not enough when
   * a later section refuses, since the device then is not what the source had) happens here.
   * Cannot fail; no abort() follows it.
   */
  commit?(): void;
  /** LOAD failed after beginLoad: drop whatever was loaded so far. */
  abort(): Promise<void>;
}

/**
 * A section that lives in the device worker, next to the resource it saves (a storage backing
 * opened there). A device (or the plugin loader, for the backings it opened) lists them in a
 * `stateSections()` method on the device object; the runner serves them through the stateRead /
 * stateWrite RPC ops with a section id, and the session wraps each one as a StateSection.
 * Calls are synchronous (they run in the worker, under the same watchdog as device calls).
 */
export interface WorkerStateSection {
  readonly id: number;
  readonly name: string;
  size(): number;
  /** Exactly len bytes at offset; may be a view of the resource's memory (the runner copies them out). */
  read(offset: number, len: number): Uint8Array;
  /** Throw to refuse (a size that does not match this resource, ...). */
  beginLoad(size: number): void;
  write(offset: number, chunk: Uint8Array): void;
  finish(): string | null;
  abort(): void;
}

/** Section ids. */
export const SectionId = {
  DEVICE: 1,
  /** First id for host-held resources (storage backings, ...). */
  HOST_BASE: 0x100,
} as const;
