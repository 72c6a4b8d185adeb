// The net device's state (counters, MAC table) through the device-state path, with real
// front-ends (host/frontend) on three devices of one daemon, all on network seg0: a and b
// exchange frames, b's front-end migrates to b2 (SET_DEVICE_STATE_FD, as QEMU does for
// devices that carry state), frames keep flowing both ways through b2, and b2's saved state
// holds what b counted and learned before the migration.
import test from 'ava';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VhostUserFrontend, VIRTIO_F_VERSION_1 } from '../host/frontend/driver.ts';
import { migrate, saveState } from '../host/frontend/migrate.ts';
import { decodeHeader, peekHeaderLength } from '../host/migration/container.ts';
import { startDaemonWith, type DaemonProcess } from './helpers/daemon-process.ts';
import { mac } from './helpers/mac.ts';
import { REPO, assertBuilt } from './helpers/host-process.ts';

const NET = join(REPO, 'dist', 'plugins', 'net.wasm');
const MAC = { a: '52:54:00:00:00:0a', b: '52:54:00:00:00:0b' };
const FEATURES = (1n << BigInt(VIRTIO_F_VERSION_1)) | (1n << 15n); /* MRG_RXBUF */
const HDR = 12;
const RX_BUF = 1526;

let dir: string;
let daemon: DaemonProcess;
const sock = (id: string) => join(dir, `${id}.sock`);

test.before(async () => {
  assertBuilt();
  dir = mkdtempSync(join(tmpdir(), 'net-migration-'));
  const devices = [['a', MAC.a], ['b', MAC.b], ['b2', MAC.b]].map(([id, mac]) => ({ id, socket: sock(id), plugin: NET, grants: { network: ['seg0'] }, options: { mac } }));
  daemon = await startDaemonWith(dir, { devices });
});
test.after.always(async () => {
  await daemon?.stop();
  rmSync(dir, { recursive: true, force: true });
});

let seq = 0;
/** An Ethernet frame src -> dst carrying a UDP-ish payload that names it. */
function frame(src: string, dst: string): Buffer {
  const f = Buffer.alloc(200);
  mac(dst).copy(f, 0);
  mac(src).copy(f, 6);
  f.writeUInt16BE(0x88b5, 12); // IEEE local experimental EtherType: no IP rules involved
  f.write(`frame ${++seq} from ${src} to ${dst}`, 14);
  return f;
}
const withHeader = (f: Buffer) => Buffer.concat([Buffer.alloc(HDR), f]);

const connect = (path: string) => VhostUserFrontend.connect(path, { memoryBytes: 16 << 20, queues: [64, 64], features: FEATURES });

/** Posts an rx buffer on `rx`, sends `f` on `tx`, and returns what the rx buffer received. */
async function deliver(t: import('ava').ExecutionContext, tx: VhostUserFrontend, rx: VhostUserFrontend, f: Buffer): Promise<void> {
  const got = rx.queues[0].submit([], RX_BUF);
  await tx.queues[1].submit([withHeader(f)], 0);
  const c = await got;
  t.is(c.len, HDR + f.length, 'used length: header and frame');
  const data = Buffer.from(c.data);
  t.is(data.readUInt16LE(10), 1, 'num_buffers');
  t.true(data.subarray(HDR, HDR + f.length).equals(f), 'the frame arrived byte for byte');
}

/** The plugin's own bytes (section 1) of a saved device state. */
function pluginState(container: Buffer): Buffer {
  const h = decodeHeader(container.subarray(0, peekHeaderLength(container)));
  if (h.sections[0]?.id !== 1) throw new Error(`the first section is ${h.sections[0]?.id}, not the plugin's (1)`);
  return container.subarray(h.headerLength, h.headerLength + h.sections[0].length);
}

test('counters and the MAC table migrate with the device; frames flow through the destination both ways', async (t) => {
  const a = await connect(sock('a'));
  const b = await connect(sock('b'));
  try {
    await deliver(t, a, b, frame(MAC.a, MAC.b)); // flooded: a has not seen b yet; b learns a
    await deliver(t, b, a, frame(MAC.b, MAC.a)); // b sends to a's port only
    const report = await migrate(b, sock('b2'), { channel: 'pipe' });
    t.true(report.bytes > 0);
    await daemon.waitForLog(/device state loaded/);
    // Through b2: its loaded table entry for a is another port's (stale): flooded, reaches a.
    await deliver(t, b, a, frame(MAC.b, MAC.a));
    // a learned b's new port from that frame: unicast to b2.
    await deliver(t, a, b, frame(MAC.a, MAC.b));

    await b.stopQueue(0);
    await b.stopQueue(1);
    const state = pluginState(await saveState(b.conn));
    t.is(state.subarray(0, 4).toString(), 'VNET');
    const ctr = (i: number) => Number(state.readBigUInt64LE(12 + i * 8));
    // rx frames/bytes 0/1, tx frames/bytes 8/9, tx unicast 14, flooded 15: one of each side of the migration.
    t.deepEqual([ctr(0), ctr(1)], [2, 400], 'two frames received: one by b, one by b2');
    t.deepEqual([ctr(8), ctr(9)], [2, 400], 'two frames sent: one by b, one by b2');
    t.deepEqual([ctr(14), ctr(15)], [1, 1], "b's unicast (it had learned a) and b2's flood (a's entry was stale)");
    const tableAt = 12 + 16 * 8 + 8;
    t.is(state.readUInt32LE(tableAt), 1, 'one MAC learned');
    t.is(state.subarray(tableAt + 4, tableAt + 10).toString('hex'), mac(MAC.a).toString('hex'));
  } finally {
    await Promise.all([a.close(), b.close()]);
  }
});
