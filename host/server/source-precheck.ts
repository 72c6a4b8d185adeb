// The loader's checks of a device's plugin without running it (host/plugin/precheck.ts), with
// the device's grants and limits: what device-add does for a device that starts on its first
// connection, and what plugin-upgrade does for a device with no running instance to compare with.
import type { DeviceSource } from '../device/rpc.ts';
import { precheckPlugin } from '../plugin/precheck.ts';
import { prepareInWorker } from '../device/worker-thread.ts';
import { isStorageSpec } from '../storage/index.ts';

/** Resolves when `source` would load; rejects with the loader's own error otherwise (a module source is not checked). */
export async function precheckSource(source: DeviceSource): Promise<void> {
  if (source.kind !== 'plugin') return;
  const o = source.options ?? {};
  await precheckPlugin(source.path, {
    memoryLimitBytes: typeof o.memoryLimitBytes === 'number' ? o.memoryLimitBytes : undefined,
    cacheDir: typeof o.cacheDir === 'string' ? o.cacheDir : undefined,
    storage: isStorageSpec(o.storage) ? o.storage : undefined,
    filesystem: o.filesystem !== undefined,
    storageProbe: o.storageProbe === true,
    prepareOffThread: prepareInWorker,
  });
}
