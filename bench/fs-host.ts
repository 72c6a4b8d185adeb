// The fs device's CPU per FUSE request in the real host process, without a guest: the built
// host (dist/vhost-wasm.mjs serve, fs.wasm, a shared directory on /tmp) driven by our own
// front-end (host/frontend/driver.ts) over its socket, one request in flight at a time, as a
// TCG guest sends them (one request per batch, so every per-call and per-wake-up cost shows).
// Far steadier than bench/fs-guest.ts on a loaded machine: no QEMU, no guest kernel.
//
//   node build.mjs && node --import tsx bench/fs-host.ts [--count 3000] [--rounds 3] [--only PHASE,...]
//        [--gap-us N] [--backend ours|virtiofsd] [--inode-file-handles never|prefer|mandatory]
//        [--profile DIR] [--host-flags '...'] [--poll-max-ns N]
//
// Per phase, the host process's CPU (every thread's time on a CPU, /proc/PID/task/*/schedstat, ns) per request,
// median and best of the rounds (on a loaded machine the best is the steadier):
//   lookup        LOOKUP of a name not looked up before in a 2000-entry directory (the guest's
//                 stat after dropping its caches: a new node each time)
//   getattr       GETATTR of a looked-up file
//   read 4K       READ of 4 KiB at a random offset of an open 64 MiB... (4 MiB) file
//   read 128K     READ of 128 KiB, sequential through that file (the guest's readahead requests)
//   write 100     WRITE of 100 bytes at offset 0 of an open file (the create's WRITE, page cached)
//   write 1M      WRITE of 1 MiB, sequential through the first 16 MiB of that file (the guest's
//                 write phase: 1 MiB writes, one in flight, no writeback cache), per request
//   read 128K pages, write 1M pages   the same, laid out as a Linux guest sends them: the data
//                 one 4 KiB page per descriptor (32 and 256 of them), through an indirect table
//   readdirplus   READDIRPLUS of the 2000-entry directory, 64 KiB replies, per entry
//   readdir       READDIR of a 10,000-entry directory (bench/fs-guest's names), 4 KiB replies as
//                 the guest kernel asks, per entry (a guest's readdir(3) after its first request)
//   readdirplus 4K  READDIRPLUS of that directory, 4 KiB replies, per entry (the guest's first
//                 request of a listing; its entries' inodes are known after the first round)
//   create        CREATE of a new file + RELEASE of its fh, per file
//   file          the guest's open(O_CREAT|O_EXCL) + write(100 bytes) + close() of a new file:
//                 LOOKUP (ENOENT), CREATE, WRITE, FLUSH, RELEASE, per file (TMPDIR picks the
//                 share's file system: /tmp is a disk here, io_uring; /dev/shm is tmpfs)
// --profile DIR: the host runs with --cpu-prof into DIR (one profile per thread; the device
// worker's is the largest). It samples wall time, so a call that blocks or is preempted (the
// eventfd write that wakes the front-end, an ext4 create) looks dearer than its CPU: for CPU,
// `perf record -g -- node --import tsx bench/fs-host.ts --host-flags=--perf-basic-prof`.
// (No callgrind here: valgrind 3.19 answers the share's openat2 with ENOSYS, so every LOOKUP fails.)
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { VhostUserFrontend, VIRTIO_F_VERSION_1 } from '../host/frontend/driver.ts';
import { spawn } from 'node:child_process';
import { BIN, REPO, assertBuilt } from '../test/helpers/host-process.ts';
import { daemonConfig, startMultiHost } from '../test/helpers/multi-host.ts';
import { startVirtiofsd } from '../test/guest/virtiofsd.ts';
import { FuseClient, dirents, direntplus, nodeOf, fhOfOpen, u32s, ioIn } from '../test/helpers/fuse.ts';

const { values: argv } = parseArgs({
  options: {
    count: { type: 'string', default: '3000' },
    rounds: { type: 'string', default: '3' },
    profile: { type: 'string' },
    'host-flags': { type: 'string' },
    only: { type: 'string' },
    'inode-file-handles': { type: 'string' },
    'gap-us': { type: 'string', default: '0' },
    backend: { type: 'string', default: 'ours' },
    'poll-max-ns': { type: 'string' },
  },
});
const COUNT = Number(argv.count);
const ROUNDS = Number(argv.rounds);
const ENTRIES = 2000;
/** The readdir phases' directory, as bench/fs-guest makes it. */
const DIR_ENTRIES = 10_000;

