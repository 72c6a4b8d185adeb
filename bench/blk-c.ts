// virtio-blk back-ends measured by the C front-end (bench/loadgen/vhost-blk-load.c), so the
// client is not the bottleneck: our host (the built dist/vhost-wasm.mjs with dist/plugins/blk.wasm)
// on a memory disk and on a tmpfs file, against qemu-storage-daemon on null-co and on the same
// tmpfs file with aio=io_uring. Every number in one run; ratios are ours / theirs.
//
//   node build.mjs && npx tsx bench/blk-c.ts [--seconds 2] [--warmup 0.5] [--reps 3] [--modes poll,event]
//        [--only host-mem,qsd-null,...] [--workloads "4K randread QD64",...] [--disk]
//        [--profile DIR] [--base DIR] [--pin cross|same]
//
// --disk adds a real-disk file in /var/tmp: our host with --direct (O_DIRECT, io_uring through
// host/io/uring-executor.ts) against qemu-storage-daemon aio=io_uring,cache.direct=on on the same file.
// --base DIR adds, for every selected target of ours built into dist/ (host-mem, host-tmpfs,
// host-disk, ...), the same target run from DIR's dist/ (another checkout, built: the "before"),
// interleaved with the rest in every rep: on a shared machine a before/after pair measured
// seconds apart sees the same background load. Ratio columns compare each with its @base.
// (host-null@base is DIR's host with this checkout's null device module: the host is compared.)
// --pin cross puts every back-end on CPU 0 and the front-end on CPU 1 (taskset); --pin same puts
// both on CPU 0. Unpinned, event mode is bimodal on this 2-CPU VM: a back-end the scheduler puts
// on the front-end's CPU is preempted by the front-end at each call and finds the refill without
// sleeping, one on the other CPU sleeps and is kicked once per ring-full (docs/BENCHMARKS.md,
// "Event mode's wake-ups"); pinning measures one case at a time.
// --profile DIR runs only our host (--profile-target host-mem (default), host-null, host-tmpfs or
// host-disk; the first of --workloads, 4K randread QD64 by default; event mode) under `node --cpu-prof` and prints the device worker's CPU per
// request by stage.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, fsyncSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, writeSync } from 'node:fs';
import { SourceMap } from 'node:module';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';

const REPO = resolve(import.meta.dirname, '..');
const LOADGEN = join(REPO, 'dist', 'vhost-blk-load');
const HOST = join(REPO, 'dist', 'vhost-wasm.mjs');
const BLK = join(REPO, 'dist', 'plugins', 'blk.wasm');
const DISK_BYTES = 256 * 2 ** 20;

const { values: argv } = parseArgs({
  options: {
    seconds: { type: 'string', default: '2' },
    'poll-max-ns': { type: 'string' },
    warmup: { type: 'string', default: '0.5' },
    reps: { type: 'string', default: '3' },
    modes: { type: 'string', default: 'poll,event' },
    only: { type: 'string' },
    workloads: { type: 'string' },
    disk: { type: 'boolean', default: false },
    profile: { type: 'string' },
    base: { type: 'string' },
    'profile-target': { type: 'string', default: 'host-mem' },
    pin: { type: 'string' },
  },
});
if (argv.pin !== undefined && argv.pin !== 'cross' && argv.pin !== 'same') throw new Error(`--pin: '${argv.pin}' is not cross or same`);
/** The CPUs of the back-ends and of the front-end under --pin, or null. */
const PIN = argv.pin === undefined ? null : { backend: '0', frontend: argv.pin === 'cross' ? '1' : '0' };
/** cmd/args run on `cpu` through taskset when pinning. */
const pinned = (cpu: string | undefined, cmd: string, args: string[]): [string, string[]] =>
  cpu === undefined ? [cmd, args] : ['taskset', ['-c', cpu, cmd, ...args]];

