// Live host handover (docs/upgrade.md, "Host upgrade"): `vhost-wasm --socket-path S ... --take-over`
// started beside a running host takes over its device AND its connected front-end's session
// (memory table, rings, fds, device state): the front-end's connection carries on without a
// reconnect. Real processes (the built binary) on both sides and our own front-end: blk with
// requests in flight handed over twice, rng, fs with node ids and an open file (what the socket
// take-over could not keep), and the failures: a bad handover record and a new host that dies
// in the middle leave the old host serving its front-end.
// HANDOVER_PHASES=1 logs where each handover's time went (both hosts' log lines).
import test, { type ExecutionContext } from 'ava';
import { mkdtempSync, mkdirSync, readdirSync, readFileSync, readlinkSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { createServer } from 'node:net';
import { VhostUserFrontend, VIRTIO_F_VERSION_1 } from '../host/frontend/driver.ts';
import { BlkDevice, VIRTIO_BLK_F_FLUSH } from '../host/frontend/blk.ts';
import { native } from '../host/native/index.ts';
import { REPO, runCli, startHost, type HostProcess } from './helpers/host-process.ts';
import { rawRpc } from './helpers/daemon-process.ts';
import { until } from './helpers/multi-host.ts';
import { pattern, verifyAll } from './helpers/blk-rounds.ts';
import { RngPump } from './helpers/rng-pump.ts';
import { scratchEachTest } from './helpers/scratch-each-test.ts';
import { FuseClient, fhOfOpen, nodeOf, O, LK, lkIn } from './helpers/fuse.ts';
import { hostTryLock } from './helpers/host-lock.ts';
import { sendFramed } from '../host/server/handover-wire.ts';
import { MAX_CARRIED_LOCK_FDS } from '../host/session/lock-carry.ts';
import { encodeRequest } from '../host/protocol/codec.ts';
import { Req } from '../host/protocol/requests.ts';

const blk = join(REPO, 'dist', 'plugins', 'blk.wasm');
const rng = join(REPO, 'dist', 'plugins', 'rng.wasm');
const fsPlugin = join(REPO, 'dist', 'plugins', 'fs.wasm');
const blkFeatures = (1n << BigInt(VIRTIO_F_VERSION_1)) | (1n << BigInt(VIRTIO_BLK_F_FLUSH));
const feBlk = { memoryBytes: 16 << 20, queues: [64], features: blkFeatures, inflight: true };

let dir: string;
let sock: string;
const keep = scratchEachTest(test, 'host-handover-', (d) => {
  dir = d;
  sock = join(dir, 'dev.sock');
});

async function host(args: string[]): Promise<HostProcess> {
  return keep(await startHost(['--socket-path', sock, '--call-deadline', '10000', ...args]));
}

/** The longest time between two consecutive completions in [from, to]: what the front-end saw of the pause. */
function longestGap(done: number[], from: number, to: number): number {
  const ts = done.filter((t) => t >= from && t <= to).sort((a, b) => a - b);
  let gap = 0;
  for (let i = 1; i < ts.length; i++) gap = Math.max(gap, ts[i] - ts[i - 1]);
  return gap;
}

/**
 * The gap between completions that spans the old host's stop (its log line's wall-clock time,
 * written once the rings stopped): what the front-end saw of the handover itself, apart from
 * the CPU the new process took while it started.
 */
function gapAcrossStop(done: number[], oldLog: string): number | null {
  const m = /^(\S+) INFO .*session stopped for a host handover/m.exec(oldLog);
  if (!m) return null;
  const at = Date.parse(m[1]) - performance.timeOrigin;
  const ts = [...done].sort((a, b) => a - b);
  const after = ts.findIndex((x) => x > at);
  return after > 0 ? ts[after] - ts[after - 1] : null;
}

const describeGaps = (done: number[], from: number, oldLog: string) =>
  `front-end: longest gap between completions ${longestGap(done, from, performance.now()).toFixed(1)} ms, the gap across the stop ${gapAcrossStop(done, oldLog)?.toFixed(1) ?? '?'} ms; ` +
  `old host: ${/rings stopped ([\d.]+) ms/.exec(oldLog)?.[0] ?? ''}`;

/** Writes and reads back 4 KiB blocks with `depth` requests in flight until stop(); records each completion's time. */
async function blkLoad(disk: BlkDevice, last: Map<number, number>, stop: () => boolean, done: number[], depth = 4): Promise<number> {
  let round = 0;
  for (; round < 2 || !stop(); round++) {
    await Promise.all(
      Array.from({ length: depth }, async (_, k) => {
        const block = (round * depth + k) % 64;
        await disk.write(block * 8, pattern(block, round));
        done.push(performance.now());
        last.set(block, round);
        const back = await disk.read(block * 8, 4096);
        done.push(performance.now());
        if (Buffer.compare(back, pattern(block, round)) !== 0) throw new Error(`block ${block} round ${round}: read back other data`);
      }),
    );
  }
  return round;
}

/** A blk front-end on the host at `sock` with blkLoad running on it; end() stops the load and waits for it. */
async function blkUnderLoad() {
  const fe = await VhostUserFrontend.connect(sock, feBlk);
  let disconnected = false;
  void fe.conn.closed.then(() => (disconnected = true));
  const disk = new BlkDevice(fe.queues[0]);
  const last = new Map<number, number>();
  const done: number[] = [];
  let stop = false;
  const io = blkLoad(disk, last, () => stop, done);
  return {
    fe,
    disk,
    last,
    done,
    get disconnected() {
      return disconnected;
    },
    /** Resolves once `n` more requests have completed. */
    async more(n = 20) {
      const from = done.length;
      while (done.length < from + n) await new Promise((r) => setTimeout(r, 5));
    },
    end: () => {
      stop = true;
      return io;
    },
  };
}

test.serial('blk with requests in flight is handed over twice with its connected front-end: no reconnect, every request answered once, the data intact', async (t) => {
  const args = ['--plugin', blk, '--storage', 'memory:4M'];
  let current = await host(args);
  const load = await blkUnderLoad();
  const { fe, disk, last, done } = load;
  for (let i = 0; i < 2; i++) {
    await load.more();
    const from = performance.now();
    const next = await host([...args, '--take-over']);
    t.is(await current.exited, 0, current.log());
    await load.more();
    t.log(`handover ${i + 1}: ${describeGaps(done, from, current.log())}`);
    if (process.env.HANDOVER_PHASES) t.log(`${/session stopped for a host handover.*/.exec(current.log())?.[0]}\n${/session taken over.*/.exec(next.log())?.[0]}`);
    t.regex(current.log(), /host-handover: pid \d+ serves the device now with the session/);
    t.regex(next.log(), /took the device and its connected front-end over from host [\d.]+ \(pid \d+\): the session carries on here without a reconnect/);
    t.regex(next.log(), /session taken over from the previous host process: rings 0 run here/);
    current = next;
  }
  await load.end();
  t.false(load.disconnected, 'the front-end never lost its connection');
  t.is(fe.queues[0].inFlight, 0, 'every request was answered, none twice (the driver refuses a head that is not in flight)');
  await verifyAll(disk, last);
  t.notRegex(current.log(), /resubmitting/, 'nothing was in flight at the handover: it completed in the old host');
  // The new host is managed on the same control socket, and is the one the socket's files belong to.
  const up = await runCli(['upgrade', '--socket', sock, '--plugin', blk, '--json']);
  t.is(up.code, 0, up.stderr);
  await verifyAll(disk, last);
  await fe.close();
  t.is(await current.stop(), 0);
});

test.serial('rng: requests go on across a live handover on the same connection', async (t) => {
  const args = ['--plugin', rng, '--entropy'];
  const old = await host(args);
  const fe = await VhostUserFrontend.connect(sock, { memoryBytes: 4 << 20, queues: [64], features: 1n << BigInt(VIRTIO_F_VERSION_1) });
  let disconnected = false;
  void fe.conn.closed.then(() => (disconnected = true));
  const pump = RngPump.start(t, fe);
  await pump.more(20);
  const from = performance.now();
  const next = await host([...args, '--take-over']);
  t.is(await old.exited, 0, old.log());
  await pump.waitFor(20, performance.now());
  t.log(describeGaps(pump.done, from, old.log()));
  if (process.env.HANDOVER_PHASES) t.log(`${/session stopped for a host handover.*/.exec(old.log())?.[0]}\n${/session taken over.*/.exec(next.log())?.[0]}`);
  await pump.stop();
  t.false(disconnected);
  t.regex(next.log(), /the session carries on here without a reconnect/);
  await fe.close();
});

test.serial('fs: looked-up node ids and an open file keep working after a live handover (the socket take-over cannot keep them)', async (t) => {
  const share = join(dir, 'share');
  mkdirSync(join(share, 'sub'), { recursive: true });
  writeFileSync(join(share, 'sub', 'data'), 'handed-over data');
  const args = ['--plugin', fsPlugin, '--shared-dir', share];
  const old = await host(args);
  const fe = await VhostUserFrontend.connect(sock, { memoryBytes: 16 << 20, queues: [64, 64], features: 1n << BigInt(VIRTIO_F_VERSION_1) });
  let disconnected = false;
  void fe.conn.closed.then(() => (disconnected = true));
  const c = new FuseClient(fe);
  t.is((await c.init()).error, 0);
  const sub = nodeOf(await c.lookup(1n, 'sub'));
  const data = nodeOf(await c.lookup(sub, 'data'));
  const fh = fhOfOpen(await c.open(data, O.RDWR));
  t.is((await c.read(fh, 0, 100)).body.toString(), 'handed-over data');

  // GETATTRs one after another on the request queue throughout: their completions show the pause.
  const done: number[] = [];
  let stop = false;
  const load = (async () => {
    while (!stop) {
      const a = await c.getattr(data);
      if (a.error !== 0) throw new Error(`GETATTR failed with errno ${a.error}`);
      done.push(performance.now());
    }
  })();
  while (done.length < 20) await new Promise((r) => setTimeout(r, 5));
  const from = performance.now();
  const next = await host([...args, '--take-over']);
  t.is(await old.exited, 0, old.log());
  const count = done.length;
  while (done.length < count + 20) await new Promise((r) => setTimeout(r, 5));
  stop = true;
  await load;
  t.log(describeGaps(done, from, old.log()));
  if (process.env.HANDOVER_PHASES) t.log(`${/session stopped for a host handover.*/.exec(old.log())?.[0]}\n${/session taken over.*/.exec(next.log())?.[0]}`);
  const r = await c.read(fh, 12, 100);
  t.is(r.error, 0);
  t.is(r.body.toString(), 'data', 'READ through the file handle opened on the old host');
  t.is((await c.getattr(data)).error, 0, 'GETATTR of a node id looked up on the old host');
  t.is(nodeOf(await c.lookup(sub, 'data')), data, 'the same node id on a new lookup');
  const w = await c.req(16, 0n, Buffer.concat([(() => {
    const b = Buffer.alloc(40);
    b.writeBigUInt64LE(fh, 0);
    b.writeBigUInt64LE(16n, 8);
    b.writeUInt32LE(5, 16);
    return b;
  })(), Buffer.from(' done')]));
  t.is(w.error, 0, 'WRITE through the same handle');
  t.is(readFileSync(join(share, 'sub', 'data'), 'utf8'), 'handed-over data done');
  t.false(disconnected);
  t.regex(next.log(), /the session carries on here without a reconnect/);
  await fe.close();
});

/**
 * This test process plays a new host: it listens at `to`, asks the old host (at `sock`) for a
 * live handover there and accepts its connection. `drain()` reads until the old host has sent
 * all it will before it waits for an answer (its byte count and fds; the fds are kept for close()).
 */
async function fakeNewHost(to: string) {
  const lfd = native.listenUnix(to, 1);
  const answer = rawRpc(`${sock}.control`, [JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'host-handover', params: { to, live: true } })], 1);
  let conn = -1;
  while ((conn = native.accept(lfd)) < 0) await new Promise((r) => setTimeout(r, 10));
  const kept: number[] = [];
  const drain = async (): Promise<{ bytes: number; fds: number[] }> => {
    const fds: number[] = [];
    let bytes = 0;
    for (let idle = 0; idle < 30; ) {
      const got = native.recvMsg(conn, Buffer.alloc(65536), 253);
      if (got === null) {
        idle++;
        await new Promise((r) => setTimeout(r, 10));
        continue;
      }
      idle = 0;
      bytes += got.bytes;
      fds.push(...got.fds);
      if (got.bytes === 0) break;
    }
    kept.push(...fds);
    return { bytes, fds };
  };
  const say = (line: string) => native.sendMsg(conn, Buffer.from(`${line}\n`), []);
  let closed = false;
  const close = () => {
    if (closed) return;
    closed = true;
    for (const fd of kept) native.close(fd);
    native.close(conn);
    native.close(lfd);
  };
  return { answer, drain, say, close };
}

