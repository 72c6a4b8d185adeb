// The I/O executors (host/io) against real kernel objects: files on tmpfs (/dev/shm) and on the
// real disk (/var/tmp: O_DIRECT works there), loop devices with 512- and 4096-byte logical
// blocks, a 1 MiB tmpfs mount for ENOSPC, /proc/self/mem for EIO, pipes for I/O that stays
// pending until the test lets it go (the "slow backing"), and memfd mappings standing in for
// guest memory. Serial: scenarios check the process's fds and mappings for leaks.
import test from 'ava';
import type { ExecutionContext } from 'ava';
import { execFileSync } from 'node:child_process';
import { closeSync, constants, mkdtempSync, openSync, readFileSync, rmSync, statSync, symlinkSync, truncateSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { native as n } from '../host/native/index.ts';
import type { IoExecutor, IoOp, IoResult } from '../host/io/executor.ts';
import { MemoryExecutor } from '../host/io/memory-executor.ts';
import { UringExecutor, type UringTarget } from '../host/io/uring-executor.ts';
import { FileBacking } from '../host/storage/file.ts';
import { MemoryBacking } from '../host/storage/memory.ts';
import { BackingTable, storageIoBacking } from '../host/io/backing-table.ts';
import { chooseExecutor } from '../host/io/choose-executor.ts';
import { coalesceViews } from '../host/io/coalesce-views.ts';
import type { Logger } from '../host/log/logger.ts';
import { fdSnapshot, fdsOpenedSince } from './helpers/fd-snapshot.ts';
import { withTmpfs } from './helpers/small-tmpfs.ts';

const EIO = 5;
const ENOSPC = 28;
const ECANCELED = 125;
const diskDir = mkdtempSync('/var/tmp/vhost-wasm-io-');
const shmDir = mkdtempSync('/dev/shm/vhost-wasm-io-');
test.after.always(() => {
  rmSync(diskDir, { recursive: true, force: true });
  rmSync(shmDir, { recursive: true, force: true });
});

function mapsNamed(name: string): number {
  return readFileSync('/proc/self/maps', 'utf8').split('\n').filter((l) => l.includes(name)).length;
}

async function noLeak(t: ExecutionContext, body: () => unknown | Promise<unknown>): Promise<void> {
  const before = fdSnapshot();
  const maps = mapsNamed('vhost-wasm-bounce');
  await body();
  t.deepEqual(fdsOpenedSince(before), [], 'fds the scenario left open');
  t.is(mapsNamed('vhost-wasm-bounce'), maps, 'bounce-buffer mappings the scenario left');
}

/** Page-aligned "guest memory": a memfd mapping, as the host maps a front-end's regions. */
function guestMemory(bytes: number): { buf: ArrayBuffer; view(off: number, len: number): Uint8Array; close(): void } {
  const fd = n.memfdCreate('io-executor-guest', false);
  n.ftruncate(fd, bytes);
  const m = n.mmap(fd, bytes, 0, true);
  const buf = m.window(0, bytes);
  return {
    buf,
    view: (off, len) => new Uint8Array(buf, off, len),
    close() {
      m.unmap();
      n.close(fd);
    },
  };
}

/** What a scenario opens through, closed after it in reverse order: an executor before the files, pipes and memory it uses, so nothing of its I/O is in the kernel when they go. */
interface Scenario {
  /** The scenario's guest memory (guestMemory). */
  mem: ReturnType<typeof guestMemory>;
  /** A pipe (the "slow backing": a read of it waits until the test writes). */
  pipe(): [readFd: number, writeFd: number];
  /** openSync(path, flags). */
  open(path: string, flags: string | number): number;
  /** `x` (an executor, a backing). */
  own<T extends { close(): void }>(x: T): T;
}

/** `body` under noLeak with `memBytes` of guest memory; whatever it opened through the Scenario is closed after it, whatever it did. */
async function scenario(t: ExecutionContext, memBytes: number, body: (s: Scenario) => Promise<void>): Promise<void> {
  await noLeak(t, async () => {
    const mem = guestMemory(memBytes);
    const closers: (() => void)[] = [() => mem.close()];
    const s: Scenario = {
      mem,
      pipe() {
        const p = n.pipe2();
        closers.push(() => n.close(p[0]), () => n.close(p[1]));
        return p;
      },
      open(path, flags) {
        const fd = openSync(path, flags);
        closers.push(() => closeSync(fd));
        return fd;
      },
      own(x) {
        closers.push(() => x.close());
        return x;
      },
    };
    try {
      await body(s);
    } finally {
      for (const close of closers.reverse()) close();
    }
  });
}

/** A view of `len` bytes of guest memory that was unmapped since (its window detached: length 0), as a request into memory the front-end took away holds. */
function unmappedView(len: number): Uint8Array {
  const gone = guestMemory(65536);
  const v = gone.view(0, len);
  gone.close();
  return v;
}

function pattern(bytes: number, seed: number): Buffer {
  const b = Buffer.alloc(bytes);
  for (let i = 0; i < bytes; i++) b[i] = (i * 31 + seed * 7 + (i >> 9)) & 0xff;
  return b;
}

function run(ex: IoExecutor, ops: IoOp[], barrier = false): Promise<IoResult> {
  return new Promise((resolve) => ex.submit(ops, barrier, resolve));
}

/** A file target that is a FileBacking (fd, directAlign, discard, writeZeroes). */
/** Submits to `ex` and returns the result if the request finished inside submit(), else undefined (still in flight). */
function inSubmit(ex: UringExecutor): (ops: IoOp[], barrier?: boolean) => IoResult | undefined {
  return (ops, barrier = false) => {
    let got: IoResult | undefined;
    ex.submit(ops, barrier, (r) => (got = r));
    return got;
  };
}

function fileTable(...targets: UringTarget[]): (i: number) => UringTarget | undefined {
  return (i) => targets[i];
}

for (const [where, dir] of [['tmpfs', shmDir], ['the real disk', diskDir]] as const) {
  test.serial(`${where}: 64 requests in flight, multi-segment iovecs into guest memory, every byte where it belongs`, async (t) => {
    await scenario(t, 2 << 20, async ({ mem, own }) => {
      const path = join(dir, 'rw.img');
      const initial = pattern(1 << 20, 1);
      writeFileSync(path, initial);
      const backing = own(FileBacking.open(path, false));
      const ex = own(new UringExecutor({ target: fileTable(backing), entries: 32 }));
      // Writes: 64 x 8 KiB, each from two 4 KiB views far apart in guest memory.
      const data = pattern(64 * 8192, 2);
      new Uint8Array(mem.buf, 0, data.length).set(data);
      const writes = Array.from({ length: 64 }, (_, i) =>
        run(ex, [{ kind: 'write', backing: 0, offset: i * 8192, from: [mem.view(i * 8192, 4096), mem.view(i * 8192 + 4096, 4096)] }]));
      t.true(ex.inflight > 0, 'requests are in flight after submit');
      for (const r of await Promise.all(writes)) t.deepEqual(r, { errno: 0, lastReadBytes: 0 });
      t.true(readFileSync(path).subarray(0, data.length).equals(data), 'the file holds what the views held');
      // Reads back, scattered: each into three views of unequal size.
      const reads = Array.from({ length: 64 }, (_, i) => {
        const at = (1 << 20) + i * 8192;
        return run(ex, [{ kind: 'read', backing: 0, offset: ((i * 37) % 64) * 8192, into: [mem.view(at, 1000), mem.view(at + 1000, 5000), mem.view(at + 6000, 2192)] }]);
      });
      for (const r of await Promise.all(reads)) t.deepEqual(r, { errno: 0, lastReadBytes: 8192 });
      for (let i = 0; i < 64; i++) {
        const src = ((i * 37) % 64) * 8192;
        t.true(Buffer.from(mem.buf, (1 << 20) + i * 8192, 8192).equals(data.subarray(src, src + 8192)), `read ${i}`);
      }
      t.is(ex.inflight, 0);
    });
  });
}

test.serial('completions out of order: a read stuck on a slow backing does not hold back the others, and fires last', async (t) => {
  await scenario(t, 1 << 20, async ({ mem, pipe, own }) => {
    const path = join(shmDir, 'ooo.img');
    const data = pattern(256 * 1024, 3);
    writeFileSync(path, data);
    const file = own(FileBacking.open(path, true));
    const [pr, pw] = pipe();
    const ex = own(new UringExecutor({ target: fileTable(file, { fd: pr, directAlign: 0 }) }));
    const order: string[] = [];
    const slow = run(ex, [{ kind: 'read', backing: 1, offset: 0, into: [mem.view(0, 16)] }]).then((r) => (order.push('slow'), r));
    const fast = Array.from({ length: 32 }, (_, i) =>
      run(ex, [{ kind: 'read', backing: 0, offset: i * 8192, into: [mem.view(4096 + i * 8192, 8192)] }]).then((r) => (order.push(`fast${i}`), r)));
    for (const r of await Promise.all(fast)) t.is(r.errno, 0);
    t.is(ex.inflight, 1, 'only the slow read is left');
    t.false(order.includes('slow'));
    n.write(pw, Buffer.from('0123456789abcdef'));
    t.deepEqual(await slow, { errno: 0, lastReadBytes: 16 });
    t.is(order.at(-1), 'slow');
    t.is(Buffer.from(mem.buf, 0, 16).toString(), '0123456789abcdef');
    t.true(Buffer.from(mem.buf, 4096, 32 * 8192).equals(data.subarray(0, 32 * 8192)));
  });
});

test.serial('targets are looked up and pinned at submit, unpinned when done; settle(until) returns once until() holds, leaving the rest in flight', async (t) => {
  await scenario(t, 1 << 20, async ({ mem, pipe, own }) => {
    const path = join(shmDir, 'pins.img');
    const data = pattern(64 * 1024, 9);
    writeFileSync(path, data);
    const file = own(FileBacking.open(path, true));
    const [pr, pw] = pipe();
    const pins = { file: 0, pipe: 0 };
    const counted = (fd: number, which: 'file' | 'pipe'): UringTarget => ({
      fd,
      directAlign: 0,
      pin: () => void pins[which]++,
      unpin: () => void pins[which]--,
    });
    let table: (UringTarget | undefined)[] = [counted(file.fd, 'file'), counted(pr, 'pipe')];
    const ex = own(new UringExecutor({ target: (i) => table[i] }));
    const slow = run(ex, [{ kind: 'read', backing: 1, offset: 0, into: [mem.view(0, 8)] }]);
    const fast = Array.from({ length: 8 }, (_, i) => run(ex, [{ kind: 'read', backing: 0, offset: i * 8192, into: [mem.view(4096 + i * 8192, 8192)] }]));
    t.deepEqual(pins, { file: 8, pipe: 1 }, 'every submitted op pins its target');
    // The table changes after submit (an fs file closed, its index given to another file):
    // what was submitted keeps the target it was submitted with.
    table = [undefined, undefined];
    ex.settle(() => pins.file === 0);
    t.deepEqual(pins, { file: 0, pipe: 1 }, 'settle returned once the file reads were done; the pipe read is still in flight');
    t.is(ex.inflight, 1);
    for (const r of await Promise.all(fast)) t.deepEqual(r, { errno: 0, lastReadBytes: 8192 });
    t.true(Buffer.from(mem.buf, 4096, 8 * 8192).equals(data.subarray(0, 8 * 8192)), 'read from the file they were submitted to');
    n.write(pw, Buffer.from('unpinned'));
    t.deepEqual(await slow, { errno: 0, lastReadBytes: 8 });
    t.deepEqual(pins, { file: 0, pipe: 0 });
    t.is((await run(ex, [{ kind: 'read', backing: 0, offset: 0, into: [mem.view(0, 8)] }])).errno, 9, 'a later request naming the dropped index: EBADF');
  });
});

test.serial('a ring target with inlineWriteMax (an fs file on a disk): small writes done inside submit, larger writes and reads through the ring, pins balanced, a small write behind a barrier waits', async (t) => {
  await scenario(t, 1 << 20, async ({ mem, pipe, own }) => {
    const path = join(diskDir, 'small-writes.img');
    writeFileSync(path, Buffer.alloc(64 * 1024));
    const file = own(FileBacking.open(path, false));
    const [pr, pw] = pipe();
    let pins = 0;
    const target: UringTarget = { fd: file.fd, directAlign: 0, inlineWriteMax: 4096, pin: () => void pins++, unpin: () => void pins-- };
    const ex = own(new UringExecutor({ target: fileTable(target, { fd: pr, directAlign: 0 }) }));
    const now = inSubmit(ex);
    const small = pattern(4096, 31);
    new Uint8Array(mem.buf, 0, small.length).set(small);
    t.deepEqual(now([{ kind: 'write', backing: 0, offset: 100, from: [mem.view(0, 1000), mem.view(1000, 3096)] }]), { errno: 0, lastReadBytes: 0 }, '4096 bytes in two views: done inside submit');
    t.is(pins, 0);
    t.true(readFileSync(path).subarray(100, 4196).equals(small));
    const big = pattern(4097, 32);
    new Uint8Array(mem.buf, 65536, big.length).set(big);
    let bigDone: IoResult | undefined;
    const bigWrite = new Promise<IoResult>((resolve) => ex.submit([{ kind: 'write', backing: 0, offset: 8192, from: [mem.view(65536, 4097)] }], false, (r) => resolve((bigDone = r))));
    t.is(bigDone, undefined, 'one byte more goes through the ring');
    t.is(pins, 1);
    t.deepEqual(await bigWrite, { errno: 0, lastReadBytes: 0 });
    t.true(readFileSync(path).subarray(8192, 8192 + 4097).equals(big));
    // A read of the pipe in the ring, a barrier behind it, a small write behind the barrier:
    // the write waits its turn, then runs in its turn.
    const order: string[] = [];
    const slow = run(ex, [{ kind: 'read', backing: 1, offset: 0, into: [mem.view(131072, 4)] }]).then((r) => (order.push('slow'), r));
    const flush = run(ex, [{ kind: 'flush', backing: 0 }], true).then((r) => (order.push('flush'), r));
    mem.view(196608, 100).fill(0x5a);
    const after = run(ex, [{ kind: 'write', backing: 0, offset: 0, from: [mem.view(196608, 100)] }]).then((r) => (order.push('after'), r));
    t.is(ex.inflight, 3);
    t.true(readFileSync(path).subarray(0, 100).every((b) => b === 0), 'the write behind the barrier has not run');
    n.write(pw, Buffer.from('wake'));
    for (const r of await Promise.all([slow, flush, after])) t.is(r.errno, 0);
    t.deepEqual(order, ['slow', 'flush', 'after']);
    t.true(readFileSync(path).subarray(0, 100).every((b) => b === 0x5a));
    t.is(pins, 0, 'every pin undone');
    // A failing small write answers its errno like a ring one (guest memory gone: EFAULT).
    const from = [unmappedView(100)];
    t.deepEqual(now([{ kind: 'write', backing: 0, offset: 0, from }]), { errno: 14, lastReadBytes: 0 });
    t.is(ex.inflight, 0);
  });
});

test.serial('coalesceViews: neighbours in one mapping become one view, in order; views of other mappings, with gaps, empty or detached stay as they are', (t) => {
  const a = guestMemory(65536);
  const b = guestMemory(65536);
  try {
    const pages = [a.view(0, 4096), a.view(4096, 4096), a.view(8192, 100)];
    const joined = coalesceViews(pages);
    t.is(joined.length, 1);
    t.is(joined[0]!.byteOffset, 0);
    t.is(joined[0]!.length, 8292);
    t.is(joined[0]!.buffer, a.buf, 'a view of the same mapping, not a copy');
    const none = [a.view(0, 100), a.view(200, 100), b.view(300, 100)];
    t.is(coalesceViews(none), none, 'nothing joins: the same array');
    const gone = unmappedView(100);
    const mixed = [a.view(0, 10), a.view(10, 0), a.view(10, 10), b.view(0, 4096), b.view(4096, 4096), gone, a.view(20, 5), a.view(25, 5)];
    t.deepEqual(coalesceViews(mixed).map((v) => [v.buffer === a.buf ? 'a' : v.buffer === b.buf ? 'b' : 'gone', v.byteOffset, v.length]), [
      ['a', 0, 10], ['a', 10, 0], ['a', 10, 10], ['b', 0, 8192], ['gone', 0, 0], ['a', 20, 10],
    ]);
  } finally {
    a.close();
    b.close();
  }
});

test.serial('a ring target with inlineWritesAlone (an fs file on a disk): any write done inside submit while nothing else is in flight, through the ring beside ring I/O; 1100 views in one write', async (t) => {
  await scenario(t, 2 << 20, async ({ mem, pipe, open, own }) => {
    const path = join(diskDir, 'writes-alone.img');
    writeFileSync(path, Buffer.alloc(0));
    const fd = open(path, 'r+');
    const [pr, pw] = pipe();
    let pins = 0;
    const ex = own(new UringExecutor({ target: fileTable({ fd, directAlign: 0, inlineWriteMax: 4096, inlineWritesAlone: true, pin: () => void pins++, unpin: () => void pins-- }, { fd: pr, directAlign: 0 }) }));
    const now = inSubmit(ex);
    // 1 MiB in 256 page-sized views, as a guest's FUSE_WRITE arrives (neighbours: one iovec), now.
    const big = pattern(1 << 20, 51);
    mem.view(0, 1 << 20).set(big);
    const pages = Array.from({ length: 256 }, (_, i) => mem.view(i * 4096, 4096));
    t.deepEqual(now([{ kind: 'write', backing: 0, offset: 0, from: pages }]), { errno: 0, lastReadBytes: 0 });
    t.is(pins, 0);
    t.true(readFileSync(path).equals(big));
    // More views than one pwritev takes (IOV_MAX 1024), none next to another (neighbours are
    // joined into one iovec): the rest in a second call.
    const small = pattern(110_000, 52);
    const views = Array.from({ length: 1100 }, (_, i) => mem.view((1 << 20) + i * 128, 100));
    views.forEach((v, i) => v.set(small.subarray(i * 100, (i + 1) * 100)));
    t.deepEqual(now([{ kind: 'write', backing: 0, offset: 4096, from: views }]), { errno: 0, lastReadBytes: 0 });
    t.true(readFileSync(path).subarray(4096, 4096 + small.length).equals(small));
    // A read of the pipe in flight in the ring: a write of more than a page goes through the
    // ring beside it (and completes first), a page-sized one is still done now.
    const slow = run(ex, [{ kind: 'read', backing: 1, offset: 0, into: [mem.view(1900000, 4)] }]);
    mem.view(0, 8192).fill(0x33);
    let beside: IoResult | undefined;
    const besideDone = new Promise<IoResult>((resolve) => ex.submit([{ kind: 'write', backing: 0, offset: 0, from: [mem.view(0, 8192)] }], false, (r) => resolve((beside = r))));
    t.is(beside, undefined, 'through the ring');
    t.deepEqual(await besideDone, { errno: 0, lastReadBytes: 0 });
    t.deepEqual(now([{ kind: 'write', backing: 0, offset: 8192, from: [mem.view(0, 4096)] }]), { errno: 0, lastReadBytes: 0 });
    t.true(readFileSync(path).subarray(0, 12288).every((b) => b === 0x33));
    t.is(ex.inflight, 1, 'the pipe read is still in flight');
    n.write(pw, Buffer.from('done'));
    t.is((await slow).errno, 0);
    t.is(pins, 0, 'every pin undone');
    // A write whose guest memory is gone: EFAULT, done now like any other.
    t.deepEqual(now([{ kind: 'write', backing: 0, offset: 0, from: [mem.view(0, 4096), unmappedView(8192)] }]), { errno: 14, lastReadBytes: 0 });
  });
});

test.serial('a ring target with nowaitReads (an fs file on a disk): page-cache hits done inside submit, the end of the file, pages not cached through the ring, a target the kernel refuses through the ring', async (t) => {
  await scenario(t, 1 << 20, async ({ mem, pipe, open, own }) => {
    const path = join(diskDir, 'cached-reads.img');
    const size = 256 * 1024;
    const data = pattern(size, 41);
    writeFileSync(path, data); // in the page cache from here on
    const fd = open(path, 'r+');
    const directFd = open(path, constants.O_RDWR | constants.O_DIRECT);
    const [pr, pw] = pipe();
    let pins = 0;
    const pin = () => void pins++;
    const unpin = () => void pins--;
    const ex = own(new UringExecutor({ target: fileTable({ fd, directAlign: 0, nowaitReads: true, pin, unpin }, { fd: pr, directAlign: 0, nowaitReads: true }) }));
    const now = inSubmit(ex);
    mem.view(0, 1 << 20).fill(0xff);
    // Three views, the middle one crossing no page boundary of the file: all of it, now.
    t.deepEqual(now([{ kind: 'read', backing: 0, offset: 1000, into: [mem.view(0, 4096), mem.view(8192, 100), mem.view(16384, 8092)] }]), { errno: 0, lastReadBytes: 12288 });
    t.true(Buffer.concat([mem.view(0, 4096), mem.view(8192, 100), mem.view(16384, 8092)]).equals(data.subarray(1000, 1000 + 12288)));
    t.is(pins, 0, 'nothing was in flight');
    t.is(ex.inflight, 0);
    // The end of the file: the bytes up to it, or none.
    t.deepEqual(now([{ kind: 'read', backing: 0, offset: size - 100, into: [mem.view(32768, 4096)] }]), { errno: 0, lastReadBytes: 100 });
    t.true(Buffer.from(mem.view(32768, 100)).equals(data.subarray(size - 100)));
    t.deepEqual(now([{ kind: 'read', backing: 0, offset: size + 4096, into: [mem.view(32768, 4096)] }]), { errno: 0, lastReadBytes: 0 });
    // Two reads in one request: the first ends at the end of the file (zeroes after), the second is whole.
    t.deepEqual(now([
      { kind: 'read', backing: 0, offset: size - 8, into: [mem.view(40960, 16)] },
      { kind: 'read', backing: 0, offset: 0, into: [mem.view(49152, 64)] },
    ]), { errno: 0, lastReadBytes: 64 });
    t.true(Buffer.from(mem.view(40960, 8)).equals(data.subarray(size - 8)));
    t.true(mem.view(40968, 8).every((b) => b === 0), 'zeroes past the end');
    t.true(Buffer.from(mem.view(49152, 64)).equals(data.subarray(0, 64)));
    // An O_DIRECT write of [128K, 192K) drops those pages from the page cache: a read across
    // them copies what is cached and the ring reads the rest (or all of it is cached again by
    // the time it asks: the bytes are what counts).
    const fresh = pattern(65536, 42);
    mem.view(524288, 65536).set(fresh);
    t.is(n.pwrite(directFd, mem.view(524288, 65536), 131072), 65536);
    const r = await run(ex, [{ kind: 'read', backing: 0, offset: 120 * 1024, into: [mem.view(65536, 40 * 1024), mem.view(131072, 40 * 1024)] }]);
    t.deepEqual(r, { errno: 0, lastReadBytes: 80 * 1024 });
    const want = Buffer.concat([data.subarray(120 * 1024, 128 * 1024), fresh, data.subarray(192 * 1024, 200 * 1024)]);
    t.true(Buffer.concat([mem.view(65536, 40 * 1024), mem.view(131072, 40 * 1024)]).equals(want));
    t.is(pins, 0, 'every pin undone');
    // A pipe has no page cache to try (ESPIPE): the read goes through the ring and waits there.
    let piped: IoResult | undefined;
    const slow = new Promise<IoResult>((resolve) => ex.submit([{ kind: 'read', backing: 1, offset: 0, into: [mem.view(196608, 4)] }], false, (res) => resolve((piped = res))));
    t.is(piped, undefined, 'in the ring, not done inside submit');
    n.write(pw, Buffer.from('wake'));
    t.deepEqual(await slow, { errno: 0, lastReadBytes: 4 });
    t.is(Buffer.from(mem.view(196608, 4)).toString(), 'wake');
    // Guest memory gone under a read: EFAULT from the ring, not a read that "succeeds".
    t.deepEqual(await run(ex, [{ kind: 'read', backing: 0, offset: 0, into: [unmappedView(100)] }]), { errno: 14, lastReadBytes: 0 });
  });
});

test.serial('a barrier (flush) starts only after everything before it completed, and holds back what comes after', async (t) => {
  await scenario(t, 1 << 20, async ({ mem, pipe, own }) => {
    const path = join(diskDir, 'barrier.img');
    writeFileSync(path, Buffer.alloc(1 << 20));
    const file = own(FileBacking.open(path, false));
    // The "slow write": a pipe whose buffer is full, so a write to it waits for a reader.
    const [pr, pw] = pipe();
    const filler = Buffer.alloc(1 << 20, 1);
    while (n.write(pw, filler) > 0) { /* fill the pipe */ }
    const ex = own(new UringExecutor({ target: fileTable(file, { fd: pw, directAlign: 0 }) }));
    const order: string[] = [];
    const note = (name: string) => (r: IoResult) => (order.push(name), r);
    mem.view(0, 4096).fill(0x77);
    const slowWrite = run(ex, [{ kind: 'write', backing: 1, offset: 0, from: [mem.view(0, 4096)] }]).then(note('slow-write'));
    const fileWrite = run(ex, [{ kind: 'write', backing: 0, offset: 65536, from: [mem.view(0, 4096)] }]).then(note('file-write'));
    const flush = run(ex, [{ kind: 'flush', backing: 0 }], true).then(note('flush'));
    const after = run(ex, [{ kind: 'read', backing: 0, offset: 65536, into: [mem.view(8192, 4096)] }]).then(note('read-after'));
    await fileWrite;
    // The file write is done (the ring runs); the flush waits for the slow write, the read for the flush.
    t.deepEqual(order, ['file-write']);
    t.is(ex.inflight, 3);
    // Let the slow write through: drain the pipe.
    const sink = Buffer.alloc(1 << 20);
    while (order.length < 4) {
      n.read(pr, sink);
      await new Promise((r) => setImmediate(r));
    }
    t.deepEqual(order, ['file-write', 'slow-write', 'flush', 'read-after']);
    for (const r of await Promise.all([slowWrite, flush, after])) t.is(r.errno, 0);
    t.true(Buffer.from(mem.buf, 8192, 4096).every((b) => b === 0x77), 'the read after the barrier saw the write before it');
  });
});

test.serial('errors come back as errno: EIO from the kernel, ENOSPC from a full tmpfs (after a short write), the rest of the request does not run', async (t) => {
  await withTmpfs('1m', diskDir, (mnt) =>
    scenario(t, 4 << 20, async ({ mem, open, own }) => {
      const path = join(mnt, 'full.img');
      writeFileSync(path, Buffer.alloc(0));
      const file = own(FileBacking.open(path, false));
      const procMem = open('/proc/self/mem', 'r');
      const ex = own(new UringExecutor({ target: fileTable(file, { fd: procMem, directAlign: 0 }) }));
      // /proc/self/mem at address 0 (never mapped): EIO. The read after it must not run.
      mem.view(65536, 4096).fill(0xee);
      t.deepEqual(await run(ex, [
        { kind: 'read', backing: 1, offset: 0, into: [mem.view(0, 4096)] },
        { kind: 'read', backing: 0, offset: 0, into: [mem.view(65536, 4096)] },
      ]), { errno: EIO, lastReadBytes: 0 });
      t.true(mem.view(65536, 4096).every((b) => b === 0xee), 'the op after the failed one did not run');
      // 2 MiB into a 1 MiB file system: the kernel writes what fits, then says ENOSPC.
      mem.view(0, 2 << 20).fill(0x42);
      t.deepEqual(await run(ex, [{ kind: 'write', backing: 0, offset: 0, from: [mem.view(0, 1 << 20), mem.view(1 << 20, 1 << 20)] }]), { errno: ENOSPC, lastReadBytes: 0 });
      // The executor goes on serving.
      t.deepEqual(await run(ex, [{ kind: 'read', backing: 0, offset: 0, into: [mem.view(3 << 20, 4096)] }]), { errno: 0, lastReadBytes: 4096 });
      t.true(mem.view(3 << 20, 4096).every((b) => b === 0x42));
    }),
  );
});

test.serial('a short read at end of file: the last op reports the bytes it got; an earlier read is zero-filled past the end', async (t) => {
  await scenario(t, 65536, async ({ mem, own }) => {
    const path = join(shmDir, 'short.img');
    const data = pattern(10000, 4);
    writeFileSync(path, data);
    const file = own(FileBacking.open(path, true));
    const ex = own(new UringExecutor({ target: fileTable(file) }));
    mem.view(0, 65536).fill(0xff);
    t.deepEqual(await run(ex, [{ kind: 'read', backing: 0, offset: 8192, into: [mem.view(0, 4096)] }]), { errno: 0, lastReadBytes: 10000 - 8192 });
    t.true(Buffer.from(mem.buf, 0, 10000 - 8192).equals(data.subarray(8192)));
    t.deepEqual(await run(ex, [
      { kind: 'read', backing: 0, offset: 8192, into: [mem.view(16384, 4096)] },
      { kind: 'read', backing: 0, offset: 0, into: [mem.view(32768, 100)] },
    ]), { errno: 0, lastReadBytes: 100 });
    t.true(Buffer.from(mem.buf, 16384, 1808).equals(data.subarray(8192)));
    t.true(mem.view(16384 + 1808, 4096 - 1808).every((b) => b === 0), 'zeroes past the end');
    t.deepEqual(await run(ex, [{ kind: 'read', backing: 0, offset: 20000, into: [mem.view(0, 512)] }]), { errno: 0, lastReadBytes: 0 });
  });
});

test.serial('more requests than the ring holds: the rest wait their turn and all complete', async (t) => {
  await scenario(t, 1 << 20, async ({ mem, own }) => {
    const path = join(shmDir, 'capacity.img');
    const data = pattern(1 << 20, 5);
    writeFileSync(path, data);
    const file = own(FileBacking.open(path, true));
    const ex = own(new UringExecutor({ target: fileTable(file), entries: 2 }));
    const all = Array.from({ length: 256 }, (_, i) => run(ex, [{ kind: 'read', backing: 0, offset: i * 4096, into: [mem.view(i * 4096, 4096)] }]));
    t.is(ex.inflight, 256);
    for (const r of await Promise.all(all)) t.is(r.errno, 0);
    t.true(Buffer.from(mem.buf).equals(data));
  });
});

// --direct: a file on the real disk, and loop devices with 512- and 4096-byte logical blocks.
function loopDevice(t: ExecutionContext, blockSize: number): { dev: string; file: string } {
  const file = join(diskDir, `loop-${blockSize}.img`);
  writeFileSync(file, pattern(4 << 20, 6));
  const dev = execFileSync('losetup', ['-b', String(blockSize), '--find', '--show', file], { encoding: 'utf8' }).trim();
  t.teardown(() => execFileSync('losetup', ['--detach', dev]));
  return { dev, file };
}

for (const kind of ['file', 'loop512', 'loop4096'] as const) {
  test.serial(`--direct on ${kind === 'file' ? 'a real-disk file' : `a loop device with ${kind.slice(4)}-byte blocks`}: aligned ops go straight, misaligned ones through a bounce buffer, neighbours intact`, async (t) => {
    let path: string;
    let fileBehind: string;
    if (kind === 'file') {
      path = fileBehind = join(diskDir, 'direct.img');
      writeFileSync(path, pattern(4 << 20, 6));
    } else {
      ({ dev: path, file: fileBehind } = loopDevice(t, Number(kind.slice(4))));
    }
    await noLeak(t, async () => {
      const backing = FileBacking.open(path, false, { direct: true });
      const a = backing.directAlign;
      t.true(a === 512 || a === 4096, `alignment ${a}`);
      if (kind !== 'file') t.is(a, Number(kind.slice(4)));
      t.is(backing.blockSize, a, 'storage.block-size reports the direct-I/O block');
      const mem = guestMemory(1 << 20);
      const ex = new UringExecutor({ target: fileTable(backing) });
      const expect = pattern(4 << 20, 6);
      try {
        // Aligned: straight into guest memory, no bounce buffer.
        mem.view(0, 65536).set(pattern(65536, 7));
        t.deepEqual(await run(ex, [{ kind: 'write', backing: 0, offset: 8 * a, from: [mem.view(0, 65536)] }]), { errno: 0, lastReadBytes: 0 });
        expect.set(pattern(65536, 7), 8 * a);
        t.is(ex.bounceMappings, 0, 'an aligned write used no bounce buffer');
        t.deepEqual(await run(ex, [{ kind: 'read', backing: 0, offset: 8 * a, into: [mem.view(131072, 65536)] }]), { errno: 0, lastReadBytes: 65536 });
        t.true(Buffer.from(mem.buf, 131072, 65536).equals(pattern(65536, 7)));
        t.is(ex.bounceMappings, 0, 'an aligned read used no bounce buffer');
        // Misaligned offset and length (read-modify-write of the partial end blocks).
        const odd = pattern(3 * a + 100, 8);
        mem.view(262144, odd.length).set(odd);
        const at = 100 * a + 37;
        t.deepEqual(await run(ex, [{ kind: 'write', backing: 0, offset: at, from: [mem.view(262144, odd.length)] }]), { errno: 0, lastReadBytes: 0 });
        expect.set(odd, at);
        t.true(ex.bounceMappings > 0, 'the misaligned write went through a bounce buffer');
        // A misaligned read, into a buffer at an odd address.
        t.deepEqual(await run(ex, [{ kind: 'read', backing: 0, offset: at - 5, into: [mem.view(524288 + 3, odd.length + 10)] }]), { errno: 0, lastReadBytes: odd.length + 10 });
        t.true(Buffer.from(mem.buf, 524288 + 3, odd.length + 10).equals(expect.subarray(at - 5, at + odd.length + 5)));
        // An aligned range from a misaligned buffer: bounced, not refused.
        mem.view(700001, a).set(pattern(a, 9));
        t.deepEqual(await run(ex, [{ kind: 'write', backing: 0, offset: 200 * a, from: [mem.view(700001, a)] }]), { errno: 0, lastReadBytes: 0 });
        expect.set(pattern(a, 9), 200 * a);
        t.deepEqual(await run(ex, [{ kind: 'flush', backing: 0 }], true), { errno: 0, lastReadBytes: 0 });
      } finally {
        ex.close();
        backing.close();
        mem.close();
      }
      t.true(readFileSync(fileBehind).equals(expect), 'the backing holds exactly the writes, every neighbouring byte as it was');
    });
  });
}

test.serial('drain with I/O in flight: everything in the kernel and everything queued (behind a barrier, or for ring space) completes with its real result before it returns', async (t) => {
  await scenario(t, 2 << 20, async ({ mem, own }) => {
    const path = join(diskDir, 'drain.img');
    const data = pattern(1 << 20, 10);
    writeFileSync(path, data);
    const file = own(FileBacking.open(path, false));
    const ex = own(new UringExecutor({ target: fileTable(file), entries: 4 }));
    const results = new Map<string, IoResult>();
    const submit = (name: string, ops: IoOp[], barrier = false) => ex.submit(ops, barrier, (r) => results.set(name, r));
    for (let i = 0; i < 64; i++) submit(`read${i}`, [{ kind: 'read', backing: 0, offset: i * 4096, into: [mem.view(i * 4096, 4096)] }]);
    mem.view(1 << 20, 8192).fill(0x5c);
    submit('flush', [{ kind: 'flush', backing: 0 }], true);
    submit('behind', [{ kind: 'write', backing: 0, offset: 0, from: [mem.view(1 << 20, 8192)] }]);
    t.is(ex.inflight, 66);
    t.is(results.size, 0, 'nothing completed yet (no reap has run)');
    ex.drain();
    t.is(ex.inflight, 0);
    t.is(results.size, 66);
    for (const [name, r] of results) t.is(r.errno, 0, name);
    t.true(Buffer.from(mem.buf, 0, 64 * 4096).equals(data.subarray(0, 64 * 4096)), 'every read landed before drain returned');
    t.true(readFileSync(path).subarray(0, 8192).every((b) => b === 0x5c), 'the write queued behind the barrier ran too');
  });
});

test.serial('close with I/O in flight cancels it in the kernel: done (ECANCELED) fires before close returns, never after', async (t) => {
  await noLeak(t, async () => {
    const [pr, pw] = n.pipe2();
    const mem = guestMemory(65536);
    const ex = new UringExecutor({ target: fileTable({ fd: pr, directAlign: 0 }) });
    const seen: IoResult[] = [];
    ex.submit([{ kind: 'read', backing: 0, offset: 0, into: [mem.view(0, 16)] }], false, (r) => seen.push(r));
    ex.close();
    t.deepEqual(seen, [{ errno: ECANCELED, lastReadBytes: 0 }]);
    t.throws(() => ex.submit([], false, () => {}), { message: /after close/ });
    await new Promise((r) => setTimeout(r, 10));
    t.is(seen.length, 1);
    mem.close();
    n.close(pr);
    n.close(pw);
  });
});

test.serial('memory executor: one copy each way, holes read as zeroes, across a chunk boundary, done before submit returns', (t) => {
  const disk = new MemoryBacking(128 << 20, false);
  const mem = guestMemory(1 << 20);
  // What the disk copied (counted where each copy is made) and what the executor reported of it.
  let reported = 0;
  const ex = new MemoryExecutor((i) => (i === 0 ? storageIoBacking(disk) : undefined), undefined, (n) => (reported += n));
  const copies = (): number => {
    t.is(reported, disk.copied, 'the executor reports every copy the disk made');
    return disk.copied;
  };
  try {
    const boundary = 64 << 20;
    const data = pattern(12288, 11);
    mem.view(0, data.length).set(data);
    let r: IoResult | undefined;
    ex.submit([{ kind: 'write', backing: 0, offset: boundary - 5000, from: [mem.view(0, 5000), mem.view(5000, 7288)] }], false, (x) => (r = x));
    t.deepEqual(r, { errno: 0, lastReadBytes: 0 }, 'done fired inside submit');
    // Two views across the chunk boundary: each byte copied once, straight into the chunks.
    t.is(copies(), 12288);
    mem.view(65536, 20000).fill(0xcc);
    ex.submit([{ kind: 'read', backing: 0, offset: boundary - 9000, into: [mem.view(65536, 20000)] }], false, (x) => (r = x));
    t.deepEqual(r, { errno: 0, lastReadBytes: 20000 });
    // Across the boundary too: straight into the guest's view, no assembly buffer in between.
    t.is(copies(), 12288 + 20000);
    const got = Buffer.from(mem.buf, 65536, 20000);
    t.true(got.subarray(0, 4000).every((b) => b === 0), 'the hole before the write reads as zeroes');
    t.true(got.subarray(4000, 4000 + 12288).equals(data));
    t.true(got.subarray(16288).every((b) => b === 0));
    ex.submit([{ kind: 'write-zeroes', backing: 0, offset: boundary - 100, len: 200 }, { kind: 'read', backing: 0, offset: boundary - 5000, into: [mem.view(0, 5100)] }], false, (x) => (r = x));
    t.deepEqual(r, { errno: 0, lastReadBytes: 5100 });
    t.is(copies(), 12288 + 20000 + 5100, 'zeroing copies nothing; the read copies each byte once');
    const expect = Buffer.from(data.subarray(0, 5100));
    expect.fill(0, 4900);
    t.true(Buffer.from(mem.buf, 0, 5100).equals(expect));
    ex.submit([{ kind: 'read', backing: 0, offset: (128 << 20) - 100, into: [mem.view(0, 200)] }], false, (x) => (r = x));
    t.is(r?.errno, 22, 'past the end: EINVAL, nothing read');
    ex.submit([{ kind: 'flush', backing: 3 }], true, (x) => (r = x));
    t.is(r?.errno, 9, 'no such backing: EBADF');
    t.is(copies(), 12288 + 20000 + 5100, 'refused requests copy nothing');
    // A hole (this thread's own disk: the second chunk discarded whole, given back) reads as
    // zeroes: filled, not copied.
    ex.submit([{ kind: 'discard', backing: 0, offset: boundary, len: 64 << 20 }, { kind: 'read', backing: 0, offset: 100 << 20, into: [mem.view(0, 4096)] }], false, (x) => (r = x));
    t.deepEqual(r, { errno: 0, lastReadBytes: 4096 });
    t.true(Buffer.from(mem.buf, 0, 4096).every((b) => b === 0));
    t.is(copies(), 12288 + 20000 + 5100);
    t.is(ex.inflight, 0);
  } finally {
    ex.close();
    mem.close();
  }
});

test.serial('discard and write-zeroes through the file backing (fallocate), in order with the writes; a failing one gives its errno', async (t) => {
  await scenario(t, 65536, async ({ mem, own }) => {
    const path = join(diskDir, 'falloc.img');
    const data = pattern(1 << 20, 12);
    writeFileSync(path, data);
    const file = own(FileBacking.open(path, false));
    const readOnly = own(FileBacking.open(path, true));
    const ex = own(new UringExecutor({ target: fileTable(file, readOnly) }));
    mem.view(0, 8192).fill(0x11);
    t.deepEqual(await run(ex, [
      { kind: 'write', backing: 0, offset: 0, from: [mem.view(0, 8192)] },
      { kind: 'write-zeroes', backing: 0, offset: 4096, len: 65536 },
      { kind: 'discard', backing: 0, offset: 524288, len: 131072 },
    ]), { errno: 0, lastReadBytes: 0 });
    const expect = Buffer.from(data);
    expect.fill(0x11, 0, 4096);
    expect.fill(0, 4096, 4096 + 65536);
    expect.fill(0, 524288, 524288 + 131072);
    t.true(readFileSync(path).equals(expect), 'the write, then the zeroing over its second half, then the hole');
    // fallocate on a read-only fd: EBADF, carried from the backing's error.
    t.deepEqual(await run(ex, [{ kind: 'write-zeroes', backing: 1, offset: 0, len: 4096 }]), { errno: 9, lastReadBytes: 0 });
  });
});

test.serial('an inline (tmpfs) target: one-op requests done inside submit, short reads, ENOSPC, EFAULT, a barrier behind ring I/O waits its turn', async (t) => {
  await withTmpfs('1m', diskDir, (mnt) =>
    scenario(t, 4 << 20, async ({ mem, pipe, own }) => {
      const path = join(mnt, 'inline.img');
      writeFileSync(path, Buffer.alloc(0));
      const file = own(FileBacking.open(path, false));
      const [pr, pw] = pipe();
      const inline: UringTarget = { fd: file.fd, directAlign: 0, inline: true };
      const ex = own(new UringExecutor({ target: fileTable(inline, { fd: pr, directAlign: 0 }) }));
      const now = inSubmit(ex);
      const data = pattern(10000, 21);
      new Uint8Array(mem.buf, 0, data.length).set(data);
      t.deepEqual(now([{ kind: 'write', backing: 0, offset: 0, from: [mem.view(0, 4000), mem.view(4000, 6000)] }]), { errno: 0, lastReadBytes: 0 }, 'a write is done inside submit');
      t.true(readFileSync(path).equals(data));
      t.deepEqual(now([{ kind: 'read', backing: 0, offset: 8192, into: [mem.view(65536, 4096)] }]), { errno: 0, lastReadBytes: 10000 - 8192 }, 'a short read at the end says how far it got');
      t.true(Buffer.from(mem.buf, 65536, 1808).equals(data.subarray(8192)));
      t.deepEqual(now([{ kind: 'read', backing: 0, offset: 20000, into: [mem.view(65536, 512)] }]), { errno: 0, lastReadBytes: 0 });
      mem.view(131072, 4096).fill(0xff);
      t.deepEqual(now([
        { kind: 'read', backing: 0, offset: 8192, into: [mem.view(131072, 4096)] },
        { kind: 'read', backing: 0, offset: 0, into: [mem.view(196608, 100)] },
      ]), { errno: 0, lastReadBytes: 100 }, 'two ops: the earlier read is zero-filled past the end');
      t.true(mem.view(131072 + 1808, 4096 - 1808).every((b) => b === 0));
      t.deepEqual(now([{ kind: 'flush', backing: 0 }], true), { errno: 0, lastReadBytes: 0 }, 'a flush with nothing in flight runs at once');
      // 2 MiB into a 1 MiB file system: ENOSPC; the executor goes on serving.
      mem.view(0, 2 << 20).fill(0x42);
      t.deepEqual(now([{ kind: 'write', backing: 0, offset: 0, from: [mem.view(0, 2 << 20)] }]), { errno: ENOSPC, lastReadBytes: 0 });
      t.deepEqual(now([{ kind: 'read', backing: 0, offset: 0, into: [mem.view(3 << 20, 4096)] }]), { errno: 0, lastReadBytes: 4096 });
      t.true(mem.view(3 << 20, 4096).every((b) => b === 0x42));
      // A read on the pipe stays in the ring: a barrier flush of the tmpfs file waits for it,
      // and a write submitted after the barrier waits for the barrier.
      const order: string[] = [];
      const slow = run(ex, [{ kind: 'read', backing: 1, offset: 0, into: [mem.view(0, 16)] }]).then((r) => (order.push('slow'), r));
      const flush = run(ex, [{ kind: 'flush', backing: 0 }], true).then((r) => (order.push('flush'), r));
      mem.view(65536, 4096).fill(0x17);
      const after = run(ex, [{ kind: 'write', backing: 0, offset: 0, from: [mem.view(65536, 4096)] }]).then((r) => (order.push('after'), r));
      t.is(ex.inflight, 3, 'the flush and the write behind it wait for the ring');
      t.true(readFileSync(path).subarray(0, 4096).every((b) => b === 0x42), 'the write behind the barrier has not run');
      n.write(pw, Buffer.from('0123456789abcdef'));
      t.deepEqual(await slow, { errno: 0, lastReadBytes: 16 });
      t.deepEqual(await flush, { errno: 0, lastReadBytes: 0 });
      t.deepEqual(await after, { errno: 0, lastReadBytes: 0 });
      t.deepEqual(order, ['slow', 'flush', 'after']);
      t.true(readFileSync(path).subarray(0, 4096).every((b) => b === 0x17));
      // Guest memory gone under a request: EFAULT, not a write of nothing.
      const into = [unmappedView(4096)];
      t.deepEqual(now([{ kind: 'read', backing: 0, offset: 0, into }]), { errno: 14, lastReadBytes: 0 });
      t.deepEqual(now([{ kind: 'write', backing: 0, offset: 0, from: into }]), { errno: 14, lastReadBytes: 0 });
      t.is(ex.inflight, 0);
    }),
  );
});

test.serial('a view whose guest memory was unmapped is EFAULT, not an empty buffer that "succeeds"', async (t) => {
  const path = join(shmDir, 'detached.img');
  writeFileSync(path, pattern(65536, 13));
  const file = FileBacking.open(path, false);
  const disk = new MemoryBacking(1 << 20, false);
  const mem = guestMemory(65536);
  const into = [mem.view(0, 4096)];
  mem.close(); // the window detaches: the view now has length 0
  const ex = new UringExecutor({ target: fileTable(file) });
  const mx = new MemoryExecutor(() => storageIoBacking(disk));
  try {
    t.deepEqual(await run(ex, [{ kind: 'read', backing: 0, offset: 0, into }]), { errno: 14, lastReadBytes: 0 });
    t.deepEqual(await run(ex, [{ kind: 'write', backing: 0, offset: 0, from: into }]), { errno: 14, lastReadBytes: 0 });
    t.deepEqual(await run(mx, [{ kind: 'read', backing: 0, offset: 0, into }]), { errno: 14, lastReadBytes: 0 });
    t.true(readFileSync(path).equals(pattern(65536, 13)));
  } finally {
    ex.close();
    mx.close();
    file.close();
  }
});

/** A Logger that keeps every line in `lines`. */
function quietLog(lines: string[]): Logger {
  const log = { error: (m: string) => lines.push(m), warn: (m: string) => lines.push(m), info: (m: string) => lines.push(m), debug: (m: string) => lines.push(m), enabled: () => true, child: () => log } as unknown as Logger;
  return log;
}

test.serial('chooseExecutor: a memory disk gets the memory executor; a tmpfs file is served inline; a real-disk file through the ring', async (t) => {
  const lines: string[] = [];
  const log = quietLog(lines);
  const mem = guestMemory(65536);
  t.is(chooseExecutor(new BackingTable(storageIoBacking(new MemoryBacking(1 << 20, false))), log).kind, 'memory');
  for (const [dir, inline] of [[shmDir, true], [diskDir, false]] as const) {
    const path = join(dir, 'choose.img');
    writeFileSync(path, pattern(65536, 14));
    const file = FileBacking.open(path, false);
    const { executor, kind } = chooseExecutor(new BackingTable(storageIoBacking(file)), log);
    try {
      t.is(kind, 'io_uring');
      let result: IoResult | undefined;
      const done = new Promise<IoResult>((resolve) => executor.submit([{ kind: 'read', backing: 0, offset: 4096, into: [mem.view(0, 8192)] }], false, (r) => resolve((result = r))));
      t.is(result !== undefined, inline, inline ? 'tmpfs: done inside submit (pread in turn)' : 'disk: done later, from the ring');
      t.deepEqual(await done, { errno: 0, lastReadBytes: 8192 });
      t.true(Buffer.from(mem.buf, 0, 8192).equals(pattern(65536, 14).subarray(4096, 12288)));
    } finally {
      executor.close();
      file.close();
    }
  }
  mem.close();
  t.true(lines.some((l) => /tmpfs: reads copied from a mapping of the file, writes with pwrite in turn/.test(l)), 'the choice is in the log');
});

test.serial('chooseExecutor decides by the file system of the file it opened, not of what its path names by then (replaced by a link to a file on the other one)', async (t) => {
  const mem = guestMemory(65536);
  for (const [dir, other, inline] of [[shmDir, diskDir, true], [diskDir, shmDir, false]] as const) {
    const path = join(dir, 'swapped.img');
    const elsewhere = join(other, 'swapped-other.img');
    writeFileSync(path, pattern(65536, 15));
    writeFileSync(elsewhere, pattern(65536, 16));
    const file = FileBacking.open(path, false);
    // Between the open and the choice, the operator's path comes to name a file on the other file system.
    unlinkSync(path);
    symlinkSync(elsewhere, path);
    const lines: string[] = [];
    const { executor } = chooseExecutor(new BackingTable(storageIoBacking(file)), quietLog(lines));
    try {
      let result: IoResult | undefined;
      const done = new Promise<IoResult>((resolve) => executor.submit([{ kind: 'read', backing: 0, offset: 0, into: [mem.view(0, 4096)] }], false, (r) => resolve((result = r))));
      t.is(result !== undefined, inline, inline ? 'the open file is on tmpfs: done inside submit' : 'the open file is on a disk: done later, from the ring');
      t.deepEqual(await done, { errno: 0, lastReadBytes: 4096 });
      t.true(Buffer.from(mem.buf, 0, 4096).equals(pattern(65536, 15).subarray(0, 4096)), 'the bytes of the file opened');
      t.is(lines.some((l) => /tmpfs:/.test(l)), inline, lines.join('\n'));
    } finally {
      executor.close();
      file.close();
      unlinkSync(path);
      unlinkSync(elsewhere);
    }
  }
  mem.close();
});

/** A tmpfs image (1 MiB, in shmDir by default) of pattern(seed), fully written (so mapped), its executor as chooseExecutor makes it, and 1 MiB of guest memory. */
function servedTmpfsImage(name: string, seed: number, bytes = 1 << 20, inDir = shmDir) {
  const path = join(inDir, name);
  const data = pattern(bytes, seed);
  writeFileSync(path, data);
  const file = FileBacking.open(path, false);
  const mem = guestMemory(1 << 20);
  const lines: string[] = [];
  const { executor } = chooseExecutor(new BackingTable(storageIoBacking(file)), quietLog(lines));
  return {
    path,
    data,
    file,
    mem,
    lines,
    executor,
    now: inSubmit(executor as UringExecutor),
    close() {
      executor.close();
      file.close();
      mem.close();
    },
  };
}

test.serial('a fully allocated tmpfs file is read through a mapping: the same bytes as pread, writes seen at once, past the end by pread, EFAULT, unmapped on close', async (t) => {
  await noLeak(t, async () => {
    const { path, data, file, mem, lines, now, close } = servedTmpfsImage('mapped.img', 31);
    try {
      t.true(lines.some((l) => /reads copied from a mapping/.test(l)));
      t.is(mapsNamed(path), 0, 'nothing mapped before the first read (a new instance may start while the old one punches holes)');
      for (let i = 0; i < 200; i++) {
        const off = ((i * 7919) % 250) * 4096 + (i % 3) * 512;
        const at = (i % 16) * 65536;
        t.deepEqual(now([{ kind: 'read', backing: 0, offset: off, into: [mem.view(at, 1000), mem.view(at + 8192, 3096)] }]), { errno: 0, lastReadBytes: 4096 });
        t.true(Buffer.from(mem.buf, at, 1000).equals(data.subarray(off, off + 1000)) && Buffer.from(mem.buf, at + 8192, 3096).equals(data.subarray(off + 1000, off + 4096)), `read ${i} at ${off}`);
        if (i === 0) t.true(mapsNamed(path) > 0, 'the first read mapped the file');
      }
      mem.view(0, 4096).fill(0x5c);
      t.deepEqual(now([{ kind: 'write', backing: 0, offset: 12288, from: [mem.view(0, 4096)] }]), { errno: 0, lastReadBytes: 0 });
      t.deepEqual(now([{ kind: 'read', backing: 0, offset: 8192, into: [mem.view(65536, 8192)] }]), { errno: 0, lastReadBytes: 8192 });
      t.true(mem.view(65536, 4096).every((b, i) => b === data[8192 + i]) && mem.view(65536 + 4096, 4096).every((b) => b === 0x5c), 'a write is read back at once');
      t.deepEqual(now([{ kind: 'read', backing: 0, offset: (1 << 20) - 1000, into: [mem.view(0, 4096)] }]), { errno: 0, lastReadBytes: 1000 }, 'a read across the end: short, as pread says');
      t.deepEqual(now([{ kind: 'read', backing: 0, offset: 0, into: [unmappedView(4096)] }]), { errno: 14, lastReadBytes: 0 }, 'guest memory gone: EFAULT');
      file.close();
      t.deepEqual(now([{ kind: 'read', backing: 0, offset: 0, into: [mem.view(0, 4096)] }]), { errno: EIO, lastReadBytes: 0 }, 'a closed backing: the error pread gives it, not bytes from the mapping');
    } finally {
      close();
    }
    t.is(mapsNamed(path), 0, 'close() unmapped the file');
  });
});

test.serial('a tmpfs file is not mapped when sparse, and stops being mapped at a discard: reads of holes do not fill them in', async (t) => {
  const blocks = (p: string): number => statSync(p).blocks;
  // Sparse: 64 KiB written of 1 MiB.
  const sparse = join(shmDir, 'sparse.img');
  writeFileSync(sparse, pattern(65536, 32));
  truncateSync(sparse, 1 << 20);
  const before = blocks(sparse);
  const mem = guestMemory(1 << 20);
  const file = FileBacking.open(sparse, false);
  const { executor } = chooseExecutor(new BackingTable(storageIoBacking(file)), quietLog([]));
  try {
    t.is(mapsNamed(sparse), 0, 'a sparse file is not mapped');
    const now = inSubmit(executor as UringExecutor);
    for (let off = 0; off < 1 << 20; off += 65536) t.deepEqual(now([{ kind: 'read', backing: 0, offset: off, into: [mem.view(0, 65536)] }]), { errno: 0, lastReadBytes: 65536 });
    t.true(mem.view(0, 65536).every((b) => b === 0), 'the last hole reads as zeroes');
    t.is(blocks(sparse), before, 'reading the holes allocated nothing');
  } finally {
    executor.close();
    file.close();
    mem.close();
  }
  // Allocated, then a discard punches a hole: from then on reads leave it a hole.
  const full = servedTmpfsImage('full.img', 33);
  const { now } = full;
  try {
    t.deepEqual(now([{ kind: 'read', backing: 0, offset: 0, into: [full.mem.view(0, 4096)] }]), { errno: 0, lastReadBytes: 4096 });
    t.true(mapsNamed(full.path) > 0);
    const allocated = blocks(full.path);
    t.deepEqual(await run(full.executor, [{ kind: 'discard', backing: 0, offset: 0, len: 512 << 10 }]), { errno: 0, lastReadBytes: 0 });
    const punched = blocks(full.path);
    t.true(punched <= allocated - 1024, 'the discard punched a 512 KiB hole');
    t.is(mapsNamed(full.path), 0, 'the discard stopped the mapping');
    for (let off = 0; off < 512 << 10; off += 65536) t.deepEqual(now([{ kind: 'read', backing: 0, offset: off, into: [full.mem.view(0, 65536)] }]), { errno: 0, lastReadBytes: 65536 });
    t.true(full.mem.view(0, 65536).every((b) => b === 0));
    t.is(blocks(full.path), punched, 'reading the discarded range allocated nothing');
    t.deepEqual(now([{ kind: 'read', backing: 0, offset: 600 << 10, into: [full.mem.view(0, 4096)] }]), { errno: 0, lastReadBytes: 4096 });
    t.true(Buffer.from(full.mem.buf, 0, 4096).equals(full.data.subarray(600 << 10, (600 << 10) + 4096)));
  } finally {
    full.close();
  }
});

test.serial('a hole punched in a tmpfs image after its executor was made but before its first read: never mapped, the hole stays a hole', async (t) => {
  // A plugin upgrade's or a host take-over's new instance makes its executor while the old one
  // still serves; a discard by the old one in that window must keep the new one on pread.
  const { path, mem, now, close } = servedTmpfsImage('late-hole.img', 36);
  try {
    execFileSync('fallocate', ['--punch-hole', '--offset', String(128 << 10), '--length', String(128 << 10), path]);
    const holed = statSync(path).blocks;
    for (let off = 0; off < 512 << 10; off += 65536) t.deepEqual(now([{ kind: 'read', backing: 0, offset: off, into: [mem.view(0, 65536)] }]), { errno: 0, lastReadBytes: 65536 });
    t.is(mapsNamed(path), 0, 'not mapped: the file was sparse at the first read');
    t.is(statSync(path).blocks, holed, 'reading the hole allocated nothing');
    t.deepEqual(now([{ kind: 'read', backing: 0, offset: 128 << 10, into: [mem.view(0, 65536)] }]), { errno: 0, lastReadBytes: 65536 });
    t.true(mem.view(0, 65536).every((b) => b === 0), 'the hole reads as zeroes');
  } finally {
    close();
  }
});

test.serial('a mapped tmpfs file shrunk behind our back: the read that faults is done again with pread (the host lives), as are later reads: the answers are pread\'s', async (t) => {
  const { path, data, mem, lines, now, close } = servedTmpfsImage('shrunk.img', 34);
  try {
    t.deepEqual(now([{ kind: 'read', backing: 0, offset: 800 << 10, into: [mem.view(0, 4096)] }]), { errno: 0, lastReadBytes: 4096 });
    truncateSync(path, (512 << 10) + 1000);
    mem.view(0, 8192).fill(0xee);
    // The last op of its request, across the new end: pread says 1000 bytes, and they are the file's.
    t.deepEqual(now([{ kind: 'read', backing: 0, offset: 512 << 10, into: [mem.view(0, 8192)] }]), { errno: 0, lastReadBytes: 1000 }, 'the faulting read: what pread gives');
    t.true(Buffer.from(mem.buf, 0, 1000).equals(data.subarray(512 << 10, (512 << 10) + 1000)), 'the bytes before the new end');
    t.true(lines.some((l) => /copy from its mapping faulted.*read again with pread/.test(l)), 'the log says why');
    t.is(mapsNamed(path), 0, 'the mapping is gone');
    t.deepEqual(now([{ kind: 'read', backing: 0, offset: 800 << 10, into: [mem.view(0, 4096)] }]), { errno: 0, lastReadBytes: 0 }, 'past the new end: nothing, as pread says');
    t.deepEqual(now([{ kind: 'read', backing: 0, offset: 4096, into: [mem.view(0, 4096)] }]), { errno: 0, lastReadBytes: 4096 });
    t.true(Buffer.from(mem.buf, 0, 4096).equals(data.subarray(4096, 8192)));
  } finally {
    close();
  }
});

test.serial('a hole punched behind our back in a mapped image on a full tmpfs: the read that faults is done again with pread and reads zeroes, not EIO', async (t) => {
  await withTmpfs('1m', diskDir, async (mnt) => {
    const { path, data, mem, lines, now, close } = servedTmpfsImage('holed.img', 35, 256 << 10, mnt);
    try {
      t.deepEqual(now([{ kind: 'read', backing: 0, offset: 0, into: [mem.view(0, 4096)] }]), { errno: 0, lastReadBytes: 4096 });
      t.true(mapsNamed(path) > 0, 'the image is mapped');
      // Someone else punches a hole and fills the file system: a fault cannot allocate the page.
      execFileSync('fallocate', ['--punch-hole', '--offset', String(64 << 10), '--length', String(64 << 10), path]);
      const filler = openSync(join(mnt, 'filler'), 'w');
      try {
        const chunk = Buffer.alloc(64 << 10, 1);
        for (;;) writeFileSync(filler, chunk);
      } catch (e) {
        t.is((e as NodeJS.ErrnoException).code, 'ENOSPC', 'the file system is full');
      } finally {
        closeSync(filler);
      }
      mem.view(0, 8192).fill(0xee);
      t.deepEqual(now([{ kind: 'read', backing: 0, offset: (64 << 10) - 4096, into: [mem.view(0, 8192)] }]), { errno: 0, lastReadBytes: 8192 }, 'the faulting read: what pread gives');
      t.true(Buffer.from(mem.buf, 0, 4096).equals(data.subarray((64 << 10) - 4096, 64 << 10)) && mem.view(4096, 4096).every((b) => b === 0), 'the bytes before the hole, then zeroes');
      t.true(lines.some((l) => /copy from its mapping faulted/.test(l)), 'the log says why');
      t.is(mapsNamed(path), 0, 'the mapping is gone');
    } finally {
      close();
    }
  });
});

test.serial('a done() that drains or closes the executor: every request still gets exactly one done', async (t) => {
  await noLeak(t, async () => {
    const path = join(shmDir, 'reentrant.img');
    writeFileSync(path, pattern(1 << 20, 15));
    // The real disk, so that completions come from the ring (tmpfs would be served inline).
    const diskPath = join(diskDir, 'reentrant.img');
    writeFileSync(diskPath, pattern(1 << 20, 15));
    const file = FileBacking.open(diskPath, true);
    const mem = guestMemory(1 << 20);
    for (const how of ['drain', 'close'] as const) {
      const ex = new UringExecutor({ target: fileTable(file), entries: 8 });
      const calls = new Map<number, IoResult[]>();
      for (let i = 0; i < 48; i++) {
        ex.submit([{ kind: 'read', backing: 0, offset: i * 4096, into: [mem.view(i * 4096, 4096)] }], false, (r) => {
          calls.set(i, [...(calls.get(i) ?? []), r]);
          if (calls.size === 1) (how === 'drain' ? ex.drain() : ex.close());
        });
      }
      await new Promise<void>((resolve) => {
        const check = () => (calls.size === 48 ? resolve() : setImmediate(check));
        check();
      });
      t.is(calls.size, 48, how);
      t.true([...calls.values()].every((c) => c.length === 1), `${how}: one done per request`);
      const ok = [...calls.entries()].filter(([, [r]]) => r!.errno === 0);
      if (how === 'drain') t.is(ok.length, 48, 'drain: every read completed for real');
      for (const [i] of ok) t.true(Buffer.from(mem.buf, i * 4096, 4096).equals(pattern(1 << 20, 15).subarray(i * 4096, i * 4096 + 4096)), `${how}: read ${i}`);
      t.true([...calls.values()].every(([r]) => r!.errno === 0 || r!.errno === ECANCELED));
      ex.close();
    }
    mem.close();
    file.close();
  });
});

test.serial('--direct, 4096-byte blocks: 64 concurrent 512-byte writes into the same 8 blocks all land (each read-modify-write runs alone)', async (t) => {
  const { dev, file: behind } = loopDevice(t, 4096);
  await noLeak(t, async () => {
    const backing = FileBacking.open(dev, false, { direct: true });
    const mem = guestMemory(1 << 20);
    const ex = new UringExecutor({ target: fileTable(backing) });
    const expect = pattern(4 << 20, 6);
    try {
      const writes: Promise<IoResult>[] = [];
      for (let i = 0; i < 64; i++) {
        const sector = 8 * (i % 8) + Math.floor(i / 8); // block i%8, sector i/8 in it: neighbours interleaved
        mem.view(i * 4096, 512).fill(i + 1);
        expect.fill(i + 1, sector * 512, sector * 512 + 512);
        writes.push(run(ex, [{ kind: 'write', backing: 0, offset: sector * 512, from: [mem.view(i * 4096, 512)] }]));
      }
      t.is(ex.inflight, 64);
      for (const r of await Promise.all(writes)) t.is(r.errno, 0);
      t.deepEqual(await run(ex, [{ kind: 'flush', backing: 0 }], true), { errno: 0, lastReadBytes: 0 });
    } finally {
      ex.close();
      backing.close();
      mem.close();
    }
    t.true(readFileSync(behind).equals(expect), 'every sector holds its own write');
  });
});
