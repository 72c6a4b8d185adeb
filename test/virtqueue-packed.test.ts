import test, { type ExecutionContext } from 'ava';
import { GuestMemory, type Backing, type RegionSpec } from '../host/memory/guest-memory.ts';
import { DirtyLog } from '../host/memory/dirty-log.ts';
import { DATA, MEM, Q, RING, bytes, dirtyLog, guestRam, page, popFaults, region } from './helpers/ring-memory.ts';
import { QueueFault, QueueSetupError, SplitQueue, readChain } from '../host/virtqueue/split.ts';
import { PackedQueue, decodePackedVringBase, encodePackedVringBase } from '../host/virtqueue/packed.ts';
import { PackedDriverRing } from '../host/frontend/rings/packed.ts';
import { SplitDriverRing } from '../host/frontend/rings/split.ts';
import { PACKED_INITIAL_VRING_BASE, createDeviceQueue, isValidRingSize, vringBaseError } from '../host/virtqueue/queue.ts';
import {
  RING_EVENT_FLAGS_DESC,
  RING_EVENT_FLAGS_DISABLE,
  RING_EVENT_FLAGS_ENABLE,
  VIRTQ_DESC_F_AVAIL as AVAIL,
  VIRTQ_DESC_F_INDIRECT as INDIRECT,
  VIRTQ_DESC_F_NEXT as NEXT,
  VIRTQ_DESC_F_USED as USED,
  VIRTQ_DESC_F_WRITE as WRITE,
  packedNeedEvent,
} from '../host/virtqueue/layout.ts';

interface Pair {
  buf: ArrayBuffer;
  mem: GuestMemory;
  drv: PackedDriverRing;
  q: PackedQueue;
}

function pair(opts: { size?: number; eventIdx?: boolean; indirectEntries?: number; log?: DirtyLog; usedLogGpa?: number } = {}): Pair {
  const size = opts.size ?? 8;
  const { buf, mem } = guestRam();
  const drv = new PackedDriverRing({
    size,
    memory: new Uint8Array(buf, RING, PackedDriverRing.layoutFor(size, opts.indirectEntries ?? 0).bytes),
    gpa: RING,
    eventIdx: opts.eventIdx ?? false,
    indirectEntries: opts.indirectEntries,
  });
  const q = new PackedQueue({
    index: Q,
    memory: mem,
    size,
    descGpa: drv.descGpa,
    driverEventGpa: drv.driverEventGpa,
    deviceEventGpa: drv.deviceEventGpa,
    eventIdx: opts.eventIdx ?? false,
    indirectDesc: true,
    log: opts.log,
    usedLogGpa: opts.usedLogGpa,
  });
  return { buf, mem, drv, q };
}

/** Deterministic PRNG (xorshift32) so failures reproduce. */
function rng(seed: number): (n: number) => number {
  let s = seed >>> 0 || 1;
  return (n: number) => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s % n;
  };
}

// ---- Round trips ----

test('packed: simple readable chain round trip', (t) => {
  const p = pair();
  bytes(p, DATA, 4).set([1, 2, 3, 4]);
  t.false(p.q.hasAvailable());
  t.is(p.q.pop(), null);
  const id = p.drv.add([{ gpa: DATA, len: 4 }], [])!;
  t.is(typeof id, 'number');
  t.true(p.drv.kickNeeded(), 'device event area starts at ENABLE');
  t.true(p.q.hasAvailable());
  const c = p.q.pop()!;
  t.is(c.head, id);
  t.is(c.availIndex, 0);
  t.is(c.descCount, 1);
  t.is(c.readableLen, 4);
  t.deepEqual([...readChain(c)], [1, 2, 3, 4]);
  t.is(p.q.pop(), null);
  t.is(p.q.inFlight, 1);
  t.deepEqual(p.q.inFlightHeads(), [id]);
  t.deepEqual(p.drv.getUsed(), [], 'nothing used yet');
  p.q.pushUsed(c.head, 0);
  t.is(p.q.inFlight, 0);
  t.deepEqual(p.drv.getUsed(), [{ head: id, len: 0 }]);
  t.deepEqual([p.q.nextAvail, p.q.nextUsed, p.q.availWrapCounter, p.q.usedWrapCounter], [1, 1, true, true]);
  t.is(p.drv.numFree, 8);
});

