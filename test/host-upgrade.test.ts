// `vhost-wasm upgrade --socket S --plugin FILE` (docs/upgrade.md) against the single-device host
// binary (`vhost-wasm --socket-path S ...`) and its control socket S.control: real front-ends
// (host/frontend) doing I/O over the device socket while the command runs. What is checked is
// what an operator and a guest see: the command's answer and exit status, no failed request,
// the data, and which build serves afterwards.
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { readdirSync, readlinkSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { VhostUserFrontend, VIRTIO_F_VERSION_1 } from '../host/frontend/driver.ts';
import { BlkDevice, VIRTIO_BLK_F_FLUSH } from '../host/frontend/blk.ts';
import { REPO, eventually, runCli, startHost, type HostProcess } from './helpers/host-process.ts';
import { rawRpc } from './helpers/daemon-process.ts';
import { buildPlugin } from '../plugins/build-plugins.mjs';
import type { MethodResults } from '../host/daemon/methods.ts';
import { ioLoop, verifyAll } from './helpers/blk-rounds.ts';
import { withTimeout } from './helpers/device-checks.ts';
import { setTimeout as sleep } from 'node:timers/promises';
import { native } from '../host/native/index.ts';
import { VhostUserConnection } from '../host/frontend/connection.ts';
import { GuestRam } from '../host/frontend/driver-memory.ts';
import { PackedDriverRing } from '../host/frontend/rings/packed.ts';
import { VirtioFeature, bit } from '../host/device/features.ts';
import { DeviceStateDirection, DeviceStatePhase } from '../host/protocol/constants.ts';
import { readToEnd } from '../host/frontend/migrate.ts';

const rng = join(REPO, 'dist', 'plugins', 'rng.wasm');
const blk = join(REPO, 'dist', 'plugins', 'blk.wasm');
const fixtures = join(REPO, 'dist', 'test-plugins');
const blk030 = join(fixtures, 'upgrade-blk-0.3.0.wasm');
const rngHold = join(fixtures, 'upgrade-rng-hold.wasm');
const rngFork = join(fixtures, 'upgrade-rng-fork.wasm');
const blkSpin = join(fixtures, 'upgrade-blk-spin.wasm');
const blkTrapLoad = join(fixtures, 'upgrade-blk-trap-load.wasm');
const blkTrapSettings = join(fixtures, 'upgrade-blk-trap-settings.wasm');
const blkFeatures = (1n << BigInt(VIRTIO_F_VERSION_1)) | (1n << BigInt(VIRTIO_BLK_F_FLUSH));
type Outcome = MethodResults['plugin-upgrade'];

test.before(async () => {
  execFileSync(process.execPath, ['build.mjs', '--only', 'plugins'], { cwd: REPO, stdio: 'ignore' });
  const plugins = join(REPO, 'test', 'fixtures', 'plugins');
  await buildPlugin({ root: REPO, sources: [join(plugins, 'upgrade-blk.c')], outFile: blk030 });
  await buildPlugin({ root: REPO, sources: [join(plugins, 'upgrade-blk.c')], outFile: blkSpin, defines: ['UPGRADE_SPIN_HANDLE'] });
  await buildPlugin({ root: REPO, sources: [join(plugins, 'upgrade-blk.c')], outFile: blkTrapLoad, defines: ['UPGRADE_TRAP_SECOND_LOAD'] });
  await buildPlugin({ root: REPO, sources: [join(plugins, 'upgrade-blk.c')], outFile: blkTrapSettings, defines: ['UPGRADE_TRAP_THIRD_ACTIVATE'] });
  await buildPlugin({ root: REPO, sources: [join(plugins, 'upgrade-rng.c')], outFile: rngHold, defines: ['UPGRADE_HOLD'] });
  await buildPlugin({ root: REPO, sources: [join(plugins, 'upgrade-rng.c')], outFile: rngFork, defines: ['UPGRADE_OTHER_NAME'] });
});

const hosts: HostProcess[] = [];
test.afterEach.always(async () => {
  for (const h of hosts.splice(0)) if (h.child.exitCode === null) await h.stop('SIGKILL');
});

async function host(args: string[]): Promise<HostProcess> {
  const h = await startHost(['--socket-path', '{socket}', '--call-deadline', '10000', ...args]);
  hosts.push(h);
  return h;
}

/** `vhost-wasm upgrade ARGS`, as an operator runs it. */
const upgradeCmd = (args: string[]) => runCli(['upgrade', ...args]);

async function upgrade(h: HostProcess, plugin: string): Promise<Outcome> {
  const r = await upgradeCmd(['--socket', h.socketPath, '--plugin', plugin, '--json']);
  if (r.code !== 0) throw new Error(`vhost-wasm upgrade exited ${r.code}: ${r.stderr}`);
  return JSON.parse(r.stdout) as Outcome;
}

/** A blk front-end on `h` after `rounds` rounds of writes: its disk and each block's last round. */
async function blkFrontEnd(h: HostProcess, rounds: number) {
  const fe = await VhostUserFrontend.connect(h.socketPath, { memoryBytes: 16 << 20, queues: [64], features: blkFeatures });
  const disk = new BlkDevice(fe.queues[0]);
  const last = new Map<number, number>();
  await ioLoop([disk], last, () => true, rounds);
  return { fe, disk, last };
}

/** `vhost-wasm upgrade ARGS` while rounds of writes and reads run on `disk`. */
async function upgradeUnderIo(disk: BlkDevice, last: Map<number, number>, args: string[]) {
  let done = false;
  const io = ioLoop([disk], last, () => done, 3);
  const r = await upgradeCmd(args);
  done = true;
  await io;
  return r;
}

test.serial('vhost-wasm upgrade --socket: blk 0.2.0 -> 0.3.0 under I/O; the control socket is S.control, mode 0600; a later front-end is served by the new build and reads the data', async (t) => {
  const h = await host(['--plugin', blk, '--storage', 'memory:4M']);
  const control = `${h.socketPath}.control`;
  t.is(statSync(control).mode & 0o777, 0o600);
  t.true(statSync(control).isSocket());
  const { fe, disk, last } = await blkFrontEnd(h, 3);
  const human = await upgradeUnderIo(disk, last, ['--socket', h.socketPath, '--plugin', blk030]);
  t.is(human.code, 0, human.stderr);
  t.regex(human.stdout, /: blk 0\.2\.0 -> 0\.3\.0 \(.*upgrade-blk-0\.3\.0\.wasm\); rings 0 stopped [\d.]+ ms, 16 state bytes moved/);
  t.regex(h.log(), /plugin upgraded: blk 0\.2\.0 -> 0\.3\.0/);
  await ioLoop([disk], last, () => true, 2);
  await verifyAll(disk, last);
  await fe.close();
  // The device now starts from the new build: the next upgrade reports 0.3.0 as the old version.
  const fe2 = await VhostUserFrontend.connect(h.socketPath, { memoryBytes: 16 << 20, queues: [64], features: blkFeatures });
  const disk2 = new BlkDevice(fe2.queues[0]);
  await verifyAll(disk2, last);
  const back = await upgrade(h, blk);
  t.like(back, { name: 'blk', fromVersion: '0.3.0', toVersion: '0.2.0', frontEnd: true, rings: [0], id: h.socketPath });
  await verifyAll(disk2, last);
  await fe2.close();
});

/** The host's fds on warm-up scratch memory (memfd "vhost-wasm warm-up"). */
function warmUpMemfds(h: HostProcess): number {
  const dir = `/proc/${h.child.pid}/fd`;
  return readdirSync(dir).filter((fd) => {
    try {
      return readlinkSync(join(dir, fd)).startsWith('/memfd:vhost-wasm warm-up');
    } catch {
      return false;
    }
  }).length;
}

test.serial('a new build the watchdog kills in its warm-up (it loops on a request) is refused, the old instance serves on, and the killed worker\'s scratch memfd and eventfds are closed', async (t) => {
  const h = await host(['--plugin', blk, '--storage', 'memory:4M']);
  const fe = await VhostUserFrontend.connect(h.socketPath, { memoryBytes: 16 << 20, queues: [64], features: blkFeatures });
  const disk = new BlkDevice(fe.queues[0]);
  const last = new Map<number, number>();
  await ioLoop([disk], last, () => true, 2);
  const before = h.fdCount();
  // The call deadline is the host's (10 s here): the new build's warm-up request runs into it.
  const r = await upgradeCmd(['--socket', h.socketPath, '--plugin', blkSpin]);
  t.is(r.code, 1, r.stderr);
  t.regex(r.stderr, /warm-up/);
  t.truthy(await h.waitForLog(/the warm-up: closed \d+ fd\(s\) the worker made before it died in the call/));
  t.is(warmUpMemfds(h), 0, 'no scratch memfd is left open');
  t.true(await eventually(() => h.fdCount() <= before), `host fds: ${before} before the upgrade, ${h.fdCount()} after`);
  await ioLoop([disk], last, () => true, 2);
  await verifyAll(disk, last);
  await fe.close();
});

test.serial('usage and reachability: no --plugin is a usage error (2); a socket with no host is unreachable (3); an unknown method on the control socket is refused', async (t) => {
  const h = await host(['--plugin', rng, '--entropy']);
  const usage = await upgradeCmd(['--socket', h.socketPath]);
  t.is(usage.code, 2);
  t.regex(usage.stderr, /give --plugin FILE\.wasm/);
  const away = await upgradeCmd(['--socket', join(h.dir, 'nobody.sock'), '--plugin', rng]);
  t.is(away.code, 3);
  t.regex(away.stderr, /cannot reach the host at .*nobody\.sock\.control/);
  const [answer] = (await rawRpc(`${h.socketPath}.control`, [JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'device-del', params: {} })], 1)) as { error?: { message: string } }[];
  t.regex(answer.error!.message, /no method "device-del" \(a single-device host has: device-stats, plugin-upgrade, host-handover\)/);
});

