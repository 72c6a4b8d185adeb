// The fs plugin's state at scale (issue 12, item 2): a state of 100,000 or 1,000,000 known
// inodes streams through get-state/set-state in chunks, and a destination does not look every
// inode up again inside the downtime: saved inodes stay pending and are resolved on first use
// (or adopted by a LOOKUP of their name), while open files are reopened during the load.
//
// The states are written here in the plugin's documented format (plugins/fs/state.c): making a
// source learn a million inodes through FUSE lookups would take minutes, and the load is what
// the issue is about. The first test runs in-process against the real FsShare (so it can count
// the lookups the load makes); the second through real host processes, where a plugin call
// that overran the call deadline would mark the device broken. That deadline is 1000 ms here,
// not the default 100 ms: a call that normally takes ~1 ms was descheduled past 100 ms more
// than once on this 2-core machine shared with other work (the QEMU tests use 2000 ms for the
// same reason). It still tells a streaming plugin from one that handles the table in one call
// (the old load took 544 ms for 100,000 inodes in one call: seconds for a million). What the
// issue asks ("no single plugin call close to the deadline") is checked on each call's own
// cost, which the machine's load does not stretch: the host meters the most CPU one call ran
// (device-stats longestCallCpuSeconds), held to a quarter of the default 100 ms deadline.
// bench/fs-guest.ts reports the slowest single call (~5 ms for 100,000 inodes when quiet).
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { crc32c } from '../host/migration/checksum.ts';
import { FsShare } from '../host/fs/index.ts';
import { loadPlugin, type PluginDevice } from '../host/plugin/index.ts';
import { VhostUserFrontend, VIRTIO_F_VERSION_1, type FrontendOptions } from '../host/frontend/driver.ts';
import { loadState, saveState } from '../host/frontend/migrate.ts';
import { decodeHeader, encodeHeader, encodeTrailer, peekHeaderLength, TRAILER_SIZE } from '../host/migration/container.ts';
import { STATE_CALL_BYTES } from '../host/device/runner.ts';
import { REPO, startHost, type HostProcess } from './helpers/host-process.ts';
import { hostWork } from './helpers/host-stats.ts';
import { DEFAULT_CALL_DEADLINE_MS } from '../host/server/index.ts';
import { FuseClient, nodeOf } from './helpers/fuse.ts';
import { FsFileBackings } from '../host/fs/file-backings.ts';
import { BackingTable } from '../host/io/backing-table.ts';
import { runRequest } from './helpers/plugin-requests.ts';

const FS_PLUGIN = join(REPO, 'dist', 'plugins', 'fs.wasm');
/** What one state call may cost (CPU): a quarter of the default deadline, whatever the inode count. */
const CALL_CPU_BOUND_MS = DEFAULT_CALL_DEADLINE_MS / 4;
const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const EIO = 5;

test.before(() => {
  execFileSync(process.execPath, ['build.mjs', '--only', 'plugins'], { cwd: REPO, stdio: 'ignore' });
});

/**
 * A VFSS state (plugins/fs/state.c) of `dirs` directories d<k> under the root (ids 2..dirs+1)
 * and files f<i> spread over them, `total` inodes in all; `open` file records at the end.
 * Node id of d<k>/f<i>: fileId(k, i).
 */
