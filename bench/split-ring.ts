// The device side of a split ring alone, in one process, no worker and no socket: blk-shaped
// chains (a 16-byte readable header, a 4 KiB writable data buffer, a 1-byte writable status;
// three descriptors), BATCH of them published per round, popped (SplitQueue.popBatch, or pop()
// per chain with MODE=pop or where popBatch does not exist), then pushed with pushUsed and one
// needsNotification. Prints wall ns per request for the pop and the push side and the process's
// CPU ns per request (the steadier figure on a loaded machine; it includes GC).
//
//   npx tsx bench/split-ring.ts                      # this tree
//   ROOT=/tmp/base npx tsx bench/split-ring.ts       # another tree's host/ (a before/after pair)
//   BATCH=1 ROUNDS=200000 npx tsx bench/split-ring.ts
import { fileURLToPath } from 'node:url';

const root = process.env.ROOT ?? fileURLToPath(new URL('..', import.meta.url));
const { GuestMemory, arrayBufferBacking } = await import(root + '/host/memory/guest-memory.ts');
const { SplitQueue } = await import(root + '/host/virtqueue/split.ts');
const SIZE = 256, BATCH = Math.min(64, Number(process.env.BATCH ?? 64)), MEM = 1 << 20; // 64 chains are laid out
const DESC = 0x1000, AVAIL = 0x3000, USED = 0x4000, DATA = 0x40000, HDRS = 0x8000;
const buf = new ArrayBuffer(MEM);
const mem = new GuestMemory([{ guestPhysAddr: 0, size: MEM, userspaceAddr: 0x7f0000000000, mmapOffset: 0, backing: arrayBufferBacking(buf) }]);
const dv = new DataView(buf);
for (let k = 0; k < 64; k++) {
  const d = (i: number, addr: number, len: number, flags: number, next: number) => {
    const o = DESC + 16 * i;
    dv.setUint32(o, addr, true); dv.setUint32(o + 4, 0, true); dv.setUint32(o + 8, len, true);
    dv.setUint16(o + 12, flags, true); dv.setUint16(o + 14, next, true);
  };
  d(3 * k, HDRS + 16 * k, 16, 1, 3 * k + 1);
  d(3 * k + 1, DATA + 4096 * k, 4096, 3, 3 * k + 2);
  d(3 * k + 2, HDRS + 0x1000 + k, 1, 2, 0);
}
const avail = new Uint16Array(buf, AVAIL, 3 + SIZE);
for (let s = 0; s < SIZE; s++) avail[2 + s] = 3 * (s % 64);
const q = new SplitQueue({ index: 0, memory: mem, size: SIZE, descGpa: DESC, availGpa: AVAIL, usedGpa: USED, eventIdx: true, indirectDesc: true });
const mode = process.env.MODE ?? (typeof q.popBatch === 'function' ? 'batch' : 'pop');
const chains: any[] = [];
let popNs = 0n, pushNs = 0n, reqs = 0;
function round(measure: boolean) {
  Atomics.store(avail, 1, (avail[1] + BATCH) & 0xffff);
  const t0 = process.hrtime.bigint();
  chains.length = 0;
  if (mode === 'batch') q.popBatch(BATCH, chains);
  else for (let c; chains.length < BATCH && (c = q.pop()) !== null; ) chains.push(c);
  const t1 = process.hrtime.bigint();
  for (let i = 0; i < chains.length; i++) q.pushUsed(chains[i].head, 4097);
  q.needsNotification();
  const t2 = process.hrtime.bigint();
  if (chains.length !== BATCH) throw new Error('short batch ' + chains.length);
  if (measure) { popNs += t1 - t0; pushNs += t2 - t1; reqs += BATCH; }
}
for (let i = 0; i < 20000; i++) round(false);
const rounds = Number(process.env.ROUNDS ?? 100000);
const cpu0 = process.cpuUsage();
for (let i = 0; i < rounds; i++) round(true);
const cpu = process.cpuUsage(cpu0);
console.log(JSON.stringify({ root, mode, batch: BATCH, popNsPerReq: Number(popNs) / reqs, pushNsPerReq: Number(pushNs) / reqs, cpuNsPerReq: ((cpu.user + cpu.system) * 1000) / reqs }));
