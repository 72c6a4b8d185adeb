// Builds every C plugin under plugins/ (each folder but sdk/) into a WebAssembly
// component at OUT/NAME.wasm: clang-16 -> core module -> embed wit/device.wit -> component.
//
// The WIT embedding and component wrapping use the wasm-tools that ships inside
// @bytecodealliance/jco-transpile, in this process (the same code as `jco embed` and
// `jco new`, minus a node start per step and minus preview2-shim's filesystem, which
// needs preopens to read --wit paths). With only malloc/memcpy from wasi-libc the core
// module imports nothing from WASI, so no adapter is involved.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, readdirSync, renameSync, statSync, unlinkSync, writeFileSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const CLANG = process.env.VHOST_WASM_CLANG || 'clang-16';
const SYSROOT = '/usr';
const LIBC = join(SYSROOT, 'lib', 'wasm32-wasi', 'libc.a');
export const WORLD = 'virtio-device';

// -nodefaultlibs + -lc: clang would otherwise link libclang_rt.builtins-wasm32.a, which
// Debian ships in a separate package (libclang-rt-16-dev-wasm32); nothing here needs it.
const CFLAGS = [
  '--target=wasm32-wasi',
  `--sysroot=${SYSROOT}`,
  '-O2',
  '-mexec-model=reactor',
  '-nodefaultlibs',
  '-std=c11',
  '-Wall',
  '-Wextra',
  '-Werror',
  '-Wl,--strip-all',
];

const here = dirname(fileURLToPath(import.meta.url));

