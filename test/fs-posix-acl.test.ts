// POSIX ACLs through the fs plugin and a real share (--posix-acl, virtiofsd's option): FUSE
// INIT, SETXATTR/GETXATTR/LISTXATTR/REMOVEXATTR of the ACL names and CREATE/MKNOD/MKDIR with
// the guest's umask go through the plugin's FUSE server into FsShare and the native calls,
// against real files in a temporary directory on /tmp (ext4 here: it has ACLs). What the host
// kernel made of each request is read back from the host side.
import test, { type ExecutionContext } from 'ava';
import { execFileSync } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FsShare } from '../host/fs/index.ts';
import { parseXattrMap } from '../host/fs/xattr-map.ts';
import { native } from '../host/native/index.ts';
import { loadPlugin } from '../host/plugin/index.ts';
import { FsFileBackings } from '../host/fs/file-backings.ts';
import { BackingTable } from '../host/io/backing-table.ts';
import { runRequest } from './helpers/plugin-requests.ts';

const root = join(import.meta.dirname, '..');
const cacheDir = mkdtempSync(join(tmpdir(), 'fs-acl-test-'));
let bytes: Buffer;

test.before(() => {
  execFileSync(process.execPath, ['build.mjs', '--only', 'plugins'], { cwd: root, stdio: 'inherit' });
  bytes = readFileSync(join(root, 'dist', 'plugins', 'fs.wasm'));
});
test.after.always(() => rmSync(cacheDir, { recursive: true, force: true }));

const OP = { LOOKUP: 1, MKNOD: 8, MKDIR: 9, SETXATTR: 21, GETXATTR: 22, LISTXATTR: 23, REMOVEXATTR: 24, INIT: 26, CREATE: 35 } as const;
const E = { EPROTO: 71, EOPNOTSUPP: 95, ENODATA: 61 };
const FUSE = { DONT_MASK: 1 << 6, POSIX_ACL: 1 << 20, SETXATTR_EXT: 1 << 29, ACL_KILL_SGID: 1 };
const ACL_FLAGS = (FUSE.DONT_MASK | FUSE.POSIX_ACL | FUSE.SETXATTR_EXT) >>> 0;
const ACCESS = 'system.posix_acl_access';
const DEFAULT = 'system.posix_acl_default';

const u32 = (...v: number[]) => Buffer.concat(v.map((x) => { const b = Buffer.alloc(4); b.writeUInt32LE(x >>> 0); return b; }));
const u64 = (v: bigint | number) => { const b = Buffer.alloc(8); b.writeBigUInt64LE(BigInt(v)); return b; };
const cstr = (s: string) => Buffer.from(`${s}\0`);

/** The kernel's xattr form of an ACL (version 2; tag u16, perm u16, id u32 per entry). */
const TAG = { USER_OBJ: 1, USER: 2, GROUP_OBJ: 4, GROUP: 8, MASK: 0x10, OTHER: 0x20 } as const;
const NO_ID = 0xffffffff;
function acl(...entries: [number, number, number?][]): Buffer {
  return Buffer.concat([u32(2), ...entries.map(([tag, perm, id]) => {
    const b = Buffer.alloc(8);
    b.writeUInt16LE(tag, 0);
    b.writeUInt16LE(perm, 2);
    b.writeUInt32LE(id ?? NO_ID, 4);
    return b;
  })]);
}
/** user::rwx user:1000:r-x group::r-x mask::r-x other::--- */
const DIR_DEFAULT = acl([TAG.USER_OBJ, 7], [TAG.USER, 5, 1000], [TAG.GROUP_OBJ, 5], [TAG.MASK, 5], [TAG.OTHER, 0]);
/** user::rw- user:1000:r-- group::r-- mask::r-- other::--- */
const FILE_ACCESS = acl([TAG.USER_OBJ, 6], [TAG.USER, 4, 1000], [TAG.GROUP_OBJ, 4], [TAG.MASK, 4], [TAG.OTHER, 0]);

interface Reply { error: number; body: Buffer }

/** An xattr of a host file, read on the host side ('' = absent). */
function hostGetxattr(dir: string, file: string, name: string): Buffer | null {
  const rootFd = native.fsOpenRoot(dir);
  const fd = file === '.' ? native.fsPathOf(rootFd) : native.fsLookup(rootFd, Buffer.from(file));
  try {
    const buf = new Uint8Array(65536);
    const r = native.fsGetxattr(fd, Buffer.from(name), buf);
    return r < 0 ? null : Buffer.from(buf.subarray(0, r));
  } finally {
    native.fsClose(fd);
    native.fsClose(rootFd);
  }
}

