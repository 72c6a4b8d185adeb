// A backing that fails with EIO, through the host process and the blk plugin, as a guest sees
// it: requests touching the failing range are answered VIRTIO_BLK_S_IOERR and the host's log
// names EIO; the rest of the disk reads and writes as before, every request in flight with the
// failing ones is answered, and the device keeps serving.
// The EIO is the kernel's: the disk image lives on a FUSE file system served by this test
// (helpers/faulty-fuse.ts) that fails one byte range. device-mapper's `error` target would do
// the same below a block device, but the test container's kernel has no device-mapper
// (/dev/mapper/control: "No such device", no dm-mod module), while FUSE is everywhere the
// other storage tests run (root, /dev/fuse). Needs root (the mount).
import test from 'ava';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { BlkDevice, BlkError, BlkStatus, SECTOR } from '../host/frontend/blk.ts';
import { VhostUserFrontend, VIRTIO_F_VERSION_1 } from '../host/frontend/driver.ts';
import { REPO, startHost } from './helpers/host-process.ts';
import { mountFaultyFuse } from './helpers/faulty-fuse.ts';
import { withTimeout } from './helpers/device-checks.ts';

const BLK = join(REPO, 'dist', 'plugins', 'blk.wasm');
const FEATURES = [VIRTIO_F_VERSION_1, 2 /* SEG_MAX */, 9 /* FLUSH */].reduce((m, b) => m | (1n << BigInt(b)), 0n);

/** Sectors [BAD, BAD + BAD_SECTORS) fail; the disk is 8 MiB. */
const BAD = 4096;
const BAD_SECTORS = 128;

test('EIO from the backing: requests into the failing range get IOERR with a log line naming EIO; the good range and the requests in flight with them are served; the device keeps serving', async (t) => {
  const disk = await mountFaultyFuse('disk.img', randomBytes(8 << 20), BAD * SECTOR, (BAD + BAD_SECTORS) * SECTOR);
  const before = Buffer.from(disk.data);
  const good = Array.from({ length: 6 }, (_, k) => ({ sector: 64 + k * 256, data: randomBytes(32 * SECTOR) }));
  try {
    const host = await startHost(['--socket-path', '{socket}', '--plugin', BLK, '--storage', disk.path]);
    try {
      const fe = await VhostUserFrontend.connect(host.socketPath, { memoryBytes: 32 << 20, queues: [128], features: FEATURES, indirect: 128 });
      const blk = new BlkDevice(fe.queues[0]);
      const status = (p: Promise<unknown>) => p.then(() => BlkStatus.OK, (e: unknown) => (e instanceof BlkError ? e.status : e));
      // All in flight at once: good writes and reads around failing ones, one of them straddling.
      const after = { sector: BAD + BAD_SECTORS, data: randomBytes(8 * SECTOR) }; // the first good sector past the range
      // Bounded: a host that failed the device over an I/O error would answer none of them.
      const batch = await withTimeout(Promise.all([
        ...good.map((g) => status(blk.write(g.sector, g.data, { segments: 2 }))),
        status(blk.write(BAD + 8, randomBytes(16 * SECTOR))),
        status(blk.read(BAD, 8 * SECTOR)),
        status(blk.read(BAD - 8, 16 * SECTOR)), // straddles the start of the range
        status(blk.write(after.sector, after.data)),
        status(blk.read(BAD - 64, 64 * SECTOR)), // ends where the range begins
      ]), 20_000, 'the requests in flight beside the failing ones');
      t.deepEqual(batch, [...good.map(() => BlkStatus.OK), BlkStatus.IOERR, BlkStatus.IOERR, BlkStatus.IOERR, BlkStatus.OK, BlkStatus.OK]);
      // The log lines come through the host's stderr, which may lag behind the replies: waited for.
      t.truthy(await host.waitForLog(/disk\.img: write of \d+ bytes at \d+ failed: EIO/), 'the failed write is logged');
      t.truthy(await host.waitForLog(/disk\.img: read of \d+ bytes at \d+ failed: EIO/), 'the failed read is logged');
      t.true(disk.failed.read >= 2 && disk.failed.write >= 1, `the failing range was asked: ${JSON.stringify(disk.failed)}`);
      // The device serves on: the good data reads back, flush works, the failing range still fails.
      for (const g of [...good, after]) t.true(Buffer.from(await blk.read(g.sector, g.data.length)).equals(g.data), `sector ${g.sector}`);
      t.true(Buffer.from(await blk.read(BAD - 64, 64 * SECTOR)).equals(before.subarray((BAD - 64) * SECTOR, BAD * SECTOR)), 'read up to the range');
      await blk.flush();
      t.is(await status(blk.write(BAD + BAD_SECTORS - 1, randomBytes(SECTOR))), BlkStatus.IOERR, 'the last failing sector');
      t.is((await fe.conn.getStatus()) & 0x40, 0, 'DEVICE_NEEDS_RESET is not set: an I/O error is the request\'s, not the device\'s');
      await fe.close();
    } finally {
      const code = await host.stop();
      t.is(code, 0, host.log());
    }
    // What reached the file: the good writes, nothing in the failing range.
    for (const g of good) t.true(disk.data.subarray(g.sector * SECTOR, g.sector * SECTOR + g.data.length).equals(g.data), `the file at sector ${g.sector}`);
    t.true(disk.data.subarray(BAD * SECTOR, (BAD + BAD_SECTORS) * SECTOR).equals(before.subarray(BAD * SECTOR, (BAD + BAD_SECTORS) * SECTOR)), 'the failing range is untouched');
  } finally {
    await disk.unmount();
  }
});
