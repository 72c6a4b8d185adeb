// A prealloc=on memory disk added to a running daemon (`ctl add --storage memory:SIZE,prealloc=on`)
// has its pages made off the main thread: while they are made, the device is listed as
// "preparing" and has no socket, and every other device keeps being served (management calls
// and an rng request are answered). Then it serves with all its pages there. `ctl stats` reports
// it meanwhile (state preparing, the pages made so far), and methods that cannot act on it yet
// (set-limits, plugin-upgrade) say it is preparing, not that there is no such device; a second
// `ctl add` of its id says the id is taken by a device preparing its storage. A `ctl del` while
// its pages are made stops the add cleanly: the add fails saying why, the daemon lives on, and
// the disk's memfd and mapping are gone from the daemon (its memory given back).
//
// The disk is 2 GiB: making its pages takes seconds here (~1.3 s per GiB), many times a control
// round trip, so "preparing" is seen; what is asserted are orderings (answered while still
// preparing), never durations.
import test from 'ava';
import { existsSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { REPO } from './helpers/host-process.ts';
import { randomFrom } from './helpers/device-checks.ts';
import { ctl, startDaemonWith, type CtlResult, type DaemonProcess } from './helpers/daemon-process.ts';
import { request } from '../host/cli/ctl.ts';
import { BlkDevice } from '../host/frontend/blk.ts';
import { VhostUserFrontend, VIRTIO_F_VERSION_1, FRONTEND_PROTOCOL_FEATURES } from '../host/frontend/driver.ts';
import type { MethodResults } from '../host/daemon/methods.ts';

const rng = join(REPO, 'dist', 'plugins', 'rng.wasm');
const blk = join(REPO, 'dist', 'plugins', 'blk.wasm');
const GIB = 2 ** 30;
const SIZE = 2 * GIB;

let dir: string;
let daemon: DaemonProcess;
const sock = (name: string) => join(dir, `${name}.sock`);
const control = () => sock('control');

test.before(async () => {
  const avail = Number(/^MemAvailable:\s+(\d+) kB$/m.exec(readFileSync('/proc/meminfo', 'utf8'))![1]) * 1024;
  if (avail < 2 * SIZE) throw new Error(`this test commits a ${SIZE / GIB} GiB disk and needs twice that available; MemAvailable is ${(avail / GIB).toFixed(1)} GiB`);
  dir = mkdtempSync(join(tmpdir(), 'daemon-prealloc-'));
  daemon = await startDaemonWith(dir, {
    control: 'control.sock',
    devices: [{ id: 'r', socket: 'r.sock', plugin: rng, grants: { entropy: true }, start: 'eager', limits: { callDeadlineMs: 10_000 } }],
  });
});

test.after.always(async () => {
  if (daemon && daemon.child.exitCode === null) daemon.child.kill('SIGKILL');
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** One management call over the control socket (what ctl sends), its result. */
async function call<M extends keyof MethodResults>(method: M, params: Record<string, unknown> = {}): Promise<MethodResults[M]> {
  const r = await request(control(), method, params);
  if ('error' in r) throw new Error(`${method}: ${r.error.message}`);
  return r.result as MethodResults[M];
}

async function stateOf(id: string): Promise<string | undefined> {
  return (await call('device-list')).devices.find((d) => d.id === id)?.state;
}

/** The daemon's memory disk memfds: [fd, bytes of pages it holds]. */
function diskMemfds(): Array<[string, number]> {
  const fdDir = `/proc/${daemon.child.pid}/fd`;
  const out: Array<[string, number]> = [];
  for (const fd of readdirSync(fdDir)) {
    try {
      if (readlinkSync(join(fdDir, fd)).startsWith('/memfd:vhost-wasm-memory-disk')) out.push([fd, statSync(join(fdDir, fd)).blocks * 512]);
    } catch {
      // closed while we looked
    }
  }
  return out;
}

/** Mappings of a memory disk in the daemon (/proc/PID/maps lines). */
function diskMappings(): string[] {
  return readFileSync(`/proc/${daemon.child.pid}/maps`, 'utf8')
    .split('\n')
    .filter((l) => l.includes('memfd:vhost-wasm-memory-disk'));
}

/** `ctl add` of a blk device (its worker started at once, or on connect: both wait for the pages) with a 2 GiB prealloc=on disk, not awaited; resolves once the daemon lists it as preparing (or the add ended first). */
async function addBig(id: string, start: 'eager' | 'on-connect'): Promise<{ added: Promise<CtlResult>; seenPreparing: boolean }> {
  const added = ctl(['--control', control(), 'add', '--id', id, '--socket', sock(id), '--plugin', blk, '--storage', `memory:${SIZE},prealloc=on`, '--start', start]);
  let ended = false;
  void added.then(() => (ended = true));
  for (;;) {
    const state = await stateOf(id);
    if (state === 'preparing') return { added, seenPreparing: true };
    if (ended) return { added, seenPreparing: false };
  }
}

test.serial('while a device\'s prealloc=on disk gets its pages, other devices are served and it has no socket; then it serves with every page made', async (t) => {
  const { added, seenPreparing } = await addBig('big', 'eager');
  t.true(seenPreparing, 'the daemon answered device-list while the big disk\'s pages were being made, listing it as preparing');
  // Another tenant's management call and an rng request are answered meanwhile...
  t.like((await call('device-stats', { id: 'r' })).devices[0], { id: 'r', state: 'idle' });
  await randomFrom(sock('r'));
  const listing = await ctl(['--control', control(), 'list']);
  t.is(listing.code, 0, listing.stderr);
  t.regex(listing.stdout, /^r\s.*\bidle\b/m);
  t.regex(listing.stdout, /^big\s.*\bpreparing\b.*\(making its disk's pages\)/m);
  // ... while the big device is still preparing, with no socket a front-end could reach.
  t.is(await stateOf('big'), 'preparing', 'still preparing after the other device was served');
  t.false(existsSync(sock('big')), 'no socket before the pages exist');

  const r = await added;
  t.is(r.code, 0, r.stderr);
  t.regex(r.stdout, /added big/);
  t.is(await stateOf('big'), 'idle');
  const disks = diskMemfds();
  t.is(disks.length, 1);
  t.is(disks[0][1], SIZE, 'every page of the disk exists before anything was written');

  const fe = await VhostUserFrontend.connect(sock('big'), {
    memoryBytes: 4 << 20,
    queues: [64],
    features: 1n << BigInt(VIRTIO_F_VERSION_1),
    protocolFeatures: FRONTEND_PROTOCOL_FEATURES,
  });
  try {
    const dev = new BlkDevice(fe.queues[0]);
    const last = SIZE / 512 - 8;
    await dev.write(last, Buffer.alloc(4096, 'z'));
    t.deepEqual(Buffer.from(await dev.read(last, 4096)), Buffer.alloc(4096, 'z'), 'the last 4 KiB of the disk read back');
  } finally {
    await fe.close();
  }
  const del = await ctl(['--control', control(), 'del', 'big']);
  t.is(del.code, 0, del.stderr);
  t.deepEqual(diskMemfds(), []);
});

test.serial('a preparing device is reported by ctl stats with its state and pages made; ctl methods that cannot act on it yet say it is preparing, not that there is no such device; adding its id again says so too', async (t) => {
  const { added, seenPreparing } = await addBig('prep', 'eager');
  t.true(seenPreparing, 'listed as preparing');
  // All at once while its pages are made (each answer shows it was still preparing when asked).
  const [one, all, limits, upgrade, text, limitsText, again] = await Promise.all([
    request(control(), 'device-stats', { id: 'prep' }),
    request(control(), 'device-stats', {}),
    request(control(), 'set-limits', { id: 'prep', callDeadlineMs: 500 }),
    request(control(), 'plugin-upgrade', { id: 'prep', plugin: blk }),
    ctl(['--control', control(), 'stats', 'prep']),
    ctl(['--control', control(), 'set-limits', 'prep', '--iops', '100']),
    // The same add again (an operator retrying it): the id is taken by the preparing device.
    ctl(['--control', control(), 'add', '--id', 'prep', '--socket', sock('prep'), '--plugin', blk, '--storage', `memory:${SIZE},prealloc=on`]),
  ]);
  if (!('result' in one)) throw new Error(`device-stats prep was refused: ${JSON.stringify(one)}`);
  const [stats] = (one.result as MethodResults['device-stats']).devices;
  t.like(stats, { id: 'prep', state: 'preparing', listen: sock('prep'), frontEnd: false, workerStarts: 0, lastFailure: null });
  t.is(stats.preparing?.diskBytes, SIZE);
  t.true(stats.preparing!.madeBytes >= 0 && stats.preparing!.madeBytes <= SIZE, `pages made so far: ${stats.preparing!.madeBytes}`);
  if (!('result' in all)) throw new Error(`device-stats was refused: ${JSON.stringify(all)}`);
  t.deepEqual(
    (all.result as MethodResults['device-stats']).devices.map((d) => [d.id, d.state]),
    [['r', 'idle'], ['prep', 'preparing']],
    'device-stats of every device lists the preparing one too, in device-add order',
  );
  for (const [what, r] of [['set-limits', limits], ['plugin-upgrade', upgrade]] as const) {
    if (!('error' in r)) throw new Error(`${what} of a preparing device was done: ${JSON.stringify(r)}`);
    t.regex(r.error.message, /^device prep is preparing its storage \(its memory disk's pages are being made: \d+ MiB of 2048 MiB\): it cannot be acted on until it is ready; retry once device-list shows it/, what);
    t.notRegex(r.error.message, /no device/);
    t.is(r.error.data?.code, 'ERR_DEVICE_PREPARING');
  }
  // What an operator reads.
  t.is(text.code, 0, text.stderr);
  t.regex(text.stdout, /^prep: preparing, making its memory disk's pages \(\d+\.\d MiB of 2048\.0 MiB made, for \d+ s\); no socket at \S+prep\.sock until they exist$/m);
  t.regex(text.stdout, /^ {2}limits: memory /m);
  t.is(limitsText.code, 1);
  t.regex(limitsText.stderr, /set-limits refused: device prep is preparing its storage .*retry once device-list shows it.* \[ERR_DEVICE_PREPARING\]$/m);
  t.is(again.code, 1);
  t.regex(again.stderr, /device prep already exists and is preparing its storage \(its memory disk's pages are being made: \d+ MiB of 2048 MiB\): choose another id, or device-del it to stop it \[ERR_DAEMON_REQUEST\]$/m);
  t.notRegex(again.stderr, /being added or removed by another request/);

  const r = await added;
  t.is(r.code, 0, r.stderr);
  // Ready now: the same requests act on it.
  const after = await ctl(['--control', control(), '--json', 'stats', 'prep']);
  t.is(after.code, 0, after.stderr);
  t.like(JSON.parse(after.stdout).devices[0], { id: 'prep', state: 'idle', preparing: null });
  t.is((await ctl(['--control', control(), 'set-limits', 'prep', '--iops', '100'])).code, 0);
  t.is((await ctl(['--control', control(), 'del', 'prep'])).code, 0);
  t.deepEqual(diskMemfds(), []);
});

test.serial('ctl del while the pages are being made: the add fails saying so, the daemon lives on, the disk\'s memory is given back', async (t) => {
  const { added, seenPreparing } = await addBig('gone', 'on-connect');
  t.true(seenPreparing, 'listed as preparing');
  const del = await ctl(['--control', control(), 'del', 'gone']);
  t.is(del.code, 0, del.stderr);
  const r = await added;
  t.is(r.code, 1, `the add is refused: ${r.stdout}`);
  t.regex(r.stderr, /removed while its memory disk's pages were being made|page making stopped/);
  // Nothing of it is left: no listing, no socket, no memfd and no mapping of its disk in the daemon.
  t.is(await stateOf('gone'), undefined);
  t.false(existsSync(sock('gone')));
  t.deepEqual(diskMemfds(), [], 'the disk\'s memfd is closed');
  t.deepEqual(diskMappings(), [], 'the disk is mapped nowhere in the daemon');
  t.is(daemon.child.exitCode, null);
  await randomFrom(sock('r'));
  // The same id can be added again (nothing of the first attempt holds it).
  const again = await ctl(['--control', control(), 'add', '--id', 'gone', '--socket', sock('gone'), '--plugin', blk, '--storage', 'memory:1M,prealloc=on']);
  t.is(again.code, 0, again.stderr);
});

test.serial('ctl add waits for the pages however long they take; with --timeout shorter than that it says the daemon may still be adding, and it does', async (t) => {
  // No limit by default: under a loaded machine a 2 GiB disk's pages took more than the 30 s
  // other ctl commands wait, and ctl reported a failure for an add that then succeeded.
  const late = await ctl(['--control', control(), '--timeout', '0.1', 'add', '--id', 'late', '--socket', sock('late'), '--plugin', blk, '--storage', `memory:${SIZE},prealloc=on`, '--start', 'eager']);
  t.is(late.code, 3, late.stderr);
  t.regex(late.stderr, /^vhost-wasm ctl: no answer from \S+control\.sock within 0\.1 s; the daemon may still be doing it: see `vhost-wasm ctl list`$/m);
  // The daemon went on: the device becomes idle with every page made.
  for (let state = await stateOf('late'); state !== 'idle'; state = await stateOf('late')) {
    t.true(state === 'preparing' || state === undefined, `late is ${state}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  t.is(diskMemfds().filter(([, bytes]) => bytes === SIZE).length, 1, 'its disk, every page made');
  t.is((await ctl(['--control', control(), 'del', 'late'])).code, 0);
  const bad = await ctl(['--control', control(), '--timeout', 'soon', 'list']);
  t.is(bad.code, 2);
  t.regex(bad.stderr, /--timeout: "soon" is not a number of seconds/);
  for (const [v, why] of [['0.0001', /under a millisecond \(0 means no limit\)/], ['9999999', /is more than 2147483 s/]] as const) {
    const r = await ctl(['--control', control(), '--timeout', v, 'list']);
    t.is(r.code, 2, v);
    t.regex(r.stderr, why);
  }
});
