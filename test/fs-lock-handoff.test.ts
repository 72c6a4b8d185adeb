// The lock handoff (host/fs/lock-handoff.ts) as hostile input: a bad format is refused with
// what is wrong, and a handoff that names fds which are not the files it claims (another file,
// a pipe, another process's numbers) is refused by the share that would take them over, which
// then holds nothing of it.
import test from 'ava';
import { mkdtempSync, openSync, closeSync, fstatSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FsShare } from '../host/fs/index.ts';
import { decodeLockHandoff, encodeLockHandoff, type LockHandoff } from '../host/fs/lock-handoff.ts';
import { native } from '../host/native/index.ts';

const END = (1n << 63n) - 1n;

function val<T>(r: { ok: true; val: T } | { ok: false; errno: number }): T {
  if (!r.ok) throw new Error(`errno ${r.errno}`);
  return r.val;
}

test('a handoff round-trips; bad magic, a newer format, bad fields and an undescribed open file are refused with the reason', (t) => {
  const h: LockHandoff = {
    pid: process.pid,
    files: [{ id: 5n, inode: '2049:77', acc: 2, fd: 31 }],
    owners: [{ fd: 40, inode: '2049:77', owner: 0xfedcba9876543210n, file: 5n, ranges: [{ start: 0n, end: END, kind: 1, pid: 9 }], forgot: false }],
    flocked: [5n],
  };
  const bytes = Buffer.from(encodeLockHandoff(h));
  t.deepEqual(decodeLockHandoff(bytes), h);
  const bad = (edit: (b: Buffer) => Buffer, re: RegExp) => t.throws(() => decodeLockHandoff(edit(Buffer.from(bytes))), { message: re });
  bad((b) => (b.write('XXXX', 0, 'latin1'), b), /bad magic/);
  bad((b) => ((b[4] = 9), (b[5] = 9), b), /needs a reader of version 9/);
  bad((b) => ((b[6] = 1), b), /reserved bytes/);
  const json = (o: unknown) => Buffer.concat([bytes.subarray(0, 8), Buffer.from(JSON.stringify(o))]);
  const body = JSON.parse(bytes.subarray(8).toString()) as Record<string, unknown>;
  bad(() => json({ ...body, pid: -1 }), /pid must be an integer/);
  bad(() => json({ ...body, flocked: ['6'] }), /open file 6 is named but not described/);
  bad(() => json({ ...body, files: [{ id: '5', inode: '../etc', acc: 2, fd: 31 }] }), /inode must be "dev:ino"/);
  bad(() => json({ ...body, owners: [{ ...(body.owners as object[])[0], owner: '99999999999999999999999' }] }), /owner must be a u64/);
  bad(() => Buffer.concat([bytes.subarray(0, 8), Buffer.from('{')]), /not JSON/);
  const range = { start: '0', end: '0', kind: 1, pid: 9 };
  bad(() => json({ ...body, owners: [{ ...(body.owners as object[])[0], ranges: Array.from({ length: 4097 }, () => range) }] }), /lists 4097 ranges, at most 4096/);
});

test('a share refuses a handoff whose fds are not the files it names, or from another process, and holds nothing of it', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'fs-lock-handoff-'));
  writeFileSync(join(dir, 'f'), 'f');
  writeFileSync(join(dir, 'g'), 'g');
  const giver = new FsShare(dir, { tag: 'giver' });
  const taker = new FsShare(dir, { tag: 'taker' });
  t.teardown(() => {
    giver.close();
    taker.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const open = (s: FsShare, name: string) => val(s.open(val(s.lookup(val(s.root()).node, Buffer.from(name))).node, 2));
  const gf = open(giver, 'f');
  t.true(giver.setlk(gf, 7n, { start: 0n, end: END, kind: 1, pid: 7 }, false, 0n).ok);
  const h = giver.lockHandoff();
  t.is(h.owners.length, 1);
  open(taker, 'f');
  t.regex(taker.adoptLocks({ ...h, pid: h.pid + 1 }) ?? '', /handed over by process \d+, not this one/);
  // The owner's fd swapped for another file's.
  const other = openSync(join(dir, 'g'), 'r');
  t.regex(taker.adoptLocks({ ...h, owners: [{ ...h.owners[0], fd: other }] }) ?? '', /is not inode/);
  closeSync(other);
  // A pipe is never duplicated.
  const [r, w] = native.pipe2();
  t.regex(taker.adoptLocks({ ...h, owners: [{ ...h.owners[0], fd: r }] }) ?? '', /EBADF/);
  native.close(r);
  native.close(w);
  t.is(taker.locks.ownerFds, 0, 'nothing was taken');
  // The real one is taken: the lock is then held by both descriptions' table and refused to others.
  t.is(taker.adoptLocks(h), null);
  t.is(taker.locks.ownerFds, 1);
  giver.releaseAll();
  const tf = open(taker, 'f');
  t.deepEqual(taker.setlk(tf, 8n, { start: 0n, end: 0n, kind: 1, pid: 8 }, false, 0n), { ok: false, errno: 11 }, 'the lock outlived the giver\'s fds');
});

test('a share refuses a handoff fd that would give a read-only open file write access, or an owner on an inode that is not its open file\'s (a file off the share)', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'fs-lock-handoff-'));
  const off = mkdtempSync(join(tmpdir(), 'fs-lock-handoff-off-'));
  writeFileSync(join(dir, 'f'), 'f');
  writeFileSync(join(off, 'secret'), 's');
  const giver = new FsShare(dir, { tag: 'giver' });
  const taker = new FsShare(dir, { tag: 'taker' });
  const peerFds: number[] = [];
  t.teardown(() => {
    for (const fd of peerFds) closeSync(fd);
    giver.close();
    taker.close();
    rmSync(dir, { recursive: true, force: true });
    rmSync(off, { recursive: true, force: true });
  });
  const open = (s: FsShare, name: string, flags: number) => val(s.open(val(s.lookup(val(s.root()).node, Buffer.from(name))).node, flags));
  // The guest holds a flock through a read-only open file, and a record lock.
  const gf = open(giver, 'f', 0);
  t.true(giver.setlk(gf, 7n, { start: 0n, end: END, kind: 0, pid: 7 }, true, 0n).ok);
  t.true(giver.setlk(gf, 8n, { start: 0n, end: END, kind: 0, pid: 8 }, false, 0n).ok);
  const h = giver.lockHandoff();
  t.is(h.files[0].acc, 0);
  const tf = open(taker, 'f', 0);
  // The same inode, but a description open for writing (what a hostile old host could send).
  const rw = openSync(join(dir, 'f'), 'r+');
  peerFds.push(rw);
  t.regex(taker.adoptLocks({ ...h, files: [{ ...h.files[0], fd: rw }] }) ?? '', /not open with the access mode/);
  t.is(taker.write(tf, 0n, Buffer.from('w')).ok, false, 'the read-only open file stayed read-only');
  // An owner whose fd and inode are both a file off the share, through the share's open file.
  const secret = openSync(join(off, 'secret'), 'r');
  peerFds.push(secret);
  const st = fstatSync(secret);
  const owner = { ...h.owners[0], fd: secret, inode: `${st.dev}:${st.ino}` };
  t.regex(taker.adoptLocks({ ...h, flocked: [], owners: [owner] }) ?? '', /names inode .*, not its open file's/);
  t.is(taker.locks.ownerFds, 0, 'nothing off the share is held');
  // The real one is taken.
  t.is(taker.adoptLocks(h), null);
  t.is(taker.locks.ownerFds, 1);
});