test.serial('a new host that dies after it received the session, before or after it had the rings stopped, leaves the old host serving the same connection (its rings restarted where they stopped); a later take-over works', async (t) => {
  const args = ['--plugin', blk, '--storage', 'memory:4M'];
  const old = await host(args);
  const load = await blkUnderLoad();
  const { fe, disk, last } = load;
  let round = 0;
  for (const askStop of [false, true]) {
    round++;
    // This test process plays the new host: it asks for a live handover, receives the device's
    // fds, asks for the session, receives it, (the second time) asks the rings stopped and
    // receives where they stopped and the state, and goes away as a crashed process does (its
    // fds closed, no answer).
    const fake = await fakeNewHost(join(dir, `fake-new-host-${round}.sock`));
    const device = await fake.drain();
    t.is(device.fds.length, 3, 'listening socket, control socket, memory disk');
    t.is(fake.say('session'), 8);
    const session = await fake.drain();
    t.true(session.bytes > 8);
    t.true(session.fds.length >= 5, `the session's fds came (${session.fds.length}: front-end socket, memory, inflight area, kick, call)`);
    const stopped = { bytes: 0, fds: [] as number[] };
    if (askStop) {
      t.is(fake.say('stop'), 5);
      Object.assign(stopped, await fake.drain());
      t.is(stopped.fds.length, 1, 'the state memfd');
      t.is(native.fdKind(stopped.fds[0]), 'memfd');
    }
    fake.close();
    const [a] = (await fake.answer) as { error?: { message: string } }[];
    t.regex(a.error!.message, /the new host went away before it served the device/);
    await load.more();
    t.is(old.log().match(/host handover undone: the session runs on in this host/g)?.length, round);
    if (askStop) t.regex(old.log(), /session stopped for a host handover/);
    t.is(old.child.exitCode, null);
  }

  const next = await host([...args, '--take-over']);
  t.is(await old.exited, 0, old.log());
  await load.end();
  t.false(load.disconnected);
  t.is(fe.queues[0].inFlight, 0);
  await verifyAll(disk, last);
  t.regex(next.log(), /the session carries on here without a reconnect/);
  await fe.close();
});

