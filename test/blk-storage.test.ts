// The storage grant's host side on its own: backings on real files and in memory (what the
// I/O executors run answers against), and the `storage` import a plugin sees (vhost:device@0.2.0:
// sizes and flags only; the bytes move through answers).
import test from 'ava';
import { randomBytes } from 'node:crypto';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CapabilityError } from '../host/plugin/imports.ts';
import { storageImports } from '../host/plugin/storage-imports.ts';
import { BackingError, FileBacking, MemoryBacking, createMemoryDisk, mapMemoryDisk, openBacking, type Backing } from '../host/storage/index.ts';
import { native } from '../host/native/index.ts';

const dir = mkdtempSync(join(tmpdir(), 'blk-storage-'));
test.after.always(() => rmSync(dir, { recursive: true, force: true }));

interface Imports {
  size(): bigint;
  readOnly(): boolean;
  blockSize(): number;
}

function grant(b: Backing | undefined): Imports {
  return storageImports(b, () => {
    throw new CapabilityError('storage was not granted');
  }) as unknown as Imports;
}

test('the storage import tells size, read-only and block size, and moves no bytes', (t) => {
  const s = grant(new MemoryBacking(1 << 20, false));
  t.deepEqual(Object.keys(s).sort(), ['blockSize', 'readOnly', 'size'], 'read/write/flush/discard/write-zeroes are gone in 0.2.0');
  t.is(s.size(), 1048576n);
  t.false(s.readOnly());
  t.is(s.blockSize(), 512);
  const path = join(dir, 'ro-size.img');
  writeFileSync(path, Buffer.alloc(8192));
  const b = FileBacking.open(path, true);
  try {
    t.true(grant(b).readOnly());
    t.is(grant(b).blockSize(), 512, 'a buffered file takes any alignment: the disk default');
  } finally {
    b.close();
  }
});

test('--direct: the block size is what direct I/O aligns to', (t) => {
  const path = join(dir, 'direct.img');
  writeFileSync(path, Buffer.alloc(1 << 20));
  let b: FileBacking;
  try {
    b = FileBacking.open(path, false, { direct: true });
  } catch (e) {
    // tmpdir on tmpfs has no O_DIRECT: then this machine cannot show it (the message says so).
    t.regex((e as Error).message, /does not support O_DIRECT/);
    return;
  }
  try {
    t.true(b.ioAlign === 512 || b.ioAlign === 4096, `direct-I/O alignment ${b.ioAlign}`);
    t.is(grant(b).blockSize(), b.ioAlign);
  } finally {
    b.close();
  }
});

test('memory backing: writes across chunk boundaries, holes read as zeroes, zeroing frees', (t) => {
  const size = 200 * 2 ** 20;
  const mem = new MemoryBacking(size, false);
  t.true(mem.read(5, 4096).every((b) => b === 0));
  const data = randomBytes(3 << 20);
  const at = 64 * 2 ** 20 - (1 << 20); // straddles the first chunk boundary
  mem.write(at, data);
  t.deepEqual(Buffer.from(mem.read(at, data.length)), data);
  mem.writeZeroes(at + 100, 1000);
  const back = Buffer.from(mem.read(at, 2000));
  t.deepEqual(back.subarray(0, 100), data.subarray(0, 100));
  t.true(back.subarray(100, 1100).every((b) => b === 0));
  t.deepEqual(back.subarray(1100), data.subarray(1100, 2000));
  mem.discard(0, size);
  t.true(mem.read(at, data.length).every((b) => b === 0));
});

test('memory backing on a shared memfd: two backings (two queue threads) are one disk; zeroing punches holes both see', (t) => {
  const size = 130 * 2 ** 20;
  const fd = createMemoryDisk(size);
  const a = new MemoryBacking(size, false, mapMemoryDisk(fd, size, false));
  const b = openBacking({ kind: 'memory', size, readOnly: false, fd });
  try {
    const data = randomBytes(1 << 20);
    const at = 128 * 2 ** 20 - 12345; // straddles the second chunk boundary, not page-aligned
    a.write(at, data);
    t.deepEqual(Buffer.from(b.read(at, data.length)), data, 'a write through one is what the other reads');
    b.writeZeroes(at + 100, 3 * 4096);
    const back = Buffer.from(a.read(at, 4 * 4096));
    t.deepEqual(back.subarray(0, 100), data.subarray(0, 100));
    t.true(back.subarray(100, 100 + 3 * 4096).every((x) => x === 0), 'the zeroed range, holes and edges, reads back as zeroes through the other');
    t.deepEqual(back.subarray(100 + 3 * 4096), data.subarray(100 + 3 * 4096, 4 * 4096));
    t.throws(() => openBacking({ kind: 'memory', size: size + 4096, readOnly: false, fd }), { message: /its memfd holds \d+ bytes, not \d+/ });
  } finally {
    a.close();
    b.close();
  }
  t.is(native.fdKind(fd), 'memfd', 'closing the backings left the borrowed fd to its owner');
  native.close(fd);
});

test('file backing: write, flush, write-zeroes land in the file; a failed read names the file and the cause', (t) => {
  const path = join(dir, 'rw.img');
  writeFileSync(path, randomBytes(1 << 20));
  const b = FileBacking.open(path, false);
  const data = randomBytes(4096);
  b.write(8192, data);
  b.flush();
  t.deepEqual(readFileSync(path).subarray(8192, 8192 + 4096), data);
  b.writeZeroes(0, (3 * 1024 * 1024) / 4);
  t.true(readFileSync(path).subarray(0, 786432).every((x) => x === 0));
  // Someone truncates the image under the device: reads past the new end are I/O errors.
  writeFileSync(path, Buffer.alloc(4096));
  t.throws(() => b.read(8192, 4096), { instanceOf: BackingError, message: /rw\.img: read of 4096 bytes at 8192 failed: unexpected end of file/ });
  b.close();
});

test('no grant: every call traps with the capability named', (t) => {
  const s = grant(undefined);
  t.throws(() => s.size(), { instanceOf: CapabilityError, message: /storage was not granted/ });
  t.throws(() => s.readOnly(), { instanceOf: CapabilityError });
  t.throws(() => s.blockSize(), { instanceOf: CapabilityError });
});

test('opening: clear errors for missing files, directories and files without permission', (t) => {
  t.throws(() => openBacking({ kind: 'file', path: join(dir, 'nope.img'), readOnly: false }), {
    instanceOf: BackingError,
    message: /--storage .*nope\.img: cannot open for reading and writing \(give --read-only for a read-only disk\): ENOENT/,
  });
  t.throws(() => openBacking({ kind: 'file', path: dir, readOnly: true }), { message: /not a regular file/ });
  const locked = join(dir, 'locked.img');
  writeFileSync(locked, Buffer.alloc(512));
  chmodSync(locked, 0o000);
  if (process.getuid?.() === 0) {
    t.log('running as root: permission bits do not stop us, EACCES not exercised');
  } else {
    t.throws(() => openBacking({ kind: 'file', path: locked, readOnly: true }), { message: /EACCES/ });
  }
  t.is(openBacking({ kind: 'memory', size: 4096, readOnly: false }).size, 4096);
});
