// A memory disk's bytes through a real pipe, exactly, whichever way the destination takes them
// out of it (docs/migration.md, "What travels"): read straight into a resident disk's pages
// (`prealloc=on`, each piece checksummed as it lands) or spliced into a disk's memfd (no
// prealloc: the kernel makes the pages). Both with the disk moved at the stop over a pipe the
// front-end relays by read/write (what QEMU does), with one pipe from the source host straight to
// the destination host (`direct-pipe`), and with pre-copy, whose rounds go that way too.
//
// Each run: the destination's disk is first filled with other bytes through a connection of its
// own (so a byte the LOAD missed shows), the source's disk gets a distinct pattern in every 4 KiB
// block but its last 4 MiB (left unwritten: zeros must arrive as zeros), the device migrates, and
// the whole disk is read back through the destination and compared.
import test from 'ava';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { REPO, startHost, type HostProcess } from './helpers/host-process.ts';
import { BlkDevice } from '../host/frontend/blk.ts';
import { loadState, migrate, MigrationError, saveState } from '../host/frontend/migrate.ts';
import { connectPrecopy, parallel } from './helpers/precopy-frontend.ts';

const BLK = join(REPO, 'dist', 'plugins', 'blk.wasm');
const maybe = existsSync(BLK) ? test.serial : test.serial.skip;
const MIB = 1 << 20;
const SIZE = 64 * MIB;
const UNWRITTEN = 4 * MIB;

function blkHost(storage: string): Promise<HostProcess> {
  return startHost(['--socket-path', '{socket}', '--plugin', BLK, '--storage', storage]);
}

const connect = (h: HostProcess) => connectPrecopy(h, 16 << 20);

/** MiB m of the pattern `tag`: every 4 KiB block names itself, so a block landing elsewhere shows. */
function pattern(tag: string, m: number): Buffer {
  const b = Buffer.alloc(MIB);
  for (let k = 0; k < MIB / 4096; k++) b.fill(`${tag} block ${m * 256 + k};`, k * 4096, (k + 1) * 4096);
  return b;
}

async function writeMiBs(blk: BlkDevice, tag: string, mibs: number): Promise<void> {
  await parallel(mibs, 8, (m) => blk.write((m * MIB) / 512, pattern(tag, m)));
}

const CASES: { dst: string; rounds: number; path: string; channel: 'pipe' | 'direct-pipe' }[] = [
  { dst: 'memory:64M,prealloc=on', rounds: 0, path: 'read into its resident pages', channel: 'pipe' },
  { dst: 'memory:64M', rounds: 0, path: 'spliced into its memfd', channel: 'pipe' },
  { dst: 'memory:64M,prealloc=on', rounds: 0, path: 'read into its resident pages', channel: 'direct-pipe' },
  { dst: 'memory:64M', rounds: 0, path: 'spliced into its memfd', channel: 'direct-pipe' },
  { dst: 'memory:64M,prealloc=on', rounds: 2, path: 'read into its resident pages', channel: 'pipe' },
  { dst: 'memory:64M', rounds: 2, path: 'spliced into its memfd', channel: 'pipe' },
];

for (const c of CASES) {
  const how =
    c.rounds > 0 ? 'by pre-copy over one pipe host to host' : c.channel === 'pipe' ? 'at the stop over a pipe the front-end relays' : 'at the stop over one pipe host to host (direct-pipe)';
  maybe(`the memory disk migrates ${how} into a destination disk ${c.dst}, byte for byte (${c.path})`, async (t) => {
    t.timeout(120_000);
    const [a, b] = await Promise.all([blkHost('memory:64M'), blkHost(c.dst)]);
    try {
      // The destination's disk holds other bytes first (its own front-end, then gone).
      const other = await connect(b);
      await writeMiBs(new BlkDevice(other.queues[0]), 'destination before', SIZE / MIB);
      await other.close();

      const fe = await connect(a);
      try {
        const blk = new BlkDevice(fe.queues[0]);
        await writeMiBs(blk, 'source', (SIZE - UNWRITTEN) / MIB);
        const report = await migrate(fe, b.socketPath, { channel: c.channel, precopyRounds: c.rounds });
        // Over direct-pipe the bytes never pass through the front-end: the hosts count them.
        if (c.channel === 'pipe') t.true(report.bytes > 0);
        else t.regex(a.log(), /device state saved: \d{8,} bytes/);
        const bad: number[] = [];
        await parallel(SIZE / MIB, 8, async (m) => {
          const want = m < (SIZE - UNWRITTEN) / MIB ? pattern('source', m) : Buffer.alloc(MIB);
          const got = await blk.read((m * MIB) / 512, MIB);
          if (!Buffer.from(got.buffer, got.byteOffset, got.length).equals(want)) bad.push(m);
        });
        t.deepEqual(bad.sort((x, y) => x - y), [], 'MiB(s) of the destination differing from the source');
        // The path this case is about was the one taken.
        if (c.rounds === 0) t.true(b.log().includes(`memory disk section loaded from the pipe: ${c.path}`), b.log());
        else t.regex(b.log(), new RegExp(`pre-copy round 0 loaded: \\d+ bytes \\(${c.path}\\)`));
      } finally {
        await fe.close();
      }
    } finally {
      await Promise.all([a.stop(), b.stop()]);
    }
  });
}

