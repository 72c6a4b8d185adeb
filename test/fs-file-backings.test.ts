// filesystem.backing's host side: an open file of a real share becomes an entry in the device's
// backing table (host/fs/file-backings.ts), with the real fd, the right read-only flag, one index
// per handle, and out of the table when the file closes or the device resets; with rounds (the
// runner), a closed file stays named until its call's answers started and its fd open until
// its I/O in flight is done.
import test from 'ava';
import { mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FsFileBackings } from '../host/fs/file-backings.ts';
import { BackingTable } from '../host/io/backing-table.ts';
import { filesystemImports } from '../host/fs/imports.ts';
import { E, FsShare } from '../host/fs/share.ts';

const dir = mkdtempSync(join(tmpdir(), 'fs-backings-'));
test.after.always(() => rmSync(dir, { recursive: true, force: true }));
writeFileSync(join(dir, 'a.txt'), 'hello from the share');

const O_RDONLY = 0;
const O_RDWR = 2;

function setup(opts: { readOnly?: boolean } = {}) {
  const share = new FsShare(dir, { readOnly: opts.readOnly ?? false });
  const table = new BackingTable();
  const files = new FsFileBackings(share, table);
  const fs = filesystemImports(share, () => {
    throw new Error('not granted');
  }, files) as Record<string, (...a: unknown[]) => { tag: string; val: unknown }>;
  const root = fs.root().val as { node: bigint };
  const node = (fs.lookup(root.node, Buffer.from('a.txt')).val as { node: bigint }).node;
  return { share, table, files, fs, root, node };
}

test('an open file gets one index, reading and writing the file; a read-only open is a read-only backing', (t) => {
  const { share, table, fs, node } = setup();
  try {
    const rw = fs.open(node, O_RDWR).val as bigint;
    const first = fs.backing(rw);
    t.is(first.tag, 'ok');
    t.true((first.val as number) >= 1, 'index 0 is --storage');
    t.deepEqual(fs.backing(rw), first, 'the same handle, the same index');
    const entry = table.get(first.val as number)!;
    t.false(entry.readOnly);
    t.true(entry.growable);
    const a = Buffer.alloc(5);
    const b = Buffer.alloc(30, 0xee);
    t.is(entry.readInto(0, [a, b]), 20, 'a short read at the end of the file');
    t.is(Buffer.concat([a, b.subarray(0, 15)]).toString(), 'hello from the share');
    t.true(b.subarray(15).every((x) => x === 0), 'the rest zero-filled');
    entry.writeFrom(20, [Buffer.from('!'), Buffer.from('?')]);
    t.is(readFileSync(join(dir, 'a.txt'), 'utf8'), 'hello from the share!?');
    t.is(entry.size, 22);
    const ro = fs.open(node, O_RDONLY).val as bigint;
    const roIndex = fs.backing(ro).val as number;
    t.not(roIndex, first.val);
    t.true(table.get(roIndex)!.readOnly);
    t.throws(() => table.get(roIndex)!.writeFrom(0, [Buffer.from('x')]), { message: /write of 1 bytes at 0 failed: EBADF/ }, 'the fd itself is O_RDONLY');
  } finally {
    share.close();
  }
});

test('a node handle or a stale handle is EBADF', (t) => {
  const { share, fs, node } = setup();
  try {
    t.deepEqual(fs.backing(node), { tag: 'err', val: E.EBADF }, 'a node handle is not an open file');
    t.deepEqual(fs.backing(12345n), { tag: 'err', val: E.EBADF });
  } finally {
    share.close();
  }
});

test('close takes the index out of the table; a device reset takes them all', (t) => {
  const { share, table, files, fs, node } = setup();
  try {
    const a = fs.open(node, O_RDONLY).val as bigint;
    const b = fs.open(node, O_RDWR).val as bigint;
    const ia = fs.backing(a).val as number;
    fs.backing(b);
    fs.close(a);
    t.is(table.get(ia), undefined, 'gone before its fd is closed');
    t.deepEqual(fs.backing(a), { tag: 'err', val: E.EBADF }, 'a closed handle has no backing');
    t.is(files.size, 1);
    files.releaseAll();
    share.releaseAll();
    t.deepEqual(table.indexes(), []);
    t.is(files.size, 0);
    t.deepEqual(fs.backing(b), { tag: 'err', val: E.EBADF }, 'after a reset the old handle names nothing');
  } finally {
    share.close();
  }
});

test('a --read-only share gives read-only backings whatever the flags', (t) => {
  const { share, table, fs, node } = setup({ readOnly: true });
  try {
    const h = fs.open(node, O_RDONLY).val as bigint;
    t.true(table.get(fs.backing(h).val as number)!.readOnly);
  } finally {
    share.close();
  }
});

