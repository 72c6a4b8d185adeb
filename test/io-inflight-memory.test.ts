// Guest memory and asynchronous storage I/O through the real host: the blk plugin on a file on
// the real disk with --direct (io_uring, O_DIRECT: every read really waits for the disk), 64
// requests in flight when the front-end re-sends its memory table or goes away. What must hold:
// every request completes with the right bytes, the old mappings are unmapped (only after the
// I/O into them finished: the host does not fault or corrupt), no mapping or fd is left behind,
// and the host goes on serving.
import test from 'ava';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { BlkDevice } from '../host/frontend/blk.ts';
import { VhostUserFrontend, VIRTIO_F_VERSION_1 } from '../host/frontend/driver.ts';
import { REPO, startHost, type HostProcess } from './helpers/host-process.ts';

const BLK = join(REPO, 'dist', 'plugins', 'blk.wasm');
const IMAGE_BYTES = 16 << 20;
const F = { SIZE_MAX: 1, SEG_MAX: 2, BLK_SIZE: 6, FLUSH: 9 };
const FEATURES = [VIRTIO_F_VERSION_1, ...Object.values(F)].reduce((m, b) => m | (1n << BigInt(b)), 0n);
const dir = mkdtempSync('/var/tmp/vhost-wasm-io-inflight-');
test.after.always(() => rmSync(dir, { recursive: true, force: true }));

/** Lines of the host's /proc/PID/maps that map the named memfd (guest RAM). */
function hostMaps(host: HostProcess, name: string): number {
  return readFileSync(`/proc/${host.child.pid}/maps`, 'utf8').split('\n').filter((l) => l.includes(`/memfd:${name}`)).length;
}

/** The host's fds on the named memfd. */
function hostFds(host: HostProcess, name: string): number {
  const pid = host.child.pid!;
  return readdirSync(`/proc/${pid}/fd`).filter((fd) => {
    try {
      return readlinkSync(`/proc/${pid}/fd/${fd}`).startsWith(`/memfd:${name}`);
    } catch {
      return false;
    }
  }).length;
}

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
    fe.conn.close();
    await fe.conn.closed;
    // The next front-end (new memory): the old RAM's mappings and fds are gone.
    const fe2 = await VhostUserFrontend.connect(host.socketPath, { memoryBytes: 32 << 20, memory: { name: `iof-next-${process.pid}` }, queues: [128], features: FEATURES, indirect: 128 });
    try {
      await Promise.all(reads(new BlkDevice(fe2.queues[0]), data, 64));
      t.is(hostMaps(host, name), 0, 'the first front-end\'s RAM is unmapped');
      t.is(hostFds(host, name), 0, 'and its fds closed');
    } finally {
      await fe2.close();
    }
    t.notRegex(host.log(), /ERROR|fault/i, 'no error or memory fault in the host log');
  } finally {
    await fe.close();
    t.is(await host.stop(), 0, host.log());
  }
});