interface Workload {
  name: string;
  rw: 'randread' | 'randwrite' | 'read' | 'write';
  bs: number;
  depth: number;
  queues: number;
}
const WORKLOADS: Workload[] = [
  { name: '4K randread QD1', rw: 'randread', bs: 4096, depth: 1, queues: 1 },
  { name: '4K randread QD64', rw: 'randread', bs: 4096, depth: 64, queues: 1 },
  { name: '4K randwrite QD64', rw: 'randwrite', bs: 4096, depth: 64, queues: 1 },
  { name: '128K seqread QD8', rw: 'read', bs: 131072, depth: 8, queues: 1 },
  { name: '128K seqwrite QD8', rw: 'write', bs: 131072, depth: 8, queues: 1 },
  // Two rings: the host with --queue-threads 2 serves each on its own thread (host-mem-qt2).
  { name: '4K randread QD64 2 queues', rw: 'randread', bs: 4096, depth: 64, queues: 2 },
];

interface Target {
  id: string;
  name: string;
  args(socket: string, file: string, prof: string[]): { cmd: string; args: string[] };
}
const qsd = (blockdev: string, socket: string) => ({
  cmd: 'qemu-storage-daemon',
  // num-queues=2 for the 2-queue workload (a front-end may use fewer); one iothread either way.
  args: ['--blockdev', blockdev, '--export', `type=vhost-user-blk,id=e,node-name=n,addr.type=unix,addr.path=${socket},writable=on,num-queues=2`],
});
// BENCH_HOST_NODE_ARGS: extra node options for our host (trying V8 flags without a rebuild).
const HOST_NODE_ARGS = (process.env.BENCH_HOST_NODE_ARGS ?? '').split(' ').filter(Boolean);
const hostArgs = (socket: string, storage: string, prof: string[]) => ({
  cmd: process.execPath,
  args: [...HOST_NODE_ARGS, ...prof, HOST, '--socket-path', socket, '--plugin', BLK, '--storage', storage, '--log-level', 'warn', ...pollArgs()],
});
/** --poll-max-ns for every host of ours (host-null too), when given. */
const pollArgs = (): string[] => (argv['poll-max-ns'] !== undefined ? ['--poll-max-ns', argv['poll-max-ns']] : []);
// The host core with the TypeScript null device: the built host (dist/vhost-wasm.mjs, as the
// other targets) with bench/null-blk-device.ts bundled by esbuild into a JavaScript
// --device-module (the bundle's device worker cannot load a .ts module). Until 2026-12-07 this
// target ran the host from source under tsx, whose `__name` wrappers cost the ring path extra.
const NULL_DEVICE_SRC = join(REPO, 'bench', 'null-blk-device.ts');
let nullDevice = '';
const SINGLE_QUEUE_TARGETS = ['host-null'];
async function bundleNullDevice(dir: string): Promise<void> {
  const { build } = await import('esbuild');
  // Under a bench/ directory: the profile's stage rules find the device's frames by that path.
  nullDevice = join(dir, 'bench', 'null-blk-device.mjs');
  await build({ entryPoints: [NULL_DEVICE_SRC], bundle: true, platform: 'node', format: 'esm', target: 'node20', outfile: nullDevice, logLevel: 'warning' });
}
const hostNullArgs = (socket: string, prof: string[]) => ({
  cmd: process.execPath,
  args: [...HOST_NODE_ARGS, ...prof, HOST, '--socket-path', socket, '--device-module', nullDevice, '--log-level', 'warn', ...pollArgs()],
});
const TARGETS: Target[] = [
  { id: 'host-null', name: 'vhost-wasm host core alone: TypeScript null device, bench/null-blk-device.ts bundled as a --device-module', args: (s, _f, p) => hostNullArgs(s, p) },
  { id: 'host-mem', name: 'vhost-wasm blk.wasm --storage memory:256M', args: (s, _f, p) => hostArgs(s, 'memory:256M', p) },
  { id: 'host-mem-qt2', name: 'vhost-wasm blk.wasm --storage memory:256M --queue-threads 2', args: (s, _f, p) => { const a = hostArgs(s, 'memory:256M', p); return { ...a, args: [...a.args, '--queue-threads', '2'] }; } },
  { id: 'qsd-null', name: 'qemu-storage-daemon null-co,read-zeroes=on (256M)', args: (s) => qsd(`driver=null-co,node-name=n,read-zeroes=on,size=${DISK_BYTES}`, s) },
  { id: 'host-tmpfs', name: 'vhost-wasm blk.wasm --storage FILE (256M file in /dev/shm)', args: (s, f, p) => hostArgs(s, f, p) },
  { id: 'qsd-tmpfs', name: 'qemu-storage-daemon file aio=io_uring (the same /dev/shm file)', args: (s, f) => qsd(`driver=file,node-name=n,filename=${f},aio=io_uring`, s) },
];
const DISK_TARGETS: Target[] = [
  { id: 'host-disk', name: 'vhost-wasm blk.wasm --storage FILE --direct (256M file in /var/tmp)', args: (s, _f, p) => { const a = hostArgs(s, diskFile, p); return { ...a, args: [...a.args, '--direct'] }; } },
  { id: 'qsd-disk', name: 'qemu-storage-daemon file aio=io_uring,cache.direct=on (the same /var/tmp file)', args: (s) => qsd(`driver=file,node-name=n,filename=${diskFile},aio=io_uring,cache.direct=on`, s) },
];
const RATIOS: [string, string][] = [['host-null', 'qsd-null'], ['host-mem', 'qsd-null'], ['host-mem-qt2', 'qsd-null'], ['host-tmpfs', 'qsd-tmpfs'], ['host-disk', 'qsd-disk']];

