// Inodes held by file handle (--inode-file-handles, host/fs/share.ts over
// host/native/src/fhandle.c): a looked-up inode costs no fd, a deleted file's handle never
// reaches another file, a handle made on another filesystem is refused, and the modes do what
// --help says. The last test is the point of it all: a guest looks up 100,000 files through
// the fs plugin in a real host process whose hard fd limit is 4,096.
import test, { type ExecutionContext } from 'ava';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, renameSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FsShare, type FsResult } from '../host/fs/index.ts';
import { E } from '../host/fs/share.ts';
import { native } from '../host/native/index.ts';
import { ENTRY_SLOTS, STAT_SLOTS } from '../host/native/fs-api.ts';
import { ensureFdBudget } from '../host/resources/fd-budget.ts';
import { VhostUserFrontend, VIRTIO_F_VERSION_1, type FrontendOptions } from '../host/frontend/driver.ts';
import { assertBuilt, BIN, REPO } from './helpers/host-process.ts';
import { startMultiHost, stableFdCount } from './helpers/multi-host.ts';
import { FuseClient, nodeOf } from './helpers/fuse.ts';
import { fillInodes, mountSmallExt4 } from './helpers/small-ext4.ts';

const enc = (s: string) => new TextEncoder().encode(s);
const O_DIRECTORY = 0o200000;

function val<T>(r: FsResult<T>): T {
  if (!r.ok) throw new Error(`expected ok, got errno ${r.errno}`);
  return r.val;
}
function errno<T>(r: FsResult<T>): number {
  if (r.ok) throw new Error(`expected an error, got ${JSON.stringify(r.val, (_k, v) => (typeof v === 'bigint' ? String(v) : v))}`);
  return r.errno;
}
const ownFds = () => readdirSync('/proc/self/fd').length;

function fixture(base = tmpdir()) {
  const top = mkdtempSync(join(base, 'fs-fh-'));
  const share = join(top, 'share');
  mkdirSync(join(share, 'sub'), { recursive: true });
  writeFileSync(join(share, 'file'), 'inside');
  symlinkSync('file', join(share, 'link'));
  return { top, share };
}

test('prefer: looked-up inodes hold no fd, and every operation works through the handle', (t) => {
  const f = fixture();
  for (let i = 0; i < 200; i++) writeFileSync(join(f.share, 'sub', `n${i}`), `${i}`);
  const s = new FsShare(f.share);
  t.teardown(() => (s.close(), rmSync(f.top, { recursive: true, force: true })));
  t.is(s.nodesBy, 'handles');
  const before = ownFds();
  const root = val(s.root()).node;
  const sub = val(s.lookup(root, enc('sub'))).node;
  const nodes = [];
  for (let i = 0; i < 200; i++) nodes.push(val(s.lookup(sub, enc(`n${i}`))));
  t.is(s.openFds, 0, 'no fd held for 202 nodes');
  t.is(s.cachedDirFds, 2, 'only the two directories looked in keep an fd between calls');
  t.is(ownFds(), before + s.cachedDirFds, 'and none other left open in the process');
  t.is(nodes[7].attr.ino, statSync(join(f.share, 'sub', 'n7')).ino);
  t.is(val(s.getattr(nodes[7].node)).ino, nodes[7].attr.ino);
  const fh = val(s.open(nodes[7].node, 0));
  t.is(Buffer.from(val(s.read(fh, 0n, 10))).toString(), '7');
  t.is(s.openFds, 1, 'an open file holds its I/O fd');
  s.closeHandle(fh);
  t.is(Buffer.from(val(s.readlink(val(s.lookup(root, enc('link'))).node))).toString(), 'file');
  const made = val(s.mkdir(sub, enc('made'), 0o750));
  t.is(made.attr.mode & 0o7777, 0o750);
  const [created, cfh] = val(s.create(made.node, enc('new'), 2, 0o640));
  t.is(val(s.write(cfh, 0n, enc('hello'))), 5);
  s.closeHandle(cfh);
  t.is(val(s.getattr(created.node)).size, 5);
  val(s.rename(made.node, enc('new'), root, enc('moved'), 0));
  t.is(statSync(join(f.share, 'moved')).size, 5);
  t.is(val(s.getattr(created.node)).ino, created.attr.ino, 'the handle follows the inode across a rename');
  val(s.unlink(root, enc('moved')));
  t.true(val(s.statfs(root)).bsize > 0);
  t.is(s.openFds, 0);
  for (const n of nodes) s.closeHandle(n.node);
  s.closeHandle(made.node);
  s.closeHandle(sub);
  t.is(s.cachedDirFds, 1, "a closed directory's cached fd goes with its handle");
  s.closeHandle(root);
  t.is(s.cachedDirFds, 0);
  t.is(ownFds(), before);
});

