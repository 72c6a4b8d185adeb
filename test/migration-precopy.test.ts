// Pre-copy of a memory disk between two real host processes (docs/migration.md, "Pre-copy"):
// rounds of the disk's blocks move through a pipe from host to host while the source's rings
// run and writes keep landing; the last round goes with the rings stopped, and the container
// (phase PRECOPY_FINAL) carries the device's bytes and a marker of the last round instead of the
// disk. What a user checks: every acknowledged write is on the destination, byte for byte; and
// when a round is truncated, corrupted, or its destination dies, the migration fails with the
// source still serving.
import test from 'ava';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { spawn } from 'node:child_process';
import { REPO, hostCommand, startHost, type HostProcess } from './helpers/host-process.ts';
import { connectPrecopy, parallel } from './helpers/precopy-frontend.ts';
import { BlkDevice } from '../host/frontend/blk.ts';
import { FRONTEND_PROTOCOL_FEATURES, type VhostUserFrontend } from '../host/frontend/driver.ts';
import { VhostUserConnection } from '../host/frontend/connection.ts';
import { loadState, migrate, MigrationError, readToEnd, saveState, writeAll } from '../host/frontend/migrate.ts';
import { DeviceStateDirection, featureBit } from '../host/protocol/constants.ts';
import { PRECOPY_PROTOCOL_FEATURE, PrecopyPhase } from '../host/protocol/precopy.ts';
import { native } from '../host/native/index.ts';
import { rawRpc } from './helpers/daemon-process.ts';
import { decodeHeader, encodeHeader, encodeTrailer, peekHeaderLength, TRAILER_SIZE } from '../host/migration/container.ts';
import { crc32c } from '../host/migration/checksum.ts';

const BLK = join(REPO, 'dist', 'plugins', 'blk.wasm');
const maybe = existsSync(BLK) ? test.serial : test.serial.skip;
const MIB = 1 << 20;
const BLOCK = 64 << 10;

function blkHost(storage: string, extra: string[] = []): Promise<HostProcess> {
  return startHost(['--socket-path', '{socket}', '--plugin', BLK, '--storage', storage, ...extra]);
}

const connect = (h: HostProcess) => connectPrecopy(h);

/** Writes a pattern into every MiB of the disk through the rings; returns the model. */
async function fill(blk: BlkDevice, size: number): Promise<Buffer> {
  const model = Buffer.alloc(size);
  await parallel(size / MIB, 8, async (m) => {
    const p = Buffer.alloc(MIB, `fill MiB ${m}\n`);
    await blk.write((m * MIB) / 512, p);
    p.copy(model, m * MIB);
  });
  return model;
}

/** Writes `data` at byte `at` through the rings and into the model. */
async function put(blk: BlkDevice, model: Buffer, at: number, data: Buffer): Promise<void> {
  await blk.write(at / 512, data);
  data.copy(model, at);
}

async function readBack(blk: BlkDevice, model: Buffer): Promise<number[]> {
  const bad: number[] = [];
  await parallel(model.length / MIB, 8, async (m) => {
    const got = await blk.read((m * MIB) / 512, MIB);
    if (!Buffer.from(got.buffer, got.byteOffset, got.length).equals(model.subarray(m * MIB, (m + 1) * MIB))) bad.push(m);
  });
  return bad.sort((a, b) => a - b);
}

/** Waits until the host logged a line matching re after the first `mark` characters of its log. */
async function loggedSince(h: HostProcess, mark: number, re: RegExp): Promise<void> {
  for (let i = 0; i < 5000 && !re.test(h.log().slice(mark)); i++) await new Promise((r) => setTimeout(r, 2));
  if (!re.test(h.log().slice(mark))) throw new Error(`host never logged ${re}; its log:\n${h.log().slice(mark)}`);
}

/** A destination brought up by hand (nothing started), with pre-copy negotiated. */
async function rawDestination(h: HostProcess): Promise<VhostUserConnection> {
  const c = VhostUserConnection.connect(h.socketPath);
  await c.getFeatures();
  const prot = await c.getProtocolFeatures();
  await c.setProtocolFeatures(prot & (FRONTEND_PROTOCOL_FEATURES | featureBit(PRECOPY_PROTOCOL_FEATURE)));
  await c.setOwner();
  return c;
}

