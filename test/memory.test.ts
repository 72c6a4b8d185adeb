import test from 'ava';
import {
  GuestMemory,
  MemoryFault,
  MemoryTableError,
  arrayBufferBacking,
  type Backing,
  type RegionSpec,
} from '../host/memory/guest-memory.ts';
import { DirtyLog } from '../host/memory/dirty-log.ts';
import type { Native } from '../host/native/api.ts';

const GiB = 2 ** 30;

function region(gpa: number, size: number, uva = 0x7f0000000000 + gpa, backing: Backing = arrayBufferBacking(new ArrayBuffer(size))): RegionSpec {
  return { guestPhysAddr: gpa, size, userspaceAddr: uva, mmapOffset: 0, backing };
}

/** A backing that hands out a fresh buffer per window and records what was asked. */
function recordingBacking(size: number): Backing & { asked: [number, number][] } {
  const asked: [number, number][] = [];
  return {
    size,
    asked,
    window(offset: number, length: number) {
      asked.push([offset, length]);
      return new ArrayBuffer(length);
    },
  };
}

async function loadNative(): Promise<Native | undefined> {
  const path = '../host/native/index.ts';
  try {
    const mod = (await import(path)) as { native?: Native };
    return mod.native;
  } catch {
    return undefined;
  }
}

test('translation within and across adjacent regions', (t) => {
  const a = new ArrayBuffer(0x10000);
  const b = new ArrayBuffer(0x10000);
  const mem = new GuestMemory([region(0x10000, 0x10000, 0x1000000, arrayBufferBacking(b)), region(0, 0x10000, 0x2000000, arrayBufferBacking(a))]);
  const v = mem.gpaToView(0x10010, 4);
  t.is(v.buffer, b);
  t.is(v.byteOffset, 0x10);
  t.is(v.length, 4);
  const e = t.throws(() => mem.gpaToView(0xfffe, 4), { instanceOf: MemoryFault });
  t.regex(e!.message, /0xfffe/);
  const s = mem.gpaSlices(0xfffe, 4);
  t.is(s.length, 2);
  t.is(s[0].buffer, a);
  t.is(s[0].byteOffset, 0xfffe);
  t.is(s[0].length, 2);
  t.is(s[1].buffer, b);
  t.is(s[1].byteOffset, 0);
  t.is(s[1].length, 2);
  s[1][1] = 0xab;
  t.is(new Uint8Array(b)[1], 0xab);
  t.deepEqual(mem.gpaSlices(5, 0), []);
  t.is(mem.uvaToGpa(0x1000004), 0x10004);
  t.is(mem.uvaToGpa(0x200ffff), 0xffff);
  t.throws(() => mem.uvaToGpa(0x1010000), { instanceOf: MemoryFault, message: /userspace/ });
  t.true(mem.isMapped(0, 0x20000));
  t.false(mem.isMapped(0, 0x20001));
});

test('unmapped ranges and gaps fault with the address', (t) => {
  const mem = new GuestMemory([region(0, 0x1000), region(0x3000, 0x1000)]);
  t.throws(() => mem.gpaToView(0x1000, 1), { instanceOf: MemoryFault, message: /0x1000.*not in any memory region/ });
  t.throws(() => mem.gpaToView(0xff0, 0x20), { instanceOf: MemoryFault, message: /past the end of region/ });
  t.throws(() => mem.gpaSlices(0xff0, 0x20), { instanceOf: MemoryFault, message: /byte 0x1000 is not in any memory region/ });
  t.throws(() => mem.gpaSlices(0x3ff0, 0x11), { instanceOf: MemoryFault, message: /0x4000/ });
  t.throws(() => mem.gpaSlices(2 ** 53 - 1, 2), { instanceOf: MemoryFault, message: /out of range/ });
  t.throws(() => mem.gpaSlices(2 ** 53, 1), { instanceOf: MemoryFault });
  t.throws(() => mem.gpaSlices(-1, 1), { instanceOf: MemoryFault });
  t.throws(() => mem.gpaSlices(0, 1.5), { instanceOf: MemoryFault });
  t.throws(() => mem.gpaToView(0x5000, 0), { instanceOf: MemoryFault });
});

