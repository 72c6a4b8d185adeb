declare module 'vhost:device/entropy@0.2.2' {
  /**
   * Exactly `len` random bytes.
   */
  export function fill(len: number): Uint8Array;
}
