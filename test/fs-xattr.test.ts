// Extended attributes through the fs plugin and the real host share (--xattr): FUSE
// GETXATTR/LISTXATTR/SETXATTR/REMOVEXATTR requests go through the plugin's FUSE server into
// FsShare and the native calls, against real files in a temporary directory.
import test, { type ExecutionContext } from 'ava';
import { execFileSync } from 'node:child_process';
import { lstatSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FsShare } from '../host/fs/index.ts';
import { native } from '../host/native/index.ts';
import { loadPlugin } from '../host/plugin/index.ts';
import { FsFileBackings } from '../host/fs/file-backings.ts';
import { BackingTable } from '../host/io/backing-table.ts';
import { runRequest } from './helpers/plugin-requests.ts';
import { parseXattrMap } from '../host/fs/xattr-map.ts';
import { VhostUserFrontend, VIRTIO_F_VERSION_1 } from '../host/frontend/driver.ts';
import { REPO, startHost, type HostProcess } from './helpers/host-process.ts';
import { FuseClient, fhOfOpen, nodeOf, O, writeIn } from './helpers/fuse.ts';

const root = join(import.meta.dirname, '..');
const cacheDir = mkdtempSync(join(tmpdir(), 'fs-xattr-test-'));
let bytes: Buffer;

test.before(() => {
  execFileSync(process.execPath, ['build.mjs', '--only', 'plugins'], { cwd: root, stdio: 'inherit' });
  bytes = readFileSync(join(root, 'dist', 'plugins', 'fs.wasm'));
});
test.after.always(() => rmSync(cacheDir, { recursive: true, force: true }));

const OP = { LOOKUP: 1, SETATTR: 4, OPEN: 14, WRITE: 16, RELEASE: 18, CREATE: 35, FALLOCATE: 43, COPY_FILE_RANGE: 47, SETXATTR: 21, GETXATTR: 22, LISTXATTR: 23, REMOVEXATTR: 24, INIT: 26 } as const;
const E = { EPERM: 1, ENODATA: 61, EEXIST: 17, EROFS: 30, ERANGE: 34, ENOSYS: 38, EINVAL: 22 };
const XATTR_CREATE = 1;
const XATTR_REPLACE = 2;

const u32 = (...v: number[]) => Buffer.concat(v.map((x) => { const b = Buffer.alloc(4); b.writeUInt32LE(x); return b; }));
const u64 = (v: bigint | number) => { const b = Buffer.alloc(8); b.writeBigUInt64LE(BigInt(v)); return b; };
const cstr = (s: string) => Buffer.from(`${s}\0`);

interface Reply { error: number; body: Buffer }

async function setup(t: ExecutionContext, opts: { readOnly?: boolean; xattr?: boolean; xattrmap?: string } = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'fs-xattr-share-'));
  writeFileSync(join(dir, 'file'), 'data\n');
  symlinkSync('file', join(dir, 'link'));
  const share = new FsShare(dir, {
    readOnly: opts.readOnly ?? false,
    xattr: opts.xattr ?? true,
    ...(opts.xattrmap === undefined ? {} : { xattrmap: parseXattrMap(opts.xattrmap) }),
  });
  const backings = new BackingTable();
  const fsFiles = new FsFileBackings(share, backings);
  const dev = await loadPlugin(bytes, { grants: { filesystem: share, backings, fsFiles, log: () => {} }, cacheDir });
  t.teardown(() => {
    share.close();
    rmSync(dir, { recursive: true, force: true });
  });
  let unique = 1n;
  const req = (opcode: number, nodeid: bigint | number, args: Buffer = Buffer.alloc(0), writableLen = 1 << 20): Reply => {
    const hdr = Buffer.concat([u32(40 + args.length, opcode), u64(unique++), u64(nodeid), u32(0, 0, 0, 0)]);
    const out = Buffer.from(runRequest(dev, backings, Buffer.concat([hdr, args]), writableLen).data);
    return { error: -out.readInt32LE(4) || 0, body: out.subarray(16) };
  };
  req(OP.INIT, 0, u32(7, 38, 65536, 0));
  const lookup = (name: string) => {
    const r = req(OP.LOOKUP, 1, cstr(name));
    if (r.error) throw new Error(`lookup ${name}: errno ${r.error}`);
    return r.body.readBigUInt64LE(0);
  };
  const x = {
    set: (node: bigint, name: string, value: Buffer | string, flags = 0) =>
      req(OP.SETXATTR, node, Buffer.concat([u32(Buffer.byteLength(value), flags), cstr(name), Buffer.from(value)])).error,
    get: (node: bigint, name: string, size = 65536) => req(OP.GETXATTR, node, Buffer.concat([u32(size, 0), cstr(name)])),
    list: (node: bigint, size = 65536) => req(OP.LISTXATTR, node, u32(size, 0)),
    remove: (node: bigint, name: string) => req(OP.REMOVEXATTR, node, cstr(name)).error,
  };
  return { dir, share, req, lookup, x };
}

