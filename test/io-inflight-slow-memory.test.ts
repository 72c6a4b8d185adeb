// Guest memory unmapped only after the I/O into it finished, made observable: the disk image is
// on a FUSE file system served by this test (helpers/faulty-fuse.ts) and opened buffered (no
// --direct), so a read's bytes are copied into the guest's buffer by the kernel only when the
// file system answers, into whatever the host's address space holds at that address then (no
// pages pinned at submission, as with O_DIRECT in io-inflight-memory.test.ts). The file system
// holds every read unanswered while the front-end re-sends its memory table, removes the region
// the buffers are in, or goes away; then answers. A host that unmapped the old memory before
// its reads completed gets EFAULT for them (the guest sees IOERR, the host logs it) or, had the
// address been reused, writes into something else. What must hold: every read completes with
// the right bytes (or, after a disconnect, completes or is cancelled without a fault), the old
// mapping stays while the reads are held and is gone after, no fd or mapping is left behind.
// Reads that fail (EIO) get the device's second answer (IOERR) written before the region goes:
// a status byte written after the unmap would land nowhere while the used ring said written.
// "Nothing left in flight" is the host's own count (device-stats over its control socket):
// the held reads are counted as storage I/O in flight while held, and none is left after.
// Needs root (the mount).
import test, { type ExecutionContext } from 'ava';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { BlkDevice, SECTOR } from '../host/frontend/blk.ts';
import { VhostUserFrontend, VIRTIO_F_VERSION_1 } from '../host/frontend/driver.ts';
import { REPO, eventually, startHost, type HostProcess } from './helpers/host-process.ts';
import { withTimeout } from './helpers/device-checks.ts';
import { hostFds, hostMaps } from './helpers/host-memfds.ts';
import { hostWork } from './helpers/host-stats.ts';
import { mountFaultyFuse, type FaultyFuse } from './helpers/faulty-fuse.ts';
import type { MemoryRegion } from '../host/protocol/messages.ts';
import { fillRegion } from './helpers/fill-region.ts';

const BLK = join(REPO, 'dist', 'plugins', 'blk.wasm');
const IMAGE_BYTES = 8 << 20;
const FEATURES = [VIRTIO_F_VERSION_1, 2 /* SEG_MAX */, 9 /* FLUSH */].reduce((m, b) => m | (1n << BigInt(b)), 0n);
/** Reads held at once: each one page, on a page no earlier read brought into the page cache. */
const HELD = 16;


/** Sector of the i-th held read: 64 KiB apart from 1 MiB on, never read before in the test. */
const heldSector = (i: number) => (1 << 11) + i * 128;

/** HELD one-page reads, each checked against the image; settles with the errors (null: right bytes). */
function heldReads(blk: BlkDevice, disk: FaultyFuse): Promise<(string | null)[]> {
  return Promise.all(
    Array.from({ length: HELD }, async (_, i) => {
      const s = heldSector(i);
      try {
        const got = await blk.read(s, 4096, { segments: 2 });
        return Buffer.from(got).equals(disk.data.subarray(s * SECTOR, s * SECTOR + 4096)) ? null : `read ${i}: wrong bytes`;
      } catch (e) {
        return `read ${i}: ${(e as Error).message}`;
      }
    }),
  );
}

/** `bad`: a byte range of the image that answers EIO (default none). */
async function setup(name: string, extra: object = {}, bad: [number, number] = [IMAGE_BYTES, IMAGE_BYTES]) {
  const disk = await mountFaultyFuse('disk.img', randomBytes(IMAGE_BYTES), bad[0], bad[1], { cached: true });
  let host: HostProcess | undefined;
  try {
    host = await startHost(['--socket-path', '{socket}', '--plugin', BLK, '--storage', disk.path, '--log-level', 'debug']);
    const fe = await VhostUserFrontend.connect(host.socketPath, { memoryBytes: 32 << 20, memory: { name }, queues: [128], features: FEATURES, indirect: 128, ...extra });
    const blk = new BlkDevice(fe.queues[0]);
    // Warm: the worker, its ring and the file are there; these pages are below the held ones.
    for (let i = 0; i < 4; i++) await blk.read(i * 8, 4096);
    return { disk, host, fe, blk };
  } catch (e) {
    await host?.stop();
    await disk.unmount();
    throw e;
  }
}

/**
 * setup() with guest RAM in two regions, one memfd each (name-0, name-1), described with
 * ADD_MEM_REG: the ring is in region 0, which is then filled up, so every later request's
 * buffers are in region 1.
 */
async function setupInRegion1(name: string, bad?: [number, number]) {
  const s = await setup(name, { memoryBytes: 64 << 20, memory: { name, regionBytes: 32 << 20 }, addMemReg: true }, bad);
  fillRegion(s.fe);
  return { ...s, region1: s.fe.memory.memTable()[1] };
}

