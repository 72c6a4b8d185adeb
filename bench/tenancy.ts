// The multi-tenant daemon's targets (issue 13, docs/BENCHMARKS.md), measured on the built binary
// (`node build.mjs` first):
//
//   npx tsx bench/tenancy.ts cpu [--hogs 10] [--seconds 10] [--cpu-share 0.5]
//       p99 latency of a well-behaved blk device (dist/plugins/blk.wasm on a memory disk, 4K
//       randread at queue depth 1, the C front-end in event mode) alone, then while HOGS other
//       devices of the same daemon burn their whole call deadline on every call
//       (test/devices/hog-blk-device.mjs, each driven by its own front-end). Same daemon, same
//       script; the ratio is the target (<= 2). --cpu-share 64 turns the governor off in effect.
//   npx tsx bench/tenancy.ts start [--devices 100] [--adds 10] [--add-gap-ms 500] [--spare-workers N]
//                                  [--start both|on-connect|eager] [--mix rng|mixed]
//       for each start mode (the config's "start"; both: on-connect, then eager): time from
//       spawning `serve --config` with N rng devices (plugin already in the transpile cache) to
//       its "serving N of N" line; its resident memory 2 s later, per device over a daemon with
//       none; device-add to socket ready over the management socket, one at a time,
//       --add-gap-ms (default 500) apart (the daemon keeps two worker threads booted; back-to-back
//       adds outrun their replacement); and a device's first front-end connection to GET_FEATURES
//       answered, as many as --adds, as far apart. --mix mixed: rng, blk and fs devices in turn.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { VhostUserConnection } from '../host/frontend/connection.ts';
import { loadavg, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { createConnection } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';

const REPO = resolve(import.meta.dirname, '..');
const HOST = join(REPO, 'dist', 'vhost-wasm.mjs');
const LOADGEN = join(REPO, 'dist', 'vhost-blk-load');
const BLK = join(REPO, 'dist', 'plugins', 'blk.wasm');
const FS = join(REPO, 'dist', 'plugins', 'fs.wasm');
const RNG = join(REPO, 'dist', 'plugins', 'rng.wasm');
const HOG = join(REPO, 'test', 'devices', 'hog-blk-device.mjs');

const { values: argv, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    hogs: { type: 'string', default: '10' },
    seconds: { type: 'string', default: '10' },
    'cpu-share': { type: 'string' },
    devices: { type: 'string', default: '100' },
    adds: { type: 'string', default: '10' },
    'add-gap-ms': { type: 'string', default: '500' },
    'spare-workers': { type: 'string' },
    start: { type: 'string', default: 'both' },
    mix: { type: 'string', default: 'rng' },
  },
});

for (const f of [HOST, LOADGEN, BLK, RNG]) if (!existsSync(f)) throw new Error(`${f} is missing: run \`node build.mjs\` first`);

const dir = mkdtempSync(join(tmpdir(), 'tenancy-'));
const children: ChildProcess[] = [];
process.on('exit', () => {
  for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
});

interface Daemon {
  child: ChildProcess;
  log: () => string;
  startedAt: number;
}

async function startDaemon(config: object): Promise<{ daemon: Daemon; readyMs: number }> {
  writeFileSync(join(dir, 'daemon.json'), JSON.stringify(config));
  const startedAt = performance.now();
  const child = spawn(process.execPath, [HOST, 'serve', '--config', join(dir, 'daemon.json')], { stdio: ['ignore', 'ignore', 'pipe'] });
  children.push(child);
  let log = '';
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (log += d));
  for (;;) {
    if (/serving \d+ of \d+ device/.test(log)) break;
    if (child.exitCode !== null) throw new Error(`the daemon exited: ${log}`);
    await sleep(5);
  }
  return { daemon: { child, log: () => log, startedAt }, readyMs: performance.now() - startedAt };
}

async function stopDaemon(d: Daemon): Promise<void> {
  d.child.kill('SIGTERM');
  await new Promise((r) => d.child.once('close', r));
}

/** One JSON-RPC request on the management socket. */
function rpc(path: string, method: string, params: object): Promise<{ result?: any; error?: { message: string } }> {
  return new Promise((resolvePromise, reject) => {
    const s = createConnection(path);
    let buf = '';
    s.setEncoding('utf8');
    s.on('connect', () => s.write(JSON.stringify({ jsonrpc: '2.0', id: 1, method, params }) + '\n'));
    s.on('data', (d: string) => {
      buf += d;
      const nl = buf.indexOf('\n');
      if (nl >= 0) {
        s.end();
        resolvePromise(JSON.parse(buf.slice(0, nl)));
      }
    });
    s.on('error', reject);
  });
}

interface LoadResult {
  iops: number;
  lat_p50_us: number;
  lat_p99_us: number;
  lat_p999_us: number;
  lat_max_us: number;
  errors: number;
}

