// The TypeScript plugin SDK (plugins/sdk/ts): real components built by its build
// (componentize-js), loaded by the real host process and driven over a real vhost-user socket.
import test from 'ava';
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { VhostUserFrontend, VIRTIO_F_VERSION_1, type FrontendOptions } from '../host/frontend/driver.ts';
import { checkWorld, parseWorld } from '../host/plugin/world-check.ts';
import { loadPlugin, type PluginDevice } from '../host/plugin/index.ts';
import type { DeviceEvent } from '../host/device/device.ts';
import { buildTsPlugin, DISABLED_FEATURES } from '../plugins/sdk/ts/build.mjs';
import type { ComponentizeOptions } from '@bytecodealliance/componentize-js';
import { hostCommand, REPO, startHost, type HostProcess } from './helpers/host-process.ts';
import { serving as servingHost } from './helpers/serving.ts';

const RNG_TS = join(REPO, 'dist', 'plugins', 'rng-ts.wasm');
const CONSOLE_TS = join(REPO, 'dist', 'plugins', 'console-ts.wasm');
const FIXTURES = join(REPO, 'dist', 'test-fixtures');
const TEMPLATE = join(FIXTURES, 'ts-template.wasm');
const GLOBALS = join(FIXTURES, 'ts-globals.wasm');
const NEEDS_RESET = 0x40;
const opts: FrontendOptions = { memoryBytes: 4 << 20, queues: [64], features: 1n << BigInt(VIRTIO_F_VERSION_1) };

test.before(async () => {
  execFileSync(process.execPath, ['build.mjs', '--only', 'plugins'], { cwd: REPO, stdio: 'inherit' });
  await buildTsPlugin({ root: REPO, dir: join(REPO, 'plugins', 'templates', 'ts'), outFile: TEMPLATE });
  await buildTsPlugin({ root: REPO, dir: join(REPO, 'test', 'fixtures', 'ts-globals'), outFile: GLOBALS });
});

async function worldOf(file: string): Promise<{ imports: string[]; exports: string[] }> {
  const { componentWit } = await import('@bytecodealliance/jco-transpile/wasm-tools');
  return parseWorld(await componentWit(readFileSync(file)));
}

// A generous call deadline: these tests share two cores with whatever else runs, and a
// SpiderMonkey plugin's first calls are slow; the deadline itself is tested elsewhere.
const DEADLINE = ['--call-deadline', '10000'];

function serving(
  args: string[],
  run: (fe: VhostUserFrontend, host: HostProcess) => Promise<void>,
  frontend: FrontendOptions = opts,
): Promise<HostProcess> {
  return servingHost([...DEADLINE, ...args], frontend, run);
}

const events = (...writable: number[]): DeviceEvent[] =>
  writable.map((writableLen, id) => ({ kind: 'request', request: { id, queue: 0, prefix: new Uint8Array(0), readableLen: 0, writableLen } }));

test.serial('the SDK bindings are the ones jco generates from wit/device.wit today', (t) => {
  // Exits 1 naming the stale files when the WIT changed and bindings/ was not regenerated.
  const r = spawnSync(process.execPath, [join(REPO, 'plugins', 'sdk', 'ts', 'gen-bindings.mjs'), '--check'], { encoding: 'utf8' });
  t.is(r.status, 0, r.stderr);
});

test.serial('rng-ts imports only vhost:device/* (no WASI) and passes the host world check', async (t) => {
  const world = await worldOf(RNG_TS);
  t.deepEqual(world.imports.filter((i) => !i.startsWith('vhost:device/')), []);
  t.true(world.exports.includes('vhost:device/device@0.2.2'));
  t.deepEqual(checkWorld(world), []);
});

