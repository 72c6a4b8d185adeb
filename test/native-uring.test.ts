// The addon's io_uring (host/native/src/uring.c) against real kernel objects: files on the real
// disk (/var/tmp: tmpfs would not show O_DIRECT), a memfd mapping as the "guest memory" the
// iovecs point into, pipes for I/O that stays pending, a loop device, /proc/self/mem for a real
// EIO. Serial: scenarios count the process's fds to catch leaks.
import test from 'ava';
import type { ExecutionContext } from 'ava';
import { execFile, execFileSync } from 'node:child_process';
import { closeSync, constants, fstatSync, mkdtempSync, openSync, readFileSync, readSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { release } from 'node:os';
import { fileURLToPath } from 'node:url';
import { native as n, type Uring } from '../host/native/index.ts';
import { fdSnapshot, fdsOpenedSince } from './helpers/fd-snapshot.ts';

const REPO_ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
const EIO = 5;
const EINVAL = 22;
const ENOSPC = 28;
const dir = mkdtempSync('/var/tmp/vhost-wasm-uring-');
test.after.always(() => rmSync(dir, { recursive: true, force: true }));


async function noLeak(t: ExecutionContext, body: () => unknown | Promise<unknown>): Promise<void> {
  const before = fdSnapshot();
  await body();
  t.deepEqual(fdsOpenedSince(before), [], 'fds the scenario left open');
}

/** Page-aligned "guest memory": a memfd mapping, as the host maps a front-end's regions. */
function guestMemory(bytes: number): { window: ArrayBuffer; close(): void } {
  const fd = n.memfdCreate('uring-test', false);
  n.ftruncate(fd, bytes);
  const m = n.mmap(fd, bytes, 0, true);
  return {
    window: m.window(0, bytes),
    close() {
      m.unmap();
      n.close(fd);
    },
  };
}

/** Waits until the ring's eventfd says completions are posted, then reaps them all. */
async function reapSome(ring: Uring): Promise<Array<[number, number]>> {
  const out = new Float64Array(2 * ring.capacity);
  let got = ring.reap(out);
  if (got === 0) {
    await new Promise<void>((resolve) => {
      const w = n.watch(ring.eventFd, 'r', () => {
        w.close();
        resolve();
      });
    });
    n.eventfdRead(ring.eventFd);
    got = ring.reap(out);
  }
  const pairs: Array<[number, number]> = [];
  for (let i = 0; i < got; i++) pairs.push([out[2 * i]!, out[2 * i + 1]!]);
  return pairs;
}

async function reapAll(ring: Uring, count: number): Promise<Map<number, number>> {
  const results = new Map<number, number>();
  while (results.size < count) for (const [ud, res] of await reapSome(ring)) results.set(ud, res);
  return results;
}

function patternFile(name: string, bytes: number): { path: string; data: Buffer } {
  const data = Buffer.alloc(bytes);
  for (let i = 0; i < bytes; i += 4) data.writeUInt32LE(i, i);
  const path = join(dir, name);
  writeFileSync(path, data);
  return { path, data };
}

test.serial('completions come out of order: a read stuck on a pipe does not hold back file reads', async (t) => {
  await noLeak(t, async () => {
    const { path, data } = patternFile('ooo.bin', 1 << 20);
    const file = openSync(path, 'r');
    const [pr, pw] = n.pipe2();
    const mem = guestMemory(1 << 20);
    const ring = n.uringCreate(64);
    try {
      // userData 1000: a pipe read that cannot complete until something is written to the pipe.
      t.true(ring.readv(pr, 0, 1000, [mem.window, 0, 16]));
      // 48 file reads at scattered offsets into separate pieces of guest memory, two segments each.
      for (let i = 0; i < 48; i++) {
        const fileOff = ((i * 37) % 64) * 16384;
        const memOff = 4096 + i * 16384;
        t.true(ring.readv(file, fileOff, i, [mem.window, memOff, 8192, new Uint8Array(mem.window, memOff + 8192, 8192), 0, 8192]));
      }
      t.is(ring.inflight, 49);
      t.is(ring.submit(), 49);
      const first = await reapAll(ring, 48);
      t.false(first.has(1000), 'the pending pipe read did not complete');
      for (let i = 0; i < 48; i++) {
        t.is(first.get(i), 16384, `read ${i} moved all its bytes`);
        const fileOff = ((i * 37) % 64) * 16384;
        t.true(Buffer.from(mem.window, 4096 + i * 16384, 16384).equals(data.subarray(fileOff, fileOff + 16384)), `read ${i} landed where its iovecs point`);
      }
      t.is(ring.inflight, 1);
      n.write(pw, Buffer.from('wake up'));
      const last = await reapAll(ring, 1);
      t.is(last.get(1000), 7);
      t.is(Buffer.from(mem.window, 0, 7).toString(), 'wake up');
      t.is(ring.inflight, 0);
    } finally {
      t.is(ring.close(), 0);
      mem.close();
      n.close(pr);
      n.close(pw);
      closeSync(file);
    }
  });
});

test.serial('reap() hands queued operations to the kernel in the same call that collects completions', async (t) => {
  await noLeak(t, async () => {
    const { path, data } = patternFile('reap-submits.bin', 65536);
    const file = openSync(path, 'r');
    const mem = guestMemory(65536);
    const ring = n.uringCreate(8);
    try {
      t.true(ring.readv(file, 4096, 7, [mem.window, 0, 8192]));
      t.true(ring.readv(file, 32768, 8, [mem.window, 8192, 4096]));
      const out = new Float64Array(2 * ring.capacity);
      const got = new Map<number, number>();
      // Nothing reaped yet, or some (a page-cache read can complete inside the submit): both fine.
      for (let i = 0, k = ring.reap(out); i < k; i++) got.set(out[2 * i]!, out[2 * i + 1]!);
      t.is(ring.submit(), 0, 'reap() already submitted both');
      while (ring.inflight > 0) for (const [ud, res] of await reapSome(ring)) got.set(ud, res);
      t.deepEqual([...got].sort((x, y) => x[0] - y[0]), [[7, 8192], [8, 4096]]);
      t.true(Buffer.from(mem.window, 0, 8192).equals(data.subarray(4096, 12288)));
      t.true(Buffer.from(mem.window, 8192, 4096).equals(data.subarray(32768, 36864)));
    } finally {
      ring.close();
      mem.close();
      closeSync(file);
    }
  });
});

test.serial('O_DIRECT write then read through aligned guest memory on the real disk; misaligned gives -EINVAL', async (t) => {
  await noLeak(t, async () => {
    const path = join(dir, 'direct.bin');
    writeFileSync(path, Buffer.alloc(1 << 20));
    const fd = openSync(path, constants.O_RDWR | constants.O_DIRECT);
    const mem = guestMemory(1 << 20);
    const ring = n.uringCreate(16);
    try {
      const info = n.backingInfo(fd);
      t.deepEqual({ size: info.size, blockDevice: info.blockDevice }, { size: 1 << 20, blockDevice: false });
      t.true(info.directAlign >= 512 && info.directAlign <= 4096, `directAlign ${info.directAlign}`);
      const src = new Uint8Array(mem.window, 0, 65536);
      for (let i = 0; i < src.length; i++) src[i] = (i * 7 + 3) & 0xff;
      t.true(ring.writev(fd, 131072, 1, [mem.window, 0, 65536]));
      ring.submit();
      t.deepEqual([...(await reapAll(ring, 1))], [[1, 65536]]);
      // Read it back into two other aligned pieces of memory.
      t.true(ring.readv(fd, 131072, 2, [mem.window, 262144, 32768, mem.window, 524288, 32768]));
      ring.submit();
      t.deepEqual([...(await reapAll(ring, 1))], [[2, 65536]]);
      t.true(Buffer.from(mem.window, 262144, 32768).equals(Buffer.from(src.subarray(0, 32768))));
      t.true(Buffer.from(mem.window, 524288, 32768).equals(Buffer.from(src.subarray(32768))));
      // The bytes reached the file (read back through the page cache, a different path).
      const check = Buffer.alloc(65536);
      const plain = openSync(path, 'r');
      readSync(plain, check, 0, 65536, 131072);
      closeSync(plain);
      t.true(check.equals(Buffer.from(src)));
      // A buffer one byte off alignment: the kernel refuses it, surfaced as -EINVAL, nothing thrown.
      t.true(ring.readv(fd, 0, 3, [mem.window, 1, 4096]));
      ring.submit();
      t.deepEqual([...(await reapAll(ring, 1))], [[3, -EINVAL]]);
    } finally {
      ring.close();
      mem.close();
      closeSync(fd);
    }
  });
});

test.serial('fallocate PUNCH_HOLE|KEEP_SIZE and ZERO_RANGE zero the range and keep the size', async (t) => {
  await noLeak(t, async () => {
    const { path, data } = patternFile('falloc.bin', 1 << 20);
    const fd = openSync(path, 'r+');
    const ring = n.uringCreate(8);
    const { KEEP_SIZE, PUNCH_HOLE, ZERO_RANGE } = n.FALLOC_FL;
    try {
      const blocksBefore = fstatSync(fd).blocks;
      t.true(ring.fallocate(fd, PUNCH_HOLE | KEEP_SIZE, 65536, 262144, 1));
      t.true(ring.fallocate(fd, ZERO_RANGE, 524288, 8192, 2));
      // ZERO_RANGE|KEEP_SIZE past the end must not grow the file.
      t.true(ring.fallocate(fd, ZERO_RANGE | KEEP_SIZE, (1 << 20) - 4096, 65536, 3));
      ring.submit();
      t.deepEqual([...(await reapAll(ring, 3))].sort(), [[1, 0], [2, 0], [3, 0]]);
      const after = readFileSync(path);
      t.is(after.length, 1 << 20, 'size unchanged');
      const expect = Buffer.from(data);
      expect.fill(0, 65536, 65536 + 262144);
      expect.fill(0, 524288, 524288 + 8192);
      expect.fill(0, (1 << 20) - 4096);
      t.true(after.equals(expect), 'exactly the three ranges read as zeros');
      t.true(fstatSync(fd).blocks < blocksBefore, 'the punched hole gave blocks back');
      t.throws(() => ring.fallocate(fd, 0x40, 0, 4096, 4), { instanceOf: RangeError, message: /mode 0x40/ });
      t.is(ring.inflight, 0);
    } finally {
      ring.close();
      closeSync(fd);
    }
  });
});

test.serial('errors and short transfers come back as results: -EIO, a short read at EOF, -EBADF', async (t) => {
  await noLeak(t, async () => {
    const { path, data } = patternFile('short.bin', 10000);
    const file = openSync(path, 'r');
    // /proc/self/mem at address 0 (never mapped): the kernel answers EIO.
    const mem = openSync('/proc/self/mem', 'r');
    const buf = new ArrayBuffer(16384);
    const ring = n.uringCreate(8);
    try {
      t.true(ring.readv(mem, 0, 1, [buf, 0, 4096]));
      t.true(ring.readv(file, 8192, 2, [buf, 4096, 8192]));
      t.true(ring.writev(file, 0, 3, [buf, 0, 512])); // fd opened read-only
      ring.submit();
      const r = await reapAll(ring, 3);
      t.is(r.get(1), -EIO);
      t.is(r.get(2), 10000 - 8192, 'a short read returns the bytes there were');
      t.true(Buffer.from(buf, 4096, 10000 - 8192).equals(data.subarray(8192)));
      t.is(r.get(3), -9);
    } finally {
      ring.close();
      closeSync(mem);
      closeSync(file);
    }
  });
});

test.serial('a loop device as the backing: BLKGETSIZE64 size, I/O, fsync, -ENOSPC past its end', async (t) => {
  const backing = join(dir, 'loop.img');
  writeFileSync(backing, Buffer.alloc(8 << 20));
  const loop = execFileSync('losetup', ['--find', '--show', backing], { encoding: 'utf8' }).trim();
  try {
    await noLeak(t, async () => {
      const fd = openSync(loop, 'r+');
      const ring = n.uringCreate(8);
      const buf = Buffer.alloc(8192, 0xa5);
      try {
        t.is(fstatSync(fd).size, 0, 'st_size says nothing for a block device');
        const info = n.backingInfo(fd);
        t.deepEqual(info, { size: 8 << 20, blockDevice: true, directAlign: 512 });
        t.true(ring.writev(fd, 1 << 20, 1, [buf, 0, 8192]));
        t.true(ring.fsync(fd, 2, false, true)); // drained: runs after the write
        t.true(ring.writev(fd, 8 << 20, 3, [buf, 0, 4096])); // at the device's end
        ring.submit();
        const r = await reapAll(ring, 3);
        t.deepEqual([r.get(1), r.get(2), r.get(3)], [8192, 0, -ENOSPC]);
        const onFile = readFileSync(backing);
        t.true(onFile.subarray(1 << 20, (1 << 20) + 8192).equals(buf), 'the write reached the loop device\'s file');
        t.is(onFile.subarray(0, 1 << 20).indexOf(0xa5), -1, 'and nothing else changed');
      } finally {
        ring.close();
        closeSync(fd);
      }
    });
  } finally {
    execFileSync('losetup', ['--detach', loop]);
  }
});

test.serial('at capacity queueing says false; close() cancels and waits out what is in flight', async (t) => {
  await noLeak(t, async () => {
    const [pr, pw] = n.pipe2();
    const mem = guestMemory(65536);
    const ring = n.uringCreate(4);
    try {
      t.true(ring.capacity >= ring.entries);
      for (let i = 0; i < ring.capacity; i++) t.true(ring.readv(pr, 0, i, [mem.window, i * 16, 16]), `op ${i}`);
      t.false(ring.readv(pr, 0, 99, [mem.window, 0, 16]), 'one more than capacity');
      ring.submit();
      t.is(ring.inflight, ring.capacity);
      t.is(ring.close(), ring.capacity, 'close dropped every pending read');
      t.is(ring.inflight, 0);
      t.throws(() => ring.submit(), { message: /ring was closed/ });
      t.is(ring.close(), 0, 'close is idempotent');
    } finally {
      mem.close();
      n.close(pr);
      n.close(pw);
    }
  });
});

test.serial('bad iovecs are refused before anything is queued', (t) => {
  const ring = n.uringCreate(4);
  const buf = new ArrayBuffer(4096);
  try {
    t.throws(() => ring.readv(0, 0, 1, [buf, 4000, 200]), { instanceOf: RangeError, message: /runs past its 4096-byte buffer/ });
    t.throws(() => ring.readv(0, 0, 1, [buf, 0]), { instanceOf: RangeError, message: /triples/ });
    t.throws(() => ring.readv(0, 0, 1, [buf, 0, 0]), { instanceOf: RangeError });
    t.throws(() => ring.readv(0, 0, 1, ['x', 0, 1] as never), { instanceOf: TypeError });
    t.throws(() => ring.writev(0, -1, 1, [buf, 0, 1]), { instanceOf: RangeError, message: /position/ });
    t.is(ring.inflight, 0);
    t.throws(() => n.uringCreate(0), { instanceOf: RangeError });
  } finally {
    ring.close();
  }
});

// In a separate process: a crash at worker teardown would take ava's worker down instead of
// failing one test. Each worker leaves a read pending on a pipe, into a window of a mapping,
// with the ring's eventfd watched, and then exits (or is terminated) without closing anything.
const addonPath = join(REPO_ROOT, 'host', 'native', 'build', 'Release', 'vhost_native.node');
const teardownScript = `
const { Worker } = require('node:worker_threads');
const { readdirSync, readlinkSync, readFileSync } = require('node:fs');
const body = (how) => \`
  const { parentPort } = require('node:worker_threads');
  const n = require(\${JSON.stringify(${JSON.stringify(addonPath)})});
  const fd = n.memfdCreate('vhost-uring-worker-map', false);
  n.ftruncate(fd, 65536);
  const m = n.mmap(fd, 65536, 0, true);
  const [pr, pw] = n.pipe2();
  const ring = n.uringCreate(8);
  n.watch(ring.eventFd, 'r', () => {});
  ring.readv(pr, 0, 1, [m.window(0, 65536), 0, 4096]);
  ring.submit();
  parentPort.postMessage(ring.inflight);
  parentPort.once('message', () => process.exit(0));
\`;
async function run(how) {
  const w = new Worker(body(how), { eval: true });
  const inflight = await new Promise((res) => w.once('message', res));
  const exited = new Promise((res) => w.once('exit', res));
  if (how === 'terminate') await w.terminate();
  else w.postMessage('exit now');
  return [inflight, await exited];
}
(async () => {
  const results = [await run('exit'), await run('terminate')];
  await new Promise((r) => setTimeout(r, 200));
  const rings = readdirSync('/proc/self/fd').filter((f) => { try { return readlinkSync('/proc/self/fd/' + f).includes('io_uring'); } catch { return false; } }).length;
  const maps = readFileSync('/proc/self/maps', 'utf8').split('\\n').filter((l) => l.includes('vhost-uring-worker-map')).length;
  console.log(JSON.stringify({ results, rings, maps }));
})();
`;

test.serial('workers that exit with I/O in flight into a mapping do not crash or leak rings and maps', async (t) => {
  const out = await new Promise<{ code: number | null; stdout: string; stderr: string }>((res) => {
    execFile(process.execPath, ['-e', teardownScript], { timeout: 30_000 }, (err, stdout, stderr) =>
      res({ code: err ? (err as { code?: number }).code ?? 1 : 0, stdout, stderr }));
  });
  t.is(out.code, 0, out.stderr);
  t.deepEqual(JSON.parse(out.stdout), { results: [[1, 0], [1, 1]], rings: 0, maps: 0 });
});

for (const defer of [true, false]) {
  test.serial(`${defer ? 'a DEFER_TASKRUN ring' : 'a plain ring (deferTaskrun false)'}: 512 reads in flight at once all complete through eventfd wake-ups and reaps until 0, as the executor drives it`, async (t) => {
    await noLeak(t, async () => {
      const count = 512;
      const { path, data } = patternFile(`burst-${defer}.bin`, count * 4096);
      const file = openSync(path, 'r');
      const ring = n.uringCreate(count, defer);
      const mem = guestMemory(count * 4096);
      try {
        if (!defer) t.false(ring.deferTaskrun);
        t.true(ring.capacity >= count);
        for (let i = 0; i < count; i++) t.true(ring.readv(file, i * 4096, i, [mem.window, i * 4096, 4096]));
        ring.submit();
        const results = new Map<number, number>();
        const out = new Float64Array(2 * ring.capacity);
        const drain = () => {
          for (let got; (got = ring.reap(out)) > 0; ) for (let i = 0; i < got; i++) results.set(out[2 * i]!, out[2 * i + 1]!);
        };
        drain();
        // Only the eventfd wakes this loop (no polling): a completion it never announces hangs here, and the guard says so.
        while (results.size < count) {
          const woke = await new Promise<boolean>((resolve) => {
            const guard = setTimeout(() => (w.close(), resolve(false)), 30_000);
            const w = n.watch(ring.eventFd, 'r', () => (clearTimeout(guard), w.close(), resolve(true)));
          });
          if (!woke) return t.fail(`${results.size} of ${count} completions reaped; the eventfd stayed quiet with ${ring.inflight} in flight`);
          n.eventfdRead(ring.eventFd);
          drain();
        }
        t.is(ring.inflight, 0);
        t.true([...results.values()].every((r) => r === 4096));
        t.deepEqual(Buffer.from(mem.window), data);
      } finally {
        ring.close();
        mem.close();
        closeSync(file);
      }
    });
  });
}

test.serial('a ring says whether the kernel took SINGLE_ISSUER/DEFER_TASKRUN: on Linux 6.1 and later it did', (t) => {
  const ring = n.uringCreate(4);
  try {
    const [major, minor] = release().split('.').map((x) => Number.parseInt(x, 10));
    t.is(typeof ring.deferTaskrun, 'boolean');
    if (major! > 6 || (major === 6 && minor! >= 1)) t.true(ring.deferTaskrun, `kernel ${release()}`);
  } finally {
    ring.close();
  }
});
