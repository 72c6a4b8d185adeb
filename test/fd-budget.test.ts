// One fd budget per process, against the real host process (an rng device and three fs devices
// in one process, RLIMIT_NOFILE 1024 soft / 4096 hard set by prlimit; the fs devices hold an fd
// per inode, --inode-file-handles=never, so a guest's lookups can spend the budget):
//  - the soft limit is raised to the hard one and the share budget derived from it;
//  - a guest that looks up more files than it may hold gets ENFILE from its own device, with
//    one log line, while the rng device keeps serving and can still accept a new front-end;
//    it gets the budget less the reserves of the other two fs devices (fd-budget.ts: each
//    device with a share keeps floor(budget / (2 * 3)) no other device can take), so the
//    second fs device still looks up;
//  - RESET_DEVICE gives every share fd back (/proc/PID/fd at its baseline) although the
//    first fs device runs a plugin that never closes a handle on reset (the host does), and
//    a disconnect does the same for the second;
//  - a worker terminated by the call deadline while holding share handles gives them back;
//  - when accept() itself fails (the process out of fds: here its limit lowered to 3 behind
//    its back), the listener backs off with one log line instead of spinning, and serves the
//    waiting front-end once fds are available again.
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { VhostUserFrontend, VIRTIO_F_VERSION_1, type FrontendOptions } from '../host/frontend/driver.ts';
import { ProtocolFeature } from '../host/protocol/constants.ts';
import { deviceReserve, RESERVE_BASE } from '../host/resources/fd-budget.ts';
import { REPO } from './helpers/host-process.ts';
import { stableFdCount, startMultiHost, until, type MultiHost } from './helpers/multi-host.ts';
import { restartQueues } from './helpers/device-checks.ts';
import { FuseClient, ERRNO, nodeOf, type FuseReply } from './helpers/fuse.ts';
import { RngPump } from './helpers/rng-pump.ts';
import { buildFsHoarder } from './fixtures/plugins/build-fs-hoarder.ts';

const SOFT = 1024;
const HARD = 4096;
const fsOpts: FrontendOptions = { memoryBytes: 16 << 20, queues: [64, 64], features: 1n << BigInt(VIRTIO_F_VERSION_1) };
const rngOpts: FrontendOptions = { memoryBytes: 4 << 20, queues: [64] };

let dir: string;
let share: string;
let host: MultiHost;
let budget: number;
let files: number;
const sock = (l: string) => join(dir, `${l}.sock`);

test.before(async () => {
  execFileSync(process.execPath, ['build.mjs', '--only', 'plugins'], { cwd: REPO, stdio: 'ignore' });
  dir = mkdtempSync(join(tmpdir(), 'fd-budget-'));
  share = join(dir, 'share');
  mkdirSync(share);
  // The budget the host will derive (checked against its log line below), and more files than that.
  budget = HARD - RESERVE_BASE - deviceReserve(1) - 3 * deviceReserve(2);
  files = budget + 60;
  for (let i = 0; i < files; i++) writeFileSync(join(share, `f${i}`), '');
  const plugins = join(REPO, 'dist', 'plugins');
  const hoarder = await buildFsHoarder(REPO, join(REPO, 'dist', 'test-plugins'));
  const cacheDir = join(dir, 'cache');
  host = await startMultiHost(
    [
      { label: 'rng', socket: sock('rng'), plugin: join(plugins, 'rng.wasm'), options: { entropy: true, cacheDir }, callDeadlineMs: 10_000 },
      { label: 'fs', socket: sock('fs'), plugin: hoarder, options: { filesystem: { dir: share, readOnly: false, inodeFileHandles: 'never' }, cacheDir }, callDeadlineMs: 10_000 },
      { label: 'spin', socket: sock('spin'), plugin: hoarder, options: { filesystem: { dir: share, readOnly: true, inodeFileHandles: 'never' }, cacheDir }, callDeadlineMs: 3000 },
      { label: 'fs2', socket: sock('fs2'), plugin: join(plugins, 'fs.wasm'), options: { filesystem: { dir: share, readOnly: true, inodeFileHandles: 'never' }, cacheDir }, callDeadlineMs: 10_000 },
    ],
    { nofile: [SOFT, HARD] },
  );
});

