// Density (issue 13): a plugin's core modules compiled once per process and shared by every
// device and queue thread that runs it. A WebAssembly.Module crosses to a worker through
// workerData without being compiled again (its code is shared, not copied), so N devices of one
// plugin hold one copy of its machine code instead of N.
//
// The modules are compiled as the worker would: with the memory and table caps of the device's
// memory limit (capModule), so the key is the plugin's hash and that limit. Compiled from the
// transpile cache only: a plugin not transpiled yet is left to its first worker (which
// transpiles it under its start-up deadline, off the main thread), and the next device finds it.
import { readFileSync } from 'node:fs';
import { componentHash, defaultCacheDir, readPrepared, type PreparedPlugin } from './prepare.ts';
import { planAllocations } from './limits.ts';
import { capModule } from './wasm-binary.ts';

/** Core modules by the name the glue asks for them by. */
export type CompiledModules = ReadonlyMap<string, WebAssembly.Module>;

/**
 * Compiles every core module of `prepared` under the caps of `memoryLimitBytes`, off the main
 * thread's JavaScript (WebAssembly.compile). Rejects with what planAllocations or the compiler throws.
 */
export async function compileCoreModules(prepared: PreparedPlugin, memoryLimitBytes: number): Promise<Map<string, WebAssembly.Module>> {
  const plan = planAllocations(prepared.coreModules, prepared.glue, memoryLimitBytes);
  const out = new Map<string, WebAssembly.Module>();
  for (const [name, bytes] of Object.entries(prepared.coreModules)) {
    const caps = plan.modules.get(name);
    if (!caps) continue; // not instantiated by the glue
    out.set(name, await WebAssembly.compile(capModule(bytes, caps.memoryPages, caps.tableElements) as Uint8Array<ArrayBuffer>));
  }
  return out;
}

/**
 * Plugin builds (hash and memory limit) whose compiled modules are kept. The daemon runs for
 * months while plugins are upgraded and devices come and go: an entry per build ever seen would
 * grow without end. Past the bound the one used least recently is dropped; its devices keep
 * running (each worker holds its own reference to the modules), and a device of it started later
 * compiles it again (~ms for a C plugin, ~100 ms for a JavaScript one).
 */
export const MAX_COMPILED_PLUGINS = 16;

/** Insertion order is recency: a hit moves its entry to the end, the first is the eviction candidate. */
const cache = new Map<string, Promise<CompiledModules | null>>();

/** Plugin builds whose modules are held now (tests, device-stats). */
export function compiledPluginCount(): number {
  return cache.size;
}

/**
 * The shared modules of the plugin at `path` for `memoryLimitBytes`, or null when the plugin is
 * not in the transpile cache yet or does not compile (its worker then reports why, as before).
 */
export function sharedModules(path: string, memoryLimitBytes: number, cacheDir = defaultCacheDir()): Promise<CompiledModules | null> {
  let bytes: Uint8Array;
  try {
    bytes = readFileSync(path);
  } catch {
    return Promise.resolve(null); // the worker names the missing file
  }
  const key = `${componentHash(bytes)}/${memoryLimitBytes}`;
  let entry = cache.get(key);
  if (entry) {
    cache.delete(key);
    cache.set(key, entry);
  } else {
    entry = (async () => {
      try {
        const prepared = readPrepared(bytes, cacheDir);
        return prepared ? await compileCoreModules(prepared, memoryLimitBytes) : null;
      } catch {
        return null; // not a component, or one that cannot load: the worker's error says why
      }
    })();
    // Only a hit is kept: a plugin transpiled later is found by the next device.
    void entry.then((m) => {
      if (m === null) cache.delete(key);
    });
    cache.set(key, entry);
    while (cache.size > MAX_COMPILED_PLUGINS) cache.delete(cache.keys().next().value!);
  }
  return entry;
}
