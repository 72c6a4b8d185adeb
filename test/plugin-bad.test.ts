// Plugins that break the contract, one way each: every one must end in a clear error
// that names the plugin and the call, never in a hung or poisoned host.
import test from 'ava';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadPlugin, PluginError, type PluginDevice } from '../host/plugin/index.ts';
import type { DeviceEvent } from '../host/device/device.ts';
import { buildFixtures, type Fixture } from './fixtures/plugins/build-fixtures.ts';

const root = join(import.meta.dirname, '..');
const cacheDir = mkdtempSync(join(tmpdir(), 'plugin-bad-test-'));
let files: Record<Fixture, string>;

test.after.always(() => rmSync(cacheDir, { recursive: true, force: true }));

test.before(async () => {
  files = await buildFixtures(root, join(root, 'dist', 'test-plugins'));
});

function load(fixture: Fixture, memoryLimitBytes?: number): Promise<PluginDevice> {
  return loadPlugin(readFileSync(files[fixture]), { grants: { log() {} }, cacheDir, memoryLimitBytes });
}

async function loadError(fixture: Fixture | Uint8Array): Promise<PluginError> {
  const bytes = fixture instanceof Uint8Array ? fixture : readFileSync(files[fixture]);
  const err = await (async () => {
    try {
      await loadPlugin(bytes, { grants: { log() {} }, cacheDir });
    } catch (e) {
      return e;
    }
    return null;
  })();
  if (!(err instanceof PluginError)) throw new Error(`expected a PluginError, got ${String(err)}`);
  return err;
}

const request = (id: number, writableLen: number): DeviceEvent => ({ kind: 'request', request: { id, queue: 0, prefix: new Uint8Array(0), readableLen: 0, writableLen } });
const one = [request(0, 8)];

test('the control fixture passes every check', async (t) => {
  const dev = await load('good');
  t.like(dev.info, { deviceId: 42, name: 'bad', numQueues: 1, maxQueueSize: 256, features: 1n, configSize: 4, prefixLen: 8, queuesIndependent: false });
  t.deepEqual([...dev.readConfig(1, 3)], [2, 3, 4]);
  t.deepEqual(dev.handle(one), [
    { kind: 'answer', answer: { id: 0, transfers: [], ops: [], reply: [{ kind: 'bytes', bytes: new Uint8Array(8).fill(0x5a) }], lengthAt: null, barrier: false } },
  ]);
  t.deepEqual(dev.getState(0, 5), { bytes: new Uint8Array(5).fill(7), remaining: 3 });
  t.deepEqual(dev.getState(5, 5), { bytes: new Uint8Array(3).fill(7), remaining: 0 });
  // The host masks acked bits to the offered ones before the plugin sees them.
  t.notThrows(() => dev.activate((1n << 32n) | 1n));
  t.throws(() => dev.readConfig(2, 3), { instanceOf: RangeError });
});

test('garbage is not a component', async (t) => {
  const err = await loadError(new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8, 9]));
  t.is(err.kind, 'load');
  t.regex(err.message, /not a WebAssembly component/);
});

test('a core module is told to become a component', async (t) => {
  const err = await loadError('core-module');
  t.regex(err.message, /core wasm module, not a component: run `jco new`/);
});

test('a plugin built for vhost:device@0.1.0 is refused at load, naming the version it needs and the migration notes', async (t) => {
  const err = await loadError('version');
  t.is(err.kind, 'load');
  t.regex(err.message, /this plugin is built for vhost:device@0\.1\.0; this host speaks vhost:device@0\.2\.0 to @0\.2\.\d+: rebuild it against wit\/ \(docs\/plugin-abi\.md, "Migrating from 0\.1\.0"\)/);
  // One reason, not one per import of the old version.
  t.notRegex(err.message, /imports vhost:device\/\w+@0\.1\.0/);
});

test('an import the host does not provide is refused by name', async (t) => {
  const err = await loadError('import');
  t.is(err.kind, 'load');
  t.regex(err.message, /imports vhost:device\/clock@0\.2\.\d+, which this host \(vhost:device@0\.2\.0 to @0\.2\.\d+\) does not provide/);
});

test('a component of another world is refused, naming what it exports', async (t) => {
  const err = await loadError('other-world');
  t.regex(err.message, /does not export vhost:device\/device@0\.2\.\d+ \(exports: run/);
});

test('a malformed identity or transport feature bits fail the load', async (t) => {
  t.regex((await loadError('name')).message, /^plugin component [0-9a-f]{12}: load: identity name "Not A Name!"/);
  const features = await loadError('features');
  t.regex(features.message, /^plugin bad: .*transport feature bits 0x100000000/);
});

test('a trap names plugin and call, and the instance is not used again', async (t) => {
  const dev = await load('trap');
  const err = t.throws(() => dev.handle(one), { instanceOf: PluginError }) as PluginError;
  t.is(err.kind, 'trap');
  t.is(err.call, 'handle');
  t.regex(err.message, /^plugin bad: handle: trapped: .*unreachable/);
  t.throws(() => dev.getState(0, 16), { message: /plugin bad: get-state: not called: instance unusable after trap in handle/ });
});

test('growing memory past the cap traps instead of taking the host with it', async (t) => {
  const limit = 8 * 1024 * 1024;
  const dev = await load('grow', limit);
  const err = t.throws(() => dev.handle(one), { instanceOf: PluginError }) as PluginError;
  t.is(err.kind, 'trap');
  t.regex(err.message, /memory \d+ bytes of its limit of 8388608: likely out of memory\)$/);
  t.true(dev.memoryBytes() <= limit, `memory ${dev.memoryBytes()} stayed under the cap`);
  t.true(dev.memoryBytes() > limit / 2, 'it did grow until the cap');
});

test('a memory cap below what the plugin starts with fails the load', async (t) => {
  const err = await (async () => {
    try {
      await load('good', 64 * 1024);
    } catch (e) {
      return e as PluginError;
    }
  })();
  t.true(err instanceof PluginError);
  t.regex(err!.message, /needs \d+ bytes of linear memory at start \(1 memories in \d core instances\), more than the memory limit of 65536 bytes/);
});

test('reply bytes beyond what the requests can hold are refused before they are copied', async (t) => {
  // Each answer one byte longer than its request: 5 + 9 bytes for 4 + 8 of room. The host
  // stops copying at the budget (the runner's answer checks would refuse each answer too).
  const dev = await load('overflow');
  const err = t.throws(() => dev.handle([request(0, 4), request(1, 8)]), { instanceOf: PluginError }) as PluginError;
  t.is(err.kind, 'invalid');
  t.regex(err.message, /^plugin bad: handle: returned more list bytes than the call allows \(a 9-byte list with 7 bytes of its budget left\)/);
});

test('a state whose size changes between chunks is refused', async (t) => {
  const dev = await load('state-size');
  const first = dev.getState(0, 4);
  t.deepEqual(first.remaining, 4);
  const err = t.throws(() => dev.getState(4, 4), { instanceOf: PluginError }) as PluginError;
  t.is(err.kind, 'invalid');
  t.regex(err.message, /^plugin bad: get-state: .*state size changed between calls: 8 bytes, now 11/);
});

test('the infinite-loop fixture loads (stopping it is the worker watchdog\'s job)', async (t) => {
  const dev = await load('loop');
  t.is(dev.info.deviceId, 42);
});
