// The front-end driver against our own host (TypeScript null device, echo mode): the same
// handshake QEMU does, real rings in memfd guest RAM, data checked both ways.
import test from 'ava';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { VhostUserFrontend, VIRTIO_F_EVENT_IDX, VIRTIO_F_VERSION_1, VirtioStatus, type FrontendOptions } from '../host/frontend/driver.ts';
import { frame } from '../host/protocol/codec.ts';
import { ProtocolFeature, VERSION } from '../host/protocol/constants.ts';
import { Req } from '../host/protocol/requests.ts';
import { Host } from '../host/server/index.ts';

const fdCount = () => readdirSync('/proc/self/fd').length;
let dir: string;
let host: Host;
let sock: string;

test.before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'frontend-host-'));
  sock = join(dir, 'null.sock');
  host = await Host.start([{
    label: 'null',
    listen: { path: sock },
    source: { kind: 'module', url: new URL('./devices/null-device.ts', import.meta.url).href, options: { mode: 'echo' } },
  }]);
});

test.after.always(async () => {
  await host?.close();
  rmSync(dir, { recursive: true, force: true });
});

const opts: FrontendOptions = { memoryBytes: 16 << 20, queues: [64], features: 1n << BigInt(VIRTIO_F_VERSION_1), eventIdx: true, indirect: true };

/** The host closes its end asynchronously; give it a moment before counting. */
async function settledFdCount(target: number): Promise<number> {
  for (let i = 0; i < 100 && fdCount() !== target; i++) await sleep(10);
  return fdCount();
}

async function stableFdCount(): Promise<number> {
  let last = fdCount();
  for (;;) {
    await sleep(50);
    const now = fdCount();
    if (now === last) return now;
    last = now;
  }
}

test.serial('echo through our host: direct, multi-descriptor and indirect chains; stop returns the count', async (t) => {
  // Warm-up connection so lazily created fds (worker, loop) are already there.
  await (await VhostUserFrontend.connect(sock, opts)).close();
  const before = await stableFdCount();
  const fe = await VhostUserFrontend.connect(sock, opts);
  t.true(fe.hasFeature(VIRTIO_F_EVENT_IDX));
  const q = fe.queues[0];
  const a = Buffer.from('hello, device');
  const r1 = await q.submit([a], 64);
  t.is(r1.len, a.length);
  t.deepEqual(Buffer.from(r1.data.subarray(0, r1.len)), a);
  const parts = [Buffer.alloc(100, 1), Buffer.alloc(200, 2), Buffer.alloc(50, 3)];
  const r2 = await q.submit(parts, [120, 230], { indirect: true });
  t.deepEqual(Buffer.from(r2.data.subarray(0, r2.len)), Buffer.concat(parts));
  const many = await Promise.all(Array.from({ length: 300 }, (_, i) => q.submit([Buffer.from(`req ${i}`)], [4, 16])));
  many.forEach((r, i) => {
    if (Buffer.from(r.data.subarray(0, r.len)).toString() !== `req ${i}`) t.fail(`request ${i} came back as ${Buffer.from(r.data).toString()}`);
  });
  const cfg = await fe.getConfig(0, 4);
  t.is(new DataView(cfg.buffer, cfg.byteOffset).getUint32(0, true), 0xc0ffee);
  t.is(await fe.stopQueue(0), 302);
  await fe.close();
  t.is(await settledFdCount(before), before);
});

test.serial('memory by ADD_MEM_REG; with STATUS negotiated the device reads DRIVER_OK and RESET_DEVICE clears it', async (t) => {
  const fe = await VhostUserFrontend.connect(sock, { ...opts, addMemReg: true, memoryBytes: 8 << 20, memory: { regionBytes: 4 << 20 } });
  try {
    t.is(fe.conn.history.filter((c) => c === Req.ADD_MEM_REG).length, 2);
    const r = await fe.queues[0].submit([Buffer.from('x')], 1);
    t.is(Buffer.from(r.data).toString(), 'x');
    if (fe.conn.hasProtocol(ProtocolFeature.STATUS)) {
      t.is(await fe.conn.getStatus(), VirtioStatus.ACKNOWLEDGE | VirtioStatus.DRIVER | VirtioStatus.FEATURES_OK | VirtioStatus.DRIVER_OK);
      await fe.conn.resetDevice();
      t.is(await fe.conn.getStatus(), 0);
    } else {
      t.log('the host does not offer PROTOCOL_F_STATUS; status checks skipped');
    }
  } finally {
    await fe.close();
  }
});

test.serial('sendRaw: a header with reserved flag bits makes the host drop the connection', async (t) => {
  const fe = await VhostUserFrontend.connect(sock, opts);
  try {
    const bad = frame(Req.SET_VRING_NUM, VERSION | 0x10, new Uint8Array(8));
    await fe.conn.sendRaw(bad);
    await fe.conn.closed;
    t.true(fe.conn.isClosed);
    await t.throwsAsync(fe.conn.getFeatures(), { message: /GET_FEATURES \(1\): the connection is closed/ });
  } finally {
    await fe.close();
  }
});
