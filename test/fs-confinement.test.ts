// The `filesystem` capability directly (host/fs/share.ts over host/native/src/fs.c): a
// hostile plugin (or guest) must never reach outside the share, whatever names, symlinks,
// hard links or racing renames it uses, and a read-only grant must refuse every mutation.
import test from 'ava';
import { spawn } from 'node:child_process';
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, renameSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FsShare, type FsResult } from '../host/fs/index.ts';
import { E } from '../host/fs/share.ts';

const enc = (s: string) => new TextEncoder().encode(s);
const S_IFMT = 0o170000;
const S_IFLNK = 0o120000;
const S_IFDIR = 0o040000;

function val<T>(r: FsResult<T>): T {
  if (!r.ok) throw new Error(`expected ok, got errno ${r.errno}`);
  return r.val;
}
function errno<T>(r: FsResult<T>): number {
  if (r.ok) throw new Error(`expected an error, got ${String(r.val)}`);
  return r.errno;
}

function fixture() {
  const top = mkdtempSync(join(tmpdir(), 'fs-conf-'));
  const share = join(top, 'share');
  const outside = join(top, 'outside');
  mkdirSync(join(share, 'sub'), { recursive: true });
  mkdirSync(outside);
  writeFileSync(join(outside, 'secret'), 'TOP SECRET');
  writeFileSync(join(share, 'file'), 'inside');
  writeFileSync(join(share, 'sub', 'inner'), 'inner');
  symlinkSync(join(outside, 'secret'), join(share, 'abs'));
  symlinkSync('../outside/secret', join(share, 'rel'));
  symlinkSync('../outside', join(share, 'reldir'));
  symlinkSync(outside, join(share, 'absdir'));
  symlinkSync(join(outside, 'created'), join(share, 'dangling'));
  return { top, share, outside, secretIno: BigInt(statSync(join(outside, 'secret')).ino) };
}

test('names are single components: "..", ".", "/" and empty are refused', (t) => {
  const f = fixture();
  const s = new FsShare(f.share);
  t.teardown(() => (s.close(), rmSync(f.top, { recursive: true, force: true })));
  const root = val(s.root()).node;
  for (const bad of ['..', '.', '../outside', 'sub/../../outside', '/etc', 'a\0b']) {
    t.not(errno(s.lookup(root, enc(bad))), 0, bad);
  }
  t.is(errno(s.lookup(root, enc(''))), E.ENOENT);
  t.is(errno(s.lookup(root, enc('x'.repeat(256)))), E.ENAMETOOLONG);
  // From a subdirectory, ".." is refused too: it would be inside the share, but a
  // server that never walks ".." cannot be tricked at the root either.
  const sub = val(s.lookup(root, enc('sub'))).node;
  t.is(errno(s.lookup(sub, enc('..'))), E.EINVAL);
  const ops: Array<() => FsResult<unknown>> = [
    () => s.mkdir(root, enc('../evil'), 0o755),
    () => s.create(root, enc('../evil'), 2, 0o644),
    () => s.symlink(root, enc('..'), enc('x')),
    () => s.rename(root, enc('file'), root, enc('../moved'), 0),
    () => s.unlink(root, enc('../outside/secret')),
  ];
  for (const op of ops) {
    t.is(errno(op()), E.EINVAL);
  }
  t.true(existsSync(join(f.outside, 'secret')));
  t.false(existsSync(join(f.top, 'evil')));
  t.false(existsSync(join(f.top, 'moved')));
});

