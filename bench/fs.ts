// The fs plugin's request path without a guest: FUSE requests through PluginDevice.handle
// (jco glue + C FUSE server + filesystem import + native fd syscalls), against the same
// syscalls made directly through FsShare. Run: node --import tsx bench/fs.ts
// Prints wall and CPU time per op of this process (no worker, no rings: see bench/fs-host.ts for those).
// --only NAME,...: just those (the setup runs anyway); --repeat N: each N times.
//
//   lookup+getattr   LOOKUP of an existing name (deduplicated onto one nodeid) + GETATTR, per pair
//   getattr          GETATTR of a node held by file handle
//   lookup many/fN   LOOKUP of one of 1000 names in a directory held by file handle
//   read 4K / 128K   READ of an open file (4K at random offsets), bytes per second
//   write 128K       WRITE to an open file
//   readdirplus      READDIRPLUS of a 1000-entry directory, 64 KiB replies, per listing
//   share lookup     FsShare.lookup + closeHandle directly (the host side alone)
//   share lookup-known  FsShare.lookupKnown of a name the caller holds (a warm LOOKUP's host side)
//   share getattr    FsShare.getattr of a file node held by file handle (a GETATTR's host side)
//   readdir 10000    READDIR of a 10,000-entry directory (bench/fs-guest's names), 4 KiB replies as
//                    the guest kernel asks, per listing (10,002 entries)
//   share readdir / share records   the host side of that listing alone: FsShare.readdir as the
//                    plugin called it before readdir-records (129 entries asked per 4 KiB, 102 used),
//                    and FsShare.readdirRecords, per listing
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { FsShare } from '../host/fs/index.ts';
import { loadPlugin } from '../host/plugin/index.ts';
import { FsFileBackings } from '../host/fs/file-backings.ts';
import { BackingTable } from '../host/io/backing-table.ts';
import { runRequest } from '../test/helpers/plugin-requests.ts';
import { dirents, direntplus, ioIn } from '../test/helpers/fuse.ts';

const { values: argv } = parseArgs({ options: { only: { type: 'string' }, repeat: { type: 'string', default: '1' } } });
const only = argv.only ? new Set(argv.only.split(',')) : null;
const dir = mkdtempSync(join(tmpdir(), 'bench-fs-'));
mkdirSync(join(dir, 'many'));
for (let i = 0; i < 1000; i++) writeFileSync(join(dir, 'many', `f${i}`), `${i}`);
mkdirSync(join(dir, 'dir10k'));
for (let i = 0; i < 10_000; i++) writeFileSync(join(dir, 'dir10k', `entry-${String(i).padStart(6, '0')}`), '');
writeFileSync(join(dir, 'big'), Buffer.alloc(1 << 20, 1));
const share = new FsShare(dir);
const backings = new BackingTable();
const dev = await loadPlugin(readFileSync(new URL('../dist/plugins/fs.wasm', import.meta.url)), {
  grants: { filesystem: share, backings, fsFiles: new FsFileBackings(share, backings), log: () => {} },
});

let unique = 1n;
// The writable area a guest's kernel offers: the out header plus the largest reply of the opcode
// (allocated per request by the helper, so a 1 MiB default made the bench measure Buffer.alloc).
function req(opcode: number, nodeid: bigint, args: Buffer, writableLen = 4096): Buffer {
  const h = Buffer.alloc(40);
  h.writeUInt32LE(40 + args.length, 0);
  h.writeUInt32LE(opcode, 4);
  h.writeBigUInt64LE(unique++, 8);
  h.writeBigUInt64LE(nodeid, 16);
  // Through the host's answer checks and synchronous executor (FUSE_READ/WRITE move file bytes there).
  const out = Buffer.from(runRequest(dev, backings, Buffer.concat([h, args]), writableLen).data);
  if (out.readInt32LE(4) !== 0) throw new Error(`opcode ${opcode}: errno ${-out.readInt32LE(4)}`);
  return out.subarray(16);
}
const u32s = (...v: number[]) => Buffer.from(new Uint32Array(v).buffer);
const readIn = (fh: bigint, off: number, size: number) => {
  const b = Buffer.alloc(40);
  b.writeBigUInt64LE(fh, 0);
  b.writeBigUInt64LE(BigInt(off), 8);
  b.writeUInt32LE(size, 16);
  return b;
};

req(26, 0n, u32s(7, 31, 65536, 0xffffffff));
const big = req(1, 1n, Buffer.from('big\0')).readBigUInt64LE(0);
const fh = req(14, big, u32s(2, 0)).readBigUInt64LE(0);
const many = req(1, 1n, Buffer.from('many\0')).readBigUInt64LE(0);

