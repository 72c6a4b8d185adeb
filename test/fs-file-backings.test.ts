// filesystem.backing's host side: an open file of a real share becomes an entry in the device's
// backing table (host/fs/file-backings.ts), with the real fd, the right read-only flag, one index
// per handle, and out of the table before its fd is closed or the device resets.
import test from 'ava';
import { mkdtempSync, readSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FsFileBackings, type FsBackingTable, type FsFileBacking } from '../host/fs/file-backings.ts';
import { filesystemImports } from '../host/fs/imports.ts';
import { E, FsShare } from '../host/fs/share.ts';

const dir = mkdtempSync(join(tmpdir(), 'fs-backings-'));
test.after.always(() => rmSync(dir, { recursive: true, force: true }));
writeFileSync(join(dir, 'a.txt'), 'hello from the share');

/** A backing table as the runner keeps one: indexes from 1 (0 is --storage), a fixed capacity. */
class Table implements FsBackingTable {
  readonly entries = new Map<number, FsFileBacking>();
  private next = 1;
  constructor(private readonly capacity = 8) {}
  add(file: FsFileBacking): number | null {
    if (this.entries.size >= this.capacity) return null;
    const i = this.next++;
    this.entries.set(i, file);
    return i;
  }
  remove(index: number): void {
    this.entries.delete(index);
  }
}

const O_RDONLY = 0;
const O_RDWR = 2;

function setup(opts: { readOnly?: boolean; capacity?: number } = {}) {
  const share = new FsShare(dir, { readOnly: opts.readOnly ?? false });
  const table = new Table(opts.capacity);
  const files = new FsFileBackings(share, table);
  const fs = filesystemImports(share, () => {
    throw new Error('not granted');
  }, files) as Record<string, (...a: unknown[]) => { tag: string; val: unknown }>;
  const root = fs.root().val as { node: bigint };
  const node = (fs.lookup(root.node, Buffer.from('a.txt')).val as { node: bigint }).node;
  return { share, table, files, fs, root, node };
}

test('an open file gets one index, with its real fd; a read-only open is a read-only backing', (t) => {
  const { share, table, fs, node } = setup();
  try {
    const rw = fs.open(node, O_RDWR).val as bigint;
    const first = fs.backing(rw);
    t.is(first.tag, 'ok');
    t.deepEqual(fs.backing(rw), first, 'the same handle, the same index');
    const entry = table.entries.get(first.val as number)!;
    t.false(entry.readOnly);
    const buf = Buffer.alloc(5);
    t.is(readSync(entry.fd, buf, 0, 5, 0), 5);
    t.is(buf.toString(), 'hello', 'the fd is the open file');
    const ro = fs.open(node, O_RDONLY).val as bigint;
    const roIndex = fs.backing(ro).val as number;
    t.not(roIndex, first.val);
    t.true(table.entries.get(roIndex)!.readOnly);
  } finally {
    share.close();
  }
});

test('a node handle or a stale handle is EBADF; a full table is ENFILE', (t) => {
  const { share, fs, node } = setup({ capacity: 1 });
  try {
    t.deepEqual(fs.backing(node), { tag: 'err', val: E.EBADF }, 'a node handle is not an open file');
    t.deepEqual(fs.backing(12345n), { tag: 'err', val: E.EBADF });
    t.is(fs.backing(fs.open(node, O_RDONLY).val).tag, 'ok');
    t.deepEqual(fs.backing(fs.open(node, O_RDONLY).val), { tag: 'err', val: E.ENFILE });
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
    t.false(table.entries.has(ia), 'gone before its fd is closed');
    t.deepEqual(fs.backing(a), { tag: 'err', val: E.EBADF }, 'a closed handle has no backing');
    t.is(files.size, 1);
    files.releaseAll();
    share.releaseAll();
    t.is(table.entries.size, 0);
    t.is(files.size, 0);
  } finally {
    share.close();
  }
});

test('a --read-only share gives read-only backings whatever the flags', (t) => {
  const { share, table, fs, node } = setup({ readOnly: true });
  try {
    const h = fs.open(node, O_RDONLY).val as bigint;
    t.true(table.entries.get(fs.backing(h).val as number)!.readOnly);
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
