// Inflight tracking for packed rings against the real host process: a front-end that acks
// VIRTIO_F_RING_PACKED gets a packed-format area (QEMU acks features before GET_INFLIGHT_FD);
// a host SIGKILLed with requests in flight, after the ring has wrapped, is succeeded by one that
// resubmits exactly those (each completes once) and continues at the right ring position; and a
// corrupted area (a bad field at SET_INFLIGHT_FD, a broken list at ring start) is refused with
// the reason in the log: the device then resubmits nothing and serves from the ring.
import test, { type ExecutionContext } from 'ava';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { native } from '../host/native/index.ts';
import type { Mapping } from '../host/native/api.ts';
import { VhostUserConnection } from '../host/frontend/connection.ts';
import { GuestRam } from '../host/frontend/driver-memory.ts';
import { PackedDriverRing } from '../host/frontend/rings/packed.ts';
import { encodePackedVringBase } from '../host/virtqueue/packed.ts';
import { VirtioFeature, bit } from '../host/device/features.ts';
import { ProtocolFeature, featureBit } from '../host/protocol/constants.ts';
import { INFLIGHT_VERSION } from '../host/virtqueue/inflight.ts';
import { PackedInflightRegion, packedInflightAreaBytes } from '../host/virtqueue/inflight-packed.ts';
import { NULL_DEVICE, eventually, startHost, type HostProcess } from './helpers/host-process.ts';

const SIZE = 8;
const FEATURES = bit(VirtioFeature.VERSION_1) | bit(VirtioFeature.RING_PACKED) | bit(VirtioFeature.PROTOCOL_FEATURES) | bit(VirtioFeature.RING_INDIRECT_DESC);

let dir: string;
test.before(() => {
  dir = mkdtempSync(join(tmpdir(), 'inflight-packed-'));
});
test.after.always(() => rmSync(dir, { recursive: true, force: true }));
let n = 0;
const socketPath = () => join(dir, `dev${n++}.sock`);

function host(sock: string, hang = false): Promise<HostProcess> {
  return startHost(['--socket-path', sock, '--device-module', NULL_DEVICE, '--call-deadline', '600000'], { env: hang ? { VHOST_WASM_TEST_HANG_ON: 'hang' } : {} });
}

/** The guest side that outlives back-ends: memory, one packed ring, eventfds and the inflight area. */
class Guest {
  readonly ram = GuestRam.create({ bytes: 1 << 20 });
  readonly kick = native.eventfd(0);
  readonly call = native.eventfd(0);
  readonly ring: PackedDriverRing;
  readonly bufs: { inGpa: number; outGpa: number }[] = [];
  area: { fd: number; size: number; mapping: Mapping; bytes: Uint8Array } | null = null;
  conn: VhostUserConnection | null = null;

  constructor() {
    const layout = PackedDriverRing.layoutFor(SIZE, 4);
    const gpa = this.ram.alloc(layout.bytes, 4096);
    this.ring = new PackedDriverRing({ size: SIZE, memory: this.ram.view(gpa, layout.bytes), gpa, eventIdx: false, indirectEntries: 4 });
    for (let i = 0; i < SIZE; i++) this.bufs.push({ inGpa: this.ram.alloc(64), outGpa: this.ram.alloc(64) });
  }

  /** The region as the host laid it out: desc_num entries (the device's largest ring), not SIZE. */
  region(): PackedInflightRegion {
    return new PackedInflightRegion(this.area!.bytes, this.descNum(), 0);
  }

  descNum(): number {
    return new DataView(this.area!.bytes.buffer, this.area!.bytes.byteOffset).getUint16(10, true);
  }

