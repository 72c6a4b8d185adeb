declare module 'vhost:device/options@0.2.1' {
  /**
   * The value given for `key`, or none.
   */
  export function get(key: string): string | undefined;
}
