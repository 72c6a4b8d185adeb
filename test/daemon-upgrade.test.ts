// Live plugin upgrade (docs/upgrade.md) against the built binary: `vhost-wasm serve --config`
// with blk and rng devices, real front-ends (host/frontend) doing I/O over the device sockets,
// and `vhost-wasm ctl upgrade` / raw plugin-upgrade requests on the control socket.
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VhostUserFrontend, VIRTIO_F_VERSION_1 } from '../host/frontend/driver.ts';
import { BlkDevice, VIRTIO_BLK_F_FLUSH } from '../host/frontend/blk.ts';
import { REPO } from './helpers/host-process.ts';
import { ctl, rawRpc, type DaemonProcess, deviceStats, startDaemonWith } from './helpers/daemon-process.ts';
import { buildPlugin } from '../plugins/build-plugins.mjs';
import type { MethodResults } from '../host/daemon/methods.ts';
import { ioLoop, pattern, verifyAll } from './helpers/blk-rounds.ts';
import { FuseClient, O, fhOfOpen, nodeOf } from './helpers/fuse.ts';

const rng = join(REPO, 'dist', 'plugins', 'rng.wasm');
const blk = join(REPO, 'dist', 'plugins', 'blk.wasm');
const fsPlugin = join(REPO, 'dist', 'plugins', 'fs.wasm');
/** The fs device's share: SHARE_DIRS directories of SHARE_FILES files each (10,000 files). */
const SHARE_DIRS = 100;
const SHARE_FILES = 100;
const fileText = (d: number, f: number) => `file ${f} of directory ${d}\n`;
const fixtures = join(REPO, 'dist', 'test-plugins');
const blk030 = join(fixtures, 'upgrade-blk-0.3.0.wasm');
const blkRefuse = join(fixtures, 'upgrade-blk-refuse.wasm');
const blkTrap = join(fixtures, 'upgrade-blk-trap.wasm');
const blkFeatures = (1n << BigInt(VIRTIO_F_VERSION_1)) | (1n << BigInt(VIRTIO_BLK_F_FLUSH));

let dir: string;
let daemon: DaemonProcess;
const sock = (name: string) => join(dir, `${name}.sock`);
const control = () => join(dir, 'control.sock');

test.before(async () => {
  execFileSync(process.execPath, ['build.mjs', '--only', 'plugins'], { cwd: REPO, stdio: 'ignore' });
  const src = join(REPO, 'test', 'fixtures', 'plugins', 'upgrade-blk.c');
  await buildPlugin({ root: REPO, sources: [src], outFile: blk030 });
  await buildPlugin({ root: REPO, sources: [src], outFile: blkRefuse, defines: ['UPGRADE_REFUSE_STATE'] });
  await buildPlugin({ root: REPO, sources: [src], outFile: blkTrap, defines: ['UPGRADE_TRAP_HANDLE'] });
  dir = mkdtempSync(join(tmpdir(), 'daemon-upgrade-'));
  for (let d = 0; d < SHARE_DIRS; d++) {
    mkdirSync(join(dir, 'share', `d${d}`), { recursive: true });
    for (let f = 0; f < SHARE_FILES; f++) writeFileSync(join(dir, 'share', `d${d}`, `f${f}`), fileText(d, f));
  }
  daemon = await startDaemonWith(dir, {
    control: control(),
    ...(process.env.UPGRADE_TEST_DEBUG ? { logLevel: 'debug' } : {}),
    devices: [
      { id: 'disk', socket: 'disk.sock', plugin: blk, grants: { storage: 'memory:4M' }, limits: { callDeadlineMs: 10_000 } },
      { id: 'r', socket: 'r.sock', plugin: rng, grants: { entropy: true }, limits: { callDeadlineMs: 10_000 } },
      { id: 'fs', socket: 'fs.sock', plugin: fsPlugin, grants: { sharedDir: join(dir, 'share') }, limits: { callDeadlineMs: 10_000 } },
    ],
  });
});

test.after.always(async () => {
  if (process.env.UPGRADE_TEST_LOG && daemon) writeFileSync(process.env.UPGRADE_TEST_LOG, daemon.log());
  if (daemon && daemon.child.exitCode === null) daemon.child.kill('SIGKILL');
  if (dir) rmSync(dir, { recursive: true, force: true });
});

async function upgrade(id: string, plugin: string): Promise<MethodResults['plugin-upgrade']> {
  const r = await ctl(['--control', control(), '--json', 'upgrade', id, '--plugin', plugin]);
  if (r.code !== 0) throw new Error(`ctl upgrade ${id} exited ${r.code}: ${r.stderr}`);
  return JSON.parse(r.stdout) as MethodResults['plugin-upgrade'];
}

