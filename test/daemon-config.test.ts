// The daemon's config format as documented: the example in docs/systemd parses, its socket
// names are exactly the FileDescriptorName= of the .socket units the service lists, and the
// defaults and relative paths are those the README promises.
import test from 'ava';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseDaemonConfig, parseDeviceSpec, ConfigError } from '../host/daemon/config.ts';
import { DEFAULT_POLL_MAX_NS } from '../host/device/poll-window.ts';
import { CONFIG_SCHEMA_FILE, configSchemaText } from '../scripts/config-schema.ts';
import { activatedSockets } from '../host/daemon/systemd.ts';
import { REPO } from './helpers/host-process.ts';

const systemd = join(REPO, 'docs', 'systemd');

test('the systemd example config parses, and its socket names are the units\' FileDescriptorName=', (t) => {
  const c = parseDaemonConfig(readFileSync(join(systemd, 'daemon.json'), 'utf8'), join(systemd, 'daemon.json'));
  const wanted = [c.control, ...c.devices.map((d) => d.listen)].map((l) => (l !== null && 'systemd' in l ? l.systemd : null));
  t.false(wanted.includes(null), 'every socket comes from systemd');
  const units = readdirSync(systemd).filter((f) => f.endsWith('.socket'));
  const names = units.map((u) => /^FileDescriptorName=(.+)$/m.exec(readFileSync(join(systemd, u), 'utf8'))?.[1]);
  t.deepEqual([...names].sort(), [...wanted].sort());
  const service = readFileSync(join(systemd, 'vhost-wasm.service'), 'utf8');
  t.deepEqual(/^Sockets=(.+)$/m.exec(service)![1].split(/\s+/).sort(), units.sort());
  t.regex(readFileSync(join(systemd, 'vhost-wasm-control.socket'), 'utf8'), /^SocketMode=0600$/m);
});