  /**
   * Sets the device up as QEMU's vhost-user-blk start does (features, then the inflight area,
   * memory, ring), with the ring's base at `base`. Resolves with SET_INFLIGHT_FD's error, if refused.
   */
  async connect(sock: string, base?: number): Promise<string | null> {
    const conn = VhostUserConnection.connect(sock);
    this.conn = conn;
    await conn.getFeatures();
    const offered = await conn.getProtocolFeatures();
    await conn.setProtocolFeatures(offered & (featureBit(ProtocolFeature.REPLY_ACK) | featureBit(ProtocolFeature.INFLIGHT_SHMFD)));
    await conn.setOwner();
    await conn.setFeatures(FEATURES);
    if (this.area === null) {
      const got = await conn.getInflightFd(1, SIZE);
      if (got.fd === null) throw new Error('no inflight area');
      const mapping = native.mmap(got.fd, got.size, got.offset, true);
      this.area = { fd: got.fd, size: got.size, mapping, bytes: new Uint8Array(mapping.window(0, got.size)) };
    }
    let refused: string | null = null;
    try {
      await conn.setInflightFd(this.area.fd, this.area.size, 0, 1, SIZE);
    } catch (e) {
      refused = (e as Error).message;
    }
    await conn.setMemTable(this.ram.memTable());
    await conn.setVringNum(0, SIZE);
    if (base !== undefined) await conn.setVringBase(0, base);
    const r = this.ring;
    await conn.setVringAddr({
      index: 0,
      flags: 0,
      descUserAddr: BigInt(this.ram.uva(r.descGpa)),
      availUserAddr: BigInt(this.ram.uva(r.driverEventGpa)),
      usedUserAddr: BigInt(this.ram.uva(r.deviceEventGpa)),
      logGuestAddr: 0n,
    });
    await conn.setVringCall(0, this.call);
    await conn.setVringKick(0, this.kick);
    await conn.setVringEnable(0, true);
    return refused;
  }

  /** After the back-end died: QEMU can only restart the ring at its used position (avail = used). */
  baseAfterCrash(): number {
    const r = this.ring;
    return encodePackedVringBase({ availIdx: r.usedIndex, availWrap: r.usedWrapCounter, usedIdx: r.usedIndex, usedWrap: r.usedWrapCounter });
  }

  /** Queues an echo request saying `text` from buffer pair `slot` (2 descriptors, or 1 indirect) and kicks; returns its buffer id. */
  send(text: string, slot: number, indirect = false, kick = true): number {
    const b = this.bufs[slot];
    const msg = new TextEncoder().encode(text);
    this.ram.view(b.inGpa, msg.length).set(msg);
    const id = this.ring.add([{ gpa: b.inGpa, len: msg.length }], [{ gpa: b.outGpa, len: 64 }], { indirect });
    if (id === null) throw new Error('ring full');
    if (kick) native.eventfdWrite(this.kick);
    return id;
  }

  /** Waits for `count` used buffers (getUsed throws on an id that is not in flight: a double completion). */
  async used(count: number): Promise<{ head: number; len: number }[]> {
    const out: { head: number; len: number }[] = [];
    for (let i = 0; i < 2000 && out.length < count; i++) {
      out.push(...this.ring.getUsed());
      if (out.length < count) await sleep(5);
    }
    if (out.length < count) throw new Error(`only ${out.length} of ${count} used buffers came back`);
    await sleep(50);
    out.push(...this.ring.getUsed());
    return out;
  }

  reply(slot: number, len: number): string {
    return new TextDecoder().decode(this.ram.view(this.bufs[slot].outGpa, len));
  }

  async close(): Promise<void> {
    if (this.conn) {
      this.conn.close();
      await this.conn.closed;
    }
    if (this.area) {
      this.area.mapping.unmap();
      native.close(this.area.fd);
    }
    this.ram.close();
    native.close(this.kick);
    native.close(this.call);
  }
}

/** A host with two hanging requests in flight on a ring that has wrapped, SIGKILLed; the guest keeps everything. */
async function crashWithTwoInFlight(t: ExecutionContext, sock: string): Promise<{ g: Guest; ids: number[] }> {
  const h1 = await host(sock, true);
  const g = new Guest();
  let ids: number[] = [];
  try {
    t.is(await g.connect(sock), null);
    t.is(g.region().version, INFLIGHT_VERSION, 'the ring start initialised the packed region');
    // 15 requests of 2 descriptors (every fourth indirect: 1) take 26 slots: the second lap of 8.
    for (let i = 0; i < 15; i++) {
      g.send(`echo #${i}`, 0, i % 4 === 0);
      const u = await g.used(1);
      t.is(u.length, 1);
      t.is(g.reply(0, u[0].len), `echo #${i}`);
    }
    t.is(g.ring.usedWrapCounter, false, 'the ring is on its second lap');
    // One kick for both, so that the host pops both into the batch that never finishes (kicked
    // one by one, it may hang on the first before it sees the second).
    ids = [g.send('hang-1', 1, false, false), g.send('hang-2', 2, true, false)];
    native.eventfdWrite(g.kick);
    t.true(await eventually(() => g.region().inflightIds().length === 2, 10_000), 'both requests marked in flight');
  } finally {
    await h1.stop('SIGKILL');
  }
  if (g.conn) {
    g.conn.close();
    await g.conn.closed;
    g.conn = null;
  }
  return { g, ids };
}

