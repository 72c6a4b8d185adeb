// jco's generated glue is an ES module with a single `instantiate` export and no
// imports. Turning it into a function we can evaluate synchronously lets a worker load a
// plugin without dynamic import(), and lets us drop the glue's debug hook: it reads
// process.env.JCO_DEBUG (a getter that crosses into C++) on every call, which was
// measured at ~40% of a small call's CPU.
import { runInThisContext } from 'node:vm';
import type { LiftGuard } from './lift-guard.ts';

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
// the old buffer); lifts go through the LiftGuard below, which slices a cached view the same
// way (TypedArray#slice keeps small results on the V8 heap). Same bytes, same ownership: the
// result is still a copy the host owns.
const U8_VIEW_ANCHOR = /^(\s*)const dataView = mem => dv\.buffer === mem\.buffer \? dv : dv = new DataView\(mem\.buffer\);$/m;
// The memory's `buffer` getter is a call into C++ (~40 ns) that the glue makes several times per
// list element. A non-shared memory's buffer changes only when memory.grow detaches it, and a
// detached buffer reads as 0 bytes long, so the views are reused until then.
const U8_VIEW_HELPERS = [
  'let _vhMem = null, _vhU8 = new Uint8Array(0), _vhDvMem = null;',
  'const u8View = mem => (_vhMem === mem && _vhU8.length !== 0) ? _vhU8 : (_vhMem = mem, _vhU8 = new Uint8Array(mem.buffer));',
  'const dataView = mem => (_vhDvMem === mem && dv.buffer.byteLength !== 0) ? dv : (_vhDvMem = mem, dv = new DataView(mem.buffer));',
];
const LOWER_BYTES =
  /(valData\d+) = new Uint8Array\((val\d+)\.buffer \|\| \2, \2\.byteOffset, (valLenBytes\d+)\);\s*const (out\d+) = new Uint8Array\((memory\d+)\.buffer, (ptr\d+), \3\);\s*\4\.set\(\1\);/g;

export interface PatchedGlue {
  source: string;
  /** How many u64/s64 lowers take a safe-integer number without a BigInt (0: pattern not found, still correct). */
  u64LowersRewritten: number;
  /** Host imports called straight, without jco's per-call task bookkeeping (see directImports). */
  importsDirect: number;
  /** The handle export's core call goes through the LiftGuard's `hot` hook (direct-handle.ts). */
  directHandle: boolean;
  /** The handle export runs without jco's task bookkeeping (directHandleExport). */
  handleUntracked: boolean;
  /** False when this jco version emits the hook differently: still correct, just slower. */
  debugHookRemoved: boolean;
  /** How many list<u8> lowers were rewritten to the cached view (0: pattern not found, still correct). */
  bytesCopiesRewritten: number;
  /** How many lifts out of plugin memory now go through the LiftGuard. */
  liftsGuarded: number;
}

// u64/s64 lowers. jco writes every 64-bit integer as `setBigInt64(p, toUint64(v))` (or
// toInt64), where toUint64 is BigInt.asUintN(64, BigInt(v)): it takes a number too, but makes
// a BigInt of it, and a host function must then hand BigInts or have them made. The fs share's
// attributes (seven 64-bit fields per GETATTR, LOOKUP and READDIRPLUS entry) come from the
// native stat as doubles: as BigInts they were ~170 B of a GETATTR's ~1.5 KB of fresh objects.
// A non-negative safe-integer number is written as the two 32-bit halves of the same
// little-endian value (the high one first, so an out-of-bounds pointer throws RangeError
// before any byte is written, as setBigInt64 does); anything else goes jco's way unchanged.
const SET_64 = /dataView\((memory\d+)\)\.setBigInt64\(([^;()]+), (toUint64|toInt64)\(([\w$]+)\), true\);/g;
const SET_64_HELPER = [
  '// vhost-wasm: 64-bit lowers of safe-integer numbers without a BigInt (host/plugin/glue.ts).',
  'const _vhSet64 = (view, at, v, wide) => { if (typeof v === \'number\' && v >= 0 && Number.isSafeInteger(v)) { view.setUint32(at + 4, Math.floor(v / 4294967296), true); view.setUint32(at, v >>> 0, true); } else view.setBigInt64(at, wide(v), true); };',
  '',
].join('\n');

