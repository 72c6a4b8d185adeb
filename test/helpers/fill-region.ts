// Steers a test front-end's next buffers out of one region of its guest RAM: the ring is
// allocated first, in region 0; with region 0 then full, every later request's buffers go to
// the next region (one the test then removes, or re-sends, while they are in use).
import type { VhostUserFrontend } from '../../host/frontend/driver.ts';

/** Allocates all that is free of region `index` (in pieces of 16 bytes and up); the result gives it back. */
export function fillRegion(fe: VhostUserFrontend, index = 0): () => void {
  const r = fe.memory.regions[index];
  const taken: number[] = [];
  for (let len = r.size; len >= 16; ) {
    const a = r.alloc.alloc(len, 16);
    if (a < 0) len >>= 1;
    else taken.push(a);
  }
  return () => {
    for (const a of taken.splice(0)) r.alloc.free(a);
  };
}
