// The host side of the plugin's imports. Every importable interface is always present
// (the glue refuses to instantiate with one missing); an ungranted capability is a
// function that throws, which surfaces as a trap in the plugin call that used it.
import { WIT_LOG_LEVELS } from './world.ts';
import type { Backing } from '../storage/backing.ts';
import type { BackingTable } from '../io/backing-table.ts';
import { storageImports } from './storage-imports.ts';
import type { FsShare } from '../fs/share.ts';
import { filesystemImports } from '../fs/imports.ts';
import type { FsFileBackings } from '../fs/file-backings.ts';
import { EntropyPool } from './entropy-pool.ts';
import { LogRateLimit, PLUGIN_LOG_BURST, PLUGIN_LOG_RATE } from './log-limit.ts';
import { MAX_PLUGIN_STRING } from './lift-guard.ts';
import { cutToBytes, type LogLevel } from '../log/logger.ts';
import { VhostWasmError } from '../errors.ts';
import type { PluginOptions } from './plugin-options.ts';

export interface PluginGrants {
  /** Random bytes for virtio-rng and friends. */
  entropy?: boolean;
  /** The block store behind `storage`; the grant owns nothing, the caller closes it. */
  storage?: Backing;
  /** Skip the load-time refusal of a storage grant the plugin does not import (probing). */
  allowUnusedStorage?: boolean;
  /** The directory tree behind `filesystem` (--shared-dir); the caller closes it. */
  filesystem?: FsShare;
  /**
   * The device's backing table (host/io/backing-table.ts): `filesystem.backing(handle)`
   * registers an open file here and unregisters it when the file is closed.
   */
  backings?: BackingTable;
  /** The share's open files as entries of `backings` (what `filesystem.backing` hands out). */
  fsFiles?: FsFileBackings;
  /** The device's networks in grant order (--network): what `network.count` and `network.mtu` tell. */
  networks?: readonly { readonly mtu: number }[];
  /** The operator's settings for the plugin (`options.get`); none when absent. */
  options?: PluginOptions;
  /** Where plugin log lines go; always granted. */
  log: (level: LogLevel, message: string) => void;
  /** The device's log budget, kept across fresh instances of it (default: one per instance). */
  logRate?: LogRateLimit;
}

/** One entropy call may ask for this much; virtio-rng asks for one buffer's worth. */
export const MAX_ENTROPY_PER_CALL = 1 << 20;
/** Longer log lines are cut (the glue already decodes no more than this, see lift-guard.ts). */
export const MAX_LOG_MESSAGE = MAX_PLUGIN_STRING;

export function droppedLines(n: number): string {
  return `dropped ${n} plugin log lines (a device may log ${PLUGIN_LOG_RATE} lines a second, ${PLUGIN_LOG_BURST} at once)`;
}

export class CapabilityError extends VhostWasmError {
  static override readonly code = 'ERR_PLUGIN_CAPABILITY';
  override readonly name = 'CapabilityError';
}


/**
 * The host level of a plugin's log line: the host logger has no trace level, so trace lines
 * go out as debug; anything that is not a WIT level (a broken glue) is an error line.
 */
export function pluginLogLevel(level: unknown): LogLevel {
  if (level === 'trace') return 'debug';
  return WIT_LOG_LEVELS.includes(level as (typeof WIT_LOG_LEVELS)[number]) ? (level as LogLevel) : 'error';
}

export function hostImports(grants: PluginGrants): Record<string, Record<string, unknown>> {
  const pool = new EntropyPool();
  const rate = grants.logRate ?? new LogRateLimit((n) => grants.log('warn', droppedLines(n)));
  return {
    'vhost:device/log': {
      write(level: unknown, message: unknown): void {
        if (!rate.take()) return;
        // The logger escapes control characters; the glue already cut the text (room here for its marker).
        grants.log(pluginLogLevel(level), cutToBytes(String(message), MAX_LOG_MESSAGE + 32));
      },
    },
    'vhost:device/entropy': {
      fill(len: number): Uint8Array {
        if (!grants.entropy) throw new CapabilityError('entropy was not granted to this device');
        if (len > MAX_ENTROPY_PER_CALL) {
          throw new CapabilityError(`entropy.fill(${len}) exceeds ${MAX_ENTROPY_PER_CALL} bytes per call`);
        }
        return pool.take(len);
      },
    },
    'vhost:device/filesystem': filesystemImports(
      grants.filesystem,
      () => {
        throw new CapabilityError('filesystem was not granted to this device (give --shared-dir)');
      },
      grants.fsFiles,
    ),
    'vhost:device/network': {
      count(): number {
        return grants.networks?.length ?? 0;
      },
      mtu(index: number): number {
        const n = grants.networks?.[index];
        if (n === undefined) throw new CapabilityError(`network.mtu(${index}): the device was granted ${grants.networks?.length ?? 0} network(s) (give --network NAME)`);
        return n.mtu;
      },
    },
    'vhost:device/options': {
      get(key: unknown): string | undefined {
        const k = String(key);
        return grants.options && Object.hasOwn(grants.options, k) ? grants.options[k] : undefined;
      },
    },
    'vhost:device/storage': storageImports(grants.storage, () => {
      throw new CapabilityError('storage was not granted to this device (give --storage)');
    }),
  };
}