const names = (r: Reply) => r.body.toString('latin1').split('\0').filter((s) => s !== '').sort();

/** Sets an xattr on a host file directly (the host side of the share, not through the guest). */
function hostSetxattr(dir: string, file: string, name: string, value: string): void {
  const rootFd = native.fsOpenRoot(dir);
  const fd = native.fsLookup(rootFd, Buffer.from(file));
  try {
    const r = native.fsSetxattr(fd, Buffer.from(name), Buffer.from(value), 0);
    if (r < 0) throw new Error(`host setxattr ${name}: errno ${-r}`);
  } finally {
    native.fsClose(fd);
    native.fsClose(rootFd);
  }
}

test('set, get, list and remove a user. attribute; CREATE and REPLACE', async (t) => {
  const { lookup, x } = await setup(t);
  const f = lookup('file');
  t.is(x.set(f, 'user.colour', 'blue'), 0);
  t.is(x.get(f, 'user.colour').body.toString(), 'blue');
  t.deepEqual(names(x.list(f)), ['user.colour']);
  t.is(x.set(f, 'user.colour', 'red', XATTR_CREATE), E.EEXIST);
  t.is(x.set(f, 'user.shape', 'round', XATTR_REPLACE), E.ENODATA);
  t.is(x.set(f, 'user.colour', 'green', XATTR_REPLACE), 0);
  t.is(x.get(f, 'user.colour').body.toString(), 'green');
  t.is(x.set(f, 'user.empty', ''), 0);
  t.is(x.get(f, 'user.empty').body.length, 0, 'an empty value is a value');
  t.deepEqual(names(x.list(f)), ['user.colour', 'user.empty']);
  t.is(x.remove(f, 'user.colour'), 0);
  t.is(x.get(f, 'user.colour').error, E.ENODATA);
  t.is(x.remove(f, 'user.colour'), E.ENODATA);
  t.deepEqual(names(x.list(f)), ['user.empty']);
  // The root directory has xattrs of its own.
  t.is(x.set(1n, 'user.top', '1'), 0);
  t.is(x.get(1n, 'user.top').body.toString(), '1');
});

test('size 0 asks for the size; a size too small is ERANGE', async (t) => {
  const { lookup, x } = await setup(t);
  const f = lookup('file');
  const value = Buffer.alloc(3000, 7);
  t.is(x.set(f, 'user.big', value), 0);
  t.is(x.set(f, 'user.a', 'x'), 0);
  const probe = x.get(f, 'user.big', 0);
  t.is(probe.error, 0);
  t.is(probe.body.length, 8, 'fuse_getxattr_out');
  t.is(probe.body.readUInt32LE(0), 3000);
  t.is(x.get(f, 'user.big', 2999).error, E.ERANGE);
  t.deepEqual(x.get(f, 'user.big', 3000).body, value);
  const listSize = x.list(f, 0);
  t.is(listSize.body.readUInt32LE(0), 'user.big\0user.a\0'.length);
  t.is(x.list(f, 5).error, E.ERANGE);
  t.deepEqual(names(x.list(f, listSize.body.readUInt32LE(0))), ['user.a', 'user.big']);
});

test('trusted. and security. names are refused with EPERM, read as absent (ENODATA) and hidden from lists', async (t) => {
  const { dir, lookup, x } = await setup(t);
  const f = lookup('file');
  hostSetxattr(dir, 'file', 'trusted.hostonly', 'secret'); // the host runs as root here
  t.is(x.set(f, 'user.ok', '1'), 0);
  for (const name of ['trusted.x', 'security.capability', 'security.selinux', 'trusted.hostonly']) {
    t.is(x.set(f, name, 'v'), E.EPERM, name);
    t.is(x.get(f, name).error, E.ENODATA, name); // as virtiofsd's "bad" --xattrmap rule
    t.is(x.remove(f, name), E.EPERM, name);
  }
  t.deepEqual(names(x.list(f)), ['user.ok'], 'the host-only name is not listed');
  t.is(x.list(f, 0).body.readUInt32LE(0), 'user.ok\0'.length, 'and not counted');
});

