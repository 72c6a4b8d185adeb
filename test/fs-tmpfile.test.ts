// O_TMPFILE on the share. The guest kernel asks for an unnamed file with FUSE_TMPFILE (opcode
// 51: a fuse_create_in and a name, "/", that names nothing) and answers open(dir, O_TMPFILE)
// with what comes back; the file is linked into the tree with linkat(fd, "", dir, name,
// AT_EMPTY_PATH) or through /proc/self/fd, which reach us as FUSE_LINK of the tmpfile's node
// id. We make the unnamed file on the host (O_TMPFILE beneath the directory the share holds).
// Rust virtiofsd 1.13 answers ENOSYS instead (its FileSystem::tmpfile is not implemented), so
// its guests get EOPNOTSUPP (test/qemu-fs-vs-virtiofsd.test.ts shows both).
//
// Driven two ways: the fs plugin under the real jco runtime on a real FsShare (state save and
// load, share options), and through a real host process over its socket. A CREATE that carries
// O_TMPFILE's bits (the kernel never sends one; a hostile guest may) still makes the named
// regular file CREATE asks for: the host opens with only the access and O_APPEND/O_TRUNC/O_SYNC
// bits, never O_TMPFILE or O_DIRECTORY.
import test, { type ExecutionContext } from 'ava';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FsShare, type ShareOptions } from '../host/fs/index.ts';
import { FsFileBackings } from '../host/fs/file-backings.ts';
import { BackingTable } from '../host/io/backing-table.ts';
import { loadPlugin, type PluginDevice } from '../host/plugin/index.ts';
import { runRequest } from './helpers/plugin-requests.ts';
import { nodeOf as nodeOfReply, u32s, O } from './helpers/fuse.ts';
import { fsTestHost } from './helpers/fs-test-host.ts';

const root = join(import.meta.dirname, '..');
const cacheDir = mkdtempSync(join(tmpdir(), 'fs-tmpfile-cache-'));
let bytes: Buffer;

test.before(() => {
  execFileSync(process.execPath, ['build.mjs', '--only', 'plugins'], { cwd: root, stdio: 'inherit' });
  bytes = readFileSync(join(root, 'dist', 'plugins', 'fs.wasm'));
});
test.after.always(() => rmSync(cacheDir, { recursive: true, force: true }));

const OP = { LOOKUP: 1, FORGET: 2, GETATTR: 3, UNLINK: 10, LINK: 13, READ: 15, WRITE: 16, RELEASE: 18, INIT: 26, OPENDIR: 27, READDIR: 28, TMPFILE: 51 } as const;
const ERR = { ENOENT: 2, EIO: 5, EINVAL: 22, EROFS: 30, EOPNOTSUPP: 95 } as const;
/** Linux's O_TMPFILE: __O_TMPFILE | O_DIRECTORY (what the kernel's f_flags carry, with O_LARGEFILE). */
const O_TMPFILE = 0o20000000 | 0o200000;
const O_LARGEFILE = 0o100000;

/** fuse_create_in (flags, mode, umask, open_flags) and the kernel's placeholder name. */
const tmpfileIn = (flags: number, mode = 0o100600, umask = 0o022) => Buffer.concat([u32s(flags, mode, umask, 0), Buffer.from('/\0')]);

interface Reply {
  error: number;
  body: Buffer;
}

/** FUSE requests straight into the plugin (one at a time, as the runner does), from uid/gid `as`. */
class Client {
  private unique = 1n;
  as = { uid: 0, gid: 0 };
  constructor(
    readonly dev: PluginDevice,
    private readonly table: BackingTable,
  ) {}