/** Asks the source to SAVE a round into a pipe; returns the pipe's read end (the caller closes it). */
async function startSave(src: VhostUserConnection, phase: number): Promise<number> {
  const [r, w] = native.pipe2();
  try {
    await src.setDeviceStateFd(DeviceStateDirection.SAVE, phase, w);
  } finally {
    native.close(w);
  }
  return r;
}

/** One round SAVEd from the source into this process (the source's CHECK passed). */
async function saveRound(src: VhostUserConnection, phase: number): Promise<Buffer> {
  const r = await startSave(src, phase);
  const parts: Buffer[] = [];
  try {
    await readToEnd(r, (b) => void parts.push(Buffer.from(b)));
  } finally {
    native.close(r);
  }
  await src.checkDeviceState();
  return Buffer.concat(parts);
}

/** Feeds bytes to the destination as one round; resolves with its CHECK's outcome. */
async function loadRound(dst: VhostUserConnection, bytes: Buffer, phase: number = PrecopyPhase.ROUND): Promise<'ok' | string> {
  const [r, w] = native.pipe2();
  try {
    await dst.setDeviceStateFd(DeviceStateDirection.LOAD, phase, r);
  } finally {
    native.close(r);
  }
  try {
    await writeAll(w, bytes);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EPIPE') throw e;
  } finally {
    native.close(w);
  }
  return dst.checkDeviceState().then(() => 'ok', (e: Error) => e.message);
}

/**
 * A container as a hostile or broken source could send it: the same sections, the device's own
 * (id 1) moved last and its bytes zeroed (the blk plugin refuses them: bad magic), under a
 * header and trailer that check out. So every other section (the disk, or the pre-copy marker)
 * is whole and checks out, and only then does the LOAD fail.
 */
function deviceRefusedLast(container: Buffer): Buffer {
  const hdr = decodeHeader(container.subarray(0, peekHeaderLength(container.subarray(0, 16))));
  let at = hdr.headerLength;
  const parts = hdr.sections.map((entry) => {
    const bytes = container.subarray(at, at + entry.length);
    at += entry.length;
    return { entry, bytes: entry.id === 1 ? Buffer.alloc(entry.length) : bytes };
  });
  if (at + TRAILER_SIZE !== container.length) throw new Error('deviceRefusedLast: not one whole container');
  const order = [...parts.filter((p) => p.entry.id !== 1), ...parts.filter((p) => p.entry.id === 1)];
  const header = encodeHeader(hdr.identity, order.map((p) => p.entry), hdr.formatVersion).bytes;
  let crc = crc32c(header);
  for (const p of order) crc = crc32c(p.bytes, crc);
  return Buffer.concat([header, ...order.map((p) => p.bytes), encodeTrailer(crc)]);
}

interface Pair {
  a: HostProcess;
  b: HostProcess;
  fe: VhostUserFrontend;
  blk: BlkDevice;
}

/** Two hosts with `disk` memory disks and a front-end on the first; everything stopped after `body`. */
async function withPair(disk: string, body: (p: Pair) => Promise<void>, destinationArgs: string[] = []): Promise<void> {
  const [a, b] = await Promise.all([blkHost(disk), blkHost(disk, destinationArgs)]);
  const fe = await connect(a);
  try {
    await body({ a, b, fe, blk: new BlkDevice(fe.queues[0]) });
  } finally {
    await fe.close();
    await Promise.all([a.stop(), b.stop()]);
  }
}

