declare module 'vhost:device/entropy@0.2.1' {
  /**
   * Exactly `len` random bytes.
   */
  export function fill(len: number): Uint8Array;
}
