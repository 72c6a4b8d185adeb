// A real guest's file workload against our fs plugin and against Rust virtiofsd 1.13 (issue 12,
// item 5), in one run, under the same QEMU 10 (scripts/qemu10.sh, TCG, 1 vCPU) and the same
// busybox guest; then the cost of the plugin's state SAVE + LOAD for many known inodes.
//
//   node --import tsx bench/fs-guest.ts [--backend ours|virtiofsd|both] [--rounds 3]
//        [--files 1000] [--mib 64] [--rand-reads 4096] [--dir-entries 10000] [--readdir-passes 3]
//        [--warmup 200] [--warmup-mib 8] [--skip-guest] [--skip-state] [--inodes N] [--real-inodes N] [--profile DIR]
//        [--host-flags '...'] [--phase-log FILE]
//
// Back-ends: ours is the built binary users run (dist/vhost-wasm.mjs with dist/plugins/fs.wasm,
// `--cache auto --call-deadline 5000`, its default `--inode-file-handles prefer`); virtiofsd is
// Debian trixie's 1.13 (scripts/virtiofsd.sh, through test/guest/virtiofsd.ts: `--sandbox none
// --cache auto`, its defaults otherwise: `--inode-file-handles never`, readdirplus on, no thread
// pool). Both with cache=auto, the default of both: entries and attributes trusted 1 s, file data
// in the guest's page cache while a file is open. `--backend both` (the default) runs each round
// on both, alternating which goes first, so a drift in the machine's load hits both; each gets a
// fresh directory (same content) per round. Every number is the median over the rounds.
// The shares are made under TMPDIR (default /tmp): its file system's own cost is in both
// back-ends' figures, and on ext4 a create's can be most of it (the output says how much:
// filesystemFloor); TMPDIR=/dev/shm compares the back-ends without it (our host then serves
// file I/O with pread/pwrite in turn instead of io_uring, as on any tmpfs share).
//
// Guest workload: a static C program (compiled here with gcc -static, put in the initrd) first
// creates, stats and unlinks --warmup files untimed (a back-end in JavaScript compiles its hot
// paths while it serves its first requests; a long-running host has done so long before), and
// writes, reads back and randomly reads a --warmup-mib file the same way as the timed phases
// below (the data path's code: without it the 64 MiB phases paid our host's JIT compiling its
// read/write path, ~20-30% of their CPU at 64 MiB; 0 skips it, as runs before 2026-12-07 11:30 did), then
// times each phase with CLOCK_MONOTONIC inside the guest:
//   create   N small files (open O_CREAT|O_EXCL, write 100 bytes, close)          files/s
//   stat     each of them, after dropping the guest's caches (LOOKUP+GETATTR)       files/s
//   unlink   each of them                                                           files/s
//   write    one M MiB file sequentially in 1 MiB writes, then fsync                MB/s
//   read     it back after dropping the guest's page cache, 1 MiB reads             MB/s
//   randread R reads of 4 KiB at random 4 KiB-aligned offsets of that file, opened
//            O_DIRECT in the guest (every read is one FUSE_READ; neither back-end opens
//            the host file O_DIRECT: both serve from the host's page cache)         reads/s
//   readdir  P passes of readdir(3) over a directory of E entries (made on the host
//            before the boot), the guest's caches dropped before each pass (so the
//            kernel asks READDIRPLUS again and each entry is looked up)             entries/s
// The guest's own cost (TCG) is in every number: the ratio says how much slower the whole path
// is with us. Beside each phase: the back-end process's CPU (every thread's run time,
// /proc/PID/task/*/schedstat, ns; before 2026-12-07 11:30 utime+stime in 10 ms ticks) between the guest's BEGIN and END lines for that phase, per
// operation (file, MiB, read, entry). The guest prints BEGIN, waits 100 ms (the line reaches
// the harness before any request of the phase), runs the phase, prints END; only the readdir
// passes themselves are inside BEGIN/END (the FORGETs after each drop are not).
//
// --profile DIR: our host runs under `node --cpu-prof` (one .cpuprofile per thread, written
// when it exits), and the busiest thread's profile is summarised: self time by function and
// source file (through dist/*.mjs.map).
//
// State: SAVE (get-state) on one plugin instance and LOAD (set-state + finish-load) on a second,
// through the real jco runtime, in 64 KiB calls (what the device runner hands a plugin per call,
// STATE_CALL_BYTES). Two variants:
//   real share    --real-inodes (default 100,000) real files looked up through FsShare, held by
//                 file handle (--inode-file-handles prefer: no fd per inode);
//   synthetic     --inodes (default 100,000) inodes behind an in-memory `filesystem` capability
//                 (no fds, no syscalls): the plugin + runtime share of the cost at that size.
// A LOAD leaves the inodes pending (resolved on first use, outside the downtime): the "first
// use" column is a GETATTR of every one of them on the destination afterwards, and "slowest"
// the longest single plugin call of SAVE or LOAD (the host's per-call deadline is 100 ms).
// Bounded: each guest run has a 300 s timeout, the create phase stops after 20 s.

