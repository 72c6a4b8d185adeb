// The blk plugin with a 256 MiB memory disk migrates between two real host processes, the disk
// travelling as state section 0x100, through every state channel: a pipe (what QEMU uses), a
// front-end memfd, the source back-end's own returned memfd, and the experimental RFC shm area.
//
// Each run: fill the whole disk through the rings on the source (1 MiB writes, a pattern per MiB),
// then keep 16 writers overwriting blocks spread over the disk (each writer owns its blocks and
// rewrites them with increasing versions, so an old write executed twice would show as stale
// data) right up to the stop and through it; migrate with host/frontend/migrate.ts; after the
// destination runs, every writer submits a few more; then read all 256 MiB back through the
// destination and compare with the model built from acknowledged writes. A lost request never
// completes (the test times out); one executed twice either breaks the used ring (the driver
// fails the queue on a used entry it did not submit) or leaves stale bytes.
import test from 'ava';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { REPO, startHost, type HostProcess } from './helpers/host-process.ts';
import { parallel } from './helpers/precopy-frontend.ts';
import { BlkDevice } from '../host/frontend/blk.ts';
import { FRONTEND_PROTOCOL_FEATURES, VhostUserFrontend, VIRTIO_F_VERSION_1 } from '../host/frontend/driver.ts';
import { migrate, MigrationError, type StateChannelMode } from '../host/frontend/migrate.ts';
import { featureBit } from '../host/protocol/constants.ts';
import { RFC_STATE_SHM_PROTOCOL_FEATURE } from '../host/protocol/rfc-state-shm.ts';

const BLK = join(REPO, 'dist', 'plugins', 'blk.wasm');
const maybe = existsSync(BLK) ? test.serial : test.serial.skip;

const DISK = 256 << 20;
const MIB = 1 << 20;
const BLOCK = 64 << 10;
const WRITERS = 16;
const BLOCKS_PER_WRITER = 24;
const AFTER = 4;
const START_INDEX = 0xff80; // the ring's 16-bit index wraps during the run

function blkHost(storage: string, flags: string[] = []): Promise<HostProcess> {
  return startHost(['--socket-path', '{socket}', '--plugin', BLK, '--storage', storage, ...flags]);
}

/** The fill pattern of MiB m (version 0): a text line naming it, repeated. */
function fillPattern(m: number): Buffer {
  return Buffer.alloc(MIB, `fill MiB ${m} of the source disk\n`);
}

function blockPattern(block: number, version: number): Buffer {
  return Buffer.alloc(BLOCK, `block ${block} version ${version};`);
}

interface Channel {
  name: string;
  mode: StateChannelMode;
  /** Host flags of the source and the destination. */
  srcFlags?: string[];
  dstFlags?: string[];
  rfc?: boolean;
  /** What the source logs about the channel it wrote. */
  srcLog: RegExp;
  dstLog: RegExp;
}

const RFC_FLAGS = ['--experimental-rfc-state-shm'];
const CHANNELS: Channel[] = [
  { name: 'pipe', mode: 'pipe', srcLog: /device state saved: \d+ bytes .* through a pipe/, dstLog: /device state loaded: \d+ bytes through a pipe/ },
  { name: 'front-end memfd', mode: 'memfd', srcLog: /device state saved: \d+ bytes .* through a file/, dstLog: /device state loaded: \d+ bytes through a file/ },
  {
    name: 'back-end memfd',
    mode: 'pipe',
    srcFlags: ['--state-return-memfd'],
    srcLog: /device state saved: \d+ bytes .* through a file/,
    dstLog: /device state loaded: \d+ bytes through a pipe/,
  },
  {
    name: 'RFC shm',
    mode: 'rfc-shm',
    srcFlags: RFC_FLAGS,
    dstFlags: RFC_FLAGS,
    rfc: true,
    srcLog: /device state saved: \d+ bytes through the RFC shm area/,
    dstLog: /device state loaded: \d+ bytes through the RFC shm area/,
  },
];

