// Disk hand-over (docs/migration.md, "Disk hand-over"): a migration between two real vhost-wasm
// host processes on this machine in which the memory disk's memfd goes from the source to the
// destination over the vhost-user sockets (SCM_RIGHTS) instead of its bytes through a pipe, and
// the container without the disk streams host to host. Checked: the disk reads back byte for
// byte on the destination, which then serves writes; a memfd the destination must not serve
// (another size, a pipe, sealed against writes) is refused with its own disk untouched; a
// migration that fails after the destination adopted the disk leaves the source serving its disk
// and the destination back on its own; hosts without the extension get a clear refusal.
import test from 'ava';
import { constants, existsSync, mkdtempSync, openSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawn } from 'node:child_process';
import { REPO, hostCommand, startHost, type HostProcess } from './helpers/host-process.ts';
import { BlkDevice } from '../host/frontend/blk.ts';
import { loadState, migrate, MigrationError, saveState } from '../host/frontend/migrate.ts';
import { parallel } from './helpers/precopy-frontend.ts';
import { FRONTEND_PROTOCOL_FEATURES, VhostUserFrontend, VIRTIO_F_VERSION_1 } from '../host/frontend/driver.ts';
import { DeviceStateDirection, featureBit } from '../host/protocol/constants.ts';
import { DISK_HANDOVER_PROTOCOL_FEATURE, HandoverPhase, PRECOPY_PROTOCOL_FEATURE } from '../host/protocol/precopy.ts';
import { native } from '../host/native/index.ts';
import { RFC_STATE_SHM_PROTOCOL_FEATURE } from '../host/protocol/rfc-state-shm.ts';
import { VhostUserConnection } from '../host/frontend/connection.ts';
import { rawRpc } from './helpers/daemon-process.ts';

const BLK = join(REPO, 'dist', 'plugins', 'blk.wasm');
const maybe = existsSync(BLK) ? test.serial : test.serial.skip;
const MIB = 1 << 20;
const SIZE = 64 * MIB;

function blkHost(storage: string): Promise<HostProcess> {
  return startHost(['--socket-path', '{socket}', '--plugin', BLK, '--storage', storage]);
}

/** Our front-end with the hand-over (bit 61) and pre-copy (bit 62) on offer. */
function connect(h: HostProcess): Promise<VhostUserFrontend> {
  return VhostUserFrontend.connect(h.socketPath, {
    memoryBytes: 16 << 20,
    queues: [128],
    features: 1n << BigInt(VIRTIO_F_VERSION_1),
    protocolFeatures: FRONTEND_PROTOCOL_FEATURES | featureBit(PRECOPY_PROTOCOL_FEATURE) | featureBit(DISK_HANDOVER_PROTOCOL_FEATURE),
  });
}

/** MiB m of the pattern `tag`: every 4 KiB block names itself, so a block landing elsewhere shows. */
function pattern(tag: string, m: number): Buffer {
  const b = Buffer.alloc(MIB);
  for (let k = 0; k < MIB / 4096; k++) b.fill(`${tag} block ${m * 256 + k};`, k * 4096, (k + 1) * 4096);
  return b;
}

async function writeMiBs(blk: BlkDevice, tag: string, mibs: number, from = 0): Promise<void> {
  await parallel(mibs, 8, (i) => blk.write(((from + i) * MIB) / 512, pattern(tag, from + i)));
}

/** The MiBs of [from, from + mibs) that do not read back as `tag` (zeros for tag null). */
async function differing(blk: BlkDevice, tag: string | null, mibs: number, from = 0): Promise<number[]> {
  const bad: number[] = [];
  await parallel(mibs, 8, async (i) => {
    const m = from + i;
    const got = await blk.read((m * MIB) / 512, MIB);
    if (!Buffer.from(got.buffer, got.byteOffset, got.length).equals(tag === null ? Buffer.alloc(MIB) : pattern(tag, m))) bad.push(m);
  });
  return bad.sort((x, y) => x - y);
}

/** differing() through a connection of its own to `h` (closed after). */
async function differingOn(h: HostProcess, tag: string | null, mibs: number, from = 0): Promise<number[]> {
  const fe = await connect(h);
  try {
    return await differing(new BlkDevice(fe.queues[0]), tag, mibs, from);
  } finally {
    await fe.close();
  }
}