import { execFileSync } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, statfsSync, writeFileSync, writeSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { SourceMap } from 'node:module';
import { parseArgs } from 'node:util';
import { FsShare, type Attr, type Entry, type FsResult } from '../host/fs/index.ts';
import { loadPlugin, type PluginDevice } from '../host/plugin/index.ts';
import { bootGuest, hasQemu } from '../test/guest/qemu.ts';
import { ensureQemu10 } from '../test/guest/qemu10.ts';
import { startVirtiofsd } from '../test/guest/virtiofsd.ts';
import { REPO, startHost } from '../test/helpers/host-process.ts';

const { values: argv } = parseArgs({
  options: {
    backend: { type: 'string', default: 'both' },
    'poll-max-ns': { type: 'string' },
    files: { type: 'string', default: '1000' },
    mib: { type: 'string', default: '64' },
    'rand-reads': { type: 'string', default: '4096' },
    'dir-entries': { type: 'string', default: '10000' },
    'readdir-passes': { type: 'string', default: '3' },
    warmup: { type: 'string', default: '200' },
    'warmup-mib': { type: 'string', default: '8' },
    inodes: { type: 'string', default: '100000' },
    'real-inodes': { type: 'string', default: '100000' },
    rounds: { type: 'string', default: '3' },
    'skip-guest': { type: 'boolean', default: false },
    'skip-state': { type: 'boolean', default: false },
    profile: { type: 'string' },
    'host-flags': { type: 'string' },
    'phase-log': { type: 'string' },
  },
});
const FILES = Number(argv.files);
const MIB = Number(argv.mib);
const RAND_READS = Number(argv['rand-reads']);
const DIR_ENTRIES = Number(argv['dir-entries']);
const READDIR_PASSES = Number(argv['readdir-passes']);
const WARMUP = Number(argv.warmup);
const WARMUP_MIB = Number(argv['warmup-mib']);
const INODES = Number(argv.inodes);
const REAL_INODES = Number(argv['real-inodes']);
const ROUNDS = Number(argv.rounds);
if (!Number.isInteger(WARMUP) || WARMUP < 0) throw new Error(`--warmup must be a count of files, not "${argv.warmup}"`);
if (!Number.isInteger(WARMUP_MIB) || WARMUP_MIB < 0) throw new Error(`--warmup-mib must be a number of MiB, not "${argv['warmup-mib']}"`);
if (!['ours', 'virtiofsd', 'both'].includes(argv.backend!)) throw new Error(`--backend is ours, virtiofsd or both, not "${argv.backend}"`);
for (const [k, v] of Object.entries({ files: FILES, mib: MIB, 'rand-reads': RAND_READS, 'dir-entries': DIR_ENTRIES, 'readdir-passes': READDIR_PASSES, rounds: ROUNDS })) {
  if (!Number.isInteger(v) || v < 1) throw new Error(`--${k} must be a positive integer, not "${v}"`);
}
const BACKENDS: Backend[] = argv.backend === 'both' ? ['ours', 'virtiofsd'] : [argv.backend as Backend];
const FS_PLUGIN = join(REPO, 'dist', 'plugins', 'fs.wasm');
const TAG = 'bench';
const work = mkdtempSync(join(tmpdir(), 'bench-fs-guest-'));
process.on('exit', () => rmSync(work, { recursive: true, force: true }));

// ---------------------------------------------------------------- guest workload

