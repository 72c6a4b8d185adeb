// Component bytes -> everything needed to instantiate them synchronously: the patched
// glue and its core modules, cached on disk by content hash. Transpiling costs ~250 ms
// the first time in a process (jco's own wasm has to compile); a cache hit costs a few
// file reads, so workers and restarts skip it.
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, renameSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PluginError } from './errors.ts';
import { binaryKind } from './wasm-binary.ts';
import { patchGlue } from './glue.ts';
import { checkWorld, parseWorld } from './world-check.ts';

/** Bump when what we store or how we patch changes, so old cache entries are ignored. */
const CACHE_FORMAT = 4;

export interface PreparedPlugin {
  /** Content hash of the component (hex sha256). */
  hash: string;
  /** Patched glue, evaluable by glue.ts. */
  glue: string;
  debugHookRemoved: boolean;
  coreModules: Record<string, Uint8Array>;
}

interface Manifest {
  format: number;
  debugHookRemoved: boolean;
  coreModules: string[];
}

export function defaultCacheDir(): string {
  return join(tmpdir(), 'vhost-wasm-plugin-cache');
}

/** A short label for messages before the plugin could tell us its name. */
export function labelFor(hash: string): string {
  return `component ${hash.slice(0, 12)}`;
}

export function componentHash(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

function entryDir(cacheDir: string, hash: string): string {
  return join(cacheDir, `${hash}-v${CACHE_FORMAT}`);
}

export function validateKind(bytes: Uint8Array, label: string): void {
  const kind = binaryKind(bytes);
  if (kind === 'component') return;
  throw new PluginError(
    label,
    'load',
    'load',
    kind === 'core-module'
      ? 'this is a core wasm module, not a component: run `jco new` on it (plugins/build-plugins.mjs does)'
      : 'not a WebAssembly component (bad magic or version)',
  );
}

/** The cached preparation, or null when this component was never prepared here. */
export function readPrepared(bytes: Uint8Array, cacheDir = defaultCacheDir()): PreparedPlugin | null {
  const hash = componentHash(bytes);
  const dir = entryDir(cacheDir, hash);
  const manifestPath = join(dir, 'manifest.json');
  if (!existsSync(manifestPath)) return null;
  const manifest = JSON.parse(readFileSync(manifestPath, 'utf8')) as Manifest;
  if (manifest.format !== CACHE_FORMAT) return null;
  const coreModules: Record<string, Uint8Array> = {};
  for (const name of manifest.coreModules) coreModules[name] = readFileSync(join(dir, 'core', name));
  return {
    hash,
    glue: readFileSync(join(dir, 'glue.js'), 'utf8'),
    debugHookRemoved: manifest.debugHookRemoved,
    coreModules,
  };
}

type JcoTranspile = typeof import('@bytecodealliance/jco-transpile');
type JcoWasmTools = typeof import('@bytecodealliance/jco-transpile/wasm-tools');

// Specifiers in variables: esbuild leaves such imports alone, so the bundled host loads
// jco-transpile from node_modules, where its own .wasm files sit (bundled, it looks for
// them next to the bundle and fails). Loaded lazily too: a worker that only reads the
// cache never pays for jco's compiler.
const JCO = '@bytecodealliance/jco-transpile';
const JCO_WASM_TOOLS = '@bytecodealliance/jco-transpile/wasm-tools';

async function loadJco(): Promise<{
  transpileBytes: JcoTranspile['transpileBytes'];
  componentWit: JcoWasmTools['componentWit'];
}> {
  const [{ transpileBytes }, { componentWit }] = await Promise.all([
    import(JCO) as Promise<JcoTranspile>,
    import(JCO_WASM_TOOLS) as Promise<JcoWasmTools>,
  ]);
  return { transpileBytes, componentWit };
}

async function transpile(bytes: Uint8Array, label: string): Promise<{ files: Record<string, Uint8Array> }> {
  const { transpileBytes, componentWit } = await loadJco();
  let wit: string;
  try {
    wit = await componentWit(bytes);
  } catch (e) {
    throw new PluginError(label, 'load', 'load', `not a valid component: ${String(e)}`, { cause: e });
  }
  const problems = checkWorld(parseWorld(wit));
  if (problems.length) throw new PluginError(label, 'load', 'load', problems.join('; '));
  try {
    return await transpileBytes(bytes, {
      name: 'plugin',
      instantiation: 'sync',
      wasiShim: false,
      emitTypescriptDeclarations: false,
    });
  } catch (e) {
    throw new PluginError(label, 'load', 'load', `jco could not transpile it: ${String(e)}`, { cause: e });
  }
}

/** Transpile (or find in the cache) a component; validates its kind and world. */
export async function preparePlugin(bytes: Uint8Array, cacheDir = defaultCacheDir()): Promise<PreparedPlugin> {
  const hash = componentHash(bytes);
  const label = labelFor(hash);
  validateKind(bytes, label);
  const cached = readPrepared(bytes, cacheDir);
  if (cached) return cached;

  const { files } = await transpile(bytes, label);
  const js = Object.entries(files).find(([name]) => name.endsWith('.js'));
  if (!js) throw new PluginError(label, 'load', 'load', 'jco produced no glue');
  const { source, debugHookRemoved } = patchGlue(Buffer.from(js[1]).toString('utf8'));
  const coreModules: Record<string, Uint8Array> = {};
  for (const [name, data] of Object.entries(files)) if (name.endsWith('.wasm')) coreModules[name] = data;

  // Write beside the final place and rename: concurrent workers either see a complete
  // entry or none.
  const dir = entryDir(cacheDir, hash);
  const tmp = `${dir}.tmp-${process.pid}-${Math.random().toString(36).slice(2)}`;
  mkdirSync(join(tmp, 'core'), { recursive: true });
  for (const [name, data] of Object.entries(coreModules)) writeFileSync(join(tmp, 'core', name), data);
  writeFileSync(join(tmp, 'glue.js'), source);
  const manifest: Manifest = { format: CACHE_FORMAT, debugHookRemoved, coreModules: Object.keys(coreModules) };
  writeFileSync(join(tmp, 'manifest.json'), JSON.stringify(manifest));
  try {
    renameSync(tmp, dir);
  } catch {
    rmSync(tmp, { recursive: true, force: true }); // another process won the race
  }
  return { hash, glue: source, debugHookRemoved, coreModules };
}