assertBuilt();
const top = mkdtempSync(join(tmpdir(), 'bench-fs-host-'));
const share = join(top, 'share');
mkdirSync(join(share, 'many'), { recursive: true });
for (let i = 0; i < ENTRIES; i++) writeFileSync(join(share, 'many', `f${i}`), `${i}`);
mkdirSync(join(share, 'dir'));
for (let i = 0; i < DIR_ENTRIES; i++) writeFileSync(join(share, 'dir', `entry-${String(i).padStart(6, '0')}`), '');
writeFileSync(join(share, 'big'), Buffer.alloc(4 << 20, 1));
mkdirSync(join(share, 'new'));
const sock = join(top, 'fs.sock');
const spec = [{ label: 'fs', socket: sock, plugin: join(REPO, 'dist', 'plugins', 'fs.wasm'), ...(argv['poll-max-ns'] !== undefined ? { pollMaxNs: Number(argv['poll-max-ns']) } : {}), options: { filesystem: { dir: share, readOnly: false, ...(argv['inode-file-handles'] ? { inodeFileHandles: argv['inode-file-handles'] } : {}) } } }];
let host: { pid: number; stop(): Promise<unknown> };
if (argv.backend === 'virtiofsd') {
  // The same requests against Rust virtiofsd 1.13 (Debian trixie's, as bench/fs-guest.ts runs
  // it: --sandbox none --cache auto, its defaults otherwise), for its CPU per request.
  if (argv.profile || argv['host-flags'] || argv['inode-file-handles']) throw new Error('--backend virtiofsd takes none of --profile, --host-flags, --inode-file-handles');
  host = await startVirtiofsd(share, sock, ['--cache', 'auto']);
} else if (argv.backend !== 'ours') {
  throw new Error(`--backend is ours or virtiofsd, not "${argv.backend}"`);
} else if (argv.profile || argv['host-flags']) {
  // --cpu-prof (and --perf-basic-prof) are not allowed in NODE_OPTIONS: the host is started here with them.
  const flags = argv['host-flags']?.split(' ').filter(Boolean) ?? [];
  if (argv.profile) {
    mkdirSync(resolve(argv.profile), { recursive: true });
    flags.push('--cpu-prof', `--cpu-prof-dir=${resolve(argv.profile)}`);
  }
  writeFileSync(join(top, 'daemon.json'), JSON.stringify(daemonConfig(spec)!.config));
  const child = spawn(process.execPath, [...flags, BIN, 'serve', '--config', join(top, 'daemon.json')], { stdio: 'inherit' });
  while (!existsSync(sock)) await new Promise((r) => setTimeout(r, 50));
  const exited = new Promise((r) => child.once('close', r));
  host = { pid: child.pid!, stop: () => (child.kill('SIGTERM'), exited) };
} else {
  host = await startMultiHost(spec);
}
// Indirect tables of up to 300 entries: the '... pages' phases send a guest's page-per-descriptor layout.
const fe = await VhostUserFrontend.connect(sock, { memoryBytes: 64 << 20, queues: [64, 256], features: 1n << BigInt(VIRTIO_F_VERSION_1), indirect: 300 });
const fuse = new FuseClient(fe);
// virtiofsd reads fuse_init_in's 48-byte extension when FUSE_INIT_EXT is among the flags (as the
// kernel sends it since 7.36); FuseClient.init() sends the 16-byte form our plugin takes too.
const init = argv.backend === 'virtiofsd' ? await fuse.req(26, 0n, Buffer.concat([u32s(7, 31, 65536, 0xffffffff), Buffer.alloc(48)])) : await fuse.init();
if (init.error) throw new Error(`INIT failed: errno ${init.error}`);
// --gap-us: the front-end idles this long after each reply before its next request (Atomics.wait,
// no event loop turn), as a TCG guest does for ~100-300 us between requests: the host's worker
// then sleeps between requests and wakes with whatever else ran on its CPU meanwhile.
const GAP_MS = Number(argv['gap-us']) / 1000;
if (!(GAP_MS >= 0)) throw new Error(`--gap-us must be a number of microseconds, not "${argv['gap-us']}"`);
const gapCell = new Int32Array(new SharedArrayBuffer(4));
const ok = (r: { error: number; body: Buffer }, what: string) => {
  if (r.error) throw new Error(`${what}: errno ${r.error}`);
  if (GAP_MS > 0) Atomics.wait(gapCell, 0, 0, GAP_MS);
  return r;
};