maybe('pre-copy, 256 MiB memory disk under writes: every acked write on the destination, the disk not in the stopped-time state', async (t) => {
  t.timeout(180_000);
  await withPair('memory:256M', async ({ a, b, fe, blk }) => {
    t.true(fe.conn.hasProtocol(PRECOPY_PROTOCOL_FEATURE), 'a host with a memory disk offers pre-copy');
    const model = await fill(blk, 256 * MIB);
    // 8 writers keep overwriting their own blocks through every round and the stop.
    let running = true;
    let acked = 0;
    const blocks = (256 * MIB) / BLOCK;
    const writers = Array.from({ length: 8 }, async (_, w) => {
      // Even writers write 64 KiB blocks, odd ones single 4 KiB pages (rounds of small runs).
      const size = w % 2 === 0 ? BLOCK : 4096;
      for (let v = 1; running; v++) {
        const at = ((w * 997 + v * 8 * 31) % blocks) * BLOCK + (size < BLOCK ? ((v * 7) % 16) * size : 0);
        await put(blk, model, at, Buffer.alloc(size, `writer ${w} version ${v};`));
        acked++;
      }
    });
    while (acked < 50) await new Promise((r) => setTimeout(r, 5));
    const steps: [string, number][] = [];
    const report = await migrate(fe, b.socketPath, {
      channel: 'pipe',
      precopyRounds: 2,
      onStep: (s) => void steps.push([s, acked]),
    });
    running = false;
    await Promise.all(writers);
    const during = steps.find(([s]) => s === 'stop-source')![1] - steps.find(([s]) => s === 'precopy-0')![1];
    t.true(during > 0, `${during} writes acknowledged while the rounds ran`);
    t.true(report.precopyMs.length >= 2 && report.precopyMs.length <= 3, `${report.precopyMs.length} rounds: one or two live (the second only if the first converged), one with the rings stopped`);
    t.true(report.bytes < MIB, `the stopped-time container is ${report.bytes} bytes: the disk came in the rounds`);
    t.deepEqual(await readBack(blk, model), [], 'MiB(s) differing from the acknowledged writes');
    t.truthy(await a.waitForLog(/pre-copy round 0 sent: 1 run\(s\)/));
    // The last round (the one with the rings stopped) arrived whole.
    t.truthy(await b.waitForLog(new RegExp(`pre-copy round ${report.precopyMs.length - 1} loaded`)));
    t.log(`rounds ${report.precopyMs.map((m) => m.toFixed(0)).join(' / ')} ms (last one stopped); stop-to-resume ${report.downtimeMs.toFixed(1)} ms; ${acked} writes`);
  });
});

for (const harm of ['truncated', 'corrupted data', 'corrupted table', 'skipped'] as const) {
  maybe(`pre-copy: a round ${harm} is refused by the destination; the source keeps serving`, async (t) => {
    t.timeout(60_000);
    await withPair('memory:16M', async ({ b, fe, blk }) => {
      const model = await fill(blk, 16 * MIB);
      const dst = await rawDestination(b);
      const first = await saveRound(fe.conn, PrecopyPhase.START);
      t.is(await loadRound(dst, first), 'ok', 'an intact first round loads');
      // Scattered 4 KiB pages (small runs, staged on both sides) and one 64 KiB block.
      for (let k = 0; k < 40; k++) await put(blk, model, k * 97 * 4096, Buffer.alloc(4096, `page ${k} after round 0;`));
      await put(blk, model, 0, Buffer.alloc(BLOCK, 'after round 0;'));
      let round = await saveRound(fe.conn, PrecopyPhase.ROUND);
      if (harm === 'truncated') round = round.subarray(0, round.length - 100);
      else if (harm === 'corrupted data') round[round.length - 200] ^= 0x40;
      else if (harm === 'corrupted table') round[64 + 3] ^= 0x01;
      else {
        // Round 1 never reaches the destination: round 2 comes next.
        await put(blk, model, 0, Buffer.alloc(BLOCK, 'after round 1;'));
        round = await saveRound(fe.conn, PrecopyPhase.ROUND);
      }
      t.regex(await loadRound(dst, round), /CHECK_DEVICE_STATE failed/);
      const why = { truncated: /ends inside/, 'corrupted data': /data is corrupted/, 'corrupted table': /run table is corrupted/, skipped: /round 2 arrived after round 0/ }[harm];
      t.truthy(await b.waitForLog(why));
      dst.close();
      // The source never stopped: it serves, and every write is there.
      t.deepEqual(await readBack(blk, model), []);
    });
  });
}

