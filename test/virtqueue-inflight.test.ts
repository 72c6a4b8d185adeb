// The split queue recording into an inflight region (INFLIGHT_SHMFD) and a fresh queue
// recovering from it, as a back-end restarted after a crash does: out-of-order completions,
// resubmission in counter order, and an interrupted used-ring update of more than one element.
import test from 'ava';
import { DATA, Q, RING, guestRam } from './helpers/ring-memory.ts';
import { SplitQueue } from '../host/virtqueue/split.ts';
import { SplitDriverRing } from '../host/frontend/rings/split.ts';
import { INFLIGHT_VERSION, InflightAreaError, SplitInflightRegion, splitInflightRegionBytes } from '../host/virtqueue/inflight.ts';

const SIZE = 8;

function setup() {
  const { buf, mem } = guestRam();
  const drv = new SplitDriverRing({ size: SIZE, memory: new Uint8Array(buf, RING, SplitDriverRing.layoutFor(SIZE, 0).bytes), gpa: RING, eventIdx: false });
  const area = new Uint8Array(splitInflightRegionBytes(SIZE));
  /** A queue as a (re)started back-end builds it: the front-end's base, then the region. */
  const bare = (nextAvail: number) =>
    new SplitQueue({ index: Q, memory: mem, size: SIZE, descGpa: drv.descGpa, availGpa: drv.availGpa, usedGpa: drv.usedGpa, eventIdx: false, indirectDesc: false, nextAvail });
  const queue = (nextAvail: number) => {
    const q = bare(nextAvail);
    const region = new SplitInflightRegion(area, SIZE, Q);
    return { q, region, restored: q.restoreInflight(region) };
  };
  const add = (i: number) => drv.add([{ gpa: DATA + 64 * i, len: 16 }], [])!;
  return { drv, area, bare, queue, add };
}

test('out-of-order completions, then a crash: the successor resubmits the two still in flight, oldest first', (t) => {
  const s = setup();
  const first = s.queue(0);
  t.is(first.region.version, INFLIGHT_VERSION, 'a fresh region is initialised at ring start');
  t.deepEqual(first.restored.chains, []);
  const heads = [0, 1, 2, 3].map((i) => s.add(i));
  const popped = [0, 1, 2, 3].map(() => first.q.pop()!.head);
  t.deepEqual(popped, heads);
  t.deepEqual(first.region.inflightHeads(), [...heads].sort((a, b) => a - b));
  // The third and the first complete; the second and fourth are still running when we "crash".
  first.q.pushUsed(heads[2], 0);
  t.is(first.q.overtaken, 1, 'the third overtook the first and second: one overtaking completion');
  first.q.pushUsed(heads[0], 0);
  t.is(first.q.overtaken, 1, 'the oldest in flight completing overtakes nothing');
  t.deepEqual(first.region.inflightHeads(), [heads[1], heads[3]].sort((a, b) => a - b));
  t.is(first.region.usedIdx, 2);

  // The front-end can only say "used idx 2"; the region says two more were taken.
  const next = s.queue(2);
  t.deepEqual(next.restored.chains.map((c) => c.head), [heads[1], heads[3]]);
  t.is(next.restored.recovery.nextAvail, 4);
  t.is(next.q.nextAvail, 4);
  t.is(next.q.pop(), null, 'nothing new: the resubmitted ones are not popped again');
  // The newer resubmitted request first: it overtakes the older one, as the queue that popped them would have counted.
  next.q.pushUsed(next.restored.chains[1].head, 0);
  next.q.pushUsed(next.restored.chains[0].head, 0);
  t.is(next.q.overtaken, 1);
  t.deepEqual(s.drv.getUsed().map((u) => u.head), [heads[2], heads[0], heads[3], heads[1]], 'each request completed exactly once');
  t.deepEqual(next.region.inflightHeads(), []);
  t.is(next.region.usedIdx, 4);
});

test('a crash after two used elements were published and before their marks were cleared: both count as done', (t) => {
  const s = setup();
  const first = s.queue(0);
  const [a, b] = [s.add(0), s.add(1)];
  first.q.pop();
  first.q.pop();
  first.q.pushUsed(a, 0);
  first.q.pushUsed(b, 0);
  // Rewind the region to the moment before the marks were cleared: last_batch_head = b, b.next = a.
  t.is(first.region.lastBatchHead, b);
  s.area[16 + 16 * a] = 1;
  s.area[16 + 16 * b] = 1;
  new DataView(s.area.buffer).setUint16(14, 0, true);
  const next = s.queue(2);
  t.is(next.restored.recovery.clearedLastBatch, 2);
  t.deepEqual(next.restored.chains, []);
  t.deepEqual(next.region.inflightHeads(), []);
  t.is(next.q.nextAvail, 2);
  t.deepEqual(s.drv.getUsed().map((u) => u.head), [a, b]);
});

test('a region naming more requests in flight than the ring holds is refused and left unchanged', (t) => {
  const s = setup();
  s.queue(0);
  s.add(0);
  for (const h of [1, 2, 3]) s.area[16 + 16 * h] = 1; // one available, three marked
  const before = s.area.slice();
  t.throws(() => s.bare(0).restoreInflight(new SplitInflightRegion(s.area, SIZE, Q)), {
    instanceOf: InflightAreaError,
    message: /marks 3 request\(s\) in flight, but the driver has only 1 available and not used \(avail idx 1, used idx 0\)/,
  });
  t.deepEqual(s.area, before);
});