test.serial('a new plugin with another name is refused, and the old instance serves on', async (t) => {
  const h = await host(['--plugin', rng, '--entropy']);
  const fe = await VhostUserFrontend.connect(h.socketPath, { memoryBytes: 4 << 20, queues: [64] });
  t.is((await fe.queues[0].submit([], 32)).len, 32);
  const r = await upgradeCmd(['--socket', h.socketPath, '--plugin', rngFork]);
  t.is(r.code, 1);
  t.regex(r.stderr, /refused: the new plugin is "rng-fork", not "rng": an upgrade keeps the plugin and changes its version \[ERR_UPGRADE_REFUSED\]/);
  for (let i = 0; i < 3; i++) t.is((await fe.queues[0].submit([], 32)).len, 32);
  t.notRegex(h.log(), /plugin upgraded/);
  await fe.close();
});

test.serial('a request the plugin holds during the upgrade: refused (it cannot move), the held request is answered later by the old instance; once idle, the upgrade goes through', async (t) => {
  const h = await host(['--plugin', rngHold, '--entropy']);
  const fe = await VhostUserFrontend.connect(h.socketPath, { memoryBytes: 4 << 20, queues: [64] });
  const q = fe.queues[0];
  t.is((await q.submit([], 32)).len, 32, 'ordinary requests are answered');
  let heldDone = false;
  const held = q.submit([], 7).then((c) => {
    heldDone = true;
    return c;
  });
  // The held request reached the plugin once a later request was answered after it.
  t.is((await q.submit([], 16)).len, 16);
  const refused = await upgradeCmd(['--socket', h.socketPath, '--plugin', rng]);
  t.is(refused.code, 1);
  t.regex(refused.stderr, /the device holds 1 request\(s\) it has not answered; they cannot move to another instance: retry when the device is idle/);
  t.false(heldDone, 'the held request is still held');
  // The old instance kept it and still serves: the releasing request answers both.
  const release = await q.submit([], 9);
  t.is(Buffer.from(release.data.subarray(0, 8)).toString('latin1'), 'released');
  const c = await held;
  t.is(Buffer.from(c.data.subarray(0, 6)).toString('latin1'), 'held!!');
  const ok = await upgrade(h, rng);
  t.like(ok, { name: 'rng', frontEnd: true, rings: [0] });
  t.is((await q.submit([], 32)).len, 32);
  await fe.close();
});

