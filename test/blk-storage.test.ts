// The storage grant's host side on its own: backings on real files and in memory, and the
// import layer that stands between them and a hostile plugin.
import test from 'ava';
import { randomBytes } from 'node:crypto';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CapabilityError } from '../host/plugin/imports.ts';
import { MAX_STORAGE_IO, storageImports } from '../host/plugin/storage-imports.ts';
import { BackingError, FileBacking, MemoryBacking, createMemoryDisk, openBacking, type Backing } from '../host/storage/index.ts';
import { native } from '../host/native/index.ts';

const dir = mkdtempSync(join(tmpdir(), 'blk-storage-'));
test.after.always(() => rmSync(dir, { recursive: true, force: true }));

interface Imports {
  size(): bigint;
  readOnly(): boolean;
  read(offset: bigint, len: number): unknown;
  write(offset: bigint, data: Uint8Array): unknown;
  flush(): unknown;
  discard(offset: bigint, len: bigint): unknown;
  writeZeroes(offset: bigint, len: bigint): unknown;
}

function grant(b: Backing | undefined, logs: string[] = []): Imports {
  return storageImports(b, () => {
    throw new CapabilityError('storage was not granted');
  }, (m) => logs.push(m)) as unknown as Imports;
}

const E = (val: string) => ({ tag: 'err', val });

test('hostile ranges are refused before the backing sees them', (t) => {
  const mem = new MemoryBacking(1 << 20, false);
  const logs: string[] = [];
  const s = grant(mem, logs);
  t.is(s.size(), 1048576n);
  t.deepEqual(s.read(1048576n, 1), E('out-of-range'));
  t.deepEqual(s.read(1048575n, 2), E('out-of-range'));
  t.deepEqual(s.read(2n ** 64n - 1n, 1), E('out-of-range'));
  t.deepEqual(s.read(0n, MAX_STORAGE_IO + 1), E('out-of-range'));
  t.deepEqual(s.write(1048064n, new Uint8Array(513)), E('out-of-range'));
  t.deepEqual(s.discard(0n, 2n ** 64n - 1n), E('out-of-range'));
  t.deepEqual(s.writeZeroes(2n ** 63n, 1n), E('out-of-range'));
  t.is((s.read(1048575n, 1) as Uint8Array).length, 1, 'the last byte is readable');
  t.is(logs.length, 1, 'one warning however many refusals');
  t.regex(logs[0], /read of 1 bytes at 1048576 is outside the 1048576-byte store/);
  t.is((s.read(1048576n, 0) as Uint8Array).length, 0, 'an empty read at the end is in range');
});

test('memory backing: writes across chunk boundaries, holes read as zeroes, zeroing frees', (t) => {
  const size = 200 * 2 ** 20;
  const mem = new MemoryBacking(size, false);
  const s = grant(mem);
  t.true((s.read(5n, 4096) as Uint8Array).every((b) => b === 0));
  const data = randomBytes(3 << 20);
  const at = 64 * 2 ** 20 - (1 << 20); // straddles the first chunk boundary
  t.is(s.write(BigInt(at), data), undefined);
  t.deepEqual(Buffer.from(s.read(BigInt(at), data.length) as Uint8Array), data);
  t.is(s.writeZeroes(BigInt(at + 100), 1000n), undefined);
  const back = Buffer.from(s.read(BigInt(at), 2000) as Uint8Array);
  t.deepEqual(back.subarray(0, 100), data.subarray(0, 100));
  t.true(back.subarray(100, 1100).every((b) => b === 0));
  t.deepEqual(back.subarray(1100), data.subarray(1100, 2000));
  t.is(s.discard(0n, BigInt(size)), undefined);
  t.true((s.read(BigInt(at), data.length) as Uint8Array).every((b) => b === 0));
});

test('memory backing on a shared memfd: two backings (two queue threads) are one disk; zeroing punches holes both see', (t) => {
  const size = 130 * 2 ** 20;
  const fd = createMemoryDisk(size);
  const a = new MemoryBacking(size, false, fd);
  const b = new MemoryBacking(size, false, fd);
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
    t.throws(() => new MemoryBacking(size + 4096, false, fd), { message: /holds \d+ bytes, not \d+/ });
  } finally {
    a.close();
    b.close();
  }
  t.is(native.fdKind(fd), 'memfd', 'closing the backings left the borrowed fd to its owner');
  native.close(fd);
});

test('read-only grants refuse every modification but still read and flush', (t) => {
  const path = join(dir, 'ro.img');
  const data = randomBytes(8192);
  writeFileSync(path, data);
  const b = FileBacking.open(path, true);
  const s = grant(b);
  t.true(s.readOnly());
  t.deepEqual(s.write(0n, new Uint8Array(512)), E('read-only'));
  t.deepEqual(s.discard(0n, 512n), E('read-only'));
  t.deepEqual(s.writeZeroes(0n, 512n), E('read-only'));
  t.is(s.flush(), undefined);
  t.deepEqual(Buffer.from(s.read(512n, 1024) as Uint8Array), data.subarray(512, 1536));
  b.close();
  t.deepEqual(readFileSync(path), data);
});

test('file backing: write, flush, write-zeroes land in the file; I/O failures become io with a log line', (t) => {
  const path = join(dir, 'rw.img');
  writeFileSync(path, randomBytes(1 << 20));
  const b = FileBacking.open(path, false);
  const logs: string[] = [];
  const s = grant(b, logs);
  const data = randomBytes(4096);
  t.is(s.write(8192n, data), undefined);
  t.is(s.flush(), undefined);
  t.deepEqual(readFileSync(path).subarray(8192, 8192 + 4096), data);
  t.is(s.writeZeroes(0n, 3n * 1024n * 1024n / 4n), undefined);
  t.true(readFileSync(path).subarray(0, 786432).every((x) => x === 0));
  // Someone truncates the image under the device: reads past the new end are I/O errors.
  writeFileSync(path, Buffer.alloc(4096));
  t.deepEqual(s.read(8192n, 4096), E('io'));
  t.regex(logs.join('\n'), /rw\.img: read of 4096 bytes at 8192 failed: unexpected end of file/);
  b.close();
});

test('no grant: every call traps with the capability named', (t) => {
  const s = grant(undefined);
  t.throws(() => s.size(), { instanceOf: CapabilityError, message: /storage was not granted/ });
  t.throws(() => s.read(0n, 1), { instanceOf: CapabilityError });
  t.throws(() => s.flush(), { instanceOf: CapabilityError });
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
