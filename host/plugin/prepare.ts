// Component bytes -> everything needed to instantiate them synchronously: the patched
// glue and its core modules, cached on disk by content hash. Transpiling costs ~250 ms
// the first time in a process (jco's own wasm has to compile); a cache hit costs a few
// file reads, so workers and restarts skip it.
import { createHash } from 'node:crypto';
import { existsSync, lstatSync, mkdirSync, mkdtempSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { PluginError } from './errors.ts';
import { binaryKind } from './wasm-binary.ts';
import { patchGlue } from './glue.ts';
import { checkWorld, parseWorld } from './world-check.ts';
import { defaultCacheDir, readTrustedFile, trustedCacheDir, untrusted, UntrustedCacheError } from './cache-dir.ts';
import { createLogger, errorText } from '../log/logger.ts';

export { defaultCacheDir } from './cache-dir.ts';

/** Bump when what we store or how we patch changes, so old cache entries are ignored. */
const CACHE_FORMAT = 11;
/** The host release whose glue patches wrote an entry (keep in step with package.json). */
export { HOST_VERSION } from '../version.ts';
import { HOST_VERSION } from '../version.ts';

const log = createLogger('plugin cache');

export interface PreparedPlugin {
  /** Content hash of the component (hex sha256). */
  hash: string;
  /** Patched glue, evaluable by glue.ts. */
  glue: string;
  debugHookRemoved: boolean;
  coreModules: Record<string, Uint8Array>;
}

/** What an entry must match before any of it is used: its key, and the hash of every file. */
interface Manifest {
  format: number;
  host: string;
  /** sha256 of the component the entry was made from (also the entry's name). */
  component: string;
  debugHookRemoved: boolean;
  /** sha256 of glue.js. */
  glue: string;
  /** Core module file name -> sha256. */
  coreModules: Record<string, string>;
}

/** A short label for messages before the plugin could tell us its name. */
export function labelFor(hash: string): string {
  return `component ${hash.slice(0, 12)}`;
}

export function componentHash(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

const sha256 = (data: Uint8Array | string): string => createHash('sha256').update(data).digest('hex');

function entryDir(cacheDir: string, hash: string): string {
  return join(cacheDir, `${hash}-v${CACHE_FORMAT}-${HOST_VERSION}`);
}

const CORE_NAME = /^[\w.-]{1,64}\.wasm$/;

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

// Said once per folder and thread: a device worker that loads from a bad folder says so once.
const refusedDirs = new Set<string>();

/** The cache folder, checked; null (and a log line) when it cannot be trusted. */
function usableCacheDir(cacheDir: string): string | null {
  try {
    return trustedCacheDir(cacheDir);
  } catch (e) {
    if (!(e instanceof UntrustedCacheError)) throw e;
    if (!refusedDirs.has(cacheDir)) {
      refusedDirs.add(cacheDir);
      log.warn(`${e.message}; plugins are transpiled in memory on every load instead`);
    }
    return null;
  }
}

function checkManifest(raw: unknown, hash: string): Manifest {
  const m = raw as Manifest;
  if (m?.format !== CACHE_FORMAT || m.host !== HOST_VERSION) throw new Error(`written by another host version (${m?.host} format ${m?.format})`);
  if (m.component !== hash) throw new Error(`made from component ${String(m.component).slice(0, 12)}, not ${hash.slice(0, 12)}`);
  if (typeof m.glue !== 'string' || typeof m.coreModules !== 'object' || m.coreModules === null) throw new Error('malformed manifest');
  for (const name of Object.keys(m.coreModules)) if (!CORE_NAME.test(name)) throw new Error(`bad core module name ${JSON.stringify(name)}`);
  return m;
}

/** The entry's contents, each file's hash checked against the manifest; throws saying what did not match. */
function readEntry(dir: string, hash: string): PreparedPlugin {
  const why = untrusted(lstatSync(dir), dir);
  if (why) throw new Error(why);
  const manifest = checkManifest(JSON.parse(readTrustedFile(join(dir, 'manifest.json')).toString('utf8')), hash);
  const glue = readTrustedFile(join(dir, 'glue.js'));
  if (sha256(glue) !== manifest.glue) throw new Error('glue.js does not match the hash in its manifest');
  const coreModules: Record<string, Uint8Array> = {};
  for (const [name, digest] of Object.entries(manifest.coreModules)) {
    const data = readTrustedFile(join(dir, 'core', name));
    if (sha256(data) !== digest) throw new Error(`core module ${name} does not match the hash in its manifest`);
    coreModules[name] = data;
  }
  return { hash, glue: glue.toString('utf8'), debugHookRemoved: manifest.debugHookRemoved === true, coreModules };
}

/** The cached preparation, or null when this component was never prepared here (or its entry failed its checks). */
export function readPrepared(bytes: Uint8Array, cacheDir = defaultCacheDir()): PreparedPlugin | null {
  const root = usableCacheDir(cacheDir);
  if (!root) return null;
  const hash = componentHash(bytes);
  const dir = entryDir(root, hash);
  if (!existsSync(dir)) return null;
  try {
    return readEntry(dir, hash);
  } catch (e) {
    log.warn(`entry ${dir} failed verification (${errorText(e)}): removed, the plugin is transpiled again`);
    rmSync(dir, { recursive: true, force: true });
    return null;
  }
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

  const root = usableCacheDir(cacheDir);
  if (root) writeEntry(root, hash, source, debugHookRemoved, coreModules);
  return { hash, glue: source, debugHookRemoved, coreModules };
}

/** Write beside the final place (a fresh 0700 folder) and rename: readers see a complete entry or none. */
function writeEntry(root: string, hash: string, glue: string, debugHookRemoved: boolean, coreModules: Record<string, Uint8Array>): void {
  const tmp = mkdtempSync(join(root, `${hash.slice(0, 16)}.tmp-`));
  try {
    const write = (path: string, data: Uint8Array | string): void => writeFileSync(path, data, { mode: 0o600, flag: 'wx' });
    const manifest: Manifest = { format: CACHE_FORMAT, host: HOST_VERSION, component: hash, debugHookRemoved, glue: sha256(glue), coreModules: {} };
    mkdirSync(join(tmp, 'core'), { mode: 0o700 });
    for (const [name, data] of Object.entries(coreModules)) {
      if (!CORE_NAME.test(name)) throw new Error(`jco named a core module ${JSON.stringify(name)}`);
      write(join(tmp, 'core', name), data);
      manifest.coreModules[name] = sha256(data);
    }
    write(join(tmp, 'glue.js'), glue);
    write(join(tmp, 'manifest.json'), JSON.stringify(manifest));
    renameSync(tmp, entryDir(root, hash));
  } catch (e) {
    rmSync(tmp, { recursive: true, force: true });
    // Another process won the race: its entry is as good as ours. Anything else (a full
    // disk) is worth a line; this load goes on with what it has in memory either way.
    const code = (e as NodeJS.ErrnoException).code;
    if (code !== 'ENOTEMPTY' && code !== 'EEXIST') log.warn(`could not write entry for ${labelFor(hash)}: ${errorText(e)}`);
  }
}