test('windows: lazy, cached, exact offsets; views never straddle a window', (t) => {
  const W = 4096;
  const backing = recordingBacking(3 * W + 100);
  const mem = new GuestMemory([region(0x100000, 3 * W + 100, 0, backing)], { windowSize: W });
  t.deepEqual(backing.asked, []);
  const v = mem.gpaToView(0x100000 + W + 8, 8);
  t.deepEqual(backing.asked, [[W, W]]);
  t.is(v.byteOffset, 8);
  mem.gpaToView(0x100000 + W + 100, 8);
  t.deepEqual(backing.asked, [[W, W]], 'window cached');
  t.throws(() => mem.gpaToView(0x100000 + 2 * W - 4, 8), { instanceOf: MemoryFault, message: /window boundary/ });
  const s = mem.gpaSlices(0x100000 + 2 * W - 4, W + 50);
  t.deepEqual(
    s.map((x) => [x.byteOffset, x.length]),
    [
      [W - 4, 4],
      [0, W],
      [0, 46],
    ],
  );
  t.deepEqual(backing.asked, [
    [W, W],
    [2 * W, W],
    [3 * W, 100],
  ]);
  t.throws(() => mem.gpaSlices(0x100000 + 3 * W + 90, 11), { instanceOf: MemoryFault });
});

test('a backing that returns a short window is a table error', (t) => {
  const bad: Backing = { size: 8192, window: () => new ArrayBuffer(10) };
  const mem = new GuestMemory([region(0, 8192, 0, bad)], { windowSize: 4096 });
  t.throws(() => mem.gpaToView(0, 4), { instanceOf: MemoryTableError, message: /10-byte window/ });
});

async function bigRegionCase(t: import('ava').ExecutionContext, backing: Backing, asked: [number, number][] | undefined, cleanup: () => void) {
  const size = 5 * GiB + 8192;
  const gpa = 4 * GiB;
  let released = 0;
  const mem = new GuestMemory([
    { guestPhysAddr: gpa, size, userspaceAddr: 0x7f0000000000, mmapOffset: 0, backing, release: () => (released++, cleanup()) },
  ]);
  const far = gpa + 4 * GiB + 12345; // window 4 of the region
  const v = mem.gpaToView(far, 16);
  v.set([1, 2, 3, 4]);
  t.deepEqual([...mem.gpaToView(far, 4)], [1, 2, 3, 4]);
  const tail = mem.gpaToView(gpa + size - 16, 16); // last, short window
  tail[15] = 9;
  t.is(tail.length, 16);
  if (asked) {
    t.deepEqual(asked, [
      [4 * GiB, GiB],
      [5 * GiB, 8192],
    ]);
  }
  const s = mem.gpaSlices(gpa + 5 * GiB - 2, 4);
  t.is(s.length, 2);
  t.is(s[1].length, 2);
  t.is(s[1][1], 0);
  s[1][0] = 7;
  t.is(mem.gpaToView(gpa + 5 * GiB, 1)[0], 7);
  t.throws(() => mem.gpaToView(gpa + size - 1, 2), { instanceOf: MemoryFault });
  t.is(mem.uvaToGpa(0x7f0000000000 + 5 * GiB), gpa + 5 * GiB);
  mem.close();
  t.is(released, 1);
}

const BIG = 5 * GiB + 8192;

test('a 5 GiB region above 4 GiB: window offsets asked of the backing (fake)', async (t) => {
  const rb = recordingBacking(BIG);
  await bigRegionCase(t, rb, rb.asked, () => {});
});

test('a 5 GiB region above 4 GiB over a real sparse memfd mapping', async (t) => {
  const native = await loadNative();
  if (native === undefined) return t.fail('host/native is not built (node build.mjs): this test maps a real memfd');
  const fd = native.memfdCreate('memory-test', false);
  native.ftruncate(fd, BIG);
  const m = native.mmap(fd, BIG, 0, true);
  await bigRegionCase(t, m, undefined, () => {
    m.unmap();
    native.close(fd);
  });
});

test('memory table validation', (t) => {
  const ok = region(0, 0x1000, 0x10000);
  t.throws(() => new GuestMemory([region(0, 0)]), { instanceOf: MemoryTableError, message: /size is zero/ });
  t.throws(() => new GuestMemory([ok, region(0xfff, 0x1000, 0x90000)]), { instanceOf: MemoryTableError, message: /GPA.*overlaps/ });
  t.throws(() => new GuestMemory([ok, region(0x5000, 0x1000, 0x10800)]), { instanceOf: MemoryTableError, message: /userspace address.*overlaps/ });
  t.throws(() => new GuestMemory([region(2 ** 53 - 0x800, 0x1000, 0)]), { instanceOf: MemoryTableError, message: /overflows 2\^53/ });
  t.throws(() => new GuestMemory([region(0, 0x1000, 2 ** 53 - 0x800)]), { instanceOf: MemoryTableError, message: /userspace.*overflows/ });
  t.throws(() => new GuestMemory([region(2 ** 53, 0x1000, 0)]), { instanceOf: MemoryTableError, message: /guestPhysAddr/ });
  t.throws(() => new GuestMemory([{ ...ok, mmapOffset: -1 }]), { instanceOf: MemoryTableError, message: /mmapOffset/ });
  t.throws(() => new GuestMemory([{ ...ok, size: 0x2000 }]), { instanceOf: MemoryTableError, message: /backing maps 0x1000 bytes/ });
  t.throws(() => new GuestMemory([ok, ok]), { instanceOf: MemoryTableError });
  t.throws(() => new GuestMemory([region(0, 0x1000), region(0x1000, 0x1000)], { maxRegions: 1 }), { instanceOf: MemoryTableError, message: /at most 1/ });
  // Adjacent is fine in both spaces.
  t.notThrows(() => new GuestMemory([region(0, 0x1000, 0x10000), region(0x1000, 0x1000, 0x11000)]));
});

