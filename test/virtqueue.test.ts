import test, { type ExecutionContext } from 'ava';
import { GuestMemory, type Backing, type RegionSpec } from '../host/memory/guest-memory.ts';
import { DirtyLog } from '../host/memory/dirty-log.ts';
import { DATA, MEM, Q, RING, bytes, dirtyLog, guestRam, page, popFaults, region } from './helpers/ring-memory.ts';
import { QueueFault, QueueSetupError, SplitQueue, readChain } from '../host/virtqueue/split.ts';
import { SplitDriverRing } from '../host/frontend/rings/split.ts';
import { VIRTQ_DESC_F_INDIRECT as INDIRECT, VIRTQ_DESC_F_NEXT as NEXT, VIRTQ_DESC_F_WRITE as WRITE } from '../host/virtqueue/layout.ts';

interface Pair {
  buf: ArrayBuffer;
  mem: GuestMemory;
  drv: SplitDriverRing;
  q: SplitQueue;
}

function pair(opts: { size?: number; eventIdx?: boolean; indirectEntries?: number; log?: DirtyLog; usedLogGpa?: number } = {}): Pair {
  const size = opts.size ?? 8;
  const { buf, mem } = guestRam();
  const drv = new SplitDriverRing({
    size,
    memory: new Uint8Array(buf, RING, SplitDriverRing.layoutFor(size, opts.indirectEntries ?? 0).bytes),
    gpa: RING,
    eventIdx: opts.eventIdx ?? false,
    indirectEntries: opts.indirectEntries,
  });
  const q = new SplitQueue({
    index: Q,
    memory: mem,
    size,
    descGpa: drv.descGpa,
    availGpa: drv.availGpa,
    usedGpa: drv.usedGpa,
    eventIdx: opts.eventIdx ?? false,
    indirectDesc: true,
    log: opts.log,
    usedLogGpa: opts.usedLogGpa,
  });
  return { buf, mem, drv, q };
}

test('simple readable chain round trip', (t) => {
  const p = pair();
  bytes(p, DATA, 4).set([1, 2, 3, 4]);
  const head = p.drv.add([{ gpa: DATA, len: 4 }], []);
  t.is(typeof head, 'number');
  t.true(p.drv.kickNeeded());
  const c = p.q.pop()!;
  t.is(c.head, head as number);
  t.is(c.readableLen, 4);
  t.is(c.writableLen, 0);
  t.deepEqual([...readChain(c)], [1, 2, 3, 4]);
  t.is(p.q.pop(), null);
  t.is(p.q.inFlight, 1);
  p.q.pushUsed(c.head, 0);
  t.is(p.q.inFlight, 0);
  t.deepEqual(p.drv.getUsed(), [{ head: head!, len: 0 }]);
  t.is(p.q.nextAvail, 1);
  t.is(p.q.nextUsed, 1);
});

test('a chain without writable buffers shares the one empty list, frozen: a stray push throws instead of reaching every later chain', (t) => {
  const p = pair();
  p.drv.add([{ gpa: DATA, len: 4 }], []);
  p.drv.add([{ gpa: DATA, len: 4 }], []);
  const a = p.q.pop()!;
  const b = p.q.pop()!;
  t.is(a.writable, b.writable, 'one shared empty list');
  t.true(Object.isFrozen(a.writable));
  t.throws(() => (a.writable as Uint8Array[]).push(new Uint8Array(1)), { instanceOf: TypeError });
  t.is(b.writable.length, 0, 'the other chain still has no writable buffer');
  t.is(b.writableLen, 0);
});