interface LoadResult {
  iops: number;
  mbps: number;
  lat_avg_us: number;
  errors: number;
  client_cpu_s: number;
  ios: number;
  /** The front-end's kicks, and its waits on the call fd (event mode: one per call that woke it). */
  kicks: number;
  waits: number;
}

/** CPU seconds (user+system, every thread) a process has used so far. */
function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) / 100; // utime, stime in clock ticks (USER_HZ 100)
}

function fillFile(path: string): void {
  const chunk = Buffer.alloc(8 << 20);
  for (let i = 0; i < chunk.length; i += 8) chunk.writeDoubleLE(i + 1, i);
  const fd = openSync(path, 'w');
  try {
    for (let off = 0; off < DISK_BYTES; off += chunk.length) writeSync(fd, chunk, 0, chunk.length, off);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** CPU seconds used so far by each thread of a process. */
function threadCpu(pid: number): Map<string, number> {
  const out = new Map<string, number>();
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      out.set(tid, (Number(f[11]) + Number(f[12])) / 100);
    } catch {
      // the thread ended between the listing and the read
    }
  }
  return out;
}

function loadgen(socket: string, w: Workload, mode: string, seconds: number): LoadResult {
  const [cmd, args] = pinned(PIN?.frontend, LOADGEN, ['--socket', socket, '--rw', w.rw, '--bs', String(w.bs), '--depth', String(w.depth),
    '--queues', String(w.queues), '--mode', mode, '--seconds', String(seconds), '--warmup', '0', '--size', String(DISK_BYTES)]);
  const out = execFileSync(cmd, args,
  { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], timeout: (seconds + 30) * 1000 });
  const r = JSON.parse(out.trim().split('\n').pop()!) as LoadResult;
  if (r.errors) throw new Error(`${w.name}: the back-end answered ${r.errors} requests with an error status`);
  return r;
}

async function start(t: Target, dir: string, prof: string[] = []): Promise<ChildProcess> {
  const socket = join(dir, `${t.id}.sock`);
  const target = t.args(socket, tmpfsFile, prof);
  const [cmd, args] = pinned(PIN?.backend, target.cmd, target.args);
  const child = spawn(cmd, args, { cwd: REPO, stdio: ['ignore', 'ignore', 'inherit'] });
  running.add(child);
  child.once('exit', () => running.delete(child));
  const deadline = Date.now() + 20_000;
  while (!existsSync(socket)) {
    if (child.exitCode !== null || Date.now() > deadline) throw new Error(`${t.id}: back-end did not create ${socket}`);
    await sleep(20);
  }
  await sleep(200); // bind() comes a moment before listen()
  return child;
}

async function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null) return;
  const gone = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  const t = setTimeout(() => child.kill('SIGKILL'), 5000);
  await gone;
  clearTimeout(t);
}

const running = new Set<ChildProcess>();
process.on('exit', () => {
  for (const c of running) c.kill('SIGKILL');
});

