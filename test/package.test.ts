// The npm package as a user gets it (issue 13, "Packaging"): packed from this tree, installed
// with `npm install -g` into a temporary prefix, and then used the three ways it offers: the
// `vhost-wasm` command (--print-capabilities, and a device a real front-end reads from), the
// embedding entry `vhost-wasm` with the front-end driver `vhost-wasm/frontend` (run, and type
// checked by a consumer's tsc), and the install script's message when it has to compile the
// addon and cannot. The addon comes prebuilt for linux-x64 (host/native/prebuilds, node-gyp-build).
//
// Packed with --ignore-scripts after running scripts/prepack.mjs itself: the "prepack" script
// also runs `node build.mjs`, whose node-gyp rebuild would pull the addon from under test files
// running beside this one (`npm test` has built everything already).
import test from 'ava';
import { execFile, spawn } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { VhostUserFrontend } from '../host/frontend/driver.ts';
import { assertBuilt, REPO } from './helpers/host-process.ts';

const run = promisify(execFile);
let dir: string;
let tarball: string;
let pkgDir: string;
let bin: string;
const env = () => ({ ...process.env, XDG_CACHE_HOME: join(dir, 'cache'), npm_config_update_notifier: 'false' });

test.before(async () => {
  assertBuilt();
  dir = mkdtempSync(join(tmpdir(), 'vhost-wasm-package-'));
  await run(process.execPath, [join(REPO, 'scripts', 'prepack.mjs')], { cwd: REPO });
  const { stdout } = await run('npm', ['pack', '--ignore-scripts', '--pack-destination', dir], { cwd: REPO, env: env() });
  tarball = join(dir, stdout.trim().split('\n').pop()!);
  const prefix = join(dir, 'prefix');
  await run('npm', ['install', '-g', '--prefix', prefix, tarball, '--prefer-offline', '--no-audit', '--no-fund'], { cwd: dir, env: env(), maxBuffer: 16 << 20 });
  pkgDir = join(prefix, 'lib', 'node_modules', 'vhost-wasm');
  bin = join(prefix, 'bin', 'vhost-wasm');
});

