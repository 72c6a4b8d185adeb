// virtio-blk I/O through our front-end driver: the blk WebAssembly plugin in the real host
// binary (memory:SIZE backing) against qemu-storage-daemon's vhost-user-blk export (C,
// libvhost-user) over null-co and over a raw image in /dev/shm. Same driver, same requests,
// one run; ratios are ours / theirs.
//
//   npx tsx bench/blk.ts [--seconds 2] [--warmup 0.5] [--size 256M] [--only host|qsd-null|qsd-shm]
//                        [--cpu-prof DIR]
//
// --cpu-prof DIR runs our host under `node --cpu-prof` (a profile per thread, the device
// worker included) and prints the functions with the most self time.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { BlkDevice, parseBlkConfig } from '../host/frontend/blk.ts';
import { VhostUserFrontend, VIRTIO_F_VERSION_1 } from '../host/frontend/driver.ts';

const REPO = resolve(import.meta.dirname, '..');
const { values: argv } = parseArgs({
  options: {
    seconds: { type: 'string', default: '2' },
    warmup: { type: 'string', default: '0.5' },
    size: { type: 'string', default: '256M' },
    only: { type: 'string' },
    'cpu-prof': { type: 'string' },
  },
});
const SECONDS = Number(argv.seconds);
const WARMUP = Number(argv.warmup);
const DISK = Number.parseInt(argv.size!, 10) * 2 ** 20;

interface Workload {
  name: string;
  kind: 'read' | 'write';
  pattern: 'random' | 'sequential';
  bytes: number;
  depth: number;
}
const WORKLOADS: Workload[] = [
  { name: '4K randread QD1', kind: 'read', pattern: 'random', bytes: 4096, depth: 1 },
  { name: '4K randread QD64', kind: 'read', pattern: 'random', bytes: 4096, depth: 64 },
  { name: '4K randwrite QD1', kind: 'write', pattern: 'random', bytes: 4096, depth: 1 },
  { name: '4K randwrite QD64', kind: 'write', pattern: 'random', bytes: 4096, depth: 64 },
  { name: '128K seqread QD8', kind: 'read', pattern: 'sequential', bytes: 128 * 1024, depth: 8 },
  { name: '128K seqwrite QD8', kind: 'write', pattern: 'sequential', bytes: 128 * 1024, depth: 8 },
];

interface Backend {
  child: ChildProcess;
  cleanup?: () => void;
}
interface Target {
  id: string;
  name: string;
  start(socketPath: string): Backend;
}

function qsdTarget(id: string, name: string, blockdev: () => { arg: string; cleanup?: () => void }): Target {
  return {
    id,
    name,
    start(socketPath) {
      const b = blockdev();
      const args = ['--blockdev', b.arg, '--export', `type=vhost-user-blk,id=e0,node-name=d0,addr.type=unix,addr.path=${socketPath},writable=on`];
      return { child: spawn('qemu-storage-daemon', args, { stdio: ['ignore', 'ignore', 'inherit'] }), cleanup: b.cleanup };
    },
  };
}

const TARGETS: Target[] = [
  {
    id: 'host',
    name: `vhost-wasm blk.wasm, --storage memory:${argv.size}`,
    start(socketPath) {
      const prof = argv['cpu-prof'] ? ['--cpu-prof', '--cpu-prof-dir', resolve(argv['cpu-prof'])] : [];
      const child = spawn(process.execPath, [
        ...prof, '--import', 'tsx', join(REPO, 'host', 'cli', 'main.ts'),
        '--socket-path', socketPath, '--plugin', join(REPO, 'dist', 'plugins', 'blk.wasm'),
        '--storage', `memory:${argv.size}`, '--log-level', 'warn',
      ], { cwd: REPO, stdio: ['ignore', 'ignore', 'inherit'] });
      return { child };
    },
  },
  qsdTarget('qsd-null', 'qemu-storage-daemon null-co', () => ({ arg: `driver=null-co,node-name=d0,size=${DISK}` })),
  qsdTarget('qsd-shm', 'qemu-storage-daemon raw file in /dev/shm', () => {
    const img = `/dev/shm/bench-blk-${process.pid}.img`;
    // Sparse: tmpfs allocates pages as they are written, like our memory disk's chunks.
    writeFileSync(img, '');
    truncateSync(img, DISK);
    return { arg: `driver=file,node-name=d0,filename=${img}`, cleanup: () => rmSync(img, { force: true }) };
  }),
];