test('defaults follow the single-device command line; relative paths are relative to the file', (t) => {
  const c = parseDaemonConfig(
    JSON.stringify({
      devices: [
        { id: 'r', socket: 'r.sock', plugin: 'rng.wasm', grants: { entropy: true } },
        { id: 'b', socket: '/run/b.sock', plugin: '/p/blk.wasm', grants: { storage: 'disk.raw', readOnly: true } },
        { id: 'm', socket: 'm.sock', plugin: 'blk.wasm', grants: { storage: 'memory:1M' } },
      ],
    }),
    '/etc/vhost-wasm/d.json',
  );
  t.deepEqual(c.devices[0].listen, { path: '/etc/vhost-wasm/r.sock' });
  t.deepEqual(c.devices[0].device, { plugin: '/etc/vhost-wasm/rng.wasm' });
  t.deepEqual(c.devices[0].limits, { memoryLimitBytes: 64 << 20, callDeadlineMs: 100, openFiles: null, throttle: null, cpuShare: 0.5 });
  t.deepEqual(c.devices[1].grants.storage, { kind: 'file', path: '/etc/vhost-wasm/disk.raw', readOnly: true });
  t.deepEqual(c.devices[1].limits, { memoryLimitBytes: 256 << 20, callDeadlineMs: 1000, openFiles: null, throttle: null, cpuShare: 0.5 });
  t.deepEqual(c.devices[2].grants.storage, { kind: 'memory', size: 1 << 20, readOnly: false });
  t.deepEqual(c.devices.map((d) => d.queueThreads), [1, 1, 1]);
  t.is(c.control, null);
  t.is(c.metrics, null);
  t.is(c.logFormat, null);
  t.is(c.spareWorkers, 2);
  const bad = (device: object) => () => parseDaemonConfig(JSON.stringify({ devices: [{ id: 'q', socket: 'q.sock', plugin: 'blk.wasm', ...device }] }), '/d.json');
  t.is(parseDaemonConfig(JSON.stringify({ devices: [{ id: 'q', socket: 'q.sock', plugin: 'blk.wasm', queueThreads: 2 }] }), '/d.json').devices[0].queueThreads, 2);
  t.throws(bad({ queueThreads: 0 }), { message: 'devices[0].queueThreads: 0 is out of range (1..64)' });
  t.throws(bad({ queueThreads: 1.5 }), { message: /devices\[0\]\.queueThreads: must be a whole number/ });
  t.is(c.devices[0].pollMaxNs, DEFAULT_POLL_MAX_NS);
  t.is(parseDaemonConfig(JSON.stringify({ devices: [{ id: 'q', socket: 'q.sock', plugin: 'blk.wasm', pollMaxNs: 32768 }] }), '/d.json').devices[0].pollMaxNs, 32768);
  t.throws(bad({ pollMaxNs: 1_000_001 }), { message: 'devices[0].pollMaxNs: 1000001 is out of range (0..1000000)' });
  t.throws(bad({ pollMaxNs: -1 }), { message: 'devices[0].pollMaxNs: -1 is out of range (0..1000000)' });
  t.throws(bad({ pollMaxNs: '32768' }), { message: /devices\[0\]\.pollMaxNs: must be a whole number/ });
  t.throws(bad({ limits: { cpuShare: 0 } }), { message: 'devices[0].limits.cpuShare: 0 is out of range (0.01..64 CPUs)' });
  t.throws(bad({ limits: { cpuShare: '1' } }), { message: /devices\[0\]\.limits\.cpuShare: must be a number of CPUs/ });
  t.is(parseDaemonConfig(JSON.stringify({ devices: [{ id: 'q', socket: 'q.sock', plugin: 'blk.wasm', limits: { cpuShare: 0.25 } }] }), '/d.json').devices[0].limits.cpuShare, 0.25);
  const spare = (v: unknown) => () => parseDaemonConfig(JSON.stringify({ spareWorkers: v, devices: [{ id: 'q', socket: 'q.sock', plugin: 'blk.wasm' }] }), '/d.json');
  t.throws(spare(-1), { message: 'spareWorkers: -1 is out of range (0..16)' });
  t.throws(spare('2'), { message: /spareWorkers: must be a whole number/ });
  t.is(spare(0)().spareWorkers, 0);
  // When workers start: the daemon's default, a device's own.
  t.is(c.start, 'on-connect');
  t.deepEqual(c.devices.map((d) => d.start), [null, null, null]);
  const started = (doc: object) => () => parseDaemonConfig(JSON.stringify({ devices: [{ id: 'q', socket: 'q.sock', plugin: 'blk.wasm' }], ...doc }), '/d.json');
  t.is(started({ start: 'eager' })().start, 'eager');
  t.throws(started({ start: 'lazy' }), { message: 'start: "lazy" is not one of "eager", "on-connect"' });
  t.throws(started({ start: true }), { message: /^start: must be a string/ });
  t.is(bad({ start: 'eager' })().devices[0].start, 'eager');
  t.throws(bad({ start: 'soon' }), { message: 'devices[0].start: "soon" is not one of "eager", "on-connect"' });
});

test('LISTEN_FDS for another process is ignored, and a name systemd did not pass is an error naming the field', (t) => {
  const env: NodeJS.ProcessEnv = { LISTEN_FDS: '2', LISTEN_PID: '1', LISTEN_FDNAMES: 'a:b' };
  const s = activatedSockets(env, 4242);
  t.is(env.LISTEN_FDS, undefined, 'the environment is cleared once read');
  const e = t.throws(() => s.take('a', 'devices[0].systemd'), { instanceOf: ConfigError });
  t.is(e.field, 'devices[0].systemd');
  const mine = activatedSockets({ LISTEN_FDS: '2', LISTEN_PID: '4242', LISTEN_FDNAMES: 'a:b' }, 4242);
  t.is(mine.take('b', 'x'), 4);
  t.is(mine.take('a', 'y'), 3);
  t.throws(() => mine.take('a', 'z'), { message: /already taken/ });
  t.throws(() => activatedSockets({ LISTEN_FDS: '2', LISTEN_PID: '7', LISTEN_FDNAMES: 'a' }, 7), { message: /LISTEN_FDNAMES: names 1 sockets, LISTEN_FDS passes 2/ });
});

test('the README\'s example config parses', (t) => {
  const readme = readFileSync(join(REPO, 'README.md'), 'utf8');
  const section = readme.slice(readme.indexOf('## Operating a daemon'));
  const json = /```json\n([\s\S]*?)```/.exec(section)![1];
  const c = parseDaemonConfig(json, '/etc/vhost-wasm/daemon.json');
  t.deepEqual(c.devices.map((d) => [d.id, d.tenant]), [['rng0', 'acme'], ['blk0', 'acme'], ['fs0', 'globex']]);
  t.deepEqual(c.control, { path: '/run/vhost-wasm/control.sock' });
  t.deepEqual(c.metrics, { host: '127.0.0.1', port: 9464 });
});

