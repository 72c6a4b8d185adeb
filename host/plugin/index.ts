// host/plugin: WebAssembly component plugins as VirtioDevices.
export { loadPlugin, loadPluginSync, instantiatePrepared, DEFAULT_MEMORY_LIMIT, type LoadOptions } from './load.ts';
export { preparePlugin, readPrepared, defaultCacheDir, type PreparedPlugin } from './prepare.ts';
export { PluginError, type PluginErrorKind } from './errors.ts';
export type { PluginDevice } from './adapter.ts';
export type { PluginGrants } from './imports.ts';
export type { PluginIdentity } from './validate.ts';
export { WIT_VERSION, DEVICE_INTERFACE } from './world.ts';