test.serial('a new host stuck after the rings stopped (no "ready") holds the guest only briefly: the old host runs its rings again and serves on, and says why the handover failed', async (t) => {
  // Not the 60 s handover deadline: the guest's requests wait while the rings are stopped.
  t.timeout(40_000);
  const old = await host(['--plugin', blk, '--storage', 'memory:4M']);
  const load = await blkUnderLoad();
  const { fe, disk, last } = load;
  await load.more();
  // This test process plays a new host that asks for the rings stopped, receives the state, and
  // then never says "ready" (stuck loading it), its connection open and its process alive.
  const fake = await fakeNewHost(join(dir, 'stuck-new-host.sock'));
  t.teardown(fake.close);
  await fake.drain();
  fake.say('session');
  await fake.drain();
  fake.say('stop');
  await fake.drain();
  const [a] = (await fake.answer) as { error?: { message: string } }[];
  t.regex(a.error?.message ?? JSON.stringify(a), /did not say it is ready within 5 s of this host stopping its rings.*this host runs the rings again and serves on/);
  t.regex(old.log(), /session stopped for a host handover/);
  t.regex(old.log(), /host handover undone: the session runs on in this host/);
  // The same connection is served again by the old host while the stuck process still lives.
  await load.more();
  await load.end();
  t.false(load.disconnected);
  t.is(fe.queues[0].inFlight, 0);
  await verifyAll(disk, last);
  t.is(old.child.exitCode, null);
  await fe.close();
});