const FSBENCH_C = String.raw`
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
static void drop(void) { sync(); int fd = open("/proc/sys/vm/drop_caches", O_WRONLY); if (fd >= 0) { if (write(fd, "3", 1) != 1) perror("drop_caches"); close(fd); } }
static void die(const char *w) { perror(w); printf("FSBENCH-FAILED %s\n", w); exit(1); }
/* The harness samples the back-end's CPU when it sees these lines: give it 100 ms to. */
static void begin(const char *p) { printf("BEGIN %s\n", p); fflush(stdout); usleep(100000); }
static void end(const char *p) { printf("END %s\n", p); fflush(stdout); }
static void result(const char *p, long n, double secs) { printf("RESULT %s %ld %.6f\n", p, n, secs); fflush(stdout); }
int main(int argc, char **argv) {
  if (argc < 11) return 2;
  struct stat st;
  int n = atoi(argv[2]), mib = atoi(argv[3]);
  double budget = atof(argv[4]);
  long reads = atol(argv[5]);
  const char *many = argv[6];
  long entries = atol(argv[7]);
  int passes = atoi(argv[8]);
  static char buf[1 << 20];
  char p[256];
  double t0, t;
  memset(buf, 'x', sizeof buf);
  /* small/ is made by the harness (its file system's own create cost is measured in it). */
  if (chdir(argv[1]) || (mkdir("small", 0755) && errno != EEXIST)) die("setup");
  /* Warm-up, untimed: the same create, stat, unlink cycle on other names (a JIT warms up). */
  int warm = atoi(argv[9]);
  for (int i = 0; i < warm; i++) {
    snprintf(p, sizeof p, "small/w%d", i);
    int fd = open(p, O_CREAT | O_EXCL | O_WRONLY, 0644);
    if (fd < 0 || write(fd, buf, 100) != 100 || close(fd) || stat(p, &st) || unlink(p)) die("warm-up");
  }
  /* ... and the data path: a file written in 1 MiB writes, read back cold, 4 KiB O_DIRECT reads. */
  int warm_mib = atoi(argv[10]);
  if (warm_mib > 0) {
    int wfd = open("warm", O_CREAT | O_TRUNC | O_RDWR, 0644);
    if (wfd < 0) die("warm-up data");
    for (int i = 0; i < warm_mib; i++) if (write(wfd, buf, sizeof buf) != (ssize_t)sizeof buf) die("warm-up write");
    if (fsync(wfd) || close(wfd)) die("warm-up fsync");
    drop();
    wfd = open("warm", O_RDONLY);
    if (wfd < 0) die("warm-up read");
    while (read(wfd, buf, sizeof buf) > 0) {}
    close(wfd);
    void *wpage;
    if (posix_memalign(&wpage, 4096, 4096)) die("posix_memalign");
    wfd = open("warm", O_RDONLY | O_DIRECT);
    if (wfd < 0) die("warm-up O_DIRECT");
    for (long i = 0; i < (long)warm_mib * 64; i++) if (pread(wfd, wpage, 4096, (off_t)((i * 7919) % ((long)warm_mib * 256)) * 4096) != 4096) die("warm-up randread");
    close(wfd);
    free(wpage);
    memset(buf, 'x', sizeof buf);
    if (unlink("warm")) die("warm-up unlink");
  }

  begin("create");
  t0 = now();
  int made = 0;
  while (made < n && now() - t0 < budget) {
    snprintf(p, sizeof p, "small/f%d", made);
    int fd = open(p, O_CREAT | O_EXCL | O_WRONLY, 0644);
    if (fd < 0 || write(fd, buf, 100) != 100 || close(fd)) die("create");
    made++;
  }
  t = now() - t0;
  end("create");
  result("create", made, t);

  drop();
  begin("stat");
  t0 = now();
  for (int i = 0; i < made; i++) {
    snprintf(p, sizeof p, "small/f%d", i);
    if (stat(p, &st) || st.st_size != 100) die("stat");
  }
  t = now() - t0;
  end("stat");
  result("stat", made, t);

  begin("unlink");
  t0 = now();
  for (int i = 0; i < made; i++) {
    snprintf(p, sizeof p, "small/f%d", i);
    if (unlink(p)) die("unlink");
  }
  t = now() - t0;
  end("unlink");
  result("unlink", made, t);

  begin("write");
  t0 = now();
  int fd = open("big", O_CREAT | O_TRUNC | O_WRONLY, 0644);
  if (fd < 0) die("open big");
  for (int i = 0; i < mib; i++) if (write(fd, buf, sizeof buf) != (ssize_t)sizeof buf) die("write");
  if (fsync(fd) || close(fd)) die("fsync");
  t = now() - t0;
  end("write");
  result("write", mib, t);

  drop();
  begin("read");
  t0 = now();
  fd = open("big", O_RDONLY);
  if (fd < 0) die("open big for reading");
  long long total = 0;
  for (;;) { ssize_t r = read(fd, buf, sizeof buf); if (r < 0) die("read"); if (r == 0) break; total += r; }
  close(fd);
  t = now() - t0;
  end("read");
  if (total != (long long)mib << 20) die("short read");
  result("read", mib, t);

  /* O_DIRECT in the guest: no page cache, no readahead, one 4 KiB FUSE_READ per read. */
  drop();
  void *page;
  if (posix_memalign(&page, 4096, 4096)) die("posix_memalign");
  fd = open("big", O_RDONLY | O_DIRECT);
  if (fd < 0) die("open big O_DIRECT");
  uint64_t x = 88172645463325252ull; /* xorshift64: the same offsets on both back-ends */
  long blocks = (long)mib * 256;
  begin("randread");
  t0 = now();
  for (long i = 0; i < reads; i++) {
    x ^= x << 13; x ^= x >> 7; x ^= x << 17;
    if (pread(fd, page, 4096, (off_t)(x % (uint64_t)blocks) * 4096) != 4096) die("randread");
  }
  t = now() - t0;
  end("randread");
  close(fd);
  result("randread", reads, t);
  /* small/ keeps the harness's floor-N files (filesystemFloor). */
  if (unlink("big") || (rmdir("small") && errno != ENOTEMPTY)) die("cleanup");

  double spent = 0;
  long seen = 0;
  for (int k = 0; k < passes; k++) {
    drop();
    begin("readdir");
    t0 = now();
    DIR *d = opendir(many);
    if (!d) die("opendir");
    long here = 0;
    while (readdir(d)) here++;
    closedir(d);
    spent += now() - t0;
    end("readdir");
    if (here != entries + 2) { printf("readdir saw %ld entries, expected %ld\n", here, entries + 2); die("readdir"); }
    seen += entries;
  }
  result("readdir", seen, spent);
  printf("FSBENCH-DONE\n");
  return 0;
}
`;