function hostSetxattr(dir: string, file: string, name: string, value: Buffer): void {
  const rootFd = native.fsOpenRoot(dir);
  const fd = native.fsLookup(rootFd, Buffer.from(file));
  try {
    const r = native.fsSetxattr(fd, Buffer.from(name), value, 0);
    if (r < 0) throw new Error(`host setxattr ${name}: errno ${-r}`);
  } finally {
    native.fsClose(fd);
    native.fsClose(rootFd);
  }
}

async function setup(t: ExecutionContext, opts: { posixAcl?: boolean; initFlags?: number; xattrmap?: string } = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'fs-acl-share-'));
  writeFileSync(join(dir, 'file'), 'data\n');
  mkdirSync(join(dir, 'inherit'));
  mkdirSync(join(dir, 'plain'));
  const posixAcl = opts.posixAcl ?? true;
  const share = new FsShare(dir, { xattr: true, posixAcl, xattrmap: opts.xattrmap === undefined ? undefined : parseXattrMap(opts.xattrmap) });
  hostSetxattr(dir, 'inherit', DEFAULT, DIR_DEFAULT); // (the share set up the fd budget the native calls draw from)
  const backings = new BackingTable();
  const fsFiles = new FsFileBackings(share, backings);
  const grants = { filesystem: share, backings, fsFiles, log: () => {} };
  const dev = await loadPlugin(bytes, { grants, cacheDir });
  t.teardown(() => {
    share.close();
    rmSync(dir, { recursive: true, force: true });
  });
  let unique = 1n;
  const req = (opcode: number, nodeid: bigint | number, args: Buffer = Buffer.alloc(0)): Reply => {
    const hdr = Buffer.concat([u32(40 + args.length, opcode), u64(unique++), u64(nodeid), u32(0, 0, 0, 0)]);
    const out = Buffer.from(runRequest(dev, backings, Buffer.concat([hdr, args]), 1 << 20).data);
    return { error: -out.readInt32LE(4) || 0, body: out.subarray(16) };
  };
  const init = req(OP.INIT, 0, u32(7, 38, 65536, opts.initFlags ?? (ACL_FLAGS | (1 << 13))));
  const lookup = (name: string, parent: bigint = 1n) => {
    const r = req(OP.LOOKUP, parent, cstr(name));
    if (r.error) throw new Error(`lookup ${name}: errno ${r.error}`);
    return r.body.readBigUInt64LE(0);
  };
  const ext = (init.body.length >= 16 && (init.body.readUInt32LE(12) & FUSE.SETXATTR_EXT)) !== 0;
  const x = {
    /** SETXATTR as the kernel sends it: the 16-byte fuse_setxattr_ext_in once SETXATTR_EXT is on. */
    set: (node: bigint, name: string, value: Buffer, setxattrFlags = 0) =>
      req(OP.SETXATTR, node, Buffer.concat([ext ? u32(value.length, 0, setxattrFlags, 0) : u32(value.length, 0), cstr(name), value])).error,
    get: (node: bigint, name: string) => req(OP.GETXATTR, node, Buffer.concat([u32(65536, 0), cstr(name)])),
    list: (node: bigint) => req(OP.LISTXATTR, node, u32(65536, 0)).body.toString('latin1').split('\0').filter((s) => s !== '').sort(),
    remove: (node: bigint, name: string) => req(OP.REMOVEXATTR, node, cstr(name)).error,
  };
  /** The entry's attr mode (fuse_entry_out: 40 bytes of ids and timeouts, then fuse_attr with mode at 60). */
  const modeOf = (r: Reply) => r.body.readUInt32LE(40 + 60);
  const make = {
    create: (parent: bigint, name: string, mode: number, umask: number) =>
      req(OP.CREATE, parent, Buffer.concat([u32(0o1 /* O_WRONLY */, mode, umask, 0), cstr(name)])),
    mknod: (parent: bigint, name: string, mode: number, umask: number) =>
      req(OP.MKNOD, parent, Buffer.concat([u32(0o100000 | mode, 0, umask, 0), cstr(name)])),
    mkdir: (parent: bigint, name: string, mode: number, umask: number) => req(OP.MKDIR, parent, Buffer.concat([u32(mode, umask), cstr(name)])),
  };
  return { dir, share, dev, grants, req, init, lookup, x, make, modeOf };
}

