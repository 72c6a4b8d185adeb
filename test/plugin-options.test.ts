// --plugin-option KEY=VALUE and the daemon config's "options": what reaches a plugin's
// options.get, and the mistakes refused where they are made (not inside the plugin).
import test from 'ava';
import { parseCli, UsageError } from '../host/cli/args.ts';
import { parseDeviceSpec, ConfigError } from '../host/daemon/config.ts';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ctl, startDaemon } from './helpers/daemon-process.ts';
import { REPO } from './helpers/host-process.ts';

const base = ['--socket-path', '/tmp/x.sock', '--plugin', 'net.wasm'];

test('repeated --plugin-option flags become the plugin options, values taken as they are', (t) => {
  const o = parseCli([...base, '--plugin-option', 'mac=52:54:00:00:00:01', '--plugin-option', 'policy=allow any any tcp; deny any any', '--plugin-option', 'empty=']);
  t.deepEqual({ ...o.pluginOptions }, { mac: '52:54:00:00:00:01', policy: 'allow any any tcp; deny any any', empty: '' });
  t.deepEqual({ ...parseCli(base).pluginOptions }, {});
});

test('a malformed, duplicated or oversized --plugin-option is a usage error naming it', (t) => {
  const bad: [string[], string][] = [
    [['--plugin-option', 'mac'], '--plugin-option: "mac" is not KEY=VALUE'],
    [['--plugin-option', '=x'], '--plugin-option: "=x" is not KEY=VALUE'],
    [['--plugin-option', 'Mac=x'], '--plugin-option: plugin option key "Mac" must be 1-64 of a-z 0-9 . _ -'],
    [['--plugin-option', 'a=1', '--plugin-option', 'a=2'], '--plugin-option: a given twice'],
    [['--plugin-option', `big=${'x'.repeat(4097)}`], '--plugin-option: plugin option big: the value is longer than 4096 bytes'],
  ];
  for (const [args, message] of bad) t.throws(() => parseCli([...base, ...args]), { instanceOf: UsageError, message });
});

test('the daemon config takes "options" per plugin device and refuses what the flag refuses', (t) => {
  const spec = parseDeviceSpec({ id: 'n0', socket: '/tmp/n0.sock', plugin: '/x/net.wasm', options: { mac: '52:54:00:00:00:02' } }, 'devices[0]', 'absolute-only');
  t.deepEqual({ ...spec.pluginOptions }, { mac: '52:54:00:00:00:02' });
  t.throws(() => parseDeviceSpec({ id: 'n0', socket: '/tmp/n0.sock', plugin: '/x/net.wasm', options: { mac: 5 } }, 'devices[0]', 'absolute-only'), {
    instanceOf: ConfigError,
    message: 'devices[0].options.mac: must be a string, not a number (5)',
  });
  t.throws(() => parseDeviceSpec({ id: 'n0', socket: '/tmp/n0.sock', plugin: '/x/net.wasm', options: ['mac=1'] }, 'devices[0]', 'absolute-only'), {
    instanceOf: ConfigError,
    message: 'devices[0].options: plugin options must be an object of strings ({"mac": "52:54:00:00:00:01"})',
  });
});

// The plugin reads its options when it starts: an eager device is refused at add (one that starts
// on its first connection reports it then, as any start failure: test/daemon-on-connect).
test('ctl add --plugin-option reaches the plugin through the daemon (the net plugin names the bad mac it was given)', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'plugin-options-'));
  const control = join(dir, 'control.sock');
  writeFileSync(join(dir, 'd.json'), JSON.stringify({ control, devices: [] }));
  const daemon = await startDaemon(['--config', join(dir, 'd.json')]);
  try {
    const net = join(REPO, 'dist', 'plugins', 'net.wasm');
    const bad = await ctl(['--control', control, 'add', '--id', 'n1', '--socket', join(dir, 'n1.sock'), '--plugin', net, '--plugin-option', 'mac=zz:00', '--start', 'eager']);
    t.not(bad.code, 0);
    t.regex(bad.stderr + bad.stdout + daemon.log(), /option mac: not a MAC address \(aa:bb:cc:dd:ee:ff\): zz:00/);
    const usage = await ctl(['--control', control, 'add', '--id', 'n2', '--socket', join(dir, 'n2.sock'), '--plugin', net, '--plugin-option', 'nokey']);
    t.is(usage.code, 2);
    t.regex(usage.stderr, /--plugin-option: "nokey" is not KEY=VALUE/);
  } finally {
    await daemon.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});