type Backend = 'ours' | 'virtiofsd';
const PHASES = ['create', 'stat', 'unlink', 'write', 'read', 'randread', 'readdir'] as const;
type Phase = (typeof PHASES)[number];
/** Per phase: the rate (unit per phase below) and the back-end's CPU seconds per operation. */
type Run = Record<Phase, { rate: number; cpuPerOp: number }>;
const UNIT: Record<Phase, { rate: string; op: string; cpuScale: number; cpuUnit: string }> = {
  create: { rate: 'files/s', op: 'file', cpuScale: 1e6, cpuUnit: 'us/file' },
  stat: { rate: 'files/s', op: 'file', cpuScale: 1e6, cpuUnit: 'us/file' },
  unlink: { rate: 'files/s', op: 'file', cpuScale: 1e6, cpuUnit: 'us/file' },
  write: { rate: 'MB/s', op: 'MiB', cpuScale: 1e3, cpuUnit: 'ms/MiB' },
  read: { rate: 'MB/s', op: 'MiB', cpuScale: 1e3, cpuUnit: 'ms/MiB' },
  randread: { rate: 'reads/s', op: 'read', cpuScale: 1e6, cpuUnit: 'us/read' },
  readdir: { rate: 'entries/s', op: 'entry', cpuScale: 1e6, cpuUnit: 'us/entry' },
};

function compileGuestProgram(): Uint8Array {
  const src = join(work, 'fsbench.c');
  const bin = join(work, 'fsbench');
  writeFileSync(src, FSBENCH_C);
  execFileSync('gcc', ['-static', '-O2', '-o', bin, src], { stdio: 'inherit' });
  return readFileSync(bin);
}

/**
 * Seconds every live thread of `pid` has run (/proc/PID/task/TID/schedstat, ns), as bench/fs-host
 * reads it: utime + stime came in 10 ms ticks, ~20% of a 64 MiB phase's CPU. A thread that ends
 * between two reads is lost (io_uring's workers outlive a phase: they idle 5 s before exiting).
 */
function processCpu(pid: number): number {
  let ns = 0;
  for (const t of readdirSync(`/proc/${pid}/task`)) {
    try {
      ns += Number(readFileSync(`/proc/${pid}/task/${t}/schedstat`, 'utf8').split(' ')[0]);
    } catch {
      // the thread ended
    }
  }
  return ns / 1e9;
}

/**
 * The share's file system's own CPU for the guest's create (open O_CREAT|O_EXCL + write 100
 * bytes + close), by this process in the share's small/ (where the guest creates its files, so the same block
 * group), before the guest runs, in us per file. On ext4
 * this is not a constant: a new inode is looked for from the start of its parent's block group
 * and every inode freed there in the last minutes is read and skipped (ext4's
 * recently_deleted()), so it grows with what was unlinked there lately (this bench's earlier
 * shares, other work on the same /tmp): 9 us on tmpfs, 700-900 us on this machine's /tmp
 * (2026-12-07). The files are kept until the bench exits (unlinking them would make the next
 * create dearer still).
 */
function filesystemFloor(dir: string, n = 200): number {
  const data = Buffer.alloc(100, 0x61);
  const t = process.cpuUsage();
  for (let i = 0; i < n; i++) {
    const fd = openSync(join(dir, `floor-${i}`), 'wx', 0o644);
    writeSync(fd, data);
    closeSync(fd);
  }
  const used = process.cpuUsage(t);
  return (used.user + used.system) / n;
}

/** The file system type of `dir` (statfs f_type), by name where known. */
function fsTypeOf(dir: string): string {
  const t = statfsSync(dir).type;
  return ({ 0x01021994: 'tmpfs', 0xef53: 'ext4', 0x58465342: 'xfs', 0x9123683e: 'btrfs' } as Record<number, string>)[t] ?? `f_type 0x${t.toString(16)}`;
}

/** A fresh share: an empty top and `many/` with DIR_ENTRIES empty files (the readdir phase). */
function freshShare(who: Backend): string {
  const dir = mkdtempSync(join(work, `${who}-`));
  mkdirSync(join(dir, 'many'));
  // The guest's creates go here: made now so that filesystemFloor measures in the same
  // directory (on ext4 the cost depends on the directory's block group).
  mkdirSync(join(dir, 'small'));
  for (let i = 0; i < DIR_ENTRIES; i++) writeFileSync(join(dir, 'many', `entry-${String(i).padStart(6, '0')}`), '');
  return dir;
}

/**
 * --phase-log FILE: each run's back-end pid and every timed phase's window on CLOCK_MONOTONIC
 * (ns, from the END of the guest's 100 ms pause after BEGIN to END), one JSON line per run, for
 * bench/fs-cycle.ts to cut a `perf sched record -k mono` trace of the same run into phases.
 */
function logPhases(label: string, pid: number, windows: Map<string, [bigint, bigint]>): void {
  if (!argv['phase-log']) return;
  const phases = Object.fromEntries([...windows].map(([p, [a, b]]) => [p, [String(a), String(b)]]));
  writeFileSync(argv['phase-log'], JSON.stringify({ label, pid, phases }) + '\n', { flag: 'a' });
}

