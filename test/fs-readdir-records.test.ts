// FsShare.readdirRecords (wit/device.wit `readdir-records`) on a real directory: the same
// entries as `readdir`, as fuse_dirent records; as many as fit with the per-entry extra, near enough;
// and a listing stays right however the directory fd was moved in between (it reads on without
// a seek only while the fd stands where the last call left it).
import test from 'ava';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FsShare, type FsResult } from '../host/fs/index.ts';
import { E } from '../host/fs/share.ts';

function val<T>(r: FsResult<T>): T {
  if (!r.ok) throw new Error(`expected ok, got errno ${r.errno}`);
  return r.val;
}

interface Rec {
  ino: bigint;
  next: bigint;
  kind: number;
  name: string;
  size: number;
}

/** The records of one answer, each checked for the layout the WIT promises. */
function records(bytes: Uint8Array): Rec[] {
  const b = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length);
  const out: Rec[] = [];
  for (let at = 0; at < b.length; ) {
    const len = b.readUInt32LE(at + 16);
    const size = (24 + len + 7) & ~7;
    if (len < 1 || len > 255 || at + size > b.length) throw new Error(`malformed record at ${at}`);
    if (b.subarray(at + 24 + len, at + size).some((x) => x !== 0)) throw new Error(`padding of record at ${at} is not zeros`);
    out.push({ ino: b.readBigUInt64LE(at), next: b.readBigUInt64LE(at + 8), kind: b.readUInt32LE(at + 20), name: b.toString('latin1', at + 24, at + 24 + len), size });
    at += size;
  }
  return out;
}

function setup(t: import('ava').ExecutionContext) {
  const top = mkdtempSync(join(tmpdir(), 'fs-records-'));
  mkdirSync(join(top, 'd'));
  // Names of many lengths, so records of every padding.
  for (let i = 0; i < 300; i++) writeFileSync(join(top, 'd', `${'n'.repeat(1 + (i % 40))}${i}`), '');
  const s = new FsShare(top);
  const root = val(s.root()).node;
  const dir = val(s.lookup(root, Buffer.from('d'))).node;
  t.teardown(() => {
    s.close();
    rmSync(top, { recursive: true, force: true });
  });
  return { s, dir, open: () => val(s.open(dir, 0o200000 /* O_DIRECTORY */)) };
}

/** A whole listing in answers of `max` bytes with `extra` per entry: its answers' records. */
function listing(s: FsShare, h: bigint, max: number, extra: number): Rec[][] {
  const pages: Rec[][] = [];
  for (let off = 0n; ; ) {
    const r = records(val(s.readdirRecords(h, off, max, extra)));
    if (r.length === 0) return pages;
    pages.push(r);
    off = r[r.length - 1].next;
  }
}
const charged = (page: Rec[], extra: number) => page.reduce((n, x) => n + x.size + extra, 0);

test('the same entries as readdir, each answer within its bytes with the per-entry extra and near full', (t) => {
  const { s, open } = setup(t);
  const h = open();
  const want = val(s.readdir(h, 0n, 4096)).map((e) => ({ ino: e.ino, next: e.next, kind: e.kind, name: Buffer.from(e.name).toString('latin1') }));
  t.is(want.length, 302);
  for (const [max, extra] of [[4096, 0], [4096, 128], [65536, 0], [300, 0]]) {
    const pages = listing(s, h, max, extra);
    t.deepEqual(pages.flat().map(({ size: _, ...r }) => r), want, `max ${max}, extra ${extra}: every entry once, in order, as readdir gives it`);
    pages.forEach((page, i) => {
      const n = charged(page, extra);
      if (n > max) t.fail(`max ${max}, extra ${extra}: answer ${i} counts ${n} bytes`);
      // Near full: the host stops rather than read an entry it might not return (a getdents64
      // record is 0-8 bytes shorter than its fuse_dirent, 24 at least), so an answer (but the
      // last) ends less than (next + 8) x (32 + extra) / 24 bytes short.
      const following = pages[i + 1]?.[0];
      if (following && max - n >= ((following.size + 8) * (32 + extra)) / 24) t.fail(`max ${max}, extra ${extra}: answer ${i} (${n} bytes) stopped short of ${following.name}`);
    });
  }
});

test('a listing stays right when the fd was moved between calls: from 0 again, by readdir, or by another position', (t) => {
  const { s, open } = setup(t);
  const pages = listing(s, open(), 4096, 0);
  t.true(pages.length >= 3 && pages[0].length > 20);
  const [first, second, third] = pages;
  const after = (page: Rec[]) => page[page.length - 1].next;
  const h = open();
  t.deepEqual(records(val(s.readdirRecords(h, 0n, 4096, 0))), first);
  t.deepEqual(records(val(s.readdirRecords(h, after(first), 4096, 0))), second);
  // The guest starts over (rewinddir), then goes on: the same pages.
  t.deepEqual(records(val(s.readdirRecords(h, 0n, 4096, 0))), first, 'from 0 again');
  // readdir on the same handle moves the fd behind readdirRecords' back.
  val(s.readdir(h, 0n, 500));
  t.deepEqual(records(val(s.readdirRecords(h, after(first), 4096, 0))), second, 'after readdir moved the fd');
  // A position in the middle of the first page.
  t.deepEqual(records(val(s.readdirRecords(h, first[9].next, 4096, 0)))[0], first[10], 'from the 11th entry');
  // Two handles of one directory, interleaved: each its own stream.
  const h2 = open();
  t.deepEqual(records(val(s.readdirRecords(h2, 0n, 4096, 0))), first);
  t.deepEqual(records(val(s.readdirRecords(h, after(first), 4096, 0))), second);
  t.deepEqual(records(val(s.readdirRecords(h2, after(first), 4096, 0))), second);
  t.deepEqual(records(val(s.readdirRecords(h, after(second), 4096, 0))), third, 'the third page on the first handle');
});

test('bad arguments: a per-entry extra past 4096 and an answer too small for one entry are EINVAL; past the end is empty; a node handle is EBADF', (t) => {
  const { s, dir, open } = setup(t);
  const h = open();
  const e = (r: FsResult<Uint8Array>) => (r.ok ? `ok (${r.val.length} bytes)` : r.errno);
  t.is(e(s.readdirRecords(h, 0n, 4096, 4097)), E.EINVAL);
  t.is(e(s.readdirRecords(h, 0n, 16, 0)), E.EINVAL, 'not even "." fits in 16 bytes: an error, not the end');
  t.is(e(s.readdirRecords(h, 0n, 4096 + 4096, 4096)), 'ok (32 bytes)', 'an extra of 4096: one entry of a 8192-byte answer');
  const all = listing(s, h, 4096, 0).flat();
  t.is(e(s.readdirRecords(h, all[all.length - 1].next, 4096, 0)), 'ok (0 bytes)');
  t.is(e(s.readdirRecords(h, 2n ** 63n, 4096, 0)), 'ok (0 bytes)');
  t.is(e(s.readdirRecords(dir, 0n, 4096, 0)), E.EBADF, 'a node, not an open directory');
  t.is(e(s.readdirRecords(12345n, 0n, 4096, 0)), E.EBADF);
});