test('packed: readable + writable chain: scatter, used len, driver sees bytes', (t) => {
  const p = pair();
  bytes(p, DATA, 3).set([9, 8, 7]);
  const id = p.drv.add(
    [
      { gpa: DATA, len: 2 },
      { gpa: DATA + 2, len: 1 },
    ],
    [
      { gpa: DATA + 0x100, len: 3 },
      { gpa: DATA + 0x200, len: 5 },
    ],
  )!;
  t.is(p.drv.numFree, 4);
  const c = p.q.pop()!;
  t.is(c.head, id);
  t.is(c.descCount, 4);
  t.deepEqual([...readChain(c)], [9, 8, 7]);
  t.is(c.writableLen, 8);
  t.deepEqual(c.writableRanges, [
    { gpa: DATA + 0x100, len: 3 },
    { gpa: DATA + 0x200, len: 5 },
  ]);
  t.is(p.q.writeChain(c, new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])), 8, 'bounded by writableLen');
  t.is(p.q.writeChain(c, new Uint8Array([0xee]), 4), 1, 'offset write');
  p.q.pushUsed(c.head, 8);
  t.deepEqual([...bytes(p, DATA + 0x100, 3)], [1, 2, 3]);
  t.deepEqual([...bytes(p, DATA + 0x200, 5)], [4, 0xee, 6, 7, 8]);
  t.deepEqual(p.drv.getUsed(), [{ head: id, len: 8 }]);
  t.deepEqual([p.q.nextAvail, p.q.nextUsed], [4, 4], 'the used index skips the whole chain');
  t.is(p.drv.numFree, 8);
  t.throws(() => p.q.pushUsed(c.head, 0), { message: /virtqueue 3: pushUsed of buffer id \d+, which is not in flight/ });
  const id2 = p.drv.add([], [{ gpa: DATA, len: 4 }])!;
  p.q.pop();
  t.throws(() => p.q.pushUsed(id2, 5), { instanceOf: RangeError, message: /exceeds the chain's 4 writable bytes/ });
  t.throws(() => p.q.pushUsed(99, 0), { message: /not in flight/ });
  t.false(p.q.broken, 'device-side misuse does not break the queue');
});

test('packed: indirect descriptors round trip', (t) => {
  const p = pair({ indirectEntries: 4 });
  bytes(p, DATA, 2).set([5, 6]);
  const id = p.drv.add([{ gpa: DATA, len: 2 }], [{ gpa: DATA + 0x10, len: 4 }, { gpa: DATA + 0x20, len: 4 }], { indirect: true })!;
  t.is(p.drv.numFree, 7, 'one ring descriptor for the whole request');
  const c = p.q.pop()!;
  t.is(c.head, id);
  t.is(c.descCount, 1);
  t.deepEqual([...readChain(c)], [5, 6]);
  t.is(c.writableLen, 8);
  p.q.writeChain(c, new Uint8Array([1, 2, 3, 4, 5]));
  p.q.pushUsed(id, 5);
  t.deepEqual(p.drv.getUsed(), [{ head: id, len: 5 }]);
  t.is(bytes(p, DATA + 0x20, 1)[0], 5);
  t.is(p.drv.numFree, 8);
  t.is(p.q.nextUsed, 1);
});

test('packed: ring full; buffers spanning two regions give two slices', (t) => {
  const size = 4;
  const hi = new ArrayBuffer(0x1000);
  const { buf, mem } = guestRam([region(MEM, hi)]);
  const drv = new PackedDriverRing({ size, memory: new Uint8Array(buf, RING, 0x1000), gpa: RING, eventIdx: false });
  const q = new PackedQueue({ index: Q, memory: mem, size, descGpa: drv.descGpa, driverEventGpa: drv.driverEventGpa, deviceEventGpa: drv.deviceEventGpa, eventIdx: false, indirectDesc: false });
  t.not(drv.add([], [{ gpa: MEM - 2, len: 6 }]), null);
  t.not(drv.add([{ gpa: DATA, len: 1 }], [{ gpa: DATA, len: 1 }, { gpa: DATA, len: 1 }]), null);
  t.is(drv.add([{ gpa: DATA, len: 1 }], []), null, 'all 4 descriptors in use');
  const c = q.pop()!;
  t.is(c.writable.length, 2);
  t.is(c.writable[0].buffer, buf);
  t.is(c.writable[1].buffer, hi);
  q.writeChain(c, new Uint8Array([1, 2, 3, 4, 5, 6]));
  t.deepEqual([...new Uint8Array(hi, 0, 4)], [3, 4, 5, 6]);
  t.not(q.pop(), null);
  t.is(q.pop(), null, 'the slot after a full ring is from the previous lap: not available');
});

test('packed: many laps of an odd-sized ring, chains crossing the wrap, wrap counters agree', (t) => {
  for (const eventIdx of [false, true]) {
    for (const indirect of [false, true]) {
      const size = 5;
      const p = pair({ size, eventIdx, indirectEntries: 3 });
      let slots = 0;
      let kicks = 0;
      let irqs = 0;
      const rounds = 3000;
      for (let i = 0; i < rounds; i++) {
        const nr = i % 2;
        const nw = 1 + (i % 3 === 0 ? 1 : 0);
        bytes(p, DATA, 1)[0] = i & 0xff;
        const readable = Array.from({ length: nr }, () => ({ gpa: DATA, len: 1 }));
        const writable = Array.from({ length: nw }, (_, k) => ({ gpa: DATA + 0x100 + 8 * k, len: 4 }));
        const ind = indirect && i % 4 === 1;
        const id = p.drv.add(readable, writable, { indirect: ind })!;
        if (p.drv.kickNeeded()) kicks++;
        const c = p.q.pop()!;
        if (c === null || c.head !== id) {
          t.fail(`round ${i}: popped ${c?.head}, expected ${id}`);
          return;
        }
        if (nr) t.is(readChain(c)[0], i & 0xff);
        const w = new Uint8Array(4 * nw).fill(i & 0xff);
        p.q.pushUsed(c.head, p.q.writeChain(c, w));
        slots += c.descCount;
        if (p.q.needsNotification()) irqs++;
        const u = p.drv.getUsed();
        if (u.length !== 1 || u[0].head !== id || u[0].len !== 4 * nw) t.fail(`round ${i}: ${JSON.stringify(u)}`);
        p.q.enableNotifications();
        if (p.drv.availIndex !== p.q.nextAvail || p.drv.availWrapCounter !== p.q.availWrapCounter) t.fail(`round ${i}: avail index/wrap disagree`);
        if (p.drv.usedIndex !== p.q.nextUsed || p.drv.usedWrapCounter !== p.q.usedWrapCounter) t.fail(`round ${i}: used index/wrap disagree`);
      }
      t.true(slots > 4 * size, 'went round the ring many times');
      t.is(p.q.nextAvail, slots % size);
      t.is(p.q.availWrapCounter, Math.floor(slots / size) % 2 === 0);
      t.is(p.q.nextUsed, p.q.nextAvail);
      t.is(p.q.usedWrapCounter, p.q.availWrapCounter);
      t.is(bytes(p, DATA + 0x100, 1)[0], (rounds - 1) & 0xff);
      t.is(kicks, rounds, `eventIdx=${eventIdx}: one kick per request`);
      t.is(irqs, rounds, `eventIdx=${eventIdx}: one interrupt per request`);
    }
  }
});

