// A disk image on a FUSE file system whose server is slow: one held request must not hold the
// device. The real host binary serves the blk plugin over an image on a FUSE file this test
// serves (helpers/faulty-fuse.ts), opened FOPEN_DIRECT_IO (every read reaches the server, no
// page cache). On kernel 6.18 io_uring tries such a read inline in io_uring_enter and the FUSE
// file waits there for its server, so without IOSQE_ASYNC for FUSE backings
// (host/io/choose-executor.ts, UringTarget.punt) the device's thread sleeps in the kernel until
// the held read is answered and the writes below never complete while it is held. Needs root
// (the mount).
import test from 'ava';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BlkDevice } from '../host/frontend/blk.ts';
import { VhostUserFrontend, VIRTIO_F_VERSION_1 } from '../host/frontend/driver.ts';
import { REPO, eventually, startHost, type HostProcess } from './helpers/host-process.ts';
import { withTimeout } from './helpers/device-checks.ts';
import { mountFaultyFuse } from './helpers/faulty-fuse.ts';

const BLK = join(REPO, 'dist', 'plugins', 'blk.wasm');
const IMAGE_BYTES = 8 << 20;
const FEATURES = [VIRTIO_F_VERSION_1, 2 /* SEG_MAX */, 9 /* FLUSH */].reduce((m, b) => m | (1n << BigInt(b)), 0n);
const BLOCK = 4096;

test('a read held by a slow FUSE backing (direct I/O) does not hold the device: writes and reads made available after it complete first', async (t) => {
  const image = randomBytes(IMAGE_BYTES);
  const disk = await mountFaultyFuse('disk.img', image, IMAGE_BYTES, IMAGE_BYTES);
  const dir = mkdtempSync(join(tmpdir(), 'vhost-wasm-fuse-backing-'));
  let host: HostProcess | undefined;
  let fe: VhostUserFrontend | undefined;
  try {
    host = await startHost(['--socket-path', join(dir, 'blk.sock'), '--plugin', BLK, '--storage', disk.path]);
    fe = await VhostUserFrontend.connect(host.socketPath, { memoryBytes: 32 << 20, queues: [128], features: FEATURES });
    const blk = new BlkDevice(fe.queues[0]);
    const data = randomBytes(BLOCK);

    disk.hold();
    const held = blk.read(0, BLOCK);
    t.true(await eventually(() => disk.held === 1, 10_000), 'the first read reached the file system and is held');
    await withTimeout(blk.write(64, data), 10_000, 'a write made available after the held read');
    t.true(disk.data.subarray(64 * 512, 64 * 512 + BLOCK).equals(data), 'the write is on the file');
    t.is(disk.held, 1, 'the first read is still held');
    // A second read is held too (the server holds every read), beside the first: both in flight.
    const second = blk.read(128, BLOCK);
    t.true(await eventually(() => disk.held === 2, 10_000), 'a second read reached the file system while the first is held');

    disk.open();
    const [a, b] = await withTimeout(Promise.all([held, second]), 10_000, 'the held reads, once the server answers');
    t.true(Buffer.from(a).equals(image.subarray(0, BLOCK)));
    t.true(Buffer.from(b).equals(image.subarray(128 * 512, 128 * 512 + BLOCK)));
  } finally {
    disk.open();
    await fe?.close();
    await host?.stop('SIGKILL');
    await disk.unmount();
    rmSync(dir, { recursive: true, force: true });
  }
});
