// What one io_uring operation costs through the addon (host/native/src/uring.c), from JS, the
// way a device worker would drive it: `--depth` 4 KiB reads in flight from a file into a memfd
// mapping (guest memory), completions awaited on the ring's eventfd through native.watch, each
// completion immediately replaced. Compared with the same reads done by synchronous pread (what
// the host does today) in the same process.
//
//   npx tsx bench/uring.ts [--file /dev/shm/x | /var/tmp/x] [--direct] [--depth 64] [--seconds 3]
import { closeSync, constants, openSync, rmSync, writeSync, fsyncSync } from 'node:fs';
import { loadavg } from 'node:os';
import { parseArgs } from 'node:util';
import { native as n } from '../host/native/index.ts';
import { UringExecutor } from '../host/io/uring-executor.ts';

const { values: argv } = parseArgs({
  options: {
    file: { type: 'string', default: `/dev/shm/bench-uring-${process.pid}.img` },
    direct: { type: 'boolean', default: false },
    depth: { type: 'string', default: '64' },
    seconds: { type: 'string', default: '3' },
  },
});
const BS = 4096;
const FILE_BYTES = 256 * 2 ** 20;
const DEPTH = Number(argv.depth);
const SECONDS = Number(argv.seconds);

function fill(path: string): void {
  const fd = openSync(path, 'w');
  const chunk = Buffer.alloc(8 << 20, 0x5a);
  for (let off = 0; off < FILE_BYTES; off += chunk.length) writeSync(fd, chunk, 0, chunk.length, off);
  fsyncSync(fd);
  closeSync(fd);
}

function cpuUs(): number {
  const u = process.cpuUsage();
  return u.user + u.system;
}

let seed = 0x9e3779b9;
const nextOffset = (): number => {
  seed ^= seed << 13;
  seed ^= seed >>> 17;
  seed ^= seed << 5;
  return ((seed >>> 0) % (FILE_BYTES / BS)) * BS;
};

async function viaUring(fd: number, window: ArrayBuffer): Promise<{ ops: number; cpu: number }> {
  const ring = n.uringCreate(Math.max(DEPTH, 8));
  const out = new Float64Array(2 * ring.capacity);
  const iovs = Array.from({ length: DEPTH }, (_, i) => [window, i * BS, BS]);
  let ops = 0;
  let failed = 0;
  const end = performance.now() + SECONDS * 1000;
  const c0 = cpuUs();
  for (let i = 0; i < DEPTH; i++) ring.readv(fd, nextOffset(), i, iovs[i]);
  ring.submit();
  await new Promise<void>((resolve) => {
    const w = n.watch(ring.eventFd, 'r', () => {
      n.eventfdRead(ring.eventFd);
      let got;
      const stopping = performance.now() >= end;
      while ((got = ring.reap(out)) > 0) {
        for (let k = 0; k < got; k++) {
          const slot = out[2 * k];
          if (out[2 * k + 1] !== BS) failed++;
          ops++;
          if (!stopping) ring.readv(fd, nextOffset(), slot, iovs[slot]);
        }
      }
      if (!stopping) ring.submit();
      else if (ring.inflight === 0) {
        w.close();
        resolve();
      }
    });
  });
  const cpu = cpuUs() - c0;
  ring.close();
  if (failed) throw new Error(`${failed} reads did not return ${BS} bytes`);
  return { ops, cpu };
}

/** The same reads through host/io/uring-executor.ts (what a device worker runs): its bookkeeping on top of the ring. */
async function viaExecutor(fd: number, window: ArrayBuffer): Promise<{ ops: number; cpu: number }> {
  const ex = new UringExecutor({ target: () => ({ fd, directAlign: argv.direct ? 4096 : 0 }), entries: Math.max(DEPTH, 8) });
  const views = Array.from({ length: DEPTH }, (_, i) => [new Uint8Array(window, i * BS, BS)]);
  let ops = 0;
  let failed = 0;
  let live = 0;
  const end = performance.now() + SECONDS * 1000;
  const c0 = cpuUs();
  await new Promise<void>((resolve) => {
    const issue = (slot: number): void => {
      live++;
      ex.submit([{ kind: 'read', backing: 0, offset: nextOffset(), into: views[slot]! }], false, (r) => {
        live--;
        ops++;
        if (r.errno !== 0 || r.lastReadBytes !== BS) failed++;
        if (performance.now() < end) issue(slot);
        else if (live === 0) resolve();
      });
    };
    for (let i = 0; i < DEPTH; i++) issue(i);
  });
  const cpu = cpuUs() - c0;
  ex.close();
  if (failed) throw new Error(`${failed} executor reads did not return ${BS} bytes`);
  return { ops, cpu };
}

function viaPread(fd: number, window: ArrayBuffer): { ops: number; cpu: number } {
  const buf = new Uint8Array(window, 0, BS);
  let ops = 0;
  const end = performance.now() + SECONDS * 1000;
  const c0 = cpuUs();
  while (performance.now() < end) {
    for (let i = 0; i < 64; i++) n.pread(fd, buf, nextOffset());
    ops += 64;
  }
  return { ops, cpu: cpuUs() - c0 };
}

const ownFile = !argv.file!.startsWith('/dev/') || argv.file!.startsWith('/dev/shm/');
if (ownFile) fill(argv.file!);
const fd = openSync(argv.file!, constants.O_RDONLY | (argv.direct ? constants.O_DIRECT : 0));
const memfd = n.memfdCreate('bench-uring', false);
n.ftruncate(memfd, DEPTH * BS);
const map = n.mmap(memfd, DEPTH * BS, 0, true);
const window = map.window(0, DEPTH * BS);
try {
  const u = await viaUring(fd, window);
  const e = await viaExecutor(fd, window);
  const p = viaPread(fd, window);
  const line = (name: string, r: { ops: number; cpu: number }) =>
    `${name.padEnd(28)} ${Math.round(r.ops / SECONDS).toString().padStart(9)} ops/s  ${(r.cpu / r.ops).toFixed(2)} us CPU/op (this process)`;
  console.log(`bench/uring: 4 KiB random reads of ${argv.file}${argv.direct ? ' (O_DIRECT)' : ''}, ${SECONDS} s each; load average ${loadavg()[0].toFixed(1)}`);
  console.log(line(`io_uring, depth ${DEPTH}`, u));
  console.log(line(`UringExecutor, depth ${DEPTH}`, e));
  console.log(line('synchronous pread, depth 1', p));
} finally {
  map.unmap();
  n.close(memfd);
  closeSync(fd);
  if (ownFile) rmSync(argv.file!, { force: true });
}
