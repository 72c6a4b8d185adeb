// The net plugin behind the real host, driven by real front-ends (host/frontend) over Unix
// sockets: what a guest's driver would see when it sends bad frames, gives rx buffers too
// small for a frame, or gives several with MRG_RXBUF. Each test has its own pair of devices on
// its own network of one daemon.
import test, { type ExecutionContext } from 'ava';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VhostUserFrontend, VIRTIO_F_VERSION_1 } from '../host/frontend/driver.ts';
import { startDaemonWith, type DaemonProcess } from './helpers/daemon-process.ts';
import { mac } from './helpers/mac.ts';
import { REPO, assertBuilt } from './helpers/host-process.ts';

const NET = join(REPO, 'dist', 'plugins', 'net.wasm');
const VERSION_1 = 1n << BigInt(VIRTIO_F_VERSION_1);
const MRG_RXBUF = 1n << 15n;
const HDR = 12;
const MAC = { a: '52:54:00:00:00:0a', b: '52:54:00:00:00:0b' };
const PAIRS = ['flags', 'small', 'mrg', 'mtu'];

let dir: string;
let daemon: DaemonProcess;
const sock = (pair: string, side: 'a' | 'b') => join(dir, `${pair}-${side}.sock`);

test.before(async () => {
  assertBuilt();
  dir = mkdtempSync(join(tmpdir(), 'net-device-'));
  const devices = PAIRS.flatMap((pair) =>
    (['a', 'b'] as const).map((side) => ({ id: `${pair}-${side}`, socket: sock(pair, side), plugin: NET, grants: { network: [pair] }, options: { mac: MAC[side] } })),
  );
  daemon = await startDaemonWith(dir, { devices });
});
test.after.always(async () => {
  await daemon?.stop();
  rmSync(dir, { recursive: true, force: true });
});

let seq = 0;
function frame(len: number): Buffer {
  const f = Buffer.alloc(len);
  mac(MAC.b).copy(f, 0);
  mac(MAC.a).copy(f, 6);
  f.writeUInt16BE(0x88b5, 12);
  f.write(`frame ${++seq}`, 14);
  for (let i = 30; i < len; i++) f[i] = (i * 7 + seq) & 255;
  return f;
}
function txChain(f: Buffer, flags = 0): Buffer {
  const h = Buffer.alloc(HDR);
  h[0] = flags;
  return Buffer.concat([h, f]);
}

async function pair(t: ExecutionContext, name: string, features: bigint) {
  const connect = (side: 'a' | 'b') => VhostUserFrontend.connect(sock(name, side), { memoryBytes: 16 << 20, queues: [64, 64], features });
  const [a, b] = await Promise.all([connect('a'), connect('b')]);
  t.teardown(() => Promise.all([a.close(), b.close()]).then(() => undefined));
  /** Sends one tx chain from a; resolves with its used length once the device completed it. */
  const send = async (chain: Buffer) => (await a.queues[1].submit([chain], 0)).len;
  return { a, b, send };
}

test('a tx header with garbage flags is completed and its frame never reaches the peer', async (t) => {
  const { b, send } = await pair(t, 'flags', VERSION_1 | MRG_RXBUF);
  const rx = b.queues[0].submit([], 1526);
  t.is(await send(txChain(frame(100), 0x01)), 0, 'NEEDS_CSUM (never offered): completed, nothing written');
  t.is(await send(txChain(frame(100), 0xfe)), 0, 'undefined flag bits: completed');
  const good = frame(120);
  t.is(await send(txChain(good)), 0);
  const c = await rx;
  t.true(Buffer.from(c.data).subarray(HDR, HDR + good.length).equals(good), 'the one rx buffer got the good frame, the first delivered');
  t.is(c.len, HDR + good.length);
});

test('without MRG_RXBUF a frame larger than the rx buffer is dropped and the buffer takes the next frame that fits', async (t) => {
  const { b, send } = await pair(t, 'small', VERSION_1);
  const rx = b.queues[0].submit([], 100);
  await send(txChain(frame(200)));
  const fits = frame(60);
  await send(txChain(fits));
  const c = await rx;
  t.is(c.len, HDR + 60);
  t.true(Buffer.from(c.data).subarray(HDR, HDR + 60).equals(fits));
});

test('with MRG_RXBUF a frame spans consecutive rx buffers in ring order, num_buffers in the first header', async (t) => {
  const { b, send } = await pair(t, 'mrg', VERSION_1 | MRG_RXBUF);
  const order: number[] = [];
  const bufs = [0, 1, 2, 3].map((i) => b.queues[0].submit([], 64).then((c) => (order.push(i), c)));
  const f = frame(150); // 12 + 150 = 162 bytes: three 64-byte buffers
  await send(txChain(f));
  const [c0, c1, c2] = await Promise.all(bufs.slice(0, 3));
  t.deepEqual(order, [0, 1, 2], 'used in the order they were given');
  t.deepEqual([c0.len, c1.len, c2.len], [64, 64, 34]);
  t.is(Buffer.from(c0.data).readUInt16LE(10), 3, 'num_buffers');
  const joined = Buffer.concat([Buffer.from(c0.data).subarray(HDR, 64), Buffer.from(c1.data), Buffer.from(c2.data).subarray(0, 34)]);
  t.true(joined.equals(f), 'the frame, split across them');
  const small = frame(40);
  await send(txChain(small));
  const c3 = await bufs[3];
  t.is(c3.len, HDR + 40, 'the fourth buffer takes the next frame');
});

test('frames shorter than an Ethernet header or longer than the MTU from the guest are completed and not sent', async (t) => {
  const { b, send } = await pair(t, 'mtu', VERSION_1 | MRG_RXBUF);
  const rx = b.queues[0].submit([], 4096);
  t.is(await send(txChain(frame(1515))), 0, 'MTU 1500 + 14 + 1');
  t.is(await send(txChain(frame(64)).subarray(0, HDR + 13)), 0, '13 bytes');
  t.is(await send(Buffer.alloc(6)), 0, 'not even a header');
  const max = frame(1514);
  await send(txChain(max));
  const c = await rx;
  t.is(c.len, HDR + 1514, 'the largest legal frame is the first delivered');
  t.true(Buffer.from(c.data).subarray(HDR, HDR + 1514).equals(max));
});
