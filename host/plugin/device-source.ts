// The device worker's entry into host/plugin: a plugin file plus the operator's grants
// (as the CLI passes them through the worker's init message) -> a checked VirtioDevice.
import { readFileSync } from 'node:fs';
import type { VirtioDevice } from '../device/device.ts';
import { createLogger } from '../log/logger.ts';
import { loadPlugin } from './load.ts';

export async function loadPluginDevice(
  path: string,
  options: Record<string, unknown>,
  label: string,
): Promise<VirtioDevice> {
  const { memoryLimitBytes, entropy, cacheDir } = options;
  if (memoryLimitBytes !== undefined && (typeof memoryLimitBytes !== 'number' || memoryLimitBytes <= 0)) {
    throw new TypeError(`memoryLimitBytes must be a positive number, not ${String(memoryLimitBytes)}`);
  }
  const log = createLogger(`plugin ${label}`);
  return loadPlugin(readFileSync(path), {
    memoryLimitBytes: memoryLimitBytes as number | undefined,
    cacheDir: typeof cacheDir === 'string' ? cacheDir : undefined,
    grants: {
      entropy: entropy === true,
      // The host logger has no trace level; plugin trace lines go out as debug.
      log: (level, message) => log[level === 'trace' ? 'debug' : level](message),
    },
  });
}