async function runWorkload(qemu: string, socket: string, pid: number, program: Uint8Array, label: string, log: () => string): Promise<Run> {
  const cpu = new Map<string, number>();
  const began = new Map<string, number>();
  const windows = new Map<string, [bigint, bigint]>();
  const beganAt = new Map<string, bigint>();
  let pending = '';
  const onOutput = (chunk: string) => {
    pending += chunk;
    let nl: number;
    while ((nl = pending.indexOf('\n')) >= 0) {
      const line = pending.slice(0, nl).trim();
      pending = pending.slice(nl + 1);
      const m = /^(BEGIN|END) (\w+)$/.exec(line);
      if (!m) continue;
      const c = processCpu(pid);
      const at = process.hrtime.bigint();
      if (m[1] === 'BEGIN') beganAt.set(m[2], at + 100_000_000n);
      else if (beganAt.has(m[2])) windows.set(m[2], [beganAt.get(m[2])!, at]);
      if (m[1] === 'BEGIN') began.set(m[2], c);
      else if (began.has(m[2])) {
        cpu.set(m[2], (cpu.get(m[2]) ?? 0) + c - began.get(m[2])!);
        began.delete(m[2]);
      }
    }
  };
  const r = await bootGuest({
    qemuBinary: qemu,
    timeoutMs: 300_000,
    memMiB: 512,
    qemuArgs: ['-chardev', `socket,id=fs0,path=${socket}`, '-device', `vhost-user-fs-pci,chardev=fs0,tag=${TAG}`],
    files: { 'bin/fsbench': program },
    script: `set -e\nmount -t virtiofs ${TAG} /mnt\n/bin/fsbench /mnt ${FILES} ${MIB} 20 ${RAND_READS} /mnt/many ${DIR_ENTRIES} ${READDIR_PASSES} ${WARMUP} ${WARMUP_MIB}\numount /mnt\n`,
    onOutput,
  });
  const out = r.scriptOutput.replace(/\r/g, '');
  if (r.exitCode !== 0 || !out.includes('FSBENCH-DONE')) {
    throw new Error(`${label}: guest run failed (exit ${r.exitCode}, timedOut ${r.timedOut})\n${out.slice(-3000)}\n${r.qemuStderr}\n--- server ---\n${log().slice(-3000)}`);
  }
  logPhases(label, pid, windows);
  const run = {} as Run;
  for (const m of out.matchAll(/^RESULT (\w+) (\d+) ([\d.]+)$/gm)) {
    const phase = m[1] as Phase;
    const count = Number(m[2]);
    const secs = Number(m[3]);
    // write/read: MB (10^6 bytes) per second of `count` MiB; the rest: operations per second.
    const rate = phase === 'write' || phase === 'read' ? (count * 1.048576) / secs : count / secs;
    run[phase] = { rate, cpuPerOp: (cpu.get(phase) ?? NaN) / count };
  }
  for (const p of PHASES) if (!run[p]) throw new Error(`${label}: the guest printed no result for ${p}\n${out.slice(-3000)}`);
  return run;
}

/** Our host, the built binary; under `node --cpu-prof` when profiling. */
async function withOurs<T>(dir: string, fn: (socket: string, pid: number, log: () => string) => Promise<T>): Promise<T> {
  const args = ['--socket-path', '{socket}', '--plugin', FS_PLUGIN, '--shared-dir', dir, '--tag', TAG, '--cache', 'auto', '--call-deadline', '5000'];
  if (argv['poll-max-ns'] !== undefined) args.push('--poll-max-ns', argv['poll-max-ns']);
  // `exec` keeps the pid: the CPU read from /proc is node's.
  // --host-flags: node/V8 flags for our host (V8's are per process: they reach the device worker).
  const flags = [...(argv.profile ? [`--cpu-prof --cpu-prof-dir=${resolve(argv.profile)} --cpu-prof-interval 200`] : []), ...(argv['host-flags'] ? [argv['host-flags']] : [])];
  const wrap = flags.length > 0 ? ['sh', '-c', `exec "$0" ${flags.join(' ')} "$@"`] : undefined;
  const host = await startHost(args, { wrap });
  try {
    return await fn(host.socketPath, host.child.pid!, () => host.log());
  } finally {
    await host.stop();
  }
}

async function withVirtiofsd<T>(dir: string, fn: (socket: string, pid: number, log: () => string) => Promise<T>): Promise<T> {
  const socket = join(work, `virtiofsd-${Date.now()}.sock`);
  const v = await startVirtiofsd(dir, socket, ['--cache', 'auto']);
  try {
    return await fn(socket, v.pid, v.log);
  } finally {
    await v.stop();
  }
}

// ---------------------------------------------------------------- state SAVE + LOAD

let unique = 1n;
function fuse(dev: PluginDevice, reqs: { opcode: number; nodeid: bigint; args: Buffer }[]): Buffer[] {
  const batch = reqs.map(({ opcode, nodeid, args }) => {
    const h = Buffer.alloc(40);
    h.writeUInt32LE(40 + args.length, 0);
    h.writeUInt32LE(opcode, 4);
    h.writeBigUInt64LE(unique++, 8);
    h.writeBigUInt64LE(nodeid, 16);
    const readable = Buffer.concat([h, args]);
    const id = Number(unique % 0xffffffffn);
    return { kind: 'request' as const, request: { id, queue: 1, prefix: readable.subarray(0, dev.info.prefixLen), readableLen: readable.length, writableLen: 4096 } };
  });
  // Metadata requests only: every answer is literal bytes (no backing I/O to run).
  const actions = dev.handle(batch);
  return batch.map((e) => {
    const a = actions.find((x) => x.kind === 'answer' && x.answer.id === e.request.id);
    const piece = a?.kind === 'answer' ? a.answer.reply[0] : undefined;
    if (piece?.kind !== 'bytes') throw new Error(`request ${e.request.id}: no bytes answer`);
    const out = Buffer.from(piece.bytes);
    if (out.readInt32LE(4) !== 0) throw new Error(`FUSE errno ${-out.readInt32LE(4)}`);
    return out.subarray(16);
  });
}