function connect(h: HostProcess, rfc = false): Promise<VhostUserFrontend> {
  return VhostUserFrontend.connect(h.socketPath, {
    memoryBytes: 64 << 20,
    queues: [128],
    features: 1n << BigInt(VIRTIO_F_VERSION_1),
    startIndex: START_INDEX,
    protocolFeatures: FRONTEND_PROTOCOL_FEATURES | (rfc ? featureBit(RFC_STATE_SHM_PROTOCOL_FEATURE) : 0n),
  });
}


for (const ch of CHANNELS) {
  maybe(`blk, 256 MiB memory disk, over a ${ch.name}: byte-identical, every acked write present, rings continuous`, async (t) => {
    t.timeout(120_000);
    const [a, b] = await Promise.all([blkHost('memory:256M', ch.srcFlags), blkHost('memory:256M', ch.dstFlags)]);
    const fe = await connect(a, ch.rfc);
    try {
      const blk = new BlkDevice(fe.queues[0]);
      const model = Buffer.alloc(DISK);
      const t0 = performance.now();
      await parallel(DISK / MIB, 8, async (m) => {
        const p = fillPattern(m);
        await blk.write((m * MIB) / 512, p);
        p.copy(model, m * MIB);
      });
      const fillMs = performance.now() - t0;

      // Writers: writer w owns blocks w, w + 16, ... spread over the disk (stride 167 blocks).
      const stride = Math.floor(DISK / BLOCK / (WRITERS * BLOCKS_PER_WRITER));
      const owned = (w: number) => Array.from({ length: BLOCKS_PER_WRITER }, (_, k) => (k * WRITERS + w) * stride + (w % stride));
      let phase: 'source' | 'migrating' | 'after' = 'source';
      const counts = { source: 0, migrating: 0, after: 0 };
      let submitted = 0;
      let acked = 0;
      const writers = Array.from({ length: WRITERS }, async (_, w) => {
        const blocks = owned(w);
        let afterLeft = AFTER;
        for (let v = 1; ; v++) {
          if (phase === 'after' && afterLeft-- <= 0) return;
          const blockNo = blocks[v % blocks.length];
          const p = blockPattern(blockNo, v);
          const at = phase;
          submitted++;
          await blk.write((blockNo * BLOCK) / 512, p);
          acked++;
          counts[at]++;
          p.copy(model, blockNo * BLOCK);
        }
      });
      // Let the writers run on the source for a while, then migrate under them.
      while (acked < 300) await new Promise((r) => setTimeout(r, 5));
      let inFlightAtStop = -1;
      let ackedAtStop = -1;
      let submittedAtStop = -1;
      let submittedAfterStop = -1;
      const report = await migrate(fe, b.socketPath, {
        channel: ch.mode,
        onStep: (s) => {
          if (s === 'stop-source') {
            phase = 'migrating';
            inFlightAtStop = fe.queues[0].inFlight;
            ackedAtStop = acked;
            submittedAtStop = submitted;
          }
          // GET_VRING_BASE answered for every ring: nothing submitted later reached the source.
          if (s === 'transfer') submittedAfterStop = submitted;
        },
      });
      phase = 'after';
      await Promise.all(writers);
      t.is(acked, submitted, 'every submitted write was acknowledged');
      t.true(counts.after >= WRITERS * AFTER, `${counts.after} writes after the migration`);

      // Read everything back through the destination.
      const t1 = performance.now();
      const bad: number[] = [];
      await parallel(DISK / MIB, 8, async (m) => {
        const got = await blk.read((m * MIB) / 512, MIB);
        if (!Buffer.from(got.buffer, got.byteOffset, got.length).equals(model.subarray(m * MIB, (m + 1) * MIB))) bad.push(m);
      });
      const readMs = performance.now() - t1;
      t.deepEqual(bad.sort((x, y) => x - y), [], `MiB(s) differing from the acknowledged writes: ${bad.slice(0, 10).join(', ')}`);

      // Ring indexes: the destination continued exactly where the source stopped; every request
      // the driver placed was used exactly once (no completion is missing or extra).
      const q = fe.queues[0];
      t.is(q.inFlight, 0);
      t.is(q.added, DISK / MIB + submitted + DISK / MIB, 'fill + writes + read-back requests');
      t.is(await fe.stopQueue(0), (START_INDEX + q.added) & 0xffff);
      // The source stopped after every request it had acknowledged and before any it had not seen.
      const processed = (report.bases[0] - START_INDEX) & 0xffff;
      t.true(
        processed >= DISK / MIB + ackedAtStop && processed <= DISK / MIB + submittedAfterStop,
        `base ${report.bases[0]}: ${processed} processed; acked ${ackedAtStop} when the stop began, submitted ${submittedAfterStop} when it ended`,
      );
      t.true(report.bytes > DISK, `moved ${report.bytes} bytes`);
      t.regex(a.log(), ch.srcLog);
      t.regex(b.log(), ch.dstLog);
      if (ch.name === 'back-end memfd') t.true(report.sourceReturnedFd);
      t.log(
        `${ch.name}: fill ${fillMs.toFixed(0)} ms; ${counts.source} writes on the source, ${counts.migrating} straddling the stop ` +
          `(${inFlightAtStop} in flight when the stop began, ${submittedAfterStop - submittedAtStop} submitted during GET_VRING_BASE), ${counts.after} after; ${report.bytes} state bytes, transfer ${report.transferMs.toFixed(0)} ms, ` +
          `stop-to-resume ${report.downtimeMs.toFixed(0)} ms; read back ${readMs.toFixed(0)} ms`,
      );
    } finally {
      await fe.close();
      await Promise.all([a.stop(), b.stop()]);
    }
  });
}