test.serial('--queue-threads 2: both rings move to the new build, each on its thread, under I/O on both; data verified', async (t) => {
  const h = await host(['--plugin', blk, '--storage', 'memory:4M', '--queue-threads', '2']);
  const fe = await VhostUserFrontend.connect(h.socketPath, { memoryBytes: 16 << 20, queues: [64, 64], features: blkFeatures });
  const disks = fe.queues.map((q) => new BlkDevice(q));
  const last = new Map<number, number>();
  await ioLoop(disks, last, () => true, 2);
  let upgraded = false;
  const io = ioLoop(disks, last, () => upgraded, 2);
  const r = await upgrade(h, blk030);
  upgraded = true;
  await io;
  t.like(r, { name: 'blk', fromVersion: '0.2.0', toVersion: '0.3.0', frontEnd: true, rings: [0, 1] });
  await ioLoop(disks, last, () => true, 2);
  for (const d of disks) await verifyAll(d, last);
  await fe.close();
  t.notRegex(h.log(), /ERROR/);
});

test.serial('a second upgrade while one runs is refused; the first completes', async (t) => {
  const h = await host(['--plugin', blk, '--storage', 'memory:4M']);
  const fe = await VhostUserFrontend.connect(h.socketPath, { memoryBytes: 16 << 20, queues: [64], features: blkFeatures });
  const disk = new BlkDevice(fe.queues[0]);
  const last = new Map<number, number>();
  let done = false;
  const io = ioLoop([disk], last, () => done, 1);
  const ask = (id: number) => JSON.stringify({ jsonrpc: '2.0', id, method: 'plugin-upgrade', params: { plugin: blk030 } });
  // Two connections, both requests sent before the first build has loaded.
  const answers = (await Promise.all([rawRpc(`${h.socketPath}.control`, [ask(1)], 1), rawRpc(`${h.socketPath}.control`, [ask(2)], 1)])).map(
    (x) => x[0] as { result?: Outcome; error?: { message: string } },
  );
  done = true;
  await io;
  const ok = answers.filter((x) => x.result !== undefined);
  const refused = answers.filter((x) => x.error !== undefined);
  t.is(ok.length, 1, JSON.stringify(answers));
  t.is(refused.length, 1);
  t.regex(refused[0].error!.message, /an upgrade is already running/);
  t.like(ok[0].result, { name: 'blk', toVersion: '0.3.0', frontEnd: true, rings: [0] });
  await ioLoop([disk], last, () => true, 2);
  await verifyAll(disk, last);
  await fe.close();
});