test('a host without a backing table says so when a plugin asks', (t) => {
  const share = new FsShare(dir);
  try {
    const fs = filesystemImports(share, () => {
      throw new Error('not granted');
    }) as Record<string, (...a: unknown[]) => unknown>;
    t.throws(() => fs.backing(1n), { message: /no backing table for shared files/ });
  } finally {
    share.close();
  }
});

/** Fds of this process that name `path`. */
function fdsOn(path: string): number {
  let n = 0;
  for (const fd of readdirSync('/proc/self/fd')) {
    try {
      if (readlinkSync(`/proc/self/fd/${fd}`) === path) n++;
    } catch {
      // readdir's own fd, closed by now
    }
  }
  return n;
}

test('with rounds (the runner), a closed file keeps its index until the round ends and its fd until its I/O is done', (t) => {
  const { share, table, fs, node } = setup();
  const path = join(dir, 'a.txt');
  try {
    table.useRounds();
    const base = fdsOn(path);
    const a = fs.open(node, O_RDONLY).val as bigint;
    const ia = fs.backing(a).val as number;
    const io = table.get(ia)!;
    t.is(fdsOn(path), base + 1);
    // A request in flight on it (the UringExecutor pins the target at submit).
    io.uring!.pin!(false);
    fs.close(a);
    t.is(table.get(ia), io, 'answers of the same call may still name it');
    t.deepEqual(fs.backing(a), { tag: 'err', val: E.EBADF }, 'but the handle is closed');
    t.is(share.openFds, 0, 'the share no longer counts it');
    table.endRound();
    t.is(table.get(ia), undefined, 'gone once the round ends');
    t.is(fdsOn(path), base + 1, 'the fd stays open while I/O on it is in flight');
    t.true(io.uring!.fd >= 0);
    // Another file takes the index at once; the old target still names its own fd.
    const b = fs.open(node, O_RDWR).val as bigint;
    t.is(fs.backing(b).val, ia, 'the index is reused');
    t.not(table.get(ia), io);
    io.uring!.unpin!(false);
    t.is(io.uring!.fd, -1, 'the last op done: closed');
    t.is(fdsOn(path), base + 1, 'only b is open now');
    fs.close(b);
    table.endRound();
    t.is(fdsOn(path), base);
  } finally {
    share.close();
  }
});

test('FSYNC waits for the writes in flight on that file only (table.settle), none when there are none', (t) => {
  const { share, table, files, fs, node } = setup();
  try {
    const a = fs.open(node, O_RDWR).val as bigint;
    const io = table.get(fs.backing(a).val as number)!;
    const waits: boolean[] = [];
    table.settle = (until) => {
      waits.push(until());
      io.uring!.unpin!(true); // the executor completes the write
      waits.push(until());
    };
    t.is(fs.fsync(a, false).tag, 'ok');
    t.deepEqual(waits, [], 'no write in flight: no wait');
    io.uring!.pin!(false);
    t.is(fs.fsync(a, true).tag, 'ok');
    t.deepEqual(waits, [], 'a read in flight is not waited for');
    io.uring!.pin!(true);
    t.is(fs.fsync(a, false).tag, 'ok');
    t.deepEqual(waits, [false, true], 'waited until the write was done');
    io.uring!.unpin!(false);
    files.releaseAll();
  } finally {
    share.close();
  }
});

test('a request scattered over many buffers (one preadv/pwritev; past IOV_MAX, one call a buffer) reads and writes every byte in place', (t) => {
  const { share, table, fs, node } = setup();
  try {
    const entry = table.get(fs.backing(fs.open(node, O_RDWR).val as bigint).val as number)!;
    for (const count of [256, 1100]) {
      // Buffers of uneven sizes, as guest pages of a chain are not all whole.
      const sizes = Array.from({ length: count }, (_, i) => 1 + ((i * 37) % 64));
      const from = sizes.map((n, i) => Buffer.alloc(n, (i * 7) & 0xff));
      entry.writeFrom(100, from);
      const into = sizes.map((n) => Buffer.alloc(n, 0xaa));
      const total = sizes.reduce((a, b) => a + b, 0);
      t.is(entry.readInto(100, into), total, `${count} buffers`);
      t.true(into.every((b, i) => b.equals(from[i])), `${count} buffers: each holds its own bytes`);
      t.deepEqual(readFileSync(join(dir, 'a.txt')).subarray(100, 100 + total), Buffer.concat(from));
      // Past the end of the file: what exists, then zeroes.
      const tail = sizes.map((n) => Buffer.alloc(n, 0xaa));
      t.is(entry.readInto(100 + total - 10, tail), 10);
      t.deepEqual(Buffer.concat(tail).subarray(0, 10), Buffer.concat(from).subarray(total - 10));
      t.true(Buffer.concat(tail).subarray(10).every((x) => x === 0));
    }
  } finally {
    share.close();
  }
});
