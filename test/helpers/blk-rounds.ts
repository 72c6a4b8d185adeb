// Guest-like I/O for the upgrade and take-over tests: rounds of 4 KiB writes, each read back,
// whose last pattern per block is remembered so the disk can be checked after the device moved.
import type { BlkDevice } from '../../host/frontend/blk.ts';

/** The 4 KiB a block holds after `round` wrote it. */
export function pattern(block: number, round: number): Uint8Array {
  return new Uint8Array(4096).map((_, i) => (i * 7 + block * 13 + round * 29) & 0xff);
}

/**
 * Writes and verifies 4 KiB blocks, `depth` requests in flight per disk at a time (disk d uses
 * blocks d*64 .. d*64+63), until `stop()` is true and at least `minRounds` passed. Every block's
 * last round is in `last`. A failed request (IOERR) or a block read back wrong rejects.
 */
export async function ioLoop(disks: BlkDevice | BlkDevice[], last: Map<number, number>, stop: () => boolean, minRounds = 2, depth = 4): Promise<number> {
  const all = Array.isArray(disks) ? disks : [disks];
  let round = 0;
  for (; round < minRounds || !stop(); round++) {
    await Promise.all(
      all.flatMap((disk, d) =>
        Array.from({ length: depth }, async (_, k) => {
          const block = d * 64 + ((round * depth + k) % 64);
          await disk.write(block * 8, pattern(block, round));
          last.set(block, round);
          const back = await disk.read(block * 8, 4096);
          if (Buffer.compare(back, pattern(block, round)) !== 0) throw new Error(`block ${block} round ${round}: read back other data`);
        }),
      ),
    );
  }
  return round;
}

/** Every block in `last` holds what its last round wrote. */
export async function verifyAll(disk: BlkDevice, last: Map<number, number>): Promise<void> {
  for (const [block, round] of last) {
    const back = await disk.read(block * 8, 4096);
    if (Buffer.compare(back, pattern(block, round)) !== 0) throw new Error(`block ${block}: not what round ${round} wrote`);
  }
}
