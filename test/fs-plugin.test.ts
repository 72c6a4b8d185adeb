// The virtio-fs plugin (dist/plugins/fs.wasm) driven directly with FUSE requests under the
// real jco runtime and a real FsShare: the FUSE semantics it implements, and that nothing a
// hostile guest sends (short or lying headers, unknown opcodes, bogus node ids and file
// handles, names without NUL, huge forget counts, random bytes) can trap the plugin.
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { chmodSync, chownSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FsShare } from '../host/fs/index.ts';
import { FsFileBackings } from '../host/fs/file-backings.ts';
import { BackingTable } from '../host/io/backing-table.ts';
import { loadPlugin, PluginError, type PluginDevice } from '../host/plugin/index.ts';
import { runRequest } from './helpers/plugin-requests.ts';
import { direntplus } from './helpers/fuse.ts';
import { fillInodes, mountSmallExt4 } from './helpers/small-ext4.ts';
import { mountXinoOverlay } from './helpers/xino-overlay.ts';

const root = join(import.meta.dirname, '..');
const cacheDir = mkdtempSync(join(tmpdir(), 'fs-plugin-test-'));
let bytes: Buffer;

test.before(() => {
  execFileSync(process.execPath, ['build.mjs', '--only', 'plugins'], { cwd: root, stdio: 'inherit' });
  bytes = readFileSync(join(root, 'dist', 'plugins', 'fs.wasm'));
});
test.after.always(() => rmSync(cacheDir, { recursive: true, force: true }));

const OP = {
  LOOKUP: 1, FORGET: 2, GETATTR: 3, SETATTR: 4, READLINK: 5, SYMLINK: 6, MKNOD: 8, MKDIR: 9, UNLINK: 10, RMDIR: 11,
  RENAME: 12, LINK: 13, OPEN: 14, READ: 15, WRITE: 16, STATFS: 17, RELEASE: 18, FSYNC: 20, GETXATTR: 22, FLUSH: 25,
  INIT: 26, OPENDIR: 27, READDIR: 28, RELEASEDIR: 29, ACCESS: 34, CREATE: 35, DESTROY: 38, BATCH_FORGET: 42,
  FALLOCATE: 43, READDIRPLUS: 44, RENAME2: 45, LSEEK: 46,
} as const;
const ERR = { EPERM: 1, ENOENT: 2, EIO: 5, EBADF: 9, EEXIST: 17, EINVAL: 22, EROFS: 30, ENOSYS: 38, ENOTEMPTY: 39 };

/** A little-endian struct writer. */
class W {
  private parts: Buffer[] = [];
  u32(v: number): this {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(v >>> 0);
    this.parts.push(b);
    return this;
  }
  u64(v: bigint | number): this {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(BigInt.asUintN(64, BigInt(v)));
    this.parts.push(b);
    return this;
  }
  str(s: string): this {
    this.parts.push(Buffer.from(`${s}\0`));
    return this;
  }
  raw(b: Uint8Array): this {
    this.parts.push(Buffer.from(b));
    return this;
  }
  done(): Buffer {
    return Buffer.concat(this.parts);
  }
}

interface Reply {
  len: number;
  error: number;
  unique: bigint;
  body: Buffer;
}

class Client {
  private unique = 1n;
  constructor(
    readonly dev: PluginDevice,
    readonly table: BackingTable,
  ) {}

  /** The errno of the last request's failed file I/O (0 when none failed). */
  lastIoErrno = 0;

  raw(readable: Uint8Array, writableLen = 1 << 20, queue = 1): Buffer {
    const r = runRequest(this.dev, this.table, readable, writableLen, queue);
    this.lastIoErrno = r.ioErrno;
    return Buffer.from(r.data);
  }

  /** uid/gid of the requests sent (the FUSE header's caller). */
  as = { uid: 0, gid: 0 };

  req(opcode: number, nodeid: bigint | number, args: Buffer = Buffer.alloc(0), writableLen = 1 << 20): Reply {
    const unique = this.unique++;
    const hdr = new W().u32(40 + args.length).u32(opcode).u64(unique).u64(nodeid).u32(this.as.uid).u32(this.as.gid).u32(0).u32(0).done();
    const out = this.raw(Buffer.concat([hdr, args]), writableLen);
    if (out.length === 0) return { len: 0, error: 0, unique: 0n, body: out };
    const r = { len: out.readUInt32LE(0), error: -out.readInt32LE(4) || 0, unique: out.readBigUInt64LE(8), body: out.subarray(16) };
    if (r.len !== out.length || r.unique !== unique) throw new Error(`bad reply header ${JSON.stringify({ ...r, unique: String(r.unique) })}`);
    return r;
  }

  init(): Reply {
    return this.req(OP.INIT, 0, new W().u32(7).u32(38).u32(65536).u32(0xffffffff).done());
  }
  lookup(dir: bigint | number, name: string): Reply {
    return this.req(OP.LOOKUP, dir, new W().str(name).done());
  }
  create(dir: bigint | number, name: string, flags = 0o102, mode = 0o644): Reply {
    return this.req(OP.CREATE, dir, new W().u32(flags).u32(mode).u32(0).u32(0).str(name).done());
  }
  write(fh: bigint, off: number, data: Buffer): Reply {
    return this.req(OP.WRITE, 0, new W().u64(fh).u64(off).u32(data.length).u32(0).u64(0).u32(0).u32(0).raw(data).done());
  }
  read(fh: bigint, off: number | bigint, size: number, op: number = OP.READ): Reply {
    return this.req(op, 0, new W().u64(fh).u64(off).u32(size).u32(0).u64(0).u32(0).u32(0).done());
  }
}

const nodeOf = (r: Reply) => r.body.readBigUInt64LE(0);
const fhOfCreate = (r: Reply) => r.body.readBigUInt64LE(128);

function fixture(readOnly = false, parent = tmpdir()) {
  const dir = mkdtempSync(join(parent, 'fs-plugin-share-'));
  mkdirSync(join(dir, 'sub'));
  writeFileSync(join(dir, 'hello.txt'), 'hello\n');
  const share = new FsShare(dir, { readOnly, tag: 'mytag' });
  return { dir, share };
}

/** The fs plugin on `share` with a backing table for its open files, as the device worker gives it; a Client on it. */
async function loadOn(share: FsShare | undefined, log: (l: string, m: string) => void = () => {}): Promise<{ dev: PluginDevice; c: Client }> {
  const backings = new BackingTable();
  const fsFiles = share ? new FsFileBackings(share, backings) : undefined;
  const dev = await loadPlugin(bytes, { grants: { filesystem: share, backings, fsFiles, log }, cacheDir });
  return { dev, c: new Client(dev, backings) };
}

async function setup(t: import('ava').ExecutionContext, readOnly = false, parent?: string) {
  const f = fixture(readOnly, parent);
  const logs: string[] = [];
  const backings = new BackingTable();
  const fsFiles = new FsFileBackings(f.share, backings);
  const dev = await loadPlugin(bytes, { grants: { filesystem: f.share, backings, fsFiles, log: (l, m) => logs.push(`${l}: ${m}`) }, cacheDir });
  t.teardown(() => {
    f.share.close();
    rmSync(f.dir, { recursive: true, force: true });
  });
  return { ...f, dev, c: new Client(dev, backings), logs, backings, fsFiles };
}

test('describes itself as virtio-fs with the operator tag in config space', async (t) => {
  const { dev } = await setup(t);
  t.deepEqual(dev.identity, { name: 'fs', version: '0.2.0' });
  t.like(dev.info, { deviceId: 26, numQueues: 2, features: 0n, configSize: 40, prefixLen: 4096, queuesIndependent: false });
  const cfg = Buffer.from(dev.readConfig(0, 40));
  t.is(cfg.subarray(0, 36).toString().replace(/\0+$/, ''), 'mytag');
  t.is(cfg.readUInt32LE(36), 1, 'one request queue');
});

