// Density (issue 13): a plugin's core modules are compiled once per process and memory limit
// and shared by every device that runs it; a device built from the shared modules is a
// working device, and a different memory limit (other caps compiled in) gets its own modules.
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { compiledPluginCount, MAX_COMPILED_PLUGINS, sharedModules } from '../host/plugin/compiled-modules.ts';
import { loadPlugin, preparePlugin } from '../host/plugin/index.ts';
import { REPO } from './helpers/host-process.ts';

const rng = join(REPO, 'dist', 'plugins', 'rng.wasm');

test('one compile per plugin and memory limit; devices built from the shared modules work', async (t) => {
  execFileSync(process.execPath, ['build.mjs', '--only', 'plugins'], { cwd: REPO, stdio: 'ignore' });
  const cache = mkdtempSync(join(tmpdir(), 'compiled-modules-'));
  t.teardown(() => rmSync(cache, { recursive: true, force: true }));
  t.is(await sharedModules(rng, 64 << 20, cache), null, 'not transpiled yet: left to the worker');
  await preparePlugin(readFileSync(rng), cache);

  const a = await sharedModules(rng, 64 << 20, cache);
  const b = await sharedModules(rng, 64 << 20, cache);
  t.truthy(a);
  t.is(a, b, 'the second device of the plugin gets the same compiled modules');
  t.true([...a!.values()].every((m) => m instanceof WebAssembly.Module));
  t.not(await sharedModules(rng, 32 << 20, cache), a, 'another memory limit compiles other caps in');

  for (let i = 0; i < 2; i++) {
    const dev = await loadPlugin(readFileSync(rng), { grants: { entropy: true, log() {} }, cacheDir: cache, memoryLimitBytes: 64 << 20, compiled: a! });
    t.is(dev.info.name, 'rng');
    dev.close?.();
  }
  t.is(await sharedModules(join(cache, 'no-such.wasm'), 64 << 20, cache), null);
});

test('the compiled modules kept are bounded: past MAX_COMPILED_PLUGINS builds the least recently used one is dropped and compiled again when asked for', async (t) => {
  execFileSync(process.execPath, ['build.mjs', '--only', 'plugins'], { cwd: REPO, stdio: 'ignore' });
  const cache = mkdtempSync(join(tmpdir(), 'compiled-modules-'));
  t.teardown(() => rmSync(cache, { recursive: true, force: true }));
  await preparePlugin(readFileSync(rng), cache);
  // Each memory limit is a build of its own (other caps compiled in).
  const limit = (i: number) => (64 + i) << 20;
  const first = await sharedModules(rng, limit(0), cache);
  let kept = first;
  for (let i = 1; i <= MAX_COMPILED_PLUGINS + 4; i++) {
    // The first one stays in use (asked for again each time): it is never the least recent.
    kept = await sharedModules(rng, limit(0), cache);
    await sharedModules(rng, limit(i), cache);
    t.true(compiledPluginCount() <= MAX_COMPILED_PLUGINS, `${compiledPluginCount()} builds held`);
  }
  t.is(compiledPluginCount(), MAX_COMPILED_PLUGINS);
  t.is(kept, first, 'the build in use was kept');
  const again = await sharedModules(rng, limit(1), cache);
  t.truthy(again, 'a dropped build compiles again');
  const dev = await loadPlugin(readFileSync(rng), { grants: { entropy: true, log() {} }, cacheDir: cache, memoryLimitBytes: limit(1), compiled: again! });
  t.is(dev.info.name, 'rng');
  dev.close?.();
});
