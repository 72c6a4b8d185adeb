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

// list<u8> copies. The glue lifts every byte list with `new Uint8Array(memory.buffer.slice(..))`,
// which allocates an off-heap ArrayBuffer per list (~1 us each, plus GC pressure: most of a
// batch's cost for small responses), and lowers each one through two fresh views. Both go
// through one cached Uint8Array over the memory instead (refreshed when memory.grow detaches
// the old buffer), and a lift becomes TypedArray#slice, which keeps small results on the V8
// heap. Same bytes, same ownership: the result is still a copy the host owns.
const U8_VIEW_ANCHOR = /^(\s*)const dataView = mem => dv\.buffer === mem\.buffer \? dv : dv = new DataView\(mem\.buffer\);$/m;
// The memory's `buffer` getter is a call into C++ (~40 ns) that the glue makes several times per
// list element. A non-shared memory's buffer changes only when memory.grow detaches it, and a
// detached buffer reads as 0 bytes long, so the views are reused until then.
const U8_VIEW_HELPERS = [
  'let _vhMem = null, _vhU8 = new Uint8Array(0), _vhDvMem = null;',
  'const u8View = mem => (_vhMem === mem && _vhU8.length !== 0) ? _vhU8 : (_vhMem = mem, _vhU8 = new Uint8Array(mem.buffer));',
  'const dataView = mem => (_vhDvMem === mem && dv.buffer.byteLength !== 0) ? dv : (_vhDvMem = mem, dv = new DataView(mem.buffer));',
];
const LIFT_BYTES = /new Uint8Array\((memory\d+)\.buffer\.slice\((\w+), \2 \+ (\w+) \* 1\)\)/g;
const LOWER_BYTES =
  /(valData\d+) = new Uint8Array\((val\d+)\.buffer \|\| \2, \2\.byteOffset, (valLenBytes\d+)\);\s*const (out\d+) = new Uint8Array\((memory\d+)\.buffer, (ptr\d+), \3\);\s*\4\.set\(\1\);/g;

export interface PatchedGlue {
  source: string;
  /** False when this jco version emits the hook differently: still correct, just slower. */
  debugHookRemoved: boolean;
  /** How many list<u8> lifts and lowers were rewritten to the cached view (0: pattern not found, still correct). */
  bytesCopiesRewritten: number;
}

export function patchGlue(moduleSource: string): PatchedGlue {
  let source = moduleSource;
  const debugHookRemoved = DEBUG_HOOK.test(source);
  // An empty arrow lets V8 inline the call and drop the argument objects too.
  source = source.replace(DEBUG_HOOK, 'const _debugLog = () => {};');
  let bytesCopiesRewritten = 0;
  if (U8_VIEW_ANCHOR.test(source)) {
    source = source.replace(U8_VIEW_ANCHOR, (_line, indent: string) => U8_VIEW_HELPERS.map((l) => indent + l).join('\n'));
    source = source.replace(LIFT_BYTES, (_m, mem: string, ptr: string, len: string) => {
      bytesCopiesRewritten++;
      return `u8View(${mem}).slice(${ptr}, ${ptr} + ${len})`;
    });
    source = source.replace(LOWER_BYTES, (m, _data: string, val: string, _len: string, _out: string, mem: string, ptr: string) => {
      bytesCopiesRewritten++;
      return `if (${val} instanceof Uint8Array) u8View(${mem}).set(${val}, ${ptr}); else { ${m} }`;
    });
  }
  const exportsSeen = (source.match(/^export /gm) ?? []).length;
  source = source.replace(/^export function instantiate\(/m, 'function instantiate(');
  source = source.replace(/^export const _util\b/m, 'const _util');
  if (/^export /m.test(source) || /^import /m.test(source)) {
    throw new Error(`unexpected glue shape: ${exportsSeen} exports, imports present`);
  }
  return { source, debugHookRemoved, bytesCopiesRewritten };
}

export function evaluateGlue(patchedSource: string, filename: string): Instantiate {
  const wrapped = `(function () {\n'use strict';\n${patchedSource}\nreturn instantiate;\n})`;
  const factory = runInThisContext(wrapped, { filename }) as () => Instantiate;
  return factory();
}
