// Host upgrade (docs/upgrade.md, "Host upgrade"): `vhost-wasm --socket-path S ... --take-over`
// started beside a running host takes its device over. Real processes on both sides, a real
// front-end (host/frontend) with an inflight area doing I/O with requests in flight throughout,
// which reconnects as QEMU does when the old host lets its connection go. Also: a new host that
// cannot serve (refused, or its plugin does not load) and one that dies in the middle of the
// handover leave the old host serving, its front-end never interrupted.
import test from 'ava';
import { spawn } from 'node:child_process';
import { connect as netConnect, type Socket } from 'node:net';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { VhostUserFrontend, VIRTIO_F_VERSION_1 } from '../host/frontend/driver.ts';
import { BlkDevice, VIRTIO_BLK_F_FLUSH } from '../host/frontend/blk.ts';
import { native } from '../host/native/index.ts';
import { REPO, runCli, startHost, type HostProcess } from './helpers/host-process.ts';
import { heldConnection, rawRpc } from './helpers/daemon-process.ts';
import { ioLoop, verifyAll } from './helpers/blk-rounds.ts';
import { scratchEachTest } from './helpers/scratch-each-test.ts';

const blk = join(REPO, 'dist', 'plugins', 'blk.wasm');
const blkFeatures = (1n << BigInt(VIRTIO_F_VERSION_1)) | (1n << BigInt(VIRTIO_BLK_F_FLUSH));
const feOpts = { memoryBytes: 16 << 20, queues: [64], features: blkFeatures, inflight: true };

let dir: string;
let sock: string;
const keep = scratchEachTest(test, 'host-takeover-', (d) => {
  dir = d;
  sock = join(dir, 'disk.sock');
});

const args = (extra: string[] = []) => ['--socket-path', sock, '--plugin', blk, '--storage', 'memory:4M', '--call-deadline', '10000', ...extra];
async function host(extra: string[] = []): Promise<HostProcess> {
  return keep(await startHost(args(extra)));
}

/** The old host and a front-end on it (with an inflight area), its disk, and each block's last round. */
async function served() {
  const old = await host();
  const fe = await VhostUserFrontend.connect(sock, feOpts);
  return { old, fe, disk: new BlkDevice(fe.queues[0]), last: new Map<number, number>() };
}

/** I/O rounds in the background; the returned function ends them and resolves with how many ran. */
function backgroundIo(disk: BlkDevice, last: Map<number, number>): () => Promise<number> {
  let stop = false;
  const io = ioLoop(disk, last, () => stop);
  return () => {
    stop = true;
    return io;
  };
}

/**
 * Starts a `--take-over` host while the front-end reconnects as QEMU does (when its connection
 * goes, it connects again to whoever listens now); resolves once the old host exited and the
 * front-end is on the new one.
 */
async function takeOver(old: HostProcess, fe: VhostUserFrontend): Promise<{ fresh: HostProcess; oldExit: number | null }> {
  const reconnected = fe.conn.closed.then(() => fe.reconnect(sock));
  const fresh = await host(['--take-over', '--take-over-mode', 'socket']);
  const oldExit = await old.exited;
  await reconnected;
  return { fresh, oldExit };
}

type RpcAnswer = { result?: unknown; error?: { message: string } };

/** A host-handover request on the old host's control socket; resolves with its answer. */
async function handover(params: Record<string, unknown>): Promise<RpcAnswer> {
  const ask = JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'host-handover', params });
  const [answer] = (await rawRpc(`${sock}.control`, [ask], 1)) as RpcAnswer[];
  return answer;
}