maybe('pre-copy auto-converge: live rounds that do not shrink throttle the writer; the end of the pre-copy lifts it', async (t) => {
  t.timeout(120_000);
  const a = await blkHost('memory:16M');
  const fe = await connect(a);
  try {
    const blk = new BlkDevice(fe.queues[0]);
    const model = await fill(blk, 16 * MIB);
    // 4 lanes write 512 distinct 4 KiB pages (2 MiB) over and over: every round has all 512 dirty.
    const PAGES = 512;
    let running = true;
    let acked = 0;
    let next = 0;
    const writers = Array.from({ length: 4 }, async () => {
      while (running) {
        const v = next++;
        const at = (v % PAGES) * 3 * 4096;
        const p = Buffer.alloc(4096, `write ${v};`);
        await blk.write(at / 512, p);
        p.copy(model, at);
        acked++;
      }
    });
    const dirtyAll = async () => {
      const until = acked + 2 * PAGES;
      while (acked < until) await new Promise((r) => setTimeout(r, 2));
    };
    const before = a.log().length;
    await saveRound(fe.conn, PrecopyPhase.START);
    await dirtyAll();
    await saveRound(fe.conn, PrecopyPhase.ROUND);
    t.notRegex(a.log().slice(before), /auto-converge/, 'the first round after the whole disk has nothing to compare with');
    await dirtyAll();
    // Round 2 carries as much as round 1 (2 MiB): not shrinking by half.
    await saveRound(fe.conn, PrecopyPhase.ROUND);
    t.truthy(await a.waitForLog(/auto-converge: round 2 carries 2097152 bytes after 2097152 bytes \(not shrinking by half\): guest writes throttled to \d+ bytes\/s/));
    // Throttled, not stopped: the writer goes on.
    const during = acked;
    while (acked < during + 8) await new Promise((r) => setTimeout(r, 2));
    t.regex(a.log().slice(before), /throttled/);
    t.notRegex(a.log().slice(before), /throttle lifted/, 'the throttle holds while the pre-copy runs');
    // The stopped round and the FINAL state end the pre-copy: the throttle is lifted.
    const base = await fe.stopQueue(0);
    await saveRound(fe.conn, PrecopyPhase.ROUND);
    await saveRound(fe.conn, PrecopyPhase.FINAL);
    t.truthy(await a.waitForLog(/auto-converge: throttle lifted \(the pre-copy ended\)/));
    await fe.startQueue(0, base);
    running = false;
    await Promise.all(writers);
    t.deepEqual(await readBack(blk, model), []);

    // A pre-copy that fails (its reader goes away) lifts it too.
    const mark = a.log().length;
    running = true;
    const again = Array.from({ length: 4 }, async () => {
      while (running) {
        const v = next++;
        const at = (v % PAGES) * 3 * 4096;
        const p = Buffer.alloc(4096, `write ${v};`);
        await blk.write(at / 512, p);
        p.copy(model, at);
        acked++;
      }
    });
    await saveRound(fe.conn, PrecopyPhase.START);
    await dirtyAll();
    await saveRound(fe.conn, PrecopyPhase.ROUND);
    await dirtyAll();
    const [r, w] = native.pipe2();
    try {
      await fe.conn.setDeviceStateFd(DeviceStateDirection.SAVE, PrecopyPhase.ROUND, w);
    } finally {
      native.close(w);
    }
    await loggedSince(a, mark, /guest writes throttled/);
    native.close(r);
    await t.throwsAsync(fe.conn.checkDeviceState(), { message: /CHECK_DEVICE_STATE failed/ });
    t.truthy(await a.waitForLog(/auto-converge: throttle lifted \(round 2 failed\)/));
    running = false;
    await Promise.all(again);
    t.deepEqual(await readBack(blk, model), []);
  } finally {
    await fe.close();
    await a.stop();
  }
});

maybe('pre-copy: the destination warms its rings up when the first round arrives, before the stop, and then serves with the features and memory table the front-end sent', async (t) => {
  t.timeout(120_000);
  await withPair('memory:32M', async ({ b, fe, blk }) => {
    const model = await fill(blk, 32 * MIB);
    // A writer through the rounds and the stop: the destination's warmed rings take its backlog.
    let running = true;
    const writer = (async () => {
      for (let v = 1; running; v++) await put(blk, model, ((v * 37) % 512) * BLOCK, Buffer.alloc(4096, `version ${v};`));
    })();
    const steps: string[] = [];
    let report;
    try {
      report = await migrate(fe, b.socketPath, { channel: 'pipe', precopyRounds: 2, onStep: (s) => void steps.push(s) });
    } finally {
      running = false;
      await writer;
    }
    t.true(steps.indexOf('configure-destination') < steps.indexOf('precopy-0'), `steps: ${steps.join(', ')}`);
    const log = b.log();
    const warm = log.search(/incoming pre-copy: warm-up: ring\(s\) 0, 1, 2, 3, \d+ of \d+ request\(s\) answered/);
    t.true(warm >= 0, `the destination logged its warm-up; its log:\n${log}`);
    t.true(warm < log.search(/pre-copy round 0 loaded/), 'the warm-up ran before round 0 was loaded, while the source served');
    t.true(report.precopyMs.length >= 2);
    // The front-end now runs on the destination: its rings work on the memory table it sent.
    t.deepEqual(await readBack(blk, model), [], 'MiB(s) differing from the acknowledged writes');
  }, ['--log-level', 'debug']);
});