async function waitForSocket(path: string, child: ChildProcess): Promise<void> {
  const deadline = Date.now() + 20_000;
  while (!existsSync(path)) {
    if (child.exitCode !== null || Date.now() > deadline) throw new Error(`back-end did not create ${path}`);
    await sleep(10);
  }
}

/** The socket file appears at bind(), a moment before listen(): retry a refused connect. */
async function connect(socketPath: string): Promise<VhostUserFrontend> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await VhostUserFrontend.connect(socketPath, {
        memoryBytes: 64 << 20,
        queues: [256],
        features: 1n << BigInt(VIRTIO_F_VERSION_1),
        eventIdx: true,
      });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ECONNREFUSED' || attempt >= 100) throw e;
      await sleep(50);
    }
  }
}

async function stop(b: Backend): Promise<void> {
  if (b.child.exitCode === null) {
    const gone = new Promise((r) => b.child.once('close', r));
    b.child.kill('SIGTERM');
    const t = setTimeout(() => b.child.kill('SIGKILL'), 5000);
    await gone;
    clearTimeout(t);
  }
  b.cleanup?.();
}

/** Deterministic per-worker xorshift: random offsets without Math.random's cost or jitter. */
function rng(seed: number): () => number {
  let x = seed | 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 2 ** 32;
  };
}

async function run(blk: BlkDevice, capacity: number, w: Workload, seconds: number): Promise<number> {
  const sectors = w.bytes / 512;
  const slots = Math.floor(capacity / sectors);
  const payload = Buffer.alloc(w.bytes, 0x5a);
  let seq = 0;
  let done = 0;
  const end = performance.now() + seconds * 1000;
  const worker = async (id: number) => {
    const next = rng(0x9e3779b9 * (id + 1));
    while (performance.now() < end) {
      const slot = w.pattern === 'random' ? Math.floor(next() * slots) : seq++ % slots;
      if (w.kind === 'read') await blk.read(slot * sectors, w.bytes);
      else await blk.write(slot * sectors, payload);
      done++;
    }
  };
  await Promise.all(Array.from({ length: w.depth }, (_, i) => worker(i)));
  return done;
}

async function measure(target: Target, dir: string): Promise<Map<string, number>> {
  const socketPath = join(dir, `${target.id}.sock`);
  const backend = target.start(socketPath);
  running.add(backend.child);
  backend.child.once('exit', () => running.delete(backend.child));
  const out = new Map<string, number>();
  let fe: VhostUserFrontend | null = null;
  try {
    await waitForSocket(socketPath, backend.child);
    fe = await connect(socketPath);
    const blk = new BlkDevice(fe.queues[0]);
    const capacity = parseBlkConfig(await fe.getConfig(0, 36)).capacity;
    for (const w of WORKLOADS) {
      await run(blk, capacity, w, WARMUP);
      const t0 = performance.now();
      const n = await run(blk, capacity, w, SECONDS);
      out.set(w.name, n / ((performance.now() - t0) / 1000));
      process.stderr.write(`  ${target.id}: ${w.name} done\n`);
    }
  } finally {
    await fe?.close();
    await sleep(50);
    await stop(backend);
  }
  return out;
}

