// The destination's side of a 256 MiB memory disk LOAD from a pipe, piece by piece, against a
// memcpy and a plain pipe reader of the same bytes: CPU ms of this process (user+sys, less at the
// mercy of other load on a shared machine than wall time) and wall ms. Shows what page making
// costs a LOAD and what --storage memory:SIZE,prealloc=on takes out of it (docs/BENCHMARKS.md).
// Run: node --import tsx bench/load-pieces.ts
import { native } from '../host/native/index.ts';
import { createMemoryDisk } from '../host/storage/memory-disk.ts';
import { preallocateMemoryDisk } from '../host/storage/prealloc.ts';
import { crc32c } from '../host/migration/checksum.ts';
import { readToEnd } from '../host/frontend/migrate.ts';
import { spawn } from 'node:child_process';
import { loadavg } from 'node:os';
const size = 256 << 20, W = native.MAX_WINDOW, WIN = 8 << 20;
const cpu = () => { const u = process.cpuUsage(); return (u.user + u.system) / 1000; };
const waitR = (fd: number) => new Promise<void>((res) => { const w = native.watch(fd, 'r', () => { w.close(); res(); }); });
function writer(): { r: number; done: Promise<unknown> } {
  const [r, w] = native.pipe2(); native.setPipeSize?.(w, 1 << 20); native.setNonBlocking(w, false);
  const child = spawn(process.execPath, ['-e', `const fs=require('fs');const b=Buffer.alloc(1<<20,1);let n=${size};while(n>0){n-=fs.writeSync(3,b,0,Math.min(b.length,n));}`], { stdio: ['ignore', 'ignore', 'inherit', w] });
  native.close(w);
  return { r, done: new Promise((res) => child.on('exit', res)) };
}
async function measure(name: string, body: () => Promise<void> | void) {
  const c0 = cpu(), t0 = performance.now();
  await body();
  console.log(`${name.padEnd(58)} cpu ${(cpu() - c0).toFixed(0).padStart(5)} ms  wall ${(performance.now() - t0).toFixed(0).padStart(5)} ms  load ${loadavg()[0].toFixed(1)}`);
}
for (let rep = 0; rep < 3; rep++) {
  const a = Buffer.alloc(size, 1), b = Buffer.alloc(size, 2);
  await measure('memcpy 256 MiB, resident buffers', () => { a.copy(b); });
  { const p = writer(); await measure('plain pipe reader: read() 256 MiB in 1 MiB chunks', async () => { await readToEnd(p.r, () => {}); }); native.close(p.r); await p.done; }
  for (const pre of [false, true]) {
    const fd = createMemoryDisk(size);
    let m = native.mmap(fd, size, 0, true);
    if (pre) await measure('prealloc at start: fallocate + MADV_POPULATE_WRITE', async () => { m.unmap(); m = await preallocateMemoryDisk(fd, size).done; });
    const p = writer();
    await measure(`LOAD: splice pipe -> ${pre ? 'made pages  ' : 'fresh pages '} + CRC-32C per 8 MiB window`, async () => {
      let crc = 0;
      for (let at = 0; at < size; at += WIN) {
        for (let done = 0; done < WIN; ) { const s = native.splice(p.r, -1, fd, at + done, WIN - done); if (s === 0) throw new Error('eof'); if (s < 0) await waitR(p.r); else done += s; }
        m.populate(at, WIN, false);
        for (let x = 0; x < WIN; x += W) crc = crc32c(new Uint8Array(m.window(at + x, Math.min(W, WIN - x))), crc);
      }
    });
    native.close(p.r); await p.done; m.unmap(); native.close(fd);
  }
}
