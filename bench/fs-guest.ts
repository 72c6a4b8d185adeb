// A real guest's file workload against the fs plugin and against the C virtiofsd, in one run,
// under the same QEMU 7.2 (system qemu-system-x86_64, TCG, 1 vCPU) and the same busybox guest;
// then the cost of the plugin's state SAVE + LOAD for many known inodes.
//
//   node --import tsx bench/fs-guest.ts [--files N] [--mib M] [--inodes N] [--rounds R]
//
// Guest workload: a small static C program (compiled here with gcc -static, put in the
// initrd) times with CLOCK_MONOTONIC inside the guest:
//   create  N small files (open O_CREAT|O_EXCL, write 100 bytes, close)     files/s
//   stat    each of them after dropping the guest's caches (LOOKUP+GETATTR)  files/s
//   unlink  each of them                                                      files/s
//   write   one M MiB file sequentially in 1 MiB writes, then fsync           MB/s
//   read    it back after dropping the guest's page cache                     MB/s
// Both servers get a fresh empty directory. virtiofsd runs as the QEMU test runs it
// (-o cache=auto -o sandbox=chroot); ours with --call-deadline 5000. The guest's own cost
// (TCG) is in both numbers: the ratio says how much slower the whole path is with us.
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
// Bounded: each guest run has a 180 s timeout, the create phase stops after 20 s.

import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { FsShare, type Attr, type Entry, type FsResult } from '../host/fs/index.ts';
import { loadPlugin, type PluginDevice } from '../host/plugin/index.ts';
import { bootGuest, hasQemu } from '../test/guest/qemu.ts';
import { REPO, startHost } from '../test/helpers/host-process.ts';

const { values: argv } = parseArgs({
  options: {
    files: { type: 'string', default: '1000' },
    mib: { type: 'string', default: '64' },
    inodes: { type: 'string', default: '100000' },
    'real-inodes': { type: 'string', default: '100000' },
    rounds: { type: 'string', default: '1' },
    'skip-guest': { type: 'boolean', default: false },
  },
});
const FILES = Number(argv.files);
const MIB = Number(argv.mib);
const INODES = Number(argv.inodes);
const REAL_INODES = Number(argv['real-inodes']);
const ROUNDS = Number(argv.rounds);
const FS_PLUGIN = join(REPO, 'dist', 'plugins', 'fs.wasm');
const VIRTIOFSD = '/usr/lib/qemu/virtiofsd';
const work = mkdtempSync(join(tmpdir(), 'bench-fs-guest-'));
process.on('exit', () => rmSync(work, { recursive: true, force: true }));

// ---------------------------------------------------------------- guest workload

const FSBENCH_C = String.raw`
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
static void drop(void) { sync(); int fd = open("/proc/sys/vm/drop_caches", O_WRONLY); if (fd >= 0) { if (write(fd, "3", 1) != 1) perror("drop_caches"); close(fd); } }
static void die(const char *w) { perror(w); printf("FSBENCH-FAILED %s\n", w); exit(1); }
int main(int argc, char **argv) {
  if (argc < 5) return 2;
  int n = atoi(argv[2]), mib = atoi(argv[3]);
  double budget = atof(argv[4]);
  static char buf[1 << 20];
  char p[256];
  memset(buf, 'x', sizeof buf);
  if (chdir(argv[1]) || mkdir("small", 0755)) die("setup");
  double t0 = now();
  int made = 0;
  while (made < n && now() - t0 < budget) {
    snprintf(p, sizeof p, "small/f%d", made);
    int fd = open(p, O_CREAT | O_EXCL | O_WRONLY, 0644);
    if (fd < 0 || write(fd, buf, 100) != 100 || close(fd)) die("create");
    made++;
  }
  printf("RESULT create %d %.6f\n", made, now() - t0);
  drop();
  struct stat st;
  t0 = now();
  for (int i = 0; i < made; i++) {
    snprintf(p, sizeof p, "small/f%d", i);
    if (stat(p, &st) || st.st_size != 100) die("stat");
  }
  printf("RESULT stat %d %.6f\n", made, now() - t0);
  t0 = now();
  for (int i = 0; i < made; i++) {
    snprintf(p, sizeof p, "small/f%d", i);
    if (unlink(p)) die("unlink");
  }
  printf("RESULT unlink %d %.6f\n", made, now() - t0);
  t0 = now();
  int fd = open("big", O_CREAT | O_TRUNC | O_WRONLY, 0644);
  if (fd < 0) die("open big");
  for (int i = 0; i < mib; i++) if (write(fd, buf, sizeof buf) != (ssize_t)sizeof buf) die("write");
  if (fsync(fd) || close(fd)) die("fsync");
  printf("RESULT write %d %.6f\n", mib, now() - t0);
  drop();
  t0 = now();
  fd = open("big", O_RDONLY);
  if (fd < 0) die("open big for reading");
  long long total = 0;
  for (;;) { ssize_t r = read(fd, buf, sizeof buf); if (r < 0) die("read"); if (r == 0) break; total += r; }
  close(fd);
  if (total != (long long)mib << 20) die("short read");
  printf("RESULT read %d %.6f\n", mib, now() - t0);
  if (unlink("big") || rmdir("small")) die("cleanup");
  printf("FSBENCH-DONE\n");
  return 0;
}
`;

type Phase = 'create' | 'stat' | 'unlink' | 'write' | 'read';
const PHASES: Phase[] = ['create', 'stat', 'unlink', 'write', 'read'];
type Rates = Record<Phase, number>;