test('INIT negotiates only flags it implements; a request before INIT is EIO', async (t) => {
  const { c } = await setup(t);
  t.is(c.lookup(1, 'hello.txt').error, ERR.EIO);
  const r = c.init();
  t.is(r.error, 0);
  t.is(r.body.readUInt32LE(0), 7);
  t.is(r.body.readUInt32LE(4), 31, 'minor capped at what we implement');
  const flags = r.body.readUInt32LE(12);
  // ASYNC_READ, POSIX_LOCKS, ATOMIC_O_TRUNC, BIG_WRITES, FLOCK_LOCKS, DO_READDIRPLUS, READDIRPLUS_AUTO, MAX_PAGES.
  t.is(flags & ~((1 << 0) | (1 << 1) | (1 << 3) | (1 << 5) | (1 << 10) | (1 << 13) | (1 << 14) | (1 << 22)), 0, `unexpected flags ${flags.toString(16)}`);
  t.is(flags & (1 << 22), 1 << 22, 'MAX_PAGES, as the kernel offered it');
  t.is(r.body.readUInt32LE(20), 1024 * 1024, 'max_write');
  t.is(r.body.readUInt16LE(28), 256, 'max_pages: 1 MiB requests');
  // Only flags the kernel offered come back; without MAX_PAGES, no max_pages (the kernel keeps its 32).
  const r2 = c.req(OP.INIT, 0, new W().u32(7).u32(38).u32(0).u32(1 << 3).done());
  t.is(r2.body.readUInt32LE(12), 1 << 3);
  t.is(r2.body.readUInt16LE(28), 0);
});

test('file operations: create, write, read, readdirplus, rename, link, symlink, unlink, forget', async (t) => {
  const { c, dir, share } = await setup(t);
  c.init();
  const base = share.openHandles;
  const cr = c.create(1, 'new.txt');
  t.is(cr.error, 0);
  const node = nodeOf(cr);
  const fh = fhOfCreate(cr);
  t.is(c.write(fh, 0, Buffer.from('abcdef')).body.readUInt32LE(0), 6);
  t.is(c.read(fh, 2, 100).body.toString(), 'cdef');
  t.is(readFileSync(join(dir, 'new.txt'), 'utf8'), 'abcdef');
  // The same inode looked up again is the same node id.
  t.is(nodeOf(c.lookup(1, 'new.txt')), node);
  t.is(c.lookup(1, 'missing').error, ERR.ENOENT);
  t.is(c.lookup(1, '..').error, ERR.EINVAL);
  // GETATTR: size 6, regular file.
  const ga = c.req(OP.GETATTR, node, new W().u32(0).u32(0).u64(0).done());
  t.is(ga.body.readBigUInt64LE(16 + 8), 6n);
  // READDIRPLUS of the root lists everything with attributes.
  const dh = c.req(OP.OPENDIR, 1, new W().u32(0).u32(0).done()).body.readBigUInt64LE(0);
  const rd = c.read(dh, 0, 8192, OP.READDIRPLUS);
  const names = direntplus(rd.body).map((e) => e.name);
  t.deepEqual(names.sort(), ['.', '..', 'hello.txt', 'new.txt', 'sub']);
  t.is(c.req(OP.RELEASEDIR, 1, new W().u64(dh).u32(0).u32(0).u64(0).done()).error, 0);
  // rename into sub, hard link back, symlink, readlink.
  const sub = nodeOf(c.lookup(1, 'sub'));
  t.is(c.req(OP.RENAME, 1, new W().u64(sub).str('new.txt').str('moved.txt').done()).error, 0);
  t.is(readFileSync(join(dir, 'sub', 'moved.txt'), 'utf8'), 'abcdef');
  const ln = c.req(OP.LINK, 1, new W().u64(node).str('again.txt').done());
  t.is(nodeOf(ln), node, 'a hard link is the same inode');
  const sl = c.req(OP.SYMLINK, 1, new W().str('sl').str('/etc/shadow').done());
  t.is(c.req(OP.READLINK, nodeOf(sl)).body.toString(), '/etc/shadow');
  t.is(c.req(OP.RMDIR, 1, new W().str('sub').done()).error, ERR.ENOTEMPTY);
  // FIFOs and sockets are made (inert: never opened by the share); device nodes are refused.
  const fifo = c.req(OP.MKNOD, 1, new W().u32(0o010644).u32(0).u32(0).u32(0).str('fifo').done());
  t.is(fifo.error, 0);
  t.true(lstatSync(join(dir, 'fifo')).isFIFO());
  t.is(c.req(OP.OPEN, nodeOf(fifo), new W().u32(0).u32(0).done()).error, 6 /* ENXIO */, 'a FIFO is never opened by the host');
  t.is(c.req(OP.MKNOD, 1, new W().u32(0o140644).u32(0).u32(0).u32(0).str('sock').done()).error, 0);
  t.true(lstatSync(join(dir, 'sock')).isSocket());
  t.is(c.req(OP.MKNOD, 1, new W().u32(0o020644).u32(0x103).u32(0).u32(0).str('null').done()).error, ERR.EPERM);
  t.is(c.req(OP.MKNOD, 1, new W().u32(0o060644).u32(0x800).u32(0).u32(0).str('sda').done()).error, ERR.EPERM);
  t.false(existsSync(join(dir, 'null')) || existsSync(join(dir, 'sda')), 'no device node was made');
  for (const n of ['fifo', 'sock']) {
    const e = c.lookup(1, n);
    t.is(c.req(OP.UNLINK, 1, new W().str(n).done()).error, 0);
    c.req(OP.FORGET, nodeOf(e), new W().u64(2).done()); // MKNOD's and this lookup's
  }
  t.is(c.req(OP.RELEASE, 1, new W().u64(fh).u32(0).u32(0).u64(0).done()).error, 0);
  t.is(c.read(fh, 0, 10).error, ERR.EBADF, 'released');
  // FORGET every lookup: the host handles go back to the baseline.
  // Lookup counts: READDIRPLUS counted one per listed entry (not "." and "..").
  const hello = nodeOf(c.lookup(1, 'hello.txt'));
  const lookups = new Map<bigint, number>([
    [node, 4], // create, lookup, readdirplus, link
    [sub, 2], // readdirplus, lookup
    [hello, 2], // readdirplus, lookup
    [nodeOf(sl), 1],
  ]);
  const bf = new W().u32(lookups.size).u32(0);
  for (const [n, k] of lookups) bf.u64(n).u64(k);
  t.is(c.req(OP.BATCH_FORGET, 0, bf.done()).len, 0, 'no reply to BATCH_FORGET');
  t.is(share.openHandles, base, 'every handle was released');
});

test('file data moves by backing-read and transfer, never through the plugin; names past the prefix are refused', async (t) => {
  const { c, dev, dir, backings, fsFiles } = await setup(t);
  c.init();
  const cr = c.create(1, 'data.bin');
  const fh = fhOfCreate(cr);
  // A write far larger than the 4096-byte prefix: all of it lands, through a transfer from byte 80.
  const payload = Buffer.alloc(100_000);
  for (let i = 0; i < payload.length; i++) payload[i] = (i * 7) & 0xff;
  t.is(c.write(fh, 5, payload).body.readUInt32LE(0), payload.length);
  t.deepEqual(readFileSync(join(dir, 'data.bin')).subarray(5), payload);
  t.is(fsFiles.size, 1, 'the open file got one backing index');
  // What the answers look like to the host.
  const readReq = new W().u32(80).u32(OP.READ).u64(999).u64(0).u32(0).u32(0).u32(0).u32(0)
    .u64(fh).u64(0).u32(65536).u32(0).u64(0).u32(0).u32(0).done();
  const [read] = dev.handle([{ kind: 'request', request: { id: 77, queue: 1, prefix: readReq, readableLen: 80, writableLen: 70_000 } }]);
  t.is(read.kind, 'answer');
  if (read.kind !== 'answer') return;
  t.deepEqual(read.answer.reply.map((p) => p.kind), ['bytes', 'backing-read'], 'the out-header, then the file straight into the guest');
  t.is(read.answer.lengthAt, 0, 'a short read at EOF rewrites the header len');
  const piece = read.answer.reply[1];
  t.true(piece.kind === 'backing-read' && backings.get(piece.extent.backing) !== undefined && piece.extent.len === 65536);
  const wr = Buffer.concat([new W().u32(80 + 10).u32(OP.WRITE).u64(1000).u64(0).u32(0).u32(0).u32(0).u32(0)
    .u64(fh).u64(0).u32(10).u32(0).u64(0).u32(0).u32(0).done(), Buffer.alloc(10, 1)]);
  const [write] = dev.handle([{ kind: 'request', request: { id: 78, queue: 1, prefix: wr, readableLen: wr.length, writableLen: 24 } }]);
  t.true(write.kind === 'answer' && write.answer.transfers.length === 1 && write.answer.transfers[0].source === 80 && write.answer.transfers[0].to.len === 10);
  // A short read at the end of the file: the header says how much came.
  const tail = c.read(fh, payload.length + 5 - 3, 4096);
  t.is(tail.len, 16 + 3);
  t.deepEqual(tail.body, payload.subarray(payload.length - 3));
  // A file opened read-only takes no transfer: EBADF without any I/O; a write-only one fails its read in the I/O (io-failed).
  const ro = c.req(OP.OPEN, nodeOf(cr), new W().u32(0).u32(0).done()).body.readBigUInt64LE(0);
  t.is(c.write(ro, 0, Buffer.from('x')).error, ERR.EBADF);
  const wo = c.req(OP.OPEN, nodeOf(cr), new W().u32(1).u32(0).done()).body.readBigUInt64LE(0);
  t.is(c.read(wo, 0, 10).error, ERR.EBADF);
  t.is(c.lastIoErrno, ERR.EBADF, 'the failure came back from the I/O, and the plugin answered it');
  // Names and targets past what the plugin sees.
  t.is(c.lookup(1, 'n'.repeat(5000)).error, 36 /* ENAMETOOLONG */);
  t.is(c.req(OP.SYMLINK, 1, new W().str('ln').str('t'.repeat(4090)).done()).error, 36);
  t.is(c.lookup(1, 'data.bin').error, 0, 'still serving');
});