const tmpfsFile = `/dev/shm/bench-blk-c-${process.pid}.img`;
const diskFile = `/var/tmp/bench-blk-c-${process.pid}.img`;

interface Cell extends LoadResult {
  backendUsPerIo: number;
}

async function measureAll(): Promise<void> {
  const seconds = Number(argv.seconds);
  const warmup = Number(argv.warmup);
  const modes = argv.modes!.split(',');
  const only = argv.only?.split(',');
  const targets = [...TARGETS, ...(argv.disk ? DISK_TARGETS : [])].filter((t) => !only || only.includes(t.id));
  const ratioPairs = [...RATIOS];
  if (argv.base !== undefined) {
    const baseHost = join(resolve(argv.base), 'dist', 'vhost-wasm.mjs');
    const baseBlk = join(resolve(argv.base), 'dist', 'plugins', 'blk.wasm');
    for (const f of [baseHost, baseBlk]) if (!existsSync(f)) throw new Error(`--base: ${f} is missing; build that checkout first (node build.mjs)`);
    for (const t of [...targets]) {
      if (!t.id.startsWith('host-')) continue;
      const id = `${t.id}@base`;
      targets.push({ id, name: `${t.name}, from ${argv.base}`, args: (sock, f, p) => {
        const a = t.args(sock, f, p);
        return { ...a, args: a.args.map((x) => (x === HOST ? baseHost : x === BLK ? baseBlk : x)) };
      } });
      ratioPairs.push([t.id, id]);
    }
  }
  const workloads = argv.workloads ? WORKLOADS.filter((w) => argv.workloads!.split(',').includes(w.name)) : WORKLOADS;
  const dir = mkdtempSync(join(tmpdir(), 'bench-blk-c-'));
  if (targets.some((t) => t.id.startsWith('host-null'))) await bundleNullDevice(dir);
  const results = new Map<string, Cell>(); // key: target|workload|mode
  const load0 = loadavg()[0];
  const reps = Number(argv.reps);
  // Fully written files, not sparse ones: a read of a hole costs nothing (and on the disk it
  // never reaches the device), which would flatter whoever serves from the file.
  for (const f of [tmpfsFile, ...(targets.some((t) => DISK_TARGETS.includes(t)) ? [diskFile] : [])]) fillFile(f);
  // Every back-end runs for the whole bench (idle when not driven), and each workload visits
  // them in turn, `--reps` times: on a shared, noisy machine, cells measured seconds apart
  // see the same background load, which cells minutes apart do not. The median rep is shown.
  const children = new Map<string, ChildProcess>();
  try {
    for (const t of targets) children.set(t.id, await start(t, dir));
    for (const w of workloads) {
      for (const mode of modes) {
        const reps_: Map<string, Cell[]> = new Map(targets.map((t) => [t.id, []]));
        for (let rep = 0; rep < reps; rep++) {
          for (const t of targets) {
            // The TypeScript null device has one ring: a 2-queue workload cannot run on it.
            if (w.queues > 1 && SINGLE_QUEUE_TARGETS.includes(t.id.replace(/@base$/, ''))) continue;
            const socket = join(dir, `${t.id}.sock`);
            const pid = children.get(t.id)!.pid!;
            if (warmup > 0) loadgen(socket, w, mode, warmup);
            const c0 = cpuSeconds(pid);
            const r = loadgen(socket, w, mode, seconds);
            const c1 = cpuSeconds(pid);
            reps_.get(t.id)!.push({ ...r, backendUsPerIo: r.ios ? ((c1 - c0) * 1e6) / r.ios : NaN });
          }
        }
        for (const t of targets) {
          const cells = reps_.get(t.id)!.sort((x, y) => x.iops - y.iops);
          if (cells.length === 0) continue;
          const median = cells[Math.floor(cells.length / 2)];
          results.set(`${t.id}|${w.name}|${mode}`, median);
          const per1000 = (n: number, c: Cell) => ((n * 1000) / c.ios).toFixed(1);
          process.stderr.write(`  ${t.id} ${w.name} ${mode}: ${cells.map((c) => `${Math.round(c.iops)} [${c.backendUsPerIo.toFixed(2)}; ${per1000(c.kicks, c)}k ${per1000(c.waits, c)}w]`).join(' ')} IOPS [us/request; kicks, waits per 1000 requests]\n`);
        }
      }
    }
  } finally {
    for (const c of children.values()) await stop(c);
    rmSync(dir, { recursive: true, force: true });
    rmSync(tmpfsFile, { force: true });
    rmSync(diskFile, { force: true });
  }

  console.log(`bench/blk-c: C front-end (dist/vhost-blk-load), median of ${argv.reps} interleaved runs of ${seconds} s ` +
    `(each after ${warmup} s warm-up), one queue unless the workload says 2, ` +
    `EVENT_IDX on; ${cpus().length} CPUs${PIN ? `, back-ends on CPU ${PIN.backend} and the front-end on CPU ${PIN.frontend} (--pin ${argv.pin})` : ''}, load average ${load0.toFixed(1)} at start; node ${process.version}`);
  console.log('IOPS (MB/s for 128K); in brackets: back-end CPU us per request');
  const ids = targets.map((t) => t.id);
  const ratios = ratioPairs.filter(([a, b]) => ids.includes(a) && ids.includes(b));
  // Throughput ratios, then CPU-per-request ratios (ours / theirs; above 1 means we spend more):
  // on a loaded machine the CPU a back-end spends per request moves far less than its IOPS.
  const head = ['workload', 'mode', ...ids, ...ratios.map(([a, b]) => `${a}/${b}`), ...ratios.map(([a, b]) => `cpu ${a}/${b}`)];
  const rows: string[][] = [];
  for (const w of workloads) {
    for (const mode of modes) {
      const cell = (id: string) => results.get(`${id}|${w.name}|${mode}`);
      const fmt = (c: Cell | undefined) => c === undefined ? '-' :
        `${w.bs >= 65536 ? `${c.mbps.toFixed(0)} MB/s` : Math.round(c.iops).toString()} [${c.backendUsPerIo.toFixed(1)}]`;
      rows.push([w.name, mode, ...ids.map((id) => fmt(cell(id))),
        ...ratios.map(([a, b]) => (cell(a) && cell(b) ? (cell(a)!.iops / cell(b)!.iops).toFixed(2) : '-')),
        ...ratios.map(([a, b]) => (cell(a) && cell(b) ? (cell(a)!.backendUsPerIo / cell(b)!.backendUsPerIo).toFixed(1) : '-'))]);
    }
  }
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]) => cells.map((c, i) => (i < 2 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ');
  console.log(line(head));
  for (const r of rows) console.log(line(r));
  for (const t of targets) console.log(`  ${t.id}: ${t.name}`);
}

// ---- profile: where the device worker's time goes per request ----

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
  columnNumber: number;
}
interface ProfNode {
  id: number;
  callFrame: CallFrame;
  children?: number[];
}
interface Profile {
  nodes: ProfNode[];
  samples: number[];
  timeDeltas: number[];
  startTime: number;
  endTime: number;
}