test.serial('blk is upgraded to another version under I/O from a front-end: data verified before and after, no request fails', async (t) => {
  const fe = await VhostUserFrontend.connect(sock('disk'), { memoryBytes: 16 << 20, queues: [64], features: blkFeatures });
  const disk = new BlkDevice(fe.queues[0]);
  const last = new Map<number, number>();
  await ioLoop(disk, last, () => true, 4);
  let upgraded = false;
  const io = ioLoop(disk, last, () => upgraded, 3);
  const r = await upgrade('disk', blk030);
  upgraded = true;
  const rounds = await io;
  t.true(rounds >= 3);
  t.like(r, { id: 'disk', name: 'blk', fromVersion: '0.2.0', toVersion: '0.3.0', frontEnd: true, rings: [0], plugin: blk030 });
  t.is(r.stateBytes, 16, 'the blk state (magic, version, acked features) moved');
  t.log(`blk: rings stopped ${r.stoppedMs.toFixed(2)} ms`);
  await ioLoop(disk, last, () => true, 3);
  await verifyAll(disk, last);
  t.deepEqual(await disk.read(0, 512), pattern(0, last.get(0)!).subarray(0, 512));
  await fe.close();

  const list = JSON.parse((await ctl(['--control', control(), '--json', 'list'])).stdout) as MethodResults['device-list'];
  t.is(list.devices.find((d) => d.id === 'disk')!.plugin, blk030, 'device-list shows the plugin it runs now');
  t.regex(daemon.log(), /plugin upgraded: blk 0\.2\.0 -> 0\.3\.0/);

  // A later front-end is served by the new build (it also restarts from it), and sees the data.
  const fe2 = await VhostUserFrontend.connect(sock('disk'), { memoryBytes: 16 << 20, queues: [64], features: blkFeatures });
  await verifyAll(new BlkDevice(fe2.queues[0]), last);
  await fe2.close();
});

