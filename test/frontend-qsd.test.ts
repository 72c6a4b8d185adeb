// The front-end driver against a back-end we did not write: qemu-storage-daemon's
// vhost-user-blk export (libvhost-user underneath), over a real socket with real memfds.
import test from 'ava';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BlkDevice, parseBlkConfig, SECTOR } from '../host/frontend/blk.ts';
import { VhostUserFrontend, VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1, type FrontendOptions } from '../host/frontend/driver.ts';
import { Req } from '../host/protocol/requests.ts';
import { startStorageDaemon, type StorageDaemon } from './guest/storage-daemon.ts';
import { fdSnapshot, fdsOpenedSince } from './helpers/fd-snapshot.ts';

const IMAGE_BYTES = 8 << 20;
const VIRTIO_BLK_F_FLUSH = 9n;

let dir: string;
let image: string;
let pattern: Buffer;
let qsd: StorageDaemon;

test.before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'frontend-qsd-'));
  image = join(dir, 'disk.img');
  pattern = randomBytes(IMAGE_BYTES);
  writeFileSync(image, pattern);
  qsd = await startStorageDaemon({ image, socketPath: join(dir, 'blk.sock'), writable: true });
});

test.after.always(async () => {
  await qsd?.stop();
  rmSync(dir, { recursive: true, force: true });
});

const base: FrontendOptions = {
  memoryBytes: 32 << 20,
  queues: [128],
  features: (1n << BigInt(VIRTIO_F_VERSION_1)) | (1n << VIRTIO_BLK_F_FLUSH),
  eventIdx: true,
  indirect: true,
};

/** Runs `body` on a fresh connection and checks the test process ends with the fds it had. */
async function session(t: { deepEqual: (a: unknown, b: unknown, m?: string) => void }, opts: Partial<FrontendOptions>, body: (fe: VhostUserFrontend, blk: BlkDevice) => Promise<void>): Promise<void> {
  const before = fdSnapshot();
  const fe = await VhostUserFrontend.connect(qsd.socketPath, { ...base, ...opts });
  try {
    await body(fe, new BlkDevice(fe.queues[0]));
  } finally {
    await fe.close();
  }
  t.deepEqual(fdsOpenedSince(before), [], 'fds opened in the test process between connect and close');
}

const slice = (sector: number, len: number) => pattern.subarray(sector * SECTOR, sector * SECTOR + len);

test.serial('handshake follows QEMU order and negotiates EVENT_IDX, INDIRECT, REPLY_ACK, CONFIG', async (t) => {
  // One warm-up connection: libuv opens its own fds (epoll, signal pipe) on first use.
  await session(t, {}, async () => {});
  await session(t, {}, async (fe) => {
    t.deepEqual(fe.conn.history, [
      Req.GET_FEATURES, Req.GET_PROTOCOL_FEATURES, Req.SET_PROTOCOL_FEATURES, Req.GET_QUEUE_NUM,
      Req.SET_BACKEND_REQ_FD, Req.SET_OWNER, Req.SET_FEATURES, Req.SET_MEM_TABLE,
      Req.SET_VRING_NUM, Req.SET_VRING_BASE, Req.SET_VRING_ADDR, Req.SET_VRING_KICK, Req.SET_VRING_CALL,
      Req.SET_VRING_ENABLE,
    ]);
    t.true(fe.hasFeature(VIRTIO_F_EVENT_IDX));
    t.true(fe.hasFeature(VIRTIO_F_INDIRECT_DESC));
    t.true(fe.queues[0].ring.eventIdx);
    t.true(fe.conn.hasProtocol(3), 'REPLY_ACK');
    t.true(fe.conn.hasProtocol(9), 'CONFIG');
    t.not(fe.backend, null, 'back-end request socket set up');
    t.is(fe.backendQueues, 1);
  });
});

test.serial('reads the image back: single, multi-descriptor and indirect chains; GET_VRING_BASE counts them', async (t) => {
  await session(t, {}, async (fe, blk) => {
    t.deepEqual(Buffer.from(await blk.read(0, SECTOR)), slice(0, SECTOR));
    t.deepEqual(Buffer.from(await blk.read(7, 8 * SECTOR)), slice(7, 8 * SECTOR));
    t.deepEqual(Buffer.from(await blk.read(100, 16 * SECTOR, { segments: 5 })), slice(100, 16 * SECTOR));
    t.deepEqual(Buffer.from(await blk.read(333, 32 * SECTOR, { segments: 7, indirect: true })), slice(333, 32 * SECTOR));
    t.deepEqual(Buffer.from(await blk.read(2000, 4096, { indirect: true })), slice(2000, 4096));
    const last = IMAGE_BYTES / SECTOR - 8;
    t.deepEqual(Buffer.from(await blk.read(last, 8 * SECTOR, { segments: 2 })), slice(last, 8 * SECTOR));
    t.is(await fe.stopQueue(0), 6);
    t.is(fe.queues[0].added, 6);
  });
});