test.serial('--take-over: the new host serves the device (memory disk included), the front-end reconnects with requests in flight and loses nothing; the old host exits 0', async (t) => {
  const { old, fe, disk, last } = await served();
  await ioLoop(disk, last, () => true);
  const stopIo = backgroundIo(disk, last);
  const { fresh, oldExit } = await takeOver(old, fe);
  t.is(oldExit, 0, old.log());
  const rounds = await stopIo();
  t.true(rounds >= 2);
  await verifyAll(disk, last);
  t.regex(old.log(), /host-handover: pid \d+ serves the device now; this host exits/);
  t.regex(fresh.log(), /took the device over from host [\d.]+ \(pid \d+\); its front-end reconnects here/);
  t.regex(fresh.log(), /inflight area set: 1 queue/, 'the front-end handed the new host its inflight area');
  t.true(existsSync(sock) && existsSync(`${sock}.control`), 'the socket files stay, the new host\'s now');
  // The new host is managed on the same control socket.
  const up = await runCli(['upgrade', '--socket', sock, '--plugin', blk, '--json']);
  t.is(up.code, 0, up.stderr);
  await verifyAll(disk, last);
  await fe.close();
  // And it removes the files when it stops.
  t.is(await fresh.stop(), 0);
  t.false(existsSync(sock));
  t.false(existsSync(`${sock}.control`));
});

