// --plugin-option KEY=VALUE and the daemon config's "options": what reaches a plugin's
// options.get, and the mistakes refused where they are made (not inside the plugin).
import test from 'ava';
import { parseCli, UsageError } from '../host/cli/args.ts';
import { parseDeviceSpec, ConfigError } from '../host/daemon/config.ts';

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
    message: 'devices[0].options: plugin option mac: the value must be a string, not 5',
  });
  t.throws(() => parseDeviceSpec({ id: 'n0', socket: '/tmp/n0.sock', plugin: '/x/net.wasm', options: ['mac=1'] }, 'devices[0]', 'absolute-only'), {
    instanceOf: ConfigError,
    message: 'devices[0].options: plugin options must be an object of strings ({"mac": "52:54:00:00:00:01"})',
  });
});