test('directory fds kept between calls: at most 16, dropped when a directory is removed or renamed over, given back before an open file is refused', (t) => {
  const f = fixture();
  for (let i = 0; i < 20; i++) {
    mkdirSync(join(f.share, `d${i}`));
    writeFileSync(join(f.share, `d${i}`, 'x'), `${i}`);
  }
  const before = ownFds();
  const s = new FsShare(f.share, { maxHandles: 3 });
  t.teardown(() => (s.close(), rmSync(f.top, { recursive: true, force: true })));
  const root = val(s.root()).node;
  const dirs = Array.from({ length: 20 }, (_, i) => val(s.lookup(root, enc(`d${i}`))).node);
  t.is(s.cachedDirFds, 1, 'the root, looked in 20 times');
  for (let i = 0; i < 20; i++) t.is(val(s.lookup(dirs[i], enc('x'))).attr.size, 1 + Number(i >= 10));
  t.is(s.cachedDirFds, 3, "bounded by the share's fd cap (3) as well as the cache's own 16");
  t.is(ownFds(), before + 2 + s.cachedDirFds, 'the root and mount fds and the cached ones, nothing else');

  // A rename between two directories, one of them evicted by the other's open: both fds stay
  // usable until the rename returns (the file arrives), and a rename drops the cache.
  val(s.rename(dirs[0], enc('x'), dirs[19], enc('y'), 0));
  t.is(statSync(join(f.share, 'd19', 'y')).size, 1);
  t.is(s.cachedDirFds, 0);
  t.is(ownFds(), before + 2);

  // Removed through the share: the cached fd must not keep the directory alive.
  val(s.lookup(dirs[5], enc('x')));
  t.is(s.cachedDirFds, 1);
  rmSync(join(f.share, 'd5', 'x'));
  val(s.rmdir(root, enc('d5')));
  t.is(s.cachedDirFds, 0);
  t.true([E.ESTALE, E.ENOENT].includes(errno(s.getattr(dirs[5]))), 'the removed directory is gone');
  t.true([E.ESTALE, E.ENOENT].includes(errno(s.lookup(dirs[5], enc('x')))));

  // Removed behind the share's back while cached: names in it are gone (ENOENT), never another directory's.
  val(s.lookup(dirs[6], enc('x')));
  rmSync(join(f.share, 'd6'), { recursive: true });
  t.true([E.ESTALE, E.ENOENT].includes(errno(s.lookup(dirs[6], enc('x')))));

  // Open files come first: the cached fds are given back so all 3 opens of the cap succeed.
  val(s.lookup(dirs[7], enc('x')));
  val(s.lookup(dirs[8], enc('x')));
  t.true(s.cachedDirFds >= 2);
  const files = [7, 8, 9].map((i) => val(s.open(val(s.lookup(dirs[i], enc('x'))).node, 0)));
  t.is(s.openFds, 3);
  t.is(s.cachedDirFds, 0, 'no fd cached while the cap is reached');
  t.is(val(s.lookup(dirs[10], enc('x'))).attr.size, 2, 'lookups still work, opening the directory each time');
  t.is(s.cachedDirFds, 0);
  for (const h of files) s.closeHandle(h);
  s.releaseAll();
  t.is(s.cachedDirFds, 0);
  t.is(ownFds(), before + 2);
});