test('absolute and relative symlinks are never followed', (t) => {
  const f = fixture();
  const s = new FsShare(f.share);
  t.teardown(() => (s.close(), rmSync(f.top, { recursive: true, force: true })));
  const root = val(s.root()).node;
  for (const name of ['abs', 'rel', 'reldir', 'absdir', 'dangling']) {
    const e = val(s.lookup(root, enc(name)));
    t.is(e.attr.mode & S_IFMT, S_IFLNK, `${name} is looked up as the link itself`);
    t.not(BigInt(e.attr.ino), f.secretIno);
    t.is(errno(s.open(e.node, 0)), E.ELOOP, `${name}: open refuses the link`);
    // Walking "through" the link as a directory fails.
    t.is(errno(s.lookup(e.node, enc('secret'))), E.ENOTDIR, `${name}: no lookup through it`);
    t.true(val(s.readlink(e.node)).length > 0);
    t.is(errno(s.setattr(e.node, 8, 0, 0, 0, 0n, 0n, 0, 0n, 0)), E.EOPNOTSUPP, `${name}: truncate refused`);
    t.is(errno(s.setattr(e.node, 1, 0o777, 0, 0, 0n, 0n, 0, 0n, 0)), E.EOPNOTSUPP, `${name}: chmod refused`);
  }
  // Creating through a dangling symlink must not create its target outside.
  t.is(errno(s.create(root, enc('dangling'), 0o1 | 0o100, 0o644)), E.ELOOP);
  t.false(existsSync(join(f.outside, 'created')));
  t.is(readFileSync(join(f.outside, 'secret'), 'utf8'), 'TOP SECRET');
  t.is(statSync(join(f.outside, 'secret')).mode & 0o777, 0o644);
});

test('lookup-known resolves as lookup does: no ".." or path, no symlink followed; node 0 only for the inode named', (t) => {
  const f = fixture();
  const s = new FsShare(f.share);
  t.teardown(() => (s.close(), rmSync(f.top, { recursive: true, force: true })));
  const root = val(s.root()).node;
  const secretDev = BigInt(statSync(join(f.outside, 'secret')).dev);
  const held = val(s.lookup(root, enc('file'))).node;
  for (const bad of ['..', '.', '../outside/secret', 'sub/inner', '/etc']) {
    t.not(errno(s.lookupKnown(root, enc(bad), held, secretDev, f.secretIno)), 0, bad);
  }
  // A symlink to the outside file, claimed to be that file: the link itself, a new handle.
  for (const name of ['abs', 'rel']) {
    const e = val(s.lookupKnown(root, enc(name), held, secretDev, f.secretIno));
    t.is(e.attr.mode & S_IFMT, S_IFLNK, `${name} is looked up as the link itself`);
    t.not(e.node, 0n, `${name}: not the inode claimed, so a handle`);
    t.is(errno(s.open(e.node, 0)), E.ELOOP);
    s.closeHandle(e.node);
  }
  const file = statSync(join(f.share, 'file'));
  // A symlink to the held file itself, claimed to be it: still the link, a new handle.
  symlinkSync('file', join(f.share, 'to-file'));
  const link = val(s.lookupKnown(root, enc('to-file'), held, BigInt(file.dev), BigInt(file.ino)));
  t.is(link.attr.mode & S_IFMT, S_IFLNK, 'a link to the held file is the link');
  t.not(link.node, 0n);
  s.closeHandle(link.node);
  const before = s.openHandles;
  const known = val(s.lookupKnown(root, enc('file'), held, BigInt(file.dev), BigInt(file.ino)));
  t.is(known.node, 0n, 'the inode named: no handle');
  t.is(known.attr.ino, file.ino);
  t.is(known.attr.size, 6, 'with its attributes now');
  t.is(s.openHandles, before, 'nothing held');
  // The same name claimed as another inode (it was replaced): a handle on what it is now.
  const other = val(s.lookupKnown(root, enc('file'), held, BigInt(file.dev), BigInt(file.ino) + 1n));
  t.not(other.node, 0n);
  t.is(other.attr.ino, file.ino);
  t.is(s.openHandles, before + 1);
  t.is(errno(s.lookupKnown(999n, enc('file'), held, BigInt(file.dev), BigInt(file.ino))), E.EBADF, 'an unknown directory handle');
});

