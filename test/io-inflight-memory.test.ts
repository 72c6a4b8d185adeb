// Guest memory and asynchronous storage I/O through the real host: the blk plugin on a file on
// the real disk with --direct (io_uring, O_DIRECT: every read really waits for the disk), 64
// requests in flight when the front-end re-sends its memory table or goes away. What must hold:
// every request completes with the right bytes, the old mappings are unmapped (only after the
// I/O into them finished: the host does not fault or corrupt), no mapping or fd is left behind,
// and the host goes on serving. (With O_DIRECT the kernel pins the buffers' pages at submission, so
// on this kernel a read would land right even in a mapping unmapped too early: what these tests
// hold the host to is that every request completes, nothing is unmapped under a request not yet
// taken, and no fd, mapping or request in flight (the host's device-stats) is left behind.
// io-inflight-slow-memory.test.ts makes the order
// observable: buffered reads from a slow FUSE file, copied into guest memory only on completion.)
import test from 'ava';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { BlkDevice } from '../host/frontend/blk.ts';
import { VhostUserFrontend, VIRTIO_F_VERSION_1 } from '../host/frontend/driver.ts';
import { REPO, eventually, startHost, type HostProcess } from './helpers/host-process.ts';
import { withTimeout } from './helpers/device-checks.ts';
import { hostFds, hostMaps } from './helpers/host-memfds.ts';
import { hostWork } from './helpers/host-stats.ts';
import { fillRegion } from './helpers/fill-region.ts';

const BLK = join(REPO, 'dist', 'plugins', 'blk.wasm');
const IMAGE_BYTES = 16 << 20;
const F = { SIZE_MAX: 1, SEG_MAX: 2, BLK_SIZE: 6, FLUSH: 9 };
const FEATURES = [VIRTIO_F_VERSION_1, ...Object.values(F)].reduce((m, b) => m | (1n << BigInt(b)), 0n);
const dir = mkdtempSync('/var/tmp/vhost-wasm-io-inflight-');
test.after.always(() => rmSync(dir, { recursive: true, force: true }));

async function setup(name: string): Promise<{ host: HostProcess; fe: VhostUserFrontend; blk: BlkDevice; data: Buffer }> {
  const data = randomBytes(IMAGE_BYTES);
  const path = join(dir, `${name}.img`);
  writeFileSync(path, data);
  const host = await startHost(['--socket-path', '{socket}', '--plugin', BLK, '--storage', path, '--direct']);
  const fe = await VhostUserFrontend.connect(host.socketPath, { memoryBytes: 64 << 20, memory: { name }, queues: [128], features: FEATURES, indirect: 128 });
  return { host, fe, blk: new BlkDevice(fe.queues[0]), data };
}

function reads(blk: BlkDevice, data: Buffer, n: number): Promise<void>[] {
  return Array.from({ length: n }, async (_, i) => {
    const sector = ((i * 97) % 480) * 64; // 32 KiB-aligned, scattered
    const got = await blk.read(sector, 32768, { segments: 4 });
    if (!Buffer.from(got).equals(data.subarray(sector * 512, sector * 512 + 32768))) throw new Error(`read ${i} at sector ${sector} brought the wrong bytes`);
  });
}

test.serial('SET_MEM_TABLE again with 64 direct reads in flight: all complete with the right bytes, the old mapping is gone, nothing leaks', async (t) => {
  const name = `iof-remap-${process.pid}`;
  const { host, fe, blk, data } = await setup(name);
  try {
    await Promise.all(reads(blk, data, 8)); // warm: the worker and its ring exist
    const maps = hostMaps(host, name);
    const fds = hostFds(host, name);
    t.true(maps > 0, 'the host maps guest RAM');
    for (let round = 0; round < 3; round++) {
      const inflight = reads(blk, data, 64);
      // The same memory again, as QEMU re-sends it (new fds, new mappings) while requests run.
      await fe.conn.setMemTable(fe.memory.memTable());
      await Promise.all(inflight);
      t.is(hostMaps(host, name), maps, `round ${round}: the old mapping was unmapped, one set is left`);
      t.is(hostFds(host, name), fds, `round ${round}: no memfd left open`);
    }
    await Promise.all(reads(blk, data, 64));
    t.notRegex(host.log(), /ERROR|fault/i, 'no error or memory fault in the host log');
  } finally {
    await fe.close();
    t.is(await host.stop(), 0, host.log());
  }
});