function loadgen(socket: string, args: string[]): { child: ChildProcess; result: Promise<LoadResult> } {
  const child = spawn(LOADGEN, ['--socket', socket, '--mode', 'event', '--depth', '1', '--bs', '4K', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  let out = '';
  let err = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
  const result = new Promise<LoadResult>((res, rej) =>
    child.once('close', (code) => {
      const line = out.trim().split('\n').pop() ?? '';
      if (!line.startsWith('{')) rej(new Error(`vhost-blk-load on ${socket} exited ${code}: ${err}`));
      else res(JSON.parse(line) as LoadResult);
    }),
  );
  return { child, result };
}

async function cpu(): Promise<void> {
  const hogs = Number(argv.hogs);
  const seconds = Number(argv.seconds);
  const share = argv['cpu-share'] === undefined ? {} : { cpuShare: Number(argv['cpu-share']) };
  const control = join(dir, 'control.sock');
  const { daemon } = await startDaemon({
    control,
    devices: [
      { id: 'good', socket: join(dir, 'good.sock'), plugin: BLK, grants: { storage: 'memory:64M' }, limits: { ...share } },
      ...Array.from({ length: hogs }, (_, i) => ({ id: `hog${i}`, socket: join(dir, `hog${i}.sock`), module: HOG, limits: { callDeadlineMs: 5000, ...share } })),
    ],
  });
  const measure = () => loadgen(join(dir, 'good.sock'), ['--rw', 'randread', '--seconds', String(seconds), '--warmup', '1']).result;
  console.error(`load average before: ${loadavg().map((x) => x.toFixed(1)).join(' ')}`);
  const alone = await measure();
  console.error(`alone: ${alone.iops} IOPS, p50 ${alone.lat_p50_us} us, p99 ${alone.lat_p99_us} us, p99.9 ${alone.lat_p999_us} us`);
  // The hogs' front-ends keep one request in flight each for longer than the measurement.
  const hogLoads = Array.from({ length: hogs }, (_, i) => loadgen(join(dir, `hog${i}.sock`), ['--size', '1M', '--seconds', String(seconds + 6), '--warmup', '0']));
  await sleep(3000); // the governor's window (1 s) and then some
  const withHogs = await measure();
  const stats = (await rpc(control, 'device-stats', {})).result.devices as { id: string; cpu: { demand: number; running: number; demoted: boolean; demotions: number } }[];
  for (const h of hogLoads) h.child.kill('SIGTERM');
  await Promise.allSettled(hogLoads.map((h) => h.result));
  await stopDaemon(daemon);
  for (const l of daemon.log().split('\n')) if (/terminated|error|lowest priority/.test(l)) console.error(`  daemon: ${l}`);
  console.error(`with ${hogs} hogs: ${withHogs.iops} IOPS, p50 ${withHogs.lat_p50_us} us, p99 ${withHogs.lat_p99_us} us, p99.9 ${withHogs.lat_p999_us} us`);
  for (const s of stats) console.error(`  ${s.id}: long calls and poll spin ${s.cpu.demand} CPU, threads ran ${s.cpu.running}, ${s.cpu.demoted ? 'demoted' : 'normal'} (${s.cpu.demotions} demotion(s))`);
  console.error(`load average after: ${loadavg().map((x) => x.toFixed(1)).join(' ')}`);
  console.log(JSON.stringify({ bench: 'tenancy-cpu', hogs, seconds, cpuShare: share.cpuShare ?? null, alone, withHogs, p99Ratio: withHogs.lat_p99_us / alone.lat_p99_us }));
}

/** The daemon's resident memory now (VmRSS), in bytes. */
function rssOf(child: ChildProcess): number {
  const m = readFileSync(`/proc/${child.pid}/status`, 'utf8').match(/^VmRSS:\s+(\d+) kB$/m);
  if (!m) throw new Error('no VmRSS');
  return Number(m[1]) * 1024;
}

/** Connect to GET_FEATURES answered on a device's socket (a front-end's first exchange), in ms. */
async function firstAnswerMs(path: string): Promise<number> {
  const t = performance.now();
  const c = VhostUserConnection.connect(path);
  try {
    await c.getFeatures();
  } finally {
    c.close();
  }
  return performance.now() - t;
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

interface StartRun {
  start: string;
  startSeconds: number;
  loadBefore: number;
  rssBytes: number;
  idleRssPerDeviceMiB: number;
  addMs: number[];
  addErrors: string[];
  firstConnectionMs: number[];
}

/**
 * Device `i` of the bench: rng, or with --mix mixed rng, blk (a 1 MiB memory disk) and fs (one
 * shared directory) in turn, as the target says ("100 mixed rng/blk/fs devices").
 */
function device(i: number | string): object {
  const base = { id: `d${i}`, socket: join(dir, `d${i}.sock`) };
  const k = argv.mix === 'mixed' ? (typeof i === 'number' ? i : Number(String(i).replace(/\D/g, ''))) % 3 : 0;
  if (k === 1) return { ...base, plugin: BLK, grants: { storage: 'memory:1M' } };
  if (k === 2) {
    const share = join(dir, 'share');
    mkdirSync(share, { recursive: true });
    return { ...base, plugin: FS, grants: { sharedDir: share, tag: `fs${i}` } };
  }
  return { ...base, plugin: RNG, grants: { entropy: true } };
}

/** One daemon with `n` devices started `mode`: its start, idle memory, device-adds and first connections. */
async function startRun(mode: string, n: number, adds: number, baseRss: number): Promise<StartRun> {
  const control = join(dir, 'control.sock');
  const dev = (i: number | string) => device(i);
  const spare = argv['spare-workers'] === undefined ? {} : { spareWorkers: Number(argv['spare-workers']) };
  const loadBefore = loadavg()[0];
  const { daemon, readyMs } = await startDaemon({ control, start: mode, ...spare, devices: Array.from({ length: n }, (_, i) => dev(i)) });
  console.error(`${mode}: start of ${n} devices: ${(readyMs / 1000).toFixed(2)} s (load average ${loadBefore.toFixed(1)})`);
  await sleep(2000); // the spare workers boot after "serving N of N"; the heap settles
  const rssBytes = rssOf(daemon.child);
  const perDevice = (rssBytes - baseRss) / n / 2 ** 20;
  console.error(`${mode}: resident memory ${(rssBytes / 2 ** 20).toFixed(0)} MiB, ${perDevice.toFixed(2)} MiB per idle device over a daemon with none`);
  const addMs: number[] = [];
  const addErrors: string[] = [];
  for (let i = 0; i < adds; i++) {
    await sleep(Number(argv['add-gap-ms']));
    const t = performance.now();
    const r = await rpc(control, 'device-add', { ...dev(`add${i}`) });
    if (r.error) {
      // Reported, not fatal: with many eager devices the fd reserves can outgrow RLIMIT_NOFILE (see BENCHMARKS.md).
      console.error(`${mode}: device-add add${i} refused: ${r.error.message}`);
      addErrors.push(r.error.message);
      continue;
    }
    // Ready: the socket accepts a connection.
    await new Promise<void>((res, rej) => {
      const s = createConnection(join(dir, `dadd${i}.sock`));
      s.on('connect', () => {
        s.destroy();
        res();
      });
      s.on('error', rej);
    });
    addMs.push(performance.now() - t);
  }
  // The first front-end of devices never connected (d0, d1, ...), one at a time, as far apart as the adds.
  const firstConnectionMs: number[] = [];
  for (let i = 0; i < adds; i++) {
    await sleep(Number(argv['add-gap-ms']));
    firstConnectionMs.push(await firstAnswerMs(join(dir, `d${i}.sock`)));
  }
  await stopDaemon(daemon);
  const r1 = (x: number) => Math.round(x * 10) / 10;
  console.error(
    `${mode}: device-add to socket ready median ${median(addMs).toFixed(1)} ms (max ${Math.max(...addMs).toFixed(1)}); ` +
      `first connection to GET_FEATURES answered median ${median(firstConnectionMs).toFixed(1)} ms (max ${Math.max(...firstConnectionMs).toFixed(1)})`,
  );
  return { start: mode, startSeconds: readyMs / 1000, loadBefore, rssBytes, idleRssPerDeviceMiB: perDevice, addErrors, addMs: addMs.map(r1).sort((a, b) => a - b), firstConnectionMs: firstConnectionMs.map(r1).sort((a, b) => a - b) };
}

async function start(): Promise<void> {
  const n = Number(argv.devices);
  const adds = Number(argv.adds);
  const modes = argv.start === 'both' ? ['on-connect', 'eager'] : [argv.start!];
  // A first run fills the transpile cache (the target is "plugins cached").
  await stopDaemon((await startDaemon({ start: 'eager', devices: [0, 1, 2].map((i) => ({ ...device(i), id: `warm${i}`, socket: join(dir, `warm${i}.sock`) })) })).daemon);
  // A daemon serving nothing: what each device adds is measured over it.
  const spare = argv['spare-workers'] === undefined ? {} : { spareWorkers: Number(argv['spare-workers']) };
  const base = (await startDaemon({ control: join(dir, 'control.sock'), ...spare, devices: [] })).daemon;
  await sleep(2000);
  const baseRss = rssOf(base.child);
  await stopDaemon(base);
  console.error(`a daemon with no device: ${(baseRss / 2 ** 20).toFixed(0)} MiB resident`);
  const runs: StartRun[] = [];
  for (const m of modes) runs.push(await startRun(m, n, adds, baseRss));
  const [a, b] = runs;
  if (b) {
    console.error(
      `${a.start} / ${b.start}: start ${(a.startSeconds / b.startSeconds).toFixed(2)}x, idle memory per device ${(a.idleRssPerDeviceMiB / b.idleRssPerDeviceMiB).toFixed(3)}x, ` +
        `first connection ${(median(a.firstConnectionMs) / median(b.firstConnectionMs)).toFixed(1)}x`,
    );
  }
  console.log(JSON.stringify({ bench: 'tenancy-start', devices: n, mix: argv.mix, baseRssBytes: baseRss, loadAfter: loadavg()[0], runs }));
}

if (positionals[0] === 'cpu') await cpu();
else if (positionals[0] === 'start') await start();
else throw new Error('usage: npx tsx bench/tenancy.ts cpu|start [options] (see the head of this file)');
process.exit(0);
