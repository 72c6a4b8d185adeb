// Host upgrade of the daemon (docs/upgrade.md, "Upgrading the daemon"): `vhost-wasm serve
// --config FILE --take-over` beside a running daemon takes every device over: listening
// sockets, memory disks, connected sessions (no reconnect) and limits; the management socket
// moves too. Real processes (the built binary) on both sides, our own front-ends: a blk device
// with I/O running, an rng device with requests running and an idle rng device. And the
// failures: a new daemon that dies after the sessions were stopped, before "go", leaves the old
// one serving every device; a config that does not describe the old daemon's devices is refused
// with each device's reason.
import test from 'ava';
import { writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { VhostUserFrontend, VIRTIO_F_VERSION_1 } from '../host/frontend/driver.ts';
import { BlkDevice, VIRTIO_BLK_F_FLUSH } from '../host/frontend/blk.ts';
import { native } from '../host/native/index.ts';
import { REPO } from './helpers/host-process.ts';
import { ctl, heldConnection, rawRpc, spawnDaemon, startDaemon, type DaemonProcess } from './helpers/daemon-process.ts';
import { ioLoop, verifyAll } from './helpers/blk-rounds.ts';
import { RngPump } from './helpers/rng-pump.ts';
import { scratchEachTest } from './helpers/scratch-each-test.ts';
import { acceptOne, readFramed, receiveDevice } from '../host/server/takeover.ts';
import { FdReader, LineChannel } from '../host/server/handover-wire.ts';

const blk = join(REPO, 'dist', 'plugins', 'blk.wasm');
const rng = join(REPO, 'dist', 'plugins', 'rng.wasm');
const feBlk = { memoryBytes: 16 << 20, queues: [64], features: (1n << BigInt(VIRTIO_F_VERSION_1)) | (1n << BigInt(VIRTIO_BLK_F_FLUSH)), inflight: true };
const feRng = { memoryBytes: 4 << 20, queues: [64], features: 1n << BigInt(VIRTIO_F_VERSION_1) };

let dir: string;
const keep = scratchEachTest(test, 'daemon-takeover-', (d) => (dir = d));

const control = () => join(dir, 'control.sock');
/** The blk device on a memory disk (socket disk.sock). */
const diskDevice = (storage = 'memory:4M', more: object = {}) => ({ id: 'disk', socket: join(dir, 'disk.sock'), plugin: blk, grants: { storage }, ...more });
/** An rng device `id` (socket ID.sock). */
const rngDevice = (id: string, plugin = rng) => ({ id, socket: join(dir, `${id}.sock`), plugin, grants: { entropy: true } });
/** A config file `name` in the test's directory: these devices and the one management socket. */
function configFile(name: string, devices: object[]): string {
  const file = join(dir, name);
  writeFileSync(file, JSON.stringify({ control: control(), devices }));
  return file;
}
/** The config: blk on a memory disk, two rng devices. */
const writeConfig = () => configFile('daemon.json', [diskDevice('memory:4M', { limits: { callDeadlineMs: 10000 } }), rngDevice('rng-busy'), rngDevice('rng-idle')]);
async function daemon(args: string[]): Promise<DaemonProcess> {
  return keep(await startDaemon(args));
}

/** Front-ends on the blk and the busy rng device, with I/O running on both. */
async function running(t: { teardown(fn: () => unknown): void }) {
  const feDisk = await VhostUserFrontend.connect(join(dir, 'disk.sock'), feBlk);
  const feR = await VhostUserFrontend.connect(join(dir, 'rng-busy.sock'), feRng);
  let disconnected = 0;
  void feDisk.conn.closed.then(() => disconnected++);
  void feR.conn.closed.then(() => disconnected++);
  const disk = new BlkDevice(feDisk.queues[0]);
  const last = new Map<number, number>();
  let stop = false;
  let rounds = 0;
  const io = ioLoop(disk, last, () => {
    rounds++;
    return stop;
  });
  const pump = RngPump.start(t, feR);
  return {
    disk,
    last,
    pump,
    feDisk,
    get disconnected() {
      return disconnected;
    },
    /** Resolves once `n` more blk rounds and rng requests completed. */
    async more(n = 10) {
      const r = rounds;
      await pump.more(n);
      while (rounds < r + n) await new Promise((res) => setTimeout(res, 5));
    },
    async end() {
      stop = true;
      await io;
      await pump.stop();
      await verifyAll(disk, last);
    },
    async close() {
      await feDisk.close();
      await feR.close();
    },
  };
}

test.serial('serve --take-over: every device moves to the new daemon (two sessions live with I/O running, one idle socket); I/O goes on with no error or reconnect, ctl works against the new daemon, the old one exits 0', async (t) => {
  const config = writeConfig();
  const old = await daemon(['--config', config]);
  // A limit changed at run time moves with the device.
  t.is((await ctl(['--control', control(), 'set-limits', 'disk', '--call-deadline', '9000'])).code, 0);
  const io = await running(t);
  await io.more();
  const fresh = await daemon(['--config', config, '--take-over']);
  t.is(await old.exited, 0, old.log());
  await io.more();
  t.regex(fresh.log(), /took 3 device\(s\) over from the old daemon: 2 with the front-end's session \(no reconnect\)/);
  t.regex(old.log(), /pid \d+ serves every device now \(disk live, rings stopped [\d.]+ ms, rng-busy live, rings stopped [\d.]+ ms, rng-idle\); this daemon exits/);
  const stopped = (id: string) => new RegExp(`${id} live, rings stopped ([\\d.]+) ms`).exec(old.log())?.[1];
  t.log(`rings stopped (old daemon's count): disk ${stopped('disk')} ms, rng-busy ${stopped('rng-busy')} ms; load average ${loadavg().map((x) => x.toFixed(2)).join(' ')}`);

  // The management socket is the new daemon's: its pid answers, and the limit set on the old one holds.
  const stats = await ctl(['--control', control(), '--json', 'stats']);
  t.is(stats.code, 0, stats.stderr);
  const s = JSON.parse(stats.stdout) as { devices: { id: string; state: string; limits: { callDeadlineMs: number } }[]; process: { pid: number } };
  t.is(s.process.pid, fresh.child.pid!);
  t.deepEqual(
    s.devices.filter((d) => d.id !== 'rng-idle').map((d) => [d.id, d.state]),
    [
      ['disk', 'connected'],
      ['rng-busy', 'connected'],
    ],
  );
  t.is(s.devices.find((d) => d.id === 'disk')!.limits.callDeadlineMs, 9000);
  // The idle device's socket moved: a front-end connecting now is served by the new daemon.
  const feIdle = await VhostUserFrontend.connect(join(dir, 'rng-idle.sock'), feRng);
  const r = await feIdle.queues[0].submit([], 64);
  t.is(r.len, 64);
  await feIdle.close();

  await io.end();
  t.is(io.disconnected, 0, 'neither front-end lost its connection');
  t.is(io.feDisk.queues[0].inFlight, 0, 'every request answered, none twice');
  await io.close();
  t.is(await fresh.stop(), 0);
});

test.serial('from the handover\'s commit the old daemon takes no management connection: a client connected to it is told it handed over to the new pid, and ctl reaches the new daemon', async (t) => {
  const config = writeConfig();
  const old = await daemon(['--config', config]);
  // An operator's client connected to the old daemon before the take-over, idle meanwhile.
  const held = heldConnection(control());
  t.teardown(() => held.destroy());
  const first = (await held.ask(1, 'device-stats')) as { result: { process: { pid: number } } };
  t.is(first.result.process.pid, old.child.pid!, 'the held connection is the old daemon\'s');
  const io = await running(t);
  await io.more();
  const fresh = await daemon(['--config', config, '--take-over']);
  const newPid = fresh.child.pid!;
  // Told once, plainly, and disconnected: not answered with the old daemon's view of devices it let go.
  t.deepEqual(await held.rest(1), [
    { jsonrpc: '2.0', id: null, error: { code: -32000, message: `this daemon (pid ${old.child.pid}) has handed over to pid ${newPid}: connect again to reach it` } },
  ]);
  t.is(await old.exited, 0, old.log());
  // It stopped taking connections at the commit, before it let go of its devices and exited.
  const log = old.log();
  const retired = log.indexOf(`management socket: this daemon (pid ${old.child.pid}) has handed over to pid ${newPid}: connect again to reach it; no more connections are taken here`);
  const letGo = log.search(/pid \d+ serves every device now/);
  t.true(retired >= 0, log);
  t.true(letGo > retired, 'the management socket was given up before the devices were let go');
  for (let i = 0; i < 3; i++) {
    const stats = await ctl(['--control', control(), '--json', 'stats']);
    t.is(stats.code, 0, stats.stderr);
    t.is(JSON.parse(stats.stdout).process.pid, newPid, 'ctl reaches the new daemon');
  }
  await io.end();
  t.is(io.disconnected, 0);
  await io.close();
  t.is(await fresh.stop(), 0);
});

test.serial('a new daemon that dies after the sessions were stopped, before "go", leaves the old daemon serving every device on the same connections; a later take-over works', async (t) => {
  const config = writeConfig();
  const old = await daemon(['--config', config]);
  const io = await running(t);
  await io.more();
  // This test process plays the new daemon: asks for the devices, takes the list, the devices
  // and both sessions, has both sessions' rings stopped, and goes away as a crashed process
  // does (its fds closed, no answer).
  const to = join(dir, 'fake-new-daemon.sock');
  const lfd = native.listenUnix(to, 16);
  const answer = rawRpc(control(), [JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'daemon-handover', params: { to, live: true } })], 1);
  const kept: number[] = [];
  const first = await acceptOne(lfd, 10_000).conn;
  const list = await readFramed(new FdReader(first, Date.now() + 10_000), (raw) => ((raw as { control: boolean }).control ? 1 : 0), 'device list');
  kept.push(...list.fds);
  t.deepEqual(
    (list.raw as { devices: { id: string; connected: boolean }[] }).devices.map((d) => [d.id, d.connected]),
    [
      ['disk', true],
      ['rng-busy', true],
      ['rng-idle', false],
    ],
  );
  const lines = new LineChannel(first);
  lines.write('devices\n');
  const received = [];
  const conns: number[] = [];
  for (let i = 0; i < 3; i++) {
    const conn = await acceptOne(lfd, 10_000).conn;
    conns.push(conn);
    received.push(await receiveDevice(conn));
  }
  for (const r of received) {
    kept.push(...r.fds.values());
    if (!r.header.sessionOffered) continue;
    const s = await r.takeSession();
    if ('refused' in s) throw new Error(s.refused);
    kept.push(...s.fds);
    const stopped = await r.takeStop(s.record.rings.length);
    kept.push(stopped.stateFd);
  }
  t.regex(old.log(), /session stopped for a host handover/);
  // The crash: every fd closed, nothing said.
  for (const fd of [...kept, ...conns]) native.close(fd);
  lines.close();
  native.close(lfd);
  const [a] = (await answer) as { error?: { message: string } }[];
  t.regex(a.error!.message, /disk: the new host went away before it served the device/);
  t.regex(a.error!.message, /rng-busy: the new host went away before it served the device/);
  await io.more();
  t.is(old.child.exitCode, null);
  t.is(io.disconnected, 0);
  // Still managed by the old daemon, and not stuck in the handover.
  const list2 = await ctl(['--control', control(), '--json', 'list']);
  t.is(list2.code, 0, list2.stderr);
  t.is((JSON.parse(list2.stdout) as { devices: unknown[] }).devices.length, 3);
  t.is((await ctl(['--control', control(), 'set-limits', 'disk', '--call-deadline', '9000'])).code, 0);

  const fresh = await daemon(['--config', config, '--take-over']);
  t.is(await old.exited, 0, old.log());
  await io.more();
  await io.end();
  t.is(io.disconnected, 0);
  await io.close();
  t.is(await fresh.stop(), 0);
});

