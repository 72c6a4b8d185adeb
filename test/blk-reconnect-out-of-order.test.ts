// Reconnect after out-of-order completion (issue 15), without QEMU and arranged rather than
// hoped for: the real host binary serves the blk plugin over a disk image on a FUSE file system
// this test serves (helpers/faulty-fuse.ts), which holds reads unanswered while letting writes
// through. So two reads made available first stay in flight while writes made available after
// them complete: the used ring then holds later requests ahead of earlier ones, and the used
// index the front-end restarts the ring at (3 of 5) bounds neither what was done nor what was
// not. The host is SIGKILLed there, a new host is started on the same socket, and our front-end
// driver reconnects as QEMU does (SET_INFLIGHT_FD with the same area, each ring from the used
// idx in guest memory). What must hold: the new host runs exactly the two reads (the FUSE file
// system sees those two READs and no WRITE), each completes once with what the file holds now,
// the writes are not run again (the second write to one sector stays the last), and new
// requests go on after them. A host that restarted from the front-end's base would run the
// last write again and never answer the first read. Needs root (the mount).
import test from 'ava';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BlkDevice, SECTOR } from '../host/frontend/blk.ts';
import { VhostUserFrontend, VIRTIO_F_VERSION_1 } from '../host/frontend/driver.ts';
import { SplitInflightRegion } from '../host/virtqueue/inflight.ts';
import { REPO, eventually, startHost, type HostProcess } from './helpers/host-process.ts';
import { withTimeout } from './helpers/device-checks.ts';
import { mountFaultyFuse, type FuseIo } from './helpers/faulty-fuse.ts';

const BLK = join(REPO, 'dist', 'plugins', 'blk.wasm');
const IMAGE_BYTES = 8 << 20;
const FEATURES = [VIRTIO_F_VERSION_1, 2 /* SEG_MAX */, 9 /* FLUSH */].reduce((m, b) => m | (1n << BigInt(b)), 0n);
const BLOCK = 4096;

/** The sectors the five requests touch: two held reads, two writes to one sector, one more write. */
const R1 = 2048;
const W = 4096;
const R4 = 6144;
const W5 = 8192;

const u16 = (fe: VhostUserFrontend, gpa: number) => new DataView(fe.memory.view(gpa, 2).slice().buffer).getUint16(0, true);
const u32 = (fe: VhostUserFrontend, gpa: number) => new DataView(fe.memory.view(gpa, 4).slice().buffer).getUint32(0, true);
/** The head the driver put in avail-ring slot `i` (the order requests were made available). */
const availHead = (fe: VhostUserFrontend, i: number) => u16(fe, fe.queues[0].ring.availGpa + 4 + 2 * i);
/** The used ring's idx and the heads in its slots so far (the order requests completed). */
function used(fe: VhostUserFrontend): { idx: number; heads: number[] } {
  const at = fe.queues[0].ring.usedGpa;
  const idx = u16(fe, at + 2);
  return { idx, heads: Array.from({ length: idx }, (_, i) => u32(fe, at + 4 + 8 * i)) };
}
function region(fe: VhostUserFrontend): SplitInflightRegion {
  const a = fe.inflight!;
  return new SplitInflightRegion(a.bytes.subarray(0, a.size), new DataView(a.bytes.buffer, a.bytes.byteOffset).getUint16(10, true), 0);
}
const io = (kind: FuseIo['kind'], sector: number): FuseIo => ({ kind, off: sector * SECTOR, size: BLOCK });
const byOffset = (a: FuseIo, b: FuseIo) => a.off - b.off || a.kind.localeCompare(b.kind);