maybe('pre-copy: a destination given no features before its first round (another front-end\'s order) is not warmed up and loads the round as before', async (t) => {
  t.timeout(60_000);
  await withPair('memory:16M', async ({ b, fe, blk }) => {
    await fill(blk, 16 * MIB);
    const dst = await rawDestination(b);
    t.is(await loadRound(dst, await saveRound(fe.conn, PrecopyPhase.START)), 'ok');
    t.truthy(await b.waitForLog(/pre-copy round 0 loaded/));
    t.notRegex(b.log(), /warm-up/);
    dst.close();
  }, ['--log-level', 'debug']);
});

maybe('pre-copy: a final state naming a round the destination lacks is refused; the source resumes', async (t) => {
  t.timeout(60_000);
  await withPair('memory:16M', async ({ b, fe, blk }) => {
    const model = await fill(blk, 16 * MIB);
    const dst = await rawDestination(b);
    t.is(await loadRound(dst, await saveRound(fe.conn, PrecopyPhase.START)), 'ok');
    await put(blk, model, 0, Buffer.alloc(BLOCK, 'after round 0;'));
    // Round 1 leaves the source but never reaches the destination.
    await saveRound(fe.conn, PrecopyPhase.ROUND);
    const base = await fe.stopQueue(0);
    const final = await saveRound(fe.conn, PrecopyPhase.FINAL);
    t.true(final.length < MIB, `the final state is ${final.length} bytes`);
    t.regex(await loadRound(dst, final, PrecopyPhase.FINAL), /CHECK_DEVICE_STATE failed/);
    t.truthy(await b.waitForLog(/last pre-copy round is 1, this host has round 0: a round was lost/));
    dst.close();
    // The destination's disk holds round 0 and no FINAL completed it: a front-end there is not served it.
    await t.throwsAsync(connect(b), { message: /SET_VRING_KICK \(12\) failed/ });
    t.truthy(await b.waitForLog(/ring 0 cannot start: the memory disk is not served: pre-copy rounds are writing the memory disk/));
    // A final save with no pre-copy under way is refused at once.
    const [r, w] = native.pipe2();
    native.close(r);
    await t.throwsAsync(fe.conn.setDeviceStateFd(DeviceStateDirection.SAVE, PrecopyPhase.FINAL, w), { message: /error 3/ });
    native.close(w);
    await fe.startQueue(0, base);
    t.deepEqual(await readBack(blk, model), []);
  });
});

maybe('pre-copy: the destination dies during round 0; the migration fails and the source keeps serving', async (t) => {
  t.timeout(60_000);
  // Stopping the killed destination afterwards only waits for its exit, which has come.
  await withPair('memory:256M', async ({ b, fe, blk }) => {
    const model = await fill(blk, 64 * MIB);
    const err = await t.throwsAsync(
      migrate(fe, b.socketPath, {
        precopyRounds: 2,
        onStep: (s) => {
          if (s === 'precopy-0') setTimeout(() => b.child.kill('SIGKILL'), 30);
        },
      }),
      { instanceOf: MigrationError },
    );
    t.true(err!.sourceResumed, err!.message);
    t.regex(err!.message, /source keeps serving/);
    // The source is whole and still serves; a round cut short left nothing pending there.
    await put(blk, model, 200 * MIB, Buffer.alloc(MIB, 'after the failed migration\n'));
    t.deepEqual(await readBack(blk, model.subarray(0, 256 * MIB)), []);
  });
});

