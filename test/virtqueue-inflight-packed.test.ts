// The packed queue recording into a packed inflight region (INFLIGHT_SHMFD) and a fresh queue
// recovering from it, as a back-end restarted after a crash does: out-of-order completions of
// multi-descriptor and indirect chains across ring wraps, a back-end killed in the middle of a
// pop or a push (before and after the used descriptor reached the ring), and regions that are
// refused because their lists contradict themselves. "Killed" is a region whose hook throws at
// that step, so the area holds exactly what a dead back-end's would.
import test from 'ava';
import { DATA, Q, RING, bytes, guestRam } from './helpers/ring-memory.ts';
import { PackedQueue, type PackedDescriptorChain } from '../host/virtqueue/packed.ts';
import { PackedDriverRing } from '../host/frontend/rings/packed.ts';
import { readChain } from '../host/virtqueue/split.ts';
import { INFLIGHT_VERSION, InflightAreaError } from '../host/virtqueue/inflight.ts';
import { PackedInflightRegion, packedInflightRegionBytes } from '../host/virtqueue/inflight-packed.ts';

const SIZE = 8;
class Killed extends Error {}

function setup() {
  const { buf, mem } = guestRam();
  const drv = new PackedDriverRing({ size: SIZE, memory: new Uint8Array(buf, RING, PackedDriverRing.layoutFor(SIZE, 4).bytes), gpa: RING, eventIdx: false, indirectEntries: 4 });
  const area = new Uint8Array(packedInflightRegionBytes(SIZE));
  /** A queue as a (re)started back-end builds it; after a crash QEMU sends avail = used = its last used position. */
  const bare = (used = { idx: 0, wrap: true }) =>
    new PackedQueue({
      index: Q,
      memory: mem,
      size: SIZE,
      descGpa: drv.descGpa,
      driverEventGpa: drv.driverEventGpa,
      deviceEventGpa: drv.deviceEventGpa,
      eventIdx: false,
      indirectDesc: true,
      nextAvail: used.idx,
      availWrap: used.wrap,
      nextUsed: used.idx,
      usedWrap: used.wrap,
    });
  const queue = (used?: { idx: number; wrap: boolean }, region = new PackedInflightRegion(area, SIZE, Q)) => {
    const q = bare(used);
    return { q, region, restored: q.restoreInflight(region) };
  };
  let n = 0;
  /** A request of `descs` readable buffers (or one indirect descriptor) whose first bytes say `tag`. */
  const add = (tag: string, descs = 2, indirect = false) => {
    const bufs = Array.from({ length: descs }, (_, i) => {
      const gpa = DATA + 256 * (n++ % 512);
      bytes({ buf }, gpa, 16).set(new TextEncoder().encode(`${tag}.${i}`.padEnd(16, ' ')));
      return { gpa, len: 16 };
    });
    const id = drv.add(bufs, [], { indirect });
    if (id === null) throw new Error('driver ring full');
    return id;
  };
  const text = (c: PackedDescriptorChain) => new TextDecoder().decode(readChain(c)).replace(/ +/g, '');
  /** The driver's view of the used ring: throws if a buffer id comes back that is not in flight (a double completion). */
  const used = () => drv.getUsed().map((u) => u.head);
  return { drv, area, bare, queue, add, text, used };
}

