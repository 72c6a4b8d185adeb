// The container parser in-process, as hostile input: any fragmentation of a good stream
// loads; every corruption, truncation or lie is refused before any section is finished.
import test from 'ava';
import { crc32 } from 'node:zlib';
import {
  ContainerLoader, encodeHeader, saveContainer, StateFormatError, FORMAT_VERSION, COMPAT_VERSION, type StateIdentity,
} from '../host/migration/container.ts';
import { crc32c } from '../host/migration/checksum.ts';
import type { StateSection } from '../host/migration/section.ts';

const ID: StateIdentity = { deviceId: 2, name: 'blk', version: '1.2.3' };

/** An in-memory section: SAVE serves `data`; LOAD collects what arrives. */
class MemSection implements StateSection {
  received: Buffer[] = [];
  expected = -1;
  finished = 0;
  aborted = 0;
  constructor(readonly id: number, readonly name: string, readonly data: Buffer) {}
  async size() { return this.data.length; }
  async read(off: number, len: number) { return this.data.subarray(off, off + len); }
  async beginLoad(size: number) { this.expected = size; this.received = []; }
  async write(off: number, chunk: Uint8Array) {
    const got = this.received.reduce((n, b) => n + b.length, 0);
    if (off !== got) throw new Error(`write at ${off}, expected ${got}`);
    this.received.push(Buffer.from(chunk));
  }
  async finish() { this.finished++; return Buffer.concat(this.received).equals(this.data) ? null : 'content differs'; }
  async abort() { this.aborted++; }
}

function rng(seed: number) {
  let x = seed >>> 0 || 1;
  return (n: number) => {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
    return x % n;
  };
}

async function build(sections: MemSection[], identity = ID, format?: number): Promise<Buffer> {
  const parts: Buffer[] = [];
  await saveContainer({ write: async (b) => void parts.push(Buffer.from(b)) }, identity, sections, { chunkSize: 4096, ...(format ? { format } : {}) });
  return Buffer.concat(parts);
}

function fresh(): MemSection[] {
  const r = rng(7);
  const dev = Buffer.alloc(50_000);
  for (let i = 0; i < dev.length; i++) dev[i] = r(256);
  return [new MemSection(1, 'device', dev), new MemSection(0x100, 'disk', Buffer.alloc(9000, 0x5a)), new MemSection(0x101, 'empty', Buffer.alloc(0))];
}

async function load(stream: Buffer, sections: MemSection[], split: (n: number) => number = () => stream.length): Promise<Error | null> {
  const l = new ContainerLoader({ identity: ID, sections });
  try {
    for (let off = 0; off < stream.length; ) {
      const n = Math.max(1, Math.min(split(stream.length - off), stream.length - off));
      await l.feed(stream.subarray(off, off + n));
      off += n;
    }
    await l.end();
    return null;
  } catch (e) {
    return e as Error;
  }
}

test('round trip under any fragmentation, including 1-byte feeds', async (t) => {
  const stream = await build(fresh());
  for (const [label, split] of [
    ['whole', () => stream.length],
    ['1 byte', () => 1],
    ['7 bytes', () => 7],
    ['random', ((r) => (n: number) => 1 + r(Math.min(n, 70_000)))(rng(3))],
  ] as const) {
    const secs = fresh();
    t.is(await load(stream, secs, split), null, label);
    t.deepEqual(secs.map((s) => s.finished), [1, 1, 1], label);
  }
});

test('every single-byte flip is refused and nothing is finished', async (t) => {
  const stream = await build(fresh());
  const r = rng(11);
  const positions = new Set<number>([0, 8, 10, 12, 16, 24, 32, 34, 60, stream.length - 1, stream.length - 8, stream.length - 16]);
  while (positions.size < 400) positions.add(r(stream.length));
  for (const p of positions) {
    const bad = Buffer.from(stream);
    bad[p] ^= 1 << r(8);
    const secs = fresh();
    const err = await load(bad, secs, () => 1000);
    if (!(err instanceof StateFormatError)) t.fail(`flip at ${p}: ${err === null ? 'accepted' : `${err.name}: ${err.message}`}`);
    if (secs.some((s) => s.finished > 0)) t.fail(`flip at ${p}: a section was finished`);
  }
  t.pass();
});

test('every truncation is refused; anything after the trailer is garbage', async (t) => {
  const stream = await build(fresh());
  for (let cut = 0; cut < stream.length; cut += 997) {
    const err = await load(stream.subarray(0, cut), fresh());
    t.true(err instanceof StateFormatError && /truncated/.test(err.message), `cut at ${cut}: ${err?.message}`);
  }
  const err = await load(Buffer.concat([stream, Buffer.from([0])]), fresh());
  t.regex(err?.message ?? '', /trailing garbage/);
});