const mode = (p: string) => statSync(p).mode & 0o7777;

test('--posix-acl: INIT offers FUSE_POSIX_ACL with DONT_MASK and SETXATTR_EXT; without them from the kernel the mount is refused (EPROTO)', async (t) => {
  const withAcl = await setup(t);
  t.is(withAcl.init.error, 0);
  t.is((withAcl.init.body.readUInt32LE(12) & ACL_FLAGS) >>> 0, ACL_FLAGS, 'all three offered back');
  for (const missing of [FUSE.POSIX_ACL, FUSE.DONT_MASK, FUSE.SETXATTR_EXT]) {
    const g = await setup(t, { initFlags: (ACL_FLAGS & ~missing) >>> 0 });
    t.is(g.init.error, E.EPROTO, `kernel without flag ${missing.toString(16)}`);
    t.is(g.req(OP.LOOKUP, 1, cstr('file')).error, 5 /* EIO: not initialised */, 'and nothing is served');
  }
  const without = await setup(t, { posixAcl: false });
  t.is(without.init.error, 0);
  t.is(without.init.body.readUInt32LE(12) & ACL_FLAGS, 0, 'no --posix-acl: none of them, even when the kernel offers all');
});

test('access and default ACLs set, read, listed and removed through the guest are the host\'s ACLs', async (t) => {
  const { dir, lookup, x } = await setup(t);
  const f = lookup('file');
  t.is(x.set(f, ACCESS, FILE_ACCESS), 0);
  t.deepEqual(hostGetxattr(dir, 'file', ACCESS), FILE_ACCESS, 'the host has the ACL');
  t.is(mode(join(dir, 'file')), 0o640, 'and the host kernel made the mode agree (group bits = the mask)');
  t.deepEqual(x.get(f, ACCESS).body, FILE_ACCESS);
  t.deepEqual(x.list(f), [ACCESS]);
  const d = lookup('plain');
  t.is(x.set(d, DEFAULT, DIR_DEFAULT), 0);
  t.deepEqual(hostGetxattr(dir, 'plain', DEFAULT), DIR_DEFAULT);
  t.deepEqual(x.get(d, DEFAULT).body, DIR_DEFAULT);
  t.deepEqual(x.list(d), [DEFAULT]);
  t.is(x.remove(d, DEFAULT), 0);
  t.is(hostGetxattr(dir, 'plain', DEFAULT), null);
  t.is(x.get(d, DEFAULT).error, E.ENODATA);
  t.is(x.remove(f, ACCESS), 0);
  t.is(hostGetxattr(dir, 'file', ACCESS), null);
  t.is(x.set(f, ACCESS, Buffer.from('not an acl')), E.EOPNOTSUPP, 'a malformed ACL: the host kernel\'s answer (not version 2)');
});