test.serial('rng-ts serves a front-end through the host process: random bytes, capped at 64 KiB', async (t) => {
  const host = await serving(['--plugin', RNG_TS, '--entropy'], async (fe) => {
    const q = fe.queues[0];
    const [a, b, big] = await Promise.all([q.submit([], 16), q.submit([], 16), q.submit([], 70_000)]);
    t.is(a.len, 16);
    t.is(b.len, 16);
    t.notDeepEqual(Buffer.from(a.data.subarray(0, 16)), Buffer.from(b.data.subarray(0, 16)), 'two requests of one batch get different bytes');
    t.is(big.len, 65536);
    t.true(new Set(big.data.subarray(0, 65536)).size > 250, '64 KiB of entropy uses nearly every byte value');
    t.is((await fe.conn.getStatus()) & NEEDS_RESET, 0);
  });
  t.regex(host.log(), /serving rng-ts \(virtio device id 4/);
  t.regex(host.log(), /virtio-rng \(TypeScript\) activated/, "the plugin's log line reached the host log");
});

test.serial('rng-ts without --entropy: the device fails with the capability named, the host keeps running', async (t) => {
  await serving(['--plugin', RNG_TS], async (fe, host) => {
    const pending = fe.queues[0].submit([], 16);
    pending.catch(() => {});
    await host.waitForLog(/entropy was not granted/);
    t.is((await fe.conn.getStatus()) & NEEDS_RESET, NEEDS_RESET);
    t.is(host.child.exitCode, null);
  });
});

test.serial('rng-ts state round trip through the SDK chunking, and a bad state refused with its reason', async (t) => {
  const logs: string[] = [];
  const load = (): Promise<PluginDevice> => loadPlugin(readFileSync(RNG_TS), { grants: { entropy: true, log: (l, m) => logs.push(`${l}: ${m}`) } });
  const a = await load();
  a.activate(0n);
  a.handle(events(8, 8, 8));
  const chunks = [a.getState(0, 5), a.getState(5, 5), a.getState(10, 100)];
  t.deepEqual(chunks.map((c) => [c.bytes.length, c.remaining]), [[5, 11], [5, 6], [6, 0]]);
  const state = Buffer.concat(chunks.map((c) => c.bytes));
  t.is(state.subarray(0, 4).toString(), 'VRNG');
  t.is(state.readBigUInt64LE(8), 3n);
  const b = await load();
  b.setState(0, state.subarray(0, 7));
  b.setState(7, state.subarray(7));
  t.is(b.finishLoad(), null);
  t.is(Buffer.from(b.getState(0, 64).bytes).readBigUInt64LE(8), 3n);
  const c = await load();
  c.setState(0, Buffer.from('XXXX0000'));
  t.regex(c.finishLoad() ?? '', /finish-load: state is 8 bytes, expected 16/);
});

test.serial('rng-ts under --memory-limit 128M keeps answering: the engine collects before the cap', async (t) => {
  // 100 rounds of 64 x 64 KiB = 400 MiB answered through the host, far past what the plugin's
  // memory could hold if the answered bytes were never collected (docs/writing-a-ts-plugin.md,
  // section 4). Under the default 64 MiB cap the device fails long before the end.
  const big: FrontendOptions = { ...opts, memoryBytes: 16 << 20 };
  await serving(['--plugin', RNG_TS, '--entropy', '--memory-limit', '128M'], async (fe) => {
    const q = fe.queues[0];
    // A failed device completes nothing more: its config-change notice ends the wait instead.
    let failed = false;
    const failure = new Promise<void>((resolve) => fe.backend!.once('config-change', () => ((failed = true), resolve())));
    for (let round = 0; round < 100 && !failed; round++) {
      const done = await Promise.race([Promise.all(Array.from({ length: 64 }, () => q.submit([], 65536))), failure]);
      if (done && done.some((c) => c.len !== 65536)) return t.fail(`round ${round}: answers of ${done.filter((c) => c.len !== 65536).map((c) => c.len).join(", ")} bytes`);
    }
    t.false(failed, 'the device did not fail');
    t.is((await fe.conn.getStatus()) & NEEDS_RESET, 0);
  }, big);
});

test.serial('console-ts echoes transmits into held receive buffers, in order, with back-pressure', async (t) => {
  const text = (c: { data: Uint8Array; len: number }): string => Buffer.from(c.data.subarray(0, c.len)).toString();
  const two: FrontendOptions = { ...opts, queues: [64, 64] };
  await serving(['--plugin', CONSOLE_TS], async (fe, host) => {
    const [rx, tx] = fe.queues;
    // A receive buffer given before there is output waits (held), then gets the echo.
    const first = rx.submit([], 64);
    const sent = await tx.submit([Buffer.from('hello')], 0);
    t.is(sent.len, 0);
    t.is(text(await first), 'hello');
    // Output waiting for buffers is split over them in order.
    await tx.submit([Buffer.from('abc')], 0);
    await tx.submit([Buffer.from('def')], 0);
    t.is(text(await rx.submit([], 4)), 'abcd');
    t.is(text(await rx.submit([], 4)), 'ef');
    // 64 KiB of unread echo fills the device: the next transmit is held until the guest reads.
    const chunk = Buffer.alloc(4096, 'x');
    for (let i = 0; i < 16; i++) await tx.submit([chunk], 0);
    let blockedDone = false;
    const blocked = tx.submit([Buffer.from('after')], 0).then((c) => ((blockedDone = true), c));
    const reads: string[] = [];
    for (let i = 0; i < 16; i++) reads.push(text(await rx.submit([], 4096)));
    t.true(reads.every((r) => r === 'x'.repeat(4096)));
    await blocked;
    t.true(blockedDone);
    t.is(text(await rx.submit([], 64)), 'after');
    // A receive buffer and unread echo left when the front-end goes away are dropped with the
    // rings: the next connection starts clean.
    rx.submit([], 64).catch(() => {});
    await tx.submit([Buffer.from('stale')], 0);
    t.is((await fe.conn.getStatus()) & NEEDS_RESET, 0);
    await fe.close();
    const fe2 = await VhostUserFrontend.connect(host.socketPath, two);
    try {
      const fresh = fe2.queues[0].submit([], 64);
      await fe2.queues[1].submit([Buffer.from('again')], 0);
      t.is(text(await fresh), 'again');
    } finally {
      await fe2.close();
    }
    t.regex(host.log(), /serving console-ts \(virtio device id 3, 2 queue\(s\)\)/);
  }, two);
});

test.serial('the template answers each request with its bytes reversed and counts in its config space', async (t) => {
  await serving(['--plugin', TEMPLATE], async (fe) => {
    const r = await fe.queues[0].submit([Buffer.from('hello, device')], 64);
    t.is(Buffer.from(r.data.subarray(0, r.len)).toString(), 'ecived ,olleh');
    const r2 = await fe.queues[0].submit([Buffer.from('vhost-wasm')], 4);
    t.is(Buffer.from(r2.data.subarray(0, r2.len)).toString(), 'sohv', 'the first bytes that fit the request, reversed');
    t.is(Buffer.from(await fe.getConfig(0, 8)).readBigUInt64LE(0), 2n);
  });
});

test.serial('inside a plugin: no clock, randomness from the entropy grant, console to the host log, errors named', async (t) => {
  await serving(['--plugin', GLOBALS, '--entropy'], async (fe, host) => {
    const ask = async (probe: string): Promise<string> => {
      const r = await fe.queues[0].submit([Buffer.from(probe)], 200);
      return Buffer.from(r.data.subarray(0, r.len)).toString();
    };
    for (const clock of ['Date.now', 'new Date', 'performance.now', 'setTimeout']) t.regex(await ask(clock), /^threw .*a plugin has no clock/, clock);
    t.is(await ask('new Date(0)'), 'ok 1970-01-01T00:00:00.000Z', 'dates that read no clock still work');
    const [r1, r2] = [await ask('getRandomValues'), await ask('getRandomValues')];
    t.regex(r1, /^ok \d+(,\d+){7}$/);
    t.not(r1, r2);
    await ask('console.log');
    await host.waitForLog(/console\.log reached the host log/);
    const failing = fe.queues[0].submit([Buffer.from('throw')], 200);
    failing.catch(() => {});
    await host.waitForLog(/handle: the device threw this/);
    t.is((await fe.conn.getStatus()) & NEEDS_RESET, NEEDS_RESET);
  });
});

test.serial('a componentize-js component that kept its WASI features is refused, naming the features to disable', async (t) => {
  // A real componentize-js build with its defaults (only http/fetch-event off), cached by source.
  const source = [
    'export const device = {',
    "  identity() { console.log(Date.now(), Math.random()); return { name: 'wasi', version: '0' }; },",
    '  info() {}, readConfig() {}, writeConfig() {}, activate() {}, reset() {}, handle() {},',
    '  getState() {}, setState() {}, finishLoad() {},',
    '};',
  ].join('\n');
  const wit = readFileSync(join(REPO, 'wit', 'device.wit'), 'utf8');
  const key = createHash('sha256').update(source).update(wit).update(JSON.stringify(DISABLED_FEATURES)).digest('hex').slice(0, 16);
  const file = join(FIXTURES, `wasi-${key}.wasm`);
  if (!existsSync(file)) {
    mkdirSync(FIXTURES, { recursive: true });
    const src = join(FIXTURES, `wasi-${key}.js`);
    writeFileSync(src, source);
    const { componentize } = await import('@bytecodealliance/componentize-js');
    // witWorld (WIT text) is in componentize-js 0.22's code but not its types.
    const options = { sourcePath: src, witWorld: wit, worldName: 'virtio-device', disableFeatures: ['http', 'fetch-event'] };
    const { component } = await componentize(options as unknown as ComponentizeOptions);
    writeFileSync(file, component);
  }
  const [node, argv] = hostCommand(['--socket-path', join(FIXTURES, 'never.sock'), '--plugin', file]);
  const r = spawnSync(node, argv, { encoding: 'utf8', timeout: 60_000 });
  t.not(r.status, 0);
  t.regex(r.stderr, /imports wasi:[^ ]+.*plugins get no WASI/);
  t.regex(r.stderr, /a componentize-js build must disable clocks, random, stdio/);
  t.false(existsSync(join(FIXTURES, 'never.sock')));
});