test('hostile headers, each with a valid header CRC so only the checks stand between them and the device', async (t) => {
  const secs = fresh();
  const entries = await Promise.all(secs.map(async (s) => ({ id: s.id, flags: 0, length: await s.size(), name: s.name })));
  const hdr = () => Buffer.from(encodeHeader(ID, entries).bytes);
  const resign = (b: Buffer) => {
    const h = b.readUInt32LE(12);
    b.writeUInt32LE(crc32c(b.subarray(0, h - 4)), h - 4);
    return b;
  };
  const cases: [string, Buffer, RegExp][] = [];
  { const b = hdr(); b.writeUInt16LE(0, 32); cases.push(['no sections', resign(b), /0 sections/]); }
  { const b = hdr(); b.writeUInt16LE(17, 32); cases.push(['17 sections', resign(b), /17 sections/]); }
  { const b = hdr(); b.writeBigUInt64LE(2n ** 60n, 24); cases.push(['huge total', resign(b), /beyond 2\^53/]); }
  { const b = hdr(); b.writeBigUInt64LE(123n, 24); cases.push(['total mismatch', resign(b), /does not match/]); }
  { const b = hdr(); b.writeUInt32LE(5000, 12); cases.push(['header length', b, /header length 5000/]); }
  { const b = hdr(); b[34] = 200; cases.push(['name length', resign(b), /device name is 200 bytes|too short/]); }
  { const b = hdr(); b[35] = 0x07; cases.push(['control char in name', resign(b), /non-printable/]); }
  { const b = hdr(); b.writeUInt32LE(1, 20); cases.push(['reserved flags', resign(b), /reserved header flags/]); }
  {
    const b = hdr();
    const first = 34 + 1 + b[34] + 1 + b[34 + 1 + b[34]];
    const second = first + 17 + b[first + 16];
    b.writeUInt32LE(1, second); // section 0x100 renamed to id 1: a duplicate
    cases.push(['duplicate id', resign(b), /appears twice/]);
  }
  { const b = hdr(); b.writeUInt16LE(FORMAT_VERSION + 1, 8); b.writeUInt16LE(FORMAT_VERSION + 1, 10); cases.push(['newer', resign(b), new RegExp(`container format ${FORMAT_VERSION + 1}, readable only by format ${FORMAT_VERSION + 1} or later; this host reads formats 1 and 2`)]); }
  { const b = hdr(); b.writeUInt16LE(1, 8); b.writeUInt16LE(2, 10); cases.push(['compat > format', resign(b), /impossible versions/]); }
  for (const [label, b, re] of cases) {
    const s = fresh();
    const err = await load(b, s);
    t.true(err instanceof StateFormatError, `${label}: ${err?.message}`);
    t.regex(err?.message ?? '', re, label);
    t.deepEqual(s.map((x) => x.finished), [0, 0, 0], label);
  }
});

test('a newer writer that keeps compat 2 and adds header fields is still readable', async (t) => {
  const secs = fresh();
  const stream = await build(secs);
  const h = stream.readUInt32LE(12);
  // Insert 8 bytes of "future fields" before the header CRC; bump format to 3, compat stays 2
  // (so the checksum stays CRC-32C).
  const head = Buffer.concat([stream.subarray(0, h - 4), Buffer.alloc(8, 0xee), Buffer.alloc(4)]);
  head.writeUInt16LE(3, 8);
  head.writeUInt32LE(h + 8, 12);
  head.writeBigUInt64LE(stream.readBigUInt64LE(24) + 8n, 24);
  head.writeUInt32LE(crc32c(head.subarray(0, h + 4)), h + 4);
  // The trailer CRC covers the header too: recompute it over the new bytes.
  const body = stream.subarray(h, stream.length - 16);
  const crc = crc32c(body, crc32c(head));
  const trailer = Buffer.from(stream.subarray(stream.length - 16));
  trailer.writeUInt32LE(crc, 8);
  t.is(await load(Buffer.concat([head, body, trailer]), fresh()), null);
});

