// Warming a new device instance up before a live plugin upgrade stops the old one's rings
// (host/session/upgrade.ts). A worker that has never run a ring starts its first one with cold
// code: every function on the way (the queue, the batch path, the answer checks, the plugin's
// glue, the notification) is compiled on its first call, and in the profile of an upgrade that
// was most of the time the rings stood still (10-25 ms of 'restart on the new instance' on this
// machine). Here that first run happens earlier, while the old instance still serves: the new
// worker's runner is driven like a short front-end session on a scratch ring in scratch memory
// (its own memfd and eventfds, nothing of the guest's), with requests that only read, then its
// state is saved and loaded back once (the calls the stop makes) and the device is reset, so
// the session's real settings and the old instance's state go into a device as just created.
//
// The requests are per virtio device type and read nothing but what a guest could read anyway
// (rng: entropy; blk: sector 0 and the id; fs: INIT, GETATTR and STATFS of the root, a LOOKUP of
// a name no guest uses). Other device types (a net device's tx would send a frame) get no
// requests: their rings only start and stop. Metrics and the I/O throttle do not see any of it.

import { closeNoted, nextCell, type FdCells } from './fd-ledger.ts';
import { native } from '../native/index.ts';
import type { Mapping } from '../native/api.ts';
import { SplitDriverRing } from '../frontend/rings/split.ts';
import { PackedDriverRing } from '../frontend/rings/packed.ts';
import type { DriverBuffer } from '../frontend/rings/common.ts';
import { PACKED_INITIAL_VRING_BASE } from '../virtqueue/queue.ts';
import { VirtioFeature, bit, hasFeature } from './features.ts';
import type { DeviceRunner } from './runner.ts';
import type { DeviceInfo } from './device.ts';

/** What a warm-up did (for the upgrade's debug log). */
export interface WarmUpResult {
  /** Rings started and stopped. */
  rings: number[];
  requests: number;
  completed: number;
  /** The plugin's answer to its own state loaded back (null: taken). */
  stateRefusal: string | null;
  ms: number;
}

/** One request: buffers the device reads, then the sizes of those it writes. */
interface WarmRequest {
  readable: Uint8Array[];
  writable: number[];
}

const VIRTIO_ID_BLK = 2;
const VIRTIO_ID_RNG = 4;
const VIRTIO_ID_FS = 26;

/** Longest the warm-up waits for its requests' answers; a device holding one is not waited for. */
const WAIT_MS = 1000;
const MAX_RINGS = 4;
const RING_SIZE = 16;
const RING_BYTES = 16 * 1024;
const BUF_BYTES = 8 * 1024;
const SCRATCH_BYTES = MAX_RINGS * RING_BYTES + MAX_RINGS * RING_SIZE * 2 * BUF_BYTES;
/** Where the scratch memory pretends to be mapped in the front-end (any value works: it is only translated). */
const SCRATCH_UVA = 0x10_0000_0000;

function blkHeader(type: number): Uint8Array {
  const h = new Uint8Array(16);
  new DataView(h.buffer).setUint32(0, type, true); // sector 0
  return h;
}

function fuse(opcode: number, unique: number, nodeid: number, args: Uint8Array): Uint8Array {
  const b = new Uint8Array(40 + args.length);
  const v = new DataView(b.buffer);
  v.setUint32(0, b.length, true);
  v.setUint32(4, opcode, true);
  v.setBigUint64(8, BigInt(unique), true);
  v.setBigUint64(16, BigInt(nodeid), true);
  b.set(args, 40);
  return b;
}

const u32s = (...xs: number[]) => new Uint8Array(new Uint32Array(xs).buffer);