test('a symlink\'s attributes are its own: its target is never touched', async (t) => {
  const { lookup, x } = await setup(t);
  const f = lookup('file');
  const l = lookup('link');
  t.is(x.set(f, 'user.on-target', 't'), 0);
  t.is(x.get(l, 'user.on-target').error, E.ENODATA, 'the link does not show its target\'s attribute');
  t.deepEqual(names(x.list(l)), []);
  // Linux allows no user. attributes on symlinks: the set is refused, not redirected.
  t.is(x.set(l, 'user.via-link', 'v'), E.EPERM);
  t.is(x.remove(l, 'user.on-target'), E.EPERM);
  t.deepEqual(names(x.list(f)), ['user.on-target'], 'the target is unchanged');
  t.is(x.get(f, 'user.on-target').body.toString(), 't');
});

test('a read-only share lets the guest read attributes but not change them (EROFS)', async (t) => {
  const { dir, lookup, x } = await setup(t, { readOnly: true });
  hostSetxattr(dir, 'file', 'user.kept', 'v');
  const f = lookup('file');
  t.is(x.get(f, 'user.kept').body.toString(), 'v');
  t.deepEqual(names(x.list(f)), ['user.kept']);
  t.is(x.set(f, 'user.new', '1'), E.EROFS);
  t.is(x.remove(f, 'user.kept'), E.EROFS);
  t.is(x.get(f, 'user.kept').body.toString(), 'v');
});

test('without --xattr every xattr request is ENOSYS, whatever the name', async (t) => {
  const { lookup, x } = await setup(t, { xattr: false });
  const f = lookup('file');
  t.is(x.set(f, 'user.a', '1'), E.ENOSYS);
  t.is(x.get(f, 'user.a').error, E.ENOSYS);
  t.is(x.get(f, 'trusted.a').error, E.ENOSYS);
  t.is(x.list(f).error, E.ENOSYS);
  t.is(x.remove(f, 'user.a'), E.ENOSYS);
});

test('malformed xattr requests: EINVAL, never a trap', async (t) => {
  const { req, lookup, x } = await setup(t);
  const f = lookup('file');
  t.is(req(OP.SETXATTR, f, Buffer.concat([u32(100, 0), cstr('user.a'), Buffer.from('short')])).error, E.EINVAL, 'value shorter than its size');
  t.is(req(OP.GETXATTR, f, u32(10, 0)).error, E.EINVAL, 'no name');
  t.is(req(OP.GETXATTR, f, Buffer.concat([u32(10, 0), Buffer.from('user.a')])).error, E.EINVAL, 'name without NUL');
  t.is(req(OP.LISTXATTR, f, u32(1)).error, E.EINVAL, 'truncated getxattr_in');
  t.is(x.set(f, '', 'v'), E.EINVAL, 'empty name');
  t.is(x.set(f, `user.${'n'.repeat(300)}`, 'v'), E.ERANGE, 'name longer than XATTR_NAME_MAX');
  t.is(x.set(f, 'user.big', Buffer.alloc(65537)), 7 /* E2BIG */);
  // WIT 0.2: the plugin sees the first 4096 bytes of a request; a value reaching past them is E2BIG.
  t.is(x.set(f, 'user.mid', Buffer.alloc(8000)), 7 /* E2BIG */, 'a value past the prefix the plugin sees');
  t.is(x.get(f, 'user.mid', 8).error, E.ENODATA, 'and nothing was set');
  t.is(x.get(f, 'user.none', 8).error, E.ENODATA);
  t.is(x.set(f, 'user.ok', 'fine'), 0, 'still healthy');
});

test('random and mutated xattr requests never trap the plugin', async (t) => {
  const { req, lookup, x } = await setup(t);
  const f = lookup('file');
  let seed = 777;
  const rnd = () => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32);
  const valid: [number, Buffer][] = [
    [OP.SETXATTR, Buffer.concat([u32(3, 0), cstr('user.fz'), Buffer.from('abc')])],
    [OP.GETXATTR, Buffer.concat([u32(64, 0), cstr('user.fz')])],
    [OP.LISTXATTR, u32(64, 0)],
    [OP.REMOVEXATTR, cstr('user.fz')],
  ];
  let answered = 0;
  for (let i = 0; i < 2000; i++) {
    const [op, args] = valid[i % valid.length];
    const a = Buffer.from(args);
    for (let k = 0; k < 1 + Math.floor(rnd() * 3); k++) a[Math.floor(rnd() * a.length)] = Math.floor(rnd() * 256);
    const cut = rnd() < 0.3 ? a.subarray(0, Math.floor(rnd() * a.length)) : a;
    const r = req(op, rnd() < 0.9 ? f : BigInt(Math.floor(rnd() * 2 ** 32)), cut, 16 + Math.floor(rnd() * 200));
    if (r.error >= 0) answered++;
  }
  t.is(answered, 2000);
  t.is(x.set(f, 'user.after', 'ok'), 0, 'still serving');
  t.is(x.get(f, 'user.after').body.toString(), 'ok');
});