test('out-of-order completions across wraps, then a crash: the successor resubmits what was in flight, oldest first, each once', (t) => {
  const s = setup();
  const first = s.queue();
  t.is(first.region.version, INFLIGHT_VERSION, 'a fresh region is initialised at ring start');
  // Several laps of in-order traffic first, so the wrap counters have flipped.
  for (let i = 0; i < 10; i++) {
    s.add(`warm${i}`, 3);
    const c = first.q.pop()!;
    first.q.pushUsed(c.head, 0);
    t.is(s.used().length, 1);
  }
  t.false(first.q.usedWrapCounter, 'the ring is on its second lap');
  const ids = [s.add('a', 2), s.add('b', 1), s.add('c', 1, true), s.add('d', 2)];
  const chains = ids.map(() => first.q.pop()!);
  t.deepEqual(chains.map((c) => c.head), ids);
  t.deepEqual(chains.map(s.text), ['a.0a.1', 'b.0', 'c.0', 'd.0d.1']);
  t.deepEqual(first.region.inflightIds(), [...ids].sort((a, b) => a - b));
  // b and d complete; a and c (an indirect one) are still running when the back-end dies.
  first.q.pushUsed(ids[1], 0);
  first.q.pushUsed(ids[3], 0);
  t.deepEqual(s.used(), [ids[1], ids[3]]);
  t.is(first.q.overtaken, 2, 'b and d each overtook a, still in flight (the warm-up laps, in order, overtook nothing)');
  t.deepEqual(first.region.inflightIds(), [ids[0], ids[2]].sort((a, b) => a - b));
  // The driver refills the slots the used descriptors freed: the ring no longer holds a's descriptors in order.
  const e = s.add('e', 1);

  // The front-end can only say where the used index is (it restarts avail there too).
  const next = s.queue({ idx: s.drv.usedIndex, wrap: s.drv.usedWrapCounter });
  t.deepEqual(next.restored.chains.map((c) => c.head), [ids[0], ids[2]]);
  t.deepEqual(next.restored.chains.map(s.text), ['a.0a.1', 'c.0'], 'rebuilt from the region, indirect table included');
  t.is(next.restored.recovery.ownedSlots, 3);
  for (const c of next.restored.chains) next.q.pushUsed(c.head, 0);
  const popped = next.q.pop()!;
  t.is(popped.head, e, 'the next pop is the new request, not one already resubmitted');
  t.is(s.text(popped), 'e.0');
  next.q.pushUsed(e, 0);
  t.is(next.q.pop(), null);
  t.is(next.q.overtaken, 0, 'resubmitted and new requests completed in the order they were taken');
  t.deepEqual(s.used(), [ids[0], ids[2], e], 'each request completed exactly once');
  t.deepEqual(next.region.inflightIds(), []);
});

test('killed after the used descriptor reached the ring but before the region caught up: the request counts as done', (t) => {
  const s = setup();
  class KillAfterPublish extends PackedInflightRegion {
    override usedEnd(): void {
      throw new Killed();
    }
  }
  const first = s.queue(undefined, new KillAfterPublish(s.area, SIZE, Q));
  const [a, b] = [s.add('a', 2), s.add('b', 2)];
  first.q.pop();
  first.q.pop();
  t.throws(() => first.q.pushUsed(b, 0), { instanceOf: Killed });
  t.deepEqual(s.used(), [b], 'the driver saw b complete');
  const next = s.queue({ idx: s.drv.usedIndex, wrap: s.drv.usedWrapCounter });
  t.true(next.restored.recovery.committedPush);
  t.deepEqual(next.restored.chains.map((c) => c.head), [a], 'b is not run again');
  next.q.pushUsed(a, 0);
  t.deepEqual(s.used(), [a]);
  t.is(next.q.pop(), null);
});

test('killed during a push before the used descriptor was written: rolled back, the request runs again once', (t) => {
  const s = setup();
  class KillBeforePublish extends PackedInflightRegion {
    override usedBegin(id: number): void {
      super.usedBegin(id);
      throw new Killed();
    }
  }
  const first = s.queue(undefined, new KillBeforePublish(s.area, SIZE, Q));
  const [a, b] = [s.add('a', 1), s.add('b', 3)];
  first.q.pop();
  first.q.pop();
  t.throws(() => first.q.pushUsed(b, 0), { instanceOf: Killed });
  t.deepEqual(s.used(), [], 'nothing reached the driver');
  const next = s.queue({ idx: s.drv.usedIndex, wrap: s.drv.usedWrapCounter });
  t.true(next.restored.recovery.rolledBack);
  t.false(next.restored.recovery.committedPush);
  t.deepEqual(next.restored.chains.map((c) => c.head), [a, b]);
  t.deepEqual(next.restored.chains.map(s.text), ['a.0', 'b.0b.1b.2']);
  for (const c of next.restored.chains) next.q.pushUsed(c.head, 0);
  t.deepEqual(s.used(), [a, b]);
});