/**
 * This test process plays an old host: a control socket at S.control that answers host-handover
 * (format 2) by sending a real listening socket as the device socket and, once the new host asks
 * for the session, `record` with `sessionFds`; it reports the new host's answer line.
 */
function fakeOldHost(record: unknown, sessionFds: () => number[]): { verdict: Promise<string>; close(): void } {
  let report: (s: string) => void = () => {};
  const verdict = new Promise<string>((r) => (report = r));
  const listenFd = native.listenUnix(sock, 4);
  // The new host serves its control socket on the one it is handed (S.control is this fake's).
  const controlFd = native.listenUnix(join(dir, 'handed-control.sock'), 4);
  const readLine = async (fd: number): Promise<string> => {
    let line = '';
    for (;;) {
      const b = Buffer.alloc(256);
      const r = native.recvMsg(fd, b, 0);
      if (r === null) {
        await new Promise((res) => setTimeout(res, 10));
        continue;
      }
      if (r.bytes === 0) return line;
      line += b.subarray(0, r.bytes).toString();
      if (line.includes('\n')) return line.trim();
    }
  };
  const server = createServer((c) => {
    let buf = '';
    c.setEncoding('utf8');
    c.on('data', (d: string) => {
      buf += d;
      if (!buf.includes('\n')) return;
      const req = JSON.parse(buf.slice(0, buf.indexOf('\n'))) as { id: number; params: { to: string } };
      const fd = native.connectUnix(req.params.to, true);
      const header = { magic: 'vhost-wasm-handover', version: 2, pid: process.pid, hostVersion: '0.0.0-test', label: sock, fds: ['listen', 'control'], sessionOffered: true };
      void (async () => {
        await sendFramed(fd, header, [listenFd, controlFd]);
        let line = await readLine(fd);
        if (line === 'session') {
          const fds = sessionFds();
          await sendFramed(fd, { magic: 'vhost-wasm-session', session: record, sessionFds: fds.length, liveRefused: null }, fds);
          for (const f of fds) native.close(f);
          line = await readLine(fd);
        }
        report(line);
        native.close(fd);
        c.end(JSON.stringify({ jsonrpc: '2.0', id: req.id, error: { code: -32000, message: 'handover failed' } }) + '\n');
      })();
    });
  });
  server.listen(`${sock}.control`);
  let closed = false;
  return {
    verdict,
    close() {
      if (closed) return;
      closed = true;
      server.close();
      native.close(listenFd);
      native.close(controlFd);
      rmSync(sock, { force: true });
      rmSync(`${sock}.control`, { force: true });
      rmSync(join(dir, 'handed-control.sock'), { force: true });
    },
  };
}

