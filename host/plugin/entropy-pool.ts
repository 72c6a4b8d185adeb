// The host's entropy source for the `entropy` grant (and the TypeScript rng device the
// benchmark compares the plugin with, so both draw the same way).
import { randomFillSync } from 'node:crypto';

/**
 * Random bytes drawn from the CSPRNG in blocks: randomFillSync costs ~2.5 us per call
 * whatever the size, more than the plugin call itself. Each byte is handed out once.
 */
export class EntropyPool {
  private pool = new Uint8Array(64 * 1024);
  private pos = this.pool.length;

  take(len: number): Uint8Array {
    if (len > this.pool.length) return randomFillSync(new Uint8Array(len));
    if (this.pos + len > this.pool.length) {
      randomFillSync(this.pool);
      this.pos = 0;
    }
    // A view: the caller copies it (the glue into the plugin's memory) before the next take.
    const out = this.pool.subarray(this.pos, this.pos + len);
    this.pos += len;
    return out;
  }
}
