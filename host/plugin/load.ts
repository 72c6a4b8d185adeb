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
import { capModule, MEMORY_EXPORT_PREFIX } from './wasm-binary.ts';
import { planAllocations, type AllocationPlan } from './limits.ts';
import { LiftGuard } from './lift-guard.ts';
import { adaptDevice, type PluginDevice, type RawDevice } from './adapter.ts';
import { DirectHandle } from './direct-handle.ts';
import { DEVICE_FUNCTIONS, DEVICE_INTERFACE, DEVICE_INTERFACES, WIT_PACKAGE, WIT_VERSION } from './world.ts';

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
/**
 * A grant the plugin has no use for, in words (null: none). A disk handed to a plugin that
 * cannot use it is an operator mistake (the wrong --plugin, most likely): refused rather than
 * serving a device without its disk; the same for a shared directory given to a plugin that is
 * not a filesystem device. `imports(name)`: whether the component imports that interface (at
 * instantiation, the interfaces its glue took; before it, precheck.ts reads the glue).
 */
export function unusedGrant(grants: { storage?: { describe: string } | undefined | null; filesystem?: unknown; allowUnusedStorage?: boolean }, imports: (name: string) => boolean): string | null {
  if (grants.storage && !grants.allowUnusedStorage && !imports(STORAGE_IMPORT)) {
    return `was granted storage (${grants.storage.describe}) but does not import ${WIT_PACKAGE}/storage@${WIT_VERSION}: it is not a block device; drop --storage or use another plugin`;
  }
  if (grants.filesystem && !imports(FILESYSTEM_IMPORT)) {
    return `was granted a shared directory but does not import ${WIT_PACKAGE}/filesystem@${WIT_VERSION}: it is not a virtio-fs device; drop --shared-dir or use another plugin`;
  }
  return null;
}

export const DEFAULT_MEMORY_LIMIT = 64 * 1024 * 1024;

export interface LoadOptions {
  grants: PluginGrants;
  /** Ceiling on all of the plugin's linear memories together (default 64 MiB). */
  memoryLimitBytes?: number;
  /** Where transpiled plugins are cached (default: $XDG_CACHE_HOME/vhost-wasm, see cache-dir.ts). */
  cacheDir?: string;
  /**
   * Wraps the part that runs plugin code (instantiation, identity, info), so a caller can put
   * it under a deadline (the device worker's watchdog); transpiling is host work and is not in it.
   */
  guard?: <T>(fn: () => T) => T;
  /**
   * How `handle` is called: 'direct' (the default) lowers the events and lifts the actions in
   * the host (direct-handle.ts); 'jco' goes through jco's generated glue like every other
   * call (benchmarks compare the two). A glue whose handle export cannot be found is 'jco'.
   */
  handlePath?: 'direct' | 'jco';
  /**
   * The core modules compiled already, with the caps of this memory limit (compiled-modules.ts):
   * shared by every device of the plugin in the process instead of compiled per instance.
   */
  compiled?: ReadonlyMap<string, WebAssembly.Module>;
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

  // The whole component's allocations are planned before the first instance exists; a
  // component that cannot fit is refused here, with nothing allocated.
  let plan: AllocationPlan;
  try {
    plan = planAllocations(prepared.coreModules, prepared.glue, limit);
  } catch (e) {
    throw loadError((e as Error).message, e);
  }
  const compiled = new Map<WebAssembly.Module, { name: string; instances: number }>();
  const getCoreModule = (name: string): WebAssembly.Module => {
    const bytes = prepared.coreModules[name];
    const caps = plan.modules.get(name);
    if (!bytes || !caps) throw loadError(`glue asked for unknown core module ${name}`);
    try {
      const module = options.compiled?.get(name) ?? new WebAssembly.Module(capModule(bytes, caps.memoryPages, caps.tableElements) as Uint8Array<ArrayBuffer>);
      if (!compiled.has(module)) compiled.set(module, { name, instances: 0 });
      return module;
    } catch (e) {
      throw loadError(`core module ${name}: ${(e as Error).message}`, e);
    }
  };
  // Every memory any instance defines (capModule exports each one under our prefix), so the
  // reported size is the plugin's, not just that of the memory the glue talks to.
  const memories: WebAssembly.Memory[] = [];
  let instances = 0;
  const instantiateCore = (module: WebAssembly.Module, imports?: WebAssembly.Imports): WebAssembly.Instance => {
    const entry = compiled.get(module);
    const caps = entry && plan.modules.get(entry.name);
    if (!entry || !caps) throw loadError('glue instantiated a core module the host did not compile');
    if (++entry.instances > caps.instances || ++instances > plan.instances) {
      throw loadError(`glue instantiated ${entry.name} more often than planned (${caps.instances}): refused`);
    }
    const instance = new WebAssembly.Instance(module, imports);
    for (const [name, value] of Object.entries(instance.exports)) {
      if (name.startsWith(MEMORY_EXPORT_PREFIX) && value instanceof WebAssembly.Memory) memories.push(value);
    }
    return instance;
  };

  const guard = new LiftGuard();
  guard.arm('load');
  let exported: Record<string, unknown>;
  const imported = new Set<string>();
  try {
    const instantiate = evaluateGlue(prepared.glue, `vhost-plugin-${prepared.hash.slice(0, 12)}.js`, guard);
    exported = instantiate(getCoreModule, trackImports(hostImports(options.grants), imported), instantiateCore);
  } catch (e) {
    if (e instanceof PluginError) throw e;
    throw loadError(`instantiation failed: ${(e as Error).message ?? String(e)}`, e);
  }

  const unused = unusedGrant(options.grants, (name) => imported.has(name));
  if (unused !== null) throw loadError(unused);
  // The glue names the export by the version the component was built for (world-check.ts let
  // only accepted ones through).
  const exportName = DEVICE_INTERFACES.find((name) => name in exported);
  const device = (exportName ? exported[exportName] : exported.device) as Record<string, unknown> | undefined;
  const missing = DEVICE_FUNCTIONS.filter((f) => typeof device?.[f] !== 'function');
  if (!device || missing.length) {
    throw loadError(`${exportName ?? DEVICE_INTERFACE} lacks ${missing.join(', ')}`);
  }
  // The glue routes handle's core call through guard.hot when patchGlue found it (glue.ts).
  const hooked = options.handlePath !== 'jco' && prepared.glue.includes('_vhLift.hot !== null');
  return adaptDevice(device as unknown as RawDevice, {
    label,
    memoryBytes: () => memories.reduce((sum, m) => sum + m.buffer.byteLength, 0),
    memoryLimitBytes: limit,
    guard,
    direct: hooked ? new DirectHandle(guard) : null,
  });
}