test.serial('a mismatching read is caught (the comparison can fail)', async (t) => {
  await session(t, {}, async (_fe, blk) => {
    const got = Buffer.from(await blk.read(10, SECTOR));
    t.notDeepEqual(got, slice(11, SECTOR));
  });
});

test.serial('many requests in flight: more than the ring holds, all complete with the right data', async (t) => {
  await session(t, { queues: [16] }, async (fe, blk) => {
    const n = 200;
    const sectors = Array.from({ length: n }, (_, i) => (i * 37) % (IMAGE_BYTES / SECTOR - 8));
    const got = await Promise.all(sectors.map((s, i) => blk.read(s, 4096, { segments: 1 + (i % 3), indirect: i % 2 === 0 })));
    for (let i = 0; i < n; i++) {
      if (!Buffer.from(got[i]).equals(slice(sectors[i], 4096))) t.fail(`request ${i} (sector ${sectors[i]}) read wrong data`);
    }
    t.is(await fe.stopQueue(0), n);
    t.true(fe.queues[0].kicks <= n);
  });
});

test.serial('writes land in the image file (direct and indirect chains), then flush', async (t) => {
  const a = randomBytes(8 * SECTOR);
  const b = randomBytes(24 * SECTOR);
  await session(t, {}, async (fe, blk) => {
    await blk.write(512, a, { segments: 3 });
    await blk.write(4096, b, { segments: 4, indirect: true });
    await blk.flush();
    const file = readFileSync(image);
    t.deepEqual(file.subarray(512 * SECTOR, 512 * SECTOR + a.length), a);
    t.deepEqual(file.subarray(4096 * SECTOR, 4096 * SECTOR + b.length), b);
    t.deepEqual(Buffer.from(await blk.read(4096, b.length)), b);
    t.is(await fe.stopQueue(0), 4);
  });
  a.copy(pattern, 512 * SECTOR);
  b.copy(pattern, 4096 * SECTOR);
});

test.serial('GET_CONFIG reports the capacity; GET_ID the serial', async (t) => {
  await session(t, {}, async (fe, blk) => {
    const cfg = parseBlkConfig(await fe.getConfig(0, 60));
    t.is(cfg.capacity, IMAGE_BYTES / SECTOR);
    t.is(cfg.blkSize, 512);
    t.is(await blk.getId(), 'vhost_user_blk');
  });
});

test.serial('split guest RAM: two regions in one memfd at different offsets with a GPA gap', async (t) => {
  await session(t, { memoryBytes: 8 << 20, memory: { regionBytes: 4 << 20, sharedFd: true, gpaGap: 1 << 20 } }, async (fe, blk) => {
    t.is(fe.memory.regions.length, 2);
    t.is(fe.memory.regions[1].mmapOffset, 4 << 20);
    t.is(fe.memory.regions[1].gpa, 5 << 20);
    // Fill region 0 so requests are placed in region 1.
    const filler = fe.memory.tryAlloc(fe.memory.regions[0].alloc.available, 1);
    t.true(filler >= 0);
    t.deepEqual(Buffer.from(await blk.read(50, 4096, { segments: 2 })), slice(50, 4096));
    fe.memory.free(filler);
  });
});

test.serial('memory by ADD_MEM_REG (CONFIGURE_MEM_SLOTS) instead of SET_MEM_TABLE', async (t) => {
  await session(t, { addMemReg: true, memoryBytes: 8 << 20, memory: { regionBytes: 4 << 20 } }, async (fe, blk) => {
    t.true(fe.conn.history.includes(Req.GET_MAX_MEM_SLOTS));
    t.is(fe.conn.history.filter((c) => c === Req.ADD_MEM_REG).length, 2);
    t.false(fe.conn.history.includes(Req.SET_MEM_TABLE));
    t.deepEqual(Buffer.from(await blk.read(64, 4096, { indirect: true })), slice(64, 4096));
  });
});

test.serial('without EVENT_IDX and INDIRECT the same reads work (flag-based notification)', async (t) => {
  await session(t, { eventIdx: false, indirect: false }, async (fe, blk) => {
    t.false(fe.hasFeature(VIRTIO_F_EVENT_IDX));
    t.false(fe.hasFeature(VIRTIO_F_INDIRECT_DESC));
    const got = await Promise.all([0, 8, 16, 24].map((s) => blk.read(s, 4096, { segments: 2 })));
    got.forEach((g, i) => t.deepEqual(Buffer.from(g), slice(i * 8, 4096)));
    t.is(await fe.stopQueue(0), 4);
  });
});