/** The read-only requests for ring `ring` of a device of virtio type `deviceId` (see the top). */
export function warmRequests(deviceId: number, ring: number): WarmRequest[] {
  switch (deviceId) {
    case VIRTIO_ID_RNG:
      return Array.from({ length: 4 }, () => ({ readable: [], writable: [64] }));
    case VIRTIO_ID_BLK: {
      const read = { readable: [blkHeader(0)], writable: [512, 1] };
      const id = { readable: [blkHeader(8)], writable: [20, 1] };
      return [read, id, read, id];
    }
    case VIRTIO_ID_FS: {
      // Queue 0 is the high-priority queue (FORGET, INTERRUPT): nothing read-only to send there.
      if (ring === 0) return [];
      const out = [4096];
      return [
        { readable: [fuse(26, 1, 0, u32s(7, 31, 65536, 0))], writable: out }, // INIT
        { readable: [fuse(3, 2, 1, new Uint8Array(16))], writable: out }, // GETATTR of the root
        { readable: [fuse(1, 3, 1, new TextEncoder().encode('.vhost-wasm-warm-up\0'))], writable: out }, // LOOKUP
        { readable: [fuse(17, 4, 1, new Uint8Array(0))], writable: out }, // STATFS
      ];
    }
    default:
      return [];
  }
}

interface DriverRing {
  add(readable: DriverBuffer[], writable: DriverBuffer[]): number | null;
  getUsed(): { head: number; len: number }[];
}

/**
 * Runs the warm-up on `runner` (a device just created, never given a front-end's settings) and
 * leaves it reset, with no memory table, as it found it. Throws when the device failed or a ring
 * broke on the way: a build that cannot serve a read is not one to upgrade to.
 */