test('format 2 is CRC-32C and unreadable by a format-1 reader by its versions; format 1 (CRC-32) states still load', async (t) => {
  t.is(FORMAT_VERSION, 2);
  const v2 = await build(fresh());
  t.is(v2.readUInt16LE(8), 2, 'format written');
  // A format-1 reader refuses compat 2 with "readable only by format 2 or later; this host reads format 1".
  t.is(v2.readUInt16LE(10), COMPAT_VERSION);
  t.is(COMPAT_VERSION, 2);
  const h2 = v2.readUInt32LE(12);
  t.is(v2.readUInt32LE(h2 - 4), crc32c(v2.subarray(0, h2 - 4)), 'header checksum is CRC-32C');
  t.is(v2.readUInt32LE(v2.length - 8), crc32c(v2.subarray(0, v2.length - 16)), 'trailer checksum is CRC-32C');

  // A state a format-1 host wrote (same layout, CRC-32 of zlib) loads, in any fragmentation.
  const v1 = await build(fresh(), ID, 1);
  t.is(v1.readUInt16LE(8), 1);
  t.is(v1.readUInt16LE(10), 1);
  const h1 = v1.readUInt32LE(12);
  t.is(v1.readUInt32LE(h1 - 4), crc32(v1.subarray(0, h1 - 4)), 'format 1 header checksum is CRC-32');
  t.is(v1.readUInt32LE(v1.length - 8), crc32(v1.subarray(0, v1.length - 16)));
  for (const split of [() => v1.length, () => 1, () => 4093]) {
    const secs = fresh();
    t.is(await load(v1, secs, split), null);
    t.deepEqual(secs.map((s) => s.finished), [1, 1, 1]);
  }
  // ... and corruption of it is still caught, by its own checksum.
  const r = rng(5);
  for (let i = 0; i < 100; i++) {
    const bad = Buffer.from(v1);
    bad[h1 + r(v1.length - h1 - 16)] ^= 1 << r(8);
    t.regex((await load(bad, fresh()))?.message ?? 'accepted', /checksum mismatch/);
  }
  // A format-1 header is never checked with CRC-32C, nor a format-2 one with CRC-32.
  const mislabelled = Buffer.from(v1);
  mislabelled.writeUInt16LE(2, 8);
  mislabelled.writeUInt16LE(2, 10);
  t.regex((await load(mislabelled, fresh()))?.message ?? 'accepted', /header checksum mismatch/);
});

test('identity: another device type or name is refused; another version only warns', async (t) => {
  const stream = await build(fresh());
  const warnings: string[] = [];
  for (const [identity, re] of [
    [{ ...ID, deviceId: 26 }, /virtio device type 2 \(blk\), this device is type 26/],
    [{ ...ID, name: 'rng' }, /from device "blk" 1.2.3, this device is "rng"/],
  ] as const) {
    const l = new ContainerLoader({ identity, sections: fresh() });
    await t.throwsAsync(l.feed(stream), { message: re });
  }
  const l = new ContainerLoader({ identity: { ...ID, version: '2.0.0' }, sections: fresh(), warn: (m) => warnings.push(m) });
  await l.feed(stream);
  await l.end();
  t.regex(warnings.join('\n'), /from blk 1.2.3, loading into 2.0.0/);
});

test('a memory:SIZE disk travels as the storage section; a file backing has none; size and read-only are checked', async (t) => {
  const { MemoryBacking } = await import('../host/storage/memory.ts');
  const { storageStateSections, asAsyncSection } = await import('../host/migration/storage-section.ts');
  const size = 3 * 1024 * 1024 + 512;
  const src = new MemoryBacking(size, false);
  const block = Buffer.alloc(4096, 0xab);
  for (const off of [0, 65536, 1 << 20, size - 4096]) src.write(off, block);
  const dev = new MemSection(1, 'device', Buffer.from('device bytes'));
  const parts: Buffer[] = [];
  await saveContainer({ write: async (b) => void parts.push(Buffer.from(b)) }, ID, [dev, ...storageStateSections(src).map(asAsyncSection)], { chunkSize: 1 << 20 });
  const stream = Buffer.concat(parts);
  const dst = new MemoryBacking(size, false);
  const l = new ContainerLoader({ identity: ID, sections: [new MemSection(1, 'device', Buffer.from('device bytes')), ...storageStateSections(dst).map(asAsyncSection)] });
  await l.feed(stream);
  await l.end();
  for (const off of [0, 65536, 1 << 20, size - 4096, 8192]) t.true(Buffer.from(dst.read(off, 4096)).equals(Buffer.from(src.read(off, 4096))), `offset ${off}`);
  t.deepEqual(storageStateSections({ ...dst, describe: '/some/file.img' } as never), []);
  for (const [other, re] of [[new MemoryBacking(size - 512, false), /storage is \d+ bytes here/], [new MemoryBacking(size, true), /read-only/]] as const) {
    const l2 = new ContainerLoader({ identity: ID, sections: [new MemSection(1, 'device', Buffer.from('device bytes')), ...storageStateSections(other).map(asAsyncSection)] });
    await t.throwsAsync(l2.feed(stream), { message: re });
  }
});