maybe('pre-copy: a source torn from its reader mid-round (EPIPE) fails the round and serves on; a new pre-copy starts whole', async (t) => {
  t.timeout(60_000);
  await withPair('memory:64M', async ({ a, b, fe, blk }) => {
    const model = await fill(blk, 64 * MIB);
    const r = await startSave(fe.conn, PrecopyPhase.START);
    // Read a little of the round, then go away: the source's next write fails.
    const buf = Buffer.alloc(64 << 10);
    let got = 0;
    while (got < buf.length) {
      const n = native.read(r, buf.subarray(got));
      if (n > 0) got += n;
      else await new Promise((res) => setTimeout(res, 2));
    }
    native.close(r);
    await t.throwsAsync(fe.conn.checkDeviceState(), { message: /CHECK_DEVICE_STATE failed/ });
    t.truthy(await a.waitForLog(/pre-copy round 0 \(save\) failed/));
    // A migration afterwards starts a whole pre-copy and succeeds.
    const report = await migrate(fe, b.socketPath, { precopyRounds: 1 });
    t.is(report.precopyMs.length, 2, 'one live round and one with the rings stopped');
    t.deepEqual(await readBack(blk, model), []);
  });
});

maybe('vhost-wasm migrate pre-copies a memory disk by default, and --precopy-rounds 0 moves it at the stop', async (t) => {
  t.timeout(120_000);
  const [a, b, c] = await Promise.all([blkHost('memory:32M'), blkHost('memory:32M'), blkHost('memory:32M')]);
  const run = (args: string[]) =>
    new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
      const p = spawn(...hostCommand(['migrate', ...args, '--json']), { cwd: REPO });
      let stdout = '';
      let stderr = '';
      p.stdout.on('data', (d) => (stdout += d));
      p.stderr.on('data', (d) => (stderr += d));
      p.on('exit', (code) => resolve({ code, stdout, stderr }));
    });
  /** The disk as a fresh front-end reads it (the disk is the host's: it outlives a connection). */
  const disk = async (h: HostProcess, write?: number) => {
    const fe = await connect(h);
    try {
      const blk = new BlkDevice(fe.queues[0]);
      return write === undefined ? await readBack(blk, model) : await fill(blk, write);
    } finally {
      await fe.close();
    }
  };
  let model: Buffer = Buffer.alloc(0);
  try {
    model = (await disk(a, 32 * MIB)) as Buffer;
    const pre = await run(['--from', a.socketPath, '--to', b.socketPath]);
    t.is(pre.code, 0, pre.stderr);
    const rep = JSON.parse(pre.stdout);
    t.true(rep.precopyMs.length >= 2, `rounds: ${rep.precopyMs}`);
    t.true(rep.stateBytes < MIB, `${rep.stateBytes} bytes moved at the stop`);
    t.deepEqual(await disk(b), [], 'the destination holds the disk');
    const full = await run(['--from', b.socketPath, '--to', c.socketPath, '--precopy-rounds', '0']);
    t.is(full.code, 0, full.stderr);
    const rep2 = JSON.parse(full.stdout);
    t.deepEqual(rep2.precopyMs, []);
    t.true(rep2.stateBytes > 32 * MIB, `${rep2.stateBytes} bytes moved at the stop`);
    t.deepEqual(await disk(c), []);
  } finally {
    await Promise.all([a.stop(), b.stop(), c.stop()]);
  }
});

maybe('a LOAD whose disk section checked out but whose device section is then refused leaves the disk unserved (the LOAD is all or nothing)', async (t) => {
  t.timeout(60_000);
  await withPair('memory:4M', async ({ b, fe, blk }) => {
    const model = await fill(blk, 4 * MIB);
    await fe.stopQueue(0);
    const good = await saveState(fe.conn, 'pipe');
    const bad = deviceRefusedLast(good);
    const dfe = await connect(b);
    try {
      const base = await dfe.stopQueue(0);
      for (const mode of ['pipe', 'memfd'] as const) {
        await t.throwsAsync(loadState(dfe.conn, bad, mode), undefined, `the ${mode} LOAD fails`);
        t.truthy(await b.waitForLog(/section device: the device refused the state: .*not a blk state \(bad magic\)/));
        // The disk's bytes are the source's, but the device is not: the disk is not served.
        await t.throwsAsync(dfe.startQueue(0, base), { message: /SET_VRING_KICK \(12\) failed/ });
        t.truthy(await b.waitForLog(/ring 0 cannot start: the memory disk is not served: a device state LOAD began overwriting the memory disk/));
      }
      await loadState(dfe.conn, good, 'memfd');
      await dfe.startQueue(0, base);
      t.deepEqual(await readBack(new BlkDevice(dfe.queues[0]), model), []);
    } finally {
      await dfe.close();
    }
  });
});

