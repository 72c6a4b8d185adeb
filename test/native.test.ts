// The native addon against real kernel objects: socketpairs, listening sockets, memfds,
// eventfds, pipes, mmaps, libuv polls on the main thread and in workers. Every scenario
// counts /proc/self/fd before and after, so a leaked fd fails the test. Serial, because
// the fd count is process-wide.
import test from 'ava';
import type { ExecutionContext } from 'ava';
import { execFile } from 'node:child_process';
import { closeSync, constants as fsc, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { Worker } from 'node:worker_threads';
import { fdSnapshot, fdsOpenedSince } from './helpers/fd-snapshot.ts';
import { addonCandidates, errnoCode, native as n } from '../host/native/index.ts';
import { STAT_SLOTS } from '../host/native/fs-api.ts';

const GiB = 2 ** 30;
const addonPath = addonCandidates.find((p) => p.endsWith('/build/Release/vhost_native.node'))!;

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

const mapsMention = (needle: string): boolean => readFileSync('/proc/self/maps', 'utf8').includes(needle);

/** Runs body and fails the test if it leaves the process with a different number of fds. */
async function noLeak(t: ExecutionContext, body: () => unknown | Promise<unknown>): Promise<void> {
  const before = fdSnapshot();
  await body();
  // Worker threads release their loop's fds shortly after 'exit'.
  for (let i = 0; i < 50 && fdsOpenedSince(before).length > 0; i++) await new Promise((r) => setTimeout(r, 20));
  t.deepEqual(fdsOpenedSince(before), [], 'fds the scenario left open');
}

function memfdWith(name: string, contents: string): number {
  const fd = n.memfdCreate(name, false);
  const data = Buffer.from(contents);
  n.ftruncate(fd, data.length);
  n.pwrite(fd, data, 0);
  return fd;
}

function readAll(fd: number): string {
  const { size } = n.fstat(fd);
  const buf = Buffer.alloc(size);
  t_assert(n.pread(fd, buf, 0) === size);
  return buf.toString();
}

function t_assert(cond: boolean): void {
  if (!cond) throw new Error('assertion failed');
}

function closeAll(...fds: number[]): void {
  for (const fd of fds) n.close(fd);
}

test.serial('a memfd passed over a socketpair reads back its contents', (t) =>
  noLeak(t, () => {
    const [a, b] = n.socketpair();
    const m = memfdWith('pass', 'guest memory bytes');
    t.is(n.sendMsg(a, Buffer.from('x'), [m]), 1);
    const r = n.recvMsg(b, Buffer.alloc(16), 8);
    t.truthy(r);
    t.is(r!.bytes, 1);
    t.false(r!.fdsTruncated);
    t.is(r!.fds.length, 1);
    t.not(r!.fds[0], m);
    t.is(readAll(r!.fds[0]), 'guest memory bytes');
    t.true(n.fstat(r!.fds[0]).isFile);
    closeAll(a, b, m, ...r!.fds);
  }));

test.serial('fds stay with the message they were sent with', (t) =>
  noLeak(t, () => {
    const [a, b] = n.socketpair();
    const m1 = memfdWith('one', 'first');
    const m2 = memfdWith('two', 'second');
    const m3 = memfdWith('three', 'third');
    n.sendMsg(a, Buffer.alloc(12, 1), [m1]);
    n.sendMsg(a, Buffer.alloc(12, 2), [m2, m3]);
    n.sendMsg(a, Buffer.alloc(12, 3), []);
    const hdr = Buffer.alloc(12);
    const r1 = n.recvMsg(b, hdr, 8)!;
    t.is(r1.bytes, 12);
    t.is(hdr[0], 1);
    t.deepEqual(r1.fds.map(readAll), ['first']);
    const r2 = n.recvMsg(b, hdr, 8)!;
    t.is(hdr[0], 2);
    t.deepEqual(r2.fds.map(readAll), ['second', 'third']);
    const r3 = n.recvMsg(b, hdr, 8)!;
    t.is(hdr[0], 3);
    t.deepEqual(r3.fds, []);
    t.is(n.recvMsg(b, hdr, 8), null, 'nothing left: EAGAIN is null');
    closeAll(a, b, m1, m2, m3, ...r1.fds, ...r2.fds);
  }));

test.serial('more fds than maxFds: fdsTruncated, the ones that fit arrive, none leak', (t) =>
  noLeak(t, () => {
    const [a, b] = n.socketpair();
    const sent = Array.from({ length: 10 }, (_, i) => memfdWith(`fd${i}`, `content ${i}`));
    n.sendMsg(a, Buffer.from('y'), sent);
    const r = n.recvMsg(b, Buffer.alloc(4), 8)!;
    t.true(r.fdsTruncated);
    t.is(r.fds.length, 8);
    t.deepEqual(r.fds.map(readAll), sent.slice(0, 8).map((_, i) => `content ${i}`));
    closeAll(a, b, ...sent, ...r.fds);
  }));

test.serial('maxFds 0 discards fds and says so', (t) =>
  noLeak(t, () => {
    const [a, b] = n.socketpair();
    const m = memfdWith('drop', 'x');
    n.sendMsg(a, Buffer.from('z'), [m]);
    const r = n.recvMsg(b, Buffer.alloc(4), 0)!;
    t.deepEqual(r, { bytes: 1, fds: [], fdsTruncated: true });
    closeAll(a, b, m);
  }));

test.serial('EOF, EPIPE without SIGPIPE, and hostile arguments to recvMsg/sendMsg', (t) =>
  noLeak(t, () => {
    const [a, b] = n.socketpair();
    t.throws(() => n.recvMsg(b, Buffer.alloc(0), 1), { instanceOf: RangeError, message: /buf is empty/ });
    t.throws(() => n.recvMsg(b, Buffer.alloc(1), 254), { instanceOf: RangeError, message: /maxFds.*254/ });
    t.throws(() => n.sendMsg(a, Buffer.alloc(0), [a]), { message: /at least one byte/ });
    t.throws(() => n.sendMsg(a, Buffer.alloc(1), 'x' as unknown as number[]), { instanceOf: TypeError });
    t.throws(() => n.sendMsg(a, Buffer.alloc(1), [-1]), { instanceOf: RangeError, message: /fds\[0\].*-1/ });
    t.throws(() => n.sendMsg(a, Buffer.alloc(1), [1.5]), { instanceOf: RangeError, message: /1\.5/ });
    t.throws(() => n.recvMsg('3' as unknown as number, Buffer.alloc(1), 1), {
      instanceOf: TypeError,
      message: /fd must be a number, got string/,
    });
    t.throws(() => n.recvMsg(a, 'nope' as unknown as Uint8Array, 1), { instanceOf: TypeError, message: /buf/ });
    n.close(a);
    t.is(n.recvMsg(b, Buffer.alloc(4), 1)!.bytes, 0, 'peer closed: 0 bytes');
    const e = t.throws(() => n.sendMsg(b, Buffer.from('late'), []));
    t.is(errnoCode(e), 'EPIPE');
    t.is((e as NodeJS.ErrnoException).syscall, 'sendmsg');
    t.regex(e!.message, /^sendmsg: EPIPE \(Broken pipe\)$/);
    n.close(b);
    const bad = t.throws(() => n.recvMsg(b, Buffer.alloc(4), 1));
    t.is(errnoCode(bad), 'EBADF');
    t.is((bad as NodeJS.ErrnoException).errno, 9);
    t.is(bad!.message, 'recvmsg: EBADF (Bad file descriptor)');
  }));

test.serial('listen, connect, accept, and a conversation with fds over it', (t) =>
  noLeak(t, () => {
    const dir = mkdtempSync(join(tmpdir(), 'vhost-native-'));
    try {
      const path = join(dir, 'sock');
      const l = n.listenUnix(path, 4);
      t.true(n.isListeningUnixSocket(l));
      t.is(n.accept(l), -1, 'no client yet');
      const c = n.connectUnix(path);
      t.false(n.isListeningUnixSocket(c));
      const s = n.accept(l);
      t.true(s >= 0);
      t.true(n.fstat(s).isSocket);
      const m = memfdWith('over-listen', 'hello');
      n.sendMsg(c, Buffer.from('hdr'), [m]);
      const buf = Buffer.alloc(3);
      const r = n.recvMsg(s, buf, 8)!;
      t.is(buf.toString(), 'hdr');
      t.is(readAll(r.fds[0]), 'hello');
      const inUse = t.throws(() => n.listenUnix(path, 4));
      t.is(errnoCode(inUse), 'EADDRINUSE');
      t.true(inUse!.message.includes(path), 'the error names the path');
      const missing = t.throws(() => n.connectUnix(join(dir, 'nothing')));
      t.is(errnoCode(missing), 'ENOENT');
      t.throws(() => n.listenUnix('/tmp/' + 'x'.repeat(120), 4), { instanceOf: RangeError, message: /at most 107/ });
      t.throws(() => n.listenUnix('', 4), { instanceOf: RangeError, message: /empty/ });
      t.throws(() => n.connectUnix('/tmp/a\0b'), { instanceOf: TypeError, message: /NUL/ });
      const m2 = n.memfdCreate('not-a-socket', false);
      t.false(n.isListeningUnixSocket(m2));
      const [p0, p1] = n.socketpair();
      t.false(n.isListeningUnixSocket(p0));
      closeAll(l, c, s, m, m2, p0, p1, ...r.fds);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }));

test.serial('eventfd: reads return and clear the counter, -1 when zero', (t) =>
  noLeak(t, () => {
    const e = n.eventfd(2);
    n.eventfdWrite(e, 3);
    t.is(n.eventfdRead(e), 5);
    t.is(n.eventfdRead(e), -1);
    n.eventfdWrite(e);
    t.is(n.eventfdRead(e), 1);
    n.eventfdWrite(e, 2 ** 40);
    t.is(n.eventfdRead(e), 2 ** 40, 'counters beyond 32 bits survive');
    t.throws(() => n.eventfd(2 ** 32), { instanceOf: RangeError });
    t.throws(() => n.eventfdWrite(e, -1), { instanceOf: RangeError });
    const m = n.memfdCreate('not-eventfd', false);
    t.throws(() => n.eventfdRead(m), { message: /is it an eventfd/ });
    closeAll(e, m);
  }));

test.serial('eventfdSignal: one write of 1, false on a full counter of an O_NONBLOCK eventfd; isNonBlocking tells which', (t) =>
  noLeak(t, () => {
    const e = n.eventfd(0);
    t.true(n.isNonBlocking(e), 'the addon makes its eventfds O_NONBLOCK');
    t.true(n.eventfdSignal(e));
    t.true(n.eventfdSignal(e));
    t.is(n.eventfdRead(e), 2);
    for (let i = 0; i < 2048; i++) n.eventfdWrite(e, 2 ** 53 - 1);
    t.true(n.eventfdWrite(e, 2046), 'the counter is at 2^64-2');
    t.false(n.eventfdSignal(e), 'a full counter is EAGAIN: false, not an error');
    t.true(n.eventfdRead(e) > 2 ** 53);
    n.setNonBlocking(e, false);
    t.false(n.isNonBlocking(e), 'the flag as it is now, not as created');
    const [rd, wr] = n.pipe2();
    t.throws(() => n.eventfdSignal(rd), { message: /EBADF/ }, 'an fd not open for writing is an error, not false');
    t.throws(() => n.isNonBlocking(-1), { instanceOf: RangeError });
    closeAll(e, rd, wr);
  }));

test.serial('eventfd: reads and writes never block, even on a blocking eventfd (a front-end may send one)', (t) =>
  noLeak(t, () => {
    const e = n.eventfd(0);
    // Fill the counter to its maximum, 2^64-2, in steps a JS number can carry.
    for (let i = 0; i < 2048; i++) t.true(n.eventfdWrite(e, 2 ** 53 - 1));
    t.true(n.eventfdWrite(e, 2046));
    t.false(n.eventfdWrite(e), 'a full counter refuses the write instead of blocking');
    n.setNonBlocking(e, false);
    t.false(n.eventfdWrite(e), 'also when the fd is blocking');
    t.true(n.eventfdRead(e) > 2 ** 53, 'the read takes the counter');
    t.is(n.eventfdRead(e), -1, 'an empty blocking eventfd reads -1 instead of blocking');
    t.throws(() => n.eventfdWrite(e, 2), { message: /blocking/ }, 'n > 1 is refused on a blocking fd (only 1 is sure to fit)');
    t.true(n.eventfdWrite(e));
    t.is(n.eventfdRead(e), 1);
    closeAll(e);
  }));

test.serial('fdKind: eventfd, memfd, pipe, fifo, socket, file, directory, device', (t) =>
  noLeak(t, async () => {
    const dir = mkdtempSync(join(tmpdir(), 'fdkind-'));
    try {
      const e = n.eventfd(0);
      const m = n.memfdCreate('kind', false);
      const [r, w] = n.pipe2();
      const [s1, s2] = n.socketpair();
      await new Promise<void>((resolve, reject) => execFile('mkfifo', [join(dir, 'fifo')], (err) => (err ? reject(err) : resolve())));
      const fifo = openSync(join(dir, 'fifo'), fsc.O_RDWR | fsc.O_NONBLOCK);
      writeFileSync(join(dir, 'file'), 'x');
      const file = openSync(join(dir, 'file'), 'r');
      const memfdNamed = openSync(join(dir, 'memfd:x'), 'w'); // a file named like a memfd is not one
      const d = openSync(dir, 'r');
      const nul = openSync('/dev/null', 'r');
      t.deepEqual(
        [e, m, r, w, s1, fifo, file, memfdNamed, d, nul].map((fd) => n.fdKind(fd)),
        ['eventfd', 'memfd', 'pipe', 'pipe', 'socket', 'fifo', 'file', 'file', 'directory', 'char-device'],
      );
      closeAll(e, m, r, w, s1, s2, fifo, file, memfdNamed, d, nul);
      t.throws(() => n.fdKind(e), { code: 'EBADF' });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }));

test.serial('pipe2: -1 when empty, data, then 0 at EOF; dup and setNonBlocking', (t) =>
  noLeak(t, () => {
    const [r, w] = n.pipe2();
    t.true(n.fstat(r).isFifo);
    const buf = Buffer.alloc(8);
    t.is(n.read(r, buf), -1);
    t.is(n.write(w, Buffer.from('abc')), 3);
    t.is(n.read(r, buf), 3);
    t.is(buf.subarray(0, 3).toString(), 'abc');
    const w2 = n.dup(w);
    t.not(w2, w);
    n.write(w2, Buffer.from('d'));
    t.is(n.read(r, buf), 1);
    // Fill the pipe: a full non-blocking pipe reports -1 rather than blocking.
    let total = 0;
    for (let k; (k = n.write(w, Buffer.alloc(65536))) !== -1; ) total += k;
    t.true(total > 0);
    n.setNonBlocking(r, false);
    n.setNonBlocking(r, true);
    closeAll(w, w2);
    while (n.read(r, Buffer.alloc(65536)) > 0);
    t.is(n.read(r, buf), 0, 'EOF once every writer closed');
    t.throws(() => n.read(r, Buffer.alloc(0)), { instanceOf: RangeError });
    n.close(r);
  }));

test.serial('mmap window writes show up in pread, pwrite shows up in the window', (t) =>
  noLeak(t, () => {
    const fd = n.memfdCreate('win', true);
    n.ftruncate(fd, 3 * 4096);
    const map = n.mmap(fd, 2 * 4096, 4096, true);
    t.is(map.size, 8192);
    const w = new Uint8Array(map.window(100, 50));
    t.is(w.length, 50);
    w.set(Buffer.from('written through the window'));
    const back = Buffer.alloc(26);
    n.pread(fd, back, 4096 + 100);
    t.is(back.toString(), 'written through the window');
    n.pwrite(fd, Buffer.from('from pwrite'), 4096 + 8000);
    t.is(Buffer.from(map.window(8000, 11)).toString(), 'from pwrite');
    const ro = n.mmap(fd, 4096, 4096, false);
    t.is(Buffer.from(ro.window(100, 7)).toString(), 'written');
    map.unmap();
    ro.unmap();
    n.close(fd);
  }));

test.serial('a sparse 5 GiB memfd maps whole; a window at 4.5 GiB sees pwrite data', (t) =>
  noLeak(t, () => {
    const fd = n.memfdCreate('five-gib', false);
    n.ftruncate(fd, 5 * GiB);
    t.is(n.fstat(fd).size, 5 * GiB);
    const map = n.mmap(fd, 5 * GiB, 0, true);
    t.is(map.size, 5 * GiB);
    const at = 4.5 * GiB;
    n.pwrite(fd, Buffer.from('far away'), at + 10);
    const w = new Uint8Array(map.window(at, 4096));
    t.is(Buffer.from(w.subarray(10, 18)).toString(), 'far away');
    w.set(Buffer.from('and back'), 100);
    const back = Buffer.alloc(8);
    n.pread(fd, back, at + 100);
    t.is(back.toString(), 'and back');
    // The last byte of the mapping is reachable, one past it is not.
    t.is(map.window(5 * GiB - 1, 1).byteLength, 1);
    t.throws(() => map.window(5 * GiB - 1, 2), { instanceOf: RangeError });
    map.unmap();
    n.close(fd);
  }));

test.serial('window and mmap reject bad bounds, naming the values', (t) =>
  noLeak(t, () => {
    const fd = n.memfdCreate('bounds', false);
    n.ftruncate(fd, 2 * GiB);
    const map = n.mmap(fd, 2 * GiB, 0, true);
    t.throws(() => map.window(0, 0), { instanceOf: RangeError, message: /length 0/ });
    t.throws(() => map.window(0, n.MAX_WINDOW + 1), { instanceOf: RangeError, message: /1073741825.*MAX_WINDOW/ });
    t.is(map.window(GiB, n.MAX_WINDOW).byteLength, n.MAX_WINDOW);
    t.throws(() => map.window(2 * GiB - 10, 11), { instanceOf: RangeError, message: /2147483638.*11.*2147483648/ });
    t.throws(() => map.window(2 * GiB, 1), { instanceOf: RangeError, message: /past the end/ });
    t.throws(() => map.window(-1, 1), { instanceOf: RangeError, message: /offset.*-1/ });
    t.throws(() => map.window(0.5, 1), { instanceOf: RangeError, message: /offset.*0\.5/ });
    t.throws(() => map.window(NaN, 1), { instanceOf: RangeError, message: /NaN/ });
    t.throws(() => map.window(2 ** 53, 1), { instanceOf: RangeError });
    t.throws(() => map.window('0' as unknown as number, 1), { instanceOf: TypeError, message: /offset must be a number/ });
    t.throws(() => n.mmap(fd, 4096, 100, true), { instanceOf: RangeError, message: /offset 100.*page size/ });
    t.throws(() => n.mmap(fd, 0, 0, true), { instanceOf: RangeError, message: /size/ });
    t.throws(() => n.mmap(fd, 2 ** 53 - 4096, 8192, true), { instanceOf: RangeError, message: /8192 \+ size 9007199254736896 exceeds 2\^53/ });
    const ctor = (map as unknown as { constructor: new (...a: unknown[]) => unknown }).constructor;
    t.throws(() => new ctor(), { instanceOf: TypeError, message: /use native.mmap/ });
    const [r, w] = n.pipe2();
    const wa = n.watch(r, 'r', () => {});
    t.throws(() => map.window.call(wa, 0, 1), { instanceOf: TypeError });
    wa.close();
    const bad = t.throws(() => n.mmap(r, 4096, 0, false));
    t.is(errnoCode(bad), 'ERR_MAPPING_NOT_FILE');
    t.regex(bad!.message, /pipe or FIFO/);
    map.unmap();
    closeAll(fd, r, w);
  }));

test.serial('unmap detaches every window, is idempotent, and really munmaps', (t) =>
  noLeak(t, () => {
    const fd = n.memfdCreate('vhost-native-unmap-probe', false);
    n.ftruncate(fd, 65536);
    const map = n.mmap(fd, 65536, 0, true);
    t.true(mapsMention('vhost-native-unmap-probe'));
    const a = map.window(0, 4096);
    const b = map.window(4096, 8192);
    const view = new Uint32Array(b);
    view[0] = 7;
    map.unmap();
    t.is(a.byteLength, 0);
    t.is(b.byteLength, 0);
    t.is(view.length, 0);
    t.is(view[0] as number | undefined, undefined, 'a stale view reads nothing');
    t.false(mapsMention('vhost-native-unmap-probe'));
    t.notThrows(() => map.unmap());
    const e = t.throws(() => map.window(0, 1));
    t.is(errnoCode(e), 'ERR_MAPPING_UNMAPPED');
    n.close(fd);
  }));

test.serial('a collected Mapping munmaps only after its last window is gone', async (t) =>
  noLeak(t, async () => {
    const fd = n.memfdCreate('vhost-native-gc-probe', false);
    n.ftruncate(fd, 8192);
    let win: Uint8Array | undefined = (() => {
      const map = n.mmap(fd, 8192, 0, true);
      return new Uint8Array(map.window(0, 8192));
    })();
    win[0] = 42;
    // Finalizers run from setImmediate, so give them turns of the loop.
    const settle = async () => {
      for (let i = 0; i < 5; i++) {
        gc();
        await new Promise((r) => setImmediate(r));
      }
    };
    await settle();
    t.is(win[0], 42, 'the window still works with its Mapping collected');
    t.true(mapsMention('vhost-native-gc-probe'));
    win = undefined;
    await settle();
    t.false(mapsMention('vhost-native-gc-probe'), 'munmapped once nothing can reach it');
    n.close(fd);
  }));

test.serial('watch fires on an eventfd write on the main thread; update and close', async (t) =>
  noLeak(t, async () => {
    const e = n.eventfd(0);
    const calls: [boolean, boolean, boolean][] = [];
    let wake: () => void = () => {};
    const w = n.watch(e, 'r', (r, wr, err) => {
      calls.push([r, wr, err]);
      if (r) n.eventfdRead(e);
      wake();
    });
    const next = () => new Promise<void>((res) => (wake = res));
    let p = next();
    n.eventfdWrite(e, 5);
    await p;
    t.deepEqual(calls, [[true, false, false]]);
    p = next();
    w.update('w');
    await p;
    t.deepEqual(calls[1], [false, true, false]);
    w.update('r');
    w.close();
    w.close();
    n.eventfdWrite(e, 1);
    await new Promise((r) => setTimeout(r, 30));
    t.is(calls.length, 2, 'no callbacks after close');
    t.throws(() => w.update('r'), { message: /closed/ });
    t.throws(() => n.watch(e, 'x' as 'r', () => {}), { instanceOf: TypeError, message: /'x'/ });
    t.throws(() => n.watch(e, 'r', 5 as unknown as () => void), { instanceOf: TypeError });
    const w2 = n.watch(e, 'r', () => {});
    const dup = t.throws(() => n.watch(e, 'r', () => {}));
    t.is(errnoCode(dup), 'EEXIST');
    t.regex(dup!.message, /already has a watcher/);
    w2.close();
    const m = n.memfdCreate('regular', false);
    const bad = t.throws(() => n.watch(m, 'r', () => {}));
    t.is(errnoCode(bad), 'EPERM', 'a regular file cannot be polled');
    closeAll(e, m);
    const closed = t.throws(() => n.watch(e, 'r', () => {}));
    t.is(errnoCode(closed), 'EBADF');
  }));

test.serial('watch reports POLLERR as error (a pipe whose reader is gone)', (t) =>
  noLeak(t, async () => {
    const [r, w] = n.pipe2();
    n.close(r);
    const got = await new Promise<[boolean, boolean, boolean]>((res) => {
      const watcher = n.watch(w, 'r', (...a) => {
        watcher.close();
        res(a);
      });
    });
    t.deepEqual(got, [false, false, true]);
    n.close(w);
  }));

const workerWatch = `
const { parentPort } = require('node:worker_threads');
const n = require(${JSON.stringify(addonPath)});
const e = n.eventfd(0);
const w = n.watch(e, 'r', (r, wr, err) => {
  const v = n.eventfdRead(e);
  w.close();
  n.close(e);
  parentPort.postMessage({ r, wr, err, v });
});
setTimeout(() => n.eventfdWrite(e, 9), 5);
`;

test.serial('watch works inside a worker_thread', (t) =>
  noLeak(t, async () => {
    const worker = new Worker(workerWatch, { eval: true });
    const exited = new Promise((res) => worker.once('exit', res));
    const msg = await new Promise((res, rej) => {
      worker.once('message', res);
      worker.once('error', rej);
      // A worker that ends without answering must fail the test, not leave it hanging.
      void exited.then((code) => rej(new Error(`worker exited with code ${code} before the watcher fired`)));
    });
    t.deepEqual(msg, { r: true, wr: false, err: false, v: 9 });
    await exited;
  }));

// In a separate process: if teardown with open watchers aborted, it would take ava's
// worker down with it instead of failing one test.
const teardownScript = `
const { Worker } = require('node:worker_threads');
const addon = ${JSON.stringify(addonPath)};
const body = (how) => \`
  const { parentPort } = require('node:worker_threads');
  const n = require(\${JSON.stringify(addon)});
  const fds = [];
  for (let i = 0; i < 3; i++) { const e = n.eventfd(0); fds.push(e); n.watch(e, 'r', () => {}); }
  const extra = n.eventfd(0);
  const closing = n.watch(extra, 'rw', () => {});
  closing.close(); // one close still in flight at exit
  const fd = n.memfdCreate('vhost-native-worker-map', false);
  n.ftruncate(fd, 65536);
  globalThis.kept = [n.mmap(fd, 65536, 0, true), n.mmap(fd, 65536, 0, true).window(0, 4096)];
  n.close(fd);
  parentPort.postMessage('ready');
  parentPort.once('message', () => process.exit(0));
\`;
async function run(how) {
  const w = new Worker(body(how), { eval: true });
  await new Promise((res) => w.once('message', res));
  const exited = new Promise((res) => w.once('exit', res));
  if (how === 'terminate') await w.terminate();
  else w.postMessage('exit now');
  return exited;
}
(async () => {
  const codes = [await run('exit'), await run('terminate'), await run('exit')];
  // A watcher callback that throws reaches 'uncaughtException' instead of being lost.
  const n = require(addon);
  const e = n.eventfd(1);
  process.on('uncaughtException', (err) => {
    const maps = require('node:fs').readFileSync('/proc/self/maps', 'utf8');
    const lingering = maps.split('\\n').filter((l) => l.includes('vhost-native-worker-map')).length;
    console.log('survived', JSON.stringify(codes), err.message, 'lingering maps', lingering);
    process.exit(0);
  });
  n.watch(e, 'r', () => { throw new Error('thrown from a watcher'); });
})();
`;

test.serial('workers that exit with open watchers and mappings do not crash or leak maps', async (t) => {
  const { code, stdout, stderr } = await new Promise<{ code: number | null; stdout: string; stderr: string }>(
    (res) => {
      const child = execFile(process.execPath, ['-e', teardownScript], { timeout: 30_000 }, (_err, stdout, stderr) =>
        res({ code: child.exitCode, stdout, stderr }),
      );
    },
  );
  t.is(code, 0, `child exited with ${code}; stderr:\n${stderr}`);
  t.is(stdout.trim(), 'survived [0,1,0] thrown from a watcher lingering maps 0');
});

test('an unref\'d watcher lets the process end while it is open; a ref\'d one keeps it alive', async (t) => {
  // Each child watches an eventfd nobody writes: with unref() it has nothing else to do and exits
  // by itself; without, it waits until the timeout kills it.
  const script = (unref: boolean) => `
    const n = require(${JSON.stringify(addonPath)});
    const w = n.watch(n.eventfd(0), 'r', () => {});
    ${unref ? 'w.unref();' : ''}
    process.on('exit', () => console.log('exiting'));`;
  const run = (unref: boolean) =>
    new Promise<{ signal: NodeJS.Signals | null; stdout: string }>((res) => {
      const child = execFile(process.execPath, ['-e', script(unref)], { timeout: 3000 }, (_e, stdout) =>
        res({ signal: child.signalCode, stdout }));
    });
  const [unrefd, refd] = await Promise.all([run(true), run(false)]);
  t.is(unrefd.signal, null);
  t.is(unrefd.stdout.trim(), 'exiting');
  t.is(refd.signal, 'SIGTERM', 'killed by the timeout: the watcher kept it alive');
});

test('the fs out buffers must be of the type their layout is read as: a Float64Array for stats, a BigInt64Array for locks', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'vw-native-out-'));
  const fd = openSync(join(dir, 'f'), 'w+');
  try {
    // Same byte length, other element type: refused, never filled with bits read back as garbage.
    t.throws(() => n.fsStat(fd, new BigUint64Array(STAT_SLOTS) as unknown as Float64Array), { instanceOf: TypeError, message: /fsStat: out must be a Float64Array/ });
    t.throws(() => n.fsStat(fd, new Uint8Array(STAT_SLOTS * 8) as unknown as Float64Array), { instanceOf: TypeError, message: /must be a Float64Array/ });
    t.throws(() => n.fsStat(fd, new Float64Array(STAT_SLOTS - 1)), { instanceOf: RangeError, message: new RegExp(`at least ${STAT_SLOTS}`) });
    t.is(n.fsStat(fd, new Float64Array(STAT_SLOTS)), 0);
    t.throws(() => n.fsLock(fd, 0, 1, 0, 10, new Float64Array(4) as unknown as BigInt64Array), { instanceOf: TypeError, message: /fsLock: out must be a BigInt64Array/ });
    const out = new BigInt64Array(4);
    t.is(n.fsLock(fd, 0, 1, 0, 10, out), 0, 'GETLK of a free range');
    t.is(out[0], 2n, 'F_UNLCK: nobody holds it');
  } finally {
    closeSync(fd);
    rmSync(dir, { recursive: true, force: true });
  }
});
