// The host's capabilities (the world's imports) with author-friendly spellings. An ungranted
// capability traps in the call that used it (the host's rule), so a device that needs one
// fails loudly at its first use: the operator grants it with --entropy, --storage or
// --shared-dir.
import * as witLog from 'vhost:device/log@0.2.2';
import * as witEntropy from 'vhost:device/entropy@0.2.2';
import * as witStorage from 'vhost:device/storage@0.2.2';
import * as witFs from 'vhost:device/filesystem@0.2.2';
import * as witNetwork from 'vhost:device/network@0.2.2';
import * as witOptions from 'vhost:device/options@0.2.2';

type Level = witLog.Level;

function text(args: unknown[]): string {
  return args.map((a) => (typeof a === 'string' ? a : a instanceof Error ? a.message : String(a))).join(' ');
}

/** Lines in the host's log, tagged with the plugin (rate-limited by the host). */
export const log = {
  write: (level: Level, message: string): void => witLog.write(level, message),
  error: (...args: unknown[]): void => witLog.write('error', text(args)),
  warn: (...args: unknown[]): void => witLog.write('warn', text(args)),
  info: (...args: unknown[]): void => witLog.write('info', text(args)),
  debug: (...args: unknown[]): void => witLog.write('debug', text(args)),
  trace: (...args: unknown[]): void => witLog.write('trace', text(args)),
};

/** Random bytes from the host (--entropy). */
export const entropy = {
  /** Exactly `len` random bytes (the host caps one call at 1 MiB). */
  fill: (len: number): Uint8Array => witEntropy.fill(len),
};

/** The --storage grant: answers name it as backing 0. */
export const storage = {
  size: (): bigint => witStorage.size(),
  readOnly: (): boolean => witStorage.readOnly(),
  blockSize: (): number => witStorage.blockSize(),
};

/** The operator's settings (--plugin-option KEY=VALUE): the value of `key`, or undefined. */
export const options = {
  get: (key: string): string | undefined => witOptions.get(key),
};

/** The --network grants, numbered in grant order from 0 (count 0 without one). */
export const network = {
  count: (): number => witNetwork.count(),
  /** Payload bytes after the 14-byte Ethernet header; a frame is 14 to mtu + 18 bytes. */
  mtu: (index: number): number => witNetwork.mtu(index),
};

/**
 * The --shared-dir grant, as the WIT has it. A call whose WIT result is an error throws; the
 * Linux errno it carries is errnoOf(e).
 */
export const fs = witFs;

/** The errno an `fs` call failed with, or null when `e` is not such a failure. */
export function errnoOf(e: unknown): number | null {
  const payload = (e as { payload?: unknown } | null)?.payload;
  return typeof payload === 'number' ? payload : null;
}
