// Where a TCG guest's file operation spends its time, request by request, on our fs plugin and
// on Rust virtiofsd 1.13 (issue 12, item 5). bench/fs-guest.ts gives rates and CPU per
// operation; this says which thread of the request's round trip is slower, from the scheduler's
// own record of the same guest run:
//
//   node build.mjs && node --import tsx bench/fs-cycle.ts [--backend both|ours|virtiofsd]
//        [--phases stat,randread] [--files 3000] [--rand-reads 4096] [--host-flags '...']
//
// Per back-end it runs one round of bench/fs-guest.ts under `perf sched record -k mono -a`
// (root; perf in PATH) with --phase-log, so each timed phase's window is known on the trace's
// clock, then reads `perf sched timehist`. One request of a phase the guest issues one at a
// time is a cycle through three threads:
//   the back-end's worker  woken by the guest's kick (eventfd), answers, writes the call eventfd;
//   QEMU's main loop       woken by that call eventfd (TCG has no irqfd), raises the interrupt;
//   the vCPU thread (TCG)  woken by the interrupt, runs the guest until its next kick.
// For each, per phase: how often it was switched in, and the medians of its scheduling delay
// (woken -> on a CPU), and per operation of the phase (a file, a 4 KiB read) its run time and
// switch-ins, beside the phase's wall time per operation. The phases compared are those the
// guest runs one request at a time (create: LOOKUP, CREATE, WRITE, FLUSH, RELEASE and the
// directory's GETATTR; stat: LOOKUP; unlink: UNLINK, FORGET, GETATTR; randread: READ).

import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';

const { values: argv } = parseArgs({
  options: {
    backend: { type: 'string', default: 'both' },
    phases: { type: 'string', default: 'create,stat,unlink,randread' },
    files: { type: 'string', default: '3000' },
    'rand-reads': { type: 'string', default: '4096' },
    'host-flags': { type: 'string' },
  },
});
const BACKENDS = argv.backend === 'both' ? ['ours', 'virtiofsd'] : [argv.backend!];
for (const b of BACKENDS) if (b !== 'ours' && b !== 'virtiofsd') throw new Error(`--backend is ours, virtiofsd or both, not "${argv.backend}"`);
const PHASES = argv.phases!.split(',');
try {
  execFileSync('perf', ['--version'], { stdio: 'ignore' });
} catch {
  throw new Error('needs perf (linux-perf) in PATH, run as root: it records the scheduler events of the whole machine');
}

/** One switch-out of a thread, as `perf sched timehist` prints it (ms). */
interface Switch {
  t: number;
  tid: number;
  pid: number;
  comm: string;
  delay: number;
  run: number;
}

interface PhaseLog {
  label: string;
  pid: number;
  phases: Record<string, [string, string]>;
}

const LINE = /^\s*(\d+\.\d+)\s+\[\d+\]\s+(.*?)\[(\d+)(?:\/(\d+))?\]\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s*$/;

async function switches(data: string, windows: [number, number][]): Promise<Switch[]> {
  const child = spawn('perf', ['sched', 'timehist', '-i', data], { stdio: ['ignore', 'pipe', 'ignore'] });
  const out: Switch[] = [];
  for await (const line of createInterface({ input: child.stdout })) {
    const m = LINE.exec(line);
    if (!m) continue;
    const t = Number(m[1]);
    if (!windows.some(([a, b]) => t >= a && t <= b)) continue;
    const tid = Number(m[3]);
    out.push({ t, tid, pid: m[4] === undefined ? tid : Number(m[4]), comm: m[2], delay: Number(m[6]), run: Number(m[7]) });
  }
  return out;
}

