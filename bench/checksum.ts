// The pieces of a state transfer's CPU cost, per 256 MiB, in this process: CRC-32 (node:zlib,
// container format 1) against CRC-32C from the addon (ISA-L and the portable table), memcpy,
// the copy fused with CRC-32C, and making 256 MiB of fresh memfd pages by touching them versus
// one fallocate / MADV_POPULATE_WRITE. Run: node --import tsx bench/checksum.ts
import { crc32 } from 'node:zlib';
import { native } from '../host/native/index.ts';

const N = 256 << 20;
const a = Buffer.alloc(N, 1);
const b = Buffer.alloc(N, 2);
for (let i = 0; i < N; i += 4096) a[i] = i & 0xff;

function best(fn: () => void, reps = 5): number {
  let m = Infinity;
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    fn();
    m = Math.min(m, performance.now() - t0);
  }
  return m;
}
const rate = (ms: number) => `${ms.toFixed(1)} ms, ${(N / 2 ** 30 / (ms / 1000)).toFixed(1)} GiB/s`;

console.log(`256 MiB, best of 5; CRC-32C code: ${native.crc32cImpl}`);
console.log(`memcpy (resident buffers)        ${rate(best(() => a.copy(b)))}`);
console.log(`CRC-32, node:zlib (format 1)     ${rate(best(() => crc32(a)))}`);
console.log(`CRC-32C, addon (${native.crc32cImpl})          ${rate(best(() => native.crc32c(a)))}`);
console.log(`CRC-32C, addon (portable table)  ${rate(best(() => native.crc32c(a, 0, true), 2))}`);
console.log(`copy + CRC-32C in one pass       ${rate(best(() => native.copyCrc32c(b, a)))}`);
console.log(`copy, then CRC-32 (zlib)         ${rate(best(() => { a.copy(b); crc32(b); }))}`);

// Fresh tmpfs pages: faulted in one by one (writing a byte per page through a mapping), or made
// in one call.
function fresh(make: (fd: number, m: ReturnType<typeof native.mmap>) => void): number {
  let m = Infinity;
  for (let i = 0; i < 3; i++) {
    const fd = native.memfdCreate('bench-prefault', false);
    native.ftruncate(fd, N);
    const map = native.mmap(fd, N, 0, true);
    const t0 = performance.now();
    make(fd, map);
    m = Math.min(m, performance.now() - t0);
    map.unmap();
    native.close(fd);
  }
  return m;
}
console.log(`fresh memfd pages, touched       ${rate(fresh((_fd, map) => { const v = new Uint8Array(map.window(0, N)); for (let i = 0; i < N; i += 4096) v[i] = 1; }))}`);
console.log(`fresh memfd pages, fallocate     ${rate(fresh((fd) => native.fsFallocate(fd, 0, 0, N)))}`);
console.log(`fresh memfd pages, POPULATE_WRITE ${rate(fresh((_fd, map) => map.populate(0, N, true)))}`);
console.log(`fallocate, then POPULATE_WRITE   ${rate(fresh((fd, map) => { native.fsFallocate(fd, 0, 0, N); map.populate(0, N, true); }))}`);
console.log(`fallocate, then touched          ${rate(fresh((fd, map) => { native.fsFallocate(fd, 0, 0, N); const v = new Uint8Array(map.window(0, N)); for (let i = 0; i < N; i += 4096) v[i] = 1; }))}`);
console.log(`pwrite into fresh pages          ${rate(fresh((fd) => { for (let o = 0; o < N; o += 1 << 22) native.pwrite(fd, a.subarray(o, o + (1 << 22)), o); }))}`);
console.log(`fallocate, then pwrite           ${rate(fresh((fd) => { native.fsFallocate(fd, 0, 0, N); for (let o = 0; o < N; o += 1 << 22) native.pwrite(fd, a.subarray(o, o + (1 << 22)), o); }))}`);
console.log(`fallocate, then copy+CRC-32C in  ${rate(fresh((fd, map) => { native.fsFallocate(fd, 0, 0, N); map.populate(0, N, true); native.copyCrc32c(new Uint8Array(map.window(0, N)), a); }))}`);
console.log(`copy+CRC-32C into fresh pages    ${rate(fresh((_fd, map) => native.copyCrc32c(new Uint8Array(map.window(0, N)), a)))}`);