test('a symlink swapped in for a held directory does not redirect the handle', (t) => {
  const f = fixture();
  const s = new FsShare(f.share);
  t.teardown(() => (s.close(), rmSync(f.top, { recursive: true, force: true })));
  const root = val(s.root()).node;
  const sub = val(s.lookup(root, enc('sub'))).node;
  // Swap: the directory moves away, a symlink to the outside takes its name.
  renameSync(join(f.share, 'sub'), join(f.share, 'sub-moved'));
  symlinkSync(f.outside, join(f.share, 'sub'));
  writeFileSync(join(f.outside, 'inner'), 'OUTSIDE');
  const inner = val(s.lookup(sub, enc('inner')));
  const fh = val(s.open(inner.node, 0));
  t.is(Buffer.from(val(s.read(fh, 0n, 100))).toString(), 'inner', 'the held handle still names the moved directory');
  t.is(val(s.lookup(root, enc('sub'))).attr.mode & S_IFMT, S_IFLNK, 'a fresh lookup sees the link, as a link');
});

test('racing symlink swaps during lookups never yield the outside file', async (t) => {
  const f = fixture();
  const s = new FsShare(f.share);
  mkdirSync(join(f.share, 'swap-dir'));
  writeFileSync(join(f.share, 'swap-dir', 'secret'), 'decoy');
  symlinkSync(f.outside, join(f.share, 'swap-link'));
  // Another process flips "swap" between a real directory and a symlink to the outside
  // (renameat2 would be atomic; two renames are enough to race the lookups), from the moment it
  // says "go" until it is killed: a loaded machine may start it late, so the lookups run until
  // the race has really been run through the directory (decoys seen), not for a fixed time.
  const script = `
    const fs = require('fs'); const p = require('path'); const d = process.argv[1];
    process.stdout.write('go\\n');
    for (;;) {
      try { fs.renameSync(p.join(d, 'swap-dir'), p.join(d, 'swap')); fs.renameSync(p.join(d, 'swap'), p.join(d, 'swap-dir')); } catch {}
      try { fs.renameSync(p.join(d, 'swap-link'), p.join(d, 'swap')); fs.renameSync(p.join(d, 'swap'), p.join(d, 'swap-link')); } catch {}
    }`;
  const child = spawn(process.execPath, ['-e', script, f.share], { stdio: ['ignore', 'pipe', 'ignore'] });
  const exited = new Promise((r) => child.once('exit', r));
  t.teardown(async () => {
    child.kill('SIGKILL');
    await exited; // no rename may race the removal of the share
    s.close();
    rmSync(f.top, { recursive: true, force: true });
  });
  await new Promise<void>((resolve, reject) => {
    child.stdout!.once('data', () => resolve());
    child.once('exit', (c) => reject(new Error(`the renaming process exited (${c}) before it started`)));
  });
  const root = val(s.root()).node;
  let hits = 0;
  let decoys = 0;
  let lookups = 0;
  // At least 2,000 lookups of "swap" and 20 through the real directory; a bound on the rounds
  // keeps a machine where the renamer never gets a CPU from looping for ever (then the decoy
  // assertion below fails, saying the race did not run).
  for (let round = 0; round < 200_000 && (lookups < 2_000 || decoys < 20); round++) {
    const sw = s.lookup(root, enc('swap'));
    if (round % 64 === 0) await new Promise((r) => setImmediate(r));
    if (!sw.ok) continue;
    lookups++;
    const sec = s.lookup(sw.val.node, enc('secret'));
    s.closeHandle(sw.val.node);
    if (!sec.ok) continue;
    if (BigInt(sec.val.attr.ino) === f.secretIno) hits++;
    else decoys++;
    s.closeHandle(sec.val.node);
  }
  t.is(hits, 0, 'never resolved to the secret outside the share');
  t.true(decoys > 0, 'the race actually ran lookups through the directory');
  t.is(s.openHandles, 1);
});

