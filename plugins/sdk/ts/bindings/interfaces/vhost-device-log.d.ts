declare module 'vhost:device/log@0.2.2' {
  export function write(level: Level, message: string): void;
  /**
   * # Variants
   * 
   * ## `"error"`
   * 
   * ## `"warn"`
   * 
   * ## `"info"`
   * 
   * ## `"debug"`
   * 
   * ## `"trace"`
   */
  export type Level = 'error' | 'warn' | 'info' | 'debug' | 'trace';
}