function numberLowers(source: string): { source: string; rewritten: number } {
  let rewritten = 0;
  const out = source.replace(SET_64, (_m, mem: string, at: string, wide: string, v: string) => {
    rewritten++;
    return `_vhSet64(dataView(${mem}), ${at}, ${v}, ${wide});`;
  });
  return rewritten === 0 ? { source, rewritten } : { source: SET_64_HELPER + out, rewritten };
}

// Lifts: every read of a list or string out of plugin memory becomes a LiftGuard call
// (lift-guard.ts), which checks it against the memory and a budget before copying. Unlike
// the speed-ups above this rewrite is not optional: a lift left as jco wrote it copies
// whatever the plugin points at, so an unrecognised glue is refused, not loaded.
const LIFT_BYTES = /new Uint8Array\((memory\d+)\.buffer\.slice\((\w+), \2 \+ (\w+) \* 1\)\)/g;
const LIFT_STRING = /TEXT_DECODER_UTF8\.decode\(new Uint8Array\((memory\d+)\.buffer, (\w+), (\w+)\)\)/g;
const LIFT_LIST =
  /(var (base\d+) = dataView\((memory\d+)\)\.getUint32\([^;]*\);\s*if \(\2 % \d+ !== 0\) throw new TypeError\(`list pointer \[\$\{\2\}\] is not aligned to \d+`\);)(\s*var result\d+ = \[\];\s*for \(let i = 0; i < (len\d+); i\+\+\) \{\s*const base = \2 \+ i \* (\d+);)/g;
const LIST_LOOP = /const base = base\d+ \+ i \* \d+;/g;
/** Import trampolines (arguments the plugin passes to the host) and export wrappers (what it returns). */
const FUNCTION_HEADER = /const _trampoline\d+ = function\s*\(|^\s*function [\w$]+\(/gm;
/** After rewriting, plugin memory may be touched only by these (lowering into memory the plugin allocated). */
const MEMORY_USE = /(memory\d+)\.buffer/g;
const ALLOWED_MEMORY_USE = [/new Uint8Array\(memory\d+\.buffer, ptr\d+, valLenBytes\d+\)/g, /new DataView\(memory\d+\.buffer\)/g];

function guardLifts(source: string): { source: string; guarded: number } {
  const headers = [...source.matchAll(FUNCTION_HEADER)].map((m) => ({ at: m.index!, isImport: m[0].includes('_trampoline') }));
  const inImport = (at: number): boolean => {
    let found: boolean | null = null;
    for (const h of headers) {
      if (h.at > at) break;
      found = h.isImport;
    }
    if (found === null) throw new Error(`glue lifts from plugin memory outside any import or export (offset ${at})`);
    return found;
  };
  let guarded = 0;
  let lists = 0;
  // Offsets shift as we replace, so classify against the source each regex runs on.
  let out = source.replace(LIFT_LIST, (_m, head: string, base: string, mem: string, loop: string, len: string, size: string, at: number) => {
    if (inImport(at)) throw new Error('glue lifts a list of lists from an import argument: not expected for this world');
    guarded++;
    lists++;
    return `${head} _vhLift.resultList(${mem}, ${base}, ${len}, ${size});${loop}`;
  });
  if ((out.match(LIST_LOOP) ?? []).length !== lists) throw new Error('glue lifts a list this host cannot guard: unexpected jco output');
  const classify = [...out.matchAll(FUNCTION_HEADER)].map((m) => ({ at: m.index!, isImport: m[0].includes('_trampoline') }));
  headers.splice(0, headers.length, ...classify);
  out = out.replace(LIFT_BYTES, (_m, mem: string, ptr: string, len: string, at: number) => {
    guarded++;
    return `_vhLift.${inImport(at) ? 'argBytes' : 'resultBytes'}(${mem}, ${ptr}, ${len})`;
  });
  out = out.replace(LIFT_STRING, (_m, mem: string, ptr: string, len: string) => {
    guarded++;
    return `_vhLift.string(${mem}, ${ptr}, ${len})`;
  });
  // Each allowed use names the memory once: any other use is one we did not rewrite.
  const uses = (out.match(MEMORY_USE) ?? []).length;
  const allowed = ALLOWED_MEMORY_USE.reduce((n, re) => n + (out.match(re) ?? []).length, 0);
  if (uses !== allowed) throw new Error(`glue reads plugin memory in ${uses - allowed} place(s) the host does not guard: unexpected jco output`);
  return { source: out, guarded };
}

/**
 * Inside jco's wrapper of the `handle` export (which lowers the event list, calls the core
 * function, lifts the action list), the core call may be replaced by the host's own lowering,
 * call and lifting (direct-handle.ts) when the LiftGuard's `hot` hook is set. jco's wrapper
 * keeps its task bookkeeping, which its import trampolines rely on while the plugin runs.
 * Not found: the glue is left as it is (handle then goes through jco alone).
 */
function hookHandle(source: string): { source: string; hooked: boolean } {
  const start = source.search(/\n\s*function handle\(arg0\) \{/);
  if (start < 0) return { source, hooked: false };
  const end = source.indexOf('\n  function ', start + 10);
  const stop = end < 0 ? source.length : end;
  const body = source.slice(start, stop);
  const realloc = /(realloc\d+)\(0, 0, 8, len\d+ \* 32\)/.exec(body);
  const memory = /dataView\((memory\d+)\)/.exec(body);
  const call = /fn: \(\) => ([\w$]+)\((result\d+), (len\d+)\),/;
  if (!realloc || !memory || !call.test(body)) return { source, hooked: false };
  const patched = body.replace(
    call,
    (_m, fn: string, ptr: string, len: string) => `fn: () => (_vhLift.hot !== null ? _vhLift.hot(${fn}, ${realloc[1]}, ${memory[1]}, ${ptr}) : ${fn}(${ptr}, ${len})),`,
  );
  return { source: source.slice(0, start) + patched + source.slice(stop), hooked: true };
}

// Host imports. jco 1.x runs every call of a sync import through its component-model task
// bookkeeping, twice: the lowered import (_lowerImportBackwardsCompat: argument array, a
// subtask object, return memory, may-leave check) and the trampoline inside it (a new task,
// its parent subtask, enterSync, the global current-task meta around the call, a host-operation
// tracker, resolve and exit, whose handlers hand the result to the subtask). For a sync host
// function that never calls back into the plugin, which every import of this host is, none of
// it changes what happens; it was ~13% of the device worker's time serving a guest's file
// operations (bench/fs-guest.ts --profile; a READDIRPLUS makes ~25 lookup calls). So each
// trampoline whose bookkeeping has exactly the expected shape calls its host function straight
// (argument lifting, result lowering and the trap handling stay as jco wrote them, with a
// task that does nothing), and is bound without the outer wrapper, keeping its may-leave
// check. A trampoline of another shape is left as it is, and so is its binding.
const IMPORT_HEADER = /const (_trampoline\d+) = function\s*\(/g;
const IMPORT_TASK =
  /(\n[ \t]*)const hostProvided = true;\s*let parentTask;\s*let task;\s*let subtask;\s*const createTask = \(\) => \{[\s\S]*?\n[ \t]*\};\s*taskCreation: \{\s*parentTask = getCurrentTask\(\s*\d+,[\s\S]*?\n[ \t]*\}\s*const started = task\.enterSync\(\);/g;
// The call may span lines (getlk/setlk pass a record): up to the first `),` that closes the
// _trackHostOperation arrow and the options object.
const IMPORT_CALL = /_withGlobalCurrentTaskMeta\(\{\s*componentIdx: task\.componentIdx\(\),\s*taskID: task\.id\(\),\s*fn: \(\) => _trackHostOperation\(\(\) => ([\s\S]+?)\),\s*\}\)/g;
/**
 * `let trampolineN = _trampolineN.manuallyAsync ? <suspending> : _lowerImportBackwardsCompat.bind(null, {...});`
 * with the sync branch bound straight to the trampoline (its may-leave check kept), or null when
 * the binding is not that shape or not a sync import of a sync function.
 */
function rebindImport(source: string, name: string): string | null {
  const head = `let ${name.slice(1)} = ${name}.manuallyAsync ? `;
  const at = source.indexOf(head);
  const mid = `importFn: ${name},`;
  const sep = ' : _lowerImportBackwardsCompat.bind(';
  const first = at < 0 ? -1 : source.indexOf(mid, at);
  const elseAt = first < 0 ? -1 : source.indexOf(sep, first);
  const second = elseAt < 0 ? -1 : source.indexOf(mid, elseAt);
  if (second < 0 || !/^\s*\},\s*\)\)\)$/.test(source.slice(first + mid.length, elseAt))) return null;
  const options = source.slice(elseAt + sep.length, second);
  const componentIdx = /^\s*null,\s*\{\s*trampolineIdx: \d+,\s*componentIdx: (\d+),\s*isAsync: false,/.exec(options)?.[1];
  const tail = /^\s*\},\s*\);/.exec(source.slice(second + mid.length));
  if (componentIdx === undefined || !/\n\s*funcTypeIsAsync: false,/.test(options) || !tail) return null;
  return `${source.slice(0, elseAt)} : _vhDirectImport(${name}, ${componentIdx}, _checkMayLeave);${source.slice(second + mid.length + tail[0].length)}`;
}
const IMPORT_HELPERS = [
  '// vhost-wasm: host imports called without jco\'s task bookkeeping (host/plugin/glue.ts).',
  'const _vhNoTask = Object.freeze({ componentIdx: () => -1, id: () => 0, enterSync: () => true, resolve() {}, exit() {}, reject() {}, setErrored() {}, getParentSubtask: () => null });',
  'const _vhDirectImport = (fn, componentIdx, checkMayLeave) => function () { checkMayLeave(componentIdx); return fn.apply(null, arguments); };',
  '',
].join('\n');

function directImports(source: string): { source: string; direct: number } {
  const heads = [...source.matchAll(IMPORT_HEADER)].map((m) => ({ at: m.index!, name: m[1] }));
  const done: string[] = [];
  let out = '';
  let from = 0;
  for (let i = 0; i < heads.length; i++) {
    const { at, name } = heads[i];
    const fnName = source.indexOf(`${name}.fnName =`, at);
    const end = fnName < 0 ? (heads[i + 1]?.at ?? source.length) : fnName;
    if (heads[i + 1] && end > heads[i + 1].at) continue; // not the shape we know
    const body = source.slice(at, end);
    const tasks = body.match(IMPORT_TASK)?.length ?? 0;
    const calls = body.match(IMPORT_CALL)?.length ?? 0;
    if (tasks !== 1 || calls !== 1 || rebindImport(source, name) === null) continue;
    const patched = body.replace(IMPORT_TASK, '$1const task = _vhNoTask;').replace(IMPORT_CALL, '($1)');
    out += source.slice(from, at) + patched;
    from = end;
    done.push(name);
  }
  out += source.slice(from);
  for (const name of done) {
    const rebound = rebindImport(out, name);
    if (rebound === null) throw new Error(`glue: the binding of ${name} changed while patching (a host bug)`);
    out = rebound;
  }
  if (done.length === 0) return { source, direct: 0 };
  return { source: IMPORT_HELPERS + out, direct: done.length };
}

// The `handle` export, called once per batch (a TCG guest's every request): jco wraps its core
// call in the same bookkeeping as an import's (a new AsyncTask registered in the component's
// task map, the exclusive lock, the global current-task meta around the call and again around
// the core call, resolve and exit checking resource borrows). It exists for what can happen
// while the plugin runs: an import that calls back into a component, an async import looking
// for its parent task, a borrowed resource. None can here once every import is called straight
// (directImports) and the world has no resources, so then handle runs without it. Kept as
// jco wrote it: the trapped-instance check on entry, marking the instance trapped when the
// core call throws, mayLeave off around post-return, the lowering and lifting (through the
// LiftGuard). Cold exports keep jco's wrapper; any other shape leaves handle as it is.
const EXPORT_TASK =
  /\n([ \t]*)const \[task, _wasm_call_currentTaskID\] = createNewCurrentTask\(\{[^}]*entryFnName: '[\w$]+',[\s\S]*?\}\);\s*task\.setCalleeIsAsync\(false\);\s*const started = task\.enterSync\(\);\s*CURRENT_TASK_MAY_BLOCK\.value = task\.mayBlock\(\) \? 1 : 0;\s*if \(0\s*!== null\) \{\s*task\.setReturnMemoryIdx\(0\);\s*task\.setReturnMemory\(\(\(\) => memory0\)\(\)\);\s*\}\s*return _withGlobalCurrentTaskMeta\(\{\s*taskID: task\.id\(\),\s*componentIdx: task\.componentIdx\(\),\s*fn: \(\) => \{/;
const EXPORT_END = /\},\s*\}\);\s*\}\s*$/;
const EXPORT_CORE_CALL = /_withGlobalCurrentTaskMeta\(\{\s*taskID: task\.id\(\),\s*componentIdx: task\.componentIdx\(\),\s*fn: \(\) => (\(_vhLift\.hot[^\n]*\)),\s*\}\);/;
const EXPORT_HELPERS = [
  "// vhost-wasm: the handle export called without jco's task bookkeeping (host/plugin/glue.ts).",
  'const _vhExportTask = Object.freeze({ id: () => 0, componentIdx: () => 0, resolve() {}, exit() {}, reject() {}, setErrored() {}, isResolvedState: () => false, isExited: () => false });',
  '',
].join('\n');