const many = nodeOf(ok(await fuse.lookup(1n, 'many'), 'lookup many'));
const newDir = nodeOf(ok(await fuse.lookup(1n, 'new'), 'lookup new'));
const dir = nodeOf(ok(await fuse.lookup(1n, 'dir'), 'lookup dir'));
const big = nodeOf(ok(await fuse.lookup(1n, 'big'), 'lookup big'));
const fh = fhOfOpen(ok(await fuse.open(big, 0), 'open big'));
const scratchCreated = ok(await fuse.create(newDir, 'scratch', 0o101 /* O_WRONLY|O_CREAT */), 'create scratch');
const scratch = nodeOf(scratchCreated);
const wfh = scratchCreated.body.readBigUInt64LE(128);
const forget = (node: bigint) => {
  // FORGET has no reply: send it with a BATCH_FORGET-free single FORGET and do not wait.
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(1n, 0);
  return fuse.req(2, node, b, 0).catch(() => undefined);
};

/**
 * A request laid out as a Linux guest's virtio-fs driver sends READ and WRITE: the in header and
 * the op's arguments in one buffer, then the WRITE's data one page per descriptor; the reply's
 * out header (and a WRITE's fuse_write_out) in one buffer, then the READ's data one page per
 * descriptor; through an indirect table.
 */
let pagedUnique = 1n << 40n;
async function pagedReq(opcode: number, nodeid: bigint, args: Buffer, data: Buffer | null, outArgs: number, readPages: number): Promise<{ error: number; len: number }> {
  const h = Buffer.alloc(40);
  h.writeUInt32LE(40 + args.length + (data?.length ?? 0), 0);
  h.writeUInt32LE(opcode, 4);
  h.writeBigUInt64LE(pagedUnique++, 8);
  h.writeBigUInt64LE(nodeid, 16);
  const readable: Buffer[] = [Buffer.concat([h, args])];
  if (data !== null) for (let at = 0; at < data.length; at += 4096) readable.push(data.subarray(at, at + 4096));
  const c = await fe.queues[1].submit(readable, [16 + outArgs, ...new Array<number>(readPages).fill(4096)], { indirect: true });
  const out = Buffer.from(c.data.subarray(0, c.len));
  const error = -out.readInt32LE(4) || 0;
  if (error) throw new Error(`op ${opcode}: errno ${error}`);
  if (GAP_MS > 0) Atomics.wait(gapCell, 0, 0, GAP_MS);
  return { error, len: c.len };
}