test('packed: a one-slot ring alternates wrap counters', (t) => {
  const p = pair({ size: 1, eventIdx: true });
  for (let i = 0; i < 10; i++) {
    const id = p.drv.add([], [{ gpa: DATA, len: 1 }])!;
    t.is(p.drv.add([], [{ gpa: DATA, len: 1 }]), null);
    t.true(p.drv.kickNeeded());
    const c = p.q.pop()!;
    t.is(c.head, id);
    t.is(p.q.pop(), null);
    p.q.pushUsed(id, 1);
    t.true(p.q.needsNotification());
    t.deepEqual(p.drv.getUsed(), [{ head: 0, len: 1 }]);
    t.false(p.q.enableNotifications());
    t.is(p.q.availWrapCounter, i % 2 === 1);
  }
});

test('packed: out-of-order completion over many laps (random, reproducible)', (t) => {
  for (const seed of [1, 0xdecaf, 77]) {
    const size = 7;
    const rand = rng(seed);
    const p = pair({ size, eventIdx: seed % 2 === 1, indirectEntries: 4 });
    const outstanding = new Map<number, { len: number; tag: number }>();
    const device: { id: number; cap: number; gpa: number }[] = [];
    let tag = 0;
    let completed = 0;
    for (let round = 0; round < 1500; round++) {
      // Driver adds as much as fits.
      for (let k = rand(4); k >= 0; k--) {
        const nw = 1 + rand(3);
        const slotGpa = DATA + 0x1000 * (tag % 32);
        const writable = Array.from({ length: nw }, (_, j) => ({ gpa: slotGpa + 16 * j, len: 2 }));
        const id = p.drv.add([{ gpa: DATA, len: 1 }], writable, { indirect: rand(3) === 0 });
        if (id === null) break;
        t.false(outstanding.has(id), 'driver reuses only completed ids');
        outstanding.set(id, { len: 2 * nw, tag: tag++ });
      }
      // Device takes everything, then completes a random subset in random order.
      let c;
      while ((c = p.q.pop()) !== null) device.push({ id: c.head, cap: c.writableLen, gpa: c.writableRanges[0].gpa });
      const done: { head: number; len: number }[] = [];
      for (let k = rand(device.length + 1); k > 0; k--) {
        const [d] = device.splice(rand(device.length), 1);
        const chainLen = outstanding.get(d.id)!.len;
        t.is(d.cap, chainLen);
        const written = rand(chainLen + 1);
        bytes(p, d.gpa, 1)[0] = d.id;
        p.q.pushUsed(d.id, written);
        done.push({ head: d.id, len: written });
      }
      const used = p.drv.getUsed();
      if (JSON.stringify(used) !== JSON.stringify(done)) {
        t.fail(`seed ${seed} round ${round}: driver saw ${JSON.stringify(used)}, device returned ${JSON.stringify(done)}`);
        return;
      }
      for (const u of used) outstanding.delete(u.head);
      completed += used.length;
      t.is(p.q.inFlight, device.length);
      t.is(p.drv.inFlight, outstanding.size);
    }
    t.true(completed > 1000, `seed ${seed}: ${completed} completions`);
    t.false(p.q.broken);
  }
});

// ---- Event suppression ----

test('packed: no EVENT_IDX: ENABLE/DISABLE both ways', (t) => {
  const p = pair();
  p.q.disableNotifications();
  p.drv.add([{ gpa: DATA, len: 1 }], []);
  t.false(p.drv.kickNeeded(), 'device disabled kicks');
  t.true(p.q.enableNotifications(), 'a buffer is waiting');
  p.drv.add([{ gpa: DATA, len: 1 }], []);
  t.true(p.drv.kickNeeded());
  t.false(p.drv.kickNeeded(), 'nothing new since');
  p.q.pushUsed(p.q.pop()!.head, 0);
  t.true(p.q.needsNotification());
  t.false(p.q.needsNotification(), 'nothing new since');
  p.drv.disableInterrupts();
  p.q.pushUsed(p.q.pop()!.head, 0);
  t.false(p.q.needsNotification(), 'driver disabled interrupts');
  t.true(p.drv.enableInterrupts(), 'an entry arrived while interrupts were off');
  t.is(p.drv.getUsed().length, 2);
  t.false(p.drv.enableInterrupts());
});