test.serial('an upgrade racing a disconnect completes or is refused, never half-applied: the next front-end is served and sees the data', async (t) => {
  const h = await host(['--plugin', blk, '--storage', 'memory:4M']);
  const last = new Map<number, number>();
  const outcomes: string[] = [];
  // The build serving, by what each answer said: never half-applied means the next upgrade starts from it.
  let serving = '0.2.0';
  // The disconnect comes at different points of the upgrade: before its request is read, while
  // the new build loads, while the rings move (the delays only spread the interleavings).
  for (const [i, delayMs] of [0, 5, 50, 200, 400].entries()) {
    const target = i % 2 === 0 ? blk030 : blk;
    const fe = await VhostUserFrontend.connect(h.socketPath, { memoryBytes: 16 << 20, queues: [64], features: blkFeatures });
    const disk = new BlkDevice(fe.queues[0]);
    await ioLoop([disk], last, () => true, 2);
    const ask = JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'plugin-upgrade', params: { plugin: target } });
    const [[answer]] = await Promise.all([
      rawRpc(`${h.socketPath}.control`, [ask], 1),
      new Promise((resolve) => setTimeout(resolve, delayMs)).then(() => fe.close()),
    ]);
    const a = answer as { result?: Outcome; error?: { message: string } };
    if (a.error) t.regex(a.error.message, /disconnect|connecting|not running/, a.error.message);
    else {
      t.is(a.result!.toVersion, target === blk ? '0.2.0' : '0.3.0');
      t.is(a.result!.fromVersion, serving, 'it started from the build the last answer left serving');
      serving = a.result!.toVersion;
    }
    outcomes.push(a.error ? `refused: ${a.error.message}` : `completed (front-end connected: ${a.result!.frontEnd})`);
    const fe2 = await VhostUserFrontend.connect(h.socketPath, { memoryBytes: 16 << 20, queues: [64], features: blkFeatures });
    const disk2 = new BlkDevice(fe2.queues[0]);
    await verifyAll(disk2, last);
    await ioLoop([disk2], last, () => true, 1);
    await fe2.close();
  }
  t.log(outcomes.join('\n'));
  // Asked with no race: the build serving is the one the answers said.
  const fe = await VhostUserFrontend.connect(h.socketPath, { memoryBytes: 16 << 20, queues: [64], features: blkFeatures });
  t.is((await upgrade(h, serving === '0.2.0' ? blk030 : blk)).fromVersion, serving);
  await verifyAll(new BlkDevice(fe.queues[0]), last);
  await fe.close();
  t.notRegex(h.log(), /ERROR/);
});

