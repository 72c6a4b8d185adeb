// The virtio-blk plugin through the real host binary: a real socket, real memfd guest RAM,
// a real image file the test reads behind the device's back.
import test, { type ExecutionContext } from 'ava';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BlkDevice, BlkError, BlkStatus, parseBlkConfig, SECTOR } from '../host/frontend/blk.ts';
import { VhostUserFrontend, VIRTIO_F_VERSION_1 } from '../host/frontend/driver.ts';
import { REPO, runCli, startHost, type HostProcess } from './helpers/host-process.ts';
import { loadPlugin } from '../host/plugin/index.ts';
import { MemoryBacking } from '../host/storage/index.ts';
import type { Answer, DeviceAction } from '../host/device/device.ts';

const BLK = join(REPO, 'dist', 'plugins', 'blk.wasm');
const RNG = join(REPO, 'dist', 'plugins', 'rng.wasm');
const IMAGE_BYTES = 8 << 20;
const T = { IN: 0, OUT: 1, FLUSH: 4, GET_ID: 8, DISCARD: 11, WRITE_ZEROES: 13, GET_LIFETIME: 10 };
const F = { SIZE_MAX: 1, SEG_MAX: 2, RO: 5, BLK_SIZE: 6, FLUSH: 9, MQ: 12, DISCARD: 13, WRITE_ZEROES: 14 };
const bit = (b: number) => 1n << BigInt(b);
const FEATURES = [VIRTIO_F_VERSION_1, ...Object.values(F)].reduce((m, b) => m | bit(b), 0n);

let dir: string;
/** tmpfs: the host reads a fully written image there through a mapping of it (host/io/mapped-reads.ts). */
let shmDir: string;
test.before(() => {
  execFileSync(process.execPath, ['build.mjs', '--only', 'plugins'], { cwd: REPO, stdio: 'inherit' });
  dir = mkdtempSync(join(tmpdir(), 'blk-plugin-'));
  shmDir = mkdtempSync('/dev/shm/blk-plugin-');
});
test.after.always(() => {
  rmSync(dir, { recursive: true, force: true });
  rmSync(shmDir, { recursive: true, force: true });
});

function image(name: string, bytes = IMAGE_BYTES, inDir = dir): { path: string; data: Buffer } {
  const path = join(inDir, name);
  const data = randomBytes(bytes);
  writeFileSync(path, data);
  return { path, data };
}

function header(type: number, sector: number | bigint): Buffer {
  const h = Buffer.alloc(16);
  h.writeUInt32LE(type, 0);
  h.writeBigUInt64LE(BigInt(sector), 8);
  return h;
}

function segment(sector: number, sectors: number, flags = 0): Buffer {
  const s = Buffer.alloc(16);
  s.writeBigUInt64LE(BigInt(sector), 0);
  s.writeUInt32LE(sectors, 8);
  s.writeUInt32LE(flags, 12);
  return s;
}

interface Disk {
  host: HostProcess;
  fe: VhostUserFrontend;
  blk: BlkDevice;
  close(): Promise<void>;
}

async function open(storage: string[], queues = [128]): Promise<Disk> {
  const host = await startHost(['--socket-path', '{socket}', '--plugin', BLK, ...storage]);
  let fe: VhostUserFrontend;
  try {
    fe = await VhostUserFrontend.connect(host.socketPath, { memoryBytes: 32 << 20, queues, features: FEATURES, indirect: 128 });
  } catch (e) {
    await host.stop();
    throw e;
  }
  return {
    host,
    fe,
    blk: new BlkDevice(fe.queues[0]),
    async close() {
      await fe.close();
      const code = await host.stop();
      if (code !== 0) throw new Error(`host exited with ${code} on SIGTERM:\n${host.log()}`);
    },
  };
}

/** Status byte of a raw request: the last byte of its writable space. */
async function raw(d: Disk, readable: Uint8Array[], writable: number | number[], queue = 0): Promise<{ status: number; data: Uint8Array; len: number }> {
  const c = await d.fe.queues[queue].submit(readable, writable);
  return { status: c.data[c.data.length - 1], data: c.data, len: c.len };
}

/** The host run to its exit (start-up refusals, --help): SIGKILLed after 20 s if it serves instead. */
const runHost = (args: string[]) => runCli(args, { killAfterMs: 20_000 });