test('GET_INFLIGHT_FD after a packed ring was acked hands out the packed format', async (t) => {
  const h = await host(socketPath());
  const g = new Guest();
  try {
    t.is(await g.connect(h.socketPath), null);
    // Entries for the device's largest ring (the null device's 1024), whatever queue size was asked for.
    t.is(g.area!.size, packedInflightAreaBytes(1, 1024));
    t.is(g.area!.size, 32 + 32 * 1024 + 32, '32-byte header and entries, 64-byte aligned');
    await h.waitForLog(/inflight area: 32832 bytes for 1 packed queue\(s\) of up to 1024 \(asked for 8\)/);
    const r = g.region();
    t.is(r.version, INFLIGHT_VERSION);
    t.is(r.descNum, 1024);
    g.send('one', 0);
    const u = await g.used(1);
    t.is(g.reply(0, u[0].len), 'one');
    t.deepEqual(r.inflightIds(), []);
    t.is(r.usedIdx, 2, 'used index follows the ring: one request of two descriptors');
  } finally {
    await g.close();
    await h.stop();
  }
});

test('a host killed with requests in flight on a wrapped packed ring: its successor resubmits exactly those, each completes once', async (t) => {
  const sock = socketPath();
  const { g, ids } = await crashWithTwoInFlight(t, sock);
  const h2 = await host(sock);
  try {
    t.is(await g.connect(sock, g.baseAfterCrash()), null);
    const u = await g.used(2);
    t.is(u.length, 2, 'exactly the two in-flight requests completed, once each');
    t.deepEqual(u.map((x) => x.head), ids, 'in the order they were popped');
    t.deepEqual([g.reply(1, u[0].len), g.reply(2, u[1].len)], ['hang-1', 'hang-2']);
    await h2.waitForLog(/ring 0: resubmitting 2 in-flight request\(s\) from the inflight area, oldest first/);
    await h2.waitForLog(/ring 0: continuing at packed vring base 0x[0-9a-f]+ \(the area's used index \+ in flight\)/);
    t.deepEqual(g.region().inflightIds(), []);
    // New requests go on after the resubmitted ones.
    g.send('after', 3);
    const after = await g.used(1);
    t.is(after.length, 1);
    t.is(g.reply(3, after[0].len), 'after');
  } finally {
    await g.close();
    await h2.stop();
  }
});

test('a corrupted packed area is refused with the reason in the log; the device resubmits nothing and serves from the ring', async (t) => {
  // A bad field: refused at SET_INFLIGHT_FD.
  {
    const sock = socketPath();
    const { g } = await crashWithTwoInFlight(t, sock);
    new DataView(g.area!.bytes.buffer, g.area!.bytes.byteOffset).setUint16(8, 9, true); // version
    const h2 = await host(sock);
    try {
      const err = await g.connect(sock, g.baseAfterCrash());
      t.truthy(err, 'SET_INFLIGHT_FD refused');
      await h2.waitForLog(/SET_INFLIGHT_FD \(32\) failed: queue 0: packed inflight region version is 9, this back-end reads version 1/);
      // Without an area the ring runs from the front-end's base: both requests are taken from the ring again.
      const u = await g.used(2);
      t.is(u.length, 2);
      t.notRegex(h2.log(), /resubmitting \d/);
    } finally {
      await g.close();
      await h2.stop();
    }
  }
  // A broken list (an in-flight chain running into the free list): refused when the ring starts.
  {
    const sock = socketPath();
    const { g } = await crashWithTwoInFlight(t, sock);
    const dv = new DataView(g.area!.bytes.buffer, g.area!.bytes.byteOffset);
    const heads: number[] = [];
    for (let e = 0; e < g.descNum(); e++) if (g.area!.bytes[32 + 32 * e] === 1) heads.push(e);
    t.is(heads.length, 2);
    // hang-1's chain (two descriptors) now continues into the first free entry.
    const twoDesc = heads.find((e) => dv.getUint16(32 + 32 * e + 6, true) === 2)!;
    dv.setUint16(32 + 32 * twoDesc + 2, dv.getUint16(14, true), true);
    const h2 = await host(sock);
    try {
      t.is(await g.connect(sock, g.baseAfterCrash()), null);
      await h2.waitForLog(/ring 0: inflight area not used: queue 0: in-flight entry \d+'s chain runs into entry \d+, which is free; the ring starts without resubmitting anything/);
      const u = await g.used(2);
      t.is(u.length, 2);
      t.notRegex(h2.log(), /resubmitting \d/);
    } finally {
      await g.close();
      await h2.stop();
    }
  }
});
