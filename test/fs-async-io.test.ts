// Asynchronous file I/O for virtio-fs, on the built binary driven by our front-end over real
// rings: a share on a disk file system (under /var/tmp, checked with statfs) reads and writes
// through io_uring with many FUSE requests in flight, each completing when its I/O does (the
// used ring takes completion order, and the daemon's device-stats count the completions that
// overtook an earlier request); a share on tmpfs stays with pread/pwrite in turn. A
// RELEASE while reads of the file are in flight (in the same batch, or after they were
// submitted) leaves them reading that file, and its fd is closed once they are done; a failing
// read answers with its errno and the device keeps serving.
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { closeSync, existsSync, fsyncSync, mkdtempSync, openSync, readFileSync, readdirSync, readlinkSync, rmSync, statfsSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { REPO, startHost, type HostProcess } from './helpers/host-process.ts';
import { VhostUserFrontend, VIRTIO_F_VERSION_1 } from '../host/frontend/driver.ts';
import { FuseClient, fhOfOpen, nodeOf, O, releaseIn, writeIn, type FuseReply } from './helpers/fuse.ts';
import { deviceStats, startDaemonWith } from './helpers/daemon-process.ts';

const FS_PLUGIN = join(REPO, 'dist', 'plugins', 'fs.wasm');
const TMPFS_MAGIC = 0x01021994;
const OP = { WRITE: 16, RELEASE: 18, FSYNC: 20 };
const EBADF = 9;
const MiB = 1 << 20;

function pattern(bytes: number, seed: number): Buffer {
  const b = Buffer.alloc(bytes);
  for (let i = 0; i < bytes; i++) b[i] = (i * 131 + seed * 17 + (i >> 12)) & 0xff;
  return b;
}

/** Writes the file and makes it durable, so its page cache can be dropped (coldFile). */
function writeDurable(path: string, data: Buffer): void {
  const fd = openSync(path, 'w');
  try {
    writeSync(fd, data);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** Drops the file's pages from the host's page cache (posix_fadvise DONTNEED through dd): its next read goes to the disk. */
function coldFile(path: string): void {
  execFileSync('dd', [`if=${path}`, 'iflag=nocache', 'count=0', 'status=none']);
}

/** The host process's fds that name `path`. */
function fdsOn(host: HostProcess, path: string): number {
  let n = 0;
  for (const fd of readdirSync(`/proc/${host.child.pid}/fd`)) {
    try {
      if (readlinkSync(`/proc/${host.child.pid}/fd/${fd}`) === path) n++;
    } catch {
      // closed while we looked
    }
  }
  return n;
}

async function serve(t: import('ava').ExecutionContext, parent: string) {
  if (!existsSync(FS_PLUGIN)) throw new Error(`${FS_PLUGIN} is missing: run \`node build.mjs --only plugins\``);
  const dir = mkdtempSync(join(parent, 'fs-async-io-'));
  const host = await startHost(['--socket-path', '{socket}', '--plugin', FS_PLUGIN, '--shared-dir', dir, '--call-deadline', '5000', '--log-level', 'debug', '--inode-file-handles', 'mandatory']);
  t.teardown(async () => {
    await host.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  const fe = await VhostUserFrontend.connect(host.socketPath, { memoryBytes: 64 << 20, queues: [128, 256], features: 1n << BigInt(VIRTIO_F_VERSION_1) });
  t.teardown(() => fe.close());
  const c = new FuseClient(fe);
  t.is((await c.init()).error, 0, 'INIT');
  const open = async (name: string, flags: number) => fhOfOpen(await c.open(nodeOf(await c.lookup(1n, name)), flags));
  return { dir, host, fe, c, open };
}

/**
 * The same device run by the daemon (`serve --config`), whose device-stats say how many of its
 * completions went to the used ring out of order.
 */
async function serveInDaemon(t: import('ava').ExecutionContext, parent: string) {
  if (!existsSync(FS_PLUGIN)) throw new Error(`${FS_PLUGIN} is missing: run \`node build.mjs --only plugins\``);
  const dir = mkdtempSync(join(parent, 'fs-async-io-'));
  const run = mkdtempSync(join(parent, 'fs-async-io-daemon-'));
  const control = join(run, 'control.sock');
  const daemon = await startDaemonWith(run, {
    control,
    devices: [{ id: 'fs', socket: 'fs.sock', plugin: FS_PLUGIN, grants: { sharedDir: dir, inodeFileHandles: 'mandatory' }, limits: { callDeadlineMs: 5000 } }],
  });
  t.teardown(async () => {
    await daemon.stop();
    rmSync(dir, { recursive: true, force: true });
    rmSync(run, { recursive: true, force: true });
  });
  const fe = await VhostUserFrontend.connect(join(run, 'fs.sock'), { memoryBytes: 64 << 20, queues: [128, 256], features: 1n << BigInt(VIRTIO_F_VERSION_1) });
  t.teardown(() => fe.close());
  const c = new FuseClient(fe);
  t.is((await c.init()).error, 0, 'INIT');
  const open = async (name: string, flags: number) => fhOfOpen(await c.open(nodeOf(await c.lookup(1n, name)), flags));
  const outOfOrder = async () => (await deviceStats(control, 'fs')).work.completionsOutOfOrder;
  return { dir, daemon, c, open, outOfOrder };
}

function onDisk(): string {
  const parent = '/var/tmp';
  if (statfsSync(parent).type === TMPFS_MAGIC) throw new Error(`${parent} is tmpfs here: these tests need a directory on a disk file system`);
  return parent;
}

test('a share on a disk: 96 FUSE_READs of an uncached file in flight at once through io_uring, every byte right, short reads at the end of the file', async (t) => {
  const { dir, host, c, open } = await serve(t, onDisk());
  await host.waitForLog(/shared directory .*: file I\/O through io_uring/);
  const size = 8 * MiB + 1000;
  const data = pattern(size, 1);
  writeDurable(join(dir, 'big'), data);
  // Not in the page cache: a cached page is copied as the read is submitted, the rest waits in io_uring.
  coldFile(join(dir, 'big'));
  const fh = await open('big', O.RDONLY);
  const at = (i: number) => ((i * 7919) % 64) * 131072 + (i % 3) * 512;
  const reads = Array.from({ length: 96 }, (_, i) => c.read(fh, at(i), 131072));
  // Past the end: the reply stops at the end of the file (short), or is empty.
  const tail = c.read(fh, size - 300, 131072);
  const beyond = c.read(fh, size + 4096, 4096);
  for (const [i, r] of (await Promise.all(reads)).entries()) {
    t.is(r.error, 0);
    t.true(r.body.equals(data.subarray(at(i), at(i) + 131072)), `read ${i} at ${at(i)}`);
  }
  const tr = await tail;
  t.is(tr.body.length, 300, 'a read across the end of the file is short');
  t.true(tr.body.equals(data.subarray(size - 300)));
  t.is((await beyond).body.length, 0, 'a read past the end is empty');
  // Writes in flight too, then FSYNC (which waits for the writes already handed out), then read
  // back. Behind a read of an uncached file in the same batch: while it waits in io_uring, the
  // writes go there too (with nothing else in flight each would be written as it comes).
  writeDurable(join(dir, 'cold'), pattern(MiB, 7));
  coldFile(join(dir, 'cold'));
  const coldFh = await open('cold', O.RDONLY);
  const wfh = await open('big', O.RDWR);
  const fresh = pattern(32 * 65536, 2);
  const coldRead = c.read(coldFh, 0, MiB);
  const writes = Array.from({ length: 32 }, (_, i) => c.req(OP.WRITE, 0n, writeIn(wfh, BigInt(i * 65536), fresh.subarray(i * 65536, (i + 1) * 65536))));
  const sync = Buffer.alloc(16);
  sync.writeBigUInt64LE(wfh, 0);
  // On the next kick: the writes are with io_uring by then (some maybe done).
  await new Promise((r) => setImmediate(r));
  const fsync = c.req(OP.FSYNC, 0n, sync);
  for (const w of await Promise.all(writes)) t.is(w.error, 0);
  t.is((await fsync).error, 0, 'FSYNC');
  t.true((await coldRead).body.equals(pattern(MiB, 7)), 'the uncached read beside them');
  t.true(readFileSync(join(dir, 'big')).subarray(0, fresh.length).equals(fresh), 'the host file holds every write');
  t.true((await c.read(fh, 65536 * 31, 65536)).body.equals(fresh.subarray(65536 * 31)), 'and reads see them');
  t.notRegex(host.log(), / (ERROR|WARN) /, host.log());
});

test('the used ring takes completion order: reads of a cached file submitted after a read of an uncached one come back first', async (t) => {
  const { dir, daemon, c, open, outOfOrder } = await serveInDaemon(t, onDisk());
  const cold = pattern(4 * MiB, 3);
  const hot = pattern(65536, 4);
  writeDurable(join(dir, 'cold'), cold);
  writeDurable(join(dir, 'hot'), hot);
  const coldFh = await open('cold', O.RDONLY);
  const hotFh = await open('hot', O.RDONLY);
  t.true((await c.read(hotFh, 0, 65536)).body.equals(hot), 'the hot file is in the page cache now');
  t.is(await outOfOrder(), 0, 'requests one at a time complete in order');
  // The 1 MiB read goes to the disk (its pages were dropped); the 4 KiB reads are served from
  // the page cache as they are submitted, right behind it in the same batch. Physics, not a
  // clock, orders them; a round where the drop did not take (pages still cached) completes in
  // order, so rounds go on (a few at most) until one does not. The device's own count of
  // out-of-order completions must show every read that came back ahead of the cold one.
  const rounds: string[] = [];
  let counted = 0;
  let ahead = 0;
  for (let round = 0; round < 5 && ahead === 0; round++) {
    coldFile(join(dir, 'cold'));
    const order: string[] = [];
    const off = (round % 4) * MiB;
    const before = await outOfOrder();
    const first = c.read(coldFh, off, MiB).then((r) => (order.push('cold'), r));
    const next = Array.from({ length: 16 }, (_, i) => c.read(hotFh, i * 4096, 4096).then((r) => (order.push(`hot${i}`), r)));
    const r0 = await first;
    t.true(r0.body.equals(cold.subarray(off, off + MiB)), 'the uncached read has the right bytes');
    for (const [i, r] of (await Promise.all(next)).entries()) t.true(r.body.equals(hot.subarray(i * 4096, (i + 1) * 4096)));
    counted = (await outOfOrder()) - before;
    rounds.push(`${order.join(' ')}: ${counted} out of order`);
    // Each 4 KiB read the guest got before the cold one overtook it (it was still in flight):
    // the device counted at least those.
    ahead = order.indexOf('cold');
    t.true(counted >= ahead, `${ahead} reads came back ahead of the cold one, the device counted ${counted} out of order`);
  }
  t.log(rounds.join('\n'));
  t.true(ahead > 0, `a read submitted later completed first in none of ${rounds.length} rounds:\n${rounds.join('\n')}`);
  t.true(counted > 0, 'and the device counted it');
  t.notRegex(daemon.log(), / (ERROR|WARN) /, daemon.log());
});

test('RELEASE while reads of the file are in flight: they read that file, the fd closes after them, the device goes on', async (t) => {
  const { dir, host, c, open } = await serve(t, onDisk());
  const a = pattern(4 * MiB, 5);
  const b = pattern(4 * MiB, 6);
  writeDurable(join(dir, 'a'), a);
  writeDurable(join(dir, 'b'), b);
  const check = (rs: FuseReply[], want: Buffer, what: string) => {
    for (const [i, r] of rs.entries()) {
      t.is(r.error, 0, `${what} ${i}`);
      t.true(r.body.equals(want.subarray(i * 131072, (i + 1) * 131072)), `${what} ${i}: the bytes of its own file`);
    }
  };
  for (const when of ['same batch', 'next batch']) {
    coldFile(join(dir, 'a'));
    const fh = await open('a', O.RDONLY);
    t.is(fdsOn(host, join(dir, 'a')), 1);
    const reads = Array.from({ length: 32 }, (_, i) => c.read(fh, i * 131072, 131072));
    // Same batch: one kick carries the reads and the RELEASE (the plugin answers the reads,
    // then closes the file, in one call). Next batch: the RELEASE comes on its own kick.
    if (when === 'next batch') await new Promise((r) => setImmediate(r));
    const release = c.req(OP.RELEASE, 0n, releaseIn(fh, 0, 0n));
    // A file opened right after may get the same backing index: it must not see a's reads.
    const fhB = await open('b', O.RDONLY);
    const readsB = Array.from({ length: 8 }, (_, i) => c.read(fhB, i * 131072, 131072));
    t.is((await release).error, 0, `${when}: RELEASE`);
    check(await Promise.all(reads), a, `${when}: read of a`);
    check(await Promise.all(readsB), b, `${when}: read of b`);
    t.is(fdsOn(host, join(dir, 'a')), 0, `${when}: a's fd is closed once its reads are done`);
    t.is((await c.req(OP.RELEASE, 0n, releaseIn(fhB, 0, 0n))).error, 0);
    // (b may have been given a's fh number: the plugin reuses free slots.)
    t.is((await c.read(fh, 0, 10)).error, EBADF, `${when}: the released fh is gone`);
  }
  t.is(fdsOn(host, join(dir, 'b')), 0);
  t.notRegex(host.log(), / (ERROR|WARN) /, host.log());
});

test('a read that fails in io_uring (a write-only fd: EBADF) answers with its errno; the device keeps serving', async (t) => {
  const { dir, host, c, open } = await serve(t, onDisk());
  writeFileSync(join(dir, 'f'), 'readable through another fh\n');
  const wo = await open('f', O.WRONLY);
  const rd = await open('f', O.RDONLY);
  const failing = Array.from({ length: 8 }, () => c.read(wo, 0, 4096));
  const fine = Array.from({ length: 8 }, () => c.read(rd, 0, 4096));
  for (const r of await Promise.all(failing)) t.is(r.error, EBADF, 'READ through a write-only file');
  for (const r of await Promise.all(fine)) t.is(r.body.toString(), 'readable through another fh\n');
  await host.waitForLog(/backing I\/O failed: .*open file \d+: read of 4096 bytes at 0 failed: EBADF/);
  t.is((await c.req(OP.WRITE, 0n, writeIn(wo, 0n, Buffer.from('READABLE')))).error, 0, 'the write-only fh still writes');
  t.is((await c.read(rd, 0, 8)).body.toString(), 'READABLE');
  t.notRegex(host.log(), / ERROR /, host.log());
});

test('a share on tmpfs stays with pread/pwrite in turn (no io_uring), with the same answers', async (t) => {
  const shm = '/dev/shm';
  if (statfsSync(shm).type !== TMPFS_MAGIC) throw new Error(`${shm} is not tmpfs here`);
  const { dir, host, c, open } = await serve(t, shm);
  await host.waitForLog(/shared directory .* is on tmpfs: file I\/O with pread\/pwrite in turn/);
  t.notRegex(host.log(), /file I\/O through io_uring/);
  const data = pattern(MiB, 7);
  writeFileSync(join(dir, 'f'), data);
  const fh = await open('f', O.RDONLY);
  const reads = Array.from({ length: 16 }, (_, i) => c.read(fh, i * 65536, 65536));
  for (const [i, r] of (await Promise.all(reads)).entries()) t.true(r.body.equals(data.subarray(i * 65536, (i + 1) * 65536)));
  const release = c.req(OP.RELEASE, 0n, releaseIn(fh, 0, 0n));
  t.is((await release).error, 0);
  t.is(fdsOn(host, join(dir, 'f')), 0);
});