test('packed: EVENT_IDX, driver -> device: off_wrap and the enable re-check', (t) => {
  const p = pair({ eventIdx: true, size: 4 });
  const devEvent = () => new DataView(p.buf).getUint32(p.drv.deviceEventGpa, true);
  p.drv.add([{ gpa: DATA, len: 1 }], []);
  t.true(p.drv.kickNeeded(), 'ENABLE initially');
  p.q.disableNotifications();
  t.is(devEvent() >>> 16, RING_EVENT_FLAGS_DISABLE);
  p.drv.add([{ gpa: DATA, len: 1 }], []);
  t.false(p.drv.kickNeeded());
  while (p.q.pop()) {
    /* drain */
  }
  t.false(p.q.enableNotifications(), 'nothing new since draining');
  t.is(devEvent(), (RING_EVENT_FLAGS_DESC << 16) | 0x8000 | 2, 'DESC at slot 2, wrap 1');
  p.drv.add([{ gpa: DATA, len: 1 }], []);
  t.true(p.drv.kickNeeded(), 'slot 2 crossed');
  // Race: the driver adds after the device drained but before it re-enabled.
  p.q.pop();
  p.drv.add([{ gpa: DATA, len: 1 }], []);
  t.false(p.drv.kickNeeded(), 'event still at slot 2: no kick for slot 3');
  t.true(p.q.enableNotifications(), 'the re-check catches it');
  t.not(p.q.pop(), null);
  // Next lap: the event names slot 0 with wrap 0.
  t.false(p.q.enableNotifications());
  t.is(devEvent(), (RING_EVENT_FLAGS_DESC << 16) | 0, 'slot 0, wrap 0');
  for (const id of p.q.inFlightHeads()) p.q.pushUsed(id, 0);
  p.drv.getUsed();
  p.drv.add([{ gpa: DATA, len: 1 }], []);
  t.true(p.drv.kickNeeded(), 'wrapped: slot 0 on the second lap');
});

test('packed: EVENT_IDX, device -> driver: next, specific (delayed) and disabled', (t) => {
  const p = pair({ eventIdx: true, size: 8 });
  const run = (n = 1) => {
    for (let i = 0; i < n; i++) p.drv.add([{ gpa: DATA, len: 1 }], []);
    let c;
    while ((c = p.q.pop()) !== null) p.q.pushUsed(c.head, 0);
  };
  // Driver area starts at off_wrap 0, flags ENABLE (0): every batch interrupts.
  run();
  t.true(p.q.needsNotification());
  p.drv.getUsed();
  t.true(p.drv.enableInterrupts() === false);
  run();
  t.true(p.q.needsNotification(), 'DESC at the next slot');
  run();
  t.false(p.q.needsNotification(), 'the driver has not reaped: event still at slot 1');
  t.is(p.drv.getUsed().length, 2, 'getUsed re-arms at the next slot');
  run();
  t.true(p.q.needsNotification());
  p.drv.getUsed();
  // Delayed: interrupt only once 3 more used slots are written.
  p.drv.enableInterruptsAt(2);
  run();
  t.false(p.q.needsNotification());
  p.drv.getUsed();
  run();
  t.false(p.q.needsNotification());
  p.drv.getUsed();
  run();
  t.true(p.q.needsNotification(), 'third used slot reached the event');
  p.drv.getUsed();
  // A multi-descriptor chain whose slots cover the event position also interrupts.
  p.drv.enableInterruptsAt(1);
  p.drv.add([{ gpa: DATA, len: 1 }, { gpa: DATA, len: 1 }, { gpa: DATA, len: 1 }], []);
  p.q.pushUsed(p.q.pop()!.head, 0);
  t.true(p.q.needsNotification(), 'event slot skipped over by a 3-slot chain');
  p.drv.getUsed();
  p.drv.disableInterrupts();
  run(3);
  t.false(p.q.needsNotification());
  t.true(p.drv.enableInterrupts(), 'used entries wait');
  p.drv.getUsed();
  // A driver event behind the used index (another lap) does not interrupt.
  t.false(p.drv.enableInterrupts());
  run();
  t.true(p.q.needsNotification());
});

test('packedNeedEvent: window arithmetic across the wrap', (t) => {
  const S = 4; // positions 0..7; off_wrap wrap bit 1 = first lap
  const ow = (slot: number, wrap: number) => slot | (wrap << 15);
  t.true(packedNeedEvent(ow(3, 1), 5, 3, S), 'event at 3 in [3, 5)');
  t.false(packedNeedEvent(ow(1, 0), 5, 3, S), 'event at 5 not yet');
  t.true(packedNeedEvent(ow(1, 1), 2, 7, S), 'old 7 -> new 2 wraps through 0, 1');
  t.false(packedNeedEvent(ow(2, 1), 2, 7, S));
  t.true(packedNeedEvent(ow(3, 0), 0, 7, S), 'event at 7');
});

// ---- SET/GET_VRING_BASE ----

