// docs/interop/ has a vhost-user.json discovery descriptor for every device type the example
// plugins implement, and each one's type is what the binary reports for that plugin with
// --print-capabilities (what libvirt matches the descriptor against). Against the built binary.
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { hostCommand, REPO } from './helpers/host-process.ts';

const interop = join(REPO, 'docs', 'interop');
/** The wrapper each descriptor's binary stands for: the plugin, and the grants it always needs. */
const WRAPPERS: Record<string, { plugin: string; args: string[] }> = {
  '50-vhost-wasm-blk.json': { plugin: 'blk.wasm', args: [] },
  '50-vhost-wasm-fs.json': { plugin: 'fs.wasm', args: [] },
  '50-vhost-wasm-rng.json': { plugin: 'rng.wasm', args: ['--entropy'] },
  '50-vhost-wasm-net.json': { plugin: 'net.wasm', args: [] },
};
/** Example plugins without a descriptor of their own, and why. */
const WITHOUT_DESCRIPTOR: Record<string, string> = {
  'rng-ts.wasm': 'the TypeScript SDK\'s rng: the same device type as rng.wasm, whose descriptor covers it',
  'console-ts.wasm': 'virtio-console: vhost-user.json has no console type and QEMU no vhost-user console front-end',
};

test.before(() => {
  execFileSync(process.execPath, ['build.mjs', '--only', 'plugins'], { cwd: REPO, stdio: 'ignore' });
});

test('every example plugin has a descriptor, and nothing else does', (t) => {
  const plugins = readdirSync(join(REPO, 'dist', 'plugins')).filter((f) => f.endsWith('.wasm')).sort();
  t.deepEqual([...Object.values(WRAPPERS).map((w) => w.plugin), ...Object.keys(WITHOUT_DESCRIPTOR)].sort(), plugins);
  t.deepEqual(readdirSync(interop).filter((f) => f.endsWith('.json')).sort(), Object.keys(WRAPPERS).sort());
});

for (const [file, w] of Object.entries(WRAPPERS)) {
  test(`${file}: its type is what --print-capabilities reports for ${w.plugin}`, (t) => {
    const d = JSON.parse(readFileSync(join(interop, file), 'utf8')) as { binary: unknown; description: unknown; type: string };
    t.deepEqual(Object.keys(d).sort(), ['binary', 'description', 'type']);
    t.true(typeof d.binary === 'string' && d.binary.startsWith('/'));
    t.true(typeof d.description === 'string' && d.description.length > 0);
    const [node, argv] = hostCommand(['--print-capabilities', '--plugin', join(REPO, 'dist', 'plugins', w.plugin), ...w.args]);
    const caps = JSON.parse(execFileSync(node, argv, { cwd: REPO, encoding: 'utf8' })) as { type: string };
    t.is(caps.type, d.type);
  });
}