test.serial('a new build that crashes after the rings stopped (a trap loading the old instance\'s state): refused, saying why; the old instance serves on from where its rings stopped', async (t) => {
  const h = await host(['--plugin', blk, '--storage', 'memory:4M']);
  const { fe, disk, last } = await blkFrontEnd(h, 2);
  const r = await upgradeUnderIo(disk, last, ['--socket', h.socketPath, '--plugin', blkTrapLoad]);
  t.is(r.code, 1, `${r.stdout}${r.stderr}`);
  t.regex(r.stderr, /refused: .*(trap|unreachable)/i, 'the command says the new build crashed');
  t.notRegex(h.log(), /plugin upgraded/);
  t.regex(r.stderr, /the new plugin failed while taking over/, 'the crash came after the rings stopped');
  // The host's log says whose failure it was: the new build's; the device itself was not halted.
  t.regex(h.log(), /ERROR device \S+: the new plugin build failed during the upgrade: .*(trap|unreachable).*; nothing was halted, the old instance serves on/i);
  t.regex(h.log(), /WARN .*upgrade abandoned: the new plugin failed while taking over: .*; ring\(s\) 0 resumed on the old build where they stopped/);
  t.notRegex(h.log(), /every ring halted/);
  t.is((await withTimeout(fe.conn.getStatus(), 10_000, 'GET_STATUS')) & 0x40, 0, 'DEVICE_NEEDS_RESET is not set');
  await withTimeout(ioLoop([disk], last, () => true, 2), 20_000, 'I/O after the refused upgrade');
  await verifyAll(disk, last);
  // Still the old build: the next upgrade starts from 0.2.0.
  t.like(await upgrade(h, blk030), { fromVersion: '0.2.0', toVersion: '0.3.0', frontEnd: true });
  await verifyAll(disk, last);
  await fe.close();
});