maybe('RFC shm: a destination whose disk has another size refuses at the detach; the source resumes with its data', async (t) => {
  t.timeout(60_000);
  const [a, b] = await Promise.all([blkHost('memory:64M', RFC_FLAGS), blkHost('memory:32M', RFC_FLAGS)]);
  const fe = await connect(a, true);
  try {
    const blk = new BlkDevice(fe.queues[0]);
    await blk.write(100, blockPattern(1, 1));
    const err = await t.throwsAsync(migrate(fe, b.socketPath, { channel: 'rfc-shm' }));
    t.true(err instanceof MigrationError && err.sourceResumed, String(err));
    t.regex(String(err), /RFC_SET_STATE|RFC_SET_STATE_AREA/);
    t.regex(b.log(), /storage is 33554432 bytes here/);
    t.true(Buffer.from(await blk.read(100, BLOCK)).equals(blockPattern(1, 1)));
    await blk.write(200, blockPattern(2, 1));
  } finally {
    await fe.close();
    await Promise.all([a.stop(), b.stop()]);
  }
});

maybe('--queue-threads 2 on both sides: the memory disk both threads wrote travels once and both rings read it back on the destination', async (t) => {
  t.timeout(120_000);
  const size = 64 * MIB;
  const flags = ['--queue-threads', '2'];
  const [a, b] = await Promise.all([blkHost('memory:64M', flags), blkHost('memory:64M', flags)]);
  const fe = await VhostUserFrontend.connect(a.socketPath, { memoryBytes: 64 << 20, queues: [128, 128], features: 1n << BigInt(VIRTIO_F_VERSION_1) });
  try {
    t.regex(a.log(), /blk runs in 2 queue threads/);
    const rings = [new BlkDevice(fe.queues[0]), new BlkDevice(fe.queues[1])];
    // Ring 0 (thread 0) writes the first half, ring 1 (thread 1) the second.
    await parallel(size / MIB, 8, (m) => rings[m < size / MIB / 2 ? 0 : 1].write((m * MIB) / 512, fillPattern(m)));
    const report = await migrate(fe, b.socketPath, { channel: 'pipe' });
    t.true(report.bytes > size && report.bytes < size + MIB, `${report.bytes} state bytes: the one disk, once`);
    const bad: number[] = [];
    // Each half read back through the other ring (the other thread) on the destination.
    await parallel(size / MIB, 8, async (m) => {
      const got = await rings[m < size / MIB / 2 ? 1 : 0].read((m * MIB) / 512, MIB);
      if (!Buffer.from(got.buffer, got.byteOffset, got.length).equals(fillPattern(m))) bad.push(m);
    });
    t.deepEqual(bad, [], 'MiB(s) differing on the destination');
    t.regex(b.log(), /device state loaded: \d+ bytes through a pipe/);
  } finally {
    await fe.close();
    await Promise.all([a.stop(), b.stop()]);
  }
});
