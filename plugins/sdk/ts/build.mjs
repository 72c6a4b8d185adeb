// Builds a TypeScript device into a vhost:device@0.2.2 component:
//   type check (tsc, strict, the plugin's own globals only) -> one ES module (esbuild, the SDK
//   bundled in, the world's imports left as imports) -> componentize-js with every WASI
//   feature disabled -> a check that the component imports nothing but vhost:device/*.
// Rebuilds only when an input changed (a hash of every input is stored beside the output),
// as plugins/build-plugins.mjs does for C: componentize-js takes ~6-15 s per component.
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
export const WORLD = 'virtio-device';
/** The SDK's module name in device code (resolved to this folder by the build). */
export const SDK_SPECIFIER = '@vhost-wasm/sdk';
/** The entry of a plugin folder. */
export const ENTRY = 'device.ts';
/**
 * Every componentize-js feature that pulls in WASI: the host grants no WASI (stdio, clocks,
 * random, filesystem, http). What the engine does without them, and what the SDK puts in
 * their place, is in globals.ts and docs/writing-a-ts-plugin.md.
 */
export const DISABLED_FEATURES = ['stdio', 'random', 'clocks', 'http', 'fetch-event'];
/**
 * The componentize-js package (a name node_modules resolves). node_modules has 0.19.3 as
 * `@bytecodealliance/componentize-js-0-19-3` and 0.22 under its own name. 0.19.3 is the
 * default: measured here its components cost 3-5x less per call (0.22 runs an async task
 * machinery in interpreted JS around every export) and keep ~3x less unreclaimed memory per
 * call (docs/BENCHMARKS.md, "bench/ts-plugin-call"). VHOST_WASM_COMPONENTIZE picks another.
 */
export const COMPONENTIZE = process.env.VHOST_WASM_COMPONENTIZE || '@bytecodealliance/componentize-js-0-19-3';

async function toolVersions() {
  const [{ version: componentize }, { version: esbuild }, ts] = await Promise.all([
    import(COMPONENTIZE),
    import('esbuild'),
    import('typescript'),
  ]);
  return { componentize: `${COMPONENTIZE}@${componentize}`, esbuild, typescript: ts.default.version };
}

function tsFiles(dir) {
  return readdirSync(dir, { recursive: true })
    .map(String)
    .filter((f) => f.endsWith('.ts') && !f.split('/').includes('node_modules'))
    .sort()
    .map((f) => join(dir, f));
}

function sdkFiles() {
  return tsFiles(here).concat([join(here, 'build.mjs')]);
}

function writeAtomic(file, data) {
  const tmp = `${file}.tmp-${process.pid}`;
  writeFileSync(tmp, data);
  renameSync(tmp, file);
}

/**
 * A tsconfig.json for an editor in plugin folder `dir` (the build itself type-checks with
 * typeCheck's settings, which this mirrors), pointing at this SDK by absolute path. Written
 * only when the folder has none.
 */
export function writeEditorConfig(dir) {
  const file = join(dir, 'tsconfig.json');
  if (existsSync(file)) return false;
  const config = {
    compilerOptions: {
      target: 'ES2022',
      module: 'ESNext',
      moduleResolution: 'Bundler',
      strict: true,
      noEmit: true,
      allowImportingTsExtensions: true,
      noFallthroughCasesInSwitch: true,
      types: [],
      lib: ['ES2022'],
      paths: { [SDK_SPECIFIER]: [join(here, 'index.ts')] },
    },
    include: ['**/*.ts'],
    files: [join(here, 'engine.d.ts'), join(here, 'bindings', 'virtio-device.d.ts')],
  };
  writeFileSync(file, `${JSON.stringify(config, null, 2)}\n`);
  return true;
}