function compileGuestProgram(): Uint8Array {
  const src = join(work, 'fsbench.c');
  const bin = join(work, 'fsbench');
  writeFileSync(src, FSBENCH_C);
  execFileSync('gcc', ['-static', '-O2', '-o', bin, src], { stdio: 'inherit' });
  return readFileSync(bin);
}

async function runWorkload(socket: string, program: Uint8Array, label: string, log: () => string): Promise<Rates> {
  const r = await bootGuest({
    timeoutMs: 180_000,
    memMiB: 512,
    qemuArgs: ['-chardev', `socket,id=fs0,path=${socket}`, '-device', 'vhost-user-fs-pci,chardev=fs0,tag=bench'],
    files: { 'bin/fsbench': program },
    script: `set -e\nmount -t virtiofs bench /mnt\n/bin/fsbench /mnt ${FILES} ${MIB} 20\numount /mnt\n`,
  });
  const out = r.scriptOutput.replace(/\r/g, '');
  if (r.exitCode !== 0 || !out.includes('FSBENCH-DONE')) {
    throw new Error(`${label}: guest run failed (exit ${r.exitCode}, timedOut ${r.timedOut})\n${out.slice(-3000)}\n${r.qemuStderr}\n--- server ---\n${log().slice(-3000)}`);
  }
  const rates = {} as Rates;
  for (const m of out.matchAll(/^RESULT (\w+) (\d+) ([\d.]+)$/gm)) {
    const [, phase, count, secs] = m;
    // create/stat/unlink: files per second; write/read: MB (10^6 bytes) per second.
    rates[phase as Phase] = phase === 'write' || phase === 'read' ? (Number(count) * 1.048576) / Number(secs) : Number(count) / Number(secs);
  }
  return rates;
}

async function withOurs<T>(dir: string, fn: (socket: string, log: () => string) => Promise<T>): Promise<T> {
  const host = await startHost(['--socket-path', '{socket}', '--plugin', FS_PLUGIN, '--shared-dir', dir, '--tag', 'bench', '--call-deadline', '5000']);
  try {
    return await fn(host.socketPath, () => host.log());
  } finally {
    await host.stop();
  }
}

async function withVirtiofsd<T>(dir: string, fn: (socket: string, log: () => string) => Promise<T>): Promise<T> {
  const socket = join(work, `virtiofsd-${Date.now()}.sock`);
  const child = spawn(VIRTIOFSD, [`--socket-path=${socket}`, '-o', `source=${dir}`, '-o', 'cache=auto', '-o', 'sandbox=chroot'], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let log = '';
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (log += d));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  try {
    const start = Date.now();
    while (!existsSync(socket)) {
      if (child.exitCode !== null || Date.now() - start > 10_000) throw new Error(`virtiofsd did not start: ${log}`);
      await new Promise((r) => setTimeout(r, 20));
    }
    return await fn(socket, () => log);
  } finally {
    if (child.exitCode === null) child.kill('SIGTERM');
    await exited;
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
      dev: 1n, ino, size: 100n, blocks: 1n, atime: 0n, mtime: 0n, ctime: 0n, atimeNsec: 0, mtimeNsec: 0, ctimeNsec: 0,
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

// ---------------------------------------------------------------- run

const pad = (s: string, n: number) => s.padEnd(n);
const num = (v: number, d = 1) => v.toFixed(d);

if (!existsSync(FS_PLUGIN)) throw new Error(`${FS_PLUGIN} is missing: node build.mjs --only plugins`);
const started = performance.now();

if (!argv['skip-guest']) {
  if (!hasQemu() || !existsSync(VIRTIOFSD)) throw new Error('needs qemu-system-x86_64 (7.2) and /usr/lib/qemu/virtiofsd');
  const program = compileGuestProgram();
  const ours: Rates[] = [];
  const theirs: Rates[] = [];
  for (let round = 0; round < ROUNDS; round++) {
    // Alternate the order so a drift in machine load does not favour one side.
    const order = round % 2 === 0 ? ['ours', 'virtiofsd'] : ['virtiofsd', 'ours'];
    for (const who of order) {
      const dir = mkdtempSync(join(work, `${who}-`));
      const t = performance.now();
      const rates = who === 'ours'
        ? await withOurs(dir, (s, log) => runWorkload(s, program, 'fs plugin', log))
        : await withVirtiofsd(dir, (s, log) => runWorkload(s, program, 'virtiofsd', log));
      (who === 'ours' ? ours : theirs).push(rates);
      console.error(`round ${round + 1}: ${who} done in ${Math.round(performance.now() - t)} ms`);
      rmSync(dir, { recursive: true, force: true });
    }
  }
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  console.log(`\nGuest workload: QEMU 7.2 TCG, 1 vCPU, busybox guest; ${FILES} small files, ${MIB} MiB sequential; median of ${ROUNDS} round(s)`);
  console.log(`${pad('phase', 10)}${pad('unit', 10)}${pad('fs plugin', 12)}${pad('virtiofsd', 12)}ours/virtiofsd`);
  for (const p of PHASES) {
    const a = median(ours.map((r) => r[p]));
    const b = median(theirs.map((r) => r[p]));
    console.log(`${pad(p, 10)}${pad(p === 'write' || p === 'read' ? 'MB/s' : 'files/s', 10)}${pad(num(a), 12)}${pad(num(b), 12)}${num(a / b, 2)}`);
  }
}

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
console.error(`total ${Math.round((performance.now() - started) / 1000)} s`);
process.exit(0);