/** REM_MEM_REG of `region`, once the host has it: `sent` settles with its reply (awaited by the caller). */
async function removeRegion(fe: VhostUserFrontend, host: HostProcess, region: MemoryRegion): Promise<{ sent: Promise<void> }> {
  const sent = fe.conn.remMemReg({ guestPhysAddr: region.guestPhysAddr, memorySize: region.memorySize, userspaceAddr: region.userspaceAddr, mmapOffset: region.mmapOffset });
  sent.catch(() => {}); // awaited by the caller; a failed test closes the connection first
  await host.waitForLog(/<- REM_MEM_REG/);
  return { sent };
}

/** No memory fault and no failed read in the host's log. */
function assertCleanLog(t: ExecutionContext, host: HostProcess): void {
  t.notRegex(host.log(), /EFAULT|fault|read of \d+ bytes at \d+ failed|ERROR/i, 'no EFAULT, memory fault or failed read in the host log');
}

/** The host's warnings shown on a failure, the gate opened, everything closed; the host must exit 0. */
async function teardown(t: ExecutionContext, { disk, host, fe }: { disk: FaultyFuse; host: HostProcess; fe: VhostUserFrontend }): Promise<void> {
  t.log(host.log().split('\n').filter((l) => /EFAULT|fault|fail|error|warn/i.test(l)).slice(-8).join('\n'));
  disk.open();
  await fe.close();
  t.is(await host.stop(), 0, host.log());
  await disk.unmount();
}

test.serial('SET_MEM_TABLE while buffered reads wait on a slow file: the old mapping stays until they are answered, they land with the right bytes, then it goes', async (t) => {
  const name = `iofs-remap-${process.pid}`;
  const { disk, host, fe, blk } = await setup(name);
  try {
    const maps = hostMaps(host, name);
    const fds = hostFds(host, name);
    t.true(maps > 0 && fds > 0, 'the host maps guest RAM');
    disk.hold();
    const reads = heldReads(blk, disk);
    t.true(await eventually(() => disk.held === HELD, 10_000), `every read reached the file system and waits there (${disk.held} of ${HELD})`);
    // The same memory again with new fds, as QEMU re-sends it: the host maps it anew and must
    // keep the old mapping, where the held reads' buffers are, until they are answered.
    const sent = fe.conn.setMemTable(fe.memory.memTable());
    sent.catch(() => {}); // awaited below; a failed test closes the connection first
    await host.waitForLog(/<- SET_MEM_TABLE/);
    // The worker maps the new table first: while the reads are held, both are mapped (a host
    // that unmapped first never shows both).
    t.true(await eventually(() => hostMaps(host, name) >= 2 * maps, 10_000), `the new table is mapped and the old one kept while the reads are held (${hostMaps(host, name)} mappings, ${maps} per table)`);
    t.is(disk.held, HELD, 'the reads are still held');
    disk.open();
    t.deepEqual((await withTimeout(reads, 20_000, 'the held reads')).filter((e) => e !== null), [], 'every held read completed with the right bytes');
    await withTimeout(sent, 10_000, 'SET_MEM_TABLE');
    t.true(await eventually(() => hostMaps(host, name) === maps, 10_000), `the old mapping is gone, one set is left (${hostMaps(host, name)} of ${maps})`);
    t.is(hostFds(host, name), fds, 'no memfd left open');
    // Served on, through the new mapping.
    t.deepEqual((await heldReads(blk, disk)).filter((e) => e !== null), [], 'reads after the remap');
    assertCleanLog(t, host);
  } finally {
    await teardown(t, { disk, host, fe });
  }
});

test.serial('the front-end disconnects while buffered reads wait on a slow file: its RAM stays mapped until they are answered or cancelled, then every mapping and fd goes', async (t) => {
  const name = `iofs-gone-${process.pid}`;
  const { disk, host, fe, blk } = await setup(name);
  try {
    const fdsBefore = host.fdCount();
    disk.hold();
    void heldReads(blk, disk); // the front-end leaves: its waiters may never settle
    t.true(await eventually(() => disk.held === HELD, 10_000), `every read reached the file system and waits there (${disk.held} of ${HELD})`);
    const held = await hostWork(host);
    t.is(held.ioInFlight, HELD, 'the host counts the held reads as storage I/O in flight');
    t.is(held.requestsInFlight, HELD, 'and as requests taken from the ring');
    fe.conn.close();
    await fe.conn.closed;
    await host.waitForLog(/front-end disconnected/);
    // Nothing the host does says "I would unmap now, but wait": a host that unmaps early does
    // it within the disconnect's handling, so the mapping is watched for a while (a host that
    // waits never fails this; one that does not is caught when it got its turn in that time).
    t.false(await eventually(() => hostMaps(host, name) === 0, 1500), 'the RAM stays mapped while the reads are held');
    t.is(disk.held, HELD, 'the reads are still held');
    disk.open();
    t.true(await eventually(() => hostMaps(host, name) === 0, 20_000), 'then unmapped');
    t.true(await eventually(() => hostFds(host, name) === 0, 10_000), 'and its fds closed');
    const after = await hostWork(host);
    t.is(after.ioInFlight, 0, 'no storage I/O left in flight');
    t.is(after.requestsInFlight, 0, 'no request left taken from the ring');
    // The next front-end is served (the same slow file, answering now).
    const fe2 = await VhostUserFrontend.connect(host.socketPath, { memoryBytes: 16 << 20, memory: { name: `${name}-next` }, queues: [128], features: FEATURES, indirect: 128 });
    try {
      t.deepEqual((await withTimeout(heldReads(new BlkDevice(fe2.queues[0]), disk), 20_000, 'reads of the next front-end')).filter((e) => e !== null), []);
    } finally {
      await fe2.close();
    }
    t.true(await eventually(() => host.fdCount() <= fdsBefore, 10_000), `no fd left behind (${host.fdCount()}, ${fdsBefore} before)`);
    assertCleanLog(t, host);
  } finally {
    await teardown(t, { disk, host, fe });
  }
});

