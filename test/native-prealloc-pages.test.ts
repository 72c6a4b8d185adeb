// native.preallocPages: a prealloc=on memory disk's pages made on libuv's threadpool
// (host/native/src/mapping.c), and prealloc.ts's words for its failures. What a caller relies on:
// the memfd holds every page when it resolves, the Mapping it gives is the file's (writable,
// guarded); the work holds its own dup of the fd (closing ours meanwhile is safe); a cancel
// stops it with ECANCELED and leaves no mapping; a failing step is named with its errno.
import test from 'ava';
import { closeSync, fstatSync, openSync, readFileSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import { native as n } from '../host/native/index.ts';
import { PAGE_MAKING_JOBS, PageMakingCancelled, makePages, preallocateMemoryDisk, resetPopulateWriteCheck, type PreallocPages } from '../host/storage/prealloc.ts';
import { setLogSink } from '../host/log/logger.ts';
import { constants as OS } from 'node:os';
import { createMemoryDisk } from '../host/storage/memory-disk.ts';

const MiB = 1 << 20;
const cancelFlag = () => new Int32Array(new SharedArrayBuffer(4));
const pagesOf = (fd: number) => fstatSync(fd).blocks * 512;
const mapsOf = (name: string) => readFileSync('/proc/self/maps', 'utf8').split('\n').filter((l) => l.includes(`memfd:${name}`)).length;

// Serial: run before the others, alone with the threadpool.
test.serial('page making leaves libuv threadpool threads to Node: a file stat is answered while more disks than the pool has threads are made; callers may close their fds while their disks wait their turn', async (t) => {
  const poolThreads = Number(process.env.UV_THREADPOOL_SIZE) || 4;
  t.true(PAGE_MAKING_JOBS < poolThreads, `${PAGE_MAKING_JOBS} jobs at once, of ${poolThreads} threads`);
  // A disk for every thread of the pool.
  const disks = Array.from({ length: poolThreads }, () => createMemoryDisk(128 * MiB));
  const probes = disks.map((fd) => openSync(`/proc/self/fd/${fd}`, 'r'));
  let finished = 0;
  const dones = disks.map((fd) => preallocateMemoryDisk(fd, 128 * MiB, null).done.then((m) => (finished++, m)));
  for (const fd of disks) n.close(fd);
  await new Promise((r) => setImmediate(r)); // the jobs that may start have been queued on the pool
  // Queued on the pool behind the page making: with a job on every thread it would wait for a disk to be done.
  await stat('/proc/self');
  t.is(finished, 0, 'the stat was answered while every disk still had pages to make');
  for (const d of dones) (await d).unmap();
  for (const p of probes) {
    t.is(pagesOf(p), 128 * MiB);
    closeSync(p);
  }
});

test('every page exists when it resolves, and the Mapping it gives is the memfd, writable', async (t) => {
  const fd = createMemoryDisk(8 * MiB);
  t.is(pagesOf(fd), 0);
  const m = await n.preallocPages(fd, 8 * MiB, cancelFlag());
  t.is(pagesOf(fd), 8 * MiB);
  t.is(m.size, 8 * MiB);
  new Uint8Array(m.window(8 * MiB - 4096, 4096)).fill(7);
  const again = n.mmap(fd, 8 * MiB, 0, false);
  t.is(new Uint8Array(again.window(8 * MiB - 1, 1))[0], 7, 'a write through it is in the file');
  again.unmap();
  m.unmap();
  n.close(fd);
});

test('the caller may close its fd while the pages are made: the work holds its own', async (t) => {
  const fd = createMemoryDisk(128 * MiB);
  const probe = openSync(`/proc/self/fd/${fd}`, 'r');
  const done = n.preallocPages(fd, 128 * MiB, cancelFlag());
  n.close(fd);
  const m = await done;
  t.is(pagesOf(probe), 128 * MiB);
  m.unmap();
  closeSync(probe);
});

test('a cancel stops it with ECANCELED, with no mapping left behind', async (t) => {
  const fd = n.memfdCreate('prealloc-cancel-test', true);
  n.ftruncate(fd, 256 * MiB);
  const flag = cancelFlag();
  Atomics.store(flag, 0, 1);
  const e = await t.throwsAsync(n.preallocPages(fd, 256 * MiB, flag));
  t.is((e as NodeJS.ErrnoException).code, 'ECANCELED');
  t.is(pagesOf(fd), 0, 'stopped before its first chunk');
  t.is(mapsOf('prealloc-cancel-test'), 0);
  n.close(fd);
});

test('prealloc.ts: cancel() rejects `done` with PageMakingCancelled; a failing step is named in words', async (t) => {
  const fd = createMemoryDisk(64 * MiB);
  const making = preallocateMemoryDisk(fd, 64 * MiB, null);
  making.cancel();
  // Cancelled before or during its first chunk, or (on a fast machine) done already: never a crash.
  const outcome = await making.done.then(
    (m) => (m.unmap(), 'done'),
    (e: unknown) => (e instanceof PageMakingCancelled ? 'cancelled' : String(e)),
  );
  t.true(outcome === 'done' || outcome === 'cancelled', outcome);
  // A read-only fd of the disk: fallocate refuses it (EBADF), said as such.
  const ro = openSync(`/proc/self/fd/${fd}`, 'r');
  await t.throwsAsync(preallocateMemoryDisk(ro, 64 * MiB, null).done, {
    message: /--storage memory:67108864,prealloc=on: making the disk's 64 MiB of pages failed: fallocate: EBADF/,
  });
  closeSync(ro);
  n.close(fd);
});

test('arguments are checked: a detachable cancel buffer, size 0, a file shorter than size', async (t) => {
  const fd = createMemoryDisk(MiB);
  t.throws(() => n.preallocPages(fd, MiB, new Int32Array(1)), { instanceOf: TypeError, message: /SharedArrayBuffer/ });
  t.throws(() => n.preallocPages(fd, 0, cancelFlag()), { instanceOf: RangeError });
  t.throws(() => n.preallocPages(fd, 2 * MiB, cancelFlag()), { code: 'ERR_MAPPING_BEYOND_FILE' });
  n.close(fd);
});

test.serial('prealloc.ts: the memory check counts what page making under way has still to take', async (t) => {
  const a = createMemoryDisk(512 * MiB);
  const b = createMemoryDisk(512 * MiB);
  const room = { bytes: 768 * MiB, from: 'a figure given by the test' };
  const first = preallocateMemoryDisk(a, 512 * MiB, room);
  // The first job has made at most one 64 MiB chunk by now (it has not even been seen to end):
  // 768 MiB of room less its ~512 MiB still to make leaves too little for a second 512 MiB disk.
  t.throws(() => preallocateMemoryDisk(b, 512 * MiB, room), { message: /cannot be committed: only \d+ MiB is free \(a figure given by the test, \d+ MiB of it still to be taken by other disks whose pages are being made\)/ });
  first.cancel();
  await first.done.then((m) => m.unmap(), () => {});
  // Cancelled, it counts no more: the second fits now.
  let second: ReturnType<typeof preallocateMemoryDisk> | undefined;
  t.notThrows(() => (second = preallocateMemoryDisk(b, 512 * MiB, room)));
  second!.cancel();
  await second!.done.then((m) => m.unmap(), () => {});
  n.close(a);
  n.close(b);
});

test.serial('prealloc.ts: a memfd that already holds its pages (a disk an old host handed over) needs no room for them again; one that lacks pages does', async (t) => {
  const size = 4 * MiB;
  const fd = createMemoryDisk(size);
  t.teardown(() => n.close(fd));
  const room = { bytes: MiB, from: 'a test' };
  t.throws(() => preallocateMemoryDisk(fd, size, room), { message: /cannot be committed: only 1 MiB is free \(a test\)/ });
  (await preallocateMemoryDisk(fd, size, null).done).unmap();
  t.is(pagesOf(fd), size);
  let again: ReturnType<typeof preallocateMemoryDisk> | undefined;
  t.notThrows(() => (again = preallocateMemoryDisk(fd, size, room)));
  (await again!.done).unmap();
  t.is(pagesOf(fd), size);
});

/** Resident kB of this process's mappings of memfd `name` (/proc/self/smaps): what a populated mapping has faulted in. */
function residentKb(name: string): number {
  let kb = 0;
  let inside = false;
  for (const l of readFileSync('/proc/self/smaps', 'utf8').split('\n')) {
    if (/^[0-9a-f]+-[0-9a-f]+ /.test(l)) inside = l.includes(`memfd:${name}`);
    else if (inside && l.startsWith('Rss:')) kb += Number(/(\d+) kB/.exec(l)![1]);
  }
  return kb;
}

test('touch mode (kernels before 5.14): every page exists and is mapped in, writable, and bytes already in the disk are kept', async (t) => {
  const fd = n.memfdCreate('prealloc-touch-test', true);
  n.ftruncate(fd, 8 * MiB);
  t.teardown(() => n.close(fd));
  // A disk with data (handed over by an old host): touching its pages must not change a byte.
  const data = Buffer.alloc(4096, 0x5a);
  n.pwrite(fd, data, 3 * MiB);
  const m = await n.preallocPages(fd, 8 * MiB, cancelFlag(), true);
  t.is(pagesOf(fd), 8 * MiB);
  t.is(residentKb('prealloc-touch-test'), 8 * 1024, 'every page of the mapping is faulted in, as MADV_POPULATE_WRITE leaves it');
  t.deepEqual(Buffer.from(m.window(3 * MiB, 4096)), data, 'the bytes there before are unchanged');
  t.is(new Uint8Array(m.window(0, 1))[0], 0);
  new Uint8Array(m.window(8 * MiB - 4096, 4096)).fill(7);
  const again = n.mmap(fd, 8 * MiB, 0, false);
  t.is(new Uint8Array(again.window(8 * MiB - 1, 1))[0], 7, 'a write through it is in the file');
  again.unmap();
  m.unmap();
});

// This machine's kernel (6.x) has MADV_POPULATE_WRITE, and no older one is at hand: the errno a
// kernel before 5.14 gives (EINVAL from madvise with that advice, as native preallocPages reports
// it) is injected in front of the real native call, which then does the fallback's work.
test.serial('prealloc.ts: madvise refusing MADV_POPULATE_WRITE with EINVAL (a kernel before 5.14) falls back to touching each page, said once in the log; any other failure is not taken for it', async (t) => {
  const lines: string[] = [];
  setLogSink((l) => lines.push(l));
  resetPopulateWriteCheck();
  t.teardown(() => {
    setLogSink(null);
    resetPopulateWriteCheck();
  });
  const calls: string[] = [];
  const oldKernel: PreallocPages = (fd, size, cancel, touch) => {
    calls.push(touch ? 'touch' : 'populate');
    if (touch) return n.preallocPages(fd, size, cancel, true);
    const e = Object.assign(new Error('madvise(MADV_POPULATE_WRITE): EINVAL'), { code: 'EINVAL', errno: OS.errno.EINVAL, syscall: 'madvise(MADV_POPULATE_WRITE)' });
    return Promise.reject(e);
  };
  for (const k of [0, 1]) {
    const fd = createMemoryDisk(4 * MiB);
    const m = await makePages(oldKernel, fd, 4 * MiB, cancelFlag());
    t.is(pagesOf(fd), 4 * MiB, `disk ${k}: every page made`);
    new Uint8Array(m.window(0, 4096)).fill(1);
    m.unmap();
    n.close(fd);
  }
  t.deepEqual(calls, ['populate', 'touch', 'touch'], 'the second disk touches its pages straight away');
  const said = lines.filter((l) => /MADV_POPULATE_WRITE/.test(l));
  t.is(said.length, 1, lines.join('\n'));
  t.regex(said[0], /INFO .*this kernel does not know madvise MADV_POPULATE_WRITE \(Linux 5\.14 or later has it\).*touching each one instead/);

  // EINVAL from another step, or another errno from madvise: the failure as it is, no fallback.
  resetPopulateWriteCheck();
  for (const [syscall, code] of [['fallocate', 'EINVAL'], ['madvise(MADV_POPULATE_WRITE)', 'ENOMEM']] as const) {
    calls.length = 0;
    const failing: PreallocPages = (_fd, _size, _cancel, touch) => {
      calls.push(touch ? 'touch' : 'populate');
      return Promise.reject(Object.assign(new Error(`${syscall}: ${code}`), { code, errno: OS.errno[code], syscall }));
    };
    await t.throwsAsync(makePages(failing, 0, MiB, cancelFlag()), { message: `${syscall}: ${code}` });
    t.deepEqual(calls, ['populate'], `${syscall} ${code}: not retried`);
  }
});