test.serial('a bad handover record is refused by the new host with a clear error; the old host is told why and keeps its session', async (t) => {
  // Shape: a ring's call fd names an fd that did not come.
  const eventfd = () => native.eventfd(0);
  const bad = { version: 1, device: { deviceId: 2, numQueues: 1, name: 'blk', version: '1' }, features: null, protocolFeatures: '0', status: 0, frontEnd: 0, backendChannel: null, memory: [], logArea: null, logFd: null, inflightArea: null, rings: [{ num: 64, addr: null, base: 0, kick: null, call: 5, err: null, enabled: false, started: false }] };
  let fake = fakeOldHost(bad, () => [eventfd()]);
  t.teardown(() => fake.close());
  let r = await runCli(['--socket-path', sock, '--plugin', rng, '--entropy', '--take-over']);
  t.is(r.code, 1);
  t.regex(r.stderr, /the session record is not valid: rings\[0\]\.call names fd 5, but 1 came with the record/);
  t.regex(await fake.verdict, /the session record is not valid: rings\[0\]\.call names fd 5/, 'the old host is told why');
  fake.close();

  // Well formed, but for another device than the one the new host runs (a blk session, an rng host).
  const wrongDevice = { ...bad, rings: [{ ...bad.rings[0], call: null }] };
  fake = fakeOldHost(wrongDevice, () => [eventfd()]);
  r = await runCli(['--socket-path', sock, '--plugin', rng, '--entropy', '--take-over']);
  t.is(r.code, 1);
  t.regex(await fake.verdict, /the session is for virtio device 2 with 1 queue\(s\) and 1 ring\(s\); this host's device is 4/);
  t.regex(r.stderr, /the session is for virtio device 2/);
  fake.close();
});

test.serial('a handover record carrying a feature-gated request whose protocol feature was not negotiated (a log area without LOG_SHMFD, a back-end channel without BACKEND_REQ) is refused, naming both, before the old host stops its rings', async (t) => {
  // Well-formed rng sessions, but with no protocol feature negotiated: the message loop refuses
  // SET_LOG_BASE and SET_BACKEND_REQ_FD on such a connection, so must a record.
  const base = { version: 1, device: { deviceId: 4, numQueues: 1, name: 'rng', version: '1' }, features: null, protocolFeatures: '0', status: 0, frontEnd: 0, backendChannel: null, memory: [], logArea: null, logFd: null, inflightArea: null, rings: [{ num: 0, addr: null, base: null, kick: null, call: null, err: null, enabled: false, started: false }] };
  const cases: { record: unknown; second: () => number; closeAfter: number[]; expect: RegExp }[] = [];
  const logArea = () => {
    const m = native.memfdCreate('test-log-area', false);
    native.ftruncate(m, 4096);
    return m;
  };
  cases.push({ record: { ...base, logArea: { fd: 1, size: 4096, offset: 0 } }, second: logArea, closeAfter: [], expect: /SET_LOG_BASE \(6\) needs protocol feature LOG_SHMFD \(bit 1\), which was not negotiated/ });
  const backend = native.socketpair();
  cases.push({ record: { ...base, backendChannel: 1 }, second: () => backend[0], closeAfter: [backend[1]], expect: /SET_BACKEND_REQ_FD \(21\) needs protocol feature BACKEND_REQ \(bit 5\), which was not negotiated/ });
  for (const c of cases) {
    let front: number[] = [];
    const fake = fakeOldHost(c.record, () => {
      front = native.socketpair();
      return [front[0], c.second()];
    });
    const r = await runCli(['--socket-path', sock, '--plugin', rng, '--entropy', '--take-over']);
    const verdict = await fake.verdict;
    fake.close();
    if (front.length > 0) native.close(front[1]);
    for (const fd of c.closeAfter) native.close(fd);
    t.is(r.code, 1);
    // The old host is told why in answer to the session, never asked to stop its rings.
    t.regex(verdict, c.expect);
    t.regex(verdict, /the session record is refused/);
    t.regex(r.stderr, c.expect);
  }
});

test.serial('a handover record whose ring kick fd is not an eventfd is refused before the old host stops its rings (never after it let go)', async (t) => {
  // A well-formed rng session whose ring 0 kick fd is a pipe: the new host must refuse it while
  // the old host still serves, not find out when it starts the ring after "go".
  const [r0, w0] = native.pipe2();
  native.close(w0);
  const rec = { version: 1, device: { deviceId: 4, numQueues: 1, name: 'rng', version: '1' }, features: null, protocolFeatures: '0', status: 0, frontEnd: 0, backendChannel: null, memory: [], logArea: null, logFd: null, inflightArea: null, rings: [{ num: 0, addr: null, base: null, kick: 1, call: null, err: null, enabled: false, started: false }] };
  let front: number[] = [];
  const fake = fakeOldHost(rec, () => {
    front = native.socketpair();
    return [front[0], r0];
  });
  t.teardown(() => {
    fake.close();
    if (front.length > 0) native.close(front[1]);
  });
  const r = await runCli(['--socket-path', sock, '--plugin', rng, '--entropy', '--take-over']);
  t.is(r.code, 1);
  t.regex(await fake.verdict, /ring 0: the kick fd handed over is a pipe, not an eventfd/, 'the old host is told why before any stop');
  t.regex(r.stderr, /ring 0: the kick fd handed over is a pipe, not an eventfd/);
});

test.serial('a handover record with a ring enabled but not running, on a session that acked features without PROTOCOL_FEATURES, is refused as SET_VRING_ENABLE would be on that connection, before the old host stops its rings', async (t) => {
  // VERSION_1 acked, VHOST_USER_F_PROTOCOL_FEATURES (bit 30) not: the message loop refuses
  // SET_VRING_ENABLE here (a ring is enabled only by its kick), so a record may not enable one.
  const rec = { version: 1, device: { deviceId: 4, numQueues: 1, name: 'rng', version: '1' }, features: (1n << BigInt(VIRTIO_F_VERSION_1)).toString(16), protocolFeatures: '0', status: 0, frontEnd: 0, backendChannel: null, memory: [], logArea: null, logFd: null, inflightArea: null, rings: [{ num: 0, addr: null, base: null, kick: null, call: null, err: null, enabled: true, started: false }] };
  let front: number[] = [];
  const fake = fakeOldHost(rec, () => {
    front = native.socketpair();
    return [front[0]];
  });
  t.teardown(() => {
    fake.close();
    if (front.length > 0) native.close(front[1]);
  });
  const r = await runCli(['--socket-path', sock, '--plugin', rng, '--entropy', '--take-over']);
  t.is(r.code, 1);
  const expect = /the session record is refused: ring\(s\) 0 enabled without running: SET_VRING_ENABLE without VHOST_USER_F_PROTOCOL_FEATURES negotiated/;
  t.regex(await fake.verdict, expect, 'the old host is told why in answer to the session, never asked to stop');
  t.regex(r.stderr, expect);
});

test.serial('a front-end stalled in the middle of a message does not hang the old host: the handover fails in bounded time and the old host takes requests (and handovers) again', async (t) => {
  const old = await host(['--plugin', rng, '--entropy']);
  const fe = native.connectUnix(sock);
  t.teardown(() => native.close(fe));
  await old.waitForLog(/front-end connected/);
  // 5 of a message's 12 header bytes, then nothing: the session can never reach a message boundary.
  const msg = encodeRequest({ code: Req.SET_OWNER }).bytes;
  native.sendMsg(fe, msg.subarray(0, 5), []);
  const r = await runCli(['--socket-path', sock, '--plugin', rng, '--entropy', '--take-over', '--take-over-mode', 'live']);
  t.is(r.code, 1, r.stderr);
  t.regex(r.stderr, /the front-end is in the middle of a message/, 'the new host says why (the old host\'s reason)');
  // The old host is not stuck in that handover: another control request is not refused as "already running".
  const [answer] = (await rawRpc(`${sock}.control`, [JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'plugin-upgrade', params: { plugin: join(dir, 'none.wasm') } })], 1)) as { error?: { message: string } }[];
  t.truthy(answer.error);
  t.notRegex(answer.error!.message, /already running/);
  t.regex(old.log(), /the front-end is in the middle of a message/);
  t.is(old.child.exitCode, null);
});