test.serial('REM_MEM_REG of the region the buffers are in while buffered reads wait on a slow file: it stays mapped until they are answered, they land there, then it goes', async (t) => {
  const name = `iofs-remreg-${process.pid}`;
  const { disk, host, fe, blk, region1 } = await setupInRegion1(name);
  try {
    t.true(hostMaps(host, `${name}-1`) > 0 && hostFds(host, `${name}-1`) === 1, 'the host maps region 1 and holds its fd');
    const maps0 = hostMaps(host, `${name}-0`);
    const fdsBefore = host.fdCount();
    disk.hold();
    const reads = heldReads(blk, disk);
    t.true(await eventually(() => disk.held === HELD, 10_000), `every read reached the file system and waits there (${disk.held} of ${HELD})`);
    const { sent } = await removeRegion(fe, host, region1);
    // As for a disconnect, nothing says "I would unmap now": watched for a while.
    t.false(await eventually(() => hostMaps(host, `${name}-1`) === 0, 1500), 'region 1 stays mapped while the reads are held');
    t.is(disk.held, HELD, 'the reads are still held');
    disk.open();
    t.deepEqual((await withTimeout(reads, 20_000, 'the held reads')).filter((e) => e !== null), [], 'every held read completed into region 1 with the right bytes');
    await withTimeout(sent, 10_000, 'REM_MEM_REG');
    t.true(await eventually(() => hostMaps(host, `${name}-1`) === 0, 10_000), 'then region 1 is unmapped');
    t.is(hostFds(host, `${name}-1`), 0, 'and its fd closed');
    t.is(hostMaps(host, `${name}-0`), maps0, 'region 0 stays mapped');
    t.is(host.fdCount(), fdsBefore - 1, 'no other fd left behind or lost');
    assertCleanLog(t, host);
  } finally {
    await teardown(t, { disk, host, fe });
  }
});

test.serial('REM_MEM_REG while buffered reads wait on a slow file and half of them then fail (EIO): the failed ones reach the guest as IOERR, written before the region goes; the device serves on', async (t) => {
  const name = `iofs-remreg-eio-${process.pid}`;
  // Reads HELD/2 .. HELD-1 fail: the device hears io-failed and answers IOERR, a status byte
  // in the region being removed. Written after the unmap it would land nowhere while the used
  // ring reported it written (the guest reading the OK it left there).
  const badFrom = heldSector(HELD / 2) * SECTOR;
  const { disk, host, fe, blk, region1 } = await setupInRegion1(name, [badFrom, heldSector(HELD) * SECTOR]);
  try {
    disk.hold();
    const reads = heldReads(blk, disk);
    t.true(await eventually(() => disk.held === HELD, 10_000), `every read reached the file system and waits there (${disk.held} of ${HELD})`);
    const { sent } = await removeRegion(fe, host, region1);
    disk.open();
    const errors = await withTimeout(reads, 20_000, 'the held reads');
    t.deepEqual(
      errors,
      Array.from({ length: HELD }, (_, i) => (i < HELD / 2 ? null : `read ${i}: read of 4096 bytes at sector ${heldSector(i)} failed: IOERR`)),
      'the good half lands with the right bytes, the failing half is IOERR',
    );
    await withTimeout(sent, 10_000, 'REM_MEM_REG');
    t.true(await eventually(() => hostMaps(host, `${name}-1`) === 0, 10_000), 'then region 1 is unmapped');
    t.is((await fe.conn.getStatus()) & 0x40, 0, 'the device does not need a reset');
    t.notRegex(host.log(), /EFAULT|fault|needs a reset/i, 'no memory fault, no device failure');
    t.regex(host.log(), /disk\.img: read of \d+ bytes at \d+ failed: EIO/, 'the host logs the EIO');
  } finally {
    await teardown(t, { disk, host, fe });
  }
});
