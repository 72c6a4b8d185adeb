// jco's generated glue is an ES module with a single `instantiate` export and no
// imports. Turning it into a function we can evaluate synchronously lets a worker load a
// plugin without dynamic import(), and lets us drop the glue's debug hook: it reads
// process.env.JCO_DEBUG (a getter that crosses into C++) on every call, which was
// measured at ~40% of a small call's CPU.
import { runInThisContext } from 'node:vm';

export type CoreModuleGetter = (name: string) => WebAssembly.Module;
export type CoreInstantiator = (
  module: WebAssembly.Module,
  imports?: WebAssembly.Imports,
) => WebAssembly.Instance;
export type Instantiate = (
  getCoreModule: CoreModuleGetter,
  imports: Record<string, Record<string, unknown>>,
  instantiateCore?: CoreInstantiator,
) => Record<string, unknown>;

const DEBUG_HOOK = /const _debugLog = \(\.\.\.args\) => \{\s*if \(!globalThis\?\.process\?\.env\?\.JCO_DEBUG\) \{ return; \}\s*console\.debug\(\.\.\.args\);\s*\};/;

export interface PatchedGlue {
  source: string;
  /** False when this jco version emits the hook differently: still correct, just slower. */
  debugHookRemoved: boolean;
}

export function patchGlue(moduleSource: string): PatchedGlue {
  let source = moduleSource;
  const debugHookRemoved = DEBUG_HOOK.test(source);
  // An empty arrow lets V8 inline the call and drop the argument objects too.
  source = source.replace(DEBUG_HOOK, 'const _debugLog = () => {};');
  const exportsSeen = (source.match(/^export /gm) ?? []).length;
  source = source.replace(/^export function instantiate\(/m, 'function instantiate(');
  source = source.replace(/^export const _util\b/m, 'const _util');
  if (/^export /m.test(source) || /^import /m.test(source)) {
    throw new Error(`unexpected glue shape: ${exportsSeen} exports, imports present`);
  }
  return { source, debugHookRemoved };
}

export function evaluateGlue(patchedSource: string, filename: string): Instantiate {
  const wrapped = `(function () {\n'use strict';\n${patchedSource}\nreturn instantiate;\n})`;
  const factory = runInThisContext(wrapped, { filename }) as () => Instantiate;
  return factory();
}
