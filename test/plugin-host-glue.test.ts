// The per-call glue rewrites of host/plugin/glue.ts (cached views over the plugin's memory
// instead of an ArrayBuffer per byte list) must apply to what this jco emits, and must stay
// correct when the plugin's memory grows (the cached view's buffer is then detached).
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadPlugin, preparePlugin } from '../host/plugin/index.ts';
import { patchGlue } from '../host/plugin/glue.ts';
import type { DeviceAction, DeviceEvent } from '../host/device/device.ts';

const root = join(import.meta.dirname, '..');
const cacheDir = mkdtempSync(join(tmpdir(), 'plugin-host-glue-'));
let rng: Buffer;

test.before(() => {
  execFileSync(process.execPath, ['build.mjs', '--only', 'plugins'], { cwd: root, stdio: 'ignore' });
  rng = readFileSync(join(root, 'dist', 'plugins', 'rng.wasm'));
});
test.after.always(() => rmSync(cacheDir, { recursive: true, force: true }));

test('the byte-list rewrites apply to the glue this jco emits', async (t) => {
  const prepared = await preparePlugin(rng, cacheDir);
  t.true(prepared.debugHookRemoved);
  t.false(/\.buffer\.slice\(/.test(prepared.glue), 'no list<u8> is lifted through ArrayBuffer#slice any more');
  t.regex(prepared.glue, /_vhLift\.resultBytes\(memory0, /, 'returned byte lists go through the LiftGuard');
  t.regex(prepared.glue, /u8View\(memory0\)\.set\(/);
  // A glue without the anchor is left alone (correct, just slower).
  t.is(patchGlue('function instantiate() {}\n').bytesCopiesRewritten, 0);
});

test('host imports are called straight, without jco\'s per-call task bookkeeping, and keep their may-leave check', async (t) => {
  const fs = readFileSync(join(root, 'dist', 'plugins', 'fs.wasm'));
  const prepared = await preparePlugin(fs, cacheDir);
  const direct = (prepared.glue.match(/_vhDirectImport\(_trampoline\d+, \d+, _checkMayLeave\);/g) ?? []).length;
  const noTask = (prepared.glue.match(/const task = _vhNoTask;/g) ?? []).length;
  // Every import of the fs plugin, getlk and setlk too (a record argument over several lines;
  // test/fs-locks.test.ts drives them).
  const trampolines = (prepared.glue.match(/const _trampoline\d+ = function\s*\(/g) ?? []).length;
  t.is(direct, trampolines, `${direct} of ${trampolines} imports called straight`);
  t.is(noTask, direct, 'every trampoline bound straight lost its bookkeeping, and no other');
  t.false(/_withGlobalCurrentTaskMeta\(\{\s*componentIdx: task\.componentIdx\(\),\s*taskID: task\.id\(\),\s*fn: \(\) => _trackHostOperation\(\(\) => \w+\(\)\),/.test(prepared.glue));
  t.is(patchGlue('function instantiate() {}\n').importsDirect, 0, 'a glue of another shape is left as it is');
  // With every import straight, handle runs without jco's task bookkeeping; its trap check stays.
  const handle = prepared.glue.slice(prepared.glue.indexOf('function handle(arg0)'), prepared.glue.indexOf('function getState('));
  t.true(handle.includes('const task = _vhExportTask;'));
  t.false(handle.includes('createNewCurrentTask('), 'no task made per call');
  t.false(handle.includes('_withGlobalCurrentTaskMeta('), 'no current-task meta set per call');
  t.true(handle.includes('getOrCreateAsyncState(0).throwIfTrapped();'), 'a trapped instance still refuses the call');
  t.true(/markTrapped\(err\)/.test(handle), 'a throwing core call still traps the instance');
  // A host import that throws still traps the plugin (the capability was not granted).
  const bare = await loadPlugin(fs, { grants: { log() {} }, cacheDir });
  const init = Buffer.alloc(104);
  init.writeUInt32LE(104, 0);
  init.writeUInt32LE(26, 4);
  init.writeUInt32LE(7, 40);
  init.writeUInt32LE(31, 44);
  t.throws(() => bare.handle([{ kind: 'request', request: { id: 0, queue: 1, prefix: init, readableLen: init.length, writableLen: 256 } }]), {
    message: /filesystem was not granted/,
  });
});

test('64-bit lowers take safe-integer numbers without a BigInt and write what jco writes for every value', async (t) => {
  const fs = readFileSync(join(root, 'dist', 'plugins', 'fs.wasm'));
  const prepared = await preparePlugin(fs, cacheDir);
  t.false(/setBigInt64\([^;]*toU?[Ii]nt64\(/.test(prepared.glue.replace(/^const _vhSet64 = .*$/m, '')), 'every u64/s64 lower of the fs glue goes through _vhSet64');
  // jco's shape, one u64 and one s64 lower, evaluated before and after the rewrite.
  const jco = [
    'function instantiate(memory0) {',
    '  let dv = new DataView(new ArrayBuffer());',
    '  const dataView = mem => dv.buffer === mem.buffer ? dv : dv = new DataView(mem.buffer);',
    '  function toInt64(val) { const converted = BigInt(val)\n return BigInt.asIntN(64, converted); }',
    '  function toUint64(val) { const converted = BigInt(val)\n return BigInt.asUintN(64, converted); }',
    '  return (arg1, v1_0, v1_1) => {',
    '    dataView(memory0).setBigInt64(arg1 + 0, toUint64(v1_0), true);',
    '    dataView(memory0).setBigInt64(arg1 + 8, toInt64(v1_1), true);',
    '  };',
    '}',
  ].join('\n');
  const patched = patchGlue(jco);
  t.is(patched.u64LowersRewritten, 2);
  type Lower = (at: number, u: unknown, s: unknown) => void;
  const make = (src: string): [Lower, Uint8Array] => {
    const mem = { buffer: new ArrayBuffer(24) };
    return [new Function(`${src}\nreturn instantiate;`)()(mem) as Lower, new Uint8Array(mem.buffer)];
  };
  const outcome = (src: string, at: number, u: unknown, s: unknown): string => {
    const [lower, bytes] = make(src);
    bytes.fill(0xaa);
    try {
      lower(at, u, s);
      return Buffer.from(bytes).toString('hex');
    } catch (e) {
      return `${(e as Error).constructor.name} ${Buffer.from(bytes).toString('hex')}`;
    }
  };
  const cases: [number, unknown, unknown][] = [
    [0, 0, 0], [0, 1, -1], [0, 2 ** 32 - 1, 2 ** 32], [0, 2 ** 53 - 1, 1.7e9], [0, 2 ** 53, 2 ** 53 + 2], [0, -0, -0],
    [0, -1, -(2 ** 53)], [0, 123n, -5n], [0, 2n ** 64n - 1n, 2n ** 63n], [0, 1.5, 0], [0, 0, NaN], [0, Infinity, 0],
    [0, '7', 0], [12, 5, 0], [16, 5, 0], [20, 5, 0],
  ];
  for (const [at, u, s] of cases) t.is(outcome(patched.source, at, u, s), outcome(jco, at, u, s), `at ${at}: ${String(u)}, ${String(s)}`);
});

/** The literal reply bytes of each answer, in order. */
function replies(actions: DeviceAction[]): Uint8Array[] {
  return actions.map((a) => (a.kind === 'answer' && a.answer.reply[0]?.kind === 'bytes' ? a.answer.reply[0].bytes : new Uint8Array(0)));
}

const request = (id: number, writableLen: number, prefix = new Uint8Array(0)): DeviceEvent => ({
  kind: 'request',
  request: { id, queue: 0, prefix, readableLen: prefix.length, writableLen },
});

test('answers stay right while the plugin memory grows under the cached views', async (t) => {
  const dev = await loadPlugin(rng, { grants: { entropy: true, log() {} }, cacheDir });
  const small = () => replies(dev.handle([request(0, 64, new Uint8Array([9, 9])), request(1, 1)]));
  const before = dev.memoryBytes();
  t.deepEqual(small().map((r) => r.length), [64, 1]);
  // 64 requests of 64 KiB: 4 MiB of answers at once, far past the initial memory.
  const big = replies(dev.handle(Array.from({ length: 64 }, (_, i) => request(i, 65536))));
  t.true(dev.memoryBytes() > before, `memory grew (${before} -> ${dev.memoryBytes()})`);
  t.true(big.every((r) => r.length === 65536));
  t.true(new Set(big[63]).size > 250, 'the last answer is random bytes, not stale memory');
  t.notDeepEqual(big[0].subarray(0, 64), big[1].subarray(0, 64));
  const after = small();
  t.deepEqual(after.map((r) => r.length), [64, 1]);
  t.true(new Set(after[0]).size > 16);
  // Results are copies: the next call must not change an earlier answer.
  const copy = Uint8Array.from(after[0]);
  small();
  t.deepEqual(after[0], copy);
});
