// The real virtio-rng plugin, built by the real build, under the real jco runtime.
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { loadPlugin, loadPluginSync, preparePlugin, PluginError, type PluginDevice } from '../host/plugin/index.ts';
import type { DeviceAction, DeviceEvent } from '../host/device/device.ts';

const root = join(import.meta.dirname, '..');
const cacheDir = mkdtempSync(join(tmpdir(), 'plugin-rng-test-'));
let bytes: Buffer;
const logs: string[] = [];

async function load(grantEntropy = true): Promise<PluginDevice> {
  return loadPlugin(bytes, { grants: { entropy: grantEntropy, log: (l, m) => logs.push(`${l}: ${m}`) }, cacheDir });
}

test.after.always(() => rmSync(cacheDir, { recursive: true, force: true }));

let nextId = 1;
/** One handle() batch of requests with these writable lengths; the reply bytes of each, checked to be one bytes piece. */
function ask(t: import('ava').ExecutionContext, dev: PluginDevice, caps: number[], queue = 0): Uint8Array[] {
  const events: DeviceEvent[] = caps.map((writableLen) => ({
    kind: 'request',
    request: { id: nextId++, queue, prefix: new Uint8Array(0), readableLen: 0, writableLen },
  }));
  const actions = dev.handle(events);
  t.is(actions.length, events.length, 'one action per request');
  return events.map((e) => {
    const id = e.kind === 'request' ? e.request.id : -1;
    const a = actions.find((x): x is Extract<DeviceAction, { kind: 'answer' }> => x.kind === 'answer' && x.answer.id === id);
    if (!a) throw new Error(`request ${id} was not answered`);
    t.deepEqual([a.answer.transfers.length, a.answer.ops.length, a.answer.barrier, a.answer.lengthAt], [0, 0, false, null], 'nothing but bytes');
    t.is(a.answer.reply.length, 1);
    const piece = a.answer.reply[0];
    if (piece.kind !== 'bytes') throw new Error(`a ${piece.kind} piece`);
    return piece.bytes;
  });
}

test.before(() => {
  execFileSync(process.execPath, ['build.mjs', '--only', 'plugins'], { cwd: root, stdio: 'inherit' });
  bytes = readFileSync(join(root, 'dist', 'plugins', 'rng.wasm'));
});

test('reports itself as virtio-rng', async (t) => {
  const dev = await load();
  t.deepEqual(dev.identity, { name: 'rng', version: '0.2.0' });
  t.like(dev.info, { deviceId: 4, name: 'rng', numQueues: 1, maxQueueSize: 1024, features: 0n, configSize: 0, prefixLen: 0, queuesIndependent: true });
});

test('the cached glue no longer reads process.env on every call', async (t) => {
  const prepared = await preparePlugin(bytes, cacheDir);
  t.true(prepared.debugHookRemoved);
  t.false(prepared.glue.includes('JCO_DEBUG'));
});

test('fills every request of a batch to its capacity with random bytes', async (t) => {
  const dev = await load();
  dev.activate(0n);
  t.true(logs.includes('info: virtio-rng activated'), 'the log import reaches the granted logger');
  const caps = [16, 0, 4096, 1, 70_000];
  const responses = ask(t, dev, caps);
  // 70000 is capped at the plugin's 64 KiB per-request limit.
  t.deepEqual(
    responses.map((r) => r.length),
    [16, 0, 4096, 1, 65536],
  );
  const big = responses[2];
  t.true(new Set(big).size > 200, 'a 4 KiB answer uses most byte values');
  t.notDeepEqual(responses[0], ask(t, dev, [16])[0]);
  // Two requests of one batch must not share bytes (the batch is filled from one block).
  const pair = ask(t, dev, [64, 64]);
  t.notDeepEqual(pair[0], pair[1]);
});

test('a batch larger than one entropy block is still filled', async (t) => {
  const dev = await load();
  const out = ask(t, dev, Array.from({ length: 8 }, () => 65536));
  t.is(out.length, 8);
  for (const r of out) t.is(r.length, 65536);
  t.notDeepEqual(out[3].subarray(0, 32), out[4].subarray(0, 32));
});