/** Self time per function over every .cpuprofile in dir (one per thread). */
function summariseProfiles(dir: string): void {
  for (const f of readdirSync(dir).filter((n) => n.endsWith('.cpuprofile'))) {
    const p = JSON.parse(readFileSync(join(dir, f), 'utf8')) as {
      nodes: { id: number; hitCount?: number; callFrame: { functionName: string; url: string; lineNumber: number; columnNumber: number } }[];
      startTime: number;
      endTime: number;
    };
    const idle = p.nodes.filter((n) => n.callFrame.functionName === '(idle)').reduce((s, n) => s + (n.hitCount ?? 0), 0);
    const total = p.nodes.reduce((s, n) => s + (n.hitCount ?? 0), 0) - idle;
    // Threads that mostly slept (the main thread between control messages) say nothing.
    if (total < idle / 4) continue;
    const self = new Map<string, number>();
    for (const n of p.nodes) {
      const cf = n.callFrame;
      const where = cf.url ? `${cf.url.replace(/^file:\/\//, '').replace(`${REPO}/`, '').replace(/\?.*$/, '')}:${cf.lineNumber + 1}:${cf.columnNumber + 1}` : '';
      const key = `${cf.functionName || '(anonymous)'} ${where}`.trim();
      if (cf.functionName !== '(idle)') self.set(key, (self.get(key) ?? 0) + (n.hitCount ?? 0));
    }
    const top = [...self].sort((a, b) => b[1] - a[1]).slice(0, 15);
    console.log(`\n${f}: busy ${total} of ${total + idle} samples over ${((p.endTime - p.startTime) / 1e6).toFixed(1)} s; top self time (% of busy):`);
    for (const [k, v] of top) console.log(`  ${((100 * v) / total).toFixed(1).padStart(5)}%  ${k}`);
  }
}

/** Back-ends still running: killed however the bench ends, so none outlives it. */
const running = new Set<ChildProcess>();
process.on('exit', () => {
  for (const c of running) c.kill('SIGKILL');
});

async function main(): Promise<void> {
  const budget = (TARGETS.length * WORKLOADS.length * (SECONDS + WARMUP) + 60) * 1000;
  setTimeout(() => {
    console.error('bench/blk: still running after its time budget; giving up');
    process.exit(2);
  }, budget).unref();
  if (argv['cpu-prof']) mkdirSync(argv['cpu-prof'], { recursive: true });
  const dir = mkdtempSync(join(tmpdir(), 'bench-blk-'));
  const results = new Map<string, Map<string, number>>();
  try {
    for (const t of TARGETS.filter((t) => !argv.only || t.id === argv.only)) results.set(t.id, await measure(t, dir));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }

  console.log(`bench/blk: ${SECONDS} s per workload after ${WARMUP} s warm-up, ${argv.size} disk, one queue of 256, ` +
    `EVENT_IDX on, no indirect; node ${process.version}. IOPS (MB/s for 128K)`);
  const ids = [...results.keys()];
  const ratioCols = results.has('host') ? ids.filter((i) => i !== 'host').map((i) => `host/${i}`) : [];
  const head = ['workload', ...ids, ...ratioCols];
  const rows = WORKLOADS.map((w) => {
    const fmt = (v: number | undefined) => v === undefined ? '-' : w.bytes >= 65536 ? `${((v * w.bytes) / 1e6).toFixed(0)} MB/s` : Math.round(v).toString();
    const h = results.get('host')?.get(w.name);
    return [w.name, ...ids.map((i) => fmt(results.get(i)!.get(w.name))),
      ...ids.filter((i) => i !== 'host' && h !== undefined).map((i) => (h! / results.get(i)!.get(w.name)!).toFixed(2))];
  });
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ');
  console.log(line(head));
  for (const r of rows) console.log(line(r));
  for (const t of TARGETS) if (results.has(t.id)) console.log(`  ${t.id}: ${t.name}`);
  if (argv['cpu-prof']) summariseProfiles(argv['cpu-prof']);
}

await main();