test.serial('fs: the guest\'s file locks move with a live handover (their descriptions go beside the state): after it the new host refuses them to another owner and a host process, an unlock works; twin open files refuse the handover', async (t) => {
  const share = join(dir, 'share');
  mkdirSync(share, { recursive: true });
  writeFileSync(join(share, 'data'), 'locked');
  writeFileSync(join(share, 'fl'), 'flocked');
  const args = ['--plugin', fsPlugin, '--shared-dir', share];
  const old = await host(args);
  const fe = await VhostUserFrontend.connect(sock, { memoryBytes: 16 << 20, queues: [64, 64], features: 1n << BigInt(VIRTIO_F_VERSION_1) });
  t.teardown(() => fe.close());
  let disconnected = false;
  void fe.conn.closed.then(() => (disconnected = true));
  const c = new FuseClient(fe);
  t.is((await c.init()).error, 0);
  const data = nodeOf(await c.lookup(1n, 'data'));
  const fh = fhOfOpen(await c.open(data, O.RDWR));
  const twin = fhOfOpen(await c.open(data, O.RDWR));
  const fl = fhOfOpen(await c.open(nodeOf(await c.lookup(1n, 'fl')), O.RDONLY));
  // FUSE_SETLK: a whole-file write lock for owner 7, a flock through fl.
  const lk = (file: bigint, owner: bigint, type: number, flock = false) => lkIn(file, owner, 0n, LK.END, type, 42, flock);
  t.is((await c.req(32, data, lk(fh, 7n, 1))).error, 0);
  t.is((await c.req(32, data, lk(fl, 9n, 1, true))).error, 0);
  const hostTry = (name: string, how: 'lockf' | 'flock') => hostTryLock(join(share, name), how);
  // Two open files of the lock's inode with the same access mode: the new host could not tell them apart.
  const r = await runCli(['--socket-path', sock, ...args, '--take-over', '--take-over-mode', 'live']);
  t.is(r.code, 1, r.stderr);
  t.regex(r.stderr, /open 2 times with the same access mode and holds a lock through one of them/);
  t.is(old.child.exitCode, null);
  t.is((await c.req(32, data, lk(twin, 8n, 1))).error, 11 /* EAGAIN */, 'the old host still holds owner 7\'s lock');
  // RELEASE of the twin (fh, flags, release_flags, lock_owner): then the handover goes through.
  const rel = Buffer.alloc(24);
  rel.writeBigUInt64LE(twin, 0);
  t.is((await c.req(18, data, rel)).error, 0);
  const next = await host([...args, '--take-over', '--take-over-mode', 'live']);
  t.is(await old.exited, 0, old.log());
  t.regex(next.log(), /the session carries on here without a reconnect/);
  t.false(disconnected);
  t.is(hostTry('data', 'lockf'), 'busy', 'a host process is still refused the record lock');
  t.is(hostTry('fl', 'flock'), 'busy', 'and the flock');
  const other = fhOfOpen(await c.open(data, O.RDONLY));
  t.is((await c.req(32, data, lk(other, 8n, 0))).error, 11 /* EAGAIN */, 'another owner is refused after the handover');
  t.is((await c.req(32, data, lk(fh, 7n, 2))).error, 0, 'owner 7 unlocks on the new host');
  t.is((await c.req(32, data, lk(other, 8n, 0))).error, 0, 'then another owner gets it');
  t.is((await c.req(32, data, lk(fl, 9n, 2, true))).error, 0);
  t.is(hostTry('fl', 'flock'), 'locked', 'the flock let go on the new host');
});