test.serial('a refused upgrade (another plugin; a build that refuses the state; one that traps on a request; a missing file) leaves the old instance serving', async (t) => {
  const fe = await VhostUserFrontend.connect(sock('disk'), { memoryBytes: 16 << 20, queues: [64], features: blkFeatures });
  const disk = new BlkDevice(fe.queues[0]);
  const last = new Map<number, number>();
  const stats = () => deviceStats(control(), 'disk');
  const startsBefore = (await stats()).workerStarts;

  let done = false;
  const io = ioLoop(disk, last, () => done, 2);
  const wrong = await ctl(['--control', control(), 'upgrade', 'disk', '--plugin', rng]);
  t.is(wrong.code, 1);
  // rng asks for no storage: it does not even load with the disk's grant.
  t.regex(wrong.stderr, /the new plugin did not load: .*not a block device/);

  const refusing = await ctl(['--control', control(), 'upgrade', 'disk', '--plugin', blkRefuse]);
  t.is(refusing.code, 1);
  t.regex(refusing.stderr, /refused the old instance's state: .*blk 0\.3\.0 reads state format 2 only/);

  // Found before anything stops: the new instance serves read requests on a scratch ring first.
  const trapping = await ctl(['--control', control(), 'upgrade', 'disk', '--plugin', blkTrap]);
  t.is(trapping.code, 1);
  t.regex(trapping.stderr, /the new plugin failed its warm-up on a scratch ring \(the old instance serves on\): the device failed on a warm-up request: .*(trap|unreachable)/i);

  const missing = await ctl(['--control', control(), 'upgrade', 'disk', '--plugin', join(dir, 'nope.wasm')]);
  t.is(missing.code, 1);
  t.regex(missing.stderr, /the new plugin did not load/);
  done = true;
  await io;
  await ioLoop(disk, last, () => true, 2);
  await verifyAll(disk, last);
  await fe.close();

  const s = await stats();
  t.is(s.workerStarts, startsBefore, 'no worker replaced the serving one');
  t.is(s.lastFailure, null);
  t.is(s.plugin, blk030, 'the device still runs the build it ran');
});

test.serial('a second upgrade while one runs is refused; the first completes', async (t) => {
  const fe = await VhostUserFrontend.connect(sock('r'), { memoryBytes: 4 << 20, queues: [64] });
  const ask = (id: number) => JSON.stringify({ jsonrpc: '2.0', id, method: 'plugin-upgrade', params: { id: 'r', plugin: rng } });
  // Two connections, both requests sent before the first plugin has loaded.
  const [a, b] = (await Promise.all([rawRpc(control(), [ask(1)], 1), rawRpc(control(), [ask(2)], 1)])).map((x) => x[0] as { result?: MethodResults['plugin-upgrade']; error?: { message: string } });
  const ok = [a, b].filter((x) => x.result !== undefined);
  const refused = [a, b].filter((x) => x.error !== undefined);
  t.is(ok.length, 1, JSON.stringify([a, b]));
  t.is(refused.length, 1);
  t.regex(refused[0].error!.message, /an upgrade is already running/);
  t.like(ok[0].result, { name: 'rng', frontEnd: true, rings: [0] });
  for (let i = 0; i < 5; i++) t.is((await fe.queues[0].submit([], 64)).len, 64);
  await fe.close();
});

test.serial('an upgrade racing a disconnect completes or is refused, never half-applied: the next front-end is served and sees the data', async (t) => {
  const version = (plugin: string) => (plugin === blk ? '0.2.0' : '0.3.0');
  // The build serving, by what each answer said: never half-applied means the daemon agrees.
  let serving = (await deviceStats(control(), 'disk')).plugin;
  for (const target of [blk, blk030]) {
    const fe = await VhostUserFrontend.connect(sock('disk'), { memoryBytes: 16 << 20, queues: [64], features: blkFeatures });
    const disk = new BlkDevice(fe.queues[0]);
    const last = new Map<number, number>();
    await ioLoop(disk, last, () => true, 2);
    const ask = JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'plugin-upgrade', params: { id: 'disk', plugin: target } });
    const [[answer]] = await Promise.all([rawRpc(control(), [ask], 1), fe.close()]);
    const a = answer as { result?: MethodResults['plugin-upgrade']; error?: { message: string } };
    t.log(a.error ? `refused: ${a.error.message}` : `completed (front-end connected: ${a.result!.frontEnd})`);
    if (a.error) t.regex(a.error.message, /disconnect|connecting|not running/, a.error.message);
    else {
      t.is(a.result!.toVersion, version(target));
      t.is(a.result!.fromVersion, version(serving), 'it started from the build the last answer left serving');
      serving = target;
    }
    t.is((await deviceStats(control(), 'disk')).plugin, serving, 'the daemon serves the build the answer says');
    const fe2 = await VhostUserFrontend.connect(sock('disk'), { memoryBytes: 16 << 20, queues: [64], features: blkFeatures });
    const disk2 = new BlkDevice(fe2.queues[0]);
    await verifyAll(disk2, last);
    await ioLoop(disk2, last, () => true, 2);
    await fe2.close();
  }
  const s = await deviceStats(control(), 'disk');
  t.is(s.lastFailure, null);
});

test.serial('stopped-ring time of rng and blk upgrades under load (logged for docs/BENCHMARKS.md)', async (t) => {
  const rfe = await VhostUserFrontend.connect(sock('r'), { memoryBytes: 4 << 20, queues: [64] });
  const dfe = await VhostUserFrontend.connect(sock('disk'), { memoryBytes: 16 << 20, queues: [64], features: blkFeatures });
  const disk = new BlkDevice(dfe.queues[0]);
  const last = new Map<number, number>();
  const figures: Record<string, number[]> = { rng: [], blk: [] };
  for (let i = 0; i < 5; i++) {
    let stop = false;
    const rngIo = (async () => {
      while (!stop) if ((await rfe.queues[0].submit([], 64)).len !== 64) throw new Error('short rng answer');
    })();
    const blkIo = ioLoop(disk, last, () => stop, 1);
    const r1 = await upgrade('r', rng);
    const r2 = await upgrade('disk', i % 2 === 0 ? blk : blk030);
    stop = true;
    await Promise.all([rngIo, blkIo]);
    t.deepEqual(r1.rings, [0]);
    t.deepEqual(r2.rings, [0]);
    t.log(`rng ${JSON.stringify(r1.phases)}; blk ${JSON.stringify(r2.phases)}`);
    figures.rng.push(r1.stoppedMs);
    figures.blk.push(r2.stoppedMs);
  }
  await verifyAll(disk, last);
  await rfe.close();
  await dfe.close();
  const sorted = (xs: number[]) => [...xs].sort((a, b) => a - b);
  for (const [name, xs] of Object.entries(figures)) {
    const s = sorted(xs);
    t.log(`${name}: rings stopped ${s.map((x) => x.toFixed(2)).join(', ')} ms (median ${s[2].toFixed(2)})`);
  }
});