test('creates under a default ACL inherit it and ignore the umask; elsewhere the umask applies (FUSE_DONT_MASK)', async (t) => {
  const { dir, lookup, make, modeOf, x } = await setup(t);
  const umaskBefore = process.umask();
  const inherit = lookup('inherit');
  const plain = lookup('plain');
  // The default ACL's mask r-x and the request's mode 0666 give 0640; the umask 077 is not applied.
  const c = make.create(inherit, 'new-file', 0o666, 0o077);
  t.is(c.error, 0);
  t.is(modeOf(c) & 0o7777, 0o640, 'the reply says the inherited mode');
  t.is(mode(join(dir, 'inherit', 'new-file')), 0o640);
  const n = make.mknod(inherit, 'new-node', 0o644, 0o077);
  t.is(n.error, 0);
  t.is(mode(join(dir, 'inherit', 'new-node')), 0o640);
  const m = make.mkdir(inherit, 'new-dir', 0o777, 0o077);
  t.is(m.error, 0);
  t.is(mode(join(dir, 'inherit', 'new-dir')), 0o750);
  const sub = lookup('new-dir', inherit);
  t.deepEqual(x.get(sub, DEFAULT).body, DIR_DEFAULT, 'a new directory inherits the default ACL');
  const access = x.get(sub, ACCESS).body;
  t.deepEqual(access, acl([TAG.USER_OBJ, 7], [TAG.USER, 5, 1000], [TAG.GROUP_OBJ, 5], [TAG.MASK, 5], [TAG.OTHER, 0]), 'and an access ACL from it');
  const file = lookup('new-file', inherit);
  // The entries are the default ACL's; the mode 0666 limits the owner, the mask and other.
  t.deepEqual(x.get(file, ACCESS).body, acl([TAG.USER_OBJ, 6], [TAG.USER, 5, 1000], [TAG.GROUP_OBJ, 5], [TAG.MASK, 4], [TAG.OTHER, 0]));
  // Without a default ACL the host kernel applies the request's umask (never the host's own).
  t.is(make.create(plain, 'f', 0o666, 0o027).error, 0);
  t.is(mode(join(dir, 'plain', 'f')), 0o640);
  t.is(make.mknod(plain, 'n', 0o666, 0o002).error, 0);
  t.is(mode(join(dir, 'plain', 'n')), 0o664);
  t.is(make.mkdir(plain, 'd', 0o777, 0o022).error, 0);
  t.is(mode(join(dir, 'plain', 'd')), 0o755);
  t.is(make.mkdir(plain, 'd0', 0o777, 0).error, 0);
  t.is(mode(join(dir, 'plain', 'd0')), 0o777, 'umask 0: exactly the mode');
  t.is(x.get(lookup('f', plain), ACCESS).error, E.ENODATA, 'no ACL where none was inherited');
  t.is(process.umask(), umaskBefore, 'this thread\'s umask is back as it was');
});

test('FUSE_SETXATTR_ACL_KILL_SGID clears set-group-id as the access ACL is set; without it set-group-id stays', async (t) => {
  const { dir, lookup, x } = await setup(t);
  chmodSync(join(dir, 'plain'), 0o2775);
  const d = lookup('plain');
  const dirAcl = acl([TAG.USER_OBJ, 7], [TAG.USER, 5, 1000], [TAG.GROUP_OBJ, 5], [TAG.MASK, 7], [TAG.OTHER, 5]);
  t.is(x.set(d, ACCESS, dirAcl), 0);
  t.is(mode(join(dir, 'plain')), 0o2775, 'no flag: set-group-id kept');
  // An ACL the host refuses (a version it does not read) changes nothing, set-group-id included.
  const bad = Buffer.from(dirAcl);
  bad.writeUInt32LE(99, 0);
  t.not(x.set(d, ACCESS, bad, FUSE.ACL_KILL_SGID), 0);
  t.is(mode(join(dir, 'plain')), 0o2775, 'a refused ACL: set-group-id kept');
  t.is(x.set(d, ACCESS, dirAcl, FUSE.ACL_KILL_SGID), 0);
  t.is(mode(join(dir, 'plain')), 0o775, 'flag: set-group-id cleared, the rest as the ACL says');
  t.deepEqual(hostGetxattr(dir, 'plain', ACCESS), dirAcl);
});

test('without --posix-acl the ACL names are EOPNOTSUPP and hidden from lists, as virtiofsd 1.13 answers', async (t) => {
  const { dir, lookup, x, make } = await setup(t, { posixAcl: false });
  hostSetxattr(dir, 'file', ACCESS, FILE_ACCESS);
  hostSetxattr(dir, 'file', 'user.kept', Buffer.from('1'));
  const f = lookup('file');
  for (const name of [ACCESS, DEFAULT]) {
    t.is(x.get(f, name).error, E.EOPNOTSUPP, name);
    t.is(x.set(f, name, FILE_ACCESS), E.EOPNOTSUPP, name);
    t.is(x.remove(f, name), E.EOPNOTSUPP, name);
  }
  t.deepEqual(x.list(f), ['user.kept'], 'the host\'s ACL is not listed');
  t.deepEqual(hostGetxattr(dir, 'file', ACCESS), FILE_ACCESS, 'and is untouched');
  t.is(x.get(f, 'system.posix_acl_other').error, E.EOPNOTSUPP, 'other system. names are the host kernel\'s answer');
  // The guest kernel masked the mode itself: the file gets exactly it, whatever the default ACL.
  const inherit = lookup('inherit');
  t.is(make.create(inherit, 'masked', 0o604, 0o077).error, 0);
  t.is(mode(join(dir, 'inherit', 'masked')), 0o604);
});

