// The globals a plugin's JavaScript engine (StarlingMonkey, through componentize-js) has and
// the SDK relies on or redefines (globals.ts). Only these, so that code reaching for a Node or
// browser API fails the type check rather than at run time.
declare var console: {
  log(...args: unknown[]): void;
  info(...args: unknown[]): void;
  warn(...args: unknown[]): void;
  error(...args: unknown[]): void;
  debug(...args: unknown[]): void;
  trace(...args: unknown[]): void;
};
declare class TextEncoder {
  encode(input?: string): Uint8Array;
}
declare class TextDecoder {
  constructor(label?: string, options?: { fatal?: boolean });
  decode(input?: ArrayBufferView | ArrayBuffer): string;
}
/** Draws from the entropy grant (traps without --entropy); see globals.ts. */
declare var crypto: { getRandomValues<T extends ArrayBufferView>(array: T): T };
declare function queueMicrotask(callback: () => void): void;
