// A request the device holds and completes later by reading its payload (a write's transfer to
// the backing), with the memory table changed in between: the payload is read where the
// guest's buffers are in the new table, never from the unmapped old mapping. The host is a real
// child process (its log, its fds and mappings read from /proc); the victim is the script test
// device (`hold-write OFFSET`: held, then written to its disk file by `release`), beside a
// bystander that must keep serving.
//   - SET_MEM_TABLE with the same guest RAM (new fds, new host mappings): the held write puts
//     the guest's bytes on the disk;
//   - REM_MEM_REG of the region the payload is in: the device fails (NEEDS_RESET) naming the
//     request and the payload's guest address, nothing reaches the disk; the bystander and a
//     new connection to the same socket serve on;
//   - REM_MEM_REG of the region only a held read's header is in (its writable buffer stays):
//     a read never reads its readable part again, so it completes with the disk's bytes.
// After the front-end goes, the host holds no fd and no mapping of the guest's RAM.
import test from 'ava';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VhostUserFrontend, VIRTIO_F_VERSION_1, type FrontendOptions } from '../host/frontend/driver.ts';
import { startMultiHost, type MultiHost } from './helpers/multi-host.ts';
import { eventually, REPO } from './helpers/host-process.ts';
import { hostFds, hostMaps } from './helpers/host-memfds.ts';
import { command, STATUS_OK } from './devices/script-device.ts';
import { fillRegion } from './helpers/fill-region.ts';
import { scriptDeviceServes } from './helpers/device-checks.ts';

const STATUS_NEEDS_RESET = 0x40;
const DISK_BYTES = 1 << 20;
const OFFSET = 64 * 1024;

let dir: string;
let disk: string;
let host: MultiHost;

test.before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'held-payload-remap-'));
  disk = join(dir, 'disk.raw');
  writeFileSync(disk, Buffer.alloc(0));
  truncateSync(disk, DISK_BYTES);
  host = await startMultiHost([
    { label: 'victim', socket: join(dir, 'victim.sock'), module: join(REPO, 'test', 'devices', 'script-device.ts'), options: { file: disk } },
    { label: 'bystander', socket: join(dir, 'bystander.sock'), module: join(REPO, 'test', 'devices', 'null-device.ts'), options: { mode: 'echo' } },
  ]);
});

test.after.always(async () => {
  await host?.stop();
  rmSync(dir, { recursive: true, force: true });
});

const opts: FrontendOptions = { memoryBytes: 4 << 20, queues: [16], features: 1n << BigInt(VIRTIO_F_VERSION_1), eventIdx: true, indirect: false };
const text = (c: { data: Uint8Array; len: number }) => Buffer.from(c.data.subarray(0, c.len)).toString('latin1');
const onDisk = (len: number) => readFileSync(disk).subarray(OFFSET, OFFSET + len);

/** The host lets go of the named guest RAM: no mapping, no fd left. */
async function released(name: string): Promise<boolean> {
  return eventually(() => hostMaps(host, name) === 0 && hostFds(host, name) === 0, 10_000);
}

test.serial('SET_MEM_TABLE while the device holds a write: the payload it reads later is the guest\'s bytes, read through the new mapping', async (t) => {
  const name = `held-remap-${process.pid}`;
  const fe = await VhostUserFrontend.connect(join(dir, 'victim.sock'), { ...opts, memory: { name } });
  const payload = randomBytes(8192);
  try {
    const q = fe.queues[0];
    const held = q.submit([command(`hold-write ${OFFSET}`), payload], 1);
    // Served after the hold was handed to the device: the held write is with it now.
    t.is(text(await q.submit([command('echo held')], 32)), 'echo held');
    const mapsBefore = hostMaps(host, name);
    t.true(mapsBefore > 0, 'the host maps guest RAM');
    // The same RAM again with new fds: the host maps it anew and unmaps the mapping the held
    // request's views are in.
    await fe.conn.setMemTable(fe.memory.memTable());
    t.deepEqual(onDisk(payload.length), Buffer.alloc(payload.length), 'nothing written before the device answers');
    // Bounded, with the host's log on failure: a device failed here answers nothing more.
    t.is(text(await host.within(q.submit([command('release')], 16), 'the release', 8000)), 'released');
    const c = await host.within(held, 'the held write', 8000);
    t.is(c.len, 1);
    t.is(c.data[0], STATUS_OK);
    t.true(onDisk(payload.length).equals(payload), 'the guest\'s payload is on the disk');
    t.is((await fe.conn.getStatus()) & STATUS_NEEDS_RESET, 0, 'the device keeps serving');
    t.is(hostMaps(host, name), mapsBefore, 'the old mapping went when the new one came');
  } finally {
    await fe.close();
  }
  t.true(await released(name), `the host still holds guest RAM: ${hostMaps(host, name)} mappings, ${hostFds(host, name)} fds`);
});