// virtiofsd 1.13 refuses, with the ACL names, every name that begins one, before its
// --xattrmap: a map that puts `user.g.` before every guest name shows it (without the refusal
// `system.posix_acl_acc` would be stored as `user.g.system.posix_acl_acc`).
const PREFIX_ALL = ':prefix:all::user.g.:';
const ACL_STARTS = ['system.posix_acl', 'system.posix_acl_acc', 'system.posix_acl_', 'system.posix_acl_defaul', 'system.', 'system', 's'];

test('without --posix-acl the names that begin an ACL name are EOPNOTSUPP before any --xattrmap rule and hidden from lists, as virtiofsd 1.13 answers', async (t) => {
  const { dir, lookup, x } = await setup(t, { posixAcl: false, xattrmap: PREFIX_ALL });
  hostSetxattr(dir, 'file', 'user.g.system.posix_acl', Buffer.from('1'));
  hostSetxattr(dir, 'file', 'user.g.system.', Buffer.from('2'));
  hostSetxattr(dir, 'file', 'user.g.user.kept', Buffer.from('3'));
  const f = lookup('file');
  for (const name of ACL_STARTS) {
    t.is(x.get(f, name).error, E.EOPNOTSUPP, `get ${name}`);
    t.is(x.set(f, name, Buffer.from('v')), E.EOPNOTSUPP, `set ${name}`);
    t.is(x.remove(f, name), E.EOPNOTSUPP, `remove ${name}`);
    t.is(hostGetxattr(dir, 'file', `user.g.${name}`)?.toString() ?? null, name === 'system.posix_acl' ? '1' : name === 'system.' ? '2' : null, `${name}: nothing stored or removed on the host`);
  }
  t.deepEqual(x.list(f), ['user.kept'], 'a host name that maps back to the start of an ACL name is not listed');
  // A longer name, or one that only shares a start with them, is an ordinary name.
  for (const name of ['system.posix_acl_other', 'system.posix_acl_accessx', 'sys.other']) {
    t.is(x.set(f, name, Buffer.from('v')), 0, name);
    t.deepEqual(hostGetxattr(dir, 'file', `user.g.${name}`), Buffer.from('v'), name);
  }
});

test('with --posix-acl the names that begin an ACL name are ordinary names, as in virtiofsd 1.13', async (t) => {
  const { dir, lookup, x } = await setup(t, { xattrmap: PREFIX_ALL });
  const f = lookup('file');
  t.is(x.set(f, 'system.posix_acl_acc', Buffer.from('v')), 0);
  t.deepEqual(hostGetxattr(dir, 'file', 'user.g.system.posix_acl_acc'), Buffer.from('v'));
  t.deepEqual(x.get(f, 'system.posix_acl_acc').body, Buffer.from('v'));
  t.deepEqual(x.list(f), ['system.posix_acl_acc']);
});