/** A process's fds that name files under `dir`, as their targets (sorted): which descriptions it holds there. */
function fdsUnder(pid: number, under: string): string[] {
  const out: string[] = [];
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      const to = readlinkSync(`/proc/${pid}/fd/${fd}`);
      if (to.startsWith(`${under}/`)) out.push(to);
    } catch {
      // closed while reading
    }
  }
  return out.sort();
}

/** Whether a flock through `fd` (handed to a python child as its fd 3) is granted at once. */
function flockThrough(fd: number): 'locked' | 'busy' {
  const code = `import fcntl\ntry:\n  fcntl.flock(3,fcntl.LOCK_EX|fcntl.LOCK_NB); print('locked')\nexcept OSError: print('busy')`;
  return spawnSync('python3', ['-c', code], { stdio: ['ignore', 'pipe', 'inherit', fd], encoding: 'utf8' }).stdout.trim() as 'locked' | 'busy';
}

/** A share holding `files`, an old host serving it on `sock`, our front-end connected with INIT done. */
async function fsLockSession(t: ExecutionContext, files: Record<string, string>) {
  const share = realpathSync(mkdtempSync(join(dir, 'share-')));
  for (const [name, body] of Object.entries(files)) writeFileSync(join(share, name), body);
  const args = ['--plugin', fsPlugin, '--shared-dir', share];
  const old = await host(args);
  const fe = await VhostUserFrontend.connect(sock, { memoryBytes: 16 << 20, queues: [64, 64], features: 1n << BigInt(VIRTIO_F_VERSION_1) });
  t.teardown(() => fe.close());
  const c = new FuseClient(fe);
  t.is((await c.init()).error, 0);
  return { share, args, old, c };
}

test.serial('fs: the lock fds a handover sends are the lock-holding descriptions, owned by the handover: the old host holds no more fds after a failed handover, the new host no more than the old one after a successful one', async (t) => {
  const { share, args, old, c } = await fsLockSession(t, { data: 'locked', fl: 'flocked' });
  const data = nodeOf(await c.lookup(1n, 'data'));
  const fh = fhOfOpen(await c.open(data, O.RDWR));
  const fl = fhOfOpen(await c.open(nodeOf(await c.lookup(1n, 'fl')), O.RDONLY));
  t.is((await c.req(32, data, lkIn(fh, 7n, 0n, LK.END, 1, 42))).error, 0);
  t.is((await c.req(32, data, lkIn(fl, 9n, 0n, LK.END, 1, 42, true))).error, 0);
  const before = fdsUnder(old.child.pid!, share);
  t.true(before.includes(join(share, 'data')) && before.includes(join(share, 'fl')), before.join(', '));

  // This test process plays a new host that takes the stop message (state memfd, lock fds) and dies.
  const fake = await fakeNewHost(join(dir, 'fake-new-host.sock'));
  await fake.drain();
  t.is(fake.say('session'), 8);
  await fake.drain();
  t.is(fake.say('stop'), 5);
  const stopped = await fake.drain();
  // The fake dies at once: the old host waits only 5 s for a new host's "ready", and a python
  // child per check below can take longer than that on a loaded machine. Duplicates of the fds
  // it was sent (the same descriptions) stay ours for the checks.
  const lockFds = stopped.fds.slice(1).map((fd) => native.dup(fd));
  const closeDups = () => lockFds.splice(0).forEach((fd) => native.close(fd));
  t.teardown(closeDups);
  fake.close();
  const [a] = (await fake.answer) as { error?: { message: string } }[];
  t.regex(a.error!.message, /the new host went away before it served the device/);
  const targets = lockFds.map((fd) => readlinkSync(`/proc/self/fd/${fd}`)).sort();
  t.deepEqual([...new Set(targets)], [join(share, 'data'), join(share, 'fl')], 'the lock fds name the locked files');
  t.is(hostTryLock(join(share, 'fl'), 'flock'), 'busy', 'a fresh open of fl is refused the flock');
  const flFd = lockFds.find((fd) => readlinkSync(`/proc/self/fd/${fd}`) === join(share, 'fl'))!;
  t.is(flockThrough(flFd), 'locked', 'the fd sent for fl is the description holding the flock');
  // Ours go before anything else is checked: they hold the same descriptions (and locks).
  closeDups();
  t.regex(old.log(), /host handover undone: the session runs on in this host/);
  t.deepEqual(fdsUnder(old.child.pid!, share), before, 'the old host holds the same descriptions as before the failed handover (the duplicates it sent are closed)');

  const next = await host([...args, '--take-over', '--take-over-mode', 'live']);
  t.is(await old.exited, 0, old.log());
  t.regex(next.log(), /the session carries on here without a reconnect/);
  t.deepEqual(fdsUnder(next.child.pid!, share), before, 'the new host holds what the old one did (the fds that came with the stop message are closed)');
  t.is(hostTryLock(join(share, 'fl'), 'flock'), 'busy', 'the flock is still held');
});