test.serial('REM_MEM_REG of the region a held write\'s payload is in: the device fails naming the request and the guest address, nothing reaches the disk; the bystander and the next connection serve', async (t) => {
  const name = `held-remove-${process.pid}`;
  writeFileSync(disk, Buffer.alloc(DISK_BYTES));
  // Two regions described with ADD_MEM_REG; region 0 (the ring's) is filled so the held request's buffers go to region 1.
  const fe = await VhostUserFrontend.connect(join(dir, 'victim.sock'), { ...opts, memoryBytes: 8 << 20, memory: { name, regionBytes: 4 << 20 }, addMemReg: true });
  const bystander = await VhostUserFrontend.connect(join(dir, 'bystander.sock'), opts);
  const after = host.lines(/device needs a reset/).length;
  try {
    const q = fe.queues[0];
    const freeRegion0 = fillRegion(fe);
    const held = q.submit([command(`hold-write ${OFFSET}`), randomBytes(4096)], 1);
    held.catch(() => {});
    t.is(text(await q.submit([command('echo in region 1')], 32)), 'echo in region 1');
    // Room in region 0 again: the release's buffers are there, only the held write's are in region 1.
    freeRegion0();
    const region1 = fe.memory.memTable()[1];
    await fe.conn.remMemReg({ guestPhysAddr: region1.guestPhysAddr, memorySize: region1.memorySize, userspaceAddr: region1.userspaceAddr, mmapOffset: region1.mmapOffset });
    q.submit([command('release')], 16).catch(() => {});
    const line = await host.waitForLog(/device needs a reset/, after);
    const m = /request \d+ \(descriptor head \d+\) on ring 0: its device-readable buffer at guest address (0x[0-9a-f]+) \(\+\d+\) is no longer in guest memory .*so its payload cannot be read/.exec(line);
    t.truthy(m, line);
    const gpa = Number(m![1]);
    t.true(gpa >= Number(region1.guestPhysAddr) && gpa < Number(region1.guestPhysAddr + region1.memorySize), `the address named (${m![1]}) is in the removed region`);
    t.is((await fe.conn.getStatus()) & STATUS_NEEDS_RESET, STATUS_NEEDS_RESET);
    t.deepEqual(onDisk(4096), Buffer.alloc(4096), 'nothing of the payload reached the disk');
    t.is(text(await bystander.queues[0].submit([Buffer.from('still here')], 32)), 'still here');
  } finally {
    await bystander.close();
    await fe.close();
  }
  t.true(await released(name), `the host still holds guest RAM: ${hostMaps(host, name)} mappings, ${hostFds(host, name)} fds`);
  await scriptDeviceServes(t, join(dir, 'victim.sock'), opts);
});

test.serial('REM_MEM_REG of the region a held read\'s header is in, its writable buffer in a region that stays: the read completes with the disk\'s bytes and the device serves on', async (t) => {
  const name = `held-read-remove-${process.pid}`;
  const data = randomBytes(8192);
  const file = Buffer.alloc(DISK_BYTES);
  data.copy(file, OFFSET);
  writeFileSync(disk, file);
  // Three regions (ADD_MEM_REG): the ring in region 0; the held read's 32-byte header at the
  // very end of region 1, its writable buffer from the start of region 2.
  const fe = await VhostUserFrontend.connect(join(dir, 'victim.sock'), { ...opts, memoryBytes: 12 << 20, memory: { name, regionBytes: 4 << 20 }, addMemReg: true });
  const after = host.lines(/device needs a reset/).length;
  try {
    const q = fe.queues[0];
    const [, region1, region2] = fe.memory.memTable();
    t.is(Number(region1.guestPhysAddr + region1.memorySize), Number(region2.guestPhysAddr), 'regions 1 and 2 are adjacent');
    // The test front-end puts a request's buffers in one block: this one, across the boundary.
    const mem = fe.memory;
    const block = Number(region2.guestPhysAddr) - 32;
    const tryAlloc = mem.tryAlloc.bind(mem);
    const free = mem.free.bind(mem);
    mem.tryAlloc = () => ((mem.tryAlloc = tryAlloc), block);
    mem.free = (gpa) => (gpa === block ? undefined : free(gpa));
    const held = q.submit([command(`hold-read ${OFFSET} ${data.length}`)], data.length);
    t.is(text(await q.submit([command('echo held')], 32)), 'echo held');
    await fe.conn.remMemReg({ guestPhysAddr: region1.guestPhysAddr, memorySize: region1.memorySize, userspaceAddr: region1.userspaceAddr, mmapOffset: region1.mmapOffset });
    t.is(text(await host.within(q.submit([command('release')], 16), 'the release', 8000)), 'released');
    const c = await host.within(held, 'the held read', 8000);
    t.is(c.len, data.length);
    t.true(Buffer.from(c.data.subarray(0, c.len)).equals(data), 'the disk\'s bytes, in the buffer that stayed');
    t.is((await fe.conn.getStatus()) & STATUS_NEEDS_RESET, 0, 'the device keeps serving');
    t.is(host.lines(/device needs a reset/).length, after);
  } finally {
    await fe.close();
  }
  t.true(await released(name), `the host still holds guest RAM: ${hostMaps(host, name)} mappings, ${hostFds(host, name)} fds`);
});