test('readable + writable chain: scatter, used len, driver sees bytes', (t) => {
  const p = pair();
  bytes(p, DATA, 3).set([9, 8, 7]);
  const head = p.drv.add(
    [
      { gpa: DATA, len: 2 },
      { gpa: DATA + 2, len: 1 },
    ],
    [
      { gpa: DATA + 0x100, len: 3 },
      { gpa: DATA + 0x200, len: 5 },
    ],
  )!;
  const c = p.q.pop()!;
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
  t.deepEqual(p.drv.getUsed(), [{ head, len: 8 }]);
  t.throws(() => p.q.pushUsed(c.head, 0), { message: /virtqueue 3: pushUsed of head \d+, which is not in flight/ });
  const h2 = p.drv.add([], [{ gpa: DATA, len: 4 }])!;
  p.q.pop();
  t.throws(() => p.q.pushUsed(h2, 5), { instanceOf: RangeError, message: /exceeds the chain's 4 writable bytes/ });
  t.false(p.q.broken, 'device-side misuse does not break the queue');
});

test('ring full: add returns null; buffers spanning two regions give two slices', (t) => {
  const size = 4;
  const hi = new ArrayBuffer(0x1000);
  const { buf, mem } = guestRam([region(MEM, hi)]);
  const drv = new SplitDriverRing({ size, memory: new Uint8Array(buf, RING, 0x1000), gpa: RING, eventIdx: false });
  const q = new SplitQueue({ index: Q, memory: mem, size, descGpa: drv.descGpa, availGpa: drv.availGpa, usedGpa: drv.usedGpa, eventIdx: false, indirectDesc: false });
  t.not(drv.add([], [{ gpa: MEM - 2, len: 6 }]), null);
  t.not(drv.add([{ gpa: DATA, len: 1 }], [{ gpa: DATA, len: 1 }, { gpa: DATA, len: 1 }]), null);
  t.is(drv.add([{ gpa: DATA, len: 1 }], []), null, 'all 4 descriptors in use');
  const c = q.pop()!;
  t.is(c.writable.length, 2);
  t.is(c.writable[0].buffer, buf);
  t.is(c.writable[1].buffer, hi);
  q.writeChain(c, new Uint8Array([1, 2, 3, 4, 5, 6]));
  t.deepEqual([...new Uint8Array(hi, 0, 4)], [3, 4, 5, 6]);
});

test('indirect descriptors round trip', (t) => {
  const p = pair({ indirectEntries: 4 });
  bytes(p, DATA, 2).set([5, 6]);
  const head = p.drv.add([{ gpa: DATA, len: 2 }], [{ gpa: DATA + 0x10, len: 4 }, { gpa: DATA + 0x20, len: 4 }], { indirect: true })!;
  t.is(p.drv.numFree, 7, 'one ring descriptor for the whole request');
  const c = p.q.pop()!;
  t.is(c.head, head);
  t.deepEqual([...readChain(c)], [5, 6]);
  t.is(c.writableLen, 8);
  p.q.writeChain(c, new Uint8Array([1, 2, 3, 4, 5]));
  p.q.pushUsed(head, 5);
  t.deepEqual(p.drv.getUsed(), [{ head, len: 5 }]);
  t.is(bytes(p, DATA + 0x20, 1)[0], 5);
  t.is(p.drv.numFree, 8);
});

test('EVENT_IDX, device -> driver: used_event decides the interrupt', (t) => {
  const p = pair({ eventIdx: true });
  const run = () => {
    const h = p.drv.add([{ gpa: DATA, len: 1 }], [])!;
    const c = p.q.pop()!;
    p.q.pushUsed(c.head, 0);
    return h;
  };
  t.false(p.q.needsNotification(), 'nothing used yet');
  run(); // used_event = 0 initially: crossing it wants an interrupt
  t.true(p.q.needsNotification());
  run(); // driver has not reaped, used_event still 0: already signalled past it
  t.false(p.q.needsNotification());
  t.is(p.drv.getUsed().length, 2); // used_event := 2
  run();
  run();
  t.true(p.q.needsNotification(), 'batch of two crossing used_event 2 -> one interrupt');
  p.drv.getUsed();
  p.drv.disableInterrupts();
  run();
  t.false(p.q.needsNotification(), 'driver parked used_event');
  t.true(p.drv.enableInterrupts(), 'an entry arrived while interrupts were off');
  p.drv.getUsed();
  run();
  t.true(p.q.needsNotification());
});

test('EVENT_IDX, driver -> device: avail_event and the enable re-check', (t) => {
  const p = pair({ eventIdx: true });
  p.drv.add([{ gpa: DATA, len: 1 }], []);
  t.true(p.drv.kickNeeded(), 'avail_event 0 crossed');
  p.drv.add([{ gpa: DATA, len: 1 }], []);
  t.false(p.drv.kickNeeded(), 'device has not asked again');
  p.q.disableNotifications();
  while (p.q.pop()) {
    /* drain */
  }
  t.false(p.q.enableNotifications(), 'nothing new since draining'); // avail_event := 2
  p.drv.add([{ gpa: DATA, len: 1 }], []);
  t.true(p.drv.kickNeeded());
  // Race: the driver adds after the device drained but before it re-enabled.
  p.q.pop();
  p.drv.add([{ gpa: DATA, len: 1 }], []);
  t.false(p.drv.kickNeeded(), 'avail_event still 2: no kick for index 3');
  t.true(p.q.enableNotifications(), 'the re-check catches it');
  t.not(p.q.pop(), null);
});

test('no EVENT_IDX: NO_NOTIFY and NO_INTERRUPT flags', (t) => {
  const p = pair();
  p.q.disableNotifications();
  p.drv.add([{ gpa: DATA, len: 1 }], []);
  t.false(p.drv.kickNeeded());
  t.true(p.q.enableNotifications(), 'a buffer is waiting');
  p.drv.add([{ gpa: DATA, len: 1 }], []);
  t.true(p.drv.kickNeeded());
  p.q.pushUsed(p.q.pop()!.head, 0);
  t.true(p.q.needsNotification());
  t.false(p.q.needsNotification(), 'nothing new since');
  p.drv.disableInterrupts();
  p.q.pushUsed(p.q.pop()!.head, 0);
  t.false(p.q.needsNotification());
  t.true(p.drv.enableInterrupts());
});

test('16-bit index wraparound over 70000 requests', (t) => {
  for (const eventIdx of [false, true]) {
    const p = pair({ size: 4, eventIdx });
    let kicks = 0;
    let irqs = 0;
    for (let i = 0; i < 70000; i++) {
      const h = p.drv.add([{ gpa: DATA, len: 4 }], [{ gpa: DATA + 8, len: 4 }])!;
      if (p.drv.kickNeeded()) kicks++;
      const c = p.q.pop()!;
      t.is(c.head, h);
      p.q.pushUsed(c.head, p.q.writeChain(c, new Uint8Array([i & 0xff, 0, 0, 0])));
      if (p.q.needsNotification()) irqs++;
      const u = p.drv.getUsed();
      if (u.length !== 1 || u[0].head !== h || u[0].len !== 4) t.fail(`round ${i}: ${JSON.stringify(u)}`);
      p.q.enableNotifications();
    }
    t.is(p.q.nextAvail, 70000 & 0xffff);
    t.is(p.q.nextUsed, 70000 & 0xffff);
    t.is(bytes(p, DATA + 8, 1)[0], 69999 & 0xff);
    t.is(kicks, 70000);
    t.is(irqs, 70000);
  }
});

// ---- Hostile rings: descriptors and indices written by hand. ----

interface Raw {
  buf: ArrayBuffer;
  dv: DataView;
  mem: GuestMemory;
  q: SplitQueue;
  size: number;
  desc(i: number, addr: number, len: number, flags: number, next?: number, table?: number): void;
  publish(...heads: number[]): void;
  setAvailIdx(n: number): void;
}

function raw(opts: { size?: number; indirectDesc?: boolean; base?: number; extra?: RegionSpec[] } = {}): Raw {
  const size = opts.size ?? 8;
  const { buf, mem } = guestRam(opts.extra);
  const dv = new DataView(buf);
  const lay = SplitDriverRing.layoutFor(size);
  const availGpa = RING + lay.availOffset;
  let idx = opts.base ?? 0;
  dv.setUint16(availGpa + 2, idx, true);
  dv.setUint16(RING + lay.usedOffset + 2, idx, true);
  const q = new SplitQueue({
    index: Q,
    memory: mem,
    size,
    descGpa: RING,
    availGpa,
    usedGpa: RING + lay.usedOffset,
    eventIdx: false,
    indirectDesc: opts.indirectDesc ?? true,
    nextAvail: opts.base,
  });
  return {
    buf,
    dv,
    mem,
    q,
    size,
    desc(i, addr, len, flags, next = 0, table = RING) {
      const o = table + 16 * i;
      dv.setUint32(o, addr % 2 ** 32, true);
      dv.setUint32(o + 4, Math.floor(addr / 2 ** 32), true);
      dv.setUint32(o + 8, len, true);
      dv.setUint16(o + 12, flags, true);
      dv.setUint16(o + 14, next, true);
    },
    publish(...heads) {
      for (const h of heads) {
        dv.setUint16(availGpa + 4 + 2 * (idx % size), h, true);
        idx = (idx + 1) & 0xffff;
      }
      dv.setUint16(availGpa + 2, idx, true);
    },
    setAvailIdx(n) {
      idx = n;
      dv.setUint16(availGpa + 2, n, true);
    },
  };
}

function faults(t: ExecutionContext, r: Raw, re: RegExp): QueueFault {
  return popFaults(t, r.q, re);
}

test('fault: descriptor loop', (t) => {
  const r = raw();
  r.desc(0, DATA, 1, NEXT, 1);
  r.desc(1, DATA, 1, NEXT, 0);
  r.publish(0);
  const e = faults(t, r, /chain longer than queue size 8 \(loop\?\)/);
  t.is(e.availIndex, 0);
  t.is(e.head, 0);
  t.regex(e.message, /avail index 0, head 0, descriptor \d/);
});

test('fault: chain longer than the queue inside an indirect table', (t) => {
  const r = raw();
  const T = DATA + 0x1000;
  r.desc(0, T, 4 * 16, INDIRECT);
  for (let i = 0; i < 4; i++) r.desc(i, DATA, 1, NEXT, (i + 1) % 4, T);
  r.publish(0);
  faults(t, r, /indirect chain longer than its table's 4 entries/);
});

test('fault: head index out of range', (t) => {
  const r = raw();
  r.publish(8);
  faults(t, r, /head descriptor index 8 >= queue size 8.*avail index 0/);
});

test('fault: next index out of range', (t) => {
  const r = raw();
  r.desc(2, DATA, 1, NEXT, 200);
  r.publish(2);
  faults(t, r, /descriptor 2: next index 200 >= queue size 8/);
});

test('fault: indirect next index beyond its table', (t) => {
  const r = raw();
  const T = DATA + 0x1000;
  r.desc(0, T, 32, INDIRECT);
  r.desc(0, DATA, 1, NEXT, 2, T);
  r.publish(0);
  faults(t, r, /indirect table entry 0: next index 2 >= indirect table size 2/);
});

test('fault: nested indirect', (t) => {
  const r = raw();
  const T = DATA + 0x1000;
  r.desc(0, T, 32, INDIRECT);
  r.desc(0, DATA, 1, NEXT, 1, T);
  r.desc(1, T, 32, INDIRECT, 0, T);
  r.publish(0);
  faults(t, r, /indirect descriptor inside an indirect table \(entry 1\)/);
});

for (const len of [0, 24, 17]) {
  test(`fault: indirect table length ${len}`, (t) => {
    const r = raw();
    r.desc(5, DATA + 0x1000, len, INDIRECT);
    r.publish(5);
    faults(t, r, new RegExp(`indirect table length ${len} is not a multiple of 16.*descriptor 5`));
  });
}

test('fault: indirect table outside memory', (t) => {
  const r = raw();
  r.desc(0, MEM - 16, 32, INDIRECT);
  r.publish(0);
  faults(t, r, /indirect table \[0xffff0, \+32\) outside guest memory/);
});

test('fault: INDIRECT without the feature, INDIRECT with NEXT', (t) => {
  const r = raw({ indirectDesc: false });
  r.desc(0, DATA, 16, INDIRECT);
  r.publish(0);
  faults(t, r, /INDIRECT but VIRTIO_F_INDIRECT_DESC was not negotiated/);
  const r2 = raw();
  r2.desc(0, DATA, 16, INDIRECT | NEXT, 1);
  r2.publish(0);
  faults(t, r2, /both INDIRECT and NEXT/);
});

test('an indirect table split across two regions is read correctly', (t) => {
  const hi = new ArrayBuffer(0x1000);
  const r = raw({ extra: [region(MEM, hi)] });
  const T = MEM - 16; // entry 0 in the low region, entry 1 in the high one
  r.desc(0, T, 32, INDIRECT);
  r.desc(0, DATA, 3, NEXT, 1, T);
  const hv = new DataView(hi);
  hv.setUint32(0, DATA + 0x10, true);
  hv.setUint32(8, 5, true);
  hv.setUint16(12, WRITE, true);
  r.publish(0);
  const c = r.q.pop()!;
  t.is(c.readableLen, 3);
  t.deepEqual(c.writableRanges, [{ gpa: DATA + 0x10, len: 5 }]);
});

for (const [name, addr, len, re] of [
  ['beyond the end of memory', MEM - 4, 8, /descriptor 1: buffer \[0xffffc, \+8\) outside guest memory/],
  ['in no region', 0x10000000, 1, /buffer \[0x10000000, \+1\) outside guest memory/],
  ['at or above 2^53', 2 ** 60, 1, /address 0x1000000000000000 outside guest memory/],
  ['wrapping past 2^53', 2 ** 53 - 2, 4, /outside guest memory/],
] as const) {
  test(`fault: buffer address ${name}`, (t) => {
    const r = raw();
    r.desc(0, DATA, 1, NEXT, 1);
    r.desc(1, addr, len, WRITE);
    r.publish(0);
    faults(t, r, re);
  });
}

test('fault: total length overflows u32', (t) => {
  // 4 GiB of "memory" at 4 GiB: every window aliases one lazily-committed 1 GiB buffer.
  const win = new ArrayBuffer(2 ** 30);
  const big: Backing = { size: 2 ** 32, window: () => win };
  const r = raw({ extra: [{ guestPhysAddr: 2 ** 32, size: 2 ** 32, userspaceAddr: 2 ** 40, mmapOffset: 0, backing: big }] });
  r.desc(0, 2 ** 32, 0xffffffff, NEXT, 1);
  r.desc(1, 2 ** 32, 1, 0);
  r.publish(0);
  faults(t, r, /readable length of the chain overflows u32.*descriptor 1/);
});

test('fault: readable after writable', (t) => {
  const r = raw();
  r.desc(0, DATA, 4, WRITE | NEXT, 1);
  r.desc(1, DATA, 4, 0);
  r.publish(0);
  faults(t, r, /descriptor 1 is device-readable after a writable descriptor/);
});

test('fault: readable after a zero-length writable descriptor (no view, and no range kept while not logging)', (t) => {
  const r = raw();
  r.desc(0, DATA, 0, WRITE | NEXT, 1);
  r.desc(1, DATA, 4, 0);
  r.publish(0);
  faults(t, r, /descriptor 1 is device-readable after a writable descriptor/);
});

test('fault: avail idx jumps more than the queue size ahead (or backwards)', (t) => {
  const r = raw();
  r.setAvailIdx(9);
  faults(t, r, /avail idx jumped to 9, 9 entries ahead of 0 \(queue size 8\)/);
  const r2 = raw({ base: 5 });
  r2.setAvailIdx(4);
  faults(t, r2, /65535 entries ahead of 5/);
});

test('fault: a head already in flight', (t) => {
  const r = raw();
  r.desc(0, DATA, 4, 0);
  r.publish(0, 0);
  t.is(r.q.pop()!.head, 0);
  faults(t, r, /head 0 is already in flight.*avail index 1/);
});

test('a full queue of avail entries is fine; SET_VRING_BASE near the wrap', (t) => {
  const r = raw({ base: 0xfffe });
  for (let i = 0; i < 8; i++) r.desc(i, DATA + i, 1, WRITE);
  r.publish(0, 1, 2, 3, 4, 5, 6, 7);
  for (let i = 0; i < 8; i++) r.q.pushUsed(r.q.pop()!.head, 1);
  t.is(r.q.pop(), null);
  t.is(r.q.nextAvail, 6);
  t.is(r.q.nextUsed, 6);
  t.is(r.dv.getUint16(RING + SplitDriverRing.layoutFor(8).usedOffset + 2, true), 6);
  t.false(r.q.broken);
});

test('zero-length descriptors are accepted and produce no slices', (t) => {
  const r = raw();
  r.desc(0, DATA, 0, NEXT, 1);
  r.desc(1, 2 ** 52, 0, WRITE); // a zero-length buffer touches no memory
  r.publish(0);
  const c = r.q.pop()!;
  t.deepEqual([c.readable.length, c.writable.length, c.readableLen, c.writableLen], [0, 0, 0, 0]);
});

// ---- Setup, memory changes, dirty logging ----

test('setup errors: size, alignment, rings outside memory', (t) => {
  const { mem: memory } = guestRam();
  const base = { index: Q, memory, size: 8, descGpa: RING, availGpa: RING + 128, usedGpa: RING + 256, eventIdx: true, indirectDesc: false };
  t.notThrows(() => new SplitQueue(base));
  t.throws(() => new SplitQueue({ ...base, size: 12 }), { instanceOf: QueueSetupError, message: /virtqueue 3: queue size 12/ });
  t.throws(() => new SplitQueue({ ...base, size: 65536 }), { instanceOf: QueueSetupError });
  t.throws(() => new SplitQueue({ ...base, descGpa: RING + 8 }), { instanceOf: QueueSetupError, message: /not 16-byte aligned/ });
  t.throws(() => new SplitQueue({ ...base, usedGpa: RING + 258 }), { instanceOf: QueueSetupError, message: /not 4-byte aligned/ });
  t.throws(() => new SplitQueue({ ...base, usedGpa: MEM - 16 }), { instanceOf: QueueSetupError, message: /used ring \[0xffff0, \+70\) is not contiguous guest memory/ });
  t.throws(() => new SplitQueue({ ...base, descGpa: 2 * MEM }), { instanceOf: QueueSetupError, message: /descriptor table/ });
  t.throws(() => new SplitQueue({ ...base, nextAvail: 70000 }), { instanceOf: QueueSetupError, message: /vring base 70000/ });
});

test('removing the region under a running ring breaks the queue with a clear fault', (t) => {
  const { mem: memory } = guestRam([region(MEM, new ArrayBuffer(0x1000))]);
  const q = new SplitQueue({ index: Q, memory, size: 8, descGpa: RING, availGpa: RING + 128, usedGpa: RING + 256, eventIdx: false, indirectDesc: false });
  t.is(q.pop(), null);
  memory.removeRegion({ guestPhysAddr: MEM, size: 0x1000 });
  t.is(q.pop(), null, 'an unrelated region going away is harmless');
  memory.removeRegion({ guestPhysAddr: 0, size: MEM });
  t.throws(() => q.pop(), { instanceOf: QueueFault, message: /virtqueue 3: descriptor table \[0x10000, \+128\) is not contiguous guest memory/ });
  t.true(q.broken);
});

test('dirty logging: written buffers and used ring (at log_guest_addr) are marked', (t) => {
  const { log, logArea } = dirtyLog();
  const USED_LOG = 0x80000; // log_guest_addr differs from where we found the ring
  const p = pair({ eventIdx: true, log, usedLogGpa: USED_LOG });
  p.drv.add([{ gpa: DATA, len: 4 }], [{ gpa: DATA + 0x1ffe, len: 4 }, { gpa: DATA + 0x5000, len: 8 }]);
  const c = p.q.pop()!;
  t.deepEqual([...new Uint8Array(logArea)].filter((b) => b !== 0), [], 'popping writes nothing');
  p.q.writeChain(c, new Uint8Array(3));
  t.true(log.isDirty(page(DATA + 0x1ffe)));
  t.true(log.isDirty(page(DATA + 0x2000)));
  t.false(log.isDirty(page(DATA + 0x5000)), 'writeChain stopped before the second buffer');
  p.q.pushUsed(c.head, 6); // the device wrote 2 bytes of the second buffer directly
  t.true(log.isDirty(page(DATA + 0x5000)));
  t.false(log.isDirty(page(DATA)), 'readable buffer not marked');
  t.true(log.isDirty(page(USED_LOG)));
  t.false(log.isDirty(page(p.drv.usedGpa)), 'used ring logged at log_guest_addr, not its own GPA');
  p.q.setLog(null);
  p.drv.add([{ gpa: DATA, len: 4 }], [{ gpa: DATA + 0x9000, len: 8 }]);
  const c2 = p.q.pop()!;
  p.q.writeChain(c2, new Uint8Array(8));
  p.q.pushUsed(c2.head, 8);
  t.false(log.isDirty(page(DATA + 0x9000)), 'logging off');
});

test('dirty logging switched on while chains are in flight: what they write is marked', (t) => {
  const { log } = dirtyLog();
  const p = pair();
  p.drv.add([{ gpa: DATA, len: 4 }], [{ gpa: DATA + 0x3000, len: 8 }, { gpa: DATA + 0x6ffe, len: 4 }]);
  p.drv.add([], [{ gpa: DATA + 0xa000, len: 0 }, { gpa: DATA + 0xb000, len: 2 }]);
  const c = p.q.pop()!;
  const c2 = p.q.pop()!;
  t.is(c.ranges, null, 'popped while not logging: no ranges kept');
  p.q.setLog(log);
  // Taken at setLog from the views (zero-length descriptors have none and are left out).
  t.deepEqual(c.ranges, [
    { gpa: DATA + 0x3000, len: 8 },
    { gpa: DATA + 0x6ffe, len: 4 },
  ]);
  t.deepEqual(c2.ranges, [{ gpa: DATA + 0xb000, len: 2 }]);
  p.q.writeChain(c, new Uint8Array(10));
  t.true(log.isDirty(page(DATA + 0x3000)));
  t.true(log.isDirty(page(DATA + 0x6ffe)));
  t.false(log.isDirty(page(DATA + 0x7000)), 'only the bytes written');
  p.q.pushUsed(c.head, 12);
  t.true(log.isDirty(page(DATA + 0x7000)), 'pushUsed marks the used length');
  p.q.pushUsed(c2.head, 2);
  t.true(log.isDirty(page(DATA + 0xb000)));
  t.false(log.isDirty(page(DATA + 0xa000)));
  // Popped while logging: kept at pop, zero-length descriptors included (as the walk saw them).
  p.drv.add([], [{ gpa: DATA + 0xc000, len: 0 }, { gpa: DATA + 0xd000, len: 2 }]);
  const c3 = p.q.pop()!;
  t.deepEqual(c3.writableRanges, [
    { gpa: DATA + 0xc000, len: 0 },
    { gpa: DATA + 0xd000, len: 2 },
  ]);
  p.q.pushUsed(c3.head, 2);
  t.true(log.isDirty(page(DATA + 0xd000)));
});

test('zeroChain: zeros from an offset across the writable buffers, bounded by them, and logs what it wrote', (t) => {
  const { log } = dirtyLog();
  const p = pair({ log });
  bytes(p, DATA + 0x1ffc, 8).fill(0xff);
  bytes(p, DATA + 0x5000, 12).fill(0xff);
  p.drv.add([{ gpa: DATA, len: 4 }], [{ gpa: DATA + 0x1ffe, len: 4 }, { gpa: DATA + 0x5000, len: 8 }]);
  const c = p.q.pop()!;
  t.is(p.q.zeroChain(c, 2, 7), 7);
  t.deepEqual([...bytes(p, DATA + 0x1ffc, 8)], [0xff, 0xff, 0xff, 0xff, 0, 0, 0xff, 0xff], 'the first buffer from its third byte');
  t.deepEqual([...bytes(p, DATA + 0x5000, 12)], [0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], 'then the second');
  t.false(log.isDirty(page(DATA + 0x1ffe)), 'the skipped bytes are not logged');
  t.true(log.isDirty(page(DATA + 0x2000)));
  t.true(log.isDirty(page(DATA + 0x5000)));
  t.is(p.q.zeroChain(c, 10, 100), 2, 'bounded by the writable bytes');
  t.deepEqual([...bytes(p, DATA + 0x5000, 12)], [0, 0, 0, 0, 0, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff], 'the last 2 bytes of the second buffer, nothing past it');
  t.is(p.q.zeroChain(c, 12, 5), 0, 'nothing past the end');
  p.q.pushUsed(c.head, 12);
});