test('a file the guest unlinked while it holds it open keeps its attributes through the node (nlink 0), ESTALE once closed', (t) => {
  const f = fixture();
  const s = new FsShare(f.share);
  t.teardown(() => (s.close(), rmSync(f.top, { recursive: true, force: true })));
  const root = val(s.root()).node;
  const node = val(s.lookup(root, enc('file'))).node;
  const fh = val(s.open(node, 0));
  val(s.unlink(root, enc('file')));
  t.is(val(s.getattr(node)).nlink, 0, 'the temp-file pattern: open, unlink, fstat');
  t.is(Buffer.from(val(s.read(fh, 0n, 16))).toString(), 'inside');
  s.closeHandle(fh);
  t.is(errno(s.getattr(node)), E.ESTALE);
});

test('lookup-known and same-node tell a new file that reuses a held inode number from the inode held; with fds the number is pinned', (t) => {
  const f = fixture();
  const s = new FsShare(f.share);
  t.teardown(() => (s.close(), rmSync(f.top, { recursive: true, force: true })));
  t.is(s.nodesBy, 'handles');
  const root = val(s.root()).node;
  const held = val(s.lookup(root, enc('file')));
  // As the plugin passes them: u64s, BigInts.
  const [dev, ino] = [BigInt(held.attr.dev), BigInt(held.attr.ino)];
  t.is(val(s.lookupKnown(root, enc('file'), held.node, dev, ino)).node, 0n, 'the same inode: no handle');
  rmSync(join(f.share, 'file'));
  let reused = false;
  for (let i = 0; i < 500 && !reused; i++) {
    writeFileSync(join(f.share, `n${i}`), 'new');
    if (BigInt(statSync(join(f.share, `n${i}`)).ino) === ino) {
      renameSync(join(f.share, `n${i}`), join(f.share, 'file'));
      reused = true;
    }
  }
  t.true(reused, 'ext4 gave a new file the held inode number');
  const fresh = val(s.lookupKnown(root, enc('file'), held.node, dev, ino));
  t.not(fresh.node, 0n, 'same (dev, ino), another generation: a new handle');
  t.is(BigInt(fresh.attr.ino), ino);
  t.false(s.sameNode(held.node, fresh.node));
  const again = val(s.lookup(root, enc('file')));
  t.true(s.sameNode(fresh.node, again.node), 'one inode looked up twice');
  t.is(val(s.lookupKnown(root, enc('file'), fresh.node, dev, ino)).node, 0n);
  t.is(errno(s.getattr(held.node)), E.ESTALE, 'the held one is the deleted file');
  t.false(s.sameNode(held.node, 999n), 'an unknown handle is no node');

  const byFd = new FsShare(f.share, { inodeFileHandles: 'never' });
  t.teardown(() => byFd.close());
  const r = val(byFd.root()).node;
  const a = val(byFd.lookup(r, enc('file')));
  t.is(val(byFd.lookupKnown(r, enc('file'), a.node, BigInt(a.attr.dev), BigInt(a.attr.ino))).node, 0n, 'an fd-held inode: (dev, ino) suffices');
  const b = val(byFd.lookup(r, enc('file')));
  t.true(byFd.sameNode(a.node, b.node));
});

test('with handles, fds are spent only by open files: past the cap an OPEN answers ENFILE, lookups go on', (t) => {
  const f = fixture();
  for (let i = 0; i < 5; i++) writeFileSync(join(f.share, `o${i}`), `${i}`);
  const s = new FsShare(f.share, { maxHandles: 3 });
  t.teardown(() => (s.close(), rmSync(f.top, { recursive: true, force: true })));
  const root = val(s.root()).node;
  const nodes = [0, 1, 2, 3, 4].map((i) => val(s.lookup(root, enc(`o${i}`))).node);
  const open = nodes.slice(0, 3).map((n) => val(s.open(n, 0)));
  t.is(s.openFds, 3);
  t.is(errno(s.open(nodes[3], 0)), E.ENFILE, 'the fourth open file');
  t.is(val(s.lookup(root, enc('o4'))).attr.size, 1, 'a lookup needs no fd to keep');
  t.is(val(s.getattr(nodes[4])).size, 1);
  s.closeHandle(open[0]);
  t.is(Buffer.from(val(s.read(val(s.open(nodes[3], 0)), 0n, 8))).toString(), '3', 'an fd given back can be used again');
});

