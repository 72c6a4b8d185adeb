// What a device's storage grant is on the host side: one fixed-size byte store. Backings
// check nothing about the guest; the import layer (host/plugin/storage-imports.ts) checks
// every range against `size` before calling them, and they trust that.

import { VhostWasmError } from '../errors.ts';

export interface Backing {
  /** Bytes in the store; fixed for the life of the backing. */
  readonly size: number;
  readonly readOnly: boolean;
  /** What the operator gave (a path or memory:SIZE), for messages. */
  readonly describe: string;
  /**
   * The logical block size a device should advertise (512 or 4096): I/O aligned to it never
   * needs a bounce buffer (--direct) and matches a block device's sectors (storage.block-size).
   */
  readonly blockSize: number;
  /**
   * `len` bytes at `offset`. The result may be a view of an internal buffer that the next
   * call reuses: the caller copies it out (the glue copies it into the plugin) first.
   */
  read(offset: number, len: number): Uint8Array;
  write(offset: number, data: Uint8Array): void;
  /** Everything written before is durable when this returns. */
  flush(): void;
  /** The range may read back as zeroes or its old contents. */
  discard(offset: number, len: number): void;
  /** The range reads back as zeroes. */
  writeZeroes(offset: number, len: number): void;
  close(): void;
}

/** A failed I/O on a backing: the message names the backing, the operation and the cause. */
export class BackingError extends VhostWasmError {
  static override readonly code = 'ERR_BACKING_IO';
  override readonly name = 'BackingError';
}

/** What the CLI passes to the device worker (structured-cloneable). */
export type StorageSpec =
  /** `direct`: open O_DIRECT (--direct). */
  | { kind: 'file'; path: string; readOnly: boolean; direct?: boolean }
  /**
   * `fd`: the device's memfd holding the disk, shared by its queue threads (DeviceSlot makes it);
   * without one the disk is the worker's own memory.
   */
  /**
   * `prealloc`: every page made when the host starts (--storage memory:SIZE,prealloc=on) and
   * kept: a discard zeroes instead of giving pages back.
   */
  | { kind: 'memory'; size: number; readOnly: boolean; prealloc?: boolean; fd?: number; dirty?: SharedArrayBuffer };