test('a read-only grant answers mutations with EROFS', async (t) => {
  const { c, dir } = await setup(t, true);
  c.init();
  t.is(c.create(1, 'x').error, ERR.EROFS);
  t.is(c.req(OP.MKDIR, 1, new W().u32(0o755).u32(0).str('d').done()).error, ERR.EROFS);
  t.is(c.req(OP.UNLINK, 1, new W().str('hello.txt').done()).error, ERR.EROFS);
  const node = nodeOf(c.lookup(1, 'hello.txt'));
  t.is(c.req(OP.OPEN, node, new W().u32(1).u32(0).done()).error, ERR.EROFS);
  const fh = c.req(OP.OPEN, node, new W().u32(0).u32(0).done()).body.readBigUInt64LE(0);
  t.is(c.read(fh, 0, 100).body.toString(), 'hello\n');
  t.is(c.write(fh, 0, Buffer.from('x')).error, ERR.EROFS);
  t.true(existsSync(join(dir, 'hello.txt')));
});

test('malformed requests get EINVAL, unknown opcodes ENOSYS, bogus ids ENOENT/EBADF', async (t) => {
  const { c } = await setup(t);
  c.init();
  // Shorter than a header: EINVAL with the unique we could see, or nothing at all.
  const short = c.raw(new W().u32(16).u32(OP.GETATTR).u64(77).done());
  t.is(short.readInt32LE(4), -ERR.EINVAL);
  t.is(short.readBigUInt64LE(8), 77n);
  t.is(c.raw(Buffer.from([1, 2, 3])).length, 16);
  t.is(c.raw(Buffer.alloc(0)).length, 16);
  t.is(c.raw(Buffer.alloc(64), 8).length, 0, 'no room for even a header: empty answer');
  // A header whose len is larger than what was sent, or smaller than a header.
  const lying = new W().u32(4000).u32(OP.GETATTR).u64(5).u64(1).u32(0).u32(0).u32(0).u32(0).done();
  t.is(c.raw(lying).readInt32LE(4), -ERR.EINVAL);
  const tiny = new W().u32(8).u32(OP.GETATTR).u64(5).u64(1).u32(0).u32(0).u32(0).u32(0).done();
  t.is(c.raw(tiny).readInt32LE(4), -ERR.EINVAL);
  t.is(c.req(9999, 1).error, ERR.ENOSYS);
  t.is(c.req(OP.GETXATTR, 1, new W().u32(0).u32(0).str('user.x').done()).error, ERR.ENOSYS);
  t.is(c.req(OP.GETATTR, 123456, new W().u32(0).u32(0).u64(0).done()).error, ERR.ENOENT);
  t.is(c.req(OP.GETATTR, 2n ** 64n - 1n, new W().u32(0).u32(0).u64(0).done()).error, ERR.ENOENT);
  t.is(c.read(999n, 0, 10).error, ERR.EBADF);
  t.is(c.read(0n, 0, 10).error, ERR.EBADF);
  t.is(c.req(OP.LOOKUP, 1, Buffer.from('no-nul')).error, ERR.EINVAL);
  t.is(c.req(OP.SETATTR, 1, Buffer.alloc(10)).error, ERR.EINVAL, 'truncated argument struct');
  // WRITE claiming more data than it carries.
  const cr = c.create(1, 'w');
  const lie = new W().u64(fhOfCreate(cr)).u64(0).u32(1000).u32(0).u64(0).u32(0).u32(0).raw(Buffer.alloc(10)).done();
  t.is(c.req(OP.WRITE, 0, lie).error, ERR.EINVAL);
  // BATCH_FORGET claiming 2^32-1 entries but carrying one.
  t.is(c.req(OP.BATCH_FORGET, 0, new W().u32(0xffffffff).u32(0).u64(nodeOf(cr)).u64(1).done()).len, 0);
  // A reply that cannot fit: ERANGE rather than an overlong answer.
  t.is(c.req(OP.LOOKUP, 1, new W().str('hello.txt').done(), 40).error, 34);
  // Still healthy.
  t.is(c.lookup(1, 'hello.txt').error, 0);
});

test('random and mutated requests never trap the plugin', async (t) => {
  const { c, share } = await setup(t);
  c.init();
  let seed = 12345;
  const rnd = () => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32);
  const valid = [
    new W().u32(0).u32(OP.LOOKUP).u64(1).u64(1).u32(0).u32(0).u32(0).u32(0).str('hello.txt').done(),
    new W().u32(0).u32(OP.READDIRPLUS).u64(1).u64(1).u32(0).u32(0).u32(0).u32(0).u64(1).u64(0).u32(4096).u32(0).u64(0).u32(0).u32(0).done(),
    new W().u32(0).u32(OP.SETATTR).u64(1).u64(1).u32(0).u32(0).u32(0).u32(0).raw(Buffer.alloc(88)).done(),
    new W().u32(0).u32(OP.RENAME2).u64(1).u64(1).u32(0).u32(0).u32(0).u32(0).u64(1).u32(7).u32(0).str('a').str('b').done(),
  ];
  for (const v of valid) v.writeUInt32LE(v.length, 0);
  let replies = 0;
  for (let i = 0; i < 3000; i++) {
    let req: Buffer;
    if (i % 3 === 0) {
      req = Buffer.from(Array.from({ length: Math.floor(rnd() * 200) }, () => Math.floor(rnd() * 256)));
    } else {
      req = Buffer.from(valid[i % valid.length]);
      for (let k = 0; k < 1 + Math.floor(rnd() * 4); k++) req[Math.floor(rnd() * req.length)] = Math.floor(rnd() * 256);
      // Keep the opcode small sometimes so the mutation reaches argument parsing.
      if (rnd() < 0.7) req.writeUInt32LE(1 + Math.floor(rnd() * 50), 4);
      if (rnd() < 0.5) req.writeUInt32LE(req.length, 0);
    }
    const out = c.raw(req, Math.floor(rnd() * 9000));
    if (out.length) {
      replies++;
      t.is(out.readUInt32LE(0), out.length);
    }
  }
  t.true(replies > 1000);
  // A mutated DESTROY may have ended the session: a fresh INIT must bring it back.
  t.is(c.init().error, 0);
  t.is(c.lookup(1, 'hello.txt').error, 0, 'still serving');
  t.true(share.openHandles < 200, `handles: ${share.openHandles}`);
});

test('without the filesystem grant INIT traps loudly', async (t) => {
  const { c } = await loadOn(undefined);
  const err = t.throws(() => c.init(), { instanceOf: PluginError });
  t.regex(err!.message, /filesystem was not granted/);
});

function saveState(dev: PluginDevice, chunk = 7): Buffer {
  const parts: Buffer[] = [];
  let off = 0;
  for (;;) {
    const c = dev.getState(off, chunk);
    parts.push(Buffer.from(c.bytes));
    off += c.bytes.length;
    if (c.remaining === 0) break;
  }
  return Buffer.concat(parts);
}