// ext4 on a small image with every other inode taken gives the freed number to the next file for
// certain (test/helpers/small-ext4.ts); tmpfs numbers only grow, so there the handle's own
// staleness is what is checked.
for (const [fsName, smallExt4] of [['ext4', true], ['tmpfs (/dev/shm)', false]] as const) {
  test(`${fsName}: a deleted file's handle answers ESTALE or ENOENT, never another file, even when its inode number is reused`, (t) => {
    let base = '/dev/shm';
    if (smallExt4) {
      const e4 = mountSmallExt4();
      t.teardown(() => e4.unmount());
      base = e4.path;
    }
    const f = fixture(base);
    const s = new FsShare(f.share);
    t.teardown(() => (s.close(), rmSync(f.top, { recursive: true, force: true })));
    t.is(s.nodesBy, 'handles');
    const root = val(s.root()).node;
    const victim = val(s.lookup(root, enc('file')));
    const fillers = smallExt4 ? fillInodes(f.share) : [];
    rmSync(join(f.share, 'file'));
    writeFileSync(join(f.share, 'r0'), 'another file');
    const reused = statSync(join(f.share, 'r0')).ino === victim.attr.ino;
    for (const p of fillers) rmSync(p);
    if (smallExt4) t.true(reused, 'the new file has the deleted one\'s inode number');
    else t.log(reused ? 'the inode number was reused by a new file' : 'tmpfs gave the new file a new inode number');
    const after: FsResult<unknown>[] = [s.getattr(victim.node), s.open(victim.node, 0), s.lookup(victim.node, enc('x')), s.readlink(victim.node)];
    for (const r of after) {
      t.true([E.ESTALE, E.ENOENT].includes(errno(r)), 'ESTALE/ENOENT, not the new file');
    }
  });
}

/** Two shares on two mounts (/tmp's and tmpfs), each root's O_PATH fd and O_RDONLY (mount) fd, closed and removed at teardown. */
function twoMounts(t: ExecutionContext) {
  ensureFdBudget();
  const a = fixture();
  const b = fixture('/dev/shm');
  t.teardown(() => (rmSync(a.top, { recursive: true, force: true }), rmSync(b.top, { recursive: true, force: true })));
  const rootA = native.fsOpenRoot(a.share);
  const mountA = native.fsReopen(rootA, O_DIRECTORY);
  const rootB = native.fsOpenRoot(b.share);
  const mountB = native.fsReopen(rootB, O_DIRECTORY);
  t.teardown(() => [rootA, mountA, rootB, mountB].forEach((fd) => native.fsClose(fd)));
  return { a, b, rootA, mountA, rootB, mountB };
}

test('a handle record made on another filesystem is refused (ESTALE: it names none of this one\'s inodes); forged records never open anything', (t) => {
  const { rootA, mountA, rootB } = twoMounts(t);
  t.not(native.fsMountId(rootA), native.fsMountId(rootB), 'two mounts');
  const rec = new Uint8Array(140);
  const n = native.fsNameToHandle(rootB, rec);
  t.true(n > 12);
  t.is(native.fsOpenByHandle(mountA, rec.subarray(0, n)), -E.ESTALE, "another filesystem's handle");
  // The same bytes claiming to be from A's mount: whatever the kernel makes of them, only
  // the handle's own inode could come back (here: none).
  const own = new Uint8Array(140);
  native.fsNameToHandle(rootA, own);
  const forged = Uint8Array.from(rec.subarray(0, n));
  forged.set(own.subarray(0, 4), 0);
  const r = native.fsOpenByHandle(mountA, forged);
  if (r >= 0) native.fsClose(r);
  t.true(r < 0, `a tmpfs handle relabelled as ext4's opens nothing (got ${r})`);
  t.is(native.fsOpenByHandle(mountA, rec.subarray(0, 11)), -E.EINVAL, 'truncated');
  const long = Uint8Array.from(own.subarray(0, 12 + 8));
  new DataView(long.buffer).setUint32(4, 200, true);
  t.is(native.fsOpenByHandle(mountA, long), -E.EINVAL, 'a size past MAX_HANDLE_SZ');
});

