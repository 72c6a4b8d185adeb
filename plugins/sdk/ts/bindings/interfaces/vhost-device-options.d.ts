declare module 'vhost:device/options@0.2.2' {
  /**
   * The value given for `key`, or none.
   */
  export function get(key: string): string | undefined;
}