/** Makes `dev` know `n` inodes: dirs d0..d(k-1) of 1000 files each, every one looked up. */
function learn(dev: PluginDevice, n: number): void {
  fuse(dev, [{ opcode: 26, nodeid: 0n, args: Buffer.from(new Uint32Array([7, 31, 65536, 0]).buffer) }]);
  const dirs = Math.ceil(n / 1000);
  const dirIds = fuse(dev, Array.from({ length: dirs }, (_, d) => ({ opcode: 1, nodeid: 1n, args: Buffer.from(`d${d}\0`) }))).map((b) =>
    b.readBigUInt64LE(0),
  );
  for (let d = 0; d < dirs; d++) {
    const count = Math.min(1000, n - d * 1000);
    fuse(dev, Array.from({ length: count }, (_, i) => ({ opcode: 1, nodeid: dirIds[d], args: Buffer.from(`file-number-${i}\0`) })));
  }
}

const STATE_CALL = 64 << 10;
let slowestCall = 0;
function timed<T>(f: () => T): T {
  const t0 = performance.now();
  const r = f();
  slowestCall = Math.max(slowestCall, performance.now() - t0);
  return r;
}

function save(dev: PluginDevice): Buffer {
  const parts: Buffer[] = [];
  let off = 0;
  for (;;) {
    const c = timed(() => dev.getState(off, STATE_CALL));
    parts.push(Buffer.from(c.bytes));
    off += c.bytes.length;
    if (c.remaining === 0) break;
  }
  return Buffer.concat(parts);
}

function load(dev: PluginDevice, state: Buffer): void {
  for (let off = 0; off < state.length; off += STATE_CALL) timed(() => dev.setState(off, state.subarray(off, off + STATE_CALL)));
  const err = timed(() => dev.finishLoad());
  if (err) throw new Error(`LOAD failed: ${err}`);
}

/** An in-memory `filesystem` capability: d<k>/file-number-<i> exist, nothing holds an fd. */
class SyntheticShare {
  readonly tag = 'bench';
  readonly readOnly = false;
  readonly migrationOnError = 'abort';
  private next = 2n;
  private readonly nodes = new Map<bigint, bigint>(); // handle -> ino
  private readonly byPath = new Map<string, bigint>();
  private attr(ino: bigint, dir: boolean): Attr {
    return {
      dev: 1, ino: Number(ino), size: 100, blocks: 1, atime: 0, mtime: 0, ctime: 0, atimeNsec: 0, mtimeNsec: 0, ctimeNsec: 0,
      mode: dir ? 0o40755 : 0o100644, nlink: 1, uid: 0, gid: 0, rdev: 0, blksize: 4096,
    };
  }
  root(): FsResult<Entry> {
    const h = this.next++;
    this.nodes.set(h, 1n);
    return { ok: true, val: { node: h, attr: this.attr(1n, true) } };
  }
  lookup(dir: bigint, name: Uint8Array): FsResult<Entry> {
    const parent = this.nodes.get(dir);
    if (parent === undefined) return { ok: false, errno: 9 };
    const key = `${parent}/${Buffer.from(name).toString()}`;
    let ino = this.byPath.get(key);
    if (ino === undefined) this.byPath.set(key, (ino = BigInt(this.byPath.size + 2)));
    const h = this.next++;
    this.nodes.set(h, ino);
    return { ok: true, val: { node: h, attr: this.attr(ino, parent === 1n) } };
  }
  getattr(h: bigint): FsResult<Attr> {
    const ino = this.nodes.get(h);
    return ino === undefined ? { ok: false, errno: 9 } : { ok: true, val: this.attr(ino, false) };
  }
  closeHandle(h: bigint): void {
    this.nodes.delete(h);
  }
  get openHandles(): number {
    return this.nodes.size;
  }
}

interface StateRow {
  variant: string;
  inodes: number;
  bytes: number;
  learnMs: number;
  saveMs: number;
  loadMs: number;
  slowestMs: number;
  firstUseMs: number;
}