test('packed: vring base encoding and a restart that continues the ring', (t) => {
  t.is(encodePackedVringBase({ availIdx: 3, availWrap: true, usedIdx: 2, usedWrap: false }), 0x00028003);
  t.deepEqual(decodePackedVringBase(0x80058003, 8), { availIdx: 3, availWrap: true, usedIdx: 5, usedWrap: true });
  t.deepEqual(decodePackedVringBase(0x8003, 8), { availIdx: 3, availWrap: true, usedIdx: 3, usedWrap: true }, 'avail-only (legacy) form');
  t.deepEqual(decodePackedVringBase(0x0000, 8), { availIdx: 0, availWrap: false, usedIdx: 0, usedWrap: false }, 'a literal all-zero state is consistent');

  const size = 6;
  const { buf, mem } = guestRam();
  const drv = new PackedDriverRing({ size, memory: new Uint8Array(buf, RING, 0x1000), gpa: RING, eventIdx: true });
  const make = (vringBase?: number) =>
    createDeviceQueue({ index: Q, memory: mem, packed: true, size, descGpa: drv.descGpa, availGpa: drv.driverEventGpa, usedGpa: drv.deviceEventGpa, eventIdx: true, indirectDesc: false, vringBase });
  let q = make();
  t.true(q instanceof PackedQueue);
  t.is(q.vringBase, PACKED_INITIAL_VRING_BASE, 'no SET_VRING_BASE: the initial state');
  const step = (n: number) => {
    for (let i = 0; i < n; i++) {
      const id = drv.add([{ gpa: DATA, len: 1 }], [{ gpa: DATA + 8, len: 1 }, { gpa: DATA + 16, len: 1 }])!;
      const c = q.pop()!;
      t.is(c.head, id);
      q.pushUsed(c.head, 1);
      t.deepEqual(drv.getUsed(), [{ head: id, len: 1 }]);
    }
  };
  step(5); // 15 slots: 2.5 laps
  const base = q.vringBase;
  t.is(base, encodePackedVringBase({ availIdx: 3, availWrap: true, usedIdx: 3, usedWrap: true }));
  q = make(base);
  t.is(q.nextAvail, 3);
  step(7);
  t.is(q.vringBase, encodePackedVringBase({ availIdx: 0, availWrap: true, usedIdx: 0, usedWrap: true }), '36 slots: 6 laps');
  // Stopped with a buffer popped but not returned: used stays behind; the base records both.
  drv.add([{ gpa: DATA, len: 1 }], []);
  const c = q.pop()!;
  const mid = q.vringBase;
  t.deepEqual(decodePackedVringBase(mid, size), { availIdx: 1, availWrap: true, usedIdx: 0, usedWrap: true });
  const q2 = make(mid) as PackedQueue;
  t.is(q2.inFlightDescriptors, 1, 'the lost chain keeps its slot');
  t.is(q2.pop(), null);
  t.truthy(c);
});

test('queue.ts: split through the same factory; sizes and bases per ring type', (t) => {
  const { buf, mem } = guestRam();
  const drv = new SplitDriverRing({ size: 8, memory: new Uint8Array(buf, RING, 0x1000), gpa: RING, eventIdx: false });
  const q = createDeviceQueue({ index: Q, memory: mem, packed: false, size: 8, descGpa: drv.descGpa, availGpa: drv.availGpa, usedGpa: drv.usedGpa, eventIdx: false, indirectDesc: false, vringBase: 0 });
  t.true(q instanceof SplitQueue);
  drv.add([{ gpa: DATA, len: 1 }], []);
  q.pushUsed(q.pop()!.head, 0);
  t.is(q.vringBase, 1);
  t.true(isValidRingSize(true, 6));
  t.false(isValidRingSize(false, 6));
  t.false(isValidRingSize(true, 0));
  t.false(isValidRingSize(true, 32769));
  t.is(vringBaseError(false, 0x10000), 'vring base 65536 is not a 16-bit ring index');
  t.is(vringBaseError(true, 0x80058003), null);
  t.throws(() => createDeviceQueue({ index: Q, memory: mem, packed: false, size: 8, descGpa: RING, availGpa: RING + 128, usedGpa: RING + 256, eventIdx: false, indirectDesc: false, vringBase: 70000 }), {
    instanceOf: QueueSetupError,
  });
});

// ---- Hostile rings: descriptors written by hand ----

interface Raw {
  buf: ArrayBuffer;
  dv: DataView;
  mem: GuestMemory;
  q: PackedQueue;
  size: number;
  /** A ring descriptor, made available for the lap `wrap` (default first lap). */
  desc(slot: number, addr: number, len: number, flags: number, id?: number, wrap?: boolean): void;
  /** An indirect table entry (no avail bits). */
  entry(table: number, i: number, addr: number, len: number, flags: number): void;
}

function raw(opts: { size?: number; indirectDesc?: boolean; extra?: RegionSpec[]; q?: Partial<ConstructorParameters<typeof PackedQueue>[0]> } = {}): Raw {
  const size = opts.size ?? 8;
  const { buf, mem } = guestRam(opts.extra);
  const dv = new DataView(buf);
  const q = new PackedQueue({
    index: Q,
    memory: mem,
    size,
    descGpa: RING,
    driverEventGpa: RING + 16 * size,
    deviceEventGpa: RING + 16 * size + 4,
    eventIdx: false,
    indirectDesc: opts.indirectDesc ?? true,
    ...opts.q,
  });
  const put = (o: number, addr: number, len: number, flags: number, id: number) => {
    dv.setUint32(o, addr % 2 ** 32, true);
    dv.setUint32(o + 4, Math.floor(addr / 2 ** 32), true);
    dv.setUint32(o + 8, len, true);
    dv.setUint16(o + 12, id, true);
    dv.setUint16(o + 14, flags, true);
  };
  return {
    buf,
    dv,
    mem,
    q,
    size,
    desc(slot, addr, len, flags, id = 0, wrap = true) {
      put(RING + 16 * slot, addr, len, flags | (wrap ? AVAIL : USED), id);
    },
    entry(table, i, addr, len, flags) {
      put(table + 16 * i, addr, len, flags, 0);
    },
  };
}

