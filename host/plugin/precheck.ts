// Whether a plugin can load, checked in the main thread without running any of its code: a
// device that starts its worker on its first connection (start "on-connect") must still be
// refused at device-add or serve start when its plugin could never load. The checks are the
// loader's own, in its words (the same PluginError a worker would send back):
//  - the file is a component (validateKind), built for this host's world and version
//    (preparePlugin runs the world check on a transpile, in a worker when the caller gives one;
//    an entry in the cache passed it);
//  - its core modules fit the device's memory limit (planAllocations) and compile (compiled
//    once and kept for every device of the plugin: compiled-modules.ts);
//  - every grant is one it imports (unusedGrant: the glue names each interface it takes).
// What it cannot know without instantiating (the plugin trapping in its start or identity, a
// device-info the host refuses) is reported when the first front-end connects.
import { readFileSync } from 'node:fs';
import { PluginError } from './errors.ts';
import { preparePlugin, labelFor, componentHash, defaultCacheDir, readPrepared, validateKind } from './prepare.ts';
import { planAllocations } from './limits.ts';
import { compileCoreModules, sharedModules } from './compiled-modules.ts';
import { DEFAULT_MEMORY_LIMIT, unusedGrant } from './load.ts';
import type { StorageSpec } from '../storage/index.ts';

export interface PrecheckOptions {
  memoryLimitBytes?: number;
  cacheDir?: string;
  storage?: StorageSpec;
  /** A shared directory is granted. */
  filesystem?: boolean;
  /** --storage given only to probe (the loader's allowUnusedStorage). */
  storageProbe?: boolean;
  /**
   * Transpiles a plugin missing from the cache elsewhere (a worker: jco takes seconds the first
   * time, which the main thread's event loop should not wait through). Without it, or with no
   * usable cache folder, the transpile runs here.
   */
  prepareOffThread?: (path: string, cacheDir: string | undefined) => Promise<void>;
}

/** What a storage grant is called in messages (as the opened backing describes itself). */
function describeStorage(s: StorageSpec): string {
  return s.kind === 'memory' ? `memory:${s.size}${s.prealloc ? ',prealloc=on' : ''}` : s.path;
}

/** Resolves when the plugin at `path` would load with these grants; rejects with the loader's error otherwise. */
export async function precheckPlugin(path: string, o: PrecheckOptions): Promise<void> {
  let bytes: Buffer;
  try {
    bytes = readFileSync(path);
  } catch (e) {
    throw new PluginError(path, 'load', 'load', `cannot read the plugin file: ${(e as Error).message}`, { cause: e });
  }
  const label = labelFor(componentHash(bytes));
  validateKind(bytes, label);
  const cacheDir = o.cacheDir ?? defaultCacheDir();
  let prepared = readPrepared(bytes, cacheDir);
  if (!prepared && o.prepareOffThread) {
    await o.prepareOffThread(path, o.cacheDir);
    prepared = readPrepared(bytes, cacheDir);
  }
  // preparePlugin checks the world on a transpile; an entry in the cache passed it.
  prepared ??= await preparePlugin(bytes, cacheDir);
  const limit = o.memoryLimitBytes ?? DEFAULT_MEMORY_LIMIT;
  try {
    planAllocations(prepared.coreModules, prepared.glue, limit);
  } catch (e) {
    throw new PluginError(label, 'load', 'load', (e as Error).message, { cause: e });
  }
  const unused = unusedGrant(
    { storage: o.storage ? { describe: describeStorage(o.storage) } : undefined, filesystem: o.filesystem, allowUnusedStorage: o.storageProbe },
    (name) => prepared.glue.includes(`imports['${name}']`),
  );
  if (unused !== null) throw new PluginError(label, 'load', 'load', unused);
  try {
    // Compiled once for every device of the plugin (null: not kept, e.g. no usable cache folder).
    if ((await sharedModules(path, limit, o.cacheDir)) === null) await compileCoreModules(prepared, limit);
  } catch (e) {
    throw new PluginError(label, 'load', 'load', `core module does not compile: ${(e as Error).message}`, { cause: e });
  }
}
