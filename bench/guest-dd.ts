// Guest `dd` throughput with direct I/O: a real Linux guest under QEMU 7.2 (TCG) on
// vhost-user-blk-pci, against (a) our host running the blk WebAssembly plugin over
// `--storage memory:256M` and (b) qemu-storage-daemon's vhost-user-blk export (C,
// libvhost-user) of a raw 256 MiB file in /dev/shm. Same QEMU, same guest, same commands, one
// run; `ours/qsd` is the ratio of throughputs (1.0 = as fast as the C back-end).
//
//   npx tsx bench/guest-dd.ts [--small-mib 32] [--large-mib 1024] [--runs 2] [--warmup 1]
//
// Workloads (each `--warmup` times untimed, then `--runs` times, best run kept; every run's
// rate is printed too): 4 KiB blocks (`--small-mib` MiB) and 1 MiB
// blocks (`--large-mib` MiB, in whole passes over the 256 MiB disk when larger), write
// (`oflag=direct` from /dev/zero) then read (`iflag=direct` to /dev/null), queue depth 1 (dd
// issues one request at a time). The guest times each workload with /proc/uptime (10 ms
// resolution; the defaults keep each one around 0.4-1.5 s on this machine). One boot per back-end (~2-3 s of boot each); every boot is bounded by a
// timeout. `back-end CPU` is the back-end process's user+system time over the whole boot,
// from /proc/PID/stat.
//
// Caveat: under TCG the guest's CPU (emulated, one vCPU) bounds both sides; on a 2-core
// machine QEMU, the back-end and this script share two cores.

import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { bootGuest, hasQemu, hasStorageDaemon } from '../test/guest/qemu.ts';
import { startStorageDaemon } from '../test/guest/storage-daemon.ts';
import { REPO, startHost } from '../test/helpers/host-process.ts';

const { values: argv } = parseArgs({
  options: {
    'small-mib': { type: 'string', default: '32' },
    'large-mib': { type: 'string', default: '1024' },
    runs: { type: 'string', default: '2' },
    warmup: { type: 'string', default: '1' },
  },
});
const SMALL_MIB = Number(argv['small-mib']);
const LARGE_MIB = Number(argv['large-mib']);
const RUNS = Math.max(1, Number(argv.runs));
const WARMUP = Math.max(0, Number(argv.warmup));
const DISK_MIB = 256;
if (!(SMALL_MIB > 0 && LARGE_MIB > 0 && SMALL_MIB <= 4096 && LARGE_MIB <= 16384)) {
  console.error('--small-mib must be within 1..4096 and --large-mib within 1..16384');
  process.exit(2);
}
if (!hasQemu() || !hasStorageDaemon()) {
  console.error('needs qemu-system-x86 and qemu-utils (qemu-storage-daemon): see test/guest/README.md');
  process.exit(1);
}

interface Workload {
  name: string;
  bs: number;
  /** Blocks in all (passes x blocks per pass). */
  count: number;
  /** Shell: the dd command(s) to time. */
  dd: string;
}
const WORKLOADS: Workload[] = [];
for (const [label, bs, mib] of [['4 KiB', 4096, SMALL_MIB], ['1 MiB', 1 << 20, LARGE_MIB]] as const) {
  // More than the disk: whole passes over it.
  const passes = Math.ceil(mib / DISK_MIB);
  const perPass = Math.round((mib << 20) / bs / passes);
  const loop = (cmd: string) => (passes === 1 ? cmd : `for p in $(seq ${passes}); do ${cmd}; done`);
  WORKLOADS.push({ name: `write ${label}`, bs, count: perPass * passes, dd: loop(`dd if=/dev/zero of=/dev/vda bs=${bs} count=${perPass} oflag=direct 2>/dev/null`) });
  WORKLOADS.push({ name: `read ${label}`, bs, count: perPass * passes, dd: loop(`dd if=/dev/vda of=/dev/null bs=${bs} count=${perPass} iflag=direct 2>/dev/null`) });
}

const GUEST_SCRIPT = [
  'set -e',
  `test "$(cat /sys/block/vda/size)" = "${DISK_MIB * 2048}"`,
  'now() { cut -d" " -f1 /proc/uptime; }',
  // Untimed warm-up runs of every workload (the back-ends' caches, allocations, JIT).
  ...(WARMUP ? [`for run in $(seq ${WARMUP}); do`, ...WORKLOADS.map((w) => `  ${w.dd}`), 'done'] : []),
  `for run in $(seq ${RUNS}); do`,
  ...WORKLOADS.map((w, i) => `  t0=$(now); ${w.dd}; t1=$(now); echo "R ${i} $t0 $t1"`),
  'done',
].join('\n');

interface Side {
  seconds: number[]; // best time per workload
  all: number[][]; // every run's time per workload
  backendCpu: number; // seconds
  bootMs: number;
}