function faults(t: ExecutionContext, r: Raw, re: RegExp): QueueFault {
  const e = popFaults(t, r.q, re);
  t.throws(() => r.q.needsNotification(), { instanceOf: QueueFault });
  t.throws(() => r.q.enableNotifications(), { instanceOf: QueueFault });
  return e;
}

test('packed: availability follows the wrap counter exactly', (t) => {
  const r = raw();
  r.desc(0, DATA, 1, 0, 0, false); // made available for the second lap
  t.is(r.q.pop(), null);
  r.dv.setUint16(RING + 14, AVAIL | USED, true); // a used descriptor of the first lap
  t.is(r.q.pop(), null);
  r.dv.setUint16(RING + 14, 0, true); // used, second lap
  t.is(r.q.pop(), null);
  r.desc(0, DATA, 1, 0, 5);
  t.is(r.q.pop()!.head, 5);
  t.false(r.q.broken);
});

test('fault: packed chain longer than the queue', (t) => {
  const r = raw();
  for (let i = 0; i < 8; i++) r.desc(i, DATA, 1, NEXT);
  const e = faults(t, r, /descriptor chain longer than queue size 8/);
  t.is(e.availIndex, 0);
  t.regex(e.message, /avail index 0, descriptor 0/);
});

test('fault: packed chain continuing into a descriptor that is not available', (t) => {
  const r = raw();
  r.desc(0, DATA, 1, NEXT);
  r.desc(1, DATA, 1, 0, 0, false); // marked for the next lap: stale
  faults(t, r, /descriptor 1 continues a chain but is not available \(flags 0x8000\).*avail index 0, descriptor 1/);
  const r2 = raw({ size: 2, q: { nextAvail: 1 } });
  r2.desc(1, DATA, 1, NEXT);
  r2.desc(0, DATA, 1, 0, 1, false); // across the wrap: second lap, as it must be
  t.is(r2.q.pop()!.descCount, 2);
  t.true(r2.q.availWrapCounter === false && r2.q.nextAvail === 1);
});

test('packed: used descriptors carry WRITE only when data was written', (t) => {
  const p = pair();
  const a = p.drv.add([], [{ gpa: DATA, len: 4 }])!;
  const b = p.drv.add([], [{ gpa: DATA, len: 4 }])!;
  p.q.pop();
  p.q.pop();
  p.q.pushUsed(a, 0);
  p.q.pushUsed(b, 3);
  const dv = new DataView(p.buf);
  t.is(dv.getUint16(RING + 14, true), AVAIL | USED);
  t.is(dv.getUint16(RING + 16 + 14, true), AVAIL | USED | WRITE);
  t.deepEqual(p.drv.getUsed(), [{ head: a, len: 0 }, { head: b, len: 3 }]);
});

test('fault: packed chain running into descriptors still in flight', (t) => {
  const r = raw({ size: 4 });
  r.desc(0, DATA, 1, NEXT);
  r.desc(1, DATA, 1, NEXT);
  r.desc(2, DATA, 1, 0, 1);
  t.is(r.q.pop()!.descCount, 3);
  r.desc(3, DATA, 1, NEXT, 2);
  r.desc(0, DATA, 1, 0, 2, false); // slot 0 on the next lap: still owned by the device
  faults(t, r, /descriptor chain runs into the 3 descriptors still in flight \(queue size 4\).*avail index 3, descriptor 0/);
});

test('fault: packed buffer id out of range, and already in flight', (t) => {
  const r = raw();
  r.desc(0, DATA, 1, NEXT, 0);
  r.desc(1, DATA, 1, 0, 8);
  faults(t, r, /buffer id 8 >= queue size 8.*avail index 0, head 8, descriptor 1/);
  const r2 = raw();
  r2.desc(0, DATA, 1, 0, 3);
  r2.desc(1, DATA, 1, 0, 3);
  t.is(r2.q.pop()!.head, 3);
  faults(t, r2, /buffer id 3 is already in flight/);
});

test('fault: packed nested indirect', (t) => {
  const r = raw();
  const T = DATA + 0x1000;
  r.desc(0, T, 32, INDIRECT);
  r.entry(T, 0, DATA, 1, 0);
  r.entry(T, 1, T, 32, INDIRECT);
  faults(t, r, /indirect descriptor inside an indirect table \(entry 1\)/);
});

for (const len of [0, 24, 17]) {
  test(`fault: packed indirect table length ${len}`, (t) => {
    const r = raw();
    r.desc(5, DATA + 0x1000, len, INDIRECT);
    // Start at slot 5: restart there with SET_VRING_BASE semantics.
    const q = new PackedQueue({ index: Q, memory: r.mem, size: 8, descGpa: RING, driverEventGpa: RING + 128, deviceEventGpa: RING + 132, eventIdx: false, indirectDesc: true, nextAvail: 5 });
    const rr = { ...r, q };
    faults(t, rr, new RegExp(`indirect table length ${len} is not a multiple of 16.*avail index 5, descriptor 5`));
  });
}

