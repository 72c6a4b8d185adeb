// The device worker's entry into host/plugin: a plugin file plus the operator's grants
// (as the CLI passes them through the worker's init message) -> a checked VirtioDevice.
// Host-held resources behind a grant (a storage backing) are opened here, in the worker
// that uses them, and closed with the device.
import { readFileSync } from 'node:fs';
import type { VirtioDevice } from '../device/device.ts';
import { createLogger } from '../log/logger.ts';
import { isStorageSpec, openBacking, type Backing } from '../storage/index.ts';
import { storageStateSections } from '../migration/storage-section.ts';
import { loadPlugin } from './load.ts';
import { openShareOption } from '../fs/option.ts';
import { LogRateLimit } from './log-limit.ts';
import { droppedLines } from './imports.ts';
import { BackingTable, storageIoBacking } from '../io/backing-table.ts';
import { FsFileBackings } from '../fs/file-backings.ts';
import { checkPluginOptions } from './plugin-options.ts';
import { lockHandoffSection } from '../fs/lock-handoff-section.ts';

// One log budget per device, not per instance: a reset brings a fresh instance, not a fresh burst.
const logRates = new Map<string, LogRateLimit>();

export async function loadPluginDevice(
  path: string,
  options: Record<string, unknown>,
  label: string,
  /** Runs the plugin's own code at load (instantiation, identity, info): the worker times it. */
  guard?: <T>(fn: () => T) => T,
): Promise<VirtioDevice> {
  const { memoryLimitBytes, entropy, cacheDir, storage, storageProbe, compiledModules, networks } = options;
  if (networks !== undefined && (!Array.isArray(networks) || !networks.every((n) => typeof (n as { mtu?: unknown })?.mtu === 'number'))) {
    throw new TypeError('networks must be a list of {mtu}');
  }
  if (compiledModules !== undefined && !(compiledModules instanceof Map)) throw new TypeError('compiledModules must be a Map of core module names to WebAssembly.Module');
  if (memoryLimitBytes !== undefined && (typeof memoryLimitBytes !== 'number' || memoryLimitBytes <= 0)) {
    throw new TypeError(`memoryLimitBytes must be a positive number, not ${String(memoryLimitBytes)}`);
  }
  if (storage !== undefined && !isStorageSpec(storage)) {
    throw new TypeError(`storage must be {kind: 'file', path} or {kind: 'memory', size} with readOnly, not ${JSON.stringify(storage)}`);
  }
  const pluginOptions = checkPluginOptions(options.pluginOptions, `plugin ${label}`);
  const log = createLogger(`plugin ${label}`);
  let logRate = logRates.get(label);
  if (!logRate) logRates.set(label, (logRate = new LogRateLimit((n) => log.warn(droppedLines(n)))));
  // --shared-dir: the filesystem grant, opened in this worker and closed with the device.
  const share = openShareOption(options.filesystem, label);
  const backing: Backing | undefined = storage === undefined ? undefined : openBacking(storage, (message) => log.warn(message));
  // What the device's answers may name: 0 = --storage; fs files are added by filesystem.backing.
  const backings = new BackingTable(backing ? storageIoBacking(backing) : undefined);
  const fsFiles = share ? new FsFileBackings(share, backings) : undefined;
  let device: VirtioDevice;
  try {
    device = await loadPlugin(readFileSync(path), {
      memoryLimitBytes: memoryLimitBytes as number | undefined,
      cacheDir: typeof cacheDir === 'string' ? cacheDir : undefined,
      compiled: compiledModules as Map<string, WebAssembly.Module> | undefined,
      guard,
      grants: {
        entropy: entropy === true,
        storage: backing,
        filesystem: share,
        backings,
        fsFiles,
        allowUnusedStorage: storageProbe === true,
        options: pluginOptions,
        networks: networks as { mtu: number }[] | undefined,
        log: (level, message) => log[level](message),
        logRate,
      },
    });
  } catch (e) {
    backing?.close();
    share?.close();
    throw e;
  }
  if (share) {
    const closeDevice = device.close?.bind(device);
    const resetDevice = device.reset.bind(device);
    device = Object.assign(device, {
      // A reset (RESET_DEVICE, a disconnect, an aborted state load) ends every file the guest
      // had: the host closes the share's handles itself rather than trust the plugin to, so
      // a plugin that forgets (or traps in reset) cannot keep fds from the process budget.
      processBound(): string | null {
        const n = share.locks.heldLocks;
        return n === 0
          ? null
          : `the guest holds ${n} file lock(s) on the share, which only a live plugin upgrade or host handover carries (they are this process's open file descriptions)`;
      },
      // A live plugin upgrade or host handover hands the locks to the new instance (host/fs/lock-handoff.ts).
      instanceBound: () => share.lockHandoffBound(),
      upgradeSections: () => [lockHandoffSection(share)],
      reset(): void {
        try {
          resetDevice();
        } finally {
          fsFiles?.releaseAll();
          backings.clearFiles();
          const n = share.releaseAll();
          if (n > 0) log.debug(`device reset: released ${n} share handles`);
        }
      },
      close(): void {
        closeDevice?.();
        share.close();
      },
      setWaker(wake: ((token: bigint) => void) | null): void {
        share.locks.setWaker(wake);
      },
      stopWaits(stop: boolean): void {
        share.locks.stopWaits(stop);
      },
    });
  }
  device = Object.assign(device, { backings });
  if (!backing) return device;
  const close = device.close?.bind(device);
  return Object.assign(device, {
    close(): void {
      close?.();
      backing.close();
    },
    // A memory:SIZE disk is device state: it travels in the same stream as the plugin's bytes.
    stateSections: () => storageStateSections(backing),
  });
}