test.serial('the front-end disconnects with 64 direct reads in flight: the host unmaps after they finish and serves the next front-end', async (t) => {
  const name = `iof-gone-${process.pid}`;
  const { host, fe, blk, data } = await setup(name);
  try {
    await Promise.all(reads(blk, data, 8));
    // Answered or cut off: either is fine for a front-end that left (its waiters may never settle).
    for (const p of reads(blk, data, 64)) p.catch(() => {});
    // Taken by the host before the front-end leaves (else the disconnect finds nothing in flight).
    let taken = 0;
    for (const end = Date.now() + 10_000; taken < 8 + 64 && Date.now() < end; await sleep(10)) taken = (await hostWork(host)).requests;
    t.is(taken, 8 + 64, 'the host took the 64 reads from the ring');
    fe.conn.close();
    await fe.conn.closed;
    // The next front-end (new memory): the old RAM's mappings and fds are gone.
    const fe2 = await VhostUserFrontend.connect(host.socketPath, { memoryBytes: 32 << 20, memory: { name: `iof-next-${process.pid}` }, queues: [128], features: FEATURES, indirect: 128 });
    try {
      await Promise.all(reads(new BlkDevice(fe2.queues[0]), data, 64));
      t.is(hostMaps(host, name), 0, 'the first front-end\'s RAM is unmapped');
      t.is(hostFds(host, name), 0, 'and its fds closed');
      // Nothing of the first front-end's 64 is left with the executor or counted as taken from a ring.
      const work = await hostWork(host);
      t.is(work.ioInFlight, 0, 'no storage I/O left in flight (io_uring)');
      t.is(work.requestsInFlight, 0, 'no request left between the avail and the used ring');
      t.is(work.requests, 8 + 64 + 64, 'every request was counted');
    } finally {
      await fe2.close();
    }
    t.notRegex(host.log(), /ERROR|fault/i, 'no error or memory fault in the host log');
  } finally {
    await fe.close();
    t.is(await host.stop(), 0, host.log());
  }
});

test.serial('REM_MEM_REG of the region the buffers are in, with 64 direct reads in flight: they complete into it first, then it is unmapped and its fd closed', async (t) => {
  const name = `iof-remreg-${process.pid}`;
  const data = randomBytes(IMAGE_BYTES);
  const path = join(dir, `${name}.img`);
  writeFileSync(path, data);
  const host = await startHost(['--socket-path', '{socket}', '--plugin', BLK, '--storage', path, '--direct']);
  // Two regions, one memfd each (name-0, name-1), described with ADD_MEM_REG: the ring is in
  // region 0, which is then filled up, so every request's header, buffers and status go to
  // region 1, which is removed while its reads are in flight.
  const fe = await VhostUserFrontend.connect(host.socketPath, { memoryBytes: 96 << 20, memory: { name, regionBytes: 48 << 20 }, addMemReg: true, queues: [128], features: FEATURES, indirect: 128, eventIdx: true });
  try {
    fillRegion(fe);
    const blk = new BlkDevice(fe.queues[0]);
    await Promise.all(reads(blk, data, 8));
    const ring = fe.queues[0].ring;
    const u16 = (gpa: number) => new DataView(fe.memory.view(gpa, 2).slice().buffer).getUint16(0, true);
    const region1 = fe.memory.memTable()[1];
    t.true(hostMaps(host, `${name}-1`) > 0 && hostFds(host, `${name}-1`) === 1, 'the host maps region 1 and holds its fd');
    const maps0 = hostMaps(host, `${name}-0`);
    const fdsBefore = readdirSync(`/proc/${host.child.pid}/fd`).length;

    const start = u16(ring.availGpa + 2);
    // Large reads, so that the disk is still busy with them when the removal arrives.
    const inflight = Array.from({ length: 64 }, async (_, i) => {
      const sector = ((i * 37) % 31) * 1024; // 512 KiB-aligned, scattered over the 16 MiB image
      const got = await blk.read(sector, 512 << 10, { segments: 16 });
      if (!Buffer.from(got).equals(data.subarray(sector * 512, sector * 512 + (512 << 10)))) throw new Error(`read ${i} at sector ${sector} brought the wrong bytes`);
    });
    // All 64 queued and taken by the back-end (a request still in the avail ring would name
    // memory that is gone, a guest error): with EVENT_IDX it moves avail_event up to the avail
    // index once it has popped everything.
    const taken = () => ((u16(ring.availGpa + 2) - start) & 0xffff) === 64 && u16(ring.usedGpa + 4 + 8 * ring.size) === u16(ring.availGpa + 2);
    t.true(await eventually(taken, 10_000), 'the back-end took every request');
    await fe.conn.remMemReg({ guestPhysAddr: region1.guestPhysAddr, memorySize: region1.memorySize, userspaceAddr: region1.userspaceAddr, mmapOffset: region1.mmapOffset });
    await withTimeout(Promise.all(inflight), 20_000, 'the reads'); // every buffer's bytes checked
    t.is(hostMaps(host, `${name}-1`), 0, 'region 1 is unmapped');
    t.is(hostFds(host, `${name}-1`), 0, 'and its fd closed');
    t.is(hostMaps(host, `${name}-0`), maps0, 'region 0 stays mapped');
    t.is(readdirSync(`/proc/${host.child.pid}/fd`).length, fdsBefore - 1, 'no other fd left behind or lost');
    t.notRegex(host.log(), /ERROR|fault/i, 'no error or memory fault in the host log');
  } finally {
    await fe.close();
    t.is(await host.stop(), 0, host.log());
  }
});
