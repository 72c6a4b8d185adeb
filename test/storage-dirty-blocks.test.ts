// The memory disk's dirty-block map (host/storage/dirty-blocks.ts) through the real MemoryBacking
// over a real memfd, as the device worker writes it: what a pre-copy round takes is exactly the
// 4 KiB blocks written since the last take, as merged byte runs, and nothing while not tracking.
import test from 'ava';
import { DirtyBlocks, DIRTY_BLOCK } from '../host/storage/dirty-blocks.ts';
import { createMemoryDisk, mapMemoryDisk, MemoryBacking } from '../host/storage/index.ts';
import { native } from '../host/native/index.ts';

function disk(size: number): { b: MemoryBacking; dirty: DirtyBlocks; close: () => void } {
  const fd = createMemoryDisk(size);
  const dirty = DirtyBlocks.create(size);
  const b = new MemoryBacking(size, false, mapMemoryDisk(fd, size, false), dirty);
  return { b, dirty, close: () => (b.close(), native.close(fd)) };
}

test('writes while not tracking mark nothing; after start, each write marks the blocks it touched', (t) => {
  const { b, dirty, close } = disk(1 << 20);
  try {
    b.write(0, Buffer.alloc(100, 1));
    dirty.start();
    t.deepEqual(dirty.take(), []);
    b.write(10, Buffer.alloc(1, 1)); // block 0
    b.write(DIRTY_BLOCK * 5 - 1, Buffer.alloc(2, 1)); // blocks 4 and 5
    b.writeFrom(DIRTY_BLOCK * 31, [Buffer.alloc(DIRTY_BLOCK * 2, 1)]); // blocks 31-32: across a bitmap word
    b.writeZeroes(DIRTY_BLOCK * 100, DIRTY_BLOCK * 3); // punched: 100-102
    t.is(dirty.count(), 1 + 2 + 2 + 3);
    t.deepEqual(dirty.take(), [
      [0, DIRTY_BLOCK],
      [4 * DIRTY_BLOCK, 2 * DIRTY_BLOCK],
      [31 * DIRTY_BLOCK, 2 * DIRTY_BLOCK],
      [100 * DIRTY_BLOCK, 3 * DIRTY_BLOCK],
    ]);
    t.deepEqual(dirty.take(), [], 'a take clears what it returned');
    dirty.stop();
    b.write(0, Buffer.alloc(1));
    t.is(dirty.count(), 0);
  } finally {
    close();
  }
});

test('a disk whose size is not a multiple of 4 KiB: the last run ends at the disk end', (t) => {
  const size = DIRTY_BLOCK * 40 + 512;
  const { b, dirty, close } = disk(size);
  try {
    dirty.start();
    b.write(size - 512, Buffer.alloc(512, 7));
    b.write(0, Buffer.alloc(DIRTY_BLOCK * 40 + 512, 1));
    t.deepEqual(dirty.take(), [[0, size]]);
  } finally {
    close();
  }
});

test('a map too small for its disk is refused with the sizes', (t) => {
  t.throws(() => new DirtyBlocks(new SharedArrayBuffer(8), 1 << 30), { message: /8 bytes given, \d+ needed/ });
});