test('hard links stay inside; links of directories are refused', (t) => {
  const f = fixture();
  const s = new FsShare(f.share);
  t.teardown(() => (s.close(), rmSync(f.top, { recursive: true, force: true })));
  const root = val(s.root()).node;
  const file = val(s.lookup(root, enc('file')));
  const sub = val(s.lookup(root, enc('sub')));
  const hl = val(s.link(file.node, sub.node, enc('hl')));
  t.is(hl.attr.ino, file.attr.ino);
  t.is(hl.attr.nlink, 2);
  t.is(readFileSync(join(f.share, 'sub', 'hl'), 'utf8'), 'inside');
  t.is(errno(s.link(sub.node, root, enc('dirlink'))), E.EPERM);
  t.is(errno(s.link(file.node, root, enc('../outside-link'))), E.EINVAL);
  // A hard link of a symlink is a symlink: still never followed.
  const abs = val(s.lookup(root, enc('abs')));
  const absLink = val(s.link(abs.node, root, enc('abs2')));
  t.is(absLink.attr.mode & S_IFMT, S_IFLNK);
  t.is(errno(s.open(absLink.node, 0)), E.ELOOP);
  t.false(existsSync(join(f.top, 'outside-link')));
});

test('handles: bogus, closed and wrong-kind handles are EBADF; with an fd per inode, maxHandles caps them (ENFILE)', (t) => {
  const f = fixture();
  const s = new FsShare(f.share, { maxHandles: 4, inodeFileHandles: 'never' });
  t.teardown(() => (s.close(), rmSync(f.top, { recursive: true, force: true })));
  const root = val(s.root()).node;
  t.is(errno(s.lookup(0n, enc('file'))), E.EBADF);
  t.is(errno(s.lookup(999n, enc('file'))), E.EBADF);
  t.is(errno(s.lookup(2n ** 64n - 1n, enc('file'))), E.EBADF);
  const file = val(s.lookup(root, enc('file')));
  const fh = val(s.open(file.node, 0));
  t.is(errno(s.read(file.node, 0n, 10)), E.EBADF, 'a node is not an open file');
  t.is(errno(s.lookup(fh, enc('x'))), E.EBADF, 'an open file is not a node');
  s.closeHandle(fh);
  t.is(errno(s.read(fh, 0n, 10)), E.EBADF, 'closed');
  // The cap: root + file + 2 more, then ENFILE, and nothing leaks.
  val(s.lookup(root, enc('sub')));
  val(s.lookup(root, enc('sub')));
  t.is(errno(s.lookup(root, enc('sub'))), E.ENFILE);
  t.is(s.openHandles, 4);
});

test('read-only grants refuse every mutation and leave the tree unchanged', (t) => {
  const f = fixture();
  const s = new FsShare(f.share, { readOnly: true });
  t.teardown(() => (s.close(), rmSync(f.top, { recursive: true, force: true })));
  const before = snapshot(f.share);
  const root = val(s.root()).node;
  const file = val(s.lookup(root, enc('file')));
  const fh = val(s.open(file.node, 0));
  t.is(Buffer.from(val(s.read(fh, 0n, 100))).toString(), 'inside');
  const mutations: Array<[string, () => FsResult<unknown>]> = [] as Array<[string, () => FsResult<unknown>]>;
  mutations.push(
    ['open O_WRONLY', () => s.open(file.node, 1)],
    ['open O_RDWR', () => s.open(file.node, 2)],
    ['open O_TRUNC', () => s.open(file.node, 0o1000)],
    ['create', () => s.create(root, enc('new'), 0o101, 0o644)],
    ['mknod', () => s.mknod(root, enc('new'), 0o100644)],
    ['mkdir', () => s.mkdir(root, enc('new'), 0o755)],
    ['symlink', () => s.symlink(root, enc('new'), enc('file'))],
    ['link', () => s.link(file.node, root, enc('new'))],
    ['unlink', () => s.unlink(root, enc('file'))],
    ['rmdir', () => s.rmdir(root, enc('sub'))],
    ['rename', () => s.rename(root, enc('file'), root, enc('new'), 0)],
    ['write', () => s.write(fh, 0n, enc('x'))],
    ['truncate', () => s.setattr(file.node, 8, 0, 0, 0, 0n, 0n, 0, 0n, 0)],
    ['chmod', () => s.setattr(file.node, 1, 0o777, 0, 0, 0n, 0n, 0, 0n, 0)],
    ['chown', () => s.setattr(file.node, 2, 0, 1, 0, 0n, 0n, 0, 0n, 0)],
    ['utimens', () => s.setattr(file.node, 16 | 32, 0, 0, 0, 0n, 1n, 0, 1n, 0)],
    ['fallocate', () => s.fallocate(fh, 0, 0n, 4096n)],
  );
  for (const [what, op] of mutations) t.is(errno(op()), E.EROFS, what);
  t.deepEqual(snapshot(f.share), before);
});

