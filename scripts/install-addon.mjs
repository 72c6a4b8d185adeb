// The installed package's `install` script: makes sure the native addon (host/native, an
// N-API module: vhost-user needs SCM_RIGHTS, eventfd, memfd and mmap, which Node lacks) loads
// on this machine. The package ships one prebuilt for linux-x64 (glibc, built by `npm pack`,
// scripts/prepack.mjs); N-API keeps it valid across Node versions, so most installs only
// check that it loads. Elsewhere (arm64, musl) it is compiled here with node-gyp, and when the
// tools for that are missing the install stops with what to install, rather than leaving a
// `vhost-wasm` that fails on its first device.
//
// In a source checkout this does nothing: `node build.mjs` builds the addon there.
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const nativeDir = join(root, 'host', 'native');
const require = createRequire(import.meta.url);

if (existsSync(join(root, 'build.mjs'))) process.exit(0);

function fail(lines) {
  console.error(['', 'vhost-wasm: the native addon cannot be installed.', ...lines.map((l) => `  ${l}`), ''].join('\n'));
  process.exit(1);
}

if (process.platform !== 'linux') {
  fail([`vhost-wasm runs on Linux only (vhost-user needs eventfd, memfd_create and SCM_RIGHTS); this is ${process.platform}.`]);
}

/** Loads the addon node-gyp-build picks; the error when it cannot. */
function tryLoad() {
  try {
    const path = require('node-gyp-build').path(nativeDir);
    require(path);
    return { path };
  } catch (e) {
    return { error: e instanceof Error ? e.message.split('\n')[0] : String(e) };
  }
}

const first = tryLoad();
if (first.path) {
  console.log(`vhost-wasm: native addon ${first.path.slice(root.length + 1)} loads`);
  process.exit(0);
}

// No prebuilt one for this platform (or it does not load): compile it.
const missing = [];
const has = (cmd, args = ['--version']) => spawnSync(cmd, args, { stdio: 'ignore' }).status === 0;
if (!has('make')) missing.push('make');
if (!has('cc')) missing.push('a C compiler (cc)');
if (!has('python3')) missing.push('python3 (node-gyp runs on it)');
if (missing.length) {
  fail([
    `There is no prebuilt addon for ${process.platform}-${process.arch} (${first.error}),`,
    `and building one needs ${missing.join(', ')}, which ${missing.length === 1 ? 'is' : 'are'} missing.`,
    'On Debian or Ubuntu: apt-get install build-essential python3; then install vhost-wasm again.',
  ]);
}
// npm tells its lifecycle scripts where its own node-gyp is.
const nodeGyp = process.env.npm_config_node_gyp ?? (() => { try { return require.resolve('node-gyp/bin/node-gyp.js'); } catch { return null; } })();
if (!nodeGyp) fail(['node-gyp was not found (npm normally provides it to install scripts): run the install with npm.']);
try {
  execFileSync(process.execPath, [nodeGyp, 'rebuild', '--loglevel=warn'], { cwd: nativeDir, stdio: 'inherit' });
} catch {
  fail([
    `Compiling the addon with node-gyp failed (output above). It needs Node's headers: node-gyp downloads them,`,
    `or takes them from --nodedir (npm config set nodedir /usr when /usr/include/node has them, as with Debian's nodejs).`,
  ]);
}
const built = tryLoad();
if (!built.path) fail([`The addon was compiled but does not load: ${built.error}`]);
console.log(`vhost-wasm: native addon compiled: ${built.path.slice(root.length + 1)}`);