  req(opcode: number, nodeid: bigint | number, args: Buffer = Buffer.alloc(0)): Reply {
    const h = Buffer.alloc(40);
    h.writeUInt32LE(40 + args.length, 0);
    h.writeUInt32LE(opcode, 4);
    h.writeBigUInt64LE(this.unique++, 8);
    h.writeBigUInt64LE(BigInt(nodeid), 16);
    h.writeUInt32LE(this.as.uid, 24);
    h.writeUInt32LE(this.as.gid, 28);
    const out = Buffer.from(runRequest(this.dev, this.table, Buffer.concat([h, args]), 1 << 20).data);
    if (out.length === 0) return { error: 0, body: out }; // FORGET: no answer
    return { error: -out.readInt32LE(4) || 0, body: out.subarray(16) };
  }
  init(): Reply {
    return this.req(OP.INIT, 0, u32s(7, 38, 65536, 0xffffffff));
  }
  tmpfile(dir: bigint | number, flags = O_TMPFILE | O.RDWR | O_LARGEFILE, mode = 0o100600): Reply {
    return this.req(OP.TMPFILE, dir, tmpfileIn(flags, mode));
  }
  write(fh: bigint, off: number, data: Buffer): Reply {
    const w = Buffer.alloc(40);
    w.writeBigUInt64LE(fh, 0);
    w.writeBigUInt64LE(BigInt(off), 8);
    w.writeUInt32LE(data.length, 16);
    return this.req(OP.WRITE, 0, Buffer.concat([w, data]));
  }
  read(fh: bigint, off: number, size: number, op: number = OP.READ): Reply {
    const r = Buffer.alloc(40);
    r.writeBigUInt64LE(fh, 0);
    r.writeBigUInt64LE(BigInt(off), 8);
    r.writeUInt32LE(size, 16);
    return this.req(op, 0, r);
  }
  release(fh: bigint): Reply {
    const r = Buffer.alloc(24);
    r.writeBigUInt64LE(fh, 0);
    return this.req(OP.RELEASE, 0, r);
  }
  /** FUSE_LINK: a new name `name` in `dir` for node `node` (fuse_link_in is the old node id). */
  link(node: bigint, dir: bigint | number, name: string): Reply {
    const l = Buffer.alloc(8);
    l.writeBigUInt64LE(node, 0);
    return this.req(OP.LINK, dir, Buffer.concat([l, Buffer.from(`${name}\0`)]));
  }
  getattr(node: bigint): Reply {
    return this.req(OP.GETATTR, node, Buffer.alloc(16));
  }
}

const nodeOf = (r: Reply) => r.body.readBigUInt64LE(0);
/** The fh of a CREATE/TMPFILE reply: after the 128-byte fuse_entry_out. */
const fhOf = (r: Reply) => r.body.readBigUInt64LE(128);
/** fuse_entry_out's attr: ino at 40, size 48, mode 100, nlink 104, uid 108, gid 112. */
const attrOfEntry = (r: Reply) => ({ size: r.body.readBigUInt64LE(48), mode: r.body.readUInt32LE(100), nlink: r.body.readUInt32LE(104), uid: r.body.readUInt32LE(108), gid: r.body.readUInt32LE(112) });

