// The host core alone, in one thread: a DeviceRunner (host/device/runner.ts) with the null test
// device (bench/null-blk-device.ts, zero mode) on a split ring in a memfd, driven the way
// dist/vhost-blk-load drives a socket's host in event mode (4 KiB reads, DEPTH requests in flight
// of a 256-entry ring, EVENT_IDX, a call at the first completion asked for) but synchronously:
// each round publishes the DEPTH requests, kicks in-band (ringInbandKick: the drain runs inside
// the call), and reaps the used ring. No worker thread, socket, kick eventfd or event loop
// between rounds: what is left is the ring path (pop, batch, answer checks, used ring, the
// notification decision and the call eventfd's write), the meter, and their garbage, each
// round exactly alike, so instruction counts repeat to a few per request.
//
//   node build.mjs    (the addon)
//   npx tsx bench/host-core.ts [ROUNDS (default 20000)]          # CPU ns per request (noisy on a shared machine)
//   sh bench/callgrind-core.sh [TREE]                              # instructions per request (repeatable)
//
// CALLGRIND_FIFO=PATH (set by bench/callgrind-core.sh): after the warm-up, print "warm" and wait
// for a line on PATH; run ROUNDS measured rounds, print "done REQUESTS", wait for another line.
import { openSync, readSync, closeSync } from 'node:fs';
import { native } from '../host/native/index.ts';
import { DeviceRunner, type RunnerHooks } from '../host/device/runner.ts';
import { RequestMeter, REQUEST_METER_BYTES } from '../host/metrics/request-meter.ts';
import { VirtioFeature, bit } from '../host/device/features.ts';
import { WatchdogPhase, watchdogWord } from '../host/device/rpc.ts';
import { ownThreadId } from '../host/device/thread-state.ts';
import factory from './null-blk-device.ts';

const DEPTH = Number(process.env.DEPTH ?? 64);
const RING = 256;
const ROUNDS = Number(process.argv[2] ?? 20000);
const WARM = Number(process.env.WARM ?? 20000);
const BS = 4096;
// Layout (guest-physical = offset in the memfd), as the C front-end's: descriptors, avail, used,
// then per slot 32 bytes of metadata (a 16-byte header, the status byte after it), then the
// slots' 4 KiB data buffers.
const DESC = 0, AVAIL = 0x1000, USED = 0x2000, META = 0x3000, DATA = META + ((DEPTH * 32 + 4095) & ~4095);
const MEM = DATA + DEPTH * BS;
const UVA = 0x7f00_0000_0000;

const memfd = native.memfdCreate('host-core bench', false);
native.ftruncate(memfd, MEM);
const mapping = native.mmap(memfd, MEM, 0, true);
const mem = new Uint8Array(mapping.window(0, MEM));
const dv = new DataView(mem.buffer, mem.byteOffset, MEM);
for (let s = 0; s < DEPTH; s++) {
  const d = (i: number, addr: number, len: number, flags: number, next: number) => {
    const o = DESC + 16 * i;
    dv.setUint32(o, addr, true);
    dv.setUint32(o + 4, 0, true);
    dv.setUint32(o + 8, len, true);
    dv.setUint16(o + 12, flags, true);
    dv.setUint16(o + 14, next, true);
  };
  d(3 * s, META + 32 * s, 16, 1, 3 * s + 1); // header: NEXT
  d(3 * s + 1, DATA + BS * s, BS, 3, 3 * s + 2); // data: NEXT | WRITE
  d(3 * s + 2, META + 32 * s + 16, 1, 2, 0); // status: WRITE
  dv.setUint32(META + 32 * s, 0, true); // VIRTIO_BLK_T_IN
}
const avail = new Uint16Array(mem.buffer, mem.byteOffset + AVAIL, 3 + RING);
const used = new Uint16Array(mem.buffer, mem.byteOffset + USED, 2);
const usedRing = new Uint32Array(mem.buffer, mem.byteOffset + USED + 4, 2 * RING);