test('killed in the middle of a pop: the half-recorded request is not resubmitted but taken from the ring again', (t) => {
  const s = setup();
  class KillInPop extends PackedInflightRegion {
    kill = false;
    override popped(id: number): void {
      if (this.kill) throw new Killed();
      super.popped(id);
    }
  }
  const region = new KillInPop(s.area, SIZE, Q);
  const first = s.queue(undefined, region);
  const [a, b] = [s.add('a', 2), s.add('b', 2)];
  first.q.pop();
  region.kill = true;
  t.throws(() => first.q.pop(), { instanceOf: Killed });
  const next = s.queue({ idx: s.drv.usedIndex, wrap: s.drv.usedWrapCounter });
  t.true(next.restored.recovery.rolledBack);
  t.deepEqual(next.restored.chains.map((c) => c.head), [a]);
  const again = next.q.pop()!;
  t.is(again.head, b);
  t.is(s.text(again), 'b.0b.1');
  next.q.pushUsed(b, 0);
  next.q.pushUsed(a, 0);
  t.deepEqual(s.used(), [b, a]);
});

/** A region with two requests in flight (a: 2 descriptors, b: 1), taken after a crash; `mutate` corrupts it. */
function corrupted(mutate: (dv: DataView, area: Uint8Array) => void) {
  const s = setup();
  const first = s.queue();
  s.add('a', 2);
  s.add('b', 1);
  first.q.pop();
  first.q.pop();
  const dv = new DataView(s.area.buffer);
  mutate(dv, s.area);
  const before = s.area.slice();
  return { s, before, restore: () => s.bare().restoreInflight(new PackedInflightRegion(s.area, SIZE, Q)) };
}
const ENTRY = (e: number) => 32 + 32 * e;

test('regions whose lists contradict themselves or the ring are refused and left unchanged', (t) => {
  const cases: [string, (dv: DataView, a: Uint8Array) => void, RegExp][] = [
    ['a version this back-end does not read', (dv) => dv.setUint16(8, 3, true), /packed inflight region version is 3/],
    ['desc_num other than the ring size', (dv) => dv.setUint16(10, 16, true), /tracks 16 descriptors but the ring has 8/],
    ['free_head beyond the entries', (dv) => dv.setUint16(14, 9, true), /old_free_head 9 is beyond the 8 entries/],
    ['used_idx outside the ring', (dv) => dv.setUint16(18, 8, true), /old_used_idx 8 is not below the ring size 8/],
    ['a wrap counter that is no bit', (_dv, a) => (a[21] = 2), /old_used_wrap_counter is 2, not 0 or 1/],
    ['an inflight flag that is no bit', (_dv, a) => (a[ENTRY(5)] = 7), /inflight flag of entry 5 is 7/],
    ['a free list that loops', (dv) => dv.setUint16(ENTRY(4) + 2, 3, true), /free list runs into entry 3 twice/],
    ['a chain that runs into the free list', (dv) => dv.setUint16(ENTRY(0) + 2, 5, true), /chain runs into entry 5, which is free/],
    ['a chain whose last does not match', (dv) => dv.setUint16(ENTRY(0) + 4, 6, true), /chain ends at entry 1, but its last says 6/],
    ['a chain of no descriptors', (dv) => dv.setUint16(ENTRY(2) + 6, 0, true), /entry 2 claims 0 descriptors/],
    ['a buffer id outside the ring', (dv) => dv.setUint16(ENTRY(2) + 16, 8, true), /buffer id 8 is not below the ring size 8/],
    ['two heads with one buffer id', (dv) => dv.setUint16(ENTRY(2) + 16, dv.getUint16(ENTRY(0) + 16, true), true), /is in flight twice/],
    ['a descriptor that should continue the chain and does not', (dv) => dv.setUint16(ENTRY(0) + 18, 0, true), /descriptor 0 of 2 lacks NEXT/],
    ['an entry neither free nor in flight', (_dv, a) => (a[ENTRY(2)] = 0), /holds 2 descriptors in flight and 5 free entries, not its 8/],
    ['a used index where the ring holds no available descriptor', (dv) => (dv.setUint16(16, 5, true), dv.setUint16(18, 5, true)), /not available/],
  ];
  for (const [what, mutate, why] of cases) {
    const c = corrupted(mutate);
    t.throws(c.restore, { instanceOf: InflightAreaError, message: why }, what);
    t.deepEqual(c.s.area, c.before, `${what}: the region is left as it was`);
  }
  // The same region, intact, is taken.
  const ok = corrupted(() => {});
  t.is(ok.restore().chains.length, 2);
});