maybe('into a resident disk, a state with a byte of the disk section flipped, or cut inside it, is refused; the good one then loads byte for byte', async (t) => {
  t.timeout(60_000);
  const [a, b] = await Promise.all([blkHost('memory:4M'), blkHost('memory:4M,prealloc=on')]);
  try {
    const fe = await connect(a);
    await writeMiBs(new BlkDevice(fe.queues[0]), 'source', 4);
    await fe.stopQueue(0);
    const good = await saveState(fe.conn, 'pipe');
    await fe.close();
    const dfe = await connect(b);
    try {
      const base = await dfe.stopQueue(0);
      // The device's own bytes are small: the middle of the container is inside the 4 MiB disk.
      const flipped = Buffer.from(good);
      flipped[flipped.length >> 1] ^= 0x01;
      await t.throwsAsync(loadState(dfe.conn, flipped, 'pipe'), undefined, 'the flipped state loads');
      t.truthy(await b.waitForLog(/memory disk section loaded from the pipe: read into its resident pages/));
      t.truthy(await b.waitForLog(/checksum mismatch \(stored 0x[0-9a-f]+, computed 0x[0-9a-f]+\): the state is corrupt/));
      await t.throwsAsync(loadState(dfe.conn, good.subarray(0, good.length >> 1), 'pipe'), undefined, 'the cut state loads');
      t.truthy(await b.waitForLog(/truncated state: the stream ended \d+ bytes before the end of a section/));
      // Not served meanwhile (docs/migration.md, "A LOAD that fails after it began writing").
      await t.throwsAsync(dfe.startQueue(0, base), { message: /SET_VRING_KICK \(12\) failed/ });
      await loadState(dfe.conn, good, 'pipe');
      await dfe.startQueue(0, base);
      const blk = new BlkDevice(dfe.queues[0]);
      for (let m = 0; m < 4; m++) t.true(Buffer.from(await blk.read((m * MIB) / 512, MIB)).equals(pattern('source', m)), `MiB ${m}`);
    } finally {
      await dfe.close();
    }
  } finally {
    await Promise.all([a.stop(), b.stop()]);
  }
});

maybe('over direct-pipe, a destination that refuses mid-stream (a disk of another size) fails the migration and the source resumes with its disk', async (t) => {
  t.timeout(60_000);
  const [a, b] = await Promise.all([blkHost('memory:64M'), blkHost('memory:32M,prealloc=on')]);
  try {
    const fe = await connect(a);
    try {
      const blk = new BlkDevice(fe.queues[0]);
      await writeMiBs(blk, 'source', 8);
      const err = await t.throwsAsync(migrate(fe, b.socketPath, { channel: 'direct-pipe' }), { instanceOf: MigrationError });
      t.true(err?.sourceResumed, err?.message);
      // The destination's refusal is named first: it is why the source's write ended early.
      t.regex(err?.message ?? '', /migration failed: destination: CHECK_DEVICE_STATE failed.*; the source resumed$/);
      t.truthy(await b.waitForLog(/storage is 33554432 bytes here .*, the state's disk is 67108864 bytes/));
      // The source serves its own disk again, every byte of it as written.
      for (let m = 0; m < 8; m++) t.true(Buffer.from(await blk.read((m * MIB) / 512, MIB)).equals(pattern('source', m)), `MiB ${m}`);
      await blk.write(0, pattern('after', 0));
      t.true(Buffer.from(await blk.read(0, MIB)).equals(pattern('after', 0)));
    } finally {
      await fe.close();
    }
  } finally {
    await Promise.all([a.stop(), b.stop()]);
  }
});