/** tsc over the plugin and the SDK; throws with the diagnostics. */
async function typeCheck(sources) {
  const ts = (await import('typescript')).default;
  const options = {
    target: ts.ScriptTarget.ES2022,
    module: ts.ModuleKind.ESNext,
    moduleResolution: ts.ModuleResolutionKind.Bundler,
    strict: true,
    noEmit: true,
    allowImportingTsExtensions: true,
    noFallthroughCasesInSwitch: true,
    types: [],
    lib: ['lib.es2022.d.ts'],
    paths: { [SDK_SPECIFIER]: [join(here, 'index.ts')] },
  };
  const files = [...sources, join(here, 'engine.d.ts'), join(here, 'bindings', 'virtio-device.d.ts')];
  const program = ts.createProgram(files, options);
  const diagnostics = ts.getPreEmitDiagnostics(program);
  if (diagnostics.length) {
    const host = { getCanonicalFileName: (f) => f, getCurrentDirectory: () => process.cwd(), getNewLine: () => '\n' };
    throw new Error(`type check failed:\n${ts.formatDiagnostics(diagnostics, host)}`);
  }
}

/** The device and the SDK as one ES module whose only imports are the world's. */
async function bundle(entry) {
  const esbuild = await import('esbuild');
  const result = await esbuild.build({
    entryPoints: [entry],
    bundle: true,
    write: false,
    format: 'esm',
    platform: 'neutral',
    target: 'es2022',
    alias: { [SDK_SPECIFIER]: join(here, 'index.ts') },
    external: ['vhost:device/*'],
    logLevel: 'silent',
  });
  return result.outputFiles[0].text;
}

/** Import lines of the component's world other than vhost:device/*: must be none. */
async function foreignImports(component) {
  const { componentWit } = await import('@bytecodealliance/jco-transpile/wasm-tools');
  const wit = await componentWit(component);
  const start = wit.search(/^world [\w-]+ \{/m);
  const body = wit.slice(start, wit.indexOf('\n}', start));
  return [...body.matchAll(/^\s*import\s+([^;{]+?)\s*;/gm)].map((m) => m[1]).filter((i) => !i.startsWith('vhost:device/'));
}

/**
 * Build plugin folder `dir` (entry device.ts) into outFile. Skips the work when nothing changed.
 * Returns { outFile, built }.
 */
export async function buildTsPlugin({ root, dir, outFile, witSource }) {
  const entry = join(dir, ENTRY);
  if (!existsSync(entry)) throw new Error(`${dir}: a TypeScript plugin folder needs ${ENTRY} (it exports \`device\`)`);
  const wit = witSource ?? readFileSync(join(root, 'wit', 'device.wit'), 'utf8');
  const sources = tsFiles(dir);
  const parts = [
    ['tools', JSON.stringify({ ...(await toolVersions()), DISABLED_FEATURES })],
    ['wit', wit],
    ...sources.map((f) => [relative(dir, f), readFileSync(f)]),
    ...sdkFiles().map((f) => [`sdk/${relative(here, f)}`, readFileSync(f)]),
  ];
  const h = createHash('sha256');
  for (const [name, data] of parts) h.update(`${name}\0${data.length}\0`).update(data);
  const stamp = h.digest('hex');
  const stampFile = `${outFile}.inputs`;
  if (existsSync(outFile) && existsSync(stampFile) && readFileSync(stampFile, 'utf8') === stamp) return { outFile, built: false };

  await typeCheck(sources);
  const js = await bundle(entry);
  const work = mkdtempSync(join(tmpdir(), 'vhost-wasm-ts-plugin-'));
  let component;
  try {
    const sourcePath = join(work, 'device.js');
    writeFileSync(sourcePath, js);
    const { componentize } = await import(COMPONENTIZE);
    // witWorld (the text) rather than witPath: componentize-js reads a path through WASI,
    // which needs a preopen; the text needs nothing.
    ({ component } = await componentize({ sourcePath, witWorld: wit, worldName: WORLD, disableFeatures: DISABLED_FEATURES }));
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
  const foreign = await foreignImports(component);
  if (foreign.length) throw new Error(`${dir}: the component imports ${foreign.join(', ')}, which the host refuses (only vhost:device/* is granted)`);
  mkdirSync(dirname(outFile), { recursive: true });
  writeAtomic(outFile, component);
  writeFileSync(stampFile, stamp);
  return { outFile, built: true };
}
