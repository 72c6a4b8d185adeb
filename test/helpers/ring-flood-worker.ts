// The thread of helpers/ring-flood.ts: maps the front-end's guest RAM itself and keeps one split
// ring full, putting a request back on the avail ring for every one the device returns, as fast
// as it can, and kicking only when the device asks (it runs on another CPU than the test's
// event loop, so it can refill the ring while the device's worker is still draining it).
import { workerData } from 'node:worker_threads';
import { native } from '../../host/native/index.ts';
import { SplitDriverRing } from '../../host/frontend/rings/split.ts';
import { PackedDriverRing } from '../../host/frontend/rings/packed.ts';
import { CTL_SERVED, CTL_STOP, type FloodInit } from './ring-flood.ts';

const w = workerData as FloodInit;
const ctl = new Int32Array(w.ctl);
const mapping = native.mmap(w.fd, w.regionSize, w.mmapOffset, true);
const ram = new Uint8Array(mapping.window(0, w.regionSize));
const ringOpts = { size: w.size, memory: ram.subarray(w.ringGpa - w.regionGpa), gpa: w.ringGpa, eventIdx: w.eventIdx, indirectEntries: 0 };
const ring = w.packed ? new PackedDriverRing(ringOpts) : new SplitDriverRing(ringOpts);
let slot = 0;
const add = () => {
  ring.add([], [{ gpa: w.bufGpa + 16 * slot, len: 12 }]);
  slot = (slot + 1) % w.size;
};
for (let i = 0; i < w.size; i++) add();
if (ring.kickNeeded()) native.eventfdWrite(w.kickFd, 1);
const end = Date.now() + w.maxMs;
let spins = 0;
while (Atomics.load(ctl, CTL_STOP) === 0) {
  const used = ring.getUsed();
  if (used.length > 0) {
    for (let i = 0; i < used.length; i++) add();
    Atomics.add(ctl, CTL_SERVED, used.length);
    if (ring.kickNeeded()) native.eventfdWrite(w.kickFd, 1);
  }
  if ((++spins & 0xfff) === 0 && Date.now() > end) break;
}
mapping.unmap();
