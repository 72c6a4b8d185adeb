declare module 'vhost:device/storage@0.2.2' {
  /**
   * Bytes in the store; fixed while the device exists.
   */
  export function size(): bigint;
  /**
   * True when the operator granted the store read-only (--read-only).
   */
  export function readOnly(): boolean;
  /**
   * The store's logical block size (512 or 4096): with --direct, I/O that is not aligned to
   * it goes through a bounce buffer, so a device should advertise it (blk's blk_size).
   */
  export function blockSize(): number;
}