function synthState(dirs: number, total: number, open: { fh: number; node: number; flags: number }[] = [], version = 2): Buffer {
  const files = total - dirs;
  let size = 32 + open.length * 16;
  for (let k = 0; k < dirs; k++) size += 24 + `d${k}`.length;
  for (let j = 0; j < files; j++) size += 24 + `f${Math.floor(j / dirs)}`.length;
  const b = Buffer.alloc(size);
  b.write('VFSS', 0, 'latin1');
  // Version 2 has the same layout (lock flags in byte 6, zero here: oldest reader 1).
  b[4] = version;
  b[5] = 1;
  b.writeUInt32LE(1, 8); // session initialized
  b.writeUInt32LE(31, 12);
  b.writeUInt32LE(0, 16);
  b.writeUInt32LE(65536, 20);
  b.writeUInt32LE(total, 24);
  b.writeUInt32LE(open.length, 28);
  let o = 32;
  const rec = (id: number, parent: number, mode: number, name: string) => {
    b.writeUInt32LE(id, o);
    b.writeUInt32LE(parent, o + 4);
    b.writeBigUInt64LE(1n, o + 8);
    b.writeUInt32LE(mode, o + 16);
    b.writeUInt32LE(name.length, o + 20);
    o += 24 + b.write(name, o + 24, 'latin1');
  };
  for (let k = 0; k < dirs; k++) rec(2 + k, 1, S_IFDIR | 0o755, `d${k}`);
  for (let j = 0; j < files; j++) rec(2 + dirs + j, 2 + (j % dirs), S_IFREG | 0o644, `f${Math.floor(j / dirs)}`);
  for (const f of open) {
    b.writeBigUInt64LE(BigInt(f.fh), o);
    b.writeUInt32LE(f.node, o + 8);
    b.writeUInt32LE(f.flags, o + 12);
    o += 16;
  }
  if (o !== size) throw new Error(`synthState: wrote ${o} of ${size} bytes`);
  return b;
}
const fileId = (dirs: number, k: number, i: number) => 2 + dirs + i * dirs + k;

/** A share with d0..d<n-1>, and f0..f9 in d0 only. */
function share(n: number) {
  const dir = mkdtempSync(join(tmpdir(), 'fs-state-scale-'));
  for (let k = 0; k < n; k++) mkdirSync(join(dir, `d${k}`));
  for (let i = 0; i < 10; i++) writeFileSync(join(dir, 'd0', `f${i}`), `file ${i}`);
  return dir;
}

/** The backing table each device of this file was loaded with (filesystem.backing registers files there). */
const tables = new WeakMap<PluginDevice, BackingTable>();

function fuseReq(dev: PluginDevice, opcode: number, nodeid: bigint, args: Buffer) {
  const table = tables.get(dev);
  if (!table) throw new Error('a device loaded without loadFs has no backing table');
  const h = Buffer.alloc(40);
  h.writeUInt32LE(40 + args.length, 0);
  h.writeUInt32LE(opcode, 4);
  h.writeBigUInt64LE(7n, 8);
  h.writeBigUInt64LE(nodeid, 16);
  // Through the host's answer checks and synchronous executor (FUSE_READ reads the file there).
  const out = Buffer.from(runRequest(dev, table, Buffer.concat([h, args]), 4096).data);
  return { error: -out.readInt32LE(4) || 0, body: out.subarray(16) };
}

