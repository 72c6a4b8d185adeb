// The typed worker boundary (host/device/typed-rpc.ts, rpc.ts): real device workers (a
// TypeScript device and a file that is no plugin) answer typed values, and an error thrown in
// the worker arrives on this thread as its own class with its stable code and properties.
import test from 'ava';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { DeviceWorker } from '../host/device/worker-client.ts';
import { DeviceStoppedError } from '../host/device/errors.ts';
import { MemoryTableError } from '../host/memory/guest-memory.ts';
import { PluginError } from '../host/plugin/errors.ts';
import { QueueFault } from '../host/virtqueue/chain.ts';
import { VhostWasmError, deserializeError, serializeError } from '../host/errors.ts';
import { WORKER_ERROR_CLASSES } from '../host/device/worker-errors.ts';
import { installRemote, op } from '../host/device/typed-rpc.ts';

const nullDevice = pathToFileURL(join(import.meta.dirname, 'devices', 'null-device.ts')).href;
const opts = { label: 'rpc-test', callDeadlineMs: 10_000 };

test('operations answer typed values, and an error thrown in the worker keeps its class and code', async (t) => {
  const w = await DeviceWorker.start({ kind: 'module', url: nullDevice }, opts);
  try {
    const config = await w.readConfig(0, 4);
    t.true(config instanceof Uint8Array);
    t.is(new DataView(config.buffer, config.byteOffset).getUint32(0, true), 0xc0ffee);
    t.is(await w.ringStop(0), 0);
    t.deepEqual(await w.status(), { running: [], failed: null, brokenQueues: [], processBound: null });
    const chunk = await w.stateRead(0, 8);
    t.is(chunk.bytes.length, 8);
    t.is(chunk.remaining, 0);

    // GuestMemory.removeRegion throws a MemoryTableError inside the worker.
    const e = await t.throwsAsync(() => w.removeMemRegion(0x10000, 0x1000, 0x7f0000000000));
    t.true(e instanceof MemoryTableError, `${e?.name}: ${e?.message}`);
    t.true(e instanceof VhostWasmError);
    t.is((e as MemoryTableError).code, 'ERR_MEMORY_TABLE');
    t.is(e?.name, 'MemoryTableError');
    t.regex(e?.message ?? '', /no region at GPA 0x10000 size 0x1000 to remove/);
    // Its stack is the worker's, where it was thrown, not this thread's reply handler.
    t.regex(e?.stack ?? '', /guest-memory\.ts/);

    // A plain Error stays a plain Error, message intact, no code invented.
    const plain = await t.throwsAsync(() => w.ringNum(7, 8));
    t.is(plain?.constructor, Error);
    t.is((plain as { code?: unknown }).code, undefined);
    t.regex(plain?.message ?? '', /ring index 7 is out of range: this device has 1 queue/);

    // The worker is still serving after both refusals.
    t.is(await w.ringStop(0), 0);
  } finally {
    await w.terminate();
  }
  // Once the worker is gone, a call fails with its own code without reaching it.
  const gone = await t.throwsAsync(() => w.status());
  t.true(gone instanceof DeviceStoppedError);
  t.is((gone as DeviceStoppedError).code, 'ERR_DEVICE_STOPPED');
});

test('state a device answers with a view of memory it keeps is copied out, never taken from it', async (t) => {
  // A Buffer's slice() is a view: a runner that "copied" with it would transfer, and so detach,
  // the device's own memory, and the device's next getState would find it gone.
  const w = await DeviceWorker.start({ kind: 'module', url: nullDevice, options: { stateView: true } }, opts);
  try {
    for (let i = 0; i < 3; i++) {
      const chunk = await w.stateRead(0, 8);
      t.is(chunk.bytes.length, 8, `read ${i}`);
      t.is(chunk.remaining, 0);
    }
  } finally {
    await w.terminate();
  }
});

test('a load failure in the worker arrives as a PluginError with its kind and code', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'worker-rpc-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, 'not-a-plugin.wasm');
  writeFileSync(path, 'this is not a WebAssembly component');
  const e = await t.throwsAsync(() => DeviceWorker.start({ kind: 'plugin', path, options: { cacheDir: join(dir, 'cache') } }, opts));
  t.true(e instanceof PluginError, `${e?.name}: ${e?.message}`);
  const p = e as PluginError;
  t.is(p.kind, 'load');
  t.is(p.code, 'ERR_PLUGIN_LOAD');
  t.is(p.call, 'load');
  t.regex(p.message, /^plugin .*: load: not a WebAssembly component/);
});

test('serialized errors keep their own properties, details and causes, and stop at a cause cycle', (t) => {
  const inner = new QueueFault(3, 'descriptor loop', 17, 4, 9);
  const outer = new PluginError('blk', 'process', 'trap', 'unreachable', { cause: inner });
  const cyclic = new Error('a') as Error & { cause?: unknown };
  cyclic.cause = cyclic;
  const clone = structuredClone(serializeError(outer));
  const back = deserializeError(clone, WORKER_ERROR_CLASSES) as PluginError;
  t.true(back instanceof PluginError);
  t.is(back.code, 'ERR_PLUGIN_TRAP');
  t.is(back.call, 'process');
  const cause = back.cause as QueueFault;
  t.true(cause instanceof QueueFault);
  t.is(cause.code, 'ERR_QUEUE_FAULT');
  t.is(cause.message, inner.message);
  t.deepEqual([cause.queue, cause.availIndex, cause.head, cause.descIndex], [3, 17, 4, 9]);

  class Detailed extends VhostWasmError {
    static override readonly code = 'ERR_TEST_DETAILED';
  }
  const d = deserializeError(structuredClone(serializeError(new Detailed('x', { details: { queue: 2 } }))), [Detailed]) as Detailed;
  t.true(d instanceof Detailed);
  t.deepEqual(d.details, { queue: 2 });

  let depth = 0;
  for (let s: { cause?: unknown } | undefined = serializeError(cyclic); s; s = s.cause as typeof s) depth++;
  t.true(depth <= 5);
});

test('an operation named like a member of the client object is refused, not silently installed', (t) => {
  class Client {
    status(): string {
      return 'own';
    }
  }
  const ops = { status: op<() => number>(), other: op<() => void>() };
  const c = new Client();
  t.throws(() => installRemote(c, ops, async () => 0), { message: /operation status would replace Client\.status/ });
  t.is(c.status(), 'own');
});