function directHandleExport(source: string, importsDirect: number): { source: string; direct: boolean } {
  const trampolines = (source.match(/const _trampoline\d+ = function\s*\(/g) ?? []).length;
  // Every import straight, and no resource ever borrowed (the class defines addResourceLender once; a use is a second).
  if (importsDirect !== trampolines || (source.match(/addResourceLender\(/g) ?? []).length > 1) return { source, direct: false };
  const head = /\n([ \t]*)function handle\(arg0\) \{/.exec(source);
  if (!head) return { source, direct: false };
  // The function ends at the first closing brace at its header's indentation.
  const start = head.index;
  const close = source.indexOf(`\n${head[1]}}\n`, start + head[0].length);
  if (close < 0) return { source, direct: false };
  const stop = close + head[1].length + 3;
  const body = source.slice(start, stop);
  if (!EXPORT_TASK.test(body) || !EXPORT_END.test(body) || !EXPORT_CORE_CALL.test(body)) return { source, direct: false };
  const patched = body
    .replace(EXPORT_TASK, (_m, indent: string) => `\n${indent}const task = _vhExportTask;\n${indent}CURRENT_TASK_MAY_BLOCK.value = 0;\n${indent}return (() => {`)
    .replace(EXPORT_CORE_CALL, '$1;')
    .replace(EXPORT_END, `})();\n${head[1]}}\n`);
  return { source: EXPORT_HELPERS + source.slice(0, start) + patched + source.slice(stop), direct: true };
}

export function patchGlue(moduleSource: string): PatchedGlue {
  let source = moduleSource;
  const debugHookRemoved = DEBUG_HOOK.test(source);
  // An empty arrow lets V8 inline the call and drop the argument objects too.
  source = source.replace(DEBUG_HOOK, 'const _debugLog = () => {};');
  let bytesCopiesRewritten = 0;
  if (U8_VIEW_ANCHOR.test(source)) {
    source = source.replace(U8_VIEW_ANCHOR, (_line, indent: string) => U8_VIEW_HELPERS.map((l) => indent + l).join('\n'));
    source = source.replace(LOWER_BYTES, (m, _data: string, val: string, _len: string, _out: string, mem: string, ptr: string) => {
      bytesCopiesRewritten++;
      return `if (${val} instanceof Uint8Array) u8View(${mem}).set(${val}, ${ptr}); else { ${m} }`;
    });
  }
  const lowers = numberLowers(source);
  source = lowers.source;
  const lifts = guardLifts(source);
  source = lifts.source;
  const direct = hookHandle(source);
  source = direct.source;
  const imports = directImports(source);
  source = imports.source;
  const handleExport = directHandleExport(source, imports.direct);
  source = handleExport.source;
  const exportsSeen = (source.match(/^export /gm) ?? []).length;
  source = source.replace(/^export function instantiate\(/m, 'function instantiate(');
  source = source.replace(/^export const _util\b/m, 'const _util');
  if (/^export /m.test(source) || /^import /m.test(source)) {
    throw new Error(`unexpected glue shape: ${exportsSeen} exports, imports present`);
  }
  return { source, u64LowersRewritten: lowers.rewritten, directHandle: direct.hooked, handleUntracked: handleExport.direct, importsDirect: imports.direct, debugHookRemoved, bytesCopiesRewritten, liftsGuarded: lifts.guarded };
}

export function evaluateGlue(patchedSource: string, filename: string, guard: LiftGuard): Instantiate {
  const wrapped = `(function (_vhLift) {\n'use strict';\n${patchedSource}\nreturn instantiate;\n})`;
  const factory = runInThisContext(wrapped, { filename }) as (guard: LiftGuard) => Instantiate;
  return factory(guard);
}