test('100,000 inodes: the load makes no lookup (only an open file is reopened), a save gives the same bytes back, inodes resolve on first use', async (t) => {
  const DIRS = 100;
  const N = 100_000;
  const dir = share(DIRS);
  const fs = new FsShare(dir);
  t.teardown(() => (fs.close(), rmSync(dir, { recursive: true, force: true })));
  // The real share, with its lookups counted.
  let lookups = 0;
  const counted = new Proxy(fs, {
    get(target, prop) {
      const v = Reflect.get(target, prop, target) as unknown;
      if (prop === 'lookup') return (d: bigint, n: Uint8Array) => (lookups++, target.lookup(d, n));
      return typeof v === 'function' ? v.bind(target) : v;
    },
  });
  const logs: string[] = [];
  const backings = new BackingTable();
  const dev = await loadPlugin(readFileSync(FS_PLUGIN), {
    grants: { filesystem: counted as FsShare, backings, fsFiles: new FsFileBackings(fs, backings), log: (l, m) => logs.push(`${l}: ${m}`) },
    memoryLimitBytes: 256 << 20,
  });
  tables.set(dev, backings);
  // d0/f3 is open (O_RDONLY) as fh 1.
  // Version 1, as an older plugin saved it: it still loads.
  const state = synthState(DIRS, N, [{ fh: 1, node: fileId(DIRS, 0, 3), flags: 0 }], 1);
  const chunk = STATE_CALL_BYTES; // what the device runner hands a plugin per call
  let slowest = 0;
  const timed = <T>(f: () => T): T => {
    const t0 = performance.now();
    const r = f();
    slowest = Math.max(slowest, performance.now() - t0);
    return r;
  };
  for (let off = 0; off < state.length; off += chunk) timed(() => dev.setState(off, state.subarray(off, off + chunk)));
  t.is(timed(() => dev.finishLoad()), null);
  t.log(`${N} inodes, ${state.length} bytes: slowest load call ${slowest.toFixed(1)} ms; lookups during the load: ${lookups}`);
  t.is(lookups, 2, 'the load looked up only the open file (d0, then f3), not 100,000 inodes');
  t.deepEqual(logs, []);

  // A save of the loaded (still pending) tables gives the same state back, chunk by chunk.
  slowest = 0;
  const parts: Buffer[] = [];
  for (let off = 0; ; ) {
    const c = timed(() => dev.getState(off, chunk));
    parts.push(Buffer.from(c.bytes));
    off += c.bytes.length;
    if (c.remaining === 0) break;
  }
  t.log(`slowest save call ${slowest.toFixed(1)} ms`);
  const saved = Buffer.concat(parts);
  t.is(saved[4], 2, 'saved as version 2');
  t.is(saved[5], 1, 'readable by version 1 (the guest asked for no record locks)');
  saved[4] = 1;
  t.true(saved.equals(state), 'saved bytes = loaded bytes (but the version)');

  // First use: GETATTR resolves d0/f5 (d0 was resolved by the open file's reopen).
  const f5 = fileId(DIRS, 0, 5);
  const a = fuseReq(dev, 3, BigInt(f5), Buffer.alloc(16));
  t.is(a.error, 0);
  t.is(a.body.readBigUInt64LE(16), BigInt(statSync(join(dir, 'd0', 'f5')).ino), 'the right file');
  t.is(lookups, 3);
  // LOOKUP of a pending inode's name adopts it: the guest's node id, no new one.
  const f6 = fuseReq(dev, 1, 2n /* d0 */, Buffer.from('f6\0'));
  t.is(f6.error, 0);
  t.is(nodeOf({ error: 0, body: f6.body }), BigInt(fileId(DIRS, 0, 6)), 'LOOKUP d0/f6 answers the saved node id');
  // A name missing from this share: EIO for that node id only, one log line naming the path.
  t.is(fuseReq(dev, 3, BigInt(fileId(DIRS, 7, 2)), Buffer.alloc(16)).error, EIO);
  t.is(fuseReq(dev, 3, BigInt(fileId(DIRS, 7, 2)), Buffer.alloc(16)).error, EIO);
  t.deepEqual(logs, [
    `warn: cannot find "d7/f2" (node ${fileId(DIRS, 7, 2)}) in the destination's share: ENOENT; the guest gets EIO for it (found missing on first use after a migration)`,
  ]);
  // The open file still reads.
  const rd = Buffer.alloc(40);
  rd.writeBigUInt64LE(1n, 0);
  rd.writeUInt32LE(100, 16);
  t.is(fuseReq(dev, 15, 0n, rd).body.toString(), 'file 3');
});