test.serial('from the handover the old host takes no control connection: a client connected to it is told it handed over to the new pid, then disconnected', async (t) => {
  const { old, fe } = await served();
  // An operator's client on the old host's control socket before the take-over, idle meanwhile.
  const held = heldConnection(`${sock}.control`);
  t.teardown(() => held.destroy());
  const first = (await held.ask(1, 'device-list')) as { error?: { message: string } };
  t.regex(first.error?.message ?? '', /no method "device-list" \(a single-device host has: /, 'the old host answers it');
  const { fresh, oldExit } = await takeOver(old, fe);
  t.is(oldExit, 0, old.log());
  t.deepEqual(await held.rest(1), [
    { jsonrpc: '2.0', id: null, error: { code: -32000, message: `this host (pid ${old.child.pid}) has handed over to pid ${fresh.child.pid}: connect again to reach it` } },
  ]);
  await fe.close();
  t.is(await fresh.stop(), 0);
});

test.serial("a new host that cannot serve (another memory disk size; a plugin that does not load) is refused; the old host serves on, its front-end's I/O goes on throughout", async (t) => {
  const { old, fe, disk, last } = await served();
  const stopIo = backgroundIo(disk, last);
  const bigger = await runCli(['--socket-path', sock, '--plugin', blk, '--storage', 'memory:8M', '--take-over']);
  t.is(bigger.code, 1);
  t.regex(bigger.stderr, /the old host's disk is a 4194304-byte memory disk: give --storage memory:4194304/);
  const broken = await runCli(['--socket-path', sock, '--plugin', join(dir, 'missing.wasm'), '--storage', 'memory:4M', '--take-over']);
  t.is(broken.code, 1);
  await stopIo();
  t.regex(old.log(), /host-handover from pid \d+ refused: the new host did not take the device: .*memory disk/);
  t.regex(old.log(), /host-handover from pid \d+ refused: the new host did not take the device/);
  t.is(old.child.exitCode, null, 'the old host runs');
  await verifyAll(disk, last);
  // It still accepts (a second front-end waits behind the first, as always) and is managed.
  const up = await runCli(['upgrade', '--socket', sock, '--plugin', blk, '--json']);
  t.is(up.code, 0, up.stderr);
  await fe.close();
  const fe2 = await VhostUserFrontend.connect(sock, feOpts);
  await verifyAll(new BlkDevice(fe2.queues[0]), last);
  await fe2.close();
});

test.serial('a new host that dies in the middle of the handover (it got the sockets and never said it serves) leaves the old host serving; a later take-over works', async (t) => {
  const { old, fe, disk, last } = await served();
  const stopIo = backgroundIo(disk, last);
  // This test process plays the new host: it asks, receives the fds, and goes away as a
  // crashed process does (the kernel closes its fds; it never answers).
  const to = join(dir, 'fake-new-host.sock');
  const lfd = native.listenUnix(to, 1);
  const answer = handover({ to });
  let conn = -1;
  while ((conn = native.accept(lfd)) < 0) await new Promise((r) => setTimeout(r, 10));
  let got = null;
  while ((got = native.recvMsg(conn, Buffer.alloc(4096), 4)) === null) await new Promise((r) => setTimeout(r, 10));
  t.true(got.bytes > 0);
  t.is(got.fds.length, 3, 'listening socket, control socket, memory disk');
  for (const fd of got.fds) native.close(fd);
  native.close(conn);
  native.close(lfd);
  t.regex((await answer).error!.message, /the new host went away before it served the device/);
  await stopIo();
  await verifyAll(disk, last);
  t.is(old.child.exitCode, null);

  // The old host accepts again: a real take-over now goes through, and the data moves with it.
  const { fresh, oldExit } = await takeOver(old, fe);
  t.is(oldExit, 0);
  await verifyAll(disk, last);
  t.regex(fresh.log(), /took the device over/);
  await fe.close();
});

test.serial('--take-over with nothing to take over: the command says why and exits 1', async (t) => {
  const r = await runCli([...args(['--take-over'])]);
  t.is(r.code, 1);
  t.regex(r.stderr, /cannot reach the old host at .*disk\.sock\.control/);
  const u = await runCli(['--fd', '3', '--plugin', blk, '--take-over']);
  t.is(u.code, 2);
  t.regex(u.stderr, /--take-over takes the device of the host on --socket-path PATH/);
});

test.serial('host-handover is refused when the socket it names belongs to another process than the one asking, or while a plugin upgrade runs; nothing is handed over', async (t) => {
  const { old, fe, disk, last } = await served();
  await ioLoop(disk, last, () => true);
  // Another process listens at `to`: the fds must not go to it.
  const to = join(dir, 'someone-else.sock');
  const other = spawn(process.execPath, ['-e', `require('node:net').createServer((c) => c.on('data', () => { console.log('GOT'); })).listen(${JSON.stringify(to)}, () => console.log('READY'))`], { stdio: ['ignore', 'pipe', 'inherit'] });
  let otherOut = '';
  await new Promise<void>((resolve) => other.stdout!.on('data', (d: Buffer) => ((otherOut += d.toString()), otherOut.includes('READY') && resolve())));
  t.regex((await handover({ to })).error!.message, /is served by pid \d+, not by pid \d+ that asked for the device: nothing was handed over/);
  t.regex((await handover({ to: 'relative.sock' })).error!.message, /params\.to: missing or not an absolute path/);
  other.kill();
  t.false(otherOut.includes('GOT'), 'the other process received nothing');

  // A plugin upgrade and a handover at once: the second is refused, the first completes.
  const up = rawRpc(`${sock}.control`, [JSON.stringify({ jsonrpc: '2.0', id: 2, method: 'plugin-upgrade', params: { plugin: blk } })], 1);
  const during = await handover({ to: join(dir, 'x.sock') });
  const [upgraded] = (await up) as RpcAnswer[];
  if (during.error && /already running/.test(during.error.message)) t.truthy(upgraded.result, JSON.stringify(upgraded));
  else t.regex(during.error!.message, /cannot connect to the new host/, 'the upgrade had finished first: the handover failed on its own (nobody at x.sock)');
  await ioLoop(disk, last, () => true);
  await verifyAll(disk, last);
  t.is(old.child.exitCode, null);
  await fe.close();
});

test.serial('host-handover naming a socket whose backlog is full is refused at once; the old host never waits on it and serves on', async (t) => {
  const { old, fe, disk, last } = await served();
  await ioLoop(disk, last, () => true);
  // This process listens at `to` (so the pid check would pass) and never accepts: its backlog fills.
  const to = join(dir, 'full.sock');
  const lfd = native.listenUnix(to, 0);
  const queued: Socket[] = [];
  try {
    for (let i = 0; i < 16; i++) {
      const c = netConnect(to);
      queued.push(c);
      const full = await new Promise<boolean>((resolve) => {
        c.once('connect', () => resolve(false));
        c.once('error', () => resolve(true));
      });
      if (full) break;
    }
    t.regex((await handover({ to })).error!.message, /cannot connect to the new host at .*full\.sock: .*(EAGAIN|not accepting)/);
    await ioLoop(disk, last, () => true);
    await verifyAll(disk, last);
    t.is(old.child.exitCode, null);
  } finally {
    for (const c of queued) c.destroy();
    native.close(lfd);
    await fe.close();
  }
});
