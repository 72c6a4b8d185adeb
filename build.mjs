// Builds everything a fresh clone needs to run: the native addon (node-gyp, offline against
// the system's Node headers), the bundled host (esbuild) and the example plugins.
// Usage: node build.mjs [--only addon|host|plugins|loadgen]...
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as esbuild from 'esbuild';
import { installFile, writeFileReplacing } from './scripts/lib/replace-file.mjs';

const root = dirname(fileURLToPath(import.meta.url));
const dist = join(root, 'dist');
const args = process.argv.slice(2);
const only = new Set(args.flatMap((a, i) => (a === '--only' ? [args[i + 1]] : [])));
const want = (step) => only.size === 0 || only.has(step);

mkdirSync(dist, { recursive: true });

if (want('addon')) {
  const nodeGyp = join(root, 'node_modules', 'node-gyp', 'bin', 'node-gyp.js');
  // --nodedir=/usr: build against the installed headers; node-gyp would otherwise try to
  // download them, and these machines have no network beyond the package registries.
  const nodedir = process.env.npm_config_nodedir || '/usr';
  execFileSync(process.execPath, [nodeGyp, 'rebuild', `--nodedir=${nodedir}`, '--loglevel=warn'], {
    cwd: join(root, 'host', 'native'),
    stdio: 'inherit',
  });
  // By rename, never over the old file: a host running from dist/ has it mapped (replace-file.mjs).
  installFile(join(root, 'host', 'native', 'build', 'Release', 'vhost_native.node'), join(dist, 'vhost_native.node'));
}

if (want('host')) {
  const entries = [
    { in: 'host/cli/main.ts', out: 'vhost-wasm' },
    { in: 'host/device/worker.ts', out: 'device-worker' },
    // The package's library entry points (package.json "exports"): embedding the host, and the front-end driver.
    { in: 'host/index.ts', out: 'index' },
    { in: 'host/frontend/index.ts', out: 'frontend' },
  ].filter((e) => existsSync(join(root, e.in)));
  const { outputFiles } = await esbuild.build({
    entryPoints: entries.map((e) => ({ in: join(root, e.in), out: e.out })),
    outdir: dist,
    outExtension: { '.js': '.mjs' },
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    sourcemap: 'linked',
    // The addon is loaded at run time from next to the bundle, or by node-gyp-build from the
    // installed package's host/native (host/native/index.ts).
    external: ['*.node', 'node-gyp-build'],
    banner: { js: "import { createRequire as __cr } from 'node:module'; const require = __cr(import.meta.url);" },
    logLevel: 'warning',
    // Written below by rename: a host starting a device worker reads dist/device-worker.mjs,
    // and must never read half of it.
    write: false,
  });
  // A bundle that starts with #! is the binary (package.json bin): executable, as esbuild makes it.
  for (const f of outputFiles) writeFileReplacing(f.path, f.contents, f.contents[0] === 0x23 && f.contents[1] === 0x21 ? 0o755 : 0o644);
}

if (want('plugins') && existsSync(join(root, 'plugins', 'build-plugins.mjs'))) {
  const { buildPlugins } = await import('./plugins/build-plugins.mjs');
  await buildPlugins({ root, outDir: join(dist, 'plugins') });
}

if (want('loadgen')) {
  // The C vhost-user-blk load generator for bench/ (a benchmark client, not part of the host).
  execFileSync('sh', [join(root, 'bench', 'loadgen', 'build.sh')], { stdio: 'inherit' });
}