async function stateBench(variant: 'real share' | 'synthetic', n: number): Promise<StateRow> {
  const bytes = readFileSync(FS_PLUGIN);
  let shares: [unknown, unknown];
  let dir = '';
  if (variant === 'real share') {
    dir = join(work, `tree-${n}`);
    for (let d = 0; d < Math.ceil(n / 1000); d++) {
      mkdirSync(join(dir, `d${d}`), { recursive: true });
      for (let i = 0; i < Math.min(1000, n - d * 1000); i++) writeFileSync(join(dir, `d${d}`, `file-number-${i}`), '');
    }
    shares = [new FsShare(dir), new FsShare(dir)];
  } else {
    shares = [new SyntheticShare(), new SyntheticShare()];
  }
  try {
    const grants = (s: unknown) => ({ grants: { filesystem: s as FsShare, log: () => {} }, memoryLimitBytes: 512 << 20 });
    const src = await loadPlugin(bytes, grants(shares[0]));
    const dst = await loadPlugin(bytes, grants(shares[1]));
    let t = performance.now();
    learn(src, n);
    const learnMs = performance.now() - t;
    slowestCall = 0;
    t = performance.now();
    const state = save(src);
    const saveMs = performance.now() - t;
    t = performance.now();
    load(dst, state);
    const loadMs = performance.now() - t;
    const slowestMs = slowestCall;
    // First use on the destination: GETATTR of every node id resolves it (node ids 2..n+dirs+1).
    const ids = Array.from({ length: n + Math.ceil(n / 1000) }, (_, i) => BigInt(i + 2));
    t = performance.now();
    for (let i = 0; i < ids.length; i += 256) {
      fuse(dst, ids.slice(i, i + 256).map((id) => ({ opcode: 3, nodeid: id, args: Buffer.alloc(16) })));
    }
    const firstUseMs = performance.now() - t;
    const held = (shares[1] as { openHandles: number }).openHandles;
    if (held < n + 1) throw new Error(`${variant}: after first use the destination holds ${held} handles, expected ${n + 1}`);
    return { variant, inodes: n, bytes: state.length, learnMs, saveMs, loadMs, slowestMs, firstUseMs };
  } finally {
    for (const s of shares) if (s instanceof FsShare) s.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------- profile summary

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
  columnNumber: number;
}
interface Profile {
  nodes: { id: number; callFrame: CallFrame; children?: number[] }[];
  samples: number[];
  timeDeltas: number[];
  startTime: number;
  endTime: number;
}

/** Self time of the busiest thread's profile in `dir`, by function and source (bundle frames mapped back). */
function summariseProfile(dir: string): void {
  const maps = new Map<string, SourceMap | null>();
  const source = (f: CallFrame): string => {
    const m = /([^/]+\.mjs)$/.exec(f.url);
    if (!m) return f.url.replace(/^.*\//, '') || (f.functionName.startsWith('wasm') ? 'wasm' : '');
    if (!maps.has(m[1])) {
      const file = join(REPO, 'dist', `${m[1]}.map`);
      maps.set(m[1], existsSync(file) ? new SourceMap(JSON.parse(readFileSync(file, 'utf8'))) : null);
    }
    const e = maps.get(m[1])?.findEntry(f.lineNumber, f.columnNumber) as { originalSource?: string; originalLine?: number } | undefined;
    return e?.originalSource ? `${e.originalSource.replace(/^.*?((host|plugins|node_modules)\/)/, '$1')}:${(e.originalLine ?? 0) + 1}` : f.url;
  };
  const files = readdirSync(dir).filter((f) => f.endsWith('.cpuprofile'));
  if (files.length === 0) throw new Error(`no .cpuprofile in ${dir}: did the host exit cleanly on SIGTERM?`);
  let best: { f: string; p: Profile; busy: number } | null = null;
  for (const f of files) {
    const p = JSON.parse(readFileSync(join(dir, f), 'utf8')) as Profile;
    const byId = new Map(p.nodes.map((n) => [n.id, n]));
    let busy = 0;
    for (let i = 0; i < p.samples.length; i++) if (byId.get(p.samples[i])!.callFrame.functionName !== '(idle)') busy += p.timeDeltas[i + 1] ?? 0;
    if (!best || busy > best.busy) best = { f, p, busy };
  }
  const { f, p, busy } = best!;
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const self = new Map<string, number>();
  for (let i = 0; i < p.samples.length; i++) {
    const cf = byId.get(p.samples[i])!.callFrame;
    if (cf.functionName === '(idle)') continue;
    const k = `${cf.functionName || '(anonymous)'} ${source(cf)}`;
    self.set(k, (self.get(k) ?? 0) + (p.timeDeltas[i + 1] ?? 0));
  }
  console.log(`\nProfile ${f} (busiest thread): busy ${(busy / 1e6).toFixed(2)} s of ${((p.endTime - p.startTime) / 1e6).toFixed(2)} s; self time:`);
  for (const [k, v] of [...self].sort((a, b) => b[1] - a[1]).slice(0, 40)) console.log(`  ${((100 * v) / busy).toFixed(1).padStart(5)}%  ${k}`);
}

// ---------------------------------------------------------------- run

const pad = (s: string, n: number) => s.padEnd(n);
const num = (v: number, d = 1) => (Number.isFinite(v) ? v.toFixed(d) : '-');

if (!existsSync(FS_PLUGIN)) throw new Error(`${FS_PLUGIN} is missing: node build.mjs --only plugins`);
const started = performance.now();

if (!argv['skip-guest']) {
  if (!hasQemu()) throw new Error('needs the guest image prerequisites (test/guest/prerequisites.ts)');
  const qemu = await ensureQemu10();
  if (argv.profile) {
    mkdirSync(argv.profile, { recursive: true });
    for (const f of readdirSync(argv.profile)) if (f.endsWith('.cpuprofile')) rmSync(join(argv.profile, f));
  }
  const program = compileGuestProgram();
  const runs: Record<Backend, Run[]> = { ours: [], virtiofsd: [] };
  const loads: number[] = [];
  const floors: number[] = [];
  for (let round = 0; round < ROUNDS; round++) {
    // Alternate the order so a drift in machine load does not favour one side.
    const order = round % 2 === 0 ? BACKENDS : [...BACKENDS].reverse();
    for (const who of order) {
      const dir = freshShare(who);
      floors.push(filesystemFloor(join(dir, 'small')));
      const t = performance.now();
      loads.push(loadavg()[0]);
      const run = who === 'ours'
        ? await withOurs(dir, (s, pid, log) => runWorkload(qemu.binary, s, pid, program, 'fs plugin', log))
        : await withVirtiofsd(dir, (s, pid, log) => runWorkload(qemu.binary, s, pid, program, 'virtiofsd 1.13', log));
      runs[who].push(run);
      console.error(`round ${round + 1}: ${who} done in ${Math.round(performance.now() - t)} ms (file system's create ${floors[floors.length - 1].toFixed(0)} us/file): ` +
        PHASES.map((p) => `${p} ${num(run[p].rate)}`).join(', '));
      // Its MIB-MiB file goes now; its 10,000 readdir entries stay until the bench exits:
      // unlinking them here would make the next back-end's creates on ext4 skip every one of
      // them (filesystemFloor above).
      for (const f of readdirSync(dir, { withFileTypes: true })) if (f.isFile()) rmSync(join(dir, f.name));
    }
  }
  const median = (xs: number[]) => {
    const s = xs.filter(Number.isFinite).sort((a, b) => a - b);
    return s.length === 0 ? NaN : s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
  };
  console.log(`\nGuest workload: ${qemu.version.replace(/ \(.*$/, '')} TCG, 1 vCPU, busybox guest, cache=auto on both; ${FILES} small files, ` +
    `${MIB} MiB sequential, ${RAND_READS} 4 KiB O_DIRECT random reads, readdir of ${DIR_ENTRIES} entries x ${READDIR_PASSES}; ` +
    `${WARMUP} files and ${WARMUP_MIB} MiB of warm-up; median of ${ROUNDS} round(s); load average ${loads.map((l) => l.toFixed(1)).join(' ')}`);
  console.log(`Shares in ${work} (${fsTypeOf(work)}, TMPDIR picks another). The file system's own CPU for a create + 100-byte write + close ` +
    `(a plain loop of this process in the share's small/, before each run): ${floors.map((f) => f.toFixed(0)).join(', ')} us/file; ` +
    'on ext4 it grows with the inodes unlinked there in the last minutes, and is part of both back-ends\' create figures.');
  const both = BACKENDS.length === 2;
  console.log(`| phase | unit | ${BACKENDS.map((b) => (b === 'ours' ? 'fs plugin' : 'virtiofsd 1.13')).join(' | ')} |${both ? ' ours/virtiofsd |' : ''} CPU/op ${BACKENDS.map((b) => (b === 'ours' ? 'ours' : 'virtiofsd')).join(' / ')} |`);
  console.log(`|---|---|${BACKENDS.map(() => '---|').join('')}${both ? '---|' : ''}---|`);
  for (const p of PHASES) {
    const u = UNIT[p];
    const rate = BACKENDS.map((b) => median(runs[b].map((r) => r[p].rate)));
    const cpu = BACKENDS.map((b) => median(runs[b].map((r) => r[p].cpuPerOp)) * u.cpuScale);
    const ratio = both ? ` ${num(rate[0] / rate[1], 2)} |` : '';
    console.log(`| ${p} | ${u.rate} | ${rate.map((r) => num(r)).join(' | ')} |${ratio} ${cpu.map((c) => num(c, u.cpuScale === 1e3 ? 2 : 1)).join(' / ')} ${u.cpuUnit} |`);
  }
  if (argv.profile && BACKENDS.includes('ours')) summariseProfile(argv.profile);
}

if (!argv['skip-state']) {
  const rows: StateRow[] = [];
  rows.push(await stateBench('real share', REAL_INODES));
  rows.push(await stateBench('synthetic', INODES));
  console.log(`\nState SAVE (get-state) + LOAD (set-state, finish-load) through the jco runtime, 64 KiB per call`);
  console.log(`${pad('variant', 12)}${pad('inodes', 9)}${pad('state', 11)}${pad('lookups', 12)}${pad('SAVE', 10)}${pad('LOAD', 10)}${pad('SAVE+LOAD', 11)}${pad('slowest', 10)}first use`);
  for (const r of rows) {
    console.log(
      `${pad(r.variant, 12)}${pad(String(r.inodes), 9)}${pad(`${num(r.bytes / 1024)} KiB`, 11)}${pad(`${num(r.learnMs, 0)} ms`, 12)}` +
        `${pad(`${num(r.saveMs)} ms`, 10)}${pad(`${num(r.loadMs)} ms`, 10)}${pad(`${num(r.saveMs + r.loadMs)} ms`, 11)}${pad(`${num(r.slowestMs)} ms`, 10)}${num(r.firstUseMs, 0)} ms`,
    );
  }
}
console.error(`total ${Math.round((performance.now() - started) / 1000)} s`);
process.exit(0);