/** LOAD in chunks: null, or why it was refused (a chunk the plugin refused as it streamed in, or finish-load). */
function loadState(dev: PluginDevice, state: Buffer, chunk = 5): string | null {
  try {
    for (let off = 0; off < state.length; off += chunk) dev.setState(off, state.subarray(off, off + chunk));
  } catch (e) {
    if (!(e instanceof PluginError) || e.kind !== 'error') throw e;
    dev.finishLoad();
    return e.detail;
  }
  return dev.finishLoad();
}

test('state: node ids and open files survive a save on one instance and a load on another', async (t) => {
  const src = await setup(t);
  const c = src.c;
  c.init();
  const sub = nodeOf(c.lookup(1, 'sub'));
  const cr = c.create(sub, 'f.txt');
  const fnode = nodeOf(cr);
  const fh = fhOfCreate(cr);
  c.write(fh, 0, Buffer.from('0123456789'));
  // A rename after the lookup: the saved name must follow it.
  t.is(c.req(OP.RENAME, sub, new W().u64(1).str('f.txt').str('g.txt').done()).error, 0);
  const hello = nodeOf(c.lookup(1, 'hello.txt'));
  const hfh = c.req(OP.OPEN, hello, new W().u32(0).u32(0).done()).body.readBigUInt64LE(0);
  // An open file whose name is then removed cannot be found again on the destination.
  const gone = c.create(1, 'gone.txt');
  t.is(c.req(OP.UNLINK, 1, new W().str('gone.txt').done()).error, 0);
  const dh = c.req(OP.OPENDIR, sub, new W().u32(0).u32(0).done()).body.readBigUInt64LE(0);

  const state = saveState(src.dev);
  t.is(state.subarray(0, 4).toString(), 'VFSS');
  t.deepEqual(saveState(src.dev, 1 << 20), state, 'chunking does not change the state');

  // The destination: a fresh instance on its own FsShare of the same tree.
  const dstShare = new FsShare(src.dir, { tag: 'mytag' });
  t.teardown(() => dstShare.close());
  const { dev: dst, c: d } = await loadOn(dstShare);
  t.is(loadState(dst, state), null);
  // No INIT needed: the session came with the state. Same ids, same files.
  t.is(d.read(fh, 0, 100).body.toString(), '0123456789');
  t.is(d.write(fh, 10, Buffer.from('AB')).error, 0);
  t.is(readFileSync(join(src.dir, 'g.txt'), 'utf8'), '0123456789AB');
  t.is(d.req(OP.GETATTR, fnode, new W().u32(0).u32(0).u64(0).done()).body.readBigUInt64LE(24), 12n);
  t.is(d.read(hfh, 0, 100).body.toString(), 'hello\n');
  t.is(nodeOf(d.lookup(1, 'hello.txt')), hello, 'a fresh lookup finds the same node id');
  // Unlinked through the server while open: no destination can find it, in either policy.
  t.is(d.read(fhOfCreate(gone), 0, 10).error, ERR.EIO, 'the unlinked file is not reachable');
  t.is(d.req(OP.GETATTR, nodeOf(gone), new W().u32(0).u32(0).u64(0).done()).error, ERR.EIO);
  t.is(d.read(dh, 0, 4096, OP.READDIR).error, 0, 'the directory handle was reopened');
  // The source keeps running after a save.
  t.is(c.read(fh, 0, 4).body.toString(), '0123');
  // New ids on the destination do not collide with restored ones.
  const fresh = nodeOf(d.create(1, 'fresh.txt'));
  t.not(fresh, fnode);
  t.not(fresh, hello);
});