let created = 0;
let lookedUp = 0;
const phases: Record<string, { unit: string; run: () => Promise<number> }> = {
  lookup: {
    unit: 'lookup',
    async run() {
      const nodes: bigint[] = [];
      for (let i = 0; i < COUNT; i++) nodes.push(nodeOf(ok(await fuse.lookup(many, `f${lookedUp++ % ENTRIES}`), 'lookup')));
      void nodes;
      return COUNT;
    },
  },
  getattr: {
    unit: 'getattr',
    async run() {
      for (let i = 0; i < COUNT; i++) ok(await fuse.getattr(big), 'getattr');
      return COUNT;
    },
  },
  'read 4K': {
    unit: 'read',
    async run() {
      // The node id in the header as the kernel sends it (FuseClient.read sends 0, which our
      // plugin ignores for a READ but virtiofsd looks the inode up by).
      const b = ioIn(fh, 0n, 4096);
      for (let i = 0; i < COUNT; i++) {
        b.writeBigUInt64LE(BigInt(Math.floor(Math.random() * 1024) * 4096), 8);
        ok(await fuse.req(15, big, b, 16 + 4096), 'read');
      }
      return COUNT;
    },
  },
  // The guest's page-cache reads of a file (readahead: 128 KiB requests, the kernel's default
  // max_readahead), sequential through the 4 MiB file; per request.
  'read 128K': {
    unit: 'read',
    async run() {
      const b = ioIn(fh, 0n, 128 << 10);
      for (let i = 0; i < COUNT; i++) {
        b.writeBigUInt64LE(BigInt((i % 32) * (128 << 10)), 8);
        const r = ok(await fuse.req(15, big, b, 16 + (128 << 10)), 'read');
        if (r.body.length !== 128 << 10) throw new Error(`read: ${r.body.length} bytes, not 128 KiB`);
      }
      return COUNT;
    },
  },
  // The same, laid out as a guest sends it: the reply's data one page per descriptor.
  'read 128K pages': {
    unit: 'read',
    async run() {
      const b = ioIn(fh, 0n, 128 << 10);
      for (let i = 0; i < COUNT; i++) {
        b.writeBigUInt64LE(BigInt((i % 32) * (128 << 10)), 8);
        const r = await pagedReq(15, big, b, null, 0, 32);
        if (r.len !== 16 + (128 << 10)) throw new Error(`read: ${r.len - 16} bytes, not 128 KiB`);
      }
      return COUNT;
    },
  },
  // The create's WRITE alone: 100 bytes at offset 0 of an open file, its page cached (on a disk
  // share through io_uring, on tmpfs pwrite in turn: TMPDIR picks).
  'write 100': {
    unit: 'write',
    async run() {
      const req = Buffer.concat([ioIn(wfh, 0n, 100), Buffer.alloc(100, 0x62)]);
      for (let i = 0; i < COUNT; i++) {
        const r = ok(await fuse.req(16, scratch, req), 'write');
        if (r.body.readUInt32LE(0) !== 100) throw new Error(`write: ${r.body.readUInt32LE(0)} bytes, not 100`);
      }
      return COUNT;
    },
  },
  // The guest's sequential write phase: 1 MiB FUSE_WRITEs (max_write), one in flight, through
  // the first 16 MiB of the scratch file (page cached after the first round).
  'write 1M': {
    unit: 'write',
    async run() {
      const req = Buffer.concat([ioIn(wfh, 0n, 1 << 20), Buffer.alloc(1 << 20, 0x63)]);
      for (let i = 0; i < COUNT; i++) {
        req.writeBigUInt64LE(BigInt((i % 16) << 20), 8);
        const r = ok(await fuse.req(16, scratch, req), 'write');
        if (r.body.readUInt32LE(0) !== 1 << 20) throw new Error(`write: ${r.body.readUInt32LE(0)} bytes, not 1 MiB`);
      }
      return COUNT;
    },
  },
  // The same, laid out as a guest sends it: the data one page per descriptor (256 of them).
  'write 1M pages': {
    unit: 'write',
    async run() {
      const args = ioIn(wfh, 0n, 1 << 20);
      const data = Buffer.alloc(1 << 20, 0x64);
      for (let i = 0; i < COUNT; i++) {
        args.writeBigUInt64LE(BigInt((i % 16) << 20), 8);
        await pagedReq(16, scratch, args, data, 8 /* fuse_write_out */, 0);
      }
      return COUNT;
    },
  },
  readdirplus: {
    unit: 'entry',
    async run() {
      let entries = 0;
      for (let round = 0; round < Math.max(1, Math.floor(COUNT / 1000)); round++) {
        const dh = fhOfOpen(ok(await fuse.req(27, many, u32s(0, 0)), 'opendir'));
        let off = 0n;
        for (;;) {
          const out = ok(await fuse.req(44, many, ioIn(dh, off, 65536), 65536 + 16), 'readdirplus').body;
          if (out.length === 0) break;
          const listed = direntplus(out);
          off = listed[listed.length - 1].off;
          entries += listed.length;
        }
        const rel = Buffer.alloc(24);
        rel.writeBigUInt64LE(dh, 0);
        ok(await fuse.req(29, many, rel), 'releasedir');
      }
      return entries;
    },
  },
  readdir: {
    unit: 'entry',
    run: () => listDir(28, 4096),
  },
  'readdirplus 4K': {
    unit: 'entry',
    run: () => listDir(44, 4096),
  },
  create: {
    unit: 'file',
    async run() {
      const n = Math.max(1, Math.floor(COUNT / 3));
      for (let i = 0; i < n; i++) {
        const r = ok(await fuse.create(newDir, `c${created++}`, 0o101 /* O_WRONLY|O_CREAT */), 'create');
        // fuse_entry_out (128 bytes), then fuse_open_out: its fh first.
        const rel = Buffer.alloc(24);
        rel.writeBigUInt64LE(r.body.readBigUInt64LE(128), 0);
        ok(await fuse.req(18, nodeOf(r), rel), 'release');
      }
      return n;
    },
  },
  // The guest's open(O_CREAT|O_EXCL) + write(100 bytes) + close(), request for request as its
  // kernel sends them (a negative LOOKUP, CREATE, WRITE, FLUSH, RELEASE), per file.
  file: {
    unit: 'file',
    async run() {
      const n = Math.max(1, Math.floor(COUNT / 5));
      const data = Buffer.alloc(100, 0x61);
      for (let i = 0; i < n; i++) {
        const name = `w${created++}`;
        const miss = await fuse.lookup(newDir, name);
        if (miss.error !== 2) throw new Error(`lookup of a new name: errno ${miss.error}, not ENOENT`);
        const r = ok(await fuse.create(newDir, name, 0o301 /* O_WRONLY|O_CREAT|O_EXCL */), 'create');
        const node = nodeOf(r);
        const fhNew = r.body.readBigUInt64LE(128);
        const wrote = ok(await fuse.req(16, node, Buffer.concat([ioIn(fhNew, 0n, data.length), data])), 'write');
        if (wrote.body.readUInt32LE(0) !== data.length) throw new Error(`write: ${wrote.body.readUInt32LE(0)} bytes, not ${data.length}`);
        const fl = Buffer.alloc(24);
        fl.writeBigUInt64LE(fhNew, 0);
        ok(await fuse.req(25, node, fl), 'flush');
        const rel = Buffer.alloc(24);
        rel.writeBigUInt64LE(fhNew, 0);
        ok(await fuse.req(18, node, rel), 'release');
      }
      return n;
    },
  },
};
void forget;