test('fsLookupEntry, fsStatName, fsStatByHandle and fsOpenFileByHandle answer as the calls they stand for; a mount fd made another mount is not taken for the old one', (t) => {
  const { a, b, rootA, mountA, rootB, mountB } = twoMounts(t);
  const out = new Float64Array(ENTRY_SLOTS);
  const fh = new Uint8Array(140);
  const heldBefore = ownFds();

  // With a record asked for: the stat, the record, and no fd left open.
  t.is(native.fsLookupEntry(rootA, enc('file'), out, fh), 0);
  t.is(out[1], statSync(join(a.share, 'file')).ino);
  t.is(out[STAT_SLOTS], -1, 'no fd kept');
  const want = new Uint8Array(140);
  const fd = native.fsLookup(rootA, enc('file'));
  const n = native.fsNameToHandle(fd, want);
  native.fsClose(fd);
  t.is(out[STAT_SLOTS + 1], n);
  t.deepEqual(fh.subarray(0, n), want.subarray(0, n), "fsNameToHandle's record");
  t.is(ownFds(), heldBefore);
  // Without: the O_PATH fd is kept, budgeted and owned (fsClose takes it back).
  t.is(native.fsLookupEntry(rootA, enc('sub'), out, null), 0);
  t.is(out[STAT_SLOTS + 1], 0);
  t.true(out[STAT_SLOTS] >= 0);
  t.is(out[2] & 0o170000, 0o040000);
  t.is(native.fsClose(out[STAT_SLOTS]), 0);
  // Resolved as fsLookup: a symlink is itself, never followed; no "..", no path.
  t.is(native.fsLookupEntry(rootA, enc('link'), out, fh), 0);
  t.is(out[2] & 0o170000, 0o120000, 'the symlink itself');
  t.is(native.fsLookupEntry(rootA, enc('..'), out, fh), -E.EINVAL);
  t.is(native.fsLookupEntry(rootA, enc('sub/x'), out, fh), -E.EINVAL);
  t.is(native.fsLookupEntry(rootA, enc('nope'), out, fh), -E.ENOENT);
  // fsStatName: the same stat and record without opening anything, and the mount id it is on.
  t.is(native.fsLookupEntry(rootA, enc('sub'), out, fh), 0);
  const named = new Float64Array(ENTRY_SLOTS);
  const fh2 = new Uint8Array(140);
  t.is(native.fsStatName(rootA, enc('sub'), named, fh2), 0);
  t.deepEqual(named.subarray(0, STAT_SLOTS), out.subarray(0, STAT_SLOTS), "fsLookupEntry's stat, its exact bits too");
  t.is(named[STAT_SLOTS], native.fsMountId(rootA));
  t.is(named[STAT_SLOTS + 1], out[STAT_SLOTS + 1]);
  t.deepEqual(fh2.subarray(0, out[STAT_SLOTS + 1]), fh.subarray(0, out[STAT_SLOTS + 1]), "fsLookupEntry's record");
  t.is(native.fsStatName(rootA, enc('link'), named, null), 0);
  t.is(named[2] & 0o170000, 0o120000, 'the symlink itself');
  t.is(named[STAT_SLOTS + 1], 0, 'no record asked for');
  t.is(native.fsStatName(rootA, enc('..'), named, fh2), -E.EINVAL);
  t.is(native.fsStatName(rootA, enc('sub/x'), named, fh2), -E.EINVAL);
  t.is(native.fsStatName(rootA, enc('nope'), named, fh2), -E.ENOENT);
  t.is(ownFds(), heldBefore, 'nothing left open by any of them');

  // fsStatByHandle: the record's inode, ESTALE for another mount's record, EINVAL for a bad one.
  t.is(native.fsLookupEntry(rootA, enc('file'), out, fh), 0);
  const recA = Uint8Array.from(fh.subarray(0, out[STAT_SLOTS + 1]));
  t.is(native.fsLookupEntry(rootB, enc('file'), out, fh), 0);
  const recB = Uint8Array.from(fh.subarray(0, out[STAT_SLOTS + 1]));
  const st = new Float64Array(STAT_SLOTS);
  t.is(native.fsStatByHandle(mountA, recA, st), 0);
  t.is(st[1], statSync(join(a.share, 'file')).ino);
  t.is(native.fsStatByHandle(mountA, recB, st), -E.ESTALE);
  t.is(native.fsStatByHandle(mountA, recA.subarray(0, 11), st), -E.EINVAL);
  // The mount id of mountA is remembered between calls; once mountA's number refers to B's
  // directory (dup3 onto it), A's records are refused against it and B's accepted.
  t.is(native.fsDup(mountB, mountA), mountA);
  t.is(native.fsStatByHandle(mountA, recA, st), -E.ESTALE, "A's record against what is now B's mount");
  t.is(native.fsStatByHandle(mountA, recB, st), 0);
  t.is(st[1], statSync(join(b.share, 'file')).ino);
  // fsOpenFileByHandle: a regular file's record opens it for I/O; anything else is refused and
  // never blocks (a FIFO without a writer), whatever the access mode.
  const mA = native.fsReopen(rootA, O_DIRECTORY);
  const io = native.fsOpenFileByHandle(mA, recA, 0);
  t.true(io >= 0);
  const got = new Uint8Array(16);
  t.is(Buffer.from(got.subarray(0, native.fsPread(io, got, 0))).toString(), 'inside');
  t.is(native.fsClose(io), 0);
  execFileSync('mkfifo', [join(a.share, 'fifo')]);
  for (const name of ['fifo', 'sub', 'link']) {
    t.is(native.fsLookupEntry(rootA, enc(name), out, fh), 0);
    for (const acc of [0, 1, 2]) {
      const r = native.fsOpenFileByHandle(mA, fh.subarray(0, out[STAT_SLOTS + 1]), acc);
      // The kernel's own answer for a directory opened to write (EISDIR) or a symlink (ELOOP) comes first.
      t.true([E.ENXIO, E.EISDIR, E.ELOOP].includes(-r), `${name}, access ${acc}: ${r}`);
      if (name === 'fifo') t.is(r, -E.ENXIO);
    }
  }
  t.is(native.fsOpenFileByHandle(mA, recB, 0), -E.ESTALE);
  native.fsClose(mA);
  t.is(ownFds(), heldBefore, 'nothing left open');
  // A deleted file's record: ESTALE, never another file.
  rmSync(join(a.share, 'file'));
  t.is(native.fsStatByHandle(mountB, recA, st), -E.ESTALE);
  const mountA2 = native.fsReopen(rootA, O_DIRECTORY);
  t.teardown(() => native.fsClose(mountA2));
  t.is(native.fsStatByHandle(mountA2, recA, st), -E.ESTALE);
  t.is(native.fsOpenFileByHandle(mountA2, recA, 0), -E.ESTALE);
  t.is(ownFds(), heldBefore + 1, 'only the new mount fd');
});