test('a migration destination without --posix-acl refuses the state of a guest that mounted with ACLs; one with it loads a guest without them and keeps refusing their names', async (t) => {
  const withAcl = await setup(t);
  const state = (dev: typeof withAcl.dev) => {
    const all: Buffer[] = [];
    for (let off = 0; ; ) {
      const c = dev.getState(off, 65536);
      all.push(Buffer.from(c.bytes));
      off += c.bytes.length;
      if (c.remaining === 0) break;
    }
    return Buffer.concat(all);
  };
  // Version 3, readable by 3 and later only: a plugin from before --posix-acl (version 2 at
  // most) refuses it rather than serve unmasked creates without a umask.
  t.deepEqual([...state(withAcl.dev).subarray(4, 6)], [3, 3]);
  const noAcl = await setup(t, { posixAcl: false });
  t.deepEqual([...state(noAcl.dev).subarray(4, 6)], [2, 1], 'a session without ACLs stays version 2');
  const into = await loadPlugin(bytes, { grants: noAcl.grants, cacheDir });
  into.setState(0, state(withAcl.dev));
  t.regex(into.finishLoad() ?? '', /mounted with POSIX ACLs \(--posix-acl\): start this destination with --posix-acl too/);

  // The other way: the session goes on without ACLs, so their names stay refused.
  const plain = await setup(t, { posixAcl: false });
  plain.lookup('file');
  /** A destination (setup's options) that loaded the plain session, and a FUSE request to it. */
  const migrated = async (opts: Parameters<typeof setup>[1]) => {
    const dest = await setup(t, opts);
    const fresh = await loadPlugin(bytes, { grants: dest.grants, cacheDir });
    fresh.setState(0, state(plain.dev));
    t.is(fresh.finishLoad(), null);
    const ask = (opcode: number, nodeid: bigint, args: Buffer) => {
      const hdr = Buffer.concat([u32(40 + args.length, opcode), u64(99), u64(nodeid), u32(0, 0, 0, 0)]);
      const out = Buffer.from(runRequest(fresh, dest.grants.backings, Buffer.concat([hdr, args]), 65536).data);
      return { error: -out.readInt32LE(4) || 0, body: out.subarray(16) };
    };
    const node = ask(OP.LOOKUP, 1n, cstr('file')).body.readBigUInt64LE(0);
    return { dir: dest.dir, ask, node };
  };
  const { dir, ask, node } = await migrated({});
  hostSetxattr(dir, 'file', ACCESS, FILE_ACCESS);
  t.is(ask(OP.GETXATTR, node, Buffer.concat([u32(256, 0), cstr(ACCESS)])).error, E.EOPNOTSUPP);
  t.is(ask(OP.SETXATTR, node, Buffer.concat([u32(FILE_ACCESS.length, 0), cstr(ACCESS), FILE_ACCESS])).error, E.EOPNOTSUPP);
  t.is(ask(OP.LISTXATTR, node, u32(256, 0)).body.toString('latin1'), '', 'and the host\'s ACL is not listed');
  // So are the names that begin them (the destination's share passes them: it has --posix-acl).
  const m = await migrated({ xattrmap: PREFIX_ALL });
  hostSetxattr(m.dir, 'file', 'user.g.system.posix_acl', Buffer.from('1'));
  for (const name of ACL_STARTS) {
    t.is(m.ask(OP.GETXATTR, m.node, Buffer.concat([u32(256, 0), cstr(name)])).error, E.EOPNOTSUPP, `get ${name}`);
    t.is(m.ask(OP.SETXATTR, m.node, Buffer.concat([u32(1, 0), cstr(name), Buffer.from('v')])).error, E.EOPNOTSUPP, `set ${name}`);
    t.is(m.ask(OP.REMOVEXATTR, m.node, cstr(name)).error, E.EOPNOTSUPP, `remove ${name}`);
  }
  t.deepEqual(hostGetxattr(m.dir, 'file', 'user.g.system.posix_acl'), Buffer.from('1'), 'not removed');
  t.is(hostGetxattr(m.dir, 'file', 'user.g.system.posix_acl_acc'), null, 'nothing stored');
  t.is(m.ask(OP.LISTXATTR, m.node, u32(256, 0)).body.toString('latin1'), '', 'a name that begins an ACL name is not listed');
  t.is(m.ask(OP.SETXATTR, m.node, Buffer.concat([u32(1, 0), cstr('system.posix_acl_other'), Buffer.from('v')])).error, 0, 'a longer name is ordinary');
});

test('fsUmask sets the umask of the calling thread only: another thread\'s creates keep the process umask', async (t) => {
  // The addon loaded plainly in a worker thread (as a device worker has it), which sets 077 and
  // creates a file; this thread's umask and its own creates are not touched.
  const addon = join(process.cwd(), 'host', 'native', 'build', 'Release', 'vhost_native.node');
  const dir = mkdtempSync(join(tmpdir(), 'fs-umask-thread-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const before = process.umask();
  const code = `
    const { parentPort, workerData } = require('node:worker_threads');
    const fs = require('node:fs');
    const native = require(workerData.addon);
    const prev = native.fsUmask(0o077);
    fs.writeFileSync(workerData.dir + '/worker', '');
    parentPort.postMessage({ prev, mode: fs.statSync(workerData.dir + '/worker').mode & 0o777 });
  `;
  const { Worker } = await import('node:worker_threads');
  const w = new Worker(code, { eval: true, workerData: { addon, dir } });
  const got = await new Promise<{ prev: number; mode: number }>((resolve, reject) => {
    w.once('message', resolve);
    w.once('error', reject);
  });
  await w.terminate();
  t.is(got.prev, before, 'the worker started with the process umask');
  t.is(got.mode, 0o600, 'the worker\'s create was under its 077');
  t.is(process.umask(), before, 'this thread\'s umask is unchanged');
  writeFileSync(join(dir, 'main'), '');
  t.is(statSync(join(dir, 'main')).mode & 0o777, 0o666 & ~before, 'this thread\'s creates use the process umask');
});