/** Fills the destination's own disk through a connection of its own (then gone), so that a byte it lost shows. */
async function fillOwn(h: HostProcess, mibs: number): Promise<void> {
  const fe = await connect(h);
  await writeMiBs(new BlkDevice(fe.queues[0]), 'destination own', mibs);
  await fe.close();
}

for (const dst of ['memory:64M', 'memory:64M,prealloc=on']) {
  maybe(`a 64 MiB memory disk moves by hand-over into a destination ${dst}: read back byte for byte, then written there; the source serves it no more`, async (t) => {
    t.timeout(120_000);
    const [a, b] = await Promise.all([blkHost('memory:64M'), blkHost(dst)]);
    try {
      await fillOwn(b, 4);
      const fe = await connect(a);
      try {
        const blk = new BlkDevice(fe.queues[0]);
        // The last 4 MiB left unwritten: zeros must read as zeros.
        await writeMiBs(blk, 'source', 60);
        const report = await migrate(fe, b.socketPath, { channel: 'handover' });
        t.is(report.channel, 'handover');
        t.is(report.bytes, 0);
        t.is(typeof report.handoverMs, 'number');
        t.regex(a.log(), /memory disk lent for a hand-over/);
        t.regex(b.log(), /memory disk handed over: adopted a 67108864-byte memfd/);
        // The container that streamed is small: the disk's bytes were not in it.
        const saved = /device state saved: (\d+) bytes/.exec(a.log());
        t.truthy(saved, a.log());
        t.true(Number(saved![1]) < MIB, `container of ${saved![1]} bytes`);
        t.deepEqual(await differing(blk, 'source', 60), [], 'MiB(s) of the destination differing from the source');
        t.deepEqual(await differing(blk, null, 4, 60), [], 'unwritten MiB(s) not zero');
        // The destination serves writes, and its reads see them.
        await writeMiBs(blk, 'after', 4, 10);
        t.deepEqual(await differing(blk, 'after', 4, 10), []);
        t.deepEqual(await differing(blk, 'source', 10), []);
      } finally {
        await fe.close();
      }
      // The source let its disk go with the front-end's connection: a ring no longer starts there.
      t.truthy(await a.waitForLog(/memory disk handed over to another host by a migration/));
      const again = await connect(a).catch((e: Error) => e);
      if (again instanceof Error) t.regex(again.message, /SET_VRING_KICK/);
      else {
        await again.close();
        t.fail('a ring started on the source after its disk was handed over');
      }
    } finally {
      await Promise.all([a.stop(), b.stop()]);
    }
  });
}

/** A memfd like a memory disk's: `size` bytes, sealed against shrinking and growing, plus `seals`. */
function diskLike(size: number, extraSeals = 0): number {
  const fd = native.memfdCreate('test-disk', true);
  native.ftruncate(fd, size);
  native.memfdAddSeals(fd, 0x2 | 0x4 | extraSeals);
  return fd;
}

/**
 * A memfd on hugetlbfs (MFD_HUGETLB), 8 MiB and sealed like a disk, opened read-write through
 * the python child that made it (no huge page is touched: nothing maps it before the refusal).
 */
async function hugetlbMemfd(): Promise<number> {
  const code = 'import os,sys\nfd=os.memfd_create("test-disk",os.MFD_HUGETLB|os.MFD_ALLOW_SEALING)\nos.ftruncate(fd,8<<20)\nimport fcntl\nfcntl.fcntl(fd,fcntl.F_ADD_SEALS,fcntl.F_SEAL_SHRINK|fcntl.F_SEAL_GROW)\nprint(fd,flush=True)\nsys.stdin.read()';
  const p = spawn('python3', ['-c', code], { stdio: ['pipe', 'pipe', 'inherit'] });
  try {
    const childFd = await new Promise<string>((resolve, reject) => {
      p.stdout.once('data', (d) => resolve(String(d).trim()));
      p.once('exit', (c) => reject(new Error(`python exited ${c} before making the hugetlbfs memfd`)));
    });
    return openSync(`/proc/${p.pid}/fd/${childFd}`, constants.O_RDWR);
  } finally {
    p.stdin.end();
  }
}