test('mandatory refuses a filesystem without file handles; prefer falls back to an fd per inode; never always uses fds', (t) => {
  t.throws(() => new FsShare('/proc', { readOnly: true, inodeFileHandles: 'mandatory' }), {
    message: /--inode-file-handles=mandatory, but file handles do not work on \/proc: name_to_handle_at: (ENOTSUP|EOPNOTSUPP) \(the filesystem has no file handles\)/,
  });
  const p = new FsShare('/proc', { readOnly: true, inodeFileHandles: 'prefer' });
  t.teardown(() => p.close());
  t.is(p.nodesBy, 'fds');
  const root = val(p.root()).node;
  val(p.lookup(root, enc('self')));
  t.is(p.openFds, 2, 'each node holds an fd');

  const f = fixture();
  const s = new FsShare(f.share, { inodeFileHandles: 'never' });
  t.teardown(() => (s.close(), rmSync(f.top, { recursive: true, force: true })));
  t.is(s.nodesBy, 'fds');
  val(s.lookup(val(s.root()).node, enc('file')));
  t.is(s.openFds, 2);
  t.throws(() => new FsShare(f.share, { inodeFileHandles: 'sometimes' as 'never' }), { message: /inode-file-handles must be/ });
});

test('the CLI: --inode-file-handles=mandatory on a filesystem without handles stops start-up with the reason', (t) => {
  assertBuilt();
  const r = spawnSync(process.execPath, [BIN, '--socket-path', join(tmpdir(), `fh-${process.pid}.sock`), '--plugin', join(REPO, 'dist', 'plugins', 'fs.wasm'),
    '--shared-dir', '/proc', '--read-only', '--inode-file-handles', 'mandatory'], { encoding: 'utf8', timeout: 20_000 });
  t.is(r.status, 1);
  t.regex(r.stderr, /ERROR vhost-wasm: --inode-file-handles=mandatory, but file handles do not work on \/proc: name_to_handle_at: (ENOTSUP|EOPNOTSUPP) \(the filesystem has no file handles\)/);
});