test('grants.network: names in grant order, checked like --network', (t) => {
  const parse = (grants: object) => parseDaemonConfig(JSON.stringify({ devices: [{ id: 'n', socket: 'n.sock', plugin: 'net.wasm', grants }] }), '/d.json');
  t.deepEqual(parse({ network: ['seg0', 'tap:tap0'] }).devices[0].grants.network, ['seg0', 'tap:tap0']);
  t.deepEqual(parse({}).devices[0].grants.network, []);
  t.throws(() => parse({ network: 'seg0' }), { message: /devices\[0\]\.grants\.network: must be a list of network names/ });
  t.throws(() => parse({ network: ['seg0', 'seg0'] }), { message: /devices\[0\]\.grants\.network: .*seg0 is given twice/ });
  t.throws(() => parse({ network: ['no/slash'] }), { instanceOf: ConfigError, message: /is not a network name/ });
});

test('a sharedDir device takes the fs options of the command line under their own names, each error naming its field', (t) => {
  const dir = REPO; // any directory that exists
  const parse = (grants: object) => parseDaemonConfig(JSON.stringify({ devices: [{ id: 'f', socket: 'f.sock', plugin: 'fs.wasm', grants: { sharedDir: dir, ...grants } }] }), '/d.json');
  const fs = parse({
    xattr: true,
    inodeFileHandles: 'prefer',
    cache: 'never',
    translateUid: ['map:1000:2000:1'],
    translateGid: ['map:1000:2000:1'],
    xattrmap: ':prefix:all::user.virtiofs.:',
  }).devices[0].grants.filesystem!;
  t.is(fs.inodeFileHandles, 'prefer');
  t.is(fs.cache, 'never');
  t.is(fs.translateUid?.length, 1);
  t.is(fs.translateGid?.length, 1);
  t.is(fs.xattrmap?.length, 1);
  const f = parse({}).devices[0].grants.filesystem!;
  t.is(f.cache, undefined);
  t.throws(() => parse({ cache: 'sometimes' }), { instanceOf: ConfigError, message: /devices\[0\]\.grants\.cache: .*sometimes/ });
  t.throws(() => parse({ inodeFileHandles: 'always' }), { instanceOf: ConfigError, message: /devices\[0\]\.grants\.inodeFileHandles: / });
  t.throws(() => parse({ translateUid: 'map:1000:2000:1' }), { instanceOf: ConfigError, message: /devices\[0\]\.grants\.translateUid: must be a list of rules/ });
  t.throws(() => parse({ translateUid: ['nonsense'] }), { instanceOf: ConfigError, message: /devices\[0\]\.grants\.translateUid: / });
  t.throws(() => parse({ xattrmap: ':prefix:all::user.virtiofs.:' }), { instanceOf: ConfigError, message: /devices\[0\]\.grants\.xattrmap: .*--xattr/ });
  t.like(parse({ posixAcl: true }).devices[0].grants.filesystem, { xattr: true, posixAcl: true }, 'posixAcl implies xattr, as --posix-acl');
  t.throws(() => parse({ posixAcl: true, translateUid: ['map:0:1000:1'] }), { instanceOf: ConfigError, message: /devices\[0\]\.grants\.posixAcl: cannot go with/ });
  t.throws(
    () => parseDaemonConfig(JSON.stringify({ devices: [{ id: 'b', socket: 'b.sock', plugin: 'blk.wasm', grants: { storage: 'memory:1M', cache: 'never' } }] }), '/d.json'),
    { instanceOf: ConfigError, message: /devices\[0\]\.grants\.cache: applies to "sharedDir"/ },
  );
  t.throws(
    () => parseDaemonConfig(JSON.stringify({ devices: [{ id: 'b', socket: 'b.sock', plugin: 'blk.wasm', grants: { storage: 'memory:1M', posixAcl: true } }] }), '/d.json'),
    { instanceOf: ConfigError, message: /devices\[0\]\.grants\.posixAcl: applies to "sharedDir"/ },
  );
});