maybe('a destination refuses a memfd of another size, a pipe, a write-sealed, an unsealed, a read-only or a hugetlbfs memfd, and keeps its own disk untouched', async (t) => {
  t.timeout(60_000);
  const b = await blkHost('memory:8M');
  try {
    await fillOwn(b, 8);
    const offers: { what: string; fd: () => number | Promise<number>; log: RegExp }[] = [
      { what: 'another size', fd: () => diskLike(4 * MIB), log: /the disk handed over is 4194304 bytes; this device's memory disk is 8388608/ },
      {
        what: 'a pipe',
        fd: () => {
          const [r, w] = native.pipe2();
          native.close(w);
          return r;
        },
        log: /the disk handed over is a pipe, not a memfd/,
      },
      { what: 'write-sealed', fd: () => diskLike(8 * MIB, 0x8), log: /sealed against writes/ },
      {
        what: 'unsealed',
        fd: () => {
          const fd = native.memfdCreate('test-disk', false);
          native.ftruncate(fd, 8 * MIB);
          return fd;
        },
        log: /not sealed against shrinking/,
      },
      {
        // The right memfd, opened again read-only: refused before anything of the own disk changes.
        what: 'a read-only reopen',
        fd: () => {
          const rw = diskLike(8 * MIB);
          try {
            return openSync(`/proc/self/fd/${rw}`, constants.O_RDONLY);
          } finally {
            native.close(rw);
          }
        },
        log: /the disk handed over is open read-only, not read-write/,
      },
      {
        // A memfd on hugetlbfs (the addon makes none, a python child does): a memfd, read-write,
        // but not shmem (the fsType memoryFdInfo reads with fstatfs).
        what: 'a hugetlbfs memfd',
        fd: hugetlbMemfd,
        log: /the disk handed over is a memfd on another filesystem \(type 0x958458f6, not tmpfs\/shmem/,
      },
    ];
    for (const o of offers) {
      const fe = await connect(b);
      try {
        await fe.stopQueue(0);
        const fd = await o.fd();
        try {
          await t.throwsAsync(fe.conn.setDeviceStateFd(DeviceStateDirection.LOAD, HandoverPhase.DISK_FD, fd), { message: /SET_DEVICE_STATE_FD failed: error 3/ }, o.what);
        } finally {
          native.close(fd);
        }
        t.truthy(await b.waitForLog(o.log), o.what);
        // A DISK_FINAL state without an adopted disk is refused too.
        const [r, w] = native.pipe2();
        try {
          await t.throwsAsync(fe.conn.setDeviceStateFd(DeviceStateDirection.LOAD, HandoverPhase.DISK_FINAL, r), { message: /error/ });
        } finally {
          native.close(r);
          native.close(w);
        }
      } finally {
        await fe.close();
      }
    }
    // Its own disk serves on, every byte as it was.
    t.deepEqual(await differingOn(b, 'destination own', 8), []);
  } finally {
    await b.stop();
  }
});

maybe('a hand-over to a destination with a disk of another size is refused before the stop; the source serves on with its disk', async (t) => {
  t.timeout(60_000);
  const [a, b] = await Promise.all([blkHost('memory:16M'), blkHost('memory:8M')]);
  try {
    const fe = await connect(a);
    try {
      const blk = new BlkDevice(fe.queues[0]);
      await writeMiBs(blk, 'source', 16);
      const err = await t.throwsAsync(migrate(fe, b.socketPath, { channel: 'handover' }), { instanceOf: MigrationError });
      t.true(err?.sourceResumed, err?.message);
      t.regex(err?.message ?? '', /disk hand-over failed: destination: SET_DEVICE_STATE_FD failed.*the source keeps serving/);
      t.truthy(await b.waitForLog(/the disk handed over is 16777216 bytes; this device's memory disk is 8388608/));
      t.deepEqual(await differing(blk, 'source', 16), []);
      await writeMiBs(blk, 'after', 2);
      t.deepEqual(await differing(blk, 'after', 2), []);
    } finally {
      await fe.close();
    }
  } finally {
    await Promise.all([a.stop(), b.stop()]);
  }
});

for (const at of ['transfer', 'start-destination']) {
maybe(`a hand-over that fails after the destination adopted the disk (at ${at}): the source resumes with it and keeps it, the destination goes back to its own and never wrote the source's`, async (t) => {
  t.timeout(60_000);
  const [a, b] = await Promise.all([blkHost('memory:8M'), blkHost('memory:8M')]);
  try {
    await fillOwn(b, 8);
    const fe = await connect(a);
    try {
      const blk = new BlkDevice(fe.queues[0]);
      await writeMiBs(blk, 'source', 8);
      const err = await t.throwsAsync(
        migrate(fe, b.socketPath, {
          channel: 'handover',
          onStep: (s) => {
            // transfer: the disk is adopted, the state has not moved; start-destination: the
            // source saved its DISK_FINAL state and the destination loaded it.
            if (s === at) throw new Error('stopped by the test after the stop');
          },
        }),
        { instanceOf: MigrationError },
      );
      t.true(err?.sourceResumed, err?.message);
      t.regex(b.log(), /memory disk handed over: adopted/);
      // The source serves its disk, and writes it.
      t.deepEqual(await differing(blk, 'source', 8), []);
      await writeMiBs(blk, 'source after', 2);
      t.deepEqual(await differing(blk, 'source after', 2), []);
      // The destination let the memfd go and serves its own disk again.
      t.truthy(await b.waitForLog(/disk hand-over not completed: the adopted memfd is let go/));
      const dfe = await connect(b);
      try {
        const dblk = new BlkDevice(dfe.queues[0]);
        t.deepEqual(await differing(dblk, 'destination own', 8), []);
        // Its writes land in its own disk, not the source's.
        await writeMiBs(dblk, 'destination after', 1, 4);
      } finally {
        await dfe.close();
      }
      t.deepEqual(await differing(blk, 'source', 6, 2), []);
    } finally {
      await fe.close();
    }
    // The source kept its disk: a new front-end starts a ring there and reads it.
    t.truthy(await a.waitForLog(/front-end disconnected/));
    t.deepEqual(await differingOn(a, 'source after', 2), []);
    t.notRegex(a.log(), /handed over to another host/);
  } finally {
    await Promise.all([a.stop(), b.stop()]);
  }
});
}

maybe('hand-over needs protocol feature 61 on both hosts: a destination on a file disk, or a source on one, gets a clear refusal', async (t) => {
  t.timeout(60_000);
  const img = join(mkdtempSync(join(tmpdir(), 'vhw-handover-')), 'disk.img');
  writeFileSync(img, Buffer.alloc(8 * MIB));
  const [mem, file] = await Promise.all([blkHost('memory:8M'), blkHost(img)]);
  try {
    // Destination without the bit.
    let fe = await connect(mem);
    try {
      const err = await t.throwsAsync(migrate(fe, file.socketPath, { channel: 'handover' }), { instanceOf: MigrationError });
      t.regex(err?.message ?? '', /the destination does not offer the disk hand-over \(protocol feature 61/);
      t.false(err?.sourceResumed);
      // Nothing stopped: the source serves on.
      await new BlkDevice(fe.queues[0]).write(0, pattern('x', 0));
    } finally {
      await fe.close();
    }
    // Source without the bit.
    fe = await connect(file);
    try {
      const err = await t.throwsAsync(migrate(fe, mem.socketPath, { channel: 'handover' }), { instanceOf: MigrationError });
      t.regex(err?.message ?? '', /the source did not negotiate the disk hand-over \(protocol feature 61/);
    } finally {
      await fe.close();
    }
  } finally {
    await Promise.all([mem.stop(), file.stop()]);
  }
});

maybe('vhost-wasm migrate --channel handover: the disk reads back on the destination; the JSON report says no state bytes passed through the tool', async (t) => {
  t.timeout(60_000);
  const [a, b] = await Promise.all([blkHost('memory:16M'), blkHost('memory:16M')]);
  const run = (args: string[]) =>
    new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
      const p = spawn(...hostCommand(['migrate', ...args]), { cwd: REPO });
      let stdout = '';
      let stderr = '';
      p.stdout.on('data', (d) => (stdout += d));
      p.stderr.on('data', (d) => (stderr += d));
      p.on('exit', (code) => resolve({ code, stdout, stderr }));
    });
  try {
    let fe = await connect(a);
    await writeMiBs(new BlkDevice(fe.queues[0]), 'source', 16);
    await fe.close();
    const r = await run(['--from', a.socketPath, '--to', b.socketPath, '--channel', 'handover', '--json']);
    t.is(r.code, 0, r.stderr);
    const rep = JSON.parse(r.stdout);
    t.is(rep.channel, 'handover');
    t.is(rep.stateBytes, null);
    t.deepEqual(rep.precopyMs, []);
    t.is(typeof rep.handoverMs, 'number');
    fe = await connect(b);
    try {
      t.deepEqual(await differing(new BlkDevice(fe.queues[0]), 'source', 16), []);
    } finally {
      await fe.close();
    }
    const help = await run(['--help']);
    t.regex(help.stdout, /--channel pipe\|direct-pipe\|memfd\|rfc-shm\|handover/);
  } finally {
    await Promise.all([a.stop(), b.stop()]);
  }
});

maybe('while an adopted disk waits for its DISK_FINAL state, no ring starts and no other LOAD is taken on the destination: the memfd it was given stays as it was', async (t) => {
  t.timeout(60_000);
  const [a, b] = await Promise.all([blkHost('memory:8M'), blkHost('memory:8M')]);
  try {
    await fillOwn(b, 8);
    // A full state of another device (the source's), which would overwrite the disk it loads into.
    const src = await connect(a);
    await writeMiBs(new BlkDevice(src.queues[0]), 'source', 8);
    await src.stopQueue(0);
    const full = await saveState(src.conn, 'pipe');
    await src.close();

    const given = diskLike(8 * MIB);
    const view = native.mmap(given, 8 * MIB, 0, false);
    try {
      const fe = await connect(b);
      try {
        const base = await fe.stopQueue(0);
        // A disk is handed over before any ring fd: as a fresh destination, after a reset.
        await fe.conn.resetDevice();
        t.is(await fe.conn.setDeviceStateFd(DeviceStateDirection.LOAD, HandoverPhase.DISK_FD, given), null);
        t.truthy(await b.waitForLog(/memory disk handed over: adopted a 8388608-byte memfd/));
        await t.throwsAsync(loadState(fe.conn, full, 'pipe'), undefined, 'a STOPPED LOAD into the adopted disk');
        t.truthy(await b.waitForLog(/a disk hand-over waits for its DISK_FINAL state: only that LOAD is taken now/));
        await t.throwsAsync(fe.startQueue(0, base), { message: /SET_VRING_KICK \(12\) failed/ });
        t.truthy(await b.waitForLog(/ring 0 cannot start: the memory disk is not served: the memory disk is a memfd handed over by a migration that has not completed/));
      } finally {
        await fe.close();
      }
      t.truthy(await b.waitForLog(/disk hand-over not completed: the adopted memfd is let go/));
      // Not a byte of the memfd it was given was written.
      t.true(Buffer.from(view.window(0, 8 * MIB)).equals(Buffer.alloc(8 * MIB)));
    } finally {
      view.unmap();
      native.close(given);
    }
    t.deepEqual(await differingOn(b, 'destination own', 8), []);
  } finally {
    await Promise.all([a.stop(), b.stop()]);
  }
});

/** A host that also offers the RFC shm state channel (protocol feature 63). */
function rfcHost(storage: string): Promise<HostProcess> {
  return startHost(['--socket-path', '{socket}', '--plugin', BLK, '--storage', storage, '--experimental-rfc-state-shm']);
}

function connectRfc(h: HostProcess): Promise<VhostUserFrontend> {
  return VhostUserFrontend.connect(h.socketPath, {
    memoryBytes: 16 << 20,
    queues: [128],
    features: 1n << BigInt(VIRTIO_F_VERSION_1),
    protocolFeatures: FRONTEND_PROTOCOL_FEATURES | featureBit(PRECOPY_PROTOCOL_FEATURE) | featureBit(DISK_HANDOVER_PROTOCOL_FEATURE) | featureBit(RFC_STATE_SHM_PROTOCOL_FEATURE),
  });
}

/** A full state (RFC shm) of a third device whose disk is 8 MiB of `tag`. */
async function rfcState(tag: string): Promise<Uint8Array> {
  const o = await rfcHost('memory:8M');
  try {
    const fe = await connectRfc(o);
    await writeMiBs(new BlkDevice(fe.queues[0]), tag, 8);
    await fe.stopQueue(0);
    const full = await saveState(fe.conn, 'rfc-shm');
    await fe.close();
    return full;
  } finally {
    await o.stop();
  }
}

maybe('the RFC shm channel takes the hand-over guards too: no RFC LOAD into an adopted disk waiting for DISK_FINAL (the memfd stays as given, no ring starts), none into a source whose disk was handed over', async (t) => {
  t.timeout(90_000);
  const full = await rfcState('third');
  const [a, b] = await Promise.all([rfcHost('memory:8M'), rfcHost('memory:8M')]);
  try {
    // Destination: an adopted disk waits for its DISK_FINAL state.
    const given = diskLike(8 * MIB);
    const view = native.mmap(given, 8 * MIB, 0, false);
    try {
      const fe = await connectRfc(b);
      try {
        const base = await fe.stopQueue(0);
        await fe.conn.resetDevice();
        t.is(await fe.conn.setDeviceStateFd(DeviceStateDirection.LOAD, HandoverPhase.DISK_FD, given), null);
        await t.throwsAsync(loadState(fe.conn, full, 'rfc-shm'), { message: /RFC_SET_STATE_AREA failed/ }, 'an RFC LOAD into the adopted disk');
        t.truthy(await b.waitForLog(/RFC_SET_STATE_AREA refused: a disk hand-over waits for its DISK_FINAL state/));
        await t.throwsAsync(fe.startQueue(0, base), { message: /SET_VRING_KICK \(12\) failed/ });
      } finally {
        await fe.close();
      }
      t.truthy(await b.waitForLog(/disk hand-over not completed: the adopted memfd is let go/));
      t.true(Buffer.from(view.window(0, 8 * MIB)).equals(Buffer.alloc(8 * MIB)), 'the memfd it was given was written');
    } finally {
      view.unmap();
      native.close(given);
    }

    // Source: its disk went to b by a hand-over.
    const fe = await connect(a);
    try {
      const blk = new BlkDevice(fe.queues[0]);
      await writeMiBs(blk, 'source', 8);
      await migrate(fe, b.socketPath, { channel: 'handover' });
      t.truthy(await a.waitForLog(/memory disk handed over to another host by a migration/));
      const conn = VhostUserConnection.connect(a.socketPath);
      try {
        await conn.setOwner();
        await conn.setFeatures((await conn.getFeatures()) & ((1n << BigInt(VIRTIO_F_VERSION_1)) | (1n << 30n)));
        await conn.setProtocolFeatures((await conn.getProtocolFeatures()) & (FRONTEND_PROTOCOL_FEATURES | featureBit(RFC_STATE_SHM_PROTOCOL_FEATURE)));
        await t.throwsAsync(loadState(conn, full, 'rfc-shm'), { message: /RFC_SET_STATE_AREA failed/ }, 'an RFC LOAD into the given-away disk');
        t.truthy(await a.waitForLog(/RFC_SET_STATE_AREA refused: this device's memory disk was handed over to another host/));
      } finally {
        conn.close();
      }
      // No ring starts on the given-away source, and the destination serves the source's bytes.
      await t.throwsAsync(connect(a));
      t.deepEqual(await differing(blk, 'source', 8), []);
    } finally {
      await fe.close();
    }
  } finally {
    await Promise.all([a.stop(), b.stop()]);
  }
});

maybe('a hand-over whose destination start fails after its ring started: the source resumes, and the destination never serves the adopted disk to a later front-end; one whose rings were stopped in order does', async (t) => {
  t.timeout(90_000);
  const [a, b] = await Promise.all([blkHost('memory:8M'), blkHost('memory:8M')]);
  try {
    const fe = await connect(a);
    try {
      const blk = new BlkDevice(fe.queues[0]);
      await writeMiBs(blk, 'source', 8);
      // The destination's ring starts whole (its SET_VRING_KICK ran), then the start fails (as a
      // SET_VRING_ENABLE or another queue could): migrate resumes the source on the same memfd.
      const orig = fe.startQueue.bind(fe);
      fe.startQueue = async (i: number, base: number, conn?: VhostUserConnection) => {
        await orig(i, base, conn);
        if (conn !== undefined && conn !== fe.conn) throw new Error('the destination start failed after its ring started (test)');
      };
      const err = await t.throwsAsync(migrate(fe, b.socketPath, { channel: 'handover' }), { instanceOf: MigrationError });
      fe.startQueue = orig;
      t.true(err?.sourceResumed, err?.message);
      await writeMiBs(blk, 'source after', 2);
      t.truthy(await b.waitForLog(/disk hand-over: the front-end went away with the adopted disk's rings started and never stopped in order/));
      // A later front-end on the destination gets no ring on the source's live disk.
      const x = await connect(b).catch((e: Error) => e);
      if (!(x instanceof Error)) {
        await x.close();
        t.fail('the destination served the adopted disk to a later front-end while the source serves it');
      } else t.regex(x.message, /SET_VRING_KICK/);
      t.truthy(await b.waitForLog(/ring 0 cannot start: this device's memory disk is a memfd adopted by a disk hand-over whose front-end went away/));
      t.deepEqual(await differing(blk, 'source after', 2), []);
      t.deepEqual(await differing(blk, 'source', 6, 2), []);
    } finally {
      await fe.close();
    }
  } finally {
    await Promise.all([a.stop(), b.stop()]);
  }
  // A completed hand-over whose front-end stops the rings in order (as QEMU does on shutdown, and
  // the migrate CLI at its end) leaves a destination that serves the disk to the next front-end.
  const [c, d] = await Promise.all([blkHost('memory:8M'), blkHost('memory:8M')]);
  try {
    const fe = await connect(c);
    await writeMiBs(new BlkDevice(fe.queues[0]), 'source', 8);
    await migrate(fe, d.socketPath, { channel: 'handover' });
    await fe.stopQueue(0);
    await fe.close();
    t.deepEqual(await differingOn(d, 'source', 8), []);
  } finally {
    await Promise.all([c.stop(), d.stop()]);
  }
});

maybe('a source that saved its DISK_FINAL state takes no LOAD on that connection (STOPPED, DISK_FD) until a ring restarts there; then it serves its disk on', async (t) => {
  t.timeout(60_000);
  const a = await blkHost('memory:8M');
  try {
    const fe = await connect(a);
    try {
      const blk = new BlkDevice(fe.queues[0]);
      await writeMiBs(blk, 'source', 8);
      const base = await fe.stopQueue(0);
      const full = await saveState(fe.conn, 'pipe');
      // Lend the disk, then save the DISK_FINAL state (the container without the disk).
      const [r0, w0] = native.pipe2();
      const lent = await fe.conn.setDeviceStateFd(DeviceStateDirection.SAVE, HandoverPhase.DISK_FD, w0);
      native.close(r0);
      native.close(w0);
      t.not(lent, null);
      // The lent fd cannot seal the disk against writes (F_SEAL_SEAL on every memory disk).
      t.throws(() => native.memfdAddSeals(lent!, 0x10 /* F_SEAL_FUTURE_WRITE */), { message: /EPERM/ });
      native.close(lent!);
      const [r, w] = native.pipe2();
      t.is(await fe.conn.setDeviceStateFd(DeviceStateDirection.SAVE, HandoverPhase.DISK_FINAL, w), null);
      native.close(w);
      await fe.conn.checkDeviceState();
      native.close(r);
      await t.throwsAsync(loadState(fe.conn, full, 'pipe'), undefined, 'a STOPPED LOAD after the DISK_FINAL SAVE');
      t.truthy(await a.waitForLog(/this host saved a DISK_FINAL state: its disk is the destination's unless a ring restarts here/));
      const given = diskLike(8 * MIB);
      try {
        await t.throwsAsync(fe.conn.setDeviceStateFd(DeviceStateDirection.LOAD, HandoverPhase.DISK_FD, given), { message: /error 2/ }, 'a DISK_FD LOAD after the DISK_FINAL SAVE');
      } finally {
        native.close(given);
      }
      // The migration did not happen: a ring restarts, and the source serves its own bytes.
      await fe.startQueue(0, base);
      t.deepEqual(await differing(blk, 'source', 8), []);
    } finally {
      await fe.close();
    }
    t.notRegex(a.log(), /handed over to another host/);
  } finally {
    await a.stop();
  }
});

/** A control request's error message (or "ok" when it succeeded). */
async function control(h: HostProcess, method: string, params: object): Promise<string> {
  const [a] = (await rawRpc(`${h.socketPath}.control`, [JSON.stringify({ jsonrpc: '2.0', id: 1, method, params })], 1)) as { error?: { message: string; data?: unknown } }[];
  return a.error === undefined ? 'ok' : `${a.error.message} ${JSON.stringify(a.error.data ?? '')}`;
}

maybe('no plugin-upgrade and no host take-over during a disk hand-over: not on a source that lent its disk, not on a destination that adopted one', async (t) => {
  t.timeout(60_000);
  const [a, b] = await Promise.all([blkHost('memory:8M'), blkHost('memory:8M')]);
  try {
    const fe = await connect(a);
    const d = await connect(b);
    try {
      await writeMiBs(new BlkDevice(fe.queues[0]), 'source', 1);
      const [r0, w0] = native.pipe2();
      const lent = await fe.conn.setDeviceStateFd(DeviceStateDirection.SAVE, HandoverPhase.DISK_FD, w0);
      native.close(r0);
      native.close(w0);
      t.regex(await control(a, 'plugin-upgrade', { plugin: BLK }), /disk hand-over out of this device is under way/);
      t.regex(await control(a, 'host-handover', { to: '/nonexistent/handover.sock' }), /disk hand-over out of this device is under way/);
      await d.stopQueue(0);
      await d.conn.resetDevice();
      t.is(await d.conn.setDeviceStateFd(DeviceStateDirection.LOAD, HandoverPhase.DISK_FD, lent!), null);
      native.close(lent!);
      t.regex(await control(b, 'plugin-upgrade', { plugin: BLK }), /disk hand-over into this device is under way/);
      t.regex(await control(b, 'host-handover', { to: '/nonexistent/handover.sock' }), /disk hand-over into this device is under way/);
    } finally {
      await d.close();
      await fe.close();
    }
    t.truthy(await b.waitForLog(/disk hand-over not completed: the adopted memfd is let go/));
    t.truthy(await a.waitForLog(/front-end disconnected/));
    // The hand-over ended with its connections: both upgrade again.
    t.is(await control(a, 'plugin-upgrade', { plugin: BLK }), 'ok');
    t.is(await control(b, 'plugin-upgrade', { plugin: BLK }), 'ok');
  } finally {
    await Promise.all([a.stop(), b.stop()]);
  }
});

maybe('two hand-overs into one destination in a row: the disks they replaced are both closed (the second does not leak the first)', async (t) => {
  t.timeout(60_000);
  const [a, b, c] = await Promise.all([blkHost('memory:8M'), blkHost('memory:8M'), blkHost('memory:8M')]);
  try {
    await fillOwn(b, 1);
    const DISK = 'memfd:vhost-wasm-memory-disk';
    t.is(b.fdsNamed(DISK), 1);
    for (const [h, tag] of [[a, 'first'], [c, 'second']] as const) {
      const fe = await connect(h);
      await writeMiBs(new BlkDevice(fe.queues[0]), tag, 1);
      await migrate(fe, b.socketPath, { channel: 'handover' });
      await fe.stopQueue(0);
      await fe.close();
    }
    // The retired disks close a second after their hand-over: b ends with c's disk only.
    const deadline = Date.now() + 20_000;
    while (b.fdsNamed(DISK) > 1 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    t.is(b.fdsNamed(DISK), 1, 'memory-disk memfds the destination holds');
    t.deepEqual(await differingOn(b, 'second', 1), []);
  } finally {
    await Promise.all([a.stop(), b.stop(), c.stop()]);
  }
});
