// vhost:device versions: a plugin built for 0.2.0 (before the 0.2.1 additions) still loads and
// serves on this host (0.2.2); one built for a version newer than the host is refused at load
// with a message naming both versions and what to do, not with a missing-function link error.
import test from 'ava';
import { join } from 'node:path';
import { VIRTIO_F_VERSION_1 } from '../host/frontend/driver.ts';
import { checkWorld, parseWorld } from '../host/plugin/world-check.ts';
import { buildRngAt } from './fixtures/plugins/wit-versions.ts';
import { REPO, runCli } from './helpers/host-process.ts';
import { serving } from './helpers/serving.ts';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';

const OUT = join(REPO, 'dist', 'test-plugins');

async function worldOf(file: string): Promise<{ imports: string[]; exports: string[] }> {
  const { componentWit } = await import('@bytecodealliance/jco-transpile/wasm-tools');
  return parseWorld(await componentWit(readFileSync(file)));
}

test.serial('rng built for vhost:device@0.2.0 passes the world check and serves a front-end through the host process', async (t) => {
  const plugin = await buildRngAt(REPO, OUT, '0.2.0');
  const world = await worldOf(plugin);
  t.true(world.exports.includes('vhost:device/device@0.2.0'));
  t.true(world.imports.includes('vhost:device/entropy@0.2.0'), world.imports.join(', '));
  t.false(world.imports.some((i) => i.includes('@0.2.1')), 'every name says 0.2.0');
  t.deepEqual(checkWorld(world), []);

  const fe = { memoryBytes: 4 << 20, queues: [64], features: 1n << BigInt(VIRTIO_F_VERSION_1) };
  await serving(['--plugin', plugin, '--entropy'], fe, async (front) => {
    const [a, b] = await Promise.all([front.queues[0].submit([], 32), front.queues[0].submit([], 32)]);
    t.is(a.len, 32);
    t.is(b.len, 32);
    t.notDeepEqual(a.data, b.data, 'random bytes, not a constant');
  });
});

for (const version of ['0.2.9', '0.3.0']) {
  test.serial(`rng built for vhost:device@${version} (newer than the host) is refused naming both versions and what to do`, async (t) => {
    const plugin = await buildRngAt(REPO, OUT, version);
    const escaped = version.replaceAll('.', '\\.');
    const expected = new RegExp(
      `this plugin is built for vhost:device@${escaped}, newer than this host \\(vhost:device@0\\.2\\.0 to @0\\.2\\.2\\): run a newer vhost-wasm, or build the plugin against vhost:device@0\\.2\\.2 \\(docs/plugin-abi\\.md, "Versioning"\\)`,
    );
    t.deepEqual(checkWorld(await worldOf(plugin)).length, 1, 'one reason, not one per import');
    const dir = mkdtempSync(join(tmpdir(), 'wit-versions-'));
    try {
      const r = await runCli(['--socket-path', join(dir, 'dev.sock'), '--plugin', plugin, '--entropy']);
      t.is(r.code, 1, r.stderr);
      t.regex(r.stderr, expected);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
}