test('fault: packed indirect table outside memory; INDIRECT without the feature; INDIRECT with NEXT; INDIRECT in a chain', (t) => {
  const r = raw();
  r.desc(0, MEM - 16, 32, INDIRECT);
  faults(t, r, /indirect table \[0xffff0, \+32\) outside guest memory/);
  const r1 = raw();
  r1.desc(0, 2 ** 56, 32, INDIRECT);
  faults(t, r1, /indirect table address 0x100000000000000 outside guest memory/);
  const r2 = raw({ indirectDesc: false });
  r2.desc(0, DATA, 16, INDIRECT);
  faults(t, r2, /INDIRECT but VIRTIO_F_INDIRECT_DESC was not negotiated/);
  const r3 = raw();
  r3.desc(0, DATA, 16, INDIRECT | NEXT);
  faults(t, r3, /descriptor 0 has both INDIRECT and NEXT/);
  const r4 = raw();
  r4.desc(0, DATA, 1, NEXT);
  r4.desc(1, DATA + 0x1000, 16, INDIRECT);
  faults(t, r4, /descriptor 1 is INDIRECT inside a NEXT chain/);
});

test('packed: NEXT and ids inside an indirect table are ignored; the table is the chain', (t) => {
  const r = raw();
  const T = DATA + 0x1000;
  r.desc(0, T, 48, INDIRECT, 6);
  r.entry(T, 0, DATA, 2, NEXT);
  r.entry(T, 1, DATA + 0x10, 3, WRITE);
  r.entry(T, 2, DATA + 0x20, 4, WRITE | NEXT);
  const c = r.q.pop()!;
  t.is(c.head, 6);
  t.deepEqual([c.readableLen, c.writableLen, c.descCount], [2, 7, 1]);
});

test('packed: an indirect table split across two regions is read correctly', (t) => {
  const hi = new ArrayBuffer(0x1000);
  const r = raw({ extra: [region(MEM, hi)] });
  const T = MEM - 16;
  r.desc(0, T, 32, INDIRECT);
  r.entry(T, 0, DATA, 3, 0);
  const hv = new DataView(hi);
  hv.setUint32(0, DATA + 0x10, true);
  hv.setUint32(8, 5, true);
  hv.setUint16(14, WRITE, true);
  const c = r.q.pop()!;
  t.is(c.readableLen, 3);
  t.deepEqual(c.writableRanges, [{ gpa: DATA + 0x10, len: 5 }]);
});

for (const [name, addr, len, re] of [
  ['beyond the end of memory', MEM - 4, 8, /descriptor 1: buffer \[0xffffc, \+8\) outside guest memory/],
  ['in no region', 0x10000000, 1, /buffer \[0x10000000, \+1\) outside guest memory/],
  ['at or above 2^53', 2 ** 60, 1, /descriptor 1: address 0x1000000000000000 outside guest memory/],
  ['wrapping past 2^53', 2 ** 53 - 2, 4, /outside guest memory/],
] as const) {
  test(`fault: packed buffer address ${name}`, (t) => {
    const r = raw();
    r.desc(0, DATA, 1, NEXT);
    r.desc(1, addr, len, WRITE);
    faults(t, r, re);
  });
}

test('fault: packed buffer outside memory inside an indirect table', (t) => {
  const r = raw();
  const T = DATA + 0x1000;
  r.desc(0, T, 32, INDIRECT);
  r.entry(T, 0, DATA, 1, 0);
  r.entry(T, 1, MEM - 1, 2, WRITE);
  faults(t, r, /indirect table entry 1: buffer \[0xfffff, \+2\) outside guest memory/);
});

test('fault: packed total length overflows u32', (t) => {
  const win = new ArrayBuffer(2 ** 30);
  const big: Backing = { size: 2 ** 32, window: () => win };
  const r = raw({ extra: [{ guestPhysAddr: 2 ** 32, size: 2 ** 32, userspaceAddr: 2 ** 40, mmapOffset: 0, backing: big }] });
  r.desc(0, 2 ** 32, 0xffffffff, WRITE | NEXT);
  r.desc(1, 2 ** 32, 1, WRITE);
  faults(t, r, /writable length of the chain overflows u32.*descriptor 1/);
});

test('fault: packed readable after writable (ring and indirect table)', (t) => {
  const r = raw();
  r.desc(0, DATA, 4, WRITE | NEXT);
  r.desc(1, DATA, 4, 0);
  faults(t, r, /descriptor 1 is device-readable after a writable descriptor/);
  const r2 = raw();
  const T = DATA + 0x1000;
  r2.desc(0, T, 32, INDIRECT);
  r2.entry(T, 0, DATA, 4, WRITE);
  r2.entry(T, 1, DATA, 4, 0);
  faults(t, r2, /indirect table entry 1 is device-readable after a writable descriptor/);
});

test('packed: zero-length descriptors are accepted and produce no slices', (t) => {
  const r = raw();
  r.desc(0, DATA, 0, NEXT);
  r.desc(1, 2 ** 52, 0, WRITE, 2);
  const c = r.q.pop()!;
  t.deepEqual([c.readable.length, c.writable.length, c.readableLen, c.writableLen, c.head], [0, 0, 0, 0, 2]);
});

// ---- Setup, memory changes, dirty logging ----