/** The fs plugin on a fresh share (made with `opts`), INIT done. */
async function setup(t: ExecutionContext, opts: ShareOptions = {}): Promise<{ dir: string; share: FsShare; c: Client; logs: string[] }> {
  const dir = mkdtempSync(join(tmpdir(), 'fs-tmpfile-'));
  const share = new FsShare(dir, opts);
  const logs: string[] = [];
  const backings = new BackingTable();
  const fsFiles = new FsFileBackings(share, backings);
  const dev = await loadPlugin(bytes, { grants: { filesystem: share, backings, fsFiles, log: (l, m) => logs.push(`${l}: ${m}`) }, cacheDir });
  t.teardown(() => {
    share.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const c = new Client(dev, backings);
  t.is(c.init().error, 0, 'INIT');
  return { dir, share, c, logs };
}

// Nodes held by file handle (nothing pinned) and by O_PATH fd (the fd pins the unnamed inode until FORGET).
for (const nodes of ['handles', 'fds'] as const) {
  test(`nodes by ${nodes}: TMPFILE makes an unnamed host file, written and read through its fh, then LINK names it and the host sees its bytes`, async (t) => {
    const { dir, share, c } = await setup(t, { inodeFileHandles: nodes === 'handles' ? 'mandatory' : 'never' });
    t.is(share.nodesBy, nodes);
    const tf = c.tmpfile(1);
    t.is(tf.error, 0, 'TMPFILE');
    const node = nodeOf(tf);
    const fh = fhOf(tf);
    const a = attrOfEntry(tf);
    t.is(a.mode, 0o100600, 'a regular file with the mode asked for');
    t.is(a.nlink, 0, 'no name anywhere');
    t.deepEqual(readdirSync(dir), [], 'nothing in the share yet');
    t.is(c.write(fh, 0, Buffer.from('temporary data\n')).error, 0, 'WRITE through the fh');
    t.is(c.read(fh, 0, 100).body.toString(), 'temporary data\n', 'READ back');
    t.is(c.getattr(node).body.readBigUInt64LE(16 + 8), 15n, 'GETATTR of the node: its size');
    t.deepEqual(readdirSync(dir), [], 'still nothing by name');

    // linkat(fd, "", dir, "kept", AT_EMPTY_PATH) in the guest: FUSE_LINK of the tmpfile's node.
    const ln = c.link(node, 1, 'kept');
    t.is(ln.error, 0, 'LINK');
    t.is(nodeOf(ln), node, 'the entry is the tmpfile node itself');
    t.is(attrOfEntry(ln).nlink, 1, 'one name now');
    t.deepEqual(readdirSync(dir), ['kept']);
    t.is(readFileSync(join(dir, 'kept'), 'utf8'), 'temporary data\n', 'the host reads what the guest wrote');
    t.is(c.write(fh, 15, Buffer.from('more\n')).error, 0, 'the fh keeps writing the linked file');
    t.is(readFileSync(join(dir, 'kept'), 'utf8'), 'temporary data\nmore\n');
    t.is(nodeOf(c.req(OP.LOOKUP, 1, Buffer.from('kept\0'))), node, 'a LOOKUP of the name finds the same node');
    t.is(c.release(fh).error, 0);
    t.is(readFileSync(join(dir, 'kept'), 'utf8'), 'temporary data\nmore\n', 'kept after RELEASE');

    // Linked in a subdirectory too, and twice (two names, one inode).
    t.is(c.req(9 /* MKDIR */, 1, Buffer.concat([u32s(0o755, 0), Buffer.from('sub\0')])).error, 0);
    const sub = nodeOf(c.req(OP.LOOKUP, 1, Buffer.from('sub\0')));
    const t2 = c.tmpfile(sub, O_TMPFILE | O.WRONLY, 0o100640);
    t.is(t2.error, 0, 'TMPFILE in a subdirectory, write-only');
    t.is(c.write(fhOf(t2), 0, Buffer.from('two')).error, 0);
    t.is(c.link(nodeOf(t2), sub, 'a').error, 0);
    t.is(c.link(nodeOf(t2), 1, 'b').error, 0);
    t.is(readFileSync(join(dir, 'sub', 'a'), 'utf8'), 'two');
    t.is(statSync(join(dir, 'b')).ino, statSync(join(dir, 'sub', 'a')).ino, 'both names are the one file');
    t.is(statSync(join(dir, 'sub', 'a')).mode & 0o7777, 0o640, 'the mode asked for (the host umask does not apply again)');
  });

  test(`nodes by ${nodes}: a tmpfile closed without a link leaves nothing on the host (no name, no fd after FORGET); O_EXCL makes one that LINK refuses`, async (t) => {
    const { dir, share, c } = await setup(t, { inodeFileHandles: nodes === 'handles' ? 'mandatory' : 'never' });
    const before = share.openFds;
    const tf = c.tmpfile(1);
    t.is(tf.error, 0);
    t.is(c.write(fhOf(tf), 0, Buffer.alloc(100_000, 7)).error, 0);
    t.is(c.release(fhOf(tf)).error, 0, 'RELEASE');
    c.req(OP.FORGET, nodeOf(tf), u32s(1, 0));
    t.deepEqual(readdirSync(dir), [], 'no name was made');
    t.is(share.openFds, before, 'no fd is left holding it');
    if (share.nodesBy === 'handles') {
      // Held by file handle (nothing pins it): the inode itself is gone with the last fd.
      const again = c.tmpfile(1);
      t.is(c.release(fhOf(again)).error, 0);
      t.not(c.getattr(nodeOf(again)).error, 0, 'the node of a closed unlinked tmpfile answers an error (ESTALE), not another file');
    }

    // O_TMPFILE | O_EXCL: the guest kernel never links it; a guest that asks anyway is refused by the host's kernel.
    const ex = c.tmpfile(1, O_TMPFILE | O.RDWR | O.EXCL);
    t.is(ex.error, 0, 'TMPFILE with O_EXCL');
    t.is(c.link(nodeOf(ex), 1, 'never').error, ERR.ENOENT, 'not linkable');
    t.deepEqual(readdirSync(dir), []);
    // O_RDONLY is no tmpfile (the kernel refuses it before asking us): the host's EINVAL.
    t.is(c.tmpfile(1, O_TMPFILE | O.RDONLY).error, ERR.EINVAL);
    t.is(c.tmpfile(99).error, ERR.ENOENT, 'an unknown directory');
    t.is(c.req(OP.TMPFILE, 1, u32s(O_TMPFILE | O.RDWR)).error, ERR.EINVAL, 'a request too short for fuse_create_in');
  });
}

test('a share whose filesystem has no O_TMPFILE answers EOPNOTSUPP, as a local open(O_TMPFILE) there does', async (t) => {
  // A private devpts instance: a directory whose filesystem has no ->tmpfile (needs root, as
  // mount does; the other tests of the fs suite mount too).
  const mnt = mkdtempSync(join(tmpdir(), 'fs-tmpfile-devpts-'));
  execFileSync('mount', ['-t', 'devpts', '-o', 'newinstance', 'devpts', mnt]);
  t.teardown(() => {
    execFileSync('umount', ['-l', mnt]);
    rmSync(mnt, { recursive: true, force: true });
  });
  const share = new FsShare(mnt, { inodeFileHandles: 'never' });
  const backings = new BackingTable();
  const dev = await loadPlugin(bytes, { grants: { filesystem: share, backings, fsFiles: new FsFileBackings(share, backings), log: () => {} }, cacheDir });
  t.teardown(() => share.close());
  const c = new Client(dev, backings);
  t.is(c.init().error, 0);
  t.is(c.tmpfile(1).error, ERR.EOPNOTSUPP, 'EOPNOTSUPP (not ENOSYS: the guest kernel keeps asking, as for a local file system)');
  t.is(c.tmpfile(1).error, ERR.EOPNOTSUPP);
});

test('a read-only share refuses TMPFILE with EROFS and makes nothing', async (t) => {
  const { dir, c } = await setup(t, { readOnly: true });
  t.is(c.tmpfile(1).error, ERR.EROFS);
  t.deepEqual(readdirSync(dir), []);
});

test('--translate-uid/gid and the requester own a tmpfile as they own a CREATE', async (t) => {
  const { dir, c } = await setup(t, { translateUid: [{ kind: 'map', from: 1234, to: 2234, count: 1 }], translateGid: [{ kind: 'map', from: 5678, to: 6678, count: 1 }] });
  c.as = { uid: 1234, gid: 5678 };
  const tf = c.tmpfile(1);
  t.is(tf.error, 0);
  t.like(attrOfEntry(tf), { uid: 1234, gid: 5678 }, 'the guest sees its own ids');
  t.is(c.link(nodeOf(tf), 1, 'owned').error, 0);
  const st = statSync(join(dir, 'owned'));
  t.deepEqual([st.uid, st.gid], [2234, 6678], 'the host stores the translated ids');
});

/** SAVE in 64 KiB chunks. */
function saveState(dev: PluginDevice): Buffer {
  const parts: Buffer[] = [];
  for (let off = 0; ; ) {
    const c = dev.getState(off, 65536);
    parts.push(Buffer.from(c.bytes));
    off += c.bytes.length;
    if (c.remaining === 0) break;
  }
  return Buffer.concat(parts);
}

test('migration: an open unnamed tmpfile is lost as an unlinked open file is (EIO on the destination); once linked it travels by its name', async (t) => {
  const src = await setup(t);
  const c = src.c;
  const unnamed = c.tmpfile(1);
  c.write(fhOf(unnamed), 0, Buffer.from('never named'));
  const linked = c.tmpfile(1);
  c.write(fhOf(linked), 0, Buffer.from('named later'));
  t.is(c.link(nodeOf(linked), 1, 'named').error, 0);

  const state = saveState(src.c.dev);
  const dstShare = new FsShare(src.dir);
  t.teardown(() => dstShare.close());
  const backings = new BackingTable();
  const dev = await loadPlugin(bytes, { grants: { filesystem: dstShare, backings, fsFiles: new FsFileBackings(dstShare, backings), log: () => {} }, cacheDir });
  dev.setState(0, state);
  // Not a load failure even under --migration-on-error abort (the default): nothing names it.
  t.is(dev.finishLoad(), null, 'the load succeeds');
  const d = new Client(dev, backings);
  t.is(d.read(fhOf(unnamed), 0, 20).error, ERR.EIO, 'the unnamed file is not reachable');
  t.is(d.getattr(nodeOf(unnamed)).error, ERR.EIO);
  t.is(d.read(fhOf(linked), 0, 20).body.toString(), 'named later', 'the linked one reopened by its name');
  t.is(nodeOf(d.req(OP.LOOKUP, 1, Buffer.from('named\0'))), nodeOf(linked), 'and keeps its node id');
});

test('through a host process: TMPFILE, WRITE, LINK, the file on the host; a CREATE with O_TMPFILE bits makes a plain named file', async (t) => {
  const { dir, c } = await fsTestHost(t, 'fs-tmpfile-host-', {});
  const tf = await c.req(OP.TMPFILE, 1n, tmpfileIn(O_TMPFILE | O.RDWR | O_LARGEFILE));
  t.is(tf.error, 0, 'TMPFILE');
  t.deepEqual(readdirSync(dir), [], 'nothing by name');
  const node = nodeOfReply(tf);
  const fh = tf.body.readBigUInt64LE(128);
  const w = Buffer.alloc(40);
  w.writeBigUInt64LE(fh, 0);
  w.writeUInt32LE(5, 16);
  t.is((await c.req(OP.WRITE, 0n, Buffer.concat([w, Buffer.from('hello')]))).error, 0, 'WRITE');
  const l = Buffer.alloc(8);
  l.writeBigUInt64LE(node, 0);
  const ln = await c.req(OP.LINK, 1n, Buffer.concat([l, Buffer.from('linked\0')]));
  t.is(ln.error, 0, 'LINK');
  t.is(nodeOfReply(ln), node);
  t.is(readFileSync(join(dir, 'linked'), 'utf8'), 'hello');

  const made = await c.create(1n, 'named', O_TMPFILE | O.RDWR, 0o600);
  t.is(made.error, 0, 'CREATE with O_TMPFILE bits');
  t.true(statSync(join(dir, 'named')).isFile(), 'a named regular file, as CREATE asks');
  t.is((await c.getattr(nodeOfReply(made))).error, 0, 'the device serves on');
});
