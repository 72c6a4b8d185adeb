// The front-end's guest RAM and its GPA allocator: real memfds, real mappings.
import test from 'ava';
import { RangeAllocator } from '../host/frontend/allocator.ts';
import { GuestRam, UVA_BASE } from '../host/frontend/driver-memory.ts';
import { native } from '../host/native/index.ts';
import { fdSnapshot, fdsOpenedSince } from './helpers/fd-snapshot.ts';


test('allocator: alignment, exhaustion, coalescing back to one extent', (t) => {
  const a = new RangeAllocator(0x1000, 0x1000);
  const x = a.alloc(10, 16);
  const y = a.alloc(100, 256);
  t.is(x, 0x1000);
  t.is(y % 256, 0);
  t.true(y >= x + 10);
  t.is(a.alloc(0x1000), -1);
  const z = a.alloc(0x400, 16);
  t.true(z >= 0);
  a.free(y);
  a.free(x);
  a.free(z);
  t.is(a.available, 0x1000);
  t.is(a.alloc(0x1000, 4096), 0x1000, 'frees coalesced into the whole range again');
  t.throws(() => a.free(0x1234), { message: /not an allocated block/ });
});

test('allocator: random alloc/free never hands out overlapping blocks', (t) => {
  const a = new RangeAllocator(0, 1 << 16);
  const live = new Map<number, number>();
  let seed = 12345;
  const rnd = (n: number) => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) % n);
  for (let i = 0; i < 5000; i++) {
    if (live.size > 0 && rnd(2) === 0) {
      const keys = [...live.keys()];
      const k = keys[rnd(keys.length)];
      a.free(k);
      live.delete(k);
    } else {
      const len = 1 + rnd(2000);
      const at = a.alloc(len, 1 << rnd(7));
      if (at < 0) continue;
      for (const [s, l] of live) if (at < s + l && s < at + len) t.fail(`[${at}, +${len}) overlaps [${s}, +${l})`);
      live.set(at, len);
    }
  }
  for (const k of live.keys()) a.free(k);
  t.is(a.available, 1 << 16);
});

test.serial('guest RAM: regions share one memfd at offsets; the mapping is the memfd', (t) => {
  const before = fdSnapshot();
  const ram = GuestRam.create({ bytes: 3 << 20, regionBytes: 1 << 20, sharedFd: true, gpaGap: 1 << 20 });
  t.is(ram.regions.length, 3);
  t.deepEqual(ram.regions.map((r) => r.gpa), [0, 2 << 20, 4 << 20]);
  t.deepEqual(ram.regions.map((r) => r.mmapOffset), [0, 1 << 20, 2 << 20]);
  t.is(ram.uva(0x200010), UVA_BASE + 0x200010);
  const table = ram.memTable();
  t.is(table[2].mmapOffset, BigInt(2 << 20));
  // Bytes written through region 2's view are at memfd offset 2 MiB + 5.
  ram.view((4 << 20) + 5, 3).set([7, 8, 9]);
  const back = new Uint8Array(3);
  native.pread(ram.regions[2].fd, back, (2 << 20) + 5);
  t.deepEqual([...back], [7, 8, 9]);
  t.throws(() => ram.view((1 << 20) - 2, 4), { message: /crosses the end/ });
  t.throws(() => ram.view(1 << 20, 1), { message: /in no region/ });
  ram.close();
  t.deepEqual(fdsOpenedSince(before), [], 'fds left open after close()');
});