test.serial('a new build that crashes while given the device\'s settings (after its warm-up, before the old instance stops): refused, and the host logs it as the new build\'s failure with the old build serving on, not as the device halted', async (t) => {
  const h = await host(['--plugin', blk, '--storage', 'memory:4M']);
  const { fe, disk, last } = await blkFrontEnd(h, 2);
  const r = await upgradeUnderIo(disk, last, ['--socket', h.socketPath, '--plugin', blkTrapSettings]);
  t.is(r.code, 1, `${r.stdout}${r.stderr}`);
  t.regex(r.stderr, /the new plugin refused the device's settings: .*(trap|unreachable)/i, 'the command says where the new build crashed');
  t.regex(h.log(), /ERROR device \S+: the new plugin build failed during the upgrade: .*(trap|unreachable).*; nothing was halted, the old instance serves on/i);
  t.regex(h.log(), /WARN .*upgrade refused: the new plugin refused the device's settings: .*; no ring had stopped, the old build serves on/);
  t.notRegex(h.log(), /every ring halted/, 'the device is not said to be halted');
  t.is((await withTimeout(fe.conn.getStatus(), 10_000, 'GET_STATUS')) & 0x40, 0, 'DEVICE_NEEDS_RESET is not set');
  await withTimeout(ioLoop([disk], last, () => true, 2), 20_000, 'I/O after the refused upgrade');
  await verifyAll(disk, last);
  t.like(await upgrade(h, blk030), { fromVersion: '0.2.0', toVersion: '0.3.0', frontEnd: true }, 'still the old build');
  await verifyAll(disk, last);
  await fe.close();
});

test.serial('an upgrade during a device-state transfer (a migration) is refused until CHECK_DEVICE_STATE collects it; the old build serves on; after it the upgrade goes through', async (t) => {
  const h = await host(['--plugin', blk, '--storage', 'memory:4M']);
  const { fe, disk, last } = await blkFrontEnd(h, 2);
  const refusedDuring = async (when: string) => {
    const r = await upgradeCmd(['--socket', h.socketPath, '--plugin', blk030]);
    t.is(r.code, 1, `${when}: ${r.stdout}${r.stderr}`);
    t.regex(r.stderr, /a device state transfer \(migration\) is in progress or not yet collected \(CHECK_DEVICE_STATE\): retry after it/, when);
  };
  // As a migration's source: the ring stopped, SAVE into a pipe nobody has read yet.
  const base = await fe.stopQueue(0);
  const [r, w] = native.pipe2();
  let src: number;
  try {
    const own = await fe.conn.setDeviceStateFd(DeviceStateDirection.SAVE, DeviceStatePhase.STOPPED, w);
    src = own ?? r;
    if (own !== null) native.close(r);
  } finally {
    native.close(w);
  }
  await refusedDuring('while the state is being saved');
  const state: Buffer[] = [];
  try {
    await readToEnd(src, (b) => void state.push(Buffer.from(b)));
  } finally {
    native.close(src);
  }
  t.true(Buffer.concat(state).length > 0, 'the state was saved');
  await refusedDuring('saved, CHECK_DEVICE_STATE not yet asked');
  await fe.conn.checkDeviceState();
  // The migration is called off: the source runs its ring again, on the build it had.
  await fe.startQueue(0, base);
  await verifyAll(disk, last);
  t.notRegex(h.log(), /plugin upgraded/);
  const up = await upgrade(h, blk030);
  t.like(up, { name: 'blk', fromVersion: '0.2.0', toVersion: '0.3.0', frontEnd: true, rings: [0] });
  await ioLoop([disk], last, () => true, 2);
  await verifyAll(disk, last);
  await fe.close();
});

test.serial('a packed ring moves to the new build: the new instance is warmed up on a packed scratch ring, and requests before, during and after are answered', async (t) => {
  // Debug: the warm-up says what it did.
  const h = await host(['--plugin', rng, '--entropy', '--log-level', 'debug']);
  const conn = await VhostUserConnection.connect(h.socketPath);
  const ram = GuestRam.create({ bytes: 1 << 20 });
  const kick = native.eventfd(0);
  const call = native.eventfd(0);
  t.teardown(() => {
    conn.close();
    ram.close();
    native.close(kick);
    native.close(call);
  });
  t.true(((await conn.getFeatures()) & bit(VirtioFeature.RING_PACKED)) !== 0n, 'the host offers VIRTIO_F_RING_PACKED');
  await conn.setProtocolFeatures(await conn.getProtocolFeatures());
  await conn.setOwner();
  await conn.setFeatures(bit(VirtioFeature.VERSION_1) | bit(VirtioFeature.RING_PACKED) | bit(VirtioFeature.PROTOCOL_FEATURES) | bit(VirtioFeature.RING_EVENT_IDX));
  await conn.setMemTable(ram.memTable());
  const size = 16;
  const layout = PackedDriverRing.layoutFor(size);
  const gpa = ram.alloc(layout.bytes, 4096);
  const ring = new PackedDriverRing({ size, memory: ram.view(gpa, layout.bytes), gpa, eventIdx: true });
  await conn.setVringNum(0, size);
  await conn.setVringAddr({ index: 0, flags: 0, descUserAddr: BigInt(ram.uva(ring.descGpa)), availUserAddr: BigInt(ram.uva(ring.driverEventGpa)), usedUserAddr: BigInt(ram.uva(ring.deviceEventGpa)), logGuestAddr: 0n });
  await conn.setVringCall(0, call);
  await conn.setVringKick(0, kick);
  await conn.setVringEnable(0, true);
  const buf = ram.alloc(64 * size);
  // rng requests one after another (each 64 bytes of entropy), across the ring's wrap many times.
  let answered = 0;
  const one = async (k: number) => {
    if (ring.add([], [{ gpa: buf + (k % size) * 64, len: 64 }]) === null) throw new Error('packed ring full');
    if (ring.kickNeeded()) native.eventfdWrite(kick);
    for (let i = 0; i < 2000; i++) {
      const used = ring.getUsed();
      if (used.length > 0) {
        if (used.length !== 1 || used[0].len !== 64) throw new Error(`request ${k}: ${JSON.stringify(used)}`);
        answered++;
        return;
      }
      await sleep(1);
    }
    throw new Error(`request ${k} was not answered; host log:\n${h.log()}`);
  };
  for (let k = 0; k < 40; k++) await one(k);
  let done = false;
  const io = (async () => {
    for (let k = 40; !done; k++) await one(k);
  })();
  const r = await upgrade(h, rng);
  done = true;
  await io;
  t.like(r, { name: 'rng', frontEnd: true, rings: [0] });
  for (let k = 0; k < 40; k++) await one(1000 + k);
  t.true(answered >= 80);
  t.regex(h.log(), /plugin upgraded: rng/);
  t.regex(h.log(), /warm-up: ring\(s\) 0, 4 of 4 request\(s\) answered/, 'the scratch packed ring served every warm-up request');
});