function runs(cmd) {
  try {
    execFileSync(cmd, ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

function checkToolchain() {
  // clang-16 links wasm through lld-16's wasm-ld; without it clang fails late and vaguely.
  const ok = existsSync(LIBC) && runs(CLANG) && runs(process.env.VHOST_WASM_LD || 'wasm-ld-16');
  if (!ok) {
    throw new Error(
      `building plugins needs ${CLANG} with the wasm32 linker and wasi-libc (${LIBC}): ` +
        'apt-get install clang-16 lld-16 wasi-libc',
    );
  }
}

/**
 * clang's wasm driver runs `wasm-opt` on the linked module when it finds one in PATH (at -O1
 * and above), so the same sources gave two different plugins: `npm test` (PATH has
 * node_modules/.bin, where jco-transpile's binaryen puts wasm-opt) merged identical functions and
 * made blk 29,490 bytes; `node build.mjs` (no wasm-opt in PATH) made 33,020. Every build now gets
 * the project's own wasm-opt first in PATH, and its version is part of the inputs.
 */
function clangEnv(root) {
  const bin = join(root, 'node_modules', '.bin');
  return { ...process.env, PATH: `${bin}:${process.env.PATH ?? ''}` };
}

const wasmOptVersions = new Map();
function wasmOptVersion(root) {
  if (!wasmOptVersions.has(root)) {
    let v = 'none';
    try {
      v = execFileSync('wasm-opt', ['--version'], { env: clangEnv(root), encoding: 'utf8' }).trim();
    } catch {
      // None in PATH: clang links without it, and the stamp says so.
    }
    wasmOptVersions.set(root, v);
  }
  return wasmOptVersions.get(root);
}

function inputsHash(parts) {
  const h = createHash('sha256');
  for (const [name, data] of parts) h.update(`${name}\0${data.length}\0`).update(data);
  return h.digest('hex');
}

function cFiles(dir) {
  return readdirSync(dir)
    .filter((f) => f.endsWith('.c'))
    .sort()
    .map((f) => join(dir, f));
}

/** Byte-for-byte replacement, so a reader never sees a half-written plugin. */
function writeAtomic(file, data) {
  const tmp = `${file}.tmp-${process.pid}`;
  writeFileSync(tmp, data);
  renameSync(tmp, file);
}

/**
 * Every .c and .h of the C SDK. A plugin is linked with all of the SDK's .c files and -I to
 * its folder, rather than each plugin naming (or symlinking) the parts it uses: wasm-ld drops
 * every function nothing reaches (--gc-sections is its default), and an import nothing calls
 * is never emitted, so rng and blk come out the same as without vhost_fs.c.
 */
function sdkFiles(sdkDir) {
  const all = readdirSync(sdkDir).sort();
  return {
    sources: all.filter((f) => f.endsWith('.c')).map((f) => join(sdkDir, f)),
    headers: all.filter((f) => f.endsWith('.h')).map((f) => join(sdkDir, f)),
  };
}

/**
 * Build one plugin. Skips the work when the sources, flags and WIT are unchanged since
 * the last build of outFile. Returns { outFile, built } (built false = up to date).
 *
 * options: sources (C files; every SDK .c is added unless sdk === false), defines (["X=1"]),
 * witSource (default wit/device.wit), world, coreOnly (write the core module: tests use
 * it as a not-a-component fixture).
 */
export async function buildPlugin({
  root,
  sources,
  outFile,
  defines = [],
  witSource,
  world = WORLD,
  sdk = true,
  coreOnly = false,
}) {
  const sdkDir = join(root, 'plugins', 'sdk', 'c');
  const wit = witSource ?? readFileSync(join(root, 'wit', 'device.wit'), 'utf8');
  const sdkParts = sdk ? sdkFiles(sdkDir) : { sources: [], headers: [] };
  const allSources = [...sources, ...sdkParts.sources];
  const flags = [...CFLAGS, `-I${sdkDir}`, ...defines.map((d) => `-D${d}`)];
  const stampFile = `${outFile}.inputs`;
  const parts = [
    ['flags', Buffer.from(JSON.stringify({ flags, world, coreOnly, clang: CLANG, wasmOpt: wasmOptVersion(root) }))],
    ['wit', Buffer.from(wit)],
    ['build-plugins.mjs', readFileSync(fileURLToPath(import.meta.url))],
    ...allSources.map((f) => [relative(root, f), readFileSync(f)]),
    ...sdkParts.headers.map((f) => [relative(root, f), readFileSync(f)]),
  ];
  for (const f of sources) {
    // Local headers of the plugin count too.
    for (const h of readdirSync(dirname(f)).filter((n) => n.endsWith('.h')).sort()) {
      parts.push([relative(root, join(dirname(f), h)), readFileSync(join(dirname(f), h))]);
    }
  }
  const stamp = inputsHash(parts);
  if (existsSync(outFile) && existsSync(stampFile) && readFileSync(stampFile, 'utf8') === stamp) {
    return { outFile, built: false };
  }

  checkToolchain();
  mkdirSync(dirname(outFile), { recursive: true });
  const coreFile = `${outFile}.core.tmp-${process.pid}`;
  execFileSync(CLANG, [...flags, ...allSources, '-lc', '-o', coreFile], { stdio: ['ignore', 'inherit', 'inherit'], env: clangEnv(root) });
  const core = readFileSync(coreFile);
  unlinkSync(coreFile);

  let out = core;
  if (!coreOnly) {
    const { componentEmbed, componentNew } = await import('@bytecodealliance/jco-transpile/wasm-tools');
    const embedded = await componentEmbed({ binary: core, witSource: wit, world });
    out = await componentNew(embedded, []);
  }
  writeAtomic(outFile, out);
  writeFileSync(stampFile, stamp);
  return { outFile, built: true };
}

/** Every plugins/NAME/ folder except sdk/ -> outDir/NAME.wasm (C, or TypeScript when it has device.ts). */
export async function buildPlugins({ root = dirname(here), outDir }) {
  const pluginsDir = join(root, 'plugins');
  const names = readdirSync(pluginsDir)
    .filter((n) => n !== 'sdk' && statSync(join(pluginsDir, n)).isDirectory())
    .sort();
  const results = [];
  for (const name of names) {
    const sources = cFiles(join(pluginsDir, name));
    // A folder with device.ts and no C is a TypeScript plugin (plugins/sdk/ts/build.mjs).
    const ts = sources.length === 0 && existsSync(join(pluginsDir, name, 'device.ts'));
    if (sources.length === 0 && !ts) continue;
    const started = performance.now();
    const outFile = join(outDir, `${name}.wasm`);
    const r = ts
      ? await (await import('./sdk/ts/build.mjs')).buildTsPlugin({ root, dir: join(pluginsDir, name), outFile })
      : await buildPlugin({ root, sources, outFile });
    const ms = Math.round(performance.now() - started);
    console.log(`plugin ${name}: ${r.built ? `built in ${ms} ms` : 'up to date'} -> ${relative(root, r.outFile)}`);
    results.push(r);
  }
  return results;
}