const watchdog = new Int32Array(new SharedArrayBuffer(16));
const tid = ownThreadId();
const meter = new RequestMeter(new SharedArrayBuffer(REQUEST_METER_BYTES), () => native.threadCpuNs(tid));
const epoch = Date.now();
const hooks: RunnerHooks = {
  ringBroken: (index, reason) => {
    throw new Error(`ring ${index} broke: ${reason}`);
  },
  deviceFailed: (reason) => {
    throw new Error(`device failed: ${reason}`);
  },
  inbandCall: () => {},
  memoryFault: (reason) => {
    throw new Error(reason);
  },
  // As the worker's (host/device/worker.ts): a watchdog word per call, the meter's brackets.
  enterDevice: (phase = WatchdogPhase.call) => {
    Atomics.store(watchdog, 0, watchdogWord(phase, Date.now() - epoch));
    if (phase === WatchdogPhase.call) meter.callStart();
    else if (phase === WatchdogPhase.notify) meter.flush();
  },
  leaveDevice: () => {
    Atomics.store(watchdog, 0, 0);
    if (meter.inCall) meter.callEnd(0);
  },
  meter,
};
const device = await factory({});
const runner = new DeviceRunner(device, hooks, 'host-core bench');
const features = bit(VirtioFeature.VERSION_1) | bit(VirtioFeature.RING_EVENT_IDX) | bit(VirtioFeature.RING_INDIRECT_DESC);
runner.setFeatures(features, true);
runner.setMemTable([{ guestPhysAddr: 0, size: MEM, userspaceAddr: UVA, mmapOffset: 0, fd: memfd }]);
const call = native.eventfd(0);
native.setNonBlocking(call, true);
runner.ringNum(0, RING);
runner.ringBase(0, 0);
runner.ringAddr(0, { descUserAddr: UVA + DESC, availUserAddr: UVA + AVAIL, usedUserAddr: UVA + USED, log: false, logGuestAddr: 0 });
runner.ringCall(0, call);
runner.ringKick(0, null);
runner.ringEnable(0, true);

let availIdx = 0;
let lastUsed = 0;
let calls = 0;
function round(): void {
  for (let s = 0; s < DEPTH; s++) {
    avail[2 + (availIdx & (RING - 1))] = 3 * s;
    availIdx = (availIdx + 1) & 0xffff;
    mem[META + 32 * s + 16] = 0xff;
  }
  avail[2 + RING] = lastUsed; // used_event: a call at the first completion (event mode)
  Atomics.store(avail, 1, availIdx);
  runner.ringInbandKick(0);
  const now = Atomics.load(used, 1);
  if (((now - lastUsed) & 0xffff) !== DEPTH) throw new Error(`round: ${(now - lastUsed) & 0xffff} of ${DEPTH} requests completed`);
  for (; lastUsed !== now; lastUsed = (lastUsed + 1) & 0xffff) {
    const id = usedRing[2 * (lastUsed & (RING - 1))];
    if (mem[META + (32 * id) / 3 + 16] !== 0) throw new Error(`request at head ${id}: status ${mem[META + (32 * id) / 3 + 16]}`);
  }
  // The call eventfd's counter is read now and then, as a front-end would (it never fills).
  if ((++calls & 1023) === 0) native.eventfdRead(call);
}

const fifo = process.env.CALLGRIND_FIFO;
function waitLine(): void {
  const fd = openSync(fifo!, 'r');
  readSync(fd, Buffer.alloc(16));
  closeSync(fd);
}
for (let i = 0; i < WARM; i++) round();
if (fifo) {
  console.log('warm');
  waitLine();
}
const cpu0 = process.cpuUsage();
const t0 = process.hrtime.bigint();
for (let i = 0; i < ROUNDS; i++) round();
const wall = Number(process.hrtime.bigint() - t0);
const cpu = process.cpuUsage(cpu0);
const reqs = ROUNDS * DEPTH;
if (fifo) {
  console.log(`done ${reqs}`);
  waitLine();
}
console.log(JSON.stringify({ depth: DEPTH, requests: reqs, cpuNsPerReq: Math.round(((cpu.user + cpu.system) * 1000) / reqs), wallNsPerReq: Math.round(wall / reqs) }));
runner.close();
mapping.unmap();