test('state: a file gone from the destination fails the load (abort), or answers EIO (guest-error)', async (t) => {
  const src = await setup(t);
  const c = src.c;
  c.init();
  const sub = nodeOf(c.lookup(1, 'sub'));
  const cr = c.create(sub, 'kept.txt');
  const kept = nodeOf(cr);
  const fh = fhOfCreate(cr);
  c.write(fh, 0, Buffer.from('kept data'));
  const hello = nodeOf(c.lookup(1, 'hello.txt'));
  const hfh = c.req(OP.OPEN, hello, new W().u32(0).u32(0).done()).body.readBigUInt64LE(0);
  const state = saveState(src.dev);
  // The destination's share lacks sub/kept.txt (deleted behind the server's back).
  const dstDir = mkdtempSync(join(tmpdir(), 'fs-plugin-dst-'));
  t.teardown(() => rmSync(dstDir, { recursive: true, force: true }));
  execFileSync('cp', ['-a', `${src.dir}/.`, dstDir]);
  rmSync(join(dstDir, 'sub', 'kept.txt'));

  const abortShare = new FsShare(dstDir, {});
  t.teardown(() => abortShare.close());
  t.is(abortShare.migrationOnError, 'abort', 'abort is the default');
  const { dev: strict, c: strictClient } = await loadOn(abortShare);
  const msg = loadState(strict, state);
  t.regex(msg ?? '', /cannot find "sub\/kept\.txt" \(node \d+\) in the destination's share: ENOENT \(--migration-on-error abort\)/);
  // Nothing was half-loaded: the device is back to its fresh state (requests before INIT are EIO).
  t.is(strictClient.lookup(1, 'hello.txt').error, ERR.EIO);
  t.is(abortShare.openHandles, 0, 'every handle the failed load opened was closed');

  const logs: string[] = [];
  const tolerantShare = new FsShare(dstDir, { migrationOnError: 'guest-error' });
  t.teardown(() => tolerantShare.close());
  const { dev: tolerant, c: d } = await loadOn(tolerantShare, (l, m) => logs.push(`${l}: ${m}`));
  t.is(loadState(tolerant, state), null);
  t.true(logs.some((l) => /cannot find "sub\/kept\.txt".*the guest gets EIO/.test(l)), logs.join('\n'));
  t.is(d.read(fh, 0, 10).error, ERR.EIO, 'READ on the lost file handle');
  t.is(d.write(fh, 0, Buffer.from('x')).error, ERR.EIO, 'WRITE on the lost file handle');
  t.is(d.req(OP.GETATTR, kept, new W().u32(0).u32(0).u64(0).done()).error, ERR.EIO, 'GETATTR on the lost node id');
  t.is(d.req(OP.OPEN, kept, new W().u32(0).u32(0).done()).error, ERR.EIO, 'OPEN of the lost node id');
  t.is(d.req(OP.FLUSH, 0, new W().u64(fh).u32(0).u32(0).u64(0).done()).error, 0, 'close() itself succeeds');
  t.is(d.req(OP.RELEASE, 0, new W().u64(fh).u32(0).u32(0).u64(0).done()).error, 0, 'RELEASE frees it');
  t.is(d.read(fh, 0, 10).error, ERR.EBADF, 'released');
  // What was found keeps working; the name is free for a new file.
  t.is(d.read(hfh, 0, 100).body.toString(), 'hello\n');
  t.is(d.lookup(sub, 'kept.txt').error, ERR.ENOENT);
  const again = d.create(sub, 'kept.txt');
  t.is(again.error, 0);
  t.not(nodeOf(again), kept);
  t.true(existsSync(join(dstDir, 'sub', 'kept.txt')));
});

test('state: after a load, a held file deleted on the host and its inode number reused is a new nodeid on the destination', async (t) => {
  const src = await setup(t, false, ext4For(t));
  src.c.init();
  writeFileSync(join(src.dir, 'f'), 'old');
  const old = src.c.lookup(1, 'f');
  const oldId = nodeOf(old);
  const ino = old.body.readBigUInt64LE(40);
  const state = saveState(src.dev);
  const dstShare = new FsShare(src.dir, { tag: 'mytag' });
  t.teardown(() => dstShare.close());
  const { dev: dst, c: d } = await loadOn(dstShare);
  t.is(loadState(dst, state), null);
  t.is(d.req(OP.GETATTR, oldId, new W().u32(0).u32(0).u64(0).done()).error, 0, 'resolved by its name: in the index again');
  const fillers = fillInodes(src.dir);
  rmSync(join(src.dir, 'f'));
  t.true(reuseIno(src.dir, 'f', ino, 'the new file', fillers), 'the new file has the old inode number');
  const fresh = d.lookup(1, 'f');
  t.is(fresh.error, 0);
  t.not(nodeOf(fresh), oldId);
  t.is(fresh.body.readBigUInt64LE(48), 12n);
  const open = d.req(OP.OPEN, nodeOf(fresh), new W().u32(0).u32(0).done());
  t.is(d.read(open.body.readBigUInt64LE(0), 0, 100).body.toString(), 'the new file');
  t.true([ERR.ENOENT, 116].includes(d.req(OP.GETATTR, oldId, new W().u32(0).u32(0).u64(0).done()).error), 'old: ESTALE');
});

test('state: foreign, truncated and newer states are refused', async (t) => {
  const { c, dev } = await setup(t);
  c.init();
  c.lookup(1, 'hello.txt');
  const state = saveState(dev);
  const { dev: dst } = await setup(t);
  t.regex(loadState(dst, Buffer.from('VRNG\x01\0\0\0' + '\0'.repeat(40)))!, /bad magic/);
  t.regex(loadState(dst, state.subarray(0, state.length - 3))!, /truncated|does not end|bad name length/);
  const newer = Buffer.from(state);
  newer[5] = 9;
  t.regex(loadState(dst, newer)!, /newer/);
  const lying = Buffer.from(state);
  lying.writeUInt32LE(0x7fffffff, 24);
  t.regex(loadState(dst, lying)!, /inode count/);
  t.is(loadState(dst, state), null, 'the real one still loads');
});

test('less common operations: fallocate, lseek data/hole, utimens, rename2, statfs, fsync, access', async (t) => {
  const { c, dir } = await setup(t);
  c.init();
  const cr = c.create(1, 'sparse');
  const node = nodeOf(cr);
  const fh = fhOfCreate(cr);
  // FALLOCATE mode 0 grows the file.
  const fa = new W().u64(fh).u64(0).u64(8192).u32(0).u32(0).done();
  t.is(c.req(OP.FALLOCATE, 0, fa).error, 0);
  t.is(statSync(join(dir, 'sparse')).size, 8192);
  // A hole then data at 1 MiB: SEEK_DATA from 0 finds data at or before 1 MiB, SEEK_HOLE
  // from 1 MiB finds the end of that data.
  t.is(c.write(fh, 1 << 20, Buffer.alloc(4096, 1)).error, 0);
  const seek = (off: number, whence: number) => c.req(OP.LSEEK, 0, new W().u64(fh).u64(off).u32(whence).u32(0).done());
  const data = seek(20000, 3);
  t.is(data.error, 0);
  t.true(data.body.readBigUInt64LE(0) <= BigInt(1 << 20));
  t.is(seek(1 << 20, 4).body.readBigUInt64LE(0), BigInt((1 << 20) + 4096));
  t.is(seek((1 << 20) + 10000, 3).error, 6, 'SEEK_DATA past the end is ENXIO');
  // SETATTR times: explicit atime/mtime.
  const sa = Buffer.alloc(88);
  sa.writeUInt32LE(16 | 32, 0);
  sa.writeBigUInt64LE(1_000_000_000n, 32); // atime
  sa.writeBigUInt64LE(1_500_000_000n, 40); // mtime
  sa.writeUInt32LE(123, 56); // atimensec
  sa.writeUInt32LE(456, 60); // mtimensec
  const r = c.req(OP.SETATTR, node, sa);
  t.is(r.error, 0);
  t.is(r.body.readBigUInt64LE(16 + 32), 1_500_000_000n, 'mtime in the reply');
  t.is(statSync(join(dir, 'sparse'), { bigint: true }).mtimeNs, 1_500_000_000_000_000_456n);
  t.is(statSync(join(dir, 'sparse'), { bigint: true }).atimeNs, 1_000_000_000_000_000_123n);
  // RENAME2: NOREPLACE refuses an existing target; EXCHANGE swaps.
  c.create(1, 'other');
  writeFileSync(join(dir, 'other'), 'OTHER');
  const r2 = (flags: number) => c.req(OP.RENAME2, 1, new W().u64(1).u32(flags).u32(0).str('sparse').str('other').done());
  t.is(r2(1).error, ERR.EEXIST);
  t.is(r2(2).error, 0);
  t.is(readFileSync(join(dir, 'sparse'), 'utf8'), 'OTHER');
  // RENAME_WHITEOUT (overlayfs): the old name becomes a 0:0 character device nothing can open.
  t.is(r2(4).error, 0);
  t.is(readFileSync(join(dir, 'other'), 'utf8'), 'OTHER');
  const wo = lstatSync(join(dir, 'sparse'));
  t.true(wo.isCharacterDevice() && wo.rdev === 0, 'a whiteout at the old name');
  t.is(r2(8).error, ERR.EINVAL, 'an unknown rename flag is refused');
  // STATFS, FSYNC, FSYNCDIR, FLUSH, ACCESS.
  const sf = c.req(OP.STATFS, 1);
  t.is(sf.error, 0);
  t.true(sf.body.readBigUInt64LE(0) > 0n);
  t.is(sf.body.readUInt32LE(44), 255, 'namelen');
  t.is(c.req(OP.FSYNC, 0, new W().u64(fh).u32(1).u32(0).done()).error, 0);
  const dh = c.req(OP.OPENDIR, 1, new W().u32(0).u32(0).done()).body.readBigUInt64LE(0);
  t.is(c.req(30, 0, new W().u64(dh).u32(0).u32(0).done()).error, 0, 'FSYNCDIR');
  t.is(c.req(OP.FLUSH, 0, new W().u64(fh).u32(0).u32(0).u64(0).done()).error, 0);
  t.is(c.req(OP.ACCESS, 1, new W().u32(4).u32(0).done()).error, 0);
  // MKDIR + RMDIR, and a write through a directory handle is EBADF.
  const d = c.req(OP.MKDIR, 1, new W().u32(0o750).u32(0).str('dd').done());
  t.is(d.body.readUInt32LE(40 + 60) & 0o7777, 0o750, 'mode of the new directory');
  t.is(c.req(OP.RMDIR, 1, new W().str('dd').done()).error, 0);
  t.is(c.write(dh, 0, Buffer.from('x')).error, ERR.EBADF);
});

test('new files belong to the requesting uid/gid; an existing file keeps its owner', async (t) => {
  const { c, dir } = await setup(t);
  if (process.getuid?.() !== 0) return t.pass('needs root to chown');
  c.init();
  writeFileSync(join(dir, 'rootfile'), '');
  c.as = { uid: 1000, gid: 1001 };
  const cr = c.create(1, 'mine');
  t.is(cr.body.readUInt32LE(40 + 68), 1000, 'uid in the reply');
  t.like(statSync(join(dir, 'mine')), { uid: 1000, gid: 1001 });
  c.req(OP.MKDIR, 1, new W().u32(0o2775).u32(0).str('d').done());
  t.like(statSync(join(dir, 'd')), { uid: 1000, gid: 1001 });
  c.req(OP.SYMLINK, 1, new W().str('l').str('mine').done());
  t.like(lstatSync(join(dir, 'l')), { uid: 1000, gid: 1001 });
  // O_CREAT without O_EXCL on an existing (empty, root-owned) file: opened, not taken over.
  t.is(c.create(1, 'rootfile', 0o102).error, 0);
  t.like(statSync(join(dir, 'rootfile')), { uid: 0, gid: 0 });
  // In a set-group-id directory the group is the directory's.
  c.as = { uid: 0, gid: 0 };
  mkdirSync(join(dir, 'sg'));
  chownSync(join(dir, 'sg'), 0, 1234);
  chmodSync(join(dir, 'sg'), 0o2777);
  const sg = nodeOf(c.lookup(1, 'sg'));
  c.as = { uid: 1000, gid: 1001 };
  c.create(sg, 'inherit');
  t.like(statSync(join(dir, 'sg', 'inherit')), { uid: 1000, gid: 1234 });
});

test('COPY_FILE_RANGE copies inside the host between two open files; SYNCFS syncs the share', async (t) => {
  const { c, dir } = await setup(t);
  c.init();
  writeFileSync(join(dir, 'src'), 'The quick brown fox jumps over the lazy dog');
  const open = (name: string, flags: number) => {
    const node = nodeOf(c.lookup(1, name));
    return c.req(OP.OPEN, node, new W().u32(flags).u32(0).done()).body.readBigUInt64LE(0);
  };
  const src = open('src', 0);
  const dst = fhOfCreate(c.create(1, 'dst'));
  const cfr = (fhIn: bigint, offIn: number, fhOut: bigint, offOut: number, len: number, flags = 0) =>
    c.req(47, 0, new W().u64(fhIn).u64(offIn).u64(0).u64(fhOut).u64(offOut).u64(len).u64(flags).done());
  const r = cfr(src, 4, dst, 100, 15);
  t.is(r.error, 0);
  t.is(r.body.readUInt32LE(0), 15, 'fuse_write_out.size');
  const out = readFileSync(join(dir, 'dst'));
  t.is(out.length, 115);
  t.is(out.subarray(100).toString(), 'quick brown fox');
  t.is(cfr(src, 1000, dst, 0, 10).body.readUInt32LE(0), 0, 'past the end: nothing');
  t.is(cfr(src, 0, dst, 0, 10, 1).error, ERR.EINVAL, 'flags must be 0');
  t.is(cfr(src, 0, 999n, 0, 10).error, ERR.EBADF);
  t.is(cfr(dst, 0, src, 0, 10).error, ERR.EBADF, 'the destination was opened read-only');
  t.is(c.req(50, 1, new W().u64(0).done()).error, 0, 'SYNCFS');
});

/** Every entry of a listing of directory node `node` in replies of `size` bytes (READDIR or READDIRPLUS), with each reply's length. */
function listAll(c: Client, node: bigint, op: number, size: number, between: (listed: { name: Buffer }[]) => void = () => {}) {
  const dh = c.req(OP.OPENDIR, node, new W().u32(0).u32(0).done()).body.readBigUInt64LE(0);
  const entries: { name: Buffer; ino: bigint; type: number; nodeid: bigint; attrIno: bigint; size: bigint }[] = [];
  const replies: number[] = [];
  let off = 0n;
  for (;;) {
    const r = c.read(dh, off, size, op);
    if (r.error) throw new Error(`${op === OP.READDIR ? 'READDIR' : 'READDIRPLUS'} at ${off}: errno ${r.error}`);
    if (r.body.length === 0) break;
    replies.push(r.body.length);
    for (let at = 0; at < r.body.length; ) {
      const plus = op === OP.READDIRPLUS ? 128 : 0;
      const d = at + plus;
      const namelen = r.body.readUInt32LE(d + 16);
      entries.push({
        name: Buffer.from(r.body.subarray(d + 24, d + 24 + namelen)),
        ino: r.body.readBigUInt64LE(d),
        type: r.body.readUInt32LE(d + 20),
        nodeid: plus ? r.body.readBigUInt64LE(at) : 0n,
        attrIno: plus ? r.body.readBigUInt64LE(at + 40) : 0n,
        size: plus ? r.body.readBigUInt64LE(at + 48) : 0n,
      });
      off = r.body.readBigUInt64LE(d + 8);
      at = d + ((24 + namelen + 7) & ~7);
    }
    between(entries);
  }
  c.req(OP.RELEASEDIR, node, new W().u64(dh).u32(0).u32(0).u64(0).done());
  return { entries, replies };
}

/** Names a shell or a parser of replies could get wrong: spaces, control bytes, quotes, bytes that are no UTF-8, the longest. */
const AWKWARD_NAMES = [
  'with space',
  'new\nline',
  'tab\there',
  'back\\slash',
  'quote"\'',
  '-dash',
  'é😀',
  'x'.repeat(255),
  'y',
].map((n) => Buffer.from(n)).concat([Buffer.from([0xff, 0xfe, 0x41]), Buffer.from([0x80])]);

test('READDIR and READDIRPLUS page through a directory larger than a reply: every entry once, names byte for byte', async (t) => {
  const { c, dir } = await setup(t);
  c.init();
  mkdirSync(join(dir, 'big'));
  const onDisk = new Map<string, bigint>();
  const add = (name: Buffer, data: string) => {
    const path = Buffer.concat([Buffer.from(`${join(dir, 'big')}/`), name]);
    writeFileSync(path, data);
    onDisk.set(name.toString('hex'), BigInt(statSync(path).ino));
  };
  for (let i = 0; i < 700; i++) add(Buffer.from(`entry-${String(i).padStart(6, '0')}`), 'x'.repeat(i % 7));
  for (const n of AWKWARD_NAMES) add(n, 'awkward');
  const big = nodeOf(c.lookup(1, 'big'));
  const want = [...onDisk.keys(), Buffer.from('.').toString('hex'), Buffer.from('..').toString('hex')].sort();

  for (const op of [OP.READDIR, OP.READDIRPLUS]) {
    const what = op === OP.READDIR ? 'READDIR' : 'READDIRPLUS';
    const { entries, replies } = listAll(c, big, op, 4096);
    t.true(replies.length > (op === OP.READDIR ? 5 : 20), `${what}: many replies (${replies.length})`);
    t.true(replies.every((n) => n <= 4096), `${what}: no reply past the 4096 bytes asked for`);
    t.deepEqual(entries.map((e) => e.name.toString('hex')).sort(), want, `${what}: every entry exactly once, names byte for byte`);
    for (const e of entries) {
      const dots = e.name.equals(Buffer.from('.')) || e.name.equals(Buffer.from('..'));
      if (dots) {
        t.is(e.type, 4, `${what}: ${e.name} is a directory`);
        continue;
      }
      if (e.ino !== onDisk.get(e.name.toString('hex')) || e.type !== 8) t.fail(`${what}: ${JSON.stringify(e.name.toString())}: ino ${e.ino} type ${e.type}`);
      if (op === OP.READDIRPLUS && (e.nodeid === 0n || e.attrIno !== e.ino)) t.fail(`${what}: ${JSON.stringify(e.name.toString())} has no entry (node ${e.nodeid}, attr ino ${e.attrIno})`);
    }
    // Replies of a different size list the same entries (positions are the host's d_off, not counts).
    t.deepEqual(listAll(c, big, op, 65536).entries.map((e) => e.name.toString('hex')).sort(), want, `${what}, 64 KiB replies`);
  }
  // The awkward names' entries in READDIRPLUS carry their own attributes.
  const plus = listAll(c, big, OP.READDIRPLUS, 4096).entries;
  t.is(plus.find((e) => e.name.equals(Buffer.from('x'.repeat(255))))?.size, 7n, 'the 255-byte name: its file of 7 bytes');
  t.is(plus.find((e) => e.name.equals(Buffer.from([0xff, 0xfe, 0x41])))?.size, 7n, 'a name that is no UTF-8');
});

test('a warm LOOKUP or READDIRPLUS entry makes no host handle and no close; a name replaced behind its back is the new inode', async (t) => {
  const { c, dir, share } = await setup(t);
  c.init();
  mkdirSync(join(dir, 'd'));
  for (const n of ['a', 'b', 'c']) writeFileSync(join(dir, 'd', n), n);
  const calls = { lookup: 0, lookupKnown: 0, closeHandle: 0 };
  for (const k of Object.keys(calls) as (keyof typeof calls)[]) {
    const real = share[k].bind(share) as (...a: unknown[]) => unknown;
    (share as unknown as Record<string, unknown>)[k] = (...a: unknown[]) => (calls[k]++, real(...a));
  }
  const d = nodeOf(c.lookup(1, 'd'));
  const a = c.lookup(d, 'a');
  t.is(a.error, 0);
  t.deepEqual(calls, { lookup: 2, lookupKnown: 0, closeHandle: 0 }, 'cold: a lookup each, nothing closed');
  const held = share.openHandles;
  writeFileSync(join(dir, 'd', 'a'), 'grown');
  const again = c.lookup(d, 'a');
  t.is(nodeOf(again), nodeOf(a), 'the same nodeid');
  t.is(again.body.readBigUInt64LE(40 + 8), 5n, 'with the size it has now');
  t.deepEqual(calls, { lookup: 2, lookupKnown: 1, closeHandle: 0 }, 'warm: one lookup-known, no close');
  t.is(share.openHandles, held, 'no handle made');

  listAll(c, d, OP.READDIRPLUS, 4096);
  const cold = { ...calls };
  t.is(cold.lookup, 2 + 2, 'READDIRPLUS looked up b and c afresh');
  t.is(cold.lookupKnown, 1 + 1, 'and a, held, by lookup-known');
  const warm = listAll(c, d, OP.READDIRPLUS, 4096).entries.filter((e) => e.nodeid !== 0n);
  t.is(warm.length, 3);
  t.is(cold.closeHandle, 1, 'the listing closed only its open directory (RELEASEDIR)');
  t.deepEqual(calls, { ...cold, lookupKnown: cold.lookupKnown + 3, closeHandle: 2 }, 'a second listing: lookup-known per entry, only its directory closed');
  t.is(share.openHandles, held + 2);

  // 'b' replaced by another file: the name is that file now, under a new nodeid.
  const bOld = warm.find((e) => e.name.toString() === 'b')!;
  writeFileSync(join(dir, 'd', 'new'), 'replacement');
  renameSync(join(dir, 'd', 'new'), join(dir, 'd', 'b'));
  const b = c.lookup(d, 'b');
  t.not(nodeOf(b), bOld.nodeid);
  t.is(b.body.readBigUInt64LE(40), BigInt(statSync(join(dir, 'd', 'b')).ino), 'the new inode');
  t.is(b.body.readBigUInt64LE(48), 11n);
});

/**
 * Makes a file in `dir` that ext4 gives inode number `ino` (freed just before): files are
 * made until one gets it (bounded; the misses stay, so a lower free number is used up), and
 * that one is renamed to `name` with `content`. The misses are removed again.
 */
/**
 * Gives `ino` (just freed) to a new file `name` holding `content`: on a small ext4 with every
 * other inode taken (test/helpers/small-ext4.ts) the next file must get it; the filler files
 * go afterwards. Returns whether it did.
 */
function reuseIno(dir: string, name: string, ino: bigint, content: string, fillers: string[]): boolean {
  try {
    writeFileSync(join(dir, name), content);
    return BigInt(statSync(join(dir, name)).ino) === ino;
  } finally {
    for (const p of fillers) rmSync(p);
  }
}

/** A small ext4 (its inode numbers come back deterministically) for this test, unmounted after it. */
function ext4For(t: import('ava').ExecutionContext): string {
  const e4 = mountSmallExt4();
  t.teardown(() => e4.unmount());
  return e4.path;
}

test('a held file deleted on the host and its inode number given to a new file: a new nodeid, the old one never reaches it', async (t) => {
  const { c, dir, share } = await setup(t, false, ext4For(t));
  t.is(share.nodesBy, 'handles', 'inodes held by file handle (nothing pins them)');
  c.init();
  writeFileSync(join(dir, 'f'), 'old');
  const old = c.lookup(1, 'f');
  t.is(old.error, 0);
  const oldId = nodeOf(old);
  const ino = old.body.readBigUInt64LE(40);
  const fillers = fillInodes(dir);
  rmSync(join(dir, 'f'));
  t.true(reuseIno(dir, 'f', ino, 'the new file', fillers), 'the new file has the old inode number');

  // The name the plugin knows as the old inode (lookup-known), same (dev, ino), another generation.
  const fresh = c.lookup(1, 'f');
  t.is(fresh.error, 0);
  const newId = nodeOf(fresh);
  t.not(newId, oldId, 'a new nodeid for the new file');
  t.is(fresh.body.readBigUInt64LE(40), ino);
  t.is(fresh.body.readBigUInt64LE(48), 12n, "the new file's size");
  const attr = c.req(OP.GETATTR, newId, new W().u32(0).u32(0).u64(0).done());
  t.is(attr.error, 0);
  t.is(attr.body.readBigUInt64LE(16 + 8), 12n);
  const open = c.req(OP.OPEN, newId, new W().u32(0).u32(0).done());
  t.is(open.error, 0);
  t.is(c.read(open.body.readBigUInt64LE(0), 0, 100).body.toString(), 'the new file');

  // The old nodeid is the deleted file: never the new one's attributes or data.
  t.true([ERR.ENOENT, 116].includes(c.req(OP.GETATTR, oldId, new W().u32(0).u32(0).u64(0).done()).error), 'old: ESTALE');
  t.true([ERR.ENOENT, 116].includes(c.req(OP.OPEN, oldId, new W().u32(0).u32(0).done()).error), 'old: no open');
  // Looked up again: the new one, warm.
  t.is(nodeOf(c.lookup(1, 'f')), newId);
  // FORGET of the old one leaves the new one be.
  t.is(c.req(OP.FORGET, oldId, new W().u64(1).done()).len, 0);
  t.is(c.req(OP.GETATTR, newId, new W().u32(0).u32(0).u64(0).done()).error, 0);
  t.is(nodeOf(c.lookup(1, 'f')), newId, 'still found by its (dev, ino)');

  // The same when the guest itself makes the file that gets a held, deleted inode's number.
  writeFileSync(join(dir, 'g'), 'gone');
  const g = c.lookup(1, 'g');
  const gIno = g.body.readBigUInt64LE(40);
  const gFillers = fillInodes(dir);
  t.teardown(() => gFillers.forEach((p) => rmSync(p, { force: true })));
  rmSync(join(dir, 'g'));
  // The only free inode is g's: the guest's CREATE gets it.
  const r = c.create(1, 'c0', 0o102);
  t.is(r.error, 0);
  t.is(r.body.readBigUInt64LE(40), gIno, "the CREATE got the deleted file's inode number");
  const made: Reply | undefined = r;
  t.truthy(made, 'a CREATE got the deleted inode number');
  t.not(nodeOf(made!), nodeOf(g), 'a new nodeid for the created file');
  t.is(c.req(OP.GETATTR, nodeOf(made!), new W().u32(0).u32(0).u64(0).done()).error, 0);
  t.true([ERR.ENOENT, 116].includes(c.req(OP.GETATTR, nodeOf(g), new W().u32(0).u32(0).u64(0).done()).error));
});

test('READDIR after entries were removed between requests lists every other entry once; a reply too small for one entry is EINVAL', async (t) => {
  const { c, dir } = await setup(t);
  c.init();
  mkdirSync(join(dir, 'shrinking'));
  for (let i = 0; i < 400; i++) writeFileSync(join(dir, 'shrinking', `f${i}`), '');
  const node = nodeOf(c.lookup(1, 'shrinking'));
  for (const op of [OP.READDIR, OP.READDIRPLUS]) {
    let removed: string[] = [];
    const { entries } = listAll(c, node, op, 4096, (listed) => {
      if (removed.length) return;
      // After the first reply: every name not listed yet whose number is even goes.
      const seen = new Set(listed.map((e) => e.name.toString()));
      removed = readdirSync(join(dir, 'shrinking')).filter((n) => !seen.has(n) && Number(n.slice(1)) % 2 === 0);
      for (const n of removed) rmSync(join(dir, 'shrinking', n));
    });
    const names = entries.map((e) => e.name.toString());
    t.true(removed.length > 50, `${op}: entries were removed mid-listing (${removed.length})`);
    t.is(new Set(names).size, names.length, `${op}: no entry twice`);
    // POSIX leaves it open whether an entry removed mid-listing still shows (ext4 lists on
    // from the block it hashed); every entry there throughout shows, once.
    const left = readdirSync(join(dir, 'shrinking')).sort();
    t.deepEqual(names.filter((n) => n !== '.' && n !== '..' && !removed.includes(n)).sort(), left, `${op}: every entry left, once`);
    if (op === OP.READDIRPLUS) {
      const ghosts = entries.filter((e) => removed.includes(e.name.toString()) && e.nodeid !== 0n);
      t.deepEqual(ghosts.map((e) => e.name.toString()), [], 'a removed entry that still shows has no node');
    }
    // Put the directory back for the next kind of listing.
    for (const n of removed) writeFileSync(join(dir, 'shrinking', n), '');
  }
  // 16 bytes hold no fuse_dirent: an error, not an empty reply (which a kernel reads as the end).
  const dh = c.req(OP.OPENDIR, node, new W().u32(0).u32(0).done()).body.readBigUInt64LE(0);
  t.is(c.read(dh, 0, 16, OP.READDIR).error, ERR.EINVAL);
  t.is(c.read(dh, 0, 4096, OP.READDIR).error, 0, 'the same position with room: entries');
});

// ---- 64-bit attributes past 2^53 (issue 12): exact on the share and as the guest sees them ----

const enc = (s: string) => Buffer.from(s);
function ok<T>(r: import('../host/fs/index.ts').FsResult<T>): T {
  if (!r.ok) throw new Error(`errno ${r.errno}`);
  return r.val;
}
/** fuse_attr's u64s in a LOOKUP/CREATE reply (fuse_entry_out) and a GETATTR reply (fuse_attr_out). */
const entryAttr = (r: Reply) => ({ ino: r.body.readBigUInt64LE(40), size: r.body.readBigUInt64LE(48), mtime: r.body.readBigInt64LE(72) });
const getattrOf = (r: Reply) => ({ ino: r.body.readBigUInt64LE(16), size: r.body.readBigUInt64LE(24), mtime: r.body.readBigInt64LE(48) });

test('sparse files past 2^53 bytes (tmpfs): the share and the guest get the exact size and mtime in LOOKUP, warm LOOKUP, GETATTR and READDIRPLUS', async (t) => {
  const { c, dir, share } = await setup(t, false, '/dev/shm');
  c.init();
  mkdirSync(join(dir, 'd'));
  // 2^53 + 1 is the first size a double rounds (to 2^53); 2^63 - 1 the largest tmpfs allows.
  const sizes: Record<string, bigint> = { odd: 2n ** 53n + 1n, max: 2n ** 63n - 1n, small: 6n };
  for (const [n, s] of Object.entries(sizes)) execFileSync('truncate', ['-s', String(s), join(dir, 'd', n)]);
  const mtime = 2n ** 53n + 1n;
  execFileSync('touch', ['-m', '-d', `@${mtime}`, join(dir, 'd', 'odd')]);
  // (stat(1): node's BigIntStats makes its times of doubles.)
  t.is(execFileSync('stat', ['-c', '%Y', join(dir, 'd', 'odd')]).toString().trim(), String(mtime), 'tmpfs keeps the mtime');

  // The share: bigints exactly where a number would have been rounded, numbers elsewhere.
  const d = ok(share.lookup(ok(share.root()).node, enc('d'))).node;
  for (const [n, size] of Object.entries(sizes)) {
    const e = ok(share.lookup(d, enc(n)));
    t.is(e.attr.size, size < 2n ** 53n ? Number(size) : size, `${n}: lookup`);
    t.is(ok(share.getattr(e.node)).size, e.attr.size, `${n}: getattr`);
    const known = ok(share.lookupKnown(d, enc(n), e.node, BigInt(e.attr.dev), BigInt(e.attr.ino)));
    t.is(known.node, 0n, `${n}: still the inode held`);
    t.is(known.attr.size, e.attr.size, `${n}: lookup-known`);
  }
  t.is(ok(share.lookup(d, enc('odd'))).attr.mtime, mtime);
  t.is(typeof ok(share.lookup(d, enc('small'))).attr.mtime, 'number', 'an ordinary time stays a number');
  // FUSE_LSEEK past 2^53: SEEK_DATA (3) finds data written at 2^60 + 4096.
  const far = 2n ** 60n + 4096n;
  execFileSync('dd', ['if=/dev/zero', `of=${join(dir, 'd', 'data')}`, 'bs=4096', `seek=${far / 4096n}`, 'count=1', 'status=none']);
  const fh = ok(share.open(ok(share.lookup(d, enc('data'))).node, 0));
  t.is(ok(share.lseek(fh, 0n, 3)), far);

  // The guest: every reply that carries a fuse_attr.
  const dn = nodeOf(c.lookup(1, 'd'));
  for (const [n, size] of Object.entries(sizes)) {
    const cold = c.lookup(dn, n);
    t.is(cold.error, 0);
    t.is(entryAttr(cold).size, size, `${n}: LOOKUP`);
    t.is(entryAttr(c.lookup(dn, n)).size, size, `${n}: warm LOOKUP`);
    t.is(getattrOf(c.req(OP.GETATTR, nodeOf(cold), Buffer.alloc(16))).size, size, `${n}: GETATTR`);
  }
  t.is(entryAttr(c.lookup(dn, 'odd')).mtime, mtime, 'LOOKUP mtime');
  const listed = listAll(c, dn, OP.READDIRPLUS, 4096).entries;
  for (const [n, size] of Object.entries(sizes)) t.is(listed.find((e) => e.name.toString() === n)?.size, size, `${n}: READDIRPLUS`);
});

test('overlayfs with xino (inode numbers past 2^63): the share and the guest get them exact, and two lower files are never taken for one inode', async (t) => {
  const files = { a: 'a', c: 'c', 'dir/x': 'x' };
  const o = mountXinoOverlay(files);
  t.teardown(() => o.unmount());
  // (node's BigIntStats hands ino as a signed 64-bit integer.)
  const inoOf = (p: string) => BigInt.asUintN(64, statSync(join(o.merged, p), { bigint: true }).ino);
  t.true(inoOf('a') > 2n ** 63n, `xino in effect: the lower layer's numbers carry it (a: ${inoOf('a')})`);
  // Before: both were the double 2^63; a held 'a' compared equal to whatever 'c' is.
  t.is(Number(inoOf('a')), Number(inoOf('c')), 'two inode numbers a double cannot tell apart');

  for (const inodeFileHandles of ['never', 'prefer'] as const) {
    const share = new FsShare(o.merged, { inodeFileHandles });
    t.teardown(() => share.close());
    const root = ok(share.root()).node;
    const a = ok(share.lookup(root, enc('a')));
    t.is(a.attr.ino, inoOf('a'), `${inodeFileHandles}: lookup`);
    t.is(ok(share.getattr(a.node)).ino, inoOf('a'), `${inodeFileHandles}: getattr`);
    const dev = BigInt(a.attr.dev);
    t.is(ok(share.lookupKnown(root, enc('a'), a.node, dev, inoOf('a'))).node, 0n, `${inodeFileHandles}: 'a' is still the inode held`);
    // The plugin believes 'c' is 'a' (a rename on the host swapped them): 'c' is another inode.
    const c = ok(share.lookupKnown(root, enc('c'), a.node, dev, inoOf('a')));
    t.not(c.node, 0n, `${inodeFileHandles}: 'c' is not taken for 'a'`);
    t.is(c.attr.ino, inoOf('c'));
  }

  const share = new FsShare(o.merged, {});
  t.teardown(() => share.close());
  const { dev, c } = await loadOn(share);
  c.init();
  const a = c.lookup(1, 'a');
  t.is(entryAttr(a).ino, inoOf('a'), 'LOOKUP');
  t.is(entryAttr(c.lookup(1, 'a')).ino, inoOf('a'), 'warm LOOKUP');
  t.is(getattrOf(c.req(OP.GETATTR, nodeOf(a), Buffer.alloc(16))).ino, inoOf('a'), 'GETATTR');
  // 'a' and 'c' swapped on the host: the guest's warm LOOKUP of 'a' is c's inode, a new nodeid.
  const [inoA, inoC] = [inoOf('a'), inoOf('c')];
  renameSync(join(o.merged, 'a'), join(o.merged, 'tmp'));
  renameSync(join(o.merged, 'c'), join(o.merged, 'a'));
  renameSync(join(o.merged, 'tmp'), join(o.merged, 'c'));
  t.deepEqual([inoOf('a'), inoOf('c')], [inoC, inoA], 'copied up, the numbers went with the files');
  const swapped = c.lookup(1, 'a');
  t.not(nodeOf(swapped), nodeOf(a), "the name 'a' is another inode now");
  t.is(entryAttr(swapped).ino, inoC);
  const dir = c.lookup(1, 'dir');
  t.is(entryAttr(c.lookup(nodeOf(dir), 'x')).ino, inoOf('dir/x'), 'LOOKUP in a lower directory');
  for (const op of [OP.READDIR, OP.READDIRPLUS]) {
    const listed = listAll(c, 1n, op, 4096).entries.filter((e) => e.name.toString() !== '.' && e.name.toString() !== '..');
    t.deepEqual(
      listed.map((e) => [e.name.toString(), e.ino]).sort(),
      ['a', 'c', 'dir'].map((n) => [n, inoOf(n)]),
      `${op === OP.READDIR ? 'READDIR' : 'READDIRPLUS'}: dirent inos`,
    );
    if (op === OP.READDIRPLUS) for (const e of listed) t.is(e.attrIno, inoOf(e.name.toString()), `READDIRPLUS ${e.name}: entry attr ino`);
  }
});