maybe('pre-copy: a FINAL state whose marker checked out but whose device section is refused leaves the disk unserved; a round is not loaded under a running ring', async (t) => {
  t.timeout(60_000);
  await withPair('memory:4M', async ({ b, fe, blk }) => {
    const model = await fill(blk, 4 * MIB);
    // A destination serving its own disk (a ring running) takes no round: it would serve it half-loaded.
    const busy = await connect(b);
    const [r, w] = native.pipe2();
    try {
      await t.throwsAsync(busy.conn.setDeviceStateFd(DeviceStateDirection.LOAD, PrecopyPhase.ROUND, r), { message: /error \d/ });
    } finally {
      native.close(r);
      native.close(w);
    }
    t.truthy(await b.waitForLog(/a pre-copy round is not loaded into a disk being served: ring\(s\) 0 run/));
    t.deepEqual(await readBack(new BlkDevice(busy.queues[0]), Buffer.alloc(4 * MIB)), [], 'its disk is untouched and still served');
    await busy.close();
    const dst = await rawDestination(b);
    try {
      t.is(await loadRound(dst, await saveRound(fe.conn, PrecopyPhase.START)), 'ok');
      const base = await fe.stopQueue(0);
      const final = await saveRound(fe.conn, PrecopyPhase.FINAL);
      t.regex(await loadRound(dst, deviceRefusedLast(final), PrecopyPhase.FINAL), /CHECK_DEVICE_STATE failed/);
      t.truthy(await b.waitForLog(/section device: the device refused the state: .*not a blk state \(bad magic\)/));
      // The next front-end is served once this one is gone.
      dst.close();
      await t.throwsAsync(connect(b), { message: /SET_VRING_KICK \(12\) failed/ });
      t.truthy(await b.waitForLog(/ring 0 cannot start: the memory disk is not served: pre-copy rounds are writing the memory disk/));
      await fe.startQueue(0, base);
      t.deepEqual(await readBack(blk, model), [], 'the source serves on');
    } finally {
      dst.close();
    }
  });
});

maybe('a corrupted state (a byte of the disk section flipped) fails the LOAD, and the destination does not serve the half-written disk until a state that checks out is loaded', async (t) => {
  t.timeout(60_000);
  await withPair('memory:4M', async ({ b, fe, blk }) => {
    const model = await fill(blk, 4 * MIB);
    await fe.stopQueue(0);
    const good = await saveState(fe.conn, 'pipe');
    const dfe = await connect(b);
    try {
      const base = await dfe.stopQueue(0);
      // The device's own bytes are small: the middle of the container is inside the 4 MiB disk.
      const bad = Buffer.from(good);
      bad[bad.length >> 1] ^= 0x40;
      for (const mode of ['pipe', 'memfd'] as const) {
        await t.throwsAsync(loadState(dfe.conn, bad, mode), undefined, `the ${mode} LOAD of the corrupted state fails`);
        // The disk was overwritten before the trailer's checksum could tell: its ring does not start.
        await t.throwsAsync(dfe.startQueue(0, base), { message: /SET_VRING_KICK \(12\) failed/ });
        t.truthy(await b.waitForLog(/ring 0 cannot start: the memory disk is not served: a device state LOAD began overwriting the memory disk and did not complete with a state that checks out/));
      }
      // Nor does a SAVE pass the half-written disk on as if good.
      await t.throwsAsync(saveState(dfe.conn, 'pipe'));
      t.truthy(await b.waitForLog(/the memory disk is not saved: a device state LOAD began overwriting/));
      // Nor does a host handover give it to a new host process, which would serve it.
      const [handover] = (await rawRpc(`${b.socketPath}.control`, [JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'host-handover', params: { to: join(REPO, 'no-such.sock'), live: true } })], 1)) as { error?: { message: string } }[];
      t.regex(handover.error?.message ?? JSON.stringify(handover), /the memory disk is not handed over: a device state LOAD began overwriting/);
      // A state that checks out makes the disk the source's, and it is served again.
      await loadState(dfe.conn, good, 'pipe');
      await dfe.startQueue(0, base);
      t.deepEqual(await readBack(new BlkDevice(dfe.queues[0]), model), []);
    } finally {
      await dfe.close();
    }
  });
});