test('the host SIGKILLed after later requests completed ahead of earlier ones: its successor runs exactly the two that had not completed, each completes once, no write runs again', async (t) => {
  // Cached (page-cache reads, which io_uring hands to its worker threads when the page is not
  // there): a FOPEN_DIRECT_IO read is issued inline by io_uring_enter on this kernel (6.18) and
  // blocks the device's worker thread, so nothing could overtake it. The file is opened without
  // FOPEN_KEEP_CACHE: the restarted host's open drops what the killed one's reads cached.
  const disk = await mountFaultyFuse('disk.img', randomBytes(IMAGE_BYTES), IMAGE_BYTES, IMAGE_BYTES, { cached: true });
  const dir = mkdtempSync(join(tmpdir(), 'vhost-wasm-ooo-'));
  // A socket path of our own: it outlives the host killed on it. Debug: the runner logs a ring's
  // first out-of-order completion.
  const args = ['--socket-path', join(dir, 'blk.sock'), '--plugin', BLK, '--storage', disk.path, '--log-level', 'debug'];
  const hosts: HostProcess[] = [await startHost(args)];
  let fe: VhostUserFrontend | undefined;
  try {
    fe = await VhostUserFrontend.connect(hosts[0].socketPath, { memoryBytes: 32 << 20, queues: [128], features: FEATURES, inflight: true });
    const blk = new BlkDevice(fe.queues[0]);
    const [a, b, c] = [randomBytes(BLOCK), randomBytes(BLOCK), randomBytes(BLOCK)];

    disk.hold();
    // Made available in this order; each read is on the FUSE file system (held) before the next request.
    const r1 = blk.read(R1, BLOCK);
    t.true(await eventually(() => disk.held === 1, 10_000), 'the first read reached the file system and is held');
    await withTimeout(blk.write(W, a), 10_000, 'the first write, made available after a held read');
    await withTimeout(blk.write(W, b), 10_000, 'the second write to the same sector');
    const r4 = blk.read(R4, BLOCK);
    t.true(await eventually(() => disk.held === 2, 10_000), 'the second read reached the file system and is held');
    await withTimeout(blk.write(W5, c), 10_000, 'the last write');

    // Before the kill: the writes overtook the reads made available before them.
    const heads = Array.from({ length: 5 }, (_, i) => availHead(fe!, i));
    t.deepEqual(used(fe).heads, [heads[1], heads[2], heads[4]], 'the used ring: the three writes, ahead of the first read');
    t.deepEqual(region(fe).inflightHeads().sort(), [heads[0], heads[3]].sort(), 'the inflight area marks the two reads, nothing else');
    t.is(region(fe).usedIdx, 3);
    await hosts[0].waitForLog(/ring 0: first out-of-order completion/);
    t.true(disk.data.subarray(W * SECTOR, W * SECTOR + BLOCK).equals(b) && disk.data.subarray(W5 * SECTOR, W5 * SECTOR + BLOCK).equals(c), 'the writes are on the disk');

    // The kill. The killed process's two reads are parked in the FUSE file system: answered
    // now (the kernel finishes them for a process that is gone), so it can exit.
    hosts[0].child.kill('SIGKILL');
    t.true(await eventually(() => threadsStopped(hosts[0].child.pid!), 10_000), 'the killed host runs no more user code');
    disk.open();
    await hosts[0].exited;
    // What the reads must now see is what the file holds after the kill: a resubmitted read
    // answers these bytes, a stale one the old.
    const [r1Now, r4Now] = [randomBytes(BLOCK), randomBytes(BLOCK)];
    r1Now.copy(disk.data, R1 * SECTOR);
    r4Now.copy(disk.data, R4 * SECTOR);
    disk.ops.length = 0;

    hosts.push(await startHost(args));
    await fe.reconnect(hosts[1].socketPath);
    const [got1, got4] = await withTimeout(Promise.all([r1, r4]), 15_000, 'the two reads in flight at the kill');
    t.true(Buffer.from(got1).equals(r1Now), 'the first read answers what the file holds now');
    t.true(Buffer.from(got4).equals(r4Now), 'the second read too');
    t.deepEqual([...disk.ops].sort(byOffset), [io('read', R1), io('read', R4)], 'the new host ran exactly the two reads, no write');
    t.regex(await hosts[1].waitForLog(/resubmitting/), /ring 0: resubmitting 2 in-flight request\(s\) from the inflight area/);
    const after = used(fe);
    t.is(after.idx, 5, 'five requests, five completions');
    t.deepEqual(after.heads.slice(3).sort(), [heads[0], heads[3]].sort(), 'the two reads completed once each, after the writes');
    t.deepEqual(region(fe).inflightHeads(), []);

    // New requests go on after the resubmitted ones; the second write is still the last one.
    t.true(Buffer.from(await blk.read(W, BLOCK)).equals(b), 'the sector written twice holds the second write');
    t.true(disk.data.subarray(W * SECTOR, W * SECTOR + BLOCK).equals(b));
    t.is(used(fe).idx, 6);
    t.is(fe.queues[0].inFlight, 0);
  } finally {
    disk.open();
    await fe?.close();
    for (const h of hosts) await h.stop('SIGKILL');
    await disk.unmount();
    rmSync(dir, { recursive: true, force: true });
  }
});

/**
 * Every thread of the process is past user code: gone, a zombie, or in the kernel uninterruptibly
 * (the I/O workers waiting for the FUSE answers) with the SIGKILL pending. Answering the held
 * reads before this could let a live completion thread publish them in the used ring.
 */
function threadsStopped(pid: number): boolean {
  let tasks: string[];
  try {
    tasks = readdirSync(`/proc/${pid}/task`);
  } catch {
    return true;
  }
  return tasks.every((tid) => {
    try {
      const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
      return /^[DZX]$/.test(stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3));
    } catch {
      return true;
    }
  });
}