test('a request on a queue it does not have is a device error, named', async (t) => {
  const dev = await load();
  const err = t.throws(() => ask(t, dev, [8], 1), { instanceOf: PluginError });
  t.regex(err!.message, /^plugin rng: handle: virtio-rng has only queue 0/);
});

test('without the entropy grant a request traps and names plugin and call', async (t) => {
  const dev = await load(false);
  const err = t.throws(() => ask(t, dev, [8]), { instanceOf: PluginError });
  t.regex(err!.message, /^plugin rng: handle: .*entropy was not granted/);
  t.is((err as PluginError).kind, 'trap');
  // The instance is not trusted again after a trap.
  t.throws(() => dev.reset(), { message: /unusable after trap in handle/ });
});

function saveAll(dev: PluginDevice, chunkSize: number): Uint8Array[] {
  const chunks: Uint8Array[] = [];
  for (let offset = 0; ; ) {
    const c = dev.getState(offset, chunkSize);
    chunks.push(c.bytes);
    offset += c.bytes.length;
    if (c.remaining === 0) return chunks;
  }
}

test('state round-trips in small chunks and carries the request count', async (t) => {
  const src = await load();
  for (let i = 0; i < 5; i++) ask(t, src, [4, 4]);
  const chunks = saveAll(src, 3);
  t.is(chunks.length, 6); // 16 bytes in chunks of 3
  const state = Buffer.concat(chunks);
  t.is(state.subarray(0, 5).toString('latin1'), 'VRNG\x01');
  t.is(state.readBigUInt64LE(8), 10n);

  const dst = await load();
  let offset = 0;
  for (const c of chunks) {
    dst.setState(offset, c);
    offset += c.length;
  }
  t.is(dst.finishLoad(), null);
  t.deepEqual(Buffer.concat(saveAll(dst, 1024)), state);
});

test('a truncated, overlong, wrong-version or foreign state is rejected', async (t) => {
  const src = await load();
  const state = Buffer.concat(saveAll(src, 1024));
  const dst = await load();

  dst.setState(0, state.subarray(0, 10));
  t.regex(dst.finishLoad() ?? '', /^plugin rng: finish-load: state truncated/);

  const wrongVersion = Buffer.from(state);
  wrongVersion[4] = 2;
  dst.setState(0, wrongVersion);
  t.regex(dst.finishLoad() ?? '', /unsupported rng state version/);

  const foreign = Buffer.from(state);
  foreign.write('XXXX', 0, 'latin1');
  dst.setState(0, foreign);
  t.regex(dst.finishLoad() ?? '', /bad magic/);

  const err = t.throws(() => dst.setState(0, Buffer.concat([state, Buffer.from([0])])), { instanceOf: PluginError });
  t.is((err as PluginError).kind, 'error');
  t.regex(dst.finishLoad() ?? '', /longer than/);

  // Out-of-order chunks never reach the plugin.
  dst.setState(0, state.subarray(0, 4));
  t.throws(() => dst.setState(8, state.subarray(8)), { instanceOf: RangeError });

  // After all that, a good state still loads.
  dst.setState(0, state);
  t.is(dst.finishLoad(), null);
});

test('a prepared plugin loads synchronously inside a worker_thread', async (t) => {
  await load(); // fills the cache
  // Workers do not inherit tsx's hooks from --import: register them, then load the .ts.
  const entry = new URL('./fixtures/plugins/load-in-worker.ts', import.meta.url).href;
  const worker = new Worker(
    `import('tsx/esm/api').then((m) => { m.register(); return import(${JSON.stringify(entry)}); })`,
    { eval: true, workerData: { bytes, cacheDir } },
  );
  const msg = await new Promise<Record<string, unknown>>((resolve, reject) => {
    worker.once('message', resolve);
    worker.once('error', reject);
  });
  await worker.terminate();
  t.deepEqual(msg, { id: 4, len: 32 });
});

test('loadPluginSync refuses a component that was never prepared', (t) => {
  const err = t.throws(
    () => loadPluginSync(bytes, { grants: { log() {} }, cacheDir: join(cacheDir, 'never-filled') }),
    { instanceOf: PluginError },
  );
  t.regex(err!.message, /preparePlugin/);
});