const both = [
  { name: 'file', storage: () => ({ args: ['--storage', image(`disk-${Math.random()}.img`).path] }) },
  { name: 'memory:16M', storage: () => ({ args: ['--storage', 'memory:16M'] }) },
  { name: 'file on tmpfs', storage: () => ({ args: ['--storage', image(`disk-${Math.random()}.img`, IMAGE_BYTES, shmDir).path] }) },
  { name: 'file on tmpfs, --queue-threads 2', threads: 2, storage: () => ({ args: ['--storage', image(`disk-${Math.random()}.img`, IMAGE_BYTES, shmDir).path, '--queue-threads', '2'] }) },
  // Two queue threads, each with its own instance: what one queue wrote, the other reads.
  { name: 'file, --queue-threads 2', threads: 2, storage: () => ({ args: ['--storage', image(`disk-${Math.random()}.img`).path, '--queue-threads', '2'] }) },
  { name: 'memory:16M, --queue-threads 2', threads: 2, storage: () => ({ args: ['--storage', 'memory:16M', '--queue-threads', '2'] }) },
];

for (const kind of both) {
  test.serial(`${kind.name}: config, features and queue count`, async (t) => {
    const d = await open(kind.storage().args);
    try {
      const cfg = parseBlkConfig(await d.fe.getConfig(0, 60));
      t.is(cfg.capacity, (kind.name.startsWith('file') ? IMAGE_BYTES : 16 << 20) / SECTOR);
      t.is(cfg.blkSize, 512);
      t.is(cfg.segMax, 126);
      t.is(cfg.sizeMax, 32768);
      t.true(cfg.segMax * cfg.sizeMax < 4 << 20, 'a conforming driver never exceeds the 4 MiB request limit');
      t.is(cfg.numQueues, 64);
      t.is(d.fe.backendQueues, 64);
      const raw60 = Buffer.from(await d.fe.getConfig(0, 60));
      t.is(raw60.readUInt32LE(36), 65536, 'max_discard_sectors');
      t.is(raw60.readUInt32LE(40), 8, 'max_discard_seg');
      t.is(raw60.readUInt32LE(48), 65536, 'max_write_zeroes_sectors');
      for (const b of [F.SIZE_MAX, F.SEG_MAX, F.BLK_SIZE, F.FLUSH, F.MQ, F.DISCARD, F.WRITE_ZEROES]) t.true(d.fe.hasFeature(b), `feature ${b}`);
      t.false(d.fe.hasFeature(F.RO));
      t.false((d.fe.offeredFeatures & bit(11)) !== 0n, 'CONFIG_WCE is not offered');
    } finally {
      await d.close();
    }
  });

  test.serial(`${kind.name}: write/read patterns across sectors, multi-segment and indirect chains, two queues`, async (t) => {
    const d = await open(kind.storage().args, [128, 128]);
    try {
      const blk1 = new BlkDevice(d.fe.queues[1]);
      const written = new Map<number, Buffer>();
      const jobs: Promise<void>[] = [];
      for (let i = 0; i < 200; i++) {
        const sector = i * 40 + (i % 7);
        const data = randomBytes(SECTOR * (1 + (i % 16)));
        written.set(sector, data);
        const dev = i % 2 ? blk1 : d.blk;
        jobs.push(dev.write(sector, data, { segments: 1 + (i % 5), indirect: i % 3 === 0 }));
      }
      await Promise.all(jobs);
      for (const [sector, data] of written) {
        const back = await (sector % 2 ? d.blk : blk1).read(sector, data.length, { segments: 1 + (sector % 4), indirect: sector % 5 === 0 });
        if (!Buffer.from(back).equals(data)) t.fail(`sector ${sector}: read back differs`);
      }
      const big = randomBytes(1 << 20);
      await d.blk.write(1000, big, { segments: 64, indirect: true });
      t.deepEqual(Buffer.from(await d.blk.read(1000, big.length, { segments: 17 })), big);
      t.deepEqual(Buffer.from(await blk1.read(1000, big.length)), big, 'what queue 0 wrote, queue 1 reads');
      if (kind.threads) t.regex(d.host.log(), new RegExp(`blk runs in ${kind.threads} queue threads`));
    } finally {
      await d.close();
    }
  });

  test.serial(`${kind.name}: requests past the capacity get IOERR and change nothing`, async (t) => {
    const s = kind.storage();
    const d = await open(s.args);
    try {
      const cap = parseBlkConfig(await d.fe.getConfig(0, 60)).capacity;
      const last = await d.blk.read(cap - 1, SECTOR);
      await t.throwsAsync(d.blk.read(cap, SECTOR), { instanceOf: BlkError, message: /IOERR/ });
      await t.throwsAsync(d.blk.read(cap - 1, 2 * SECTOR), { message: /IOERR/ });
      await t.throwsAsync(d.blk.write(cap - 1, Buffer.alloc(2 * SECTOR, 0xab)), { message: /IOERR/ });
      t.is((await raw(d, [header(T.IN, 2n ** 63n)], [SECTOR, 1])).status, BlkStatus.IOERR, 'sector near 2^63');
      t.is((await raw(d, [header(T.OUT, 2n ** 64n - 1n), Buffer.alloc(SECTOR)], 1)).status, BlkStatus.IOERR, 'sector 2^64-1');
      t.is((await raw(d, [header(T.WRITE_ZEROES, 0), segment(cap - 1, 2)], 1)).status, BlkStatus.IOERR);
      t.deepEqual(await d.blk.read(cap - 1, SECTOR), last, 'the last sector is unchanged');
      await d.blk.flush();
      // The plugin refused these itself: the host's own range check never had to.
      t.notRegex(d.host.log(), /out-of-range/);
    } finally {
      await d.close();
    }
    const path = s.args[1];
    if (!path.startsWith('memory:')) t.is(statSync(path).size, IMAGE_BYTES, 'the file did not grow');
  });
}

