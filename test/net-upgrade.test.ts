// A plugin upgrade of a device granted a network, through a real host and real front-ends:
// the new worker gets its own link to the switch, and the old worker keeps its own until the
// new one is installed. A refused upgrade (here: a plugin of another name) leaves the device
// exchanging frames as before, not cut off from its network.
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { VhostUserFrontend, VIRTIO_F_VERSION_1, type FrontendOptions } from '../host/frontend/driver.ts';
import { Host, type HostDevice } from '../host/server/index.ts';
import { frame, STATUS_SENT, TX } from './devices/net-test-device.ts';

const root = join(import.meta.dirname, '..');
let dir: string;
let host: Host;
let netEcho: string;

const opts: FrontendOptions = { memoryBytes: 16 << 20, queues: [256, 256], features: 1n << BigInt(VIRTIO_F_VERSION_1), eventIdx: true, indirect: false };

test.before(async () => {
  execFileSync(process.execPath, ['build.mjs', '--only', 'plugins'], { cwd: root, stdio: 'ignore' });
  dir = mkdtempSync(join(tmpdir(), 'net-upgrade-'));
  const { buildPlugin } = await import('../plugins/build-plugins.mjs');
  netEcho = join(dir, 'net-echo.wasm');
  await buildPlugin({ root, sources: [join(root, 'test', 'fixtures', 'plugins', 'net-echo.c')], outFile: netEcho });
  host = await Host.start([
    // p: the net-echo plugin, port 1 of segU; q: the TypeScript net device, port 2.
    { label: 'p', listen: { path: join(dir, 'p.sock') }, source: { kind: 'plugin', path: netEcho }, networks: ['segU'] },
    { label: 'q', listen: { path: join(dir, 'q.sock') }, source: { kind: 'module', url: new URL('./devices/net-test-device.ts', import.meta.url).href }, networks: ['segU'] },
  ]);
});

test.after.always(async () => {
  await host?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const device = (label: string): HostDevice => host.devices.find((d) => d.config.label === label)!;

async function until(what: string, ok: () => boolean, timeoutMs = 10_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!ok()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

/** An rx buffer of p (net-echo: from port u32, network u32, then the frame), held by the device. */
async function rxBuffer(p: VhostUserFrontend): Promise<{ data: Promise<Uint8Array> }> {
  const c = p.queues[0].submit([], 2048).then((r) => r.data.slice(8, r.len));
  c.catch(() => {});
  await until('p to hold its rx buffer', () => p.queues[0].ring.deviceIdle());
  return { data: c };
}

test('a refused plugin upgrade leaves a net device on its network, and one that goes through moves it: frames reach the device serving', async (t) => {
  const [p, q] = await Promise.all([VhostUserFrontend.connect(join(dir, 'p.sock'), opts), VhostUserFrontend.connect(join(dir, 'q.sock'), opts)]);
  try {
    const send = async (f: Uint8Array) => (await q.queues[TX].submit([f], 1)).data[0];
    const before = await rxBuffer(p);
    const f1 = frame('broadcast', 'before the upgrade');
    t.is(await send(f1), STATUS_SENT);
    t.deepEqual(await before.data, f1);
    // rng is another plugin: refused once the new worker has loaded and named itself.
    await t.throwsAsync(device('p').listener.upgrade(join(root, 'dist', 'plugins', 'rng.wasm')), { message: /not "net-echo"/ });
    const after = await rxBuffer(p);
    const f2 = frame('broadcast', 'after the refused upgrade');
    t.is(await send(f2), STATUS_SENT);
    const stats = () => device('p').slot.netStats()!;
    await until('the frame to reach p or be dropped', () => stats().rxFrames + stats().rxNotRunning >= 2);
    t.is(stats().rxNotRunning, 0, 'no frame for p was dropped as "not running"');
    t.deepEqual(await after.data, f2);
    // An upgrade that goes through moves the frames to the new worker.
    await device('p').listener.upgrade(netEcho);
    const upgraded = await rxBuffer(p);
    const f3 = frame('broadcast', 'after the upgrade');
    t.is(await send(f3), STATUS_SENT);
    t.deepEqual(await upgraded.data, f3);
    t.is(stats().rxNotRunning, 0);
    t.is(stats().rxFrames, 3, 'the counters of the worker that was replaced stay the device\'s');
  } finally {
    await Promise.all([p.close(), q.close()]);
  }
});