// Per op: wall time, and this process's CPU time (user+system, all threads) — the figure
// docs/BENCHMARKS.md compares with virtiofsd's CPU per guest operation.
function bench(name: string, n: number, fn: () => void, bytesPer = 0): void {
  if (only && !only.has(name)) return;
  for (let r = 0; r < Number(argv.repeat); r++) benchOnce(name, n, fn, bytesPer);
}
function benchOnce(name: string, n: number, fn: () => void, bytesPer: number): void {
  for (let i = 0; i < Math.min(n, 200); i++) fn();
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  for (let i = 0; i < n; i++) fn();
  const ms = performance.now() - t0;
  const c = process.cpuUsage(c0);
  const per = (ms * 1000) / n;
  const cpu = (c.user + c.system) / n;
  const rate = bytesPer ? `  ${((bytesPer * n) / (ms / 1000) / 2 ** 20).toFixed(0)} MiB/s` : '';
  console.log(`${name.padEnd(18)} ${per.toFixed(1).padStart(8)} us/op ${cpu.toFixed(1).padStart(8)} us CPU/op${rate}`);
}

bench('lookup+getattr', 5000, () => {
  const id = req(1, 1n, Buffer.from('big\0')).readBigUInt64LE(0);
  req(3, id, Buffer.alloc(16));
});
// A node the share holds by file handle, asked again: the guest's stat after its caches were dropped.
bench('getattr', 5000, () => req(3, big, Buffer.alloc(16)));
bench('lookup many/fN', 5000, () => req(1, many, Buffer.from(`f${Math.floor(Math.random() * 1000)}\0`)));
bench('read 4K', 5000, () => req(15, 0n, readIn(fh, Math.floor(Math.random() * 256) * 4096, 4096), 4096 + 16), 4096);
bench('read 128K', 2000, () => req(15, 0n, readIn(fh, 0, 131072), 131072 + 16), 131072);
const data = Buffer.alloc(131072, 2);
bench('write 128K', 2000, () => req(16, 0n, Buffer.concat([readIn(fh, 0, 131072), data])), 131072);
bench('readdirplus 1000', 50, () => {
  const dh = req(27, many, u32s(0, 0)).readBigUInt64LE(0);
  let off = 0n;
  for (;;) {
    const out = req(44, 0n, readIn(dh, Number(off), 65536), 65536 + 16);
    if (out.length === 0) break;
    // The last entry's offset is where the next listing continues.
    const listed = direntplus(out);
    off = listed[listed.length - 1].off;
  }
  const rel = Buffer.alloc(24);
  rel.writeBigUInt64LE(dh, 0);
  req(29, 0n, rel);
});
const root = share.root();
if (!root.ok) throw new Error('root');
const name = Buffer.from('big');
bench('share lookup', 20000, () => {
  const e = share.lookup(root.val.node, name);
  if (e.ok) share.closeHandle(e.val.node);
});
const held = share.lookup(root.val.node, name);
if (!held.ok) throw new Error('big');
// As the plugin passes them: u64s, BigInts.
const [heldDev, heldIno] = [BigInt(held.val.attr.dev), BigInt(held.val.attr.ino)];
bench('share lookup-known', 20000, () => {
  const e = share.lookupKnown(root.val.node, name, held.val.node, heldDev, heldIno);
  if (!e.ok || e.val.node !== 0n) throw new Error('share lookup-known: not the inode held');
});
bench('share getattr', 20000, () => {
  if (!share.getattr(held.val.node).ok) throw new Error('share getattr');
});

const dir10k = req(1, 1n, Buffer.from('dir10k\0')).readBigUInt64LE(0);
bench('readdir 10000', 20, () => {
  const dh = req(27, dir10k, u32s(0, 0)).readBigUInt64LE(0);
  let off = 0n;
  let n = 0;
  for (;;) {
    const out = req(28, 0n, ioIn(dh, off, 4096), 4096 + 16);
    if (out.length === 0) break;
    const listed = dirents(out);
    off = listed[listed.length - 1].off;
    n += listed.length;
  }
  const rel = Buffer.alloc(24);
  rel.writeBigUInt64LE(dh, 0);
  req(29, 0n, rel);
  if (n !== 10_002) throw new Error(`readdir 10000 listed ${n} entries`);
});
const node10k = share.lookup(root.val.node, Buffer.from('dir10k'));
if (!node10k.ok) throw new Error('dir10k');
/** One listing of dir10k through the share alone, `next(handle, offset)` returning the offset to go on from, or null at the end. */
const shareListing = (next: (h: bigint, off: bigint) => bigint | null) => () => {
  const h = share.open(node10k.val.node, 0o200000 /* O_DIRECTORY */);
  if (!h.ok) throw new Error('open dir10k');
  for (let off: bigint | null = 0n; off !== null; ) off = next(h.val, off);
  share.closeHandle(h.val);
};
bench('share readdir', 20, shareListing((h, off) => {
  const r = share.readdir(h, off, 129);
  if (!r.ok) throw new Error('readdir');
  return r.val.length ? r.val[Math.min(r.val.length, 102) - 1].next : null;
}));
bench('share records', 20, shareListing((h, off) => {
  const r = share.readdirRecords(h, off, 4096, 0);
  if (!r.ok) throw new Error('readdirRecords');
  if (r.val.length === 0) return null;
  const listed = dirents(Buffer.from(r.val.buffer, r.val.byteOffset, r.val.length));
  return listed[listed.length - 1].off;
}));

share.close();
rmSync(dir, { recursive: true, force: true });