/** The host's xattr names of a share's file (not through the guest). */
function hostNames(path: string): string[] {
  const py = 'import os,sys\nfor n in sorted(os.listxattr(sys.argv[1])): print(n)';
  return execFileSync('python3', ['-c', py, path], { encoding: 'utf8' }).split('\n').filter(Boolean);
}

test('--xattrmap renaming security.capability: truncate, write and chown drop the renamed name (the host kernel drops only the real one), as virtiofsd 1.13 does', async (t) => {
  const { dir, req, lookup, x } = await setup(t, { xattrmap: ':map::user.virtiofs.:' });
  const f = lookup('file');
  const host = join(dir, 'file');
  const CAP = 'user.virtiofs.security.capability';
  const O_WRONLY = 1;
  const O_TRUNC = 0o1000;
  // A version 2 capability set (cap_net_raw+ep); the host stores it as an ordinary user. value.
  const caps = Buffer.from('0000000201000000002000000000000000000000', 'hex');
  const plant = (what: string) => {
    t.is(x.set(f, 'security.capability', caps), 0, `${what}: the guest sets security.capability`);
    t.deepEqual(hostNames(host), [CAP], `${what}: stored under the map's prefix`);
  };
  const open = (flags: number) => {
    const r = req(OP.OPEN, f, u32(flags, 0));
    if (r.error) throw new Error(`open: errno ${r.error}`);
    return r.body.readBigUInt64LE(0);
  };
  const release = (fh: bigint) => req(OP.RELEASE, f, Buffer.concat([u64(fh), u32(0, 0), u64(0)]));
  const setattr = (valid: number, fields: { size?: number; mode?: number; uid?: number; gid?: number }) => {
    const a = Buffer.alloc(88);
    a.writeUInt32LE(valid, 0);
    a.writeBigUInt64LE(BigInt(fields.size ?? 0), 16);
    a.writeUInt32LE(fields.mode ?? 0, 68);
    a.writeUInt32LE(fields.uid ?? 0, 76);
    a.writeUInt32LE(fields.gid ?? 0, 80);
    return req(OP.SETATTR, f, a).error;
  };

  plant('open without O_TRUNC');
  release(open(O_WRONLY));
  t.deepEqual(hostNames(host), [CAP], 'an open that truncates nothing keeps it');
  t.is(setattr(1 /* mode */, { mode: 0o100644 }), 0);
  t.deepEqual(hostNames(host), [CAP], 'a chmod keeps it (the guest kernel clears set-id bits itself)');

  const fh = open(O_WRONLY);
  const data = Buffer.from('new contents');
  const w = req(OP.WRITE, f, Buffer.concat([u64(fh), u64(0), u32(data.length, 0), u64(0), u32(0, 0), data]));
  t.is(w.error, 0);
  t.deepEqual(hostNames(host), [], 'a WRITE drops it');
  release(fh);

  plant('open with O_TRUNC');
  release(open(O_WRONLY | O_TRUNC));
  t.deepEqual(hostNames(host), [], 'OPEN with O_TRUNC drops it');

  plant('create of an existing file with O_TRUNC');
  const c = req(OP.CREATE, 1, Buffer.concat([u32(O_WRONLY | O_TRUNC, 0o644, 0, 0), cstr('file')]));
  t.is(c.error, 0);
  t.deepEqual(hostNames(host), [], 'CREATE opening the existing file with O_TRUNC drops it');
  release(c.body.readBigUInt64LE(128));

  plant('truncate');
  t.is(setattr(8 /* size */, { size: 2 }), 0);
  t.deepEqual(hostNames(host), [], 'SETATTR of the size drops it');

  plant('chown');
  t.is(setattr(2 | 4 /* uid, gid */, { uid: process.getuid!(), gid: process.getgid!() }), 0);
  t.deepEqual(hostNames(host), [], 'SETATTR of the owner drops it');

  // Beyond virtiofsd 1.13 (which leaves these two alone): the host kernel drops a real
  // capability on fallocate and on copy_file_range's destination too, so the share does.
  plant('fallocate');
  const rw = open(2 /* O_RDWR */);
  t.is(req(OP.FALLOCATE, f, Buffer.concat([u64(rw), u64(0), u64(4096), u32(0, 0)])).error, 0);
  t.deepEqual(hostNames(host), [], 'FALLOCATE drops it');
  plant('copy_file_range');
  const cfr = req(OP.COPY_FILE_RANGE, f, Buffer.concat([u64(rw), u64(0), u64(f), u64(rw), u64(8192), u64(16), u64(0)]));
  t.is(cfr.error, 0);
  t.deepEqual(hostNames(host), [], 'COPY_FILE_RANGE drops the destination\'s');
  release(rw);

  t.is(x.set(f, 'user.other', 'kept'), 0);
  t.is(setattr(8, { size: 0 }), 0);
  t.deepEqual(names(x.list(f)), ['user.other'], 'other names stay');

  // A symlink cannot hold capabilities (nor user. names: the kernel says EPERM): its chown
  // goes through, where virtiofsd 1.13 under such a map refuses it with that EPERM.
  symlinkSync('file', join(dir, 'cap-link'));
  const l = lookup('cap-link');
  const a = Buffer.alloc(88);
  a.writeUInt32LE(2 | 4, 0);
  a.writeUInt32LE(4242, 76);
  a.writeUInt32LE(4343, 80);
  t.is(req(OP.SETATTR, l, a).error, 0, 'SETATTR of a symlink\'s owner');
  const st = lstatSync(join(dir, 'cap-link'));
  t.deepEqual([st.uid, st.gid], [4242, 4343], 'the host symlink is chowned');
});