for (const [where, inDir] of [['file', () => dir], ['file on tmpfs', () => shmDir]] as const) test.serial(`${where}: flushed writes are in the file; discard and write-zeroes zero it; GET_ID`, async (t) => {
  const img = image('durable.img', IMAGE_BYTES, inDir());
  const d = await open(['--storage', img.path]);
  try {
    const data = randomBytes(64 * SECTOR);
    await d.blk.write(100, data, { segments: 3 });
    await d.blk.flush();
    t.deepEqual(readFileSync(img.path).subarray(100 * SECTOR, 164 * SECTOR), data, 'after FLUSH the file holds the write');

    t.is(await d.blk.getId(), 'vhost-wasm-blk');

    t.is((await raw(d, [header(T.WRITE_ZEROES, 0), segment(100, 8), segment(120, 4, 1)], 1)).status, BlkStatus.OK);
    t.is((await raw(d, [header(T.DISCARD, 0), segment(2000, 16)], 1)).status, BlkStatus.OK);
    await d.blk.flush();
    const file = readFileSync(img.path);
    t.true(file.subarray(100 * SECTOR, 108 * SECTOR).every((b) => b === 0), 'write-zeroes zeroed sectors 100-107');
    t.deepEqual(file.subarray(108 * SECTOR, 120 * SECTOR), data.subarray(8 * SECTOR, 20 * SECTOR), 'between the segments untouched');
    t.true(file.subarray(120 * SECTOR, 124 * SECTOR).every((b) => b === 0), 'write-zeroes with UNMAP zeroed 120-123');
    t.true(file.subarray(2000 * SECTOR, 2016 * SECTOR).every((b) => b === 0), 'discard punches a hole: reads back zeroes');
    t.deepEqual(file.subarray(1999 * SECTOR, 2000 * SECTOR), img.data.subarray(1999 * SECTOR, 2000 * SECTOR));
    t.true(Buffer.from(await d.blk.read(100, 8 * SECTOR)).every((b) => b === 0));
    const blocks = statSync(img.path).blocks;
    t.true(Buffer.from(await d.blk.read(1992, 32 * SECTOR)).subarray(8 * SECTOR, 24 * SECTOR).every((b) => b === 0), 'the device reads the discarded sectors as zeroes');
    t.is(statSync(img.path).blocks, blocks, 'reading the hole did not fill it in');

    // Discard with UNMAP (only write-zeroes may carry it), unknown flags, too many segments.
    t.is((await raw(d, [header(T.DISCARD, 0), segment(0, 1, 1)], 1)).status, BlkStatus.UNSUPP);
    t.is((await raw(d, [header(T.WRITE_ZEROES, 0), segment(0, 1, 2)], 1)).status, BlkStatus.UNSUPP);
    const nine = Buffer.concat(Array.from({ length: 9 }, (_, i) => segment(i * 10, 1)));
    t.is((await raw(d, [header(T.DISCARD, 0), nine], 1)).status, BlkStatus.UNSUPP);
    t.is((await raw(d, [header(T.DISCARD, 0), segment(0, 65537)], 1)).status, BlkStatus.IOERR, 'over max_discard_sectors');
    t.is((await raw(d, [header(T.DISCARD, 0), Buffer.alloc(10)], 1)).status, BlkStatus.IOERR, 'partial segment');
    // A bad segment after a good one: nothing is applied.
    t.is((await raw(d, [header(T.WRITE_ZEROES, 0), segment(3000, 1), segment(1 << 30, 1)], 1)).status, BlkStatus.IOERR);
    await d.blk.flush();
    t.deepEqual(readFileSync(img.path).subarray(3000 * SECTOR, 3001 * SECTOR), img.data.subarray(3000 * SECTOR, 3001 * SECTOR));
  } finally {
    await d.close();
  }
});