const cpuSeconds = (pid: number): number => {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return (Number(f[11]) + Number(f[12])) / 100; // utime, stime (fields 14, 15) in ticks
};

async function measure(label: string, socketPath: string, pid: number): Promise<Side> {
  process.stderr.write(`${label}: booting the guest... `);
  const cpu0 = cpuSeconds(pid);
  const totalMiB = (RUNS + WARMUP) * 2 * (SMALL_MIB * 16 + LARGE_MIB);
  const r = await bootGuest({
    timeoutMs: 60_000 + totalMiB * 50, // generous (>= 20 MiB/s, 4 KiB blocks weighted x16) on top of the boot
    qemuArgs: ['-chardev', `socket,id=d0,path=${socketPath}`, '-device', 'vhost-user-blk-pci,chardev=d0,num-queues=1'],
    script: GUEST_SCRIPT,
  });
  const backendCpu = cpuSeconds(pid) - cpu0;
  if (r.exitCode !== 0) {
    throw new Error(`${label}: guest exit ${r.exitCode} (timedOut=${r.timedOut})\n${r.output.split('\n').slice(-30).join('\n')}\n${r.qemuStderr}`);
  }
  const seconds = WORKLOADS.map(() => Infinity);
  const all: number[][] = WORKLOADS.map(() => []);
  for (const m of r.scriptOutput.matchAll(/^R (\d+) ([\d.]+) ([\d.]+)$/gm)) {
    const i = Number(m[1]);
    const s = Math.max(0.01, Number(m[3]) - Number(m[2]));
    all[i].push(s);
    seconds[i] = Math.min(seconds[i], s);
  }
  if (seconds.some((s) => s === Infinity)) throw new Error(`${label}: missing results\n${r.scriptOutput}`);
  process.stderr.write(`done in ${(r.durationMs / 1000).toFixed(1)} s\n`);
  return { seconds, all, backendCpu, bootMs: r.durationMs };
}

const dir = mkdtempSync(join(tmpdir(), 'vhost-wasm-guest-dd-'));
const shmImage = `/dev/shm/guest-dd-${process.pid}.img`;
let ours!: Side;
let qsd!: Side;
try {
  const host = await startHost(['--socket-path', '{socket}', '--plugin', join(REPO, 'dist', 'plugins', 'blk.wasm'), '--storage', `memory:${DISK_MIB}M`]);
  try {
    ours = await measure('ours (blk plugin, memory:256M)', host.socketPath, host.child.pid!);
  } finally {
    await host.stop();
  }
  execFileSync('truncate', ['-s', `${DISK_MIB}M`, shmImage]);
  const daemon = await startStorageDaemon({ image: shmImage, socketPath: join(dir, 'qsd.sock') });
  try {
    qsd = await measure('qemu-storage-daemon (file in /dev/shm)', daemon.socketPath, daemon.pid);
  } finally {
    await daemon.stop();
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
  rmSync(shmImage, { force: true });
}

const pad = (s: string, n: number) => s.padStart(n);
const rate = (w: Workload, s: number) => (w.bs * w.count) / s / 2 ** 20;
console.log(`\nguest dd, direct I/O, queue depth 1, QEMU 7.2 TCG, 1 vCPU; best of ${RUNS} run(s) after ${WARMUP} warm-up run(s)\n`);
console.log(`${'workload'.padEnd(14)}${pad('ours MiB/s', 12)}${pad('qsd MiB/s', 12)}${pad('ours IOPS', 11)}${pad('qsd IOPS', 11)}${pad('ours/qsd', 10)}   every run, MiB/s: ours | qsd`);
WORKLOADS.forEach((w, i) => {
  const a = rate(w, ours.seconds[i]);
  const b = rate(w, qsd.seconds[i]);
  const iops = (s: number) => String(Math.round(w.count / s));
  const runs = (x: Side) => x.all[i].map((s) => rate(w, s).toFixed(0)).join(' ');
  console.log(`${w.name.padEnd(14)}${pad(a.toFixed(1), 12)}${pad(b.toFixed(1), 12)}${pad(iops(ours.seconds[i]), 11)}${pad(iops(qsd.seconds[i]), 11)}${pad((a / b).toFixed(2), 10)}   ${runs(ours)} | ${runs(qsd)}`);
});
console.log(`\nback-end CPU over the whole boot: ours ${ours.backendCpu.toFixed(2)} s, qsd ${qsd.backendCpu.toFixed(2)} s` +
  ` (boot+bench wall: ours ${(ours.bootMs / 1000).toFixed(1)} s, qsd ${(qsd.bootMs / 1000).toFixed(1)} s)`);
console.log(`sizes: 4 KiB x ${WORKLOADS[0].count}, 1 MiB x ${WORKLOADS[2].count}; best times (ms) ours ${ours.seconds.map((x) => Math.round(x * 1000)).join(' ')}, qsd ${qsd.seconds.map((x) => Math.round(x * 1000)).join(' ')}`);