test('add/remove regions in place; generation changes; release called', (t) => {
  const released: number[] = [];
  const r = (gpa: number) => ({ ...region(gpa, 0x1000), release: () => released.push(gpa) });
  const mem = new GuestMemory([r(0)]);
  const g0 = mem.generation;
  mem.addRegion(r(0x4000));
  t.true(mem.generation > g0);
  t.is(mem.gpaToView(0x4000, 1).length, 1);
  const g1 = mem.generation;
  t.throws(() => mem.addRegion(r(0x4800)), { instanceOf: MemoryTableError, message: /overlaps/ });
  t.is(mem.generation, g1, 'failed add leaves the table as it was');
  t.is(mem.regions.length, 2);
  t.throws(() => mem.removeRegion({ guestPhysAddr: 0x4000, size: 0x2000 }), { instanceOf: MemoryTableError, message: /no region at GPA 0x4000/ });
  const gone = mem.removeRegion({ guestPhysAddr: 0x4000, size: 0x1000 });
  t.is(gone.guestPhysAddr, 0x4000);
  t.deepEqual(released, [0x4000]);
  t.throws(() => mem.gpaToView(0x4000, 1), { instanceOf: MemoryFault });
  // The last-hit cache must not resurrect the removed region.
  mem.gpaToView(0, 1);
  mem.close();
  t.deepEqual(released, [0x4000, 0]);
  t.throws(() => mem.gpaToView(0, 1), { instanceOf: MemoryFault });
});

test('view(): one window gives one view, a split range null; small views are kept until the table changes', (t) => {
  const W = 4096;
  const mem = new GuestMemory([region(0, 0x1000), region(0x100000, 2 * W, 0, recordingBacking(2 * W))], { windowSize: W });
  const a = mem.view(0x100010, 16)!;
  t.is(a.byteOffset, 0x10);
  t.is(a.length, 16);
  t.is(mem.view(0x100010, 16), a, 'a small range asked again: the same view');
  t.not(mem.view(0x100010, 17), a, 'another length: another view');
  t.is(mem.view(0x100010, 17)!.length, 17);
  const big = mem.view(0x100000, 4096)!;
  t.is(big.length, 4096);
  t.not(mem.view(0x100000, 4096), big, 'large views are made anew');
  t.is(mem.view(0x100000 + W - 4, 8), null, 'crosses a window');
  t.is(mem.view(0xff8, 16), null, 'runs past its region');
  t.throws(() => mem.view(0x2000, 1), { instanceOf: MemoryFault, message: /0x2000 is not in any memory region/ });
  t.throws(() => mem.view(2 ** 53 - 1, 2), { instanceOf: MemoryFault, message: /out of range/ });
  // The kept view's window belongs to the region: once the region leaves, nothing of it comes back.
  mem.removeRegion({ guestPhysAddr: 0x100000, size: 2 * W });
  t.throws(() => mem.view(0x100010, 16), { instanceOf: MemoryFault });
  mem.addRegion(region(0x100000, 2 * W, 0x200000, recordingBacking(2 * W)));
  const b = mem.view(0x100010, 16)!;
  t.not(b, a, 'a new region at the same address: a view of its own memory');
  t.not(b.buffer, a.buffer);
});

test('rangesOf(): the guest ranges views of this table cover, across windows and regions, adjacent ones merged; a view of another table is null', (t) => {
  const W = 4096;
  const mem = new GuestMemory([region(0, 2 * W, 0x10000, recordingBacking(2 * W)), region(2 * W, W, 0x20000, recordingBacking(W)), region(0x100000, W, 0x30000, recordingBacking(W))], { windowSize: W });
  // A buffer from window 0 of region 0 into region 1: three views, one guest range.
  const split = mem.gpaSlices(W - 16, 16 + W + 32);
  t.is(split.length, 3);
  const far = mem.view(0x100100, 64)!;
  t.deepEqual(mem.rangesOf([...split, far]), [
    { gpa: W - 16, len: 16 + W + 32 },
    { gpa: 0x100100, len: 64 },
  ]);
  t.deepEqual(mem.rangesOf([]), []);
  t.is(mem.rangesOf([new Uint8Array(16)]), null, 'not a view of guest memory');
  mem.removeRegion({ guestPhysAddr: 0x100000, size: W });
  t.is(mem.rangesOf([far]), null, 'its region left the table');
});