test('every error names the field as a path and says why, in plain words', (t) => {
  const parse = (doc: unknown) => () => parseDaemonConfig(JSON.stringify(doc), '/d.json');
  const dev = { id: 'q', socket: 'q.sock', plugin: 'blk.wasm' };
  const cases: [unknown, string | RegExp][] = [
    [[], '(document): must be an object, not an array'],
    [{ devices: [dev], spare: 1 }, 'spare: unknown field (allowed here: control, logLevel, logFormat, metrics, spareWorkers, start, devices)'],
    [{}, 'devices: missing: list the devices to serve (it may be [] when "control" is given)'],
    [{ devices: {} }, 'devices: must be an array, not an object'],
    [{ devices: [dev, 'q'] }, 'devices[1]: must be an object, not a string ("q")'],
    [{ devices: [{ socket: 'q.sock', plugin: 'blk.wasm' }] }, 'devices[0].id: missing: every device needs an id (its name in logs and in the management API)'],
    [{ devices: [{ ...dev, grants: { network: ['seg0', 7] } }] }, 'devices[0].grants.network[1]: must be a string, not a number (7)'],
    [{ devices: [{ ...dev, grants: { storage: 'memory:1M', readOnly: 'yes' } }] }, 'devices[0].grants.readOnly: must be true or false, not a string ("yes")'],
    [{ devices: [{ ...dev, grants: { storage: 'memory:lots' } }] }, 'devices[0].grants.storage: "lots" is not a size (examples: 4096, 64M, 1G)'],
    [{ devices: [{ ...dev, limits: { memory: true } }] }, 'devices[0].limits.memory: must be a number of bytes or a size such as "64M", not a boolean (true)'],
    [{ devices: [{ ...dev, limits: { memory: 0 } }] }, `devices[0].limits.memory: 0 is out of range (1..${Number.MAX_SAFE_INTEGER})`],
    [{ devices: [{ ...dev, limits: { iopsBurst: 10 } }] }, 'devices[0].limits.iopsBurst: is a burst of "iops", which is not limited: give "iops" too'],
    [{ devices: [{ ...dev, limits: { bytesPerSecond: '32T' } }] }, `devices[0].limits.bytesPerSecond: ${2 ** 45} is out of range (0..${2 ** 44})`],
    [{ devices: [{ ...dev, tenant: '' }] }, 'devices[0].tenant: is empty'],
    [{ devices: [{ ...dev, socket: 'a\0b' }] }, 'devices[0].socket: contains a NUL byte'],
    [{ control: 5, devices: [] }, 'control: must be a socket path or {"path": ...} or {"systemd": NAME}, not a number (5)'],
    [{ control: { path: 'c.sock', systemd: 'c' }, devices: [] }, 'control: give "path" or "systemd" (one)'],
    [{ control: { path: 7 }, devices: [] }, 'control.path: must be a string, not a number (7)'],
    [{ logLevel: 'loud', devices: [dev] }, 'logLevel: "loud" is not one of error, warn, info, debug'],
    [{ devices: [] }, 'devices: is empty and there is no "control" socket to add devices through: nothing to serve'],
  ];
  for (const [doc, message] of cases) {
    const e = t.throws(parse(doc), { instanceOf: ConfigError, message }, JSON.stringify(doc));
    t.is(e?.code, 'ERR_CONFIG');
    t.is(e?.message, `${e?.field}: ${e?.why}`);
  }
  // device-add's params are checked by the same schema, named from "params".
  t.throws(() => parseDeviceSpec({ ...dev, socket: '/s.sock', plugin: '/p.wasm', limits: { callDeadlineMs: 0 } }, 'params', 'absolute-only'), {
    instanceOf: ConfigError,
    message: 'params.limits.callDeadlineMs: 0 is out of range (1..60000)',
  });
  t.throws(() => parseDeviceSpec({ ...dev, plugin: '/p.wasm' }, 'params', 'absolute-only'), { message: /^params\.socket: "q\.sock" is relative: give an absolute path/ });
  t.throws(() => parseDeviceSpec({ ...dev, socket: undefined, fd: 3 }, 'params', 'absolute-only'), { message: /^params\.fd: an fd cannot be handed over the management API/ });
});