test.serial('all or nothing: a session refused by the new daemon after its rings were stopped (its state not taken by another plugin) gives every session back to the old daemon, the other one too, though its rings were stopped for the new daemon as well', async (t) => {
  const config = writeConfig();
  const old = await daemon(['--config', config]);
  const io = await running(t);
  await io.more();
  // rng-busy as another plugin (the TypeScript rng) in the new daemon: it starts, takes the
  // session's settings, has the rings stopped there, and refuses the old rng's state.
  const other = configFile('other-rng.json', [diskDevice(), rngDevice('rng-busy', join(REPO, 'dist', 'plugins', 'rng-ts.wasm')), rngDevice('rng-idle')]);
  const fresh = spawnDaemon(['--config', other, '--take-over']);
  keep(fresh);
  t.is(await fresh.exited, 1, fresh.log());
  t.regex(fresh.log(), /rng-busy: .*state/);
  // Both sessions were stopped in the old daemon and both run there again.
  t.is(old.log().match(/host handover undone: the session runs on in this host/g)?.length, 2, old.log());
  t.is(old.log().match(/session stopped for a host handover/g)?.length, 2, 'the rings of both sessions were stopped for the new daemon');
  // Each device is told its own reason, or that another was refused.
  t.regex(old.log(), /rng-busy: the new host did not take the device: the device did not take the old host's state: state is from device "rng"/);
  t.regex(old.log(), /disk: the new host did not take the device: not taken: all or nothing, and rng-busy was refused/);
  t.regex(old.log(), /the new daemon took none of the devices; this daemon serves every one on/);
  await io.more();
  t.is(old.child.exitCode, null);
  t.is(io.disconnected, 0);
  await io.end();
  t.is(io.feDisk.queues[0].inFlight, 0);
  await io.close();
  t.is(await old.stop(), 0);
});

test.serial('serve --take-over with a config that does not describe the old daemon\'s devices is refused, naming each device, and so is one whose device does not start; the old daemon serves on', async (t) => {
  const config = writeConfig();
  const old = await daemon(['--config', config]);
  const io = await running(t);
  await io.more();
  // Another file: the disk is a memory disk of another size, and rng-idle is missing.
  const other = configFile('other.json', [diskDevice('memory:8M'), rngDevice('rng-busy')]);
  const fresh = spawnDaemon(['--config', other, '--take-over']);
  keep(fresh);
  t.is(await fresh.exited, 1);
  t.regex(fresh.log(), /disk: its disk is a 4194304-byte memory disk there: give "storage": "memory:4194304"/);
  t.regex(fresh.log(), /rng-idle: not in the config file/);
  await io.more();
  t.is(old.child.exitCode, null);
  t.regex(old.log(), /daemon-handover from pid \d+ refused: .*the config file does not describe the old daemon's devices/);

  // The right devices, but one's plugin does not load in the new daemon: refused after the
  // others started there on the handed sockets; the old daemon serves every device on, its
  // socket files still there (the new daemon's cleanup closed its copies only).
  const bad = join(dir, 'bad.wasm');
  writeFileSync(bad, 'not a WebAssembly component');
  const badConfig = configFile('bad.json', [diskDevice(), rngDevice('rng-busy'), rngDevice('rng-idle', bad)]);
  const fresh2 = spawnDaemon(['--config', badConfig, '--take-over']);
  keep(fresh2);
  t.is(await fresh2.exited, 1);
  t.regex(fresh2.log(), /take-over refused, nothing was taken \(an old daemon serves on\): .*rng-idle: /);
  t.regex(old.log(), /daemon-handover from pid \d+ refused: the new daemon took none of the devices.*disk: the new host did not take the device: not taken: all or nothing, and rng-idle was refused.*rng-idle: the new host did not take the device: .*not a WebAssembly component/);
  await io.more();
  t.is(old.child.exitCode, null);
  t.is(io.disconnected, 0);
  const feIdle = await VhostUserFrontend.connect(join(dir, 'rng-idle.sock'), feRng);
  t.is((await feIdle.queues[0].submit([], 64)).len, 64, 'the idle device is served by the old daemon');
  await feIdle.close();
  await io.end();
  t.is(io.disconnected, 0);
  await io.close();
  t.is(await old.stop(), 0);
});

test.serial('serve --take-over --take-over-mode socket: only the sockets (and the memory disk) move; the connected front-ends are let go and, reconnecting, are served by the new daemon with the disk\'s data', async (t) => {
  const config = writeConfig();
  const old = await daemon(['--config', config]);
  const io = await running(t);
  await io.more();
  await io.end();
  const fresh = await daemon(['--config', config, '--take-over', '--take-over-mode', 'socket']);
  t.is(await old.exited, 0, old.log());
  t.regex(fresh.log(), /took 3 device\(s\) over from the old daemon: 0 with the front-end's session/);
  // The old daemon closed its front-ends' connections.
  await io.feDisk.conn.closed;
  t.true(io.disconnected >= 1);
  const fe = await VhostUserFrontend.connect(join(dir, 'disk.sock'), feBlk);
  await verifyAll(new BlkDevice(fe.queues[0]), io.last);
  await fe.close();
  await io.close();
  t.is(await fresh.stop(), 0);
});

test.serial('serve --take-over: usage (the mode goes with --take-over; a management socket path is needed to ask)', async (t) => {
  const config = writeConfig();
  let d = spawnDaemon(['--config', config, '--take-over-mode', 'live']);
  t.is(await d.exited, 2);
  t.regex(d.log(), /--take-over-mode goes with --take-over/);
  d = spawnDaemon(['--config', config, '--take-over', '--take-over-mode', 'fast']);
  t.is(await d.exited, 2);
  t.regex(d.log(), /--take-over-mode: "fast" is not auto, live or socket/);
  // Nothing serves the management socket: the command says so and exits 1.
  d = spawnDaemon(['--config', config, '--take-over']);
  t.is(await d.exited, 1);
  t.regex(d.log(), /take-over refused, nothing was taken \(an old daemon serves on\): .*control\.sock/);
});
