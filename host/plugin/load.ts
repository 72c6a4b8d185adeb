// Component bytes -> a running, validated VirtioDevice. The async entry transpiles on a
// cache miss; the sync one only reads the cache, for a worker that must build its device
// without awaiting (preparePlugin on the main thread first).
import { PluginError } from './errors.ts';
import { evaluateGlue } from './glue.ts';
import { hostImports, type PluginGrants } from './imports.ts';
import {
  defaultCacheDir,
  labelFor,
  preparePlugin,
  readPrepared,
  validateKind,
  componentHash,
  type PreparedPlugin,
} from './prepare.ts';
import { capMemory } from './wasm-binary.ts';
import { adaptDevice, type PluginDevice, type RawDevice } from './adapter.ts';
import { DEVICE_FUNCTIONS, DEVICE_INTERFACE, WIT_PACKAGE, WIT_VERSION } from './world.ts';

const STORAGE_IMPORT = `${WIT_PACKAGE}/storage`;
const FILESYSTEM_IMPORT = `${WIT_PACKAGE}/filesystem`;

/** The glue takes each interface it imports from this object once, at instantiation. */
function trackImports(
  imports: Record<string, Record<string, unknown>>,
  seen: Set<string>,
): Record<string, Record<string, unknown>> {
  const tracked: Record<string, Record<string, unknown>> = {};
  for (const [name, value] of Object.entries(imports)) {
    Object.defineProperty(tracked, name, {
      enumerable: true,
      get: () => {
        seen.add(name);
        return value;
      },
    });
  }
  return tracked;
}
export const DEFAULT_MEMORY_LIMIT = 64 * 1024 * 1024;

export interface LoadOptions {
  grants: PluginGrants;
  /** Ceiling on the plugin's linear memory (default 64 MiB). */
  memoryLimitBytes?: number;
  /** Where transpiled plugins are cached (default: a folder under the OS temp dir). */
  cacheDir?: string;
  /**
   * Wraps the part that runs plugin code (instantiation, identity, info), so a caller can put
   * it under a deadline (the device worker's watchdog); transpiling is host work and is not in it.
   */
  guard?: <T>(fn: () => T) => T;
}

export async function loadPlugin(bytes: Uint8Array, options: LoadOptions): Promise<PluginDevice> {
  const prepared = await preparePlugin(bytes, options.cacheDir);
  const instantiate = () => instantiatePrepared(prepared, options);
  return options.guard ? options.guard(instantiate) : instantiate();
}

export function loadPluginSync(bytes: Uint8Array, options: LoadOptions): PluginDevice {
  const label = labelFor(componentHash(bytes));
  validateKind(bytes, label);
  const prepared = readPrepared(bytes, options.cacheDir ?? defaultCacheDir());
  if (!prepared) {
    throw new PluginError(label, 'load', 'load', 'not in the transpile cache: call preparePlugin(bytes, cacheDir) first');
  }
  return instantiatePrepared(prepared, options);
}

export function instantiatePrepared(prepared: PreparedPlugin, options: LoadOptions): PluginDevice {
  const label = labelFor(prepared.hash);
  const limit = options.memoryLimitBytes ?? DEFAULT_MEMORY_LIMIT;
  const loadError = (detail: string, cause?: unknown): PluginError =>
    new PluginError(label, 'load', 'load', detail, { cause });

  let memory: WebAssembly.Memory | undefined;
  const getCoreModule = (name: string): WebAssembly.Module => {
    const bytes = prepared.coreModules[name];
    if (!bytes) throw loadError(`glue asked for unknown core module ${name}`);
    try {
      return new WebAssembly.Module(capMemory(bytes, limit) as Uint8Array<ArrayBuffer>);
    } catch (e) {
      throw loadError(`core module ${name}: ${(e as Error).message}`, e);
    }
  };
  const instantiateCore = (module: WebAssembly.Module, imports?: WebAssembly.Imports): WebAssembly.Instance => {
    const instance = new WebAssembly.Instance(module, imports);
    for (const value of Object.values(instance.exports)) {
      if (value instanceof WebAssembly.Memory) memory = value;
    }
    return instance;
  };

  let exported: Record<string, unknown>;
  const imported = new Set<string>();
  try {
    const instantiate = evaluateGlue(prepared.glue, `vhost-plugin-${prepared.hash.slice(0, 12)}.js`);
    exported = instantiate(getCoreModule, trackImports(hostImports(options.grants), imported), instantiateCore);
  } catch (e) {
    if (e instanceof PluginError) throw e;
    throw loadError(`instantiation failed: ${(e as Error).message ?? String(e)}`, e);
  }

  // A disk handed to a plugin that cannot use it is an operator mistake (the wrong
  // --plugin, most likely): refuse rather than serve a device without its disk.
  if (options.grants.storage && !options.grants.allowUnusedStorage && !imported.has(STORAGE_IMPORT)) {
    throw loadError(`was granted storage (${options.grants.storage.describe}) but does not import ${WIT_PACKAGE}/storage@${WIT_VERSION}: it is not a block device; drop --storage or use another plugin`);
  }
  // The same for a shared directory given to a plugin that is not a filesystem device.
  if (options.grants.filesystem && !imported.has(FILESYSTEM_IMPORT)) {
    throw loadError(`was granted a shared directory but does not import ${WIT_PACKAGE}/filesystem@${WIT_VERSION}: it is not a virtio-fs device; drop --shared-dir or use another plugin`);
  }
  const device = (exported[DEVICE_INTERFACE] ?? exported.device) as Record<string, unknown> | undefined;
  const missing = DEVICE_FUNCTIONS.filter((f) => typeof device?.[f] !== 'function');
  if (!device || missing.length) {
    throw loadError(`${DEVICE_INTERFACE} lacks ${missing.join(', ')}`);
  }
  return adaptDevice(device as unknown as RawDevice, { label, memory: () => memory, memoryLimitBytes: limit });
}