// Each queue thread maps the tmpfs image in its own executor: a hole punched through one ring
// must stop the mapping in the others too, or their reads fault the hole's pages back in.
test.serial('file on tmpfs, --queue-threads 2: after a discard through ring 0, ring 1 reads zeroes and the hole stays a hole', async (t) => {
  const img = image('threads-discard.img', IMAGE_BYTES, shmDir);
  const d = await open(['--storage', img.path, '--queue-threads', '2'], [128, 128]);
  try {
    const blk1 = new BlkDevice(d.fe.queues[1]);
    // Ring 1's thread has its executor, and its mapping of the image, before the discard.
    t.deepEqual(Buffer.from(await blk1.read(2048, 2048 * SECTOR)), img.data.subarray(2048 * SECTOR, 4096 * SECTOR));
    const allocated = statSync(img.path).blocks;
    t.is((await raw(d, [header(T.DISCARD, 0), segment(2048, 2048)], 1, 0)).status, BlkStatus.OK, 'a 1 MiB discard through ring 0');
    const punched = statSync(img.path).blocks;
    t.true(punched <= allocated - 2048, `the discard punched a 1 MiB hole (${allocated} -> ${punched} blocks)`);
    t.true(Buffer.from(await blk1.read(2048, 2048 * SECTOR)).every((b) => b === 0), 'ring 1 reads the discarded sectors as zeroes');
    t.is(statSync(img.path).blocks, punched, 'reading the hole through ring 1 did not fill it in');
    t.deepEqual(Buffer.from(await blk1.read(4096, 8 * SECTOR)), img.data.subarray(4096 * SECTOR, 4104 * SECTOR), 'past the hole: the image');
    t.regex(d.host.log(), /blk runs in 2 queue threads/);
  } finally {
    await d.close();
  }
});

test.serial('malformed requests are answered without breaking the device', async (t) => {
  const d = await open(['--storage', 'memory:1M']);
  try {
    t.is((await raw(d, [Buffer.alloc(8)], 1)).status, BlkStatus.IOERR, 'short header');
    const none = await d.fe.queues[0].submit([header(T.IN, 0)], []);
    t.is(none.len, 0, 'no writable space: nothing written, used length 0');
    t.is((await raw(d, [header(T.GET_LIFETIME, 0)], [16, 1])).status, BlkStatus.UNSUPP, 'unknown type');
    t.is((await raw(d, [header(99, 0)], 1)).status, BlkStatus.UNSUPP);
    t.is((await raw(d, [header(T.OUT, 0), Buffer.alloc(100)], 1)).status, BlkStatus.IOERR, 'write of a partial sector');
    t.is((await raw(d, [header(T.IN, 0)], [100, 1])).status, BlkStatus.IOERR, 'read of a partial sector');
    const id = await raw(d, [header(T.GET_ID, 0)], [5, 1]);
    t.is(id.status, BlkStatus.OK, 'GET_ID into less than 20 bytes is cut');
    t.is(Buffer.from(id.data.subarray(0, 5)).toString(), 'vhost');
    // Still a working disk afterwards.
    await d.blk.write(3, Buffer.alloc(SECTOR, 7));
    t.deepEqual(Buffer.from(await d.blk.read(3, SECTOR)), Buffer.alloc(SECTOR, 7));
    t.regex(d.host.log(), /shorter than the 16-byte header|without writable space/);
  } finally {
    await d.close();
  }
});