test('packed setup errors: size, alignment, rings outside memory, base', (t) => {
  const { mem: memory } = guestRam();
  const base = { index: Q, memory, size: 8, descGpa: RING, driverEventGpa: RING + 128, deviceEventGpa: RING + 132, eventIdx: true, indirectDesc: false };
  t.notThrows(() => new PackedQueue(base));
  t.notThrows(() => new PackedQueue({ ...base, size: 5 }), 'any size');
  t.throws(() => new PackedQueue({ ...base, size: 0 }), { instanceOf: QueueSetupError, message: /virtqueue 3: packed queue size 0/ });
  t.throws(() => new PackedQueue({ ...base, size: 32769 }), { instanceOf: QueueSetupError });
  t.throws(() => new PackedQueue({ ...base, descGpa: RING + 8 }), { instanceOf: QueueSetupError, message: /not 16-byte aligned/ });
  t.throws(() => new PackedQueue({ ...base, deviceEventGpa: RING + 134 }), { instanceOf: QueueSetupError, message: /device event suppression GPA .* not 4-byte aligned/ });
  t.throws(() => new PackedQueue({ ...base, driverEventGpa: RING + 2 }), { instanceOf: QueueSetupError, message: /driver event suppression GPA/ });
  t.throws(() => new PackedQueue({ ...base, descGpa: MEM - 64 }), { instanceOf: QueueSetupError, message: /descriptor ring \[0xfffc0, \+128\) is not contiguous guest memory/ });
  t.throws(() => new PackedQueue({ ...base, deviceEventGpa: 2 * MEM }), { instanceOf: QueueSetupError, message: /device event suppression area/ });
  t.throws(() => new PackedQueue({ ...base, nextAvail: 8 }), { instanceOf: QueueSetupError, message: /vring base avail index 8 is outside the ring of 8/ });
  t.throws(() => new PackedQueue({ ...base, nextAvail: 2, availWrap: true, nextUsed: 3, usedWrap: true }), {
    instanceOf: QueueSetupError,
    message: /used index 3 \(wrap 1\) is not within one ring behind avail index 2 \(wrap 1\)/,
  });
  t.notThrows(() => new PackedQueue({ ...base, nextAvail: 2, availWrap: false, nextUsed: 3, usedWrap: true }), '7 slots in flight is possible');
});

test('packed: removing the region under a running ring breaks the queue with a clear fault', (t) => {
  const { mem: memory } = guestRam([region(MEM, new ArrayBuffer(0x1000))]);
  const q = new PackedQueue({ index: Q, memory, size: 8, descGpa: RING, driverEventGpa: RING + 128, deviceEventGpa: RING + 132, eventIdx: false, indirectDesc: false });
  t.is(q.pop(), null);
  memory.removeRegion({ guestPhysAddr: MEM, size: 0x1000 });
  t.is(q.pop(), null, 'an unrelated region going away is harmless');
  memory.removeRegion({ guestPhysAddr: 0, size: MEM });
  t.throws(() => q.pop(), { instanceOf: QueueFault, message: /virtqueue 3: descriptor ring \[0x10000, \+128\) is not contiguous guest memory/ });
  t.true(q.broken);
});

test('packed dirty logging: written buffers, used descriptors, device event area', (t) => {
  const { log, logArea } = dirtyLog();
  const USED_LOG = 0x80000; // log_guest_addr differs from where we found the device area
  const p = pair({ eventIdx: true, log, usedLogGpa: USED_LOG });
  p.drv.add([{ gpa: DATA, len: 4 }], [{ gpa: DATA + 0x1ffe, len: 4 }, { gpa: DATA + 0x5000, len: 8 }]);
  const c = p.q.pop()!;
  t.deepEqual([...new Uint8Array(logArea)].filter((b) => b !== 0), [], 'popping writes nothing');
  p.q.writeChain(c, new Uint8Array(3));
  t.true(log.isDirty(page(DATA + 0x1ffe)));
  t.true(log.isDirty(page(DATA + 0x2000)));
  t.false(log.isDirty(page(DATA + 0x5000)), 'writeChain stopped before the second buffer');
  t.false(log.isDirty(page(RING)));
  p.q.pushUsed(c.head, 6);
  t.true(log.isDirty(page(DATA + 0x5000)));
  t.false(log.isDirty(page(DATA)), 'readable buffer not marked');
  t.true(log.isDirty(page(RING)), 'used descriptor written in the descriptor ring');
  t.false(log.isDirty(page(USED_LOG)));
  p.q.enableNotifications();
  t.true(log.isDirty(page(USED_LOG)), 'device event area logged at log_guest_addr');
  p.q.setLog(null);
  p.drv.add([{ gpa: DATA, len: 4 }], [{ gpa: DATA + 0x9000, len: 8 }]);
  const c2 = p.q.pop()!;
  p.q.writeChain(c2, new Uint8Array(8));
  p.q.pushUsed(c2.head, 8);
  t.false(log.isDirty(page(DATA + 0x9000)), 'logging off');
});

test('packed: the device area starts ENABLE and only changes when we write it', (t) => {
  const p = pair({ eventIdx: false });
  const dev = () => new DataView(p.buf).getUint32(p.drv.deviceEventGpa, true) >>> 16;
  t.is(dev(), RING_EVENT_FLAGS_ENABLE);
  p.q.disableNotifications();
  t.is(dev(), RING_EVENT_FLAGS_DISABLE);
  p.q.enableNotifications();
  t.is(dev(), RING_EVENT_FLAGS_ENABLE, 'no EVENT_IDX: never DESC');
});