test('rangesOf() with windowBases() built once: the same ranges for every view it knows; a window mapped after it was built is not in it', (t) => {
  const W = 4096;
  const mem = new GuestMemory([region(0, 4 * W, 0x10000, recordingBacking(4 * W))], { windowSize: W });
  const a = mem.view(0x100, 32)!;
  const b = mem.view(W + 0x40, 16)!;
  const bases = mem.windowBases();
  t.is(bases.size, 2, 'the two windows mapped so far');
  t.deepEqual(mem.rangesOf([a], bases), [{ gpa: 0x100, len: 32 }]);
  t.deepEqual(mem.rangesOf([b, a], bases), mem.rangesOf([b, a]));
  const later = mem.view(3 * W, 8)!;
  t.is(mem.rangesOf([later], bases), null, 'the map passed in is the one used');
  t.deepEqual(mem.rangesOf([later]), [{ gpa: 3 * W, len: 8 }]);
});

test('many regions: binary search finds each', (t) => {
  const specs: RegionSpec[] = [];
  for (let i = 0; i < 509; i++) specs.push(region(i * 0x2000, 0x1000, 0x100000000 + i * 0x1000));
  const mem = new GuestMemory(specs.reverse());
  for (let i = 0; i < 509; i++) {
    t.is(mem.gpaToView(i * 0x2000 + 0xfff, 1).byteOffset, 0xfff);
    t.throws(() => mem.gpaToView(i * 0x2000 + 0x1000, 1), { instanceOf: MemoryFault });
  }
  t.throws(() => mem.addRegion(region(0x10000000, 0x1000, 0)), { instanceOf: MemoryTableError, message: /510 regions/ });
});

test('Atomics.or works on a non-shared ArrayBuffer (what DirtyLog relies on)', (t) => {
  const u8 = new Uint8Array(new ArrayBuffer(4));
  t.false(u8.buffer instanceof SharedArrayBuffer);
  t.is(Atomics.or(u8, 1, 0x81), 0);
  t.is(Atomics.or(u8, 1, 0x02), 0x81);
  t.deepEqual([...u8], [0, 0x83, 0, 0]);
});

test('dirty log sets bit gpa/4096 for every page touched', (t) => {
  const area = new ArrayBuffer(16); // 128 pages = 512 KiB of guest memory
  const log = new DirtyLog(arrayBufferBacking(area));
  const bytes = new Uint8Array(area);
  t.true(log.mark(0, 1));
  t.deepEqual([...bytes.subarray(0, 2)], [0x01, 0]);
  t.true(log.mark(4095 + 4096 * 2, 2)); // pages 2 and 3
  t.is(bytes[0], 0b1101);
  t.true(log.mark(4096 * 6, 4096 * 12)); // pages 6..17
  t.deepEqual([...bytes.subarray(0, 3)], [0b11001101, 0xff, 0b11]);
  t.true(log.mark(4096 * 30, 0), 'empty write marks nothing');
  t.is(bytes[3], 0);
  t.true(log.mark(4096 * 127 + 4095, 1));
  t.is(bytes[15], 0x80);
  t.true(log.isDirty(127));
  t.false(log.isDirty(126));
  bytes[1] = 0x10; // the front-end clears bits concurrently; ours must only ever add
  log.mark(4096 * 8, 1);
  t.is(bytes[1], 0x11);
});

test('dirty log: pages beyond the log are reported, never thrown', (t) => {
  const area = new ArrayBuffer(2); // 16 pages
  const msgs: string[] = [];
  const log = new DirtyLog(arrayBufferBacking(area), { onOutOfRange: (m) => msgs.push(m) });
  t.false(log.mark(4096 * 15, 4096 * 2)); // page 15 fits, 16 does not
  t.is(new Uint8Array(area)[1], 0x80);
  t.false(log.mark(2 ** 52, 10));
  t.false(log.mark(-5, 10));
  t.is(log.outOfRange, 3);
  t.is(msgs.length, 3);
  t.regex(msgs[0], /page 0x10/);
  const throwing = new DirtyLog(arrayBufferBacking(area), {
    onOutOfRange: () => {
      throw new Error('logger broke');
    },
  });
  t.notThrows(() => throwing.mark(4096 * 100, 1));
});

test('dirty log across log windows', (t) => {
  const b = recordingBacking(8);
  const log = new DirtyLog(b, { windowSize: 4 });
  log.mark(4096 * 30, 4096 * 4); // pages 30..33: bytes 3 and 4, different windows
  t.deepEqual(b.asked, [
    [0, 4],
    [4, 4],
  ]);
  t.true(log.isDirty(30));
  t.true(log.isDirty(33));
  t.false(log.isDirty(34));
});