test.serial('fs: a guest holding locks through more descriptions than a handover carries is refused before its rings stop, with the reason', async (t) => {
  const { share, args, old, c } = await fsLockSession(t, { data: 'locked' });
  const data = nodeOf(await c.lookup(1n, 'data'));
  const fh = fhOfOpen(await c.open(data, O.RDONLY));
  // A read lock per owner: one description each in the share; with the open file's own, one more than a handover carries.
  for (let owner = 1n; owner <= BigInt(MAX_CARRIED_LOCK_FDS); owner++) {
    const e = (await c.req(32, data, lkIn(fh, owner, 0n, LK.END, 0, 42))).error;
    if (e !== 0) return t.fail(`owner ${owner}: SETLK answered ${e}`);
  }
  const r = await runCli(['--socket-path', sock, ...args, '--take-over', '--take-over-mode', 'live']);
  t.is(r.code, 1, r.stderr);
  t.regex(r.stderr, new RegExp(`held through ${MAX_CARRIED_LOCK_FDS + 1} host descriptions .*at most ${MAX_CARRIED_LOCK_FDS}`));
  t.notRegex(old.log(), /restart where they stopped/, 'no ring stopped');
  t.notRegex(old.log(), /session stopped for a host handover/);
  t.notRegex(old.log(), /rings cannot stop yet .*trying again/, 'refused at once: the guest is not paused again and again for the same answer');
  t.is(old.child.exitCode, null);
  t.is((await c.req(32, data, lkIn(fh, 1n, 0n, LK.END, 2, 42))).error, 0, 'the old host serves on');
});

test.serial('--take-over-mode: auto, live or socket, and only with --take-over', async (t) => {
  const alone = await runCli(['--socket-path', sock, '--plugin', rng, '--take-over-mode', 'live']);
  t.is(alone.code, 2);
  t.regex(alone.stderr, /--take-over-mode goes with --take-over/);
  const bad = await runCli(['--socket-path', sock, '--plugin', rng, '--take-over', '--take-over-mode', 'fast']);
  t.is(bad.code, 2);
  t.regex(bad.stderr, /--take-over-mode: "fast" is not auto, live or socket/);
});

test.serial('a new host slow to say it serves after "go" is waited for, never raced: the old host serves again only once that process has ended', async (t) => {
  t.timeout(90_000);
  const old = await host(['--plugin', blk, '--storage', 'memory:4M']);
  const fe = await VhostUserFrontend.connect(sock, feBlk);
  const fake = await fakeNewHost(join(dir, 'slow-new-host.sock'));
  await fake.drain();
  fake.say('session');
  await fake.drain();
  fake.say('stop');
  await fake.drain();
  fake.say('ready');
  // "go" comes; this process plays a new host whose start takes longer than the old host's 10 s.
  await until(() => /has not said it serves 10 s after this host let go/.test(old.log()), 'the old host to say it waits for the slow new host', 20_000);
  t.notRegex(old.log(), /accepts connections again/, 'not serving the device while the new host may be');
  t.is(old.child.exitCode, null);
  // The slow new host ends without serving: now, and only now, the old host takes connections again.
  fake.close();
  const [a] = (await fake.answer) as { error?: { message: string } }[];
  t.regex(a.error!.message, /went away after this host let go of the session/);
  await until(() => /accepts connections again/.test(old.log()), 'the old host to accept again', 10_000);
  await fe.close().catch(() => {});
});