/**
 * Stage of a stack, decided by its innermost frame that belongs to a stage (Node internals such
 * as Buffer.fill belong to whoever called them). Frames in the bundle are mapped back to their
 * source file through dist/*.mjs.map, so the rules name the host's own modules.
 */
const STAGES: [stage: string, test: (f: CallFrame, src: string) => boolean][] = [
  ['GC', (f) => f.functionName === '(garbage collector)'],
  ['metrics counters', (_f, src) => /host\/metrics\//.test(src)],
  ['storage (executor + backing copy)', (_f, src) => /host\/storage\/|host\/io\/|host\/plugin\/storage-imports\.ts/.test(src)],
  ['notify', (f) => /^(notify|notifyTouched|signalCall|needsNotification|enableNotifications|disableNotifications|eventfdWrite|eventfdSignal|eventfdRead)$/.test(f.functionName)],
  ['used-ring update', (f, src) => /^(completed|writeChain|pushUsed|writeChainLogged|logUsed|markDirty|freeReq)$/.test(f.functionName) && /host\/(device|virtqueue)\//.test(src)],
  ['pop (descriptor walk)', (f, src) => /host\/virtqueue\/|host\/memory\//.test(src) || f.functionName === 'newReq'],
  ['answer check', (f, src) => /host\/device\/answer-check\.ts/.test(src) || f.functionName === 'heldView'],
  ['IoOp building', (f, src) => /^(start|sliceViews)$/.test(f.functionName) && /host\/device\/runner\.ts/.test(src)],
  ['handle: lowering', (f, src) => /^(lower|alloc)$/.test(f.functionName) && /direct-handle\.ts/.test(src)],
  ['handle: lifting', (f, src) => /^(actions|bytes|list|inside|u64|bool)$/.test(f.functionName) && /direct-handle\.ts/.test(src)],
  ['plugin call (export glue + wasm)', (f, src) => /host\/plugin\//.test(src) || /vhost-plugin-[0-9a-f]+\.js/.test(f.url) || f.functionName.startsWith('wasm-function') || f.url.startsWith('wasm://')],
  ['device (TypeScript null device)', (_f, src) => /test\/devices\/|bench\/null-blk-device/.test(src)],
  ['batch (runner: prefixes, events, rounds)', (_f, src) => /host\/device\//.test(src)],
];

function sourceMapper(): (f: CallFrame) => string {
  const maps = new Map<string, SourceMap | null>();
  return (f) => {
    const m = /([^/]+\.mjs)$/.exec(f.url);
    if (!m) return f.url;
    if (!maps.has(m[1])) {
      const mapFile = join(REPO, 'dist', `${m[1]}.map`);
      maps.set(m[1], existsSync(mapFile) ? new SourceMap(JSON.parse(readFileSync(mapFile, 'utf8'))) : null);
    }
    const e = maps.get(m[1])?.findEntry(f.lineNumber, f.columnNumber) as { originalSource?: string } | undefined;
    return e?.originalSource ?? f.url;
  };
}

const isWasm = (f: CallFrame): boolean => f.functionName.startsWith('wasm-function') || f.url.startsWith('wasm://');

function stageBreakdown(p: Profile): { us: Map<string, number>; top: Map<string, Map<string, number>> } {
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const source = sourceMapper();
  const stageOf = new Map<number, [string, string]>();
  const classify = (id: number): [string, string] => {
    const known = stageOf.get(id);
    if (known) return known;
    let s: [string, string] = ['other', ''];
    for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
      const f = byId.get(cur)!.callFrame;
      if (f.functionName === '(idle)' || f.functionName === '(program)') {
        s = [f.functionName, f.functionName];
        break;
      }
      const src = source(f);
      const hit = STAGES.find(([, test]) => test(f, src));
      if (hit) {
        let stage = hit[0];
        // jco's glue runs both around the export call and around every import the wasm makes
        // (blk's per-request storage read/write): glue with wasm below it is the import side.
        if (stage.startsWith('plugin call') && !isWasm(f)) {
          for (let up = parent.get(cur); up !== undefined; up = parent.get(up)) {
            if (isWasm(byId.get(up)!.callFrame)) {
              stage = 'host-import glue (jco, per storage call)';
              break;
            }
          }
        }
        s = [stage, `${f.functionName || '(anonymous)'} ${src.replace(/^.*?(host\/)/, '$1').replace(/^file:\/\/.*\//, '')}`];
        break;
      }
    }
    stageOf.set(id, s);
    return s;
  };
  const us = new Map<string, number>();
  const top = new Map<string, Map<string, number>>();
  for (let i = 0; i < p.samples.length; i++) {
    const [s, fn] = classify(p.samples[i]);
    const dt = p.timeDeltas[i + 1] ?? 0;
    us.set(s, (us.get(s) ?? 0) + dt);
    if (!top.has(s)) top.set(s, new Map());
    top.get(s)!.set(fn, (top.get(s)!.get(fn) ?? 0) + dt);
  }
  return { us, top };
}

async function profile(dir: string): Promise<void> {
  const seconds = Number(argv.seconds);
  const wname = argv.workloads?.split(',')[0]?.trim() ?? '4K randread QD64';
  const w = WORKLOADS.find((x) => x.name === wname);
  if (!w) throw new Error(`--workloads: '${wname}' is not one of ${WORKLOADS.map((x) => x.name).join(', ')}`);
  mkdirSync(dir, { recursive: true });
  for (const f of readdirSync(dir)) if (f.endsWith('.cpuprofile')) rmSync(join(dir, f));
  const sockDir = mkdtempSync(join(tmpdir(), 'bench-blk-c-'));
  const prof = ['--cpu-prof', '--cpu-prof-dir', resolve(dir), '--cpu-prof-interval', '100'];
  const target = [...TARGETS, ...DISK_TARGETS].find((t) => t.id === argv['profile-target'] && t.id.startsWith('host'));
  if (!target) throw new Error(`--profile-target: '${argv['profile-target']}' is not one of our targets (host-null, host-mem, host-tmpfs, host-disk)`);
  if (target.id === 'host-null') await bundleNullDevice(sockDir);
  if (target.id === 'host-tmpfs') fillFile(tmpfsFile);
  if (target.id === 'host-disk') fillFile(diskFile);
  const child = await start(target, sockDir, prof);
  const sock = join(sockDir, `${target.id}.sock`);
  let r: LoadResult;
  let workerCpuUs: number;
  try {
    loadgen(sock, w, 'event', Number(argv.warmup));
    const t0 = threadCpu(child.pid!);
    r = loadgen(sock, w, 'event', seconds);
    const t1 = threadCpu(child.pid!);
    // The busiest thread over the measured run is the device worker.
    workerCpuUs = Math.max(...[...t1].map(([tid, c]) => c - (t0.get(tid) ?? 0))) * 1e6;
  } finally {
    await stop(child);
    rmSync(sockDir, { recursive: true, force: true });
    rmSync(tmpfsFile, { force: true });
    rmSync(diskFile, { force: true });
  }
  // Both runs were profiled; attribute the profile to every request both runs made.
  const requests = r.ios * (1 + Number(argv.warmup) / seconds);
  const files = readdirSync(dir).filter((f) => f.endsWith('.cpuprofile'));
  if (files.length === 0) throw new Error(`no .cpuprofile in ${dir}: did the host exit cleanly on SIGTERM?`);
  const cpuPerReq = workerCpuUs / r.ios;
  console.log(`bench/blk-c --profile: ${target.id}, ${w.name}, event mode: ${Math.round(r.iops)} IOPS under the profiler; ` +
    `${Math.round(requests)} requests profiled; load average ${loadavg()[0].toFixed(1)}`);
  console.log(`device worker thread CPU (/proc, measured run): ${cpuPerReq.toFixed(2)} us per request. The profiler samples ` +
    `wall time, so a preempted thread still counts as busy: its shares are right, its absolute time is not; ` +
    `"us" below is each stage's share of the /proc figure.`);
  for (const f of files) {
    const p = JSON.parse(readFileSync(join(dir, f), 'utf8')) as Profile;
    const { us, top } = stageBreakdown(p);
    const busy = [...us].filter(([s]) => s !== '(idle)').reduce((a, [, v]) => a + v, 0);
    if (busy < 0.2 * (p.endTime - p.startTime)) continue; // a thread that mostly slept (the main thread)
    console.log(`\n${f}: busy ${(busy / 1e6).toFixed(2)} s of ${((p.endTime - p.startTime) / 1e6).toFixed(2)} s ` +
      `(${(busy / requests).toFixed(2)} us sampled per request):`);
    for (const [s, v] of [...us].filter(([s]) => s !== '(idle)').sort((a, b) => b[1] - a[1])) {
      const fns = [...top.get(s)!].sort((a, b) => b[1] - a[1]).slice(0, 3).map(([k, t]) => `${k} ${((100 * t) / v).toFixed(0)}%`);
      console.log(`  ${s.padEnd(42)} ${((cpuPerReq * v) / busy).toFixed(2).padStart(6)} us  ${((100 * v) / busy).toFixed(1).padStart(5)}%   ${fns.join('; ')}`);
    }
  }
}

for (const f of [LOADGEN, HOST, BLK]) {
  if (!existsSync(f)) {
    console.error(`bench/blk-c: ${f} is missing; build first: node build.mjs`);
    process.exit(1);
  }
}
setTimeout(() => {
  console.error('bench/blk-c: still running after an hour; giving up');
  process.exit(2);
}, 3600_000).unref();
if (argv.profile) await profile(argv.profile);
else await measureAll();