test.serial('a request with more writable space than the device serves gets IOERR, said once; the device keeps serving', async (t) => {
  const d = await open(['--storage', 'memory:8M']);
  try {
    // The plugin never holds the data (WIT 0.2), but a request past SEG_MAX x SIZE_MAX is not one it offered to serve.
    t.is((await raw(d, [header(T.IN, 0)], [5 << 20, 1])).status, BlkStatus.IOERR);
    t.regex(await d.host.waitForLog(/writable space exceeds 4 MiB/), /blk/);
    await d.blk.write(1, Buffer.alloc(SECTOR, 3));
    t.deepEqual(Buffer.from(await d.blk.read(1, SECTOR)), Buffer.alloc(SECTOR, 3));
  } finally {
    await d.close();
  }
});

test.serial('100 queued 1 MiB writes and reads fit the default memory cap of a block plugin', async (t) => {
  const host = await startHost(['--socket-path', '{socket}', '--plugin', BLK, '--storage', 'memory:128M']);
  const fe = await VhostUserFrontend.connect(host.socketPath, { memoryBytes: 256 << 20, queues: [256], features: FEATURES });
  try {
    const blk = new BlkDevice(fe.queues[0]);
    const data = (i: number) => Buffer.alloc(1 << 20, i + 1);
    await Promise.all(Array.from({ length: 100 }, (_, i) => blk.write(i * 2048, data(i))));
    const back = await Promise.all(Array.from({ length: 100 }, (_, i) => blk.read(i * 2048, 1 << 20)));
    t.true(back.every((b, i) => Buffer.from(b).equals(data(i))));
    t.notRegex(host.log(), /out of memory|trapped/);
  } finally {
    await fe.close();
    await host.stop();
  }
});

test.serial('--read-only: RO offered, writes/discards get IOERR and the file is untouched', async (t) => {
  const img = image('ro.img', 1 << 20);
  const d = await open(['--storage', img.path, '--read-only']);
  try {
    t.true(d.fe.hasFeature(F.RO));
    t.false(d.fe.hasFeature(F.DISCARD));
    t.false(d.fe.hasFeature(F.WRITE_ZEROES));
    t.deepEqual(Buffer.from(await d.blk.read(5, 4 * SECTOR)), img.data.subarray(5 * SECTOR, 9 * SECTOR));
    await t.throwsAsync(d.blk.write(5, Buffer.alloc(SECTOR, 1)), { message: /IOERR/ });
    t.is((await raw(d, [header(T.WRITE_ZEROES, 0), segment(0, 8)], 1)).status, BlkStatus.UNSUPP, 'not negotiated');
    await d.blk.flush();
  } finally {
    await d.close();
  }
  t.deepEqual(readFileSync(img.path), img.data);
});

test.serial('start-up refuses missing, unopenable and non-file backings, and storage for a non-block plugin', async (t) => {
  const sock = join(dir, 'never.sock');
  const cases: [string[], RegExp][] = [
    [['--storage', join(dir, 'missing.img')], /--storage .*missing\.img: cannot open for reading and writing.*ENOENT/],
    [['--storage', join(dir, 'missing.img'), '--read-only'], /cannot open for reading: ENOENT/],
    [['--storage', dir], /cannot open .*EISDIR/],
    [['--storage', dir, '--read-only'], /not a regular file/],
    [['--storage', 'memory:lots'], /--storage memory:SIZE: "lots" is not a size/],
    [[], /storage was not granted to this device \(give --storage\)/],
  ];
  for (const [extra, re] of cases) {
    const r = await runHost(['--socket-path', sock, '--plugin', BLK, ...extra]);
    t.not(r.code, 0, extra.join(' '));
    t.regex(r.stderr, re, extra.join(' '));
  }
  const rng = await runHost(['--socket-path', sock, '--plugin', RNG, '--entropy', '--storage', 'memory:1M']);
  t.is(rng.code, 1);
  t.regex(rng.stderr, /was granted storage \(memory:1048576\) but does not import vhost:device\/storage@0\.2\.\d+: it is not a block device/);
  const caps = await runHost(['--print-capabilities', '--plugin', BLK]);
  t.is(caps.code, 0, caps.stderr);
  t.deepEqual(JSON.parse(caps.stdout), { type: 'block', features: ['read-only'] });
});

