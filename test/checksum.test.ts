// CRC-32C from the addon (host/native/src/checksum.c), which the state container (format 2) and
// the pre-copy rounds carry: the published check value, ISA-L's code against the portable table
// code on every length and alignment around its folding blocks and the copy's 8 KiB chunks,
// chaining across any split, and the copy fused with it.
import test from 'ava';
import { randomBytes } from 'node:crypto';
import { Worker } from 'node:worker_threads';
import { native } from '../host/native/index.ts';
import { copyCrc32c, crc32c } from '../host/migration/checksum.ts';

test('the CRC-32C check value and known vectors (RFC 3720 B.4)', (t) => {
  t.is(crc32c(Buffer.from('123456789')), 0xe3069283);
  t.is(crc32c(Buffer.alloc(32, 0)), 0x8a9136aa);
  t.is(crc32c(Buffer.alloc(32, 0xff)), 0x62a8ab43);
  t.is(crc32c(Buffer.from(Array.from({ length: 32 }, (_, i) => i))), 0x46dd794e);
  t.is(crc32c(Buffer.alloc(0)), 0);
  t.is(crc32c(Buffer.alloc(0), 0x12345678), 0x12345678, 'no bytes: the seed is the CRC');
});

test('ISA-L computes it (its seed and inversion convention adapted to ours)', (t) => {
  t.is(native.crc32cImpl, 'isa-l');
  t.is(native.crc32c(Buffer.from('123456789'), 0, true), 0xe3069283, 'the portable table agrees on the check value');
});

test('ISA-L and the portable table agree on every length and alignment around the folding blocks, and chain', (t) => {
  const big = randomBytes(3 * 8192 * 3 + 64);
  const lengths = [0, 1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 255, 256, 257, 511, 512, 1023, 1024, 4095, 3 * 8192 - 1, 3 * 8192, 3 * 8192 + 1, 3 * 8192 + 17, 6 * 8192 + 5, 9 * 8192];
  for (const len of lengths) {
    for (let align = 0; align < 8; align++) {
      const b = big.subarray(align, align + len);
      const seed = (len * 2654435761 + align) >>> 0;
      t.is(native.crc32c(b, seed), native.crc32c(b, seed, true), `len ${len} align ${align}`);
    }
  }
  // crc(a ‖ b) = crc(b, crc(a)), whatever the split.
  const whole = crc32c(big);
  for (const cut of [1, 8191, 24576, 30000, big.length - 3]) t.is(crc32c(big.subarray(cut), crc32c(big.subarray(0, cut))), whole, `cut ${cut}`);
  // Random lengths, alignments and seeds, and splits at random points: one pass equals any split.
  const rnd = randomBytes(1 << 20);
  for (let i = 0; i < 300; i++) {
    const len = i < 150 ? rnd[i] * 7 + rnd[i + 1] : (rnd.readUInt32LE(i * 4) % (rnd.length - 64)) >>> (i % 12);
    const align = rnd[i + 2] % 64;
    const b = rnd.subarray(align, align + len);
    const seed = rnd.readUInt32LE(i * 4 + 8);
    const one = native.crc32c(b, seed);
    t.is(one, native.crc32c(b, seed, true), `len ${len} align ${align}`);
    const cut = len === 0 ? 0 : rnd.readUInt32LE(i * 4 + 4) % len;
    t.is(native.crc32c(b.subarray(cut), native.crc32c(b.subarray(0, cut), seed)), one, `len ${len} cut ${cut}`);
  }
  // A single flipped bit anywhere changes it.
  const flipped = Buffer.from(big);
  flipped[40_000] ^= 0x10;
  t.not(crc32c(flipped), whole);
});

test('copyCrc32c copies and checksums in one pass; it refuses a short dst and overlap', (t) => {
  const src = randomBytes(5 * 8192 * 3 + 11);
  for (const len of [0, 5, 8191, 8192, 8193, 24576, 24576 + 9, 3 * 8192 * 2 + 1, src.length]) {
    const dst = Buffer.alloc(len + 3, 0xaa);
    const c = copyCrc32c(dst, src.subarray(0, len), 77);
    t.is(c, crc32c(src.subarray(0, len), 77), `len ${len}`);
    t.true(dst.subarray(0, len).equals(src.subarray(0, len)));
    t.true(dst.subarray(len).equals(Buffer.alloc(3, 0xaa)), 'nothing past src written');
  }
  t.throws(() => copyCrc32c(Buffer.alloc(4), Buffer.alloc(5)), { message: /src is 5 bytes, dst only 4/ });
  const one = Buffer.alloc(100);
  t.throws(() => copyCrc32c(one.subarray(10), one.subarray(0, 50)), { message: /overlap/ });
  t.throws(() => native.crc32c(Buffer.alloc(1), 2 ** 32), { message: /not a 32-bit CRC/ });
});

test('copyCrc32c checksums the bytes it copied even while another thread writes src (a pre-copy stages a disk the guest is writing)', async (t) => {
  // Another thread keeps rewriting src, as a guest's writes land in a memory disk while a live
  // pre-copy round copies it out: whatever mix of old and new bytes dst gets, the CRC returned
  // must be dst's, or the destination refuses a round whose bytes are all there.
  const shared = new SharedArrayBuffer(64 << 10);
  const src = new Uint8Array(shared);
  // [0]: stop; [1]: rounds the writer made (it has started once it is above 0).
  const stop = new Int32Array(new SharedArrayBuffer(8));
  const writer = new Worker(
    `const { workerData: { shared, stop } } = require('node:worker_threads');
     const b = new Uint32Array(shared); const s = new Int32Array(stop.buffer);
     for (let v = 1; Atomics.load(s, 0) === 0; v++) { b.fill(v * 2654435761); Atomics.add(s, 1, 1); }`,
    { eval: true, workerData: { shared, stop } },
  );
  try {
    while (Atomics.load(stop, 1) === 0) await new Promise((r) => setTimeout(r, 5));
    const roundsBefore = Atomics.load(stop, 1);
    let torn = 0;
    const dst = Buffer.alloc(shared.byteLength);
    // Lengths below and above the 8 KiB copy chunks (a partial last chunk), at odd offsets.
    for (let i = 0; i < 20_000; i++) {
      const len = [4096, 4096 + 5, 8192 + 7, 3 * 8192 + 4096, 40_000][i % 5];
      const at = (i * 8) % 1024;
      const c = copyCrc32c(dst, src.subarray(at, at + len));
      if (c !== crc32c(dst.subarray(0, len))) torn++;
    }
    t.is(torn, 0, `${torn} of 20,000 copies returned a CRC of other bytes than the ones copied`);
    // The race was there to be lost: the writer kept rewriting src while the copies ran.
    t.true(Atomics.load(stop, 1) > roundsBefore, 'the writer rewrote src during the copies');
  } finally {
    Atomics.store(stop, 0, 1);
    await writer.terminate();
  }
});
