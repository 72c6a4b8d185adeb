// Packed virtqueues end to end through the host: a front-end that negotiates
// VIRTIO_F_RING_PACKED gets its requests served from a packed ring, GET_VRING_BASE returns the
// packed base (indexes and wrap counters), and a restart from that base carries on.
import test from 'ava';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { native } from '../host/native/index.ts';
import { VhostUserConnection } from '../host/frontend/connection.ts';
import { GuestRam } from '../host/frontend/driver-memory.ts';
import { PackedDriverRing } from '../host/frontend/rings/packed.ts';
import { decodePackedVringBase } from '../host/virtqueue/packed.ts';
import { VirtioFeature, bit } from '../host/device/features.ts';
import { Host } from '../host/server/index.ts';

const SIZE = 8; // small, so the test wraps the ring many times

let dir: string;
let host: Host;

test.before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'packed-'));
  host = await Host.start([
    {
      label: 'packed',
      listen: { path: join(dir, 'p.sock') },
      source: { kind: 'module', url: new URL('./devices/null-device.ts', import.meta.url).href, options: { mode: 'echo' } },
    },
  ]);
});

test.after.always(async () => {
  await host?.close();
  rmSync(dir, { recursive: true, force: true });
});

async function waitUsed(ring: PackedDriverRing, call: number): Promise<{ head: number; len: number }[]> {
  for (let i = 0; i < 500; i++) {
    const used = ring.getUsed();
    if (used.length > 0) return used;
    native.eventfdRead(call);
    await sleep(2);
  }
  throw new Error('no used buffer came back on the packed ring');
}

test.serial('echo over a packed ring, across many wraps and a stop/restart', async (t) => {
  const conn = await VhostUserConnection.connect(join(dir, 'p.sock'));
  const ram = GuestRam.create({ bytes: 1 << 20 });
  const kick = native.eventfd(0);
  const call = native.eventfd(0);
  try {
    const offered = await conn.getFeatures();
    t.true((offered & bit(VirtioFeature.RING_PACKED)) !== 0n, 'the host offers VIRTIO_F_RING_PACKED');
    await conn.setProtocolFeatures(await conn.getProtocolFeatures());
    await conn.setOwner();
    await conn.setFeatures(bit(VirtioFeature.VERSION_1) | bit(VirtioFeature.RING_PACKED) | bit(VirtioFeature.PROTOCOL_FEATURES) | bit(VirtioFeature.RING_INDIRECT_DESC));
    await conn.setMemTable(ram.memTable());

    const layout = PackedDriverRing.layoutFor(SIZE, 4);
    const gpa = ram.alloc(layout.bytes, 4096);
    let ring = new PackedDriverRing({ size: SIZE, memory: ram.view(gpa, layout.bytes), gpa, eventIdx: false, indirectEntries: 4 });
    const start = async (base?: number) => {
      await conn.setVringNum(0, SIZE);
      if (base !== undefined) await conn.setVringBase(0, base);
      await conn.setVringAddr({
        index: 0,
        flags: 0,
        descUserAddr: BigInt(ram.uva(ring.descGpa)),
        availUserAddr: BigInt(ram.uva(ring.driverEventGpa)),
        usedUserAddr: BigInt(ram.uva(ring.deviceEventGpa)),
        logGuestAddr: 0n,
      });
      await conn.setVringCall(0, call);
      await conn.setVringKick(0, kick);
      await conn.setVringEnable(0, true);
    };
    await start();

    const inBuf = ram.alloc(64);
    const outBuf = ram.alloc(64);
    let served = 0;
    for (let i = 0; i < 5 * SIZE; i++) {
      const msg = Buffer.from(`packed #${i}`);
      ram.view(inBuf, msg.length).set(msg);
      const id = ring.add([{ gpa: inBuf, len: msg.length }], [{ gpa: outBuf, len: 64 }], { indirect: i % 3 === 0 });
      t.not(id, null);
      if (ring.kickNeeded()) native.eventfdWrite(kick);
      const used = await waitUsed(ring, call);
      t.is(used.length, 1);
      t.is(used[0].len, msg.length);
      t.is(Buffer.from(ram.view(outBuf, msg.length)).toString(), msg.toString());
      served++;
    }

    // Stop: the base carries the avail and used positions and both wrap counters.
    const base = await conn.getVringBase(0);
    const decoded = decodePackedVringBase(base, SIZE);
    t.is(decoded.availIdx, ring.availIndex);
    t.is(decoded.availWrap, ring.availWrapCounter);
    t.is(decoded.usedIdx, ring.usedIndex);
    t.is(decoded.usedWrap, ring.usedWrapCounter);

    // Restart from that base with the same ring memory: the device continues where it stopped.
    await start(base);
    const msg = Buffer.from('after restart');
    ram.view(inBuf, msg.length).set(msg);
    ring.add([{ gpa: inBuf, len: msg.length }], [{ gpa: outBuf, len: 64 }]);
    if (ring.kickNeeded()) native.eventfdWrite(kick);
    const used = await waitUsed(ring, call);
    t.is(used[0].len, msg.length);
    t.is(served, 5 * SIZE);
  } finally {
    conn.close();
    ram.close();
    native.close(kick);
    native.close(call);
  }
});