const median = (xs: number[]) => {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

interface Role {
  switchIns: number;
  delayUs: number;
  /** Run time summed over the phase, µs. */
  runUs: number;
}
type Chain = { windowMs: number; worker: Role; main: Role; vcpu: Role };

function role(sw: Switch[]): Role {
  return { switchIns: sw.length, delayUs: median(sw.map((s) => s.delay * 1000)), runUs: sw.reduce((a, s) => a + s.run * 1000, 0) };
}

/** The back-end's busiest thread is its worker; QEMU is the other process the guest run keeps busiest. */
function chainOf(sw: Switch[], backendPid: number, windowMs: number): Chain {
  const runBy = (key: (s: Switch) => number, of: Switch[]) => {
    const m = new Map<number, number>();
    for (const s of of) m.set(key(s), (m.get(key(s)) ?? 0) + s.run);
    return [...m].sort((a, b) => b[1] - a[1]);
  };
  const backend = sw.filter((s) => s.pid === backendPid);
  // io_uring's kernel workers belong to the back-end's process but are not the thread the guest wakes.
  const workerTid = runBy((s) => s.tid, backend.filter((s) => !s.comm.startsWith('iou-')))[0]?.[0];
  const qemuPid = runBy((s) => s.pid, sw.filter((s) => s.pid !== backendPid && s.pid !== 0 && /^(ld-linux|qemu)/.test(s.comm)))[0]?.[0];
  const qemu = sw.filter((s) => s.pid === qemuPid);
  const vcpuTid = runBy((s) => s.tid, qemu.filter((s) => s.tid !== qemuPid))[0]?.[0];
  const worker = role(backend.filter((s) => s.tid === workerTid));
  return {
    windowMs,
    worker,
    main: role(qemu.filter((s) => s.tid === qemuPid)),
    vcpu: role(qemu.filter((s) => s.tid === vcpuTid)),
  };
}

async function traceOne(backend: string, work: string): Promise<Map<string, Chain>> {
  const data = join(work, `${backend}.perf`);
  const log = join(work, `${backend}.phases`);
  const args = ['sched', 'record', '-k', 'mono', '-a', '-o', data, '--', process.execPath, '--import', 'tsx', join(import.meta.dirname, 'fs-guest.ts'),
    '--backend', backend, '--rounds', '1', '--skip-state', '--files', argv.files!, '--rand-reads', argv['rand-reads']!, '--mib', '4', '--dir-entries', '1000',
    '--readdir-passes', '1', '--phase-log', log, ...(argv['host-flags'] ? [`--host-flags=${argv['host-flags']}`] : [])];
  execFileSync('perf', args, { stdio: ['ignore', 'ignore', 'inherit'] });
  const runLog = JSON.parse(readFileSync(log, 'utf8').trim().split('\n').pop()!) as PhaseLog;
  const windows = new Map<string, [number, number]>();
  for (const p of PHASES) {
    const w = runLog.phases[p];
    if (!w) throw new Error(`${backend}: the run logged no window for phase "${p}" (phases: ${Object.keys(runLog.phases).join(', ')})`);
    windows.set(p, [Number(BigInt(w[0])) / 1e9, Number(BigInt(w[1])) / 1e9]);
  }
  const sw = await switches(data, [...windows.values()]);
  const chains = new Map<string, Chain>();
  for (const [p, [a, b]] of windows) chains.set(p, chainOf(sw.filter((s) => s.t >= a && s.t <= b), runLog.pid, (b - a) * 1000));
  return chains;
}

const work = mkdtempSync(join(tmpdir(), 'bench-fs-cycle-'));
try {
  const results = new Map<string, Map<string, Chain>>();
  for (const b of BACKENDS) results.set(b, await traceOne(b, work));
  const f = (x: number) => (Number.isFinite(x) ? x.toFixed(0) : '-');
  const g = (x: number) => (Number.isFinite(x) ? x.toFixed(1) : '-');
  console.log(`\nPer operation (a file: ${argv.files} of them; a read: ${argv['rand-reads']}), µs: the phase's wall time, and per thread its run time ` +
    '[switch-ins per operation, median scheduling delay]');
  console.log('| phase | back-end | wall | worker | QEMU main loop | vCPU (TCG) |');
  console.log('|---|---|---|---|---|---|');
  const perOp = new Map<string, Map<string, number>>();
  for (const p of PHASES) {
    const ops = p === 'randread' ? Number(argv['rand-reads']) : Number(argv.files);
    for (const b of BACKENDS) {
      const c = results.get(b)!.get(p)!;
      const r = (x: Role) => `${f(x.runUs / ops)} [${g(x.switchIns / ops)}, ${f(x.delayUs)}]`;
      const wall = (c.windowMs * 1000) / ops;
      if (!perOp.has(p)) perOp.set(p, new Map());
      perOp.get(p)!.set(b, wall);
      console.log(`| ${p} | ${b === 'ours' ? 'fs plugin' : 'virtiofsd 1.13'} | ${f(wall)} | ${r(c.worker)} | ${r(c.main)} | ${r(c.vcpu)} |`);
    }
  }
  if (BACKENDS.length === 2) {
    const ratios = PHASES.map((p) => `${p} ${(perOp.get(p)!.get('virtiofsd')! / perOp.get(p)!.get('ours')!).toFixed(2)}`);
    console.log(`\nRate ratio ours/virtiofsd (wall per operation, virtiofsd's over ours): ${ratios.join(', ')}`);
  }
} finally {
  rmSync(work, { recursive: true, force: true });
}