test('1,000,000 inodes through real host processes: SAVE and LOAD stream in bounded calls, a save after the load gives the same state, pending inodes resolve on first use', async (t) => {
  t.timeout(600_000);
  const DIRS = 1000;
  const N = 1_000_000;
  const dir = share(DIRS);
  const hosts: HostProcess[] = [];
  const fes: VhostUserFrontend[] = [];
  t.teardown(async () => {
    for (const fe of fes) await fe.close().catch(() => {});
    await Promise.all(hosts.map((h) => h.stop()));
    rmSync(dir, { recursive: true, force: true });
  });
  // Room for a million inodes in plugin memory; the deadline: see the top of the file.
  const args = ['--socket-path', '{socket}', '--plugin', FS_PLUGIN, '--shared-dir', dir, '--memory-limit', '512M', '--call-deadline', '1000'];
  const [a, b] = await Promise.all([startHost(args), startHost(args)]);
  hosts.push(a, b);
  const opts: FrontendOptions = { memoryBytes: 16 << 20, queues: [64, 64], features: 1n << BigInt(VIRTIO_F_VERSION_1) };

  // The container a real SAVE makes (identity, section), with the plugin's section swapped for ours.
  const fa = await VhostUserFrontend.connect(a.socketPath, opts);
  fes.push(fa);
  t.is((await new FuseClient(fa).init()).error, 0);
  for (let i = 0; i < fa.queues.length; i++) await fa.stopQueue(i);
  const small = await saveState(fa.conn);
  const h = peekHeaderLength(small);
  const header = decodeHeader(small.subarray(0, h));
  t.is(header.sections.length, 1, 'one section: the plugin');
  const synth = synthState(DIRS, N);
  const head = encodeHeader(header.identity, [{ ...header.sections[0], length: synth.length }]);
  const big = Buffer.concat([head.bytes, synth, encodeTrailer(crc32c(synth, crc32c(head.bytes)))]);

  const fb = await VhostUserFrontend.connect(b.socketPath, opts);
  fes.push(fb);
  const bases: number[] = [];
  for (let i = 0; i < fb.queues.length; i++) bases.push(await fb.stopQueue(i));
  let t0 = performance.now();
  await loadState(fb.conn, big).catch((e: Error) => {
    throw new Error(`${e.message}\n${b.log()}`);
  });
  const loadMs = performance.now() - t0;
  t0 = performance.now();
  const again = await saveState(fb.conn);
  const saveMs = performance.now() - t0;
  t.log(`${N} inodes, state ${(synth.length / 2 ** 20).toFixed(1)} MiB: LOAD ${loadMs.toFixed(0)} ms, SAVE ${saveMs.toFixed(0)} ms (whole transfers through the host)`);
  const h2 = peekHeaderLength(again);
  t.true(again.subarray(h2, again.length - TRAILER_SIZE).equals(synth), 'the destination saves exactly the state it loaded');
  t.notRegex(b.log(), /deadline|NEEDS_RESET|cannot find/, 'no call overran, and nothing was looked up during the load');
  // Each call's own cost, which the machine's load does not stretch: the most CPU any one call
  // into the destination's plugin ran (every set-state and get-state chunk, finish-load), as the
  // host meters it. Well under the default deadline, so the state streams at any inode count.
  const longest = (await hostWork(b)).longestCallCpuSeconds * 1000;
  t.log(`longest plugin call on the destination: ${longest > 0 ? `${longest.toFixed(1)} ms of CPU` : 'under 2 ms'} (default deadline ${DEFAULT_CALL_DEADLINE_MS} ms)`);
  t.true(longest < CALL_CPU_BOUND_MS, `no call into the plugin ran ${CALL_CPU_BOUND_MS} ms of CPU or more (longest: ${longest.toFixed(1)} ms)`);

  for (let i = 0; i < fb.queues.length; i++) await fb.startQueue(i, bases[i]);
  const fuse = new FuseClient(fb);
  const f4 = await fuse.getattr(BigInt(fileId(DIRS, 0, 4)));
  t.is(f4.error, 0);
  t.is(f4.body.readBigUInt64LE(16), BigInt(statSync(join(dir, 'd0', 'f4')).ino));
  t.is(nodeOf(await fuse.lookup(2n /* d0 */, 'f9')), BigInt(fileId(DIRS, 0, 9)), 'LOOKUP d0/f9 adopts the saved node id');
  t.is((await fuse.getattr(BigInt(fileId(DIRS, 500, 3)))).error, EIO, 'a file missing from the share');
  await b.waitForLog(new RegExp(`cannot find "d500/f3" \\(node ${fileId(DIRS, 500, 3)}\\) in the destination's share: ENOENT; the guest gets EIO for it`), 5000);
});