test('a guest looks up 100,000 files through the fs plugin under a 4,096-fd hard limit: every one works', async (t) => {
  t.timeout(600_000);
  const N = 100_000;
  execFileSync(process.execPath, ['build.mjs', '--only', 'plugins'], { cwd: REPO, stdio: 'ignore' });
  const dir = mkdtempSync(join(tmpdir(), 'fs-fh-100k-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const share = join(dir, 'share');
  mkdirSync(share);
  for (let d = 0; d < 10; d++) {
    mkdirSync(join(share, `d${d}`));
    for (let i = 0; i < N / 10; i++) writeFileSync(join(share, `d${d}`, `f${i}`), '');
  }
  const sock = join(dir, 'fs.sock');
  const host = await startMultiHost(
    [{ label: 'fs', socket: sock, plugin: join(REPO, 'dist', 'plugins', 'fs.wasm'), options: { filesystem: { dir: share, readOnly: true }, cacheDir: join(dir, 'cache') }, callDeadlineMs: 10_000 }],
    { nofile: [1024, 4096] },
  );
  t.teardown(() => host.stop());
  const opts: FrontendOptions = { memoryBytes: 32 << 20, queues: [64, 256], features: 1n << BigInt(VIRTIO_F_VERSION_1) };
  const fe = await host.within(VhostUserFrontend.connect(sock, opts), 'connect');
  t.teardown(() => fe.close());
  const fuse = new FuseClient(fe);
  t.is((await fuse.init()).error, 0);
  const dirs: bigint[] = [];
  for (let d = 0; d < 10; d++) dirs.push(nodeOf(await fuse.lookup(1n, `d${d}`)));
  const baseline = await stableFdCount(host);
  const ids = new Set<bigint>();
  let failed = 0;
  for (let i = 0; i < N; i += 128) {
    const batch = [];
    for (let j = i; j < i + 128 && j < N; j++) batch.push(fuse.lookup(dirs[j % 10], `f${Math.floor(j / 10)}`));
    for (const r of await host.within(Promise.all(batch), `lookups from ${i}`, 60_000)) {
      if (r.error) failed++;
      else ids.add(nodeOf(r));
    }
  }
  t.log(`${N} lookups: ${failed} failed, ${ids.size} distinct node ids; host fds ${host.fdCount()} (baseline ${baseline}, hard limit 4096)`);
  t.is(failed, 0);
  t.is(ids.size, N, 'one node id per file');
  t.true(host.fdCount() < baseline + 64, 'the looked-up inodes hold no fds');
  // Every node id still reaches its own file.
  const sample = [...ids].filter((_, k) => k % 1000 === 0);
  for (const id of sample) t.is((await fuse.getattr(id)).error, 0);
  t.is(host.lines(/fd budget spent/).length, 0);
});