test('a TOML file (chosen by its .toml name) gives what the same JSON gives; a syntax error names the line', (t) => {
  const json = {
    control: 'control.sock',
    start: 'eager',
    devices: [
      { id: 'rng0', tenant: 'acme', socket: 'rng0.sock', plugin: 'rng.wasm', grants: { entropy: true }, limits: { cpuShare: 0.25 } },
      { id: 'blk0', socket: '/run/blk0.sock', plugin: 'blk.wasm', grants: { storage: 'memory:64M' }, limits: { memory: '256M', iops: 5000, bytesPerSecond: '200M' }, options: { mode: 'fast' } },
    ],
  };
  const toml = `
control = "control.sock"
start = "eager"

[[devices]]
id = "rng0"
tenant = "acme"
socket = "rng0.sock"
plugin = "rng.wasm"
grants = { entropy = true }
limits = { cpuShare = 0.25 }

[[devices]]
id = "blk0"
socket = "/run/blk0.sock"
plugin = "blk.wasm"
options.mode = "fast"

[devices.grants]
storage = "memory:64M"

[devices.limits]
memory = "256M"
iops = 5000
bytesPerSecond = "200M"
`;
  t.deepEqual(parseDaemonConfig(toml, '/etc/vhost-wasm/daemon.toml'), parseDaemonConfig(JSON.stringify(json), '/etc/vhost-wasm/daemon.json'));
  t.throws(() => parseDaemonConfig(toml.replace('iops = 5000', 'iops = "many"'), '/etc/vhost-wasm/daemon.toml'), {
    instanceOf: ConfigError,
    message: 'devices[1].limits.iops: must be a whole number, not a string ("many")',
  });
  const e = t.throws(() => parseDaemonConfig('control = "c.sock"\n\n[[devices]\nid = "x"\n', '/d.TOML'), { instanceOf: ConfigError });
  t.is(e?.field, '(file)');
  t.regex(e!.message, /^\(file\): \/d\.TOML is not valid TOML: line 3, column \d+: /);
  // Any other name is JSON, as before.
  t.throws(() => parseDaemonConfig(toml, '/d.conf'), { message: /^\(file\): \/d\.conf is not valid JSON/ });
});

test('TOML values JSON has no word for (inf, nan, a date-time) are named as they were written, not as "null" or "an object"', (t) => {
  const dev = '[[devices]]\nid = "a"\nsocket = "/run/a.sock"\nplugin = "/p.wasm"\n';
  t.throws(() => parseDaemonConfig(`spareWorkers = inf\n${dev}`, '/d.toml'), { instanceOf: ConfigError, message: 'spareWorkers: must be a whole number, not a number (inf)' });
  t.throws(() => parseDaemonConfig(`spareWorkers = -inf\n${dev}`, '/d.toml'), { instanceOf: ConfigError, message: 'spareWorkers: must be a whole number, not a number (-inf)' });
  t.throws(() => parseDaemonConfig(`spareWorkers = nan\n${dev}`, '/d.toml'), { instanceOf: ConfigError, message: 'spareWorkers: must be a whole number, not a number (nan)' });
  t.throws(() => parseDaemonConfig(`${dev}limits = { iops = 1979-05-27T07:32:00Z }\n`, '/d.toml'), {
    instanceOf: ConfigError,
    message: 'devices[0].limits.iops: must be a whole number, not a date-time (1979-05-27T07:32:00.000Z)',
  });
});

test('docs/config.schema.json is the JSON Schema the code generates (node --import tsx scripts/config-schema.ts writes it)', (t) => {
  t.is(readFileSync(CONFIG_SCHEMA_FILE, 'utf8'), configSchemaText(), 'stale: run node --import tsx scripts/config-schema.ts');
  const schema = JSON.parse(configSchemaText()) as { properties: Record<string, { items?: { properties: Record<string, unknown>; additionalProperties: unknown } }>; required: string[] };
  t.deepEqual(schema.required, ['devices']);
  const device = schema.properties.devices.items!;
  t.false(device.additionalProperties, 'unknown fields are refused, as the parser refuses them');
  t.deepEqual(Object.keys(device.properties), ['id', 'tenant', 'socket', 'fd', 'systemd', 'plugin', 'module', 'grants', 'limits', 'migration', 'queueThreads', 'pollMaxNs', 'throttleGroup', 'options', 'start']);
});