test.after.always(async () => {
  if (host) await host.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** LOOKUP of f<from>..f<to-1>, 32 in flight at a time. */
async function lookupAll(fuse: FuseClient, from: number, to: number): Promise<FuseReply[]> {
  const out: FuseReply[] = [];
  for (let i = from; i < to; i += 32) {
    const batch = [];
    for (let j = i; j < Math.min(i + 32, to); j++) batch.push(fuse.lookup(1n, `f${j}`));
    out.push(...(await Promise.all(batch)));
  }
  return out;
}

test.serial('one fs device cannot take the fds of the process: ENFILE to its guest, the rng device keeps serving and accepting, reset and disconnect give every fd back', async (t) => {
  const line = await host.waitForLog(/fd budget: \d+ share handles/);
  t.log(line.replace(/^\S+ /, ''));
  // Node itself raises the soft limit to the hard one at start-up (so does the budget set-up,
  // for hosts embedded otherwise): the budget is derived from the hard limit either way.
  t.regex(line, new RegExp(`fd budget: ${budget} share handles for all devices \\(RLIMIT_NOFILE ${HARD}[;,]`));
  t.regex(readFileSync(`/proc/${host.pid}/limits`, 'utf8'), new RegExp(`Max open files +${HARD} +${HARD} `), 'soft limit raised to the hard one');

  let rngFe = await host.within(VhostUserFrontend.connect(sock('rng'), rngOpts), 'connect to rng');
  let pump = RngPump.start(t, rngFe);
  const fe = await host.within(VhostUserFrontend.connect(sock('fs'), fsOpts), 'connect to fs');
  t.true(fe.conn.hasProtocol(ProtocolFeature.RESET_DEVICE));
  const fuse = new FuseClient(fe);
  t.is((await fuse.init()).error, 0, 'INIT');
  t.is((await fuse.lookup(1n, 'f0')).error, 0);
  const other = await host.within(VhostUserFrontend.connect(sock('fs2'), fsOpts), 'connect to fs2');
  const fuse2 = new FuseClient(other);
  t.is((await fuse2.init()).error, 0, 'INIT of the second fs device');
  const baseline = await stableFdCount(host);

  // More lookups than the budget: distinct files, so each holds one host fd until FORGET.
  const replies = await lookupAll(fuse, 0, files);
  const ok = replies.filter((r) => r.error === 0).length;
  const enfile = replies.filter((r) => r.error === ERRNO.ENFILE).length;
  t.log(`${ok} lookups succeeded, ${enfile} answered ENFILE; host fds ${host.fdCount()} (limit ${HARD})`);
  t.is(ok + enfile, files, 'every lookup either worked or got ENFILE');
  // The budget less the root fds and root handles of the shares.
  // The budget less the other two fs devices' reserves (less the root each of them holds), less
  // this share's own root fd.
  const reserve = Math.floor(budget / 6);
  t.true(ok >= budget - 2 * reserve - 10 && ok <= budget - 2 * reserve + 5, `the share got (about) the budget of ${budget} less the two other reserves of ${reserve}, not more`);
  t.true(enfile >= 60, 'the lookups past the budget were refused');
  // Share handles stop at the budget: what the process holds besides them stays inside the reserve
  // (RLIMIT_NOFILE - budget), so fds are left for listeners, connections and memory regions.
  t.true(host.fdCount() - baseline - ok < HARD - budget - 100, `the process kept its reserve (${host.fdCount()} fds, ${ok} of them share handles)`);
  t.true(host.fdCount() < HARD - 100, 'fds are left under the limit');
  t.is(host.lines(/fd budget spent/).length, 1, 'one log line for the whole episode');
  t.regex(host.lines(/fd budget spent/)[0], /WARN .*fs fs: fd budget spent: .*the guest gets ENFILE/);
  // The second fs device's reserve is its own: it still looks up (and holds that node's fd until its disconnect).
  t.is((await fuse2.lookup(1n, 'f1')).error, 0, 'the second fs device still looks up');
  const fs2Held = 1;

  // The other device still serves, and still accepts a new front-end.
  await pump.more(5);
  await pump.stop();
  await rngFe.close();
  rngFe = await host.within(VhostUserFrontend.connect(sock('rng'), rngOpts), 'connect to rng');
  pump = RngPump.start(t, rngFe);
  await pump.more(5);
  t.is(host.lines(/accept failed/).length, 0, 'no listener ever failed to accept');

  // RESET_DEVICE: every handle the guest held is released by the host, although this plugin
  // keeps them all (its stale ids now answer EBADF).
  await fe.conn.resetDevice();
  await until(() => host.fdCount() <= baseline + fs2Held, `fd count back to ${baseline} (+${fs2Held} of fs2) after RESET_DEVICE (now ${host.fdCount()})`);
  await restartQueues(fe, fsOpts.queues!);
  const stale = await fuse.lookup(nodeOf(replies[0]), 'x');
  t.is(stale.error, ERRNO.EBADF, 'the handle the plugin kept across the reset is gone');

  // The budget is back: the second fs device takes handles, and its disconnect gives them back.
  const held = await lookupAll(fuse2, 0, 500);
  t.true(held.every((r) => r.error === 0), 'the second fs device looks up again');
  t.true(host.fdCount() >= baseline + 400, 'they hold host fds');
  await other.close();
  await until(() => host.fdCount() <= baseline, `fd count back to ${baseline} after the disconnect (now ${host.fdCount()})`);
  await fe.close();
  await pump.more(5);
  await pump.stop();
  await rngFe.close();
});

test.serial('accept failing with EMFILE backs off with one log line and serves the waiting front-end once fds are back', async (t) => {
  // Whatever the last test's disconnects started (resets, releases) is over before fds run out.
  await stableFdCount(host);
  const rngFe = await host.within(VhostUserFrontend.connect(sock('rng'), rngOpts), 'connect to rng');
  const pump = RngPump.start(t, rngFe);
  await pump.more(3);

  // Behind the host's back, no new fd can be created in it at all.
  host.setFdLimit(3, HARD);
  const pending = VhostUserFrontend.connect(sock('fs'), fsOpts);
  pending.catch(() => {});
  const failed = await host.waitForLog(/accept failed/);
  t.regex(failed, /WARN .*listener fs: accept failed \(the process is out of a resource\): .*EMFILE/);
  await sleep(2500); // several backoff periods
  t.is(host.lines(/accept failed/).length, 1, 'one line for the episode, not one per attempt');
  await pump.more(5); // the rng device serves meanwhile

  host.setFdLimit(HARD, HARD);
  const fe = await host.within(pending, 'the waiting front-end served once fds are back');
  const recovered = await host.waitForLog(/accepting again after \d+ failed accept attempt/);
  const attempts = Number(/after (\d+) failed/.exec(recovered)![1]);
  t.log(recovered.replace(/^\S+ /, ''));
  // 100 ms doubling to 1 s: a handful of attempts over ~3 s, where a spinning listener made tens of thousands.
  t.true(attempts >= 2 && attempts <= 20, `${attempts} accept attempts`);
  const fuse = new FuseClient(fe);
  t.is((await fuse.init()).error, 0, 'the waiting front-end is served');
  await fe.close();
  await pump.stop();
  await rngFe.close();
});

test.serial('a worker killed by the call deadline while holding share handles gives them all back', async (t) => {
  const rngFe = await host.within(VhostUserFrontend.connect(sock('rng'), rngOpts), 'connect to rng');
  const pump = RngPump.start(t, rngFe);
  const baseline = await stableFdCount(host);
  const fe = await host.within(VhostUserFrontend.connect(sock('spin'), fsOpts), 'connect to spin');
  const fuse = new FuseClient(fe);
  const spinBefore = host.lines(/past its 3000 ms deadline; worker terminated/).length;
  t.is((await fuse.init()).error, 0, 'INIT');
  const looked = await lookupAll(fuse, 0, 300);
  const ok = looked.filter((r) => r.error === 0).length;
  t.log(`${ok} of 300 lookups hold a host fd each`);
  t.true(host.fdCount() >= baseline + ok - 20 && ok > 0);
  fuse.lookup(1n, 'spin').catch(() => {}); // never answered: the worker is killed
  await host.waitForLog(/device spin: .*past its 3000 ms deadline; worker terminated/, spinBefore, 30_000);
  await until(() => host.fdCount() <= baseline + 20, `the killed worker's share fds closed (baseline ${baseline}, now ${host.fdCount()})`);
  await pump.more(5);
  await fe.close().catch(() => {});
  // A fresh worker takes handles from the budget again.
  const fe2 = await host.within(VhostUserFrontend.connect(sock('spin'), fsOpts), 'connect to spin');
  const fuse2 = new FuseClient(fe2);
  t.is((await fuse2.init()).error, 0);
  const again = await lookupAll(fuse2, 0, 300);
  t.true(again.every((r) => r.error === 0), 'the budget was given back: a fresh instance looks up again');
  await fe2.close();
  await pump.stop();
  await rngFe.close();
});