test('without a map that renames it, security.capability is the host kernel\'s to drop: the share drops nothing', async (t) => {
  const { dir, share, lookup, x } = await setup(t, { xattrmap: ':prefix:all:trusted.:user.virtiofs.::ok:all:::' });
  t.is(share.capabilityName, null, 'security.capability passes under its own name');
  const f = lookup('file');
  t.is(x.set(f, 'user.virtiofs.trusted.x', 'y'), 0);
  t.deepEqual(hostNames(join(dir, 'file')), ['user.virtiofs.trusted.x']);
  const { share: plain } = await setup(t);
  t.is(plain.capabilityName, null, 'the default map refuses security. names: nothing to drop');
});

// The WRITE path through the real host: the runner runs the write's backing's beforeWrite (the
// renamed capability dropped) before it hands the write to the executor.
test('the real host: a guest WRITE drops a renamed security.capability before the data is written', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'fs-xattr-cap-host-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'file'), 'data\n');
  // Through python3, not the addon (whose fd budget only an FsShare in this process sets up).
  const py = 'import os,sys\nfor n in sys.argv[2:]: os.setxattr(sys.argv[1], n, b"v")';
  execFileSync('python3', ['-c', py, join(dir, 'file'), 'user.virtiofs.security.capability', 'user.virtiofs.user.kept']);
  let host: HostProcess | undefined;
  let fe: VhostUserFrontend | undefined;
  try {
    host = await startHost(['--socket-path', '{socket}', '--plugin', join(REPO, 'dist', 'plugins', 'fs.wasm'), '--shared-dir', dir, '--xattr', '--xattrmap', ':map::user.virtiofs.:']);
    fe = await VhostUserFrontend.connect(host.socketPath, { memoryBytes: 16 << 20, queues: [128, 128], features: 1n << BigInt(VIRTIO_F_VERSION_1) });
    const c = new FuseClient(fe);
    t.is((await c.init()).error, 0, 'INIT');
    const fh = fhOfOpen(await c.open(nodeOf(await c.lookup(1n, 'file')), O.RDWR));
    t.deepEqual(hostNames(join(dir, 'file')), ['user.virtiofs.security.capability', 'user.virtiofs.user.kept'], 'opening keeps it');
    t.is((await c.req(OP.WRITE, 0n, writeIn(fh, 0n, Buffer.from('DATA')))).error, 0, 'WRITE');
    t.deepEqual(hostNames(join(dir, 'file')), ['user.virtiofs.user.kept'], 'the WRITE dropped the renamed capability, nothing else');
    t.is(readFileSync(join(dir, 'file'), 'utf8'), 'DATA\n');
  } finally {
    await fe?.close();
    await host?.stop('SIGKILL');
  }
});