test.after.always(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test('the tarball holds what users run and none of the development tree', async (t) => {
  const { stdout } = await run('tar', ['tzf', tarball]);
  const files = stdout.trim().split('\n').map((f) => f.replace(/^package\//, ''));
  for (const f of [
    'dist/vhost-wasm.mjs',
    'dist/device-worker.mjs',
    'dist/index.mjs',
    'dist/frontend.mjs',
    'dist/types/index.d.ts',
    'dist/types/frontend/index.d.ts',
    'dist/plugins/blk.wasm',
    'dist/plugins/rng.wasm',
    'dist/plugins/fs.wasm',
    'host/native/prebuilds/linux-x64/vhost_native.napi.glibc.node',
    'host/native/binding.gyp',
    'scripts/install-addon.mjs',
    'wit/device.wit',
  ]) {
    t.true(files.includes(f), `${f} is shipped`);
  }
  const stray = files.filter((f) => /^(test|bench|docs|plugins)\//.test(f) || (f.endsWith('.ts') && !f.endsWith('.d.ts')) || f.endsWith('.map') || f === 'dist/vhost_native.node' || f.includes('/build/'));
  t.deepEqual(stray, [], 'no tests, benchmarks, sources, source maps or build output');
});

test('the installed vhost-wasm prints a plugin\'s capabilities and serves it to a front-end', async (t) => {
  const rng = join(pkgDir, 'dist', 'plugins', 'rng.wasm');
  // An empty transpile cache: the installed package transpiles with its own jco-transpile.
  const caps = await run(bin, ['--print-capabilities', '--plugin', rng], { env: env() });
  t.deepEqual(JSON.parse(caps.stdout), { type: 'rng', features: [] });

  const sock = join(dir, 'rng.sock');
  const child = spawn(bin, ['--socket-path', sock, '--plugin', rng, '--entropy'], { env: env(), stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  child.stderr.setEncoding('utf8').on('data', (d: string) => (log += d));
  t.teardown(() => child.kill('SIGKILL'));
  for (let i = 0; !existsSync(sock); i++) {
    if (child.exitCode !== null || i > 600) t.fail(`the installed host never made its socket; its log:\n${log}`);
    await sleep(50);
  }
  const fe = await VhostUserFrontend.connect(sock, { memoryBytes: 1 << 20, queues: [64] });
  const r = await fe.queues[0].submit([], 64);
  await fe.close();
  t.is(r.len, 64);
  t.true(r.data.some((b) => b !== 0), 'random bytes, not zeros');
});

test('the package\'s entry points: a program embeds the host and drives it with the front-end driver, and tsc checks it against the shipped types', async (t) => {
  const app = join(dir, 'app');
  mkdirSync(join(app, 'node_modules'), { recursive: true });
  symlinkSync(pkgDir, join(app, 'node_modules', 'vhost-wasm'));
  writeFileSync(join(app, 'package.json'), JSON.stringify({ type: 'module' }));
  const source = `
import { Host, type DeviceConfig } from 'vhost-wasm';
import { VhostUserFrontend } from 'vhost-wasm/frontend';
const [plugin, sock] = process.argv.slice(2);
const config: DeviceConfig = { label: 'embedded', listen: { path: sock }, source: { kind: 'plugin', path: plugin, options: { entropy: true } } };
const host = await Host.start([config]);
const fe = await VhostUserFrontend.connect(sock, { memoryBytes: 1 << 20, queues: [64] });
const done = await fe.queues[0].submit([], 32);
await fe.close();
await host.close();
console.log(JSON.stringify({ len: done.len }));
`;
  writeFileSync(join(app, 'app.ts'), source);
  // The same program as plain JavaScript (types stripped by hand: two annotations).
  writeFileSync(join(app, 'app.mjs'), source.replace("import { Host, type DeviceConfig } from 'vhost-wasm';", "import { Host } from 'vhost-wasm';").replace('const config: DeviceConfig =', 'const config ='));
  const out = await run(process.execPath, [join(app, 'app.mjs'), join(pkgDir, 'dist', 'plugins', 'rng.wasm'), join(dir, 'embedded.sock')], { cwd: app, env: env() });
  t.deepEqual(JSON.parse(out.stdout.trim().split('\n').pop()!), { len: 32 });

  writeFileSync(
    join(app, 'tsconfig.json'),
    JSON.stringify({ compilerOptions: { module: 'NodeNext', moduleResolution: 'NodeNext', target: 'ES2022', strict: true, noEmit: true, skipLibCheck: false, typeRoots: [join(REPO, 'node_modules', '@types')], types: ['node'] }, files: ['app.ts'] }),
  );
  const tsc = join(REPO, 'node_modules', 'typescript', 'bin', 'tsc');
  await t.notThrowsAsync(run(process.execPath, [tsc, '-p', app], { cwd: app }), 'the consumer type checks against dist/types');
  // And the types are real: a wrong field is an error.
  writeFileSync(join(app, 'app.ts'), source.replace("label: 'embedded'", 'label: 7'));
  const bad = await run(process.execPath, [tsc, '-p', app], { cwd: app }).then(
    () => '',
    (e: { stdout: string }) => e.stdout,
  );
  t.regex(bad, /app\.ts.*error TS2322: Type 'number' is not assignable to type 'string'/);
});

test('without a prebuilt addon and without build tools, the install script stops and says what to install', async (t) => {
  // The installed package as it would be on a platform with no prebuilt addon.
  const copy = join(dir, 'no-prebuild');
  cpSync(pkgDir, copy, { recursive: true, dereference: true });
  rmSync(join(copy, 'host', 'native', 'prebuilds'), { recursive: true });
  const r = await run(process.execPath, [join(copy, 'scripts', 'install-addon.mjs')], { cwd: copy, env: { ...env(), PATH: join(dir, 'empty-path') } }).then(
    () => null,
    (e: { code: number; stderr: string }) => e,
  );
  t.truthy(r, 'the install fails');
  t.is(r!.code, 1);
  t.regex(r!.stderr, /There is no prebuilt addon for linux-x64/);
  t.regex(r!.stderr, /needs make, a C compiler \(cc\), python3 \(node-gyp runs on it\), which are missing/);
  t.regex(r!.stderr, /apt-get install build-essential python3/);
  t.false(existsSync(join(copy, 'host', 'native', 'build')), 'nothing half-built is left');
  t.true(readFileSync(join(copy, 'package.json'), 'utf8').includes('"install": "node scripts/install-addon.mjs"'));
});