export async function warmUp(runner: DeviceRunner, info: DeviceInfo, features: bigint, protocolFeatures: boolean, rings: number[], ledger: FdCells): Promise<WarmUpResult> {
  const t0 = performance.now();
  const which = [...new Set(rings)].filter((i) => Number.isInteger(i) && i >= 0 && i < info.numQueues).slice(0, MAX_RINGS);
  const result: WarmUpResult = { rings: which, requests: 0, completed: 0, stateRefusal: null, ms: 0 };
  if (which.length === 0) return result;
  // No dirty logging here: the scratch memory is not the guest's.
  const acked = features & ~bit(VirtioFeature.LOG_ALL);
  const packed = hasFeature(acked, VirtioFeature.RING_PACKED);
  const eventIdx = hasFeature(acked, VirtioFeature.RING_EVENT_IDX);
  const size = Math.min(RING_SIZE, info.maxQueueSize);
  // Every fd made here is written into the caller's ledger in the expression that makes it
  // (fd-ledger.ts): a worker the watchdog kills in the warm-up (a new build that loops on a
  // request) cannot close them, and the main thread does once the thread is gone.
  const fds: number[] = [];
  const made = (at: number): number => (fds.push(ledger[at]), ledger[at]);
  let mapping: Mapping | null = null;
  try {
    let at = nextCell(ledger, 'the warm-up');
    ledger[at] = native.memfdCreate('vhost-wasm warm-up', false);
    const memfd = made(at);
    native.ftruncate(memfd, SCRATCH_BYTES);
    mapping = native.mmap(memfd, SCRATCH_BYTES, 0, true);
    const mem = new Uint8Array(mapping.window(0, SCRATCH_BYTES));
    runner.setFeatures(acked, protocolFeatures);
    runner.setMemTable([{ guestPhysAddr: 0, size: SCRATCH_BYTES, userspaceAddr: SCRATCH_UVA, mmapOffset: 0, fd: memfd }]);
    let nextBuf = MAX_RINGS * RING_BYTES;
    const buffer = (bytes: Uint8Array | number): DriverBuffer => {
      const len = typeof bytes === 'number' ? bytes : bytes.length;
      if (len > BUF_BYTES || nextBuf + BUF_BYTES > SCRATCH_BYTES) throw new Error('warm-up: scratch memory exhausted');
      if (typeof bytes !== 'number') mem.set(bytes, nextBuf);
      const b = { gpa: nextBuf, len };
      nextBuf += BUF_BYTES;
      return b;
    };
    const started: { index: number; ring: DriverRing; kick: number; wanted: number }[] = [];
    for (const [k, index] of which.entries()) {
      const gpa = k * RING_BYTES;
      const memory = mem.subarray(gpa, gpa + RING_BYTES);
      let ring: DriverRing;
      let addr: { desc: number; avail: number; used: number };
      if (packed) {
        const p = new PackedDriverRing({ size, memory, gpa, eventIdx });
        ring = p;
        addr = { desc: p.descGpa, avail: p.driverEventGpa, used: p.deviceEventGpa };
      } else {
        const s = new SplitDriverRing({ size, memory, gpa, eventIdx });
        ring = s;
        addr = { desc: s.descGpa, avail: s.availGpa, used: s.usedGpa };
      }
      at = nextCell(ledger, 'the warm-up');
      ledger[at] = native.eventfd(0);
      const kick = made(at);
      at = nextCell(ledger, 'the warm-up');
      ledger[at] = native.eventfd(0);
      const call = made(at);
      native.setNonBlocking(call, true);
      runner.ringNum(index, size);
      runner.ringBase(index, packed ? PACKED_INITIAL_VRING_BASE : 0);
      runner.ringAddr(index, { descUserAddr: SCRATCH_UVA + addr.desc, availUserAddr: SCRATCH_UVA + addr.avail, usedUserAddr: SCRATCH_UVA + addr.used, log: false, logGuestAddr: 0 });
      runner.ringCall(index, call);
      runner.ringKick(index, kick);
      // Half the requests wait on the ring before it is enabled (an upgrade's backlog, drained by
      // the start), the other half come with a kick once it runs (the kick watcher's path).
      const reqs = warmRequests(info.deviceId, index).slice(0, size);
      const half = Math.ceil(reqs.length / 2);
      const add = (r: WarmRequest) => {
        if (ring.add(r.readable.map(buffer), r.writable.map(buffer)) === null) throw new Error('warm-up: the scratch ring is full');
      };
      reqs.slice(0, half).forEach(add);
      // Without protocol features the kick fd started it already.
      if (protocolFeatures) runner.ringEnable(index, true);
      reqs.slice(half).forEach(add);
      if (reqs.length > half) native.eventfdWrite(kick, 1);
      started.push({ index, ring, kick, wanted: reqs.length });
      result.requests += reqs.length;
    }
    const end = performance.now() + WAIT_MS;
    const done = new Map(started.map((s) => [s.index, 0]));
    for (;;) {
      for (const s of started) done.set(s.index, done.get(s.index)! + s.ring.getUsed().length);
      result.completed = [...done.values()].reduce((a, b) => a + b, 0);
      const st = runner.status();
      if (st.failed !== null) throw new Error(`the device failed on a warm-up request: ${st.failed}`);
      if (st.brokenQueues.length > 0) throw new Error(`ring(s) ${st.brokenQueues.join(', ')} broke on warm-up requests`);
      if (result.completed >= result.requests || performance.now() > end) break;
      await new Promise((resolve) => setTimeout(resolve, 1));
    }
    // The calls an upgrade's stop makes on each side: stop, save; load into a device as just created.
    for (const s of started) runner.ringStop(s.index);
    const state = runner.stateRead(0, 1 << 20);
    runner.reset();
    runner.setFeatures(acked, protocolFeatures);
    runner.stateWrite(0, state.bytes);
    result.stateRefusal = runner.stateFinish();
    runner.reset();
    runner.setMemTable([]);
    return result;
  } catch (e) {
    // The upgrade is refused and this worker ended: the clean-up only must not hide why.
    try {
      runner.reset();
      runner.setMemTable([]);
    } catch {}
    throw e;
  } finally {
    mapping?.unmap();
    for (const fd of fds) closeNoted(ledger, fd);
    result.ms = performance.now() - t0;
  }
}

/** For log lines. */
export function describeWarmUp(r: WarmUpResult): string {
  const refusal = r.stateRefusal === null ? '' : `; its own state loaded back was refused (${r.stateRefusal})`;
  return `warm-up: ring(s) ${r.rings.join(', ') || '(none)'}, ${r.completed} of ${r.requests} request(s) answered in ${r.ms.toFixed(1)} ms${refusal}`;
}