test.serial('the libvirt descriptor follows vhost-user.json', (t: ExecutionContext) => {
  const d = JSON.parse(readFileSync(join(REPO, 'docs', 'interop', '50-vhost-wasm-blk.json'), 'utf8'));
  t.is(d.type, 'block');
  t.is(typeof d.description, 'string');
  t.true(typeof d.binary === 'string' && d.binary.startsWith('/'));
});

test.serial('what the blk plugin answers (WIT 0.2): backing-read for reads, a transfer from byte 16 for writes, barrier + flush op for flush, one op per segment', async (t) => {
  const dev = await loadPlugin(readFileSync(BLK), { grants: { storage: new MemoryBacking(1 << 20, false), log: () => {} } });
  t.like(dev.info, { prefixLen: 16 + 8 * 16, queuesIndependent: true }, 'the header and up to 8 discard segments; every queue stands alone');
  dev.activate(FEATURES);
  let id = 1;
  const ask = (readable: Buffer, readableLen: number, writableLen: number): Answer => {
    const actions: DeviceAction[] = dev.handle([{ kind: 'request', request: { id, queue: 0, prefix: readable.subarray(0, dev.info.prefixLen), readableLen, writableLen } }]);
    const a = actions[0];
    if (actions.length !== 1 || a.kind !== 'answer' || a.answer.id !== id) throw new Error(`not one answer to ${id}: ${JSON.stringify(actions)}`);
    id++;
    return a.answer;
  };
  const read = ask(header(T.IN, 8), 16, 4096 + 1);
  t.deepEqual(read.reply, [{ kind: 'backing-read', extent: { backing: 0, offset: 8 * SECTOR, len: 4096 } }, { kind: 'bytes', bytes: new Uint8Array([BlkStatus.OK]) }]);
  t.deepEqual([read.transfers, read.ops, read.barrier], [[], [], false]);
  const write = ask(header(T.OUT, 3), 16 + 1024, 1);
  t.deepEqual(write.transfers, [{ source: 16, to: { backing: 0, offset: 3 * SECTOR, len: 1024 } }], 'the payload never enters the plugin');
  t.deepEqual(write.reply, [{ kind: 'bytes', bytes: new Uint8Array([BlkStatus.OK]) }]);
  const flush = ask(header(T.FLUSH, 0), 16, 1);
  t.true(flush.barrier);
  t.deepEqual(flush.ops, [{ kind: 'flush', backing: 0, offset: 0, len: 0 }]);
  const segs = Buffer.concat([header(T.DISCARD, 0), segment(10, 2), segment(100, 4)]);
  t.deepEqual(ask(segs, segs.length, 1).ops, [
    { kind: 'discard', backing: 0, offset: 10 * SECTOR, len: 2 * SECTOR },
    { kind: 'discard', backing: 0, offset: 100 * SECTOR, len: 4 * SECTOR },
  ]);
  // Past the disk: IOERR with nothing for the host to do.
  const past = ask(header(T.IN, 1 << 20), 16, SECTOR + 1);
  t.deepEqual([past.transfers, past.ops, past.reply.map((p) => p.kind)], [[], [], ['skip', 'bytes']]);
  // The backing failed that write: the plugin answers IOERR in the status byte.
  const failedId = id;
  ask(header(T.OUT, 0), 16 + SECTOR, 1);
  const again = dev.handle([{ kind: 'io-failed', id: failedId, errno: 28 }]);
  t.deepEqual(again, [{ kind: 'answer', answer: { id: failedId, transfers: [], ops: [], reply: [{ kind: 'bytes', bytes: new Uint8Array([BlkStatus.IOERR]) }], lengthAt: null, barrier: false } }]);
});
