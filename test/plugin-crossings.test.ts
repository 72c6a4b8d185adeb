// "One call into the plugin per batch; nothing per request across jco" (issue 10), counted
// where it happens: at the core WebAssembly boundary, below jco's glue. This test process
// swaps WebAssembly.Instance for one that counts every call of a core module's exports and
// every call its imports make back into JavaScript (the host's imports and jco's trampolines
// alike), then loads the in-tree blk plugin as the host does (loadPlugin, the same glue, the
// handle path) and hands it batches of 1, 16 and 64 requests. A batch is one core call of
// handle and one of its post-return, whatever its size. What does grow with the batch is one
// cabi_realloc per request, for its prefix: the canonical ABI lowers each list<u8> into a block
// of its own, which the plugin owns and frees (one block for all prefixes would have the
// plugin free pieces of a block); nothing else crosses per request, and blk calls no import
// while it answers. Both ways of calling handle (the host's direct lowering and jco's glue)
// cross alike; they differ in the JavaScript around the crossings, which this does not count.
// test/daemon-metrics counts handle() calls per batch through the built host; this is the
// same promise one level down, where the adapter (host/plugin/adapter.ts) calls the export.
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadPlugin, type PluginDevice } from '../host/plugin/index.ts';
import { MemoryBacking } from '../host/storage/memory.ts';
import type { DeviceEvent } from '../host/device/device.ts';

const root = join(import.meta.dirname, '..');
const cacheDir = mkdtempSync(join(tmpdir(), 'plugin-crossings-'));

/** Crossings of the core boundary by name ("export NAME", "import MODULE.NAME"), since the last reset. */
const crossings = new Map<string, number>();
const count = (what: string) => crossings.set(what, (crossings.get(what) ?? 0) + 1);
const total = () => [...crossings.values()].reduce((a, b) => a + b, 0);

/** Functions wrapped to count their calls; everything else (memories, tables, globals) as it was. */
function counted<T extends object>(from: T, prefix: string): T {
  const out: Record<string, unknown> = {};
  for (const [name, v] of Object.entries(from)) {
    out[name] = typeof v === 'function' ? (...args: unknown[]) => (count(`${prefix}${name}`), (v as (...a: unknown[]) => unknown)(...args)) : v;
  }
  return out as T;
}

const RealInstance = WebAssembly.Instance;
test.before(() => {
  execFileSync(process.execPath, ['build.mjs', '--only', 'plugins'], { cwd: root, stdio: 'ignore' });
  // A constructor returning an object: `new WebAssembly.Instance(m, i)` in host/plugin/load.ts
  // gets an instance whose exports and imports count their calls.
  function CountingInstance(module: WebAssembly.Module, imports?: WebAssembly.Imports): { exports: WebAssembly.Exports } {
    const wrapped: WebAssembly.Imports = {};
    for (const [ns, members] of Object.entries(imports ?? {})) wrapped[ns] = counted(members, `import ${ns}.`);
    return { exports: counted(new RealInstance(module, wrapped).exports, 'export ') };
  }
  (WebAssembly as { Instance: unknown }).Instance = CountingInstance;
});
test.after.always(() => {
  (WebAssembly as { Instance: unknown }).Instance = RealInstance;
  rmSync(cacheDir, { recursive: true, force: true });
});

async function blk(handlePath: 'direct' | 'jco'): Promise<PluginDevice> {
  const dev = await loadPlugin(readFileSync(join(root, 'dist', 'plugins', 'blk.wasm')), { grants: { storage: new MemoryBacking(4 << 20, false), log() {} }, cacheDir, handlePath });
  dev.activate(dev.info.features);
  return dev;
}

/** A batch of `n` 4 KiB reads and writes (ids from `first`), as the runner hands them over. */
function batch(first: number, n: number): DeviceEvent[] {
  return Array.from({ length: n }, (_, k) => {
    const h = Buffer.alloc(16);
    const write = k % 2 === 1;
    h.writeUInt32LE(write ? 1 : 0, 0);
    h.writeBigUInt64LE(BigInt(k * 8), 8);
    return { kind: 'request', request: { id: first + k, queue: 0, prefix: h, readableLen: write ? 16 + 4096 : 16, writableLen: write ? 1 : 4096 + 1 } };
  });
}

/** Crossings of one handle() call with a batch of `n` (after one call to warm the instance up). */
function crossingsOf(dev: PluginDevice, n: number, first: number): { total: number; byName: Record<string, number> } {
  crossings.clear();
  const actions = dev.handle(batch(first, n));
  if (actions.filter((a) => a.kind === 'answer').length !== n) throw new Error(`${n} requests, ${actions.length} actions`);
  return { total: total(), byName: Object.fromEntries(crossings) };
}

for (const path of ['direct', 'jco'] as const) {
  test(`${path} handle path: a batch is one core call of handle; per request only one cabi_realloc (its prefix), nothing else`, async (t) => {
    const dev = await blk(path);
    crossingsOf(dev, 4, 1000); // warmed up: the plugin's first call may set itself up
    const sizes = [1, 16, 64];
    // Ids far apart: each batch's requests are new to the plugin.
    const got = sizes.map((n, i) => crossingsOf(dev, n, i * 100));
    t.log(sizes.map((n, i) => `${n} request(s): ${got[i].total} crossings ${JSON.stringify(got[i].byName)}`).join('\n'));
    const handle = Object.keys(got[0].byName).find((k) => /^export vhost:device\/device@[\d.]+#handle$/.test(k));
    t.truthy(handle, 'the counting sees the core call of handle');
    const realloc = 'export cabi_realloc';
    const fixed = (got[0].byName[realloc] ?? 0) - 1;
    sizes.forEach((n, i) => {
      const b = got[i].byName;
      t.is(b[handle!], 1, `${n} request(s): one core call of handle`);
      // By any name: wasm-opt (which clang runs on the plugin) merges identical post-return
      // functions, and the component's lift of handle then names another export's (activate's).
      const posts = Object.entries(b).filter(([k]) => k.startsWith('export cabi_post_')).reduce((sum, [, v]) => sum + v, 0);
      t.is(posts, 1, `${n} request(s): one post-return`);
      t.is(b[realloc], n + fixed, `${n} request(s): one cabi_realloc per request's prefix, ${fixed} per batch`);
      t.deepEqual(Object.keys(b).sort(), Object.keys(got[0].byName).sort(), `${n} request(s): nothing else crosses`);
      t.is(got[i].total, got[0].total + n - 1);
    });
    t.false(Object.keys(got[2].byName).some((k) => k.startsWith('import ')), 'blk calls no import while it answers');
  });
}