test.serial('stopped-ring time of an fs upgrade with 10,000 looked-up inodes and open files, under load (logged for docs/BENCHMARKS.md)', async (t) => {
  const fe = await VhostUserFrontend.connect(sock('fs'), { memoryBytes: 16 << 20, queues: [64, 64], features: 1n << BigInt(VIRTIO_F_VERSION_1) });
  const fuse = new FuseClient(fe);
  t.is((await fuse.init()).error, 0, 'INIT');
  // The guest looks every directory and file up (32 LOOKUPs in flight), as a walk of the share would.
  const node = new Map<string, bigint>();
  const lookUp = async (parent: bigint, name: string, key: string) => {
    const r = await fuse.lookup(parent, name);
    if (r.error !== 0) throw new Error(`LOOKUP ${key}: error ${r.error}`);
    node.set(key, nodeOf(r));
  };
  const inParallel = async (jobs: (() => Promise<void>)[], width = 32) => {
    let next = 0;
    await Promise.all(Array.from({ length: width }, async () => {
      while (next < jobs.length) await jobs[next++]();
    }));
  };
  await inParallel(Array.from({ length: SHARE_DIRS }, (_, d) => () => lookUp(1n, `d${d}`, `d${d}`)));
  const files: [number, number][] = [];
  for (let d = 0; d < SHARE_DIRS; d++) for (let f = 0; f < SHARE_FILES; f++) files.push([d, f]);
  await inParallel(files.map(([d, f]) => () => lookUp(node.get(`d${d}`)!, `f${f}`, `d${d}/f${f}`)));
  t.is(node.size, SHARE_DIRS + SHARE_DIRS * SHARE_FILES);
  t.is(new Set(node.values()).size, node.size, 'one node id per inode');
  // Open files the guest holds across every upgrade.
  const open = [[0, 0], [17, 42], [99, 99]].map(([d, f]) => ({ d, f, fh: 0n }));
  for (const o of open) {
    const r = await fuse.open(node.get(`d${o.d}/f${o.f}`)!, O.RDONLY);
    t.is(r.error, 0);
    o.fh = fhOfOpen(r);
  }
  const readsBack = async (o: (typeof open)[number]) => {
    const r = await fuse.read(o.fh, 0, 4096);
    if (r.error !== 0 || r.body.toString() !== fileText(o.d, o.f)) throw new Error(`READ of d${o.d}/f${o.f} through fh ${o.fh}: error ${r.error}, ${JSON.stringify(r.body.toString())}`);
  };

  const stopped: number[] = [];
  for (let i = 0; i < 5; i++) {
    let stop = false;
    let served = 0;
    // Under load: LOOKUPs of known names (the same node id back) and READs through the open files.
    const load = inParallel(
      Array.from({ length: 4 }, (_, w) => async () => {
        for (let k = w; !stop; k += 4) {
          const [d, f] = files[(k * 7919) % files.length];
          const r = await fuse.lookup(node.get(`d${d}`)!, `f${f}`);
          if (r.error !== 0 || nodeOf(r) !== node.get(`d${d}/f${f}`)) throw new Error(`LOOKUP d${d}/f${f}: error ${r.error}, node ${r.error === 0 ? nodeOf(r) : '-'}, was ${node.get(`d${d}/f${f}`)}`);
          await readsBack(open[k % open.length]);
          served += 2;
        }
      }),
      4,
    );
    const r = await upgrade('fs', fsPlugin);
    stop = true;
    await load;
    t.true(served > 0);
    t.like(r, { name: 'fs', frontEnd: true, rings: [0, 1] });
    t.true(r.stateBytes > 10_000 * 24, `the state carries the inode table (${r.stateBytes} bytes)`);
    t.log(`fs ${JSON.stringify(r.phases)}; ${r.stateBytes} state bytes`);
    stopped.push(r.stoppedMs);
  }
  // The open files still read, and every inode keeps its node id.
  for (const o of open) await readsBack(o);
  await inParallel(files.filter((_, k) => k % 10 === 0).map(([d, f]) => async () => {
    const r = await fuse.lookup(node.get(`d${d}`)!, `f${f}`);
    if (r.error !== 0 || nodeOf(r) !== node.get(`d${d}/f${f}`)) throw new Error(`after the upgrades, LOOKUP d${d}/f${f} gave error ${r.error}`);
  }));
  t.pass('open files read and node ids kept after 5 upgrades');
  await fe.close();
  const s = [...stopped].sort((a, b) => a - b);
  t.log(`fs (10,100 inodes known, 3 files open): rings stopped ${s.map((x) => x.toFixed(2)).join(', ')} ms (median ${s[2].toFixed(2)})`);
});