test('basic operations work on a writable grant', (t) => {
  const f = fixture();
  const s = new FsShare(f.share);
  t.teardown(() => (s.close(), rmSync(f.top, { recursive: true, force: true })));
  const root = val(s.root()).node;
  const [e, fh] = val(s.create(root, enc('n'), 0o102 | 0o200, 0o640));
  t.is(e.attr.mode, 0o100640);
  t.is(val(s.write(fh, 0n, enc('hello world'))), 11);
  t.is(val(s.getattr(e.node)).size, 11);
  t.is(val(s.setattr(e.node, 8, 0, 0, 0, 5n, 0n, 0, 0n, 0)).size, 5);
  t.is(readFileSync(join(f.share, 'n'), 'utf8'), 'hello');
  const d = val(s.mkdir(root, enc('d'), 0o750));
  t.is(d.attr.mode & S_IFMT, S_IFDIR);
  val(s.rename(root, enc('n'), d.node, enc('m'), 0));
  t.is(readFileSync(join(f.share, 'd', 'm'), 'utf8'), 'hello');
  const dh = val(s.open(d.node, 0o200000));
  const names = val(s.readdir(dh, 0n, 100)).map((x) => Buffer.from(x.name).toString()).sort();
  t.deepEqual(names, ['.', '..', 'm']);
  t.is(errno(s.rmdir(root, enc('d'))), E.ENOTEMPTY);
  val(s.unlink(d.node, enc('m')));
  val(s.rmdir(root, enc('d')));
  t.true(val(s.statfs(root)).blocks > 0n);
  t.false(existsSync(join(f.share, 'd')));
});

function snapshot(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string, rel: string) => {
    for (const n of readdirSync(d).sort()) {
      const p = join(d, n);
      const st = lstatSync(p);
      out.push(`${rel}${n} ${st.mode.toString(8)} ${st.size} ${st.mtimeMs}`);
      if (st.isDirectory()) walk(p, `${rel}${n}/`);
    }
  };
  walk(dir, '');
  return out;
}

test('a guest cannot plant set-user-id or set-group-id files', (t) => {
  const f = fixture();
  const s = new FsShare(f.share);
  t.teardown(() => (s.close(), rmSync(f.top, { recursive: true, force: true })));
  const root = val(s.root()).node;
  const [e] = val(s.create(root, enc('suid'), 0o101, 0o6755));
  t.is(e.attr.mode & 0o7777, 0o755);
  t.is(val(s.setattr(e.node, 1, 0o4755, 0, 0, 0n, 0n, 0, 0n, 0)).mode & 0o7777, 0o755);
  t.is(val(s.setattr(e.node, 1, 0o2755, 0, 0, 0n, 0n, 0, 0n, 0)).mode & 0o7777, 0o755);
  t.is(val(s.mknod(root, enc('suid2'), 0o104755)).attr.mode & 0o7777, 0o755);
  // Directories keep set-group-id (group inheritance) but never set-user-id.
  const d = val(s.mkdir(root, enc('d'), 0o6775));
  t.is(d.attr.mode & 0o7777, 0o2775);
  t.is(statSync(join(f.share, 'suid')).mode & 0o7777, 0o755);
});