/** One listing of `dir/` (opendir, READDIR or READDIRPLUS replies of `size` bytes to the end, releasedir): its entries. */
async function listDir(op: 28 | 44, size: number): Promise<number> {
  const dh = fhOfOpen(ok(await fuse.req(27, dir, u32s(0, 0)), 'opendir'));
  let off = 0n;
  let entries = 0;
  for (;;) {
    const out = ok(await fuse.req(op, dir, ioIn(dh, off, size), size + 16), op === 28 ? 'readdir' : 'readdirplus').body;
    if (out.length === 0) break;
    const listed = op === 28 ? dirents(out) : direntplus(out);
    off = listed[listed.length - 1].off;
    entries += listed.length;
  }
  const rel = Buffer.alloc(24);
  rel.writeBigUInt64LE(dh, 0);
  ok(await fuse.req(29, dir, rel), 'releasedir');
  if (entries !== DIR_ENTRIES + 2) throw new Error(`listing of dir/ saw ${entries} entries, not ${DIR_ENTRIES + 2}`);
  return entries;
}
if (argv.only) {
  // One phase alone (a profile of one kind of request): --only getattr,lookup
  const keep = argv.only.split(',');
  for (const k of keep) if (!(k in phases)) throw new Error(`--only: '${k}' is not a phase (${Object.keys(phases).join(', ')})`);
  for (const k of Object.keys(phases)) if (!keep.includes(k)) delete phases[k];
}

/** Nanoseconds the host's threads (alive now) have run; a thread that ended between two reads is lost, none do here. */
function cpuNs(): number {
  let ns = 0;
  for (const t of readdirSync(`/proc/${host.pid}/task`)) {
    try {
      ns += Number(readFileSync(`/proc/${host.pid}/task/${t}/schedstat`, 'utf8').split(' ')[0]);
    } catch {
      // the thread ended
    }
  }
  return ns;
}
const results: Record<string, number[]> = {};
for (let round = 0; round < ROUNDS + 1; round++) {
  for (const [name, p] of Object.entries(phases)) {
    const t0 = cpuNs();
    const n = await p.run();
    const us = (cpuNs() - t0) / 1000 / n;
    if (round > 0) (results[name] ??= []).push(us); // round 0 warms the JIT up
  }
}
const median = (v: number[]) => v.slice().sort((a, b) => a - b)[Math.floor(v.length / 2)];
const fmt = (x: number) => x.toFixed(x < 10 ? 2 : 1);
console.log(`host CPU per request (median of ${ROUNDS} rounds, ${COUNT} requests per phase, one in flight; host pid ${host.pid}, load average ${loadavg().map((x) => x.toFixed(1)).join(' ')})`);
for (const [name, v] of Object.entries(results)) {
  console.log(`${name.padEnd(12)} ${fmt(median(v)).padStart(8)} us/${phases[name].unit}  best ${fmt(Math.min(...v)).padStart(6)}   (rounds: ${v.map(fmt).join(', ')})`);
}
await fe.close();
await host.stop();
rmSync(top, { recursive: true, force: true });
