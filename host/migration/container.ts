// The device-state container: what goes through the SET_DEVICE_STATE_FD channel. Versioned the
// way passt and virtiofsd version theirs (a format version plus the oldest reader version that
// can still read it), tagged with what produced it, made of sections, checksummed, and streamed
// both ways: neither side ever holds a whole state in memory.
//
// Layout (all integers little-endian):
//
//   header (H bytes)
//     0   8  magic "VHWSTATE"
//     8   2  format version (FORMAT_VERSION)
//    10   2  compat version: the oldest reader format version able to read this stream
//    12   4  H, header length including its CRC (a newer writer may add fields before the CRC;
//           an older reader skips them when compat allows it)
//    16   4  virtio device id
//    20   4  flags (0)
//    24   8  total stream length, header to trailer inclusive
//    32   2  section count (1..MAX_SECTIONS)
//    34   1  device name length n, n bytes of name
//         1  device version length v, v bytes of version
//         per section: u32 id, u32 flags, u64 length, u8 name length, name bytes
//   H-4   4  checksum of header bytes [0, H-4)
//   section payloads, in header order, back to back
//   trailer (16 bytes)
//     0   8  magic "VHWSTEND"
//     8   4  checksum of every byte before the trailer (header and payloads)
//    12   4  zero
//
// Checksum, by format version (the layout is the same in both):
//   1  CRC-32 (the zlib/IEEE 802.3 polynomial) through node:zlib, ~4.4 GB/s on this machine: a
//      fifth of a transfer's CPU time on each side (docs/BENCHMARKS.md, bench/state).
//   2  CRC-32C (Castagnoli) from the addon (host/native/src/checksum.c), through Intel ISA-L's
//      crc32_iscsi (folding with VPCLMULQDQ where the CPU has it); it can be fused with a
//      copy, so a section copied into a state file is read once. Written with compat 2: a
//      format-1 reader cannot check it, and says so by the versions (it refuses a compat it
//      does not know) instead of calling the state corrupt.
// This reader reads both (READ_VERSIONS); a format it does not know is refused naming both
// versions, as virtiofsd refuses a serialized state of a version it does not implement.
// Either checksum is a corruption check, not an authenticity check: a hostile writer can
// recompute it, which is why the parser validates every length and id as if no checksum existed.
// The header has its own checksum so lengths are trusted only after they checked out, before any
// byte reaches the device.

import { crc32c, crc32Ieee, type Checksum } from './checksum.ts';
import type { PipeSource, StateSection } from './section.ts';
import { VhostWasmError } from '../errors.ts';

export const MAGIC = Buffer.from('VHWSTATE', 'ascii');
export const TRAILER_MAGIC = Buffer.from('VHWSTEND', 'ascii');
/** The format this host writes (2: CRC-32C). */
export const FORMAT_VERSION = 2;
/** The oldest reader format able to read what this host writes. */
export const COMPAT_VERSION = 2;
/** Formats this host reads. */
export const READ_VERSIONS = [1, 2] as const;

/** The checksum a container of `format` carries (format 1: CRC-32; 2: CRC-32C). */
export function checksumFor(format: number): Checksum {
  if (format === 1) return crc32Ieee;
  if (format === 2) return crc32c;
  throw new StateFormatError(`container format ${format} has no checksum this host knows (it reads formats ${READ_VERSIONS.join(' and ')})`);
}
export const TRAILER_SIZE = 16;
export const MAX_SECTIONS = 16;
export const MAX_NAME = 64;
/** Largest header a reader accepts (fixed part + names + MAX_SECTIONS entries, with room to grow). */
export const MAX_HEADER = 4096;
const FIXED = 34;

/** What produced a state: a LOAD refuses a state from another device type or plugin. */
export interface StateIdentity {
  deviceId: number;
  name: string;
  version: string;
}

export interface SectionEntry {
  id: number;
  flags: number;
  length: number;
  name: string;
}

export interface ContainerHeader {
  formatVersion: number;
  compatVersion: number;
  headerLength: number;
  identity: StateIdentity;
  flags: number;
  totalLength: number;
  sections: SectionEntry[];
}

export class StateFormatError extends VhostWasmError {
  static override readonly code = 'ERR_STATE_FORMAT';
  override name = 'StateFormatError';
}

function checkName(s: string, what: string): Buffer {
  const b = Buffer.from(s, 'utf8');
  if (b.length > MAX_NAME) throw new RangeError(`${what} "${s}" is longer than ${MAX_NAME} bytes`);
  return b;
}

/** Serialises a header; totalLength is computed from the section lengths. */
export function encodeHeader(identity: StateIdentity, sections: readonly SectionEntry[], format: number = FORMAT_VERSION): { bytes: Buffer; totalLength: number } {
  if (!(READ_VERSIONS as readonly number[]).includes(format)) throw new RangeError(`container format ${format} (this host writes ${READ_VERSIONS.join(' or ')})`);
  if (sections.length < 1 || sections.length > MAX_SECTIONS) throw new RangeError(`${sections.length} sections (1..${MAX_SECTIONS})`);
  const name = checkName(identity.name, 'device name');
  const version = checkName(identity.version, 'device version');
  const secNames = sections.map((s) => checkName(s.name, 'section name'));
  const h = FIXED + 1 + name.length + 1 + version.length + secNames.reduce((n, b) => n + 17 + b.length, 0) + 4;
  let total = h + TRAILER_SIZE;
  for (const s of sections) {
    if (!Number.isSafeInteger(s.length) || s.length < 0) throw new RangeError(`section ${s.name}: bad length ${s.length}`);
    total += s.length;
  }
  const b = Buffer.alloc(h);
  MAGIC.copy(b, 0);
  b.writeUInt16LE(format, 8);
  // Format 1 was its own compat version; 2 is unreadable by a format-1 reader.
  b.writeUInt16LE(format === 1 ? 1 : COMPAT_VERSION, 10);
  b.writeUInt32LE(h, 12);
  b.writeUInt32LE(identity.deviceId >>> 0, 16);
  b.writeUInt32LE(0, 20);
  b.writeBigUInt64LE(BigInt(total), 24);
  b.writeUInt16LE(sections.length, 32);
  let o = FIXED;
  b[o++] = name.length;
  o += name.copy(b, o);
  b[o++] = version.length;
  o += version.copy(b, o);
  sections.forEach((s, i) => {
    b.writeUInt32LE(s.id >>> 0, o);
    b.writeUInt32LE(s.flags >>> 0, o + 4);
    b.writeBigUInt64LE(BigInt(s.length), o + 8);
    b[o + 16] = secNames[i].length;
    o += 17;
    o += secNames[i].copy(b, o);
  });
  b.writeUInt32LE(checksumFor(format)(b.subarray(0, h - 4)), h - 4);
  return { bytes: b, totalLength: total };
}

export function encodeTrailer(crc: number): Buffer {
  const t = Buffer.alloc(TRAILER_SIZE);
  TRAILER_MAGIC.copy(t, 0);
  t.writeUInt32LE(crc >>> 0, 8);
  return t;
}

/** Reads the fixed prefix: how long the whole header is (after validating magic and versions). */
export function peekHeaderLength(prefix: Buffer): number {
  if (prefix.length < 16) throw new Error('peekHeaderLength needs 16 bytes');
  if (!prefix.subarray(0, 8).equals(MAGIC)) {
    throw new StateFormatError(`not a vhost-wasm device state: bad magic ${JSON.stringify(prefix.subarray(0, 8).toString('latin1'))}`);
  }
  const format = prefix.readUInt16LE(8);
  const compat = prefix.readUInt16LE(10);
  if (format === 0 || compat === 0 || compat > format) {
    throw new StateFormatError(`impossible versions: format ${format}, compat ${compat}`);
  }
  if (compat > FORMAT_VERSION) {
    throw new StateFormatError(
      `state written in container format ${format}, readable only by format ${compat} or later; this host reads formats ${READ_VERSIONS.join(' and ')} (it writes ${FORMAT_VERSION}): upgrade this host`,
    );
  }
  if (format <= FORMAT_VERSION && !(READ_VERSIONS as readonly number[]).includes(format)) {
    throw new StateFormatError(`state written in container format ${format}; this host reads formats ${READ_VERSIONS.join(' and ')}`);
  }
  const h = prefix.readUInt32LE(12);
  if (h < FIXED + 2 + 17 + 4 || h > MAX_HEADER) throw new StateFormatError(`header length ${h} is outside [${FIXED + 23}, ${MAX_HEADER}]`);
  return h;
}

/** Parses and validates a complete header (its length from peekHeaderLength). */
export function decodeHeader(b: Buffer): ContainerHeader {
  const h = peekHeaderLength(b);
  if (b.length !== h) throw new Error(`decodeHeader: ${b.length} bytes for a ${h}-byte header`);
  const want = b.readUInt32LE(h - 4);
  const formatVersion = b.readUInt16LE(8);
  // A newer format that a format-2 reader may read (its compat said so) keeps format 2's checksum.
  const got = checksumFor(Math.min(formatVersion, FORMAT_VERSION))(b.subarray(0, h - 4));
  if (want !== got) throw new StateFormatError(`header checksum mismatch (stored 0x${want.toString(16)}, computed 0x${got.toString(16)}): the state is corrupt`);
  const end = h - 4;
  let o = FIXED;
  const need = (n: number, what: string) => {
    if (o + n > end) throw new StateFormatError(`header too short for ${what} (needs ${o + n} of ${end} bytes)`);
  };
  const str = (what: string): string => {
    need(1, `${what} length`);
    const n = b[o++];
    if (n > MAX_NAME) throw new StateFormatError(`${what} is ${n} bytes (max ${MAX_NAME})`);
    need(n, what);
    const s = b.subarray(o, o + n);
    o += n;
    // Names are shown in logs: printable ASCII only.
    if (!/^[\x20-\x7e]*$/.test(s.toString('latin1'))) throw new StateFormatError(`${what} has non-printable bytes`);
    return s.toString('latin1');
  };
  const compatVersion = b.readUInt16LE(10);
  const deviceId = b.readUInt32LE(16);
  const flags = b.readUInt32LE(20);
  if (flags !== 0 && formatVersion <= FORMAT_VERSION) throw new StateFormatError(`reserved header flags 0x${flags.toString(16)} set`);
  const total = b.readBigUInt64LE(24);
  if (total > BigInt(Number.MAX_SAFE_INTEGER)) throw new StateFormatError(`total length ${total} is beyond 2^53`);
  const count = b.readUInt16LE(32);
  if (count < 1 || count > MAX_SECTIONS) throw new StateFormatError(`${count} sections (1..${MAX_SECTIONS} allowed)`);
  const name = str('device name');
  const version = str('device version');
  const sections: SectionEntry[] = [];
  let sum = h + TRAILER_SIZE;
  for (let i = 0; i < count; i++) {
    need(16, `section ${i}`);
    const id = b.readUInt32LE(o);
    const sflags = b.readUInt32LE(o + 4);
    const len = b.readBigUInt64LE(o + 8);
    o += 16;
    const sname = str(`section ${i} name`);
    if (len > BigInt(Number.MAX_SAFE_INTEGER)) throw new StateFormatError(`section ${sname}: length ${len} is beyond 2^53`);
    if (sections.some((s) => s.id === id)) throw new StateFormatError(`section id ${id} appears twice`);
    sum += Number(len);
    sections.push({ id, flags: sflags, length: Number(len), name: sname });
  }
  // Bytes between the last known field and the CRC: fields of a newer format this reader skips
  // (allowed: compat said we can read it). A same-version header must have none.
  if (o !== end && formatVersion <= FORMAT_VERSION) throw new StateFormatError(`${end - o} unexplained header bytes`);
  if (sum !== Number(total)) {
    throw new StateFormatError(`total length ${total} does not match header + sections + trailer = ${sum}`);
  }
  return { formatVersion, compatVersion, headerLength: h, identity: { deviceId, name, version }, flags, totalLength: Number(total), sections };
}

// ---------------------------------------------------------------------------------------------
// Streaming writer (SAVE)

export interface ByteSink {
  /** Writes all of bytes (may keep a reference until it resolves). */
  write(bytes: Uint8Array): Promise<void>;
  /**
   * A file sink: makes the next `len` bytes of the file exist and skips past them, for a section
   * that writes them itself (StateSection.copyToFile). Null when the sink is a stream.
   */
  reserve?(len: number): { fd: number; offset: number } | null;
  /**
   * A pipe sink: splices `len` bytes of the file `from` at `offset` into it; false when it cannot.
   * `aside(spliced, full)` does a bounded piece of other work before each splice and each time
   * the pipe is full (then the sink waits for the reader).
   */
  spliceFrom?(from: number, offset: number, len: number, aside?: (spliced: number, full: boolean) => void): Promise<boolean>;
  /**
   * Told the container's whole length before the first byte: a file sink makes its pages exist
   * in one call (prefault) rather than one page fault per 4 KiB as they are written.
   */
  expect?(totalLength: number): void;
}

export interface SaveResult {
  totalLength: number;
  sections: SectionEntry[];
  crc: number;
}

export interface SaveOptions {
  /** Bytes asked of a section per read (default 1 MiB). */
  chunkSize?: number;
  /**
   * Container format to write (default FORMAT_VERSION). Format 1 (CRC-32) is for a destination
   * that reads only format 1, and for tests; sections then never copy themselves (copyToFile,
   * spliceSource), since those carry CRC-32C.
   */
  format?: number;
}

/**
 * A spliced section's checksum: bytes checksummed each time the pipe is full (about what the
 * reader copies and checksums while we wait: one pipe), and how far the splice may run ahead of
 * the checksum before a piece is checksummed even with room in the pipe (so the checksum's tail
 * after the last splice stays short when the reader is the faster side).
 */
const SPLICE_CRC_PIECE = 1 << 20;
const SPLICE_CRC_LAG = 4 << 20;

/** Writes a whole container to sink, pulling section bytes chunk by chunk (one read ahead). */
export async function saveContainer(sink: ByteSink, identity: StateIdentity, sections: readonly StateSection[], opts: SaveOptions = {}): Promise<SaveResult> {
  const chunk = opts.chunkSize ?? 1 << 20;
  const entries: SectionEntry[] = [];
  for (const s of sections) {
    const length = await s.size();
    if (!Number.isSafeInteger(length) || length < 0) throw new Error(`section ${s.name}: size ${length} is not a byte count`);
    entries.push({ id: s.id, flags: 0, length, name: s.name });
  }
  const format = opts.format ?? FORMAT_VERSION;
  const ck = checksumFor(format);
  const direct = format === 2;
  const header = encodeHeader(identity, entries, format);
  let crc = ck(header.bytes);
  sink.expect?.(header.totalLength);
  await sink.write(header.bytes);
  for (let i = 0; i < sections.length; i++) {
    const s = sections[i];
    const len = entries[i].length;
    if (direct && len > 0 && s.copyToFile && sink.reserve) {
      const at = sink.reserve(len);
      if (at !== null) {
        crc = await s.copyToFile(at.fd, at.offset, len, crc);
        continue;
      }
    }
    if (direct && len > 0 && s.spliceSource && sink.spliceFrom) {
      const src = s.spliceSource();
      // The source guarantees the bytes do not change until the transfer ends, so the checksum
      // need not go before the splice: it is done piece by piece while the pipe is full (the
      // reader copies each byte and checksums it too: it is the slower side, and this keeps
      // its pipe full instead of leaving it empty while a window is checksummed here), and
      // whatever is left once the last byte went into the pipe.
      if (src !== null && (await sink.spliceFrom(src.fd, src.offset, 0))) {
        let summed = 0;
        const sumPiece = () => {
          const n = Math.min(SPLICE_CRC_PIECE, len - summed);
          crc = src.crc(crc, summed, n);
          summed += n;
        };
        await sink.spliceFrom(src.fd, src.offset, len, (spliced, full) => {
          if (full && summed < len) sumPiece();
          while (spliced - summed >= SPLICE_CRC_LAG) sumPiece();
        });
        while (summed < len) sumPiece();
        continue;
      }
    }
    const size = s.readSize ?? chunk;
    const fetch = (off: number) => {
      const n = Math.min(size, len - off);
      return s.read(off, n).then((b) => {
        if (!(b instanceof Uint8Array) || b.length !== n) {
          throw new Error(`section ${s.name}: asked for ${n} bytes at ${off}, got ${b instanceof Uint8Array ? b.length : typeof b}`);
        }
        return b;
      });
    };
    let next: Promise<Uint8Array> | null = len > 0 ? fetch(0) : null;
    for (let off = 0; off < len; ) {
      const bytes = await next!;
      const after = off + bytes.length;
      next = after < len ? fetch(after) : null;
      // A read that fails while we are writing must not go unhandled.
      next?.catch(() => {});
      crc = ck(bytes, crc);
      await sink.write(bytes);
      off = after;
    }
  }
  await sink.write(encodeTrailer(crc));
  return { totalLength: header.totalLength, sections: entries, crc };
}

// ---------------------------------------------------------------------------------------------
// Streaming parser (LOAD)

export interface LoadExpectations {
  identity: StateIdentity;
  /** The sections this device has, by id; every one must be present, no other. */
  sections: readonly StateSection[];
  /** Told about acceptable differences (another plugin version). */
  warn?: (msg: string) => void;
}

/**
 * Push parser: feed() bytes as they arrive (any split), then end(). Section bytes go to their
 * StateSection as they arrive; finish() on every section happens only after the trailer's CRC
 * matched. Any failure throws StateFormatError (or the section's error) and aborts the sections
 * that had begun loading.
 */
export class ContainerLoader {
  private phase: 'prefix' | 'header' | 'payload' | 'trailer' | 'done' = 'prefix';
  private pending: Buffer[] = [];
  private pendingLen = 0;
  private need = 16;
  private header: ContainerHeader | null = null;
  private order: { entry: SectionEntry; section: StateSection }[] = [];
  private secIndex = 0;
  private secOffset = 0;
  private crc = 0;
  /** The header's format's checksum (set once the header checked out). */
  private ck: Checksum = crc32c;
  private received = 0;
  private begun: StateSection[] = [];
  private failed: Error | null = null;

  constructor(private readonly expect: LoadExpectations) {}

  get bytesReceived(): number {
    return this.received;
  }

  get parsedHeader(): ContainerHeader | null {
    return this.header;
  }

  async feed(chunk: Uint8Array): Promise<void> {
    if (this.failed) throw this.failed;
    try {
      await this.feedInner(Buffer.from(chunk.buffer, chunk.byteOffset, chunk.length));
    } catch (e) {
      await this.fail(e);
      throw e;
    }
  }

  /** End of stream: the trailer must have been complete and nothing may follow it. */
  async end(): Promise<void> {
    if (this.failed) throw this.failed;
    try {
      if (this.phase !== 'done') {
        const where = this.header ? `${this.received} of ${this.header.totalLength} bytes` : `${this.received} bytes, inside the header`;
        throw new StateFormatError(`truncated state: the stream ended after ${where}`);
      }
      for (const { section, entry } of this.order) {
        const err = await section.finish();
        if (err !== null) throw new StateFormatError(`section ${entry.name}: the device refused the state: ${err}`);
      }
    } catch (e) {
      await this.fail(e);
      throw e;
    }
    // Every section applied: the LOAD is whole, and nothing is aborted after this.
    this.begun = [];
    for (const { section } of this.order) section.commit?.();
  }

  /** Abort from outside (channel error, disconnect). */
  async abort(reason: Error): Promise<void> {
    if (this.failed) return;
    await this.fail(reason);
  }

  private async fail(e: unknown): Promise<void> {
    if (this.failed) return;
    this.failed = e instanceof Error ? e : new Error(String(e));
    for (const s of this.begun) {
      try {
        await s.abort();
      } catch {
        // The device is being given up on anyway; the first error is the one to report.
      }
    }
    this.begun = [];
  }

  /**
   * How many bytes the parser can use next without splitting them: the rest of the header or
   * trailer it is waiting for, or the rest of the current section. A reader that can size its
   * reads (a file) asks for this much, so a section's bytes arrive in buffers of their own.
   */
  wants(): number {
    if (this.phase === 'payload') return this.order[this.secIndex].entry.length - this.secOffset;
    if (this.phase === 'done') return 1 << 20;
    return this.need - this.pendingLen;
  }

  /**
   * The section whose bytes start next, when it can take them from this kind of channel itself
   * (copyFromFile, copyFromPipe); else null.
   */
  directSection(from: 'file' | 'pipe' = 'file'): { section: StateSection; length: number } | null {
    // copyFromFile/copyFromPipe carry CRC-32C: a format-1 state (CRC-32) takes the byte-by-byte path.
    if (this.failed || this.phase !== 'payload' || this.secOffset !== 0 || this.ck !== crc32c) return null;
    const { entry, section } = this.order[this.secIndex];
    return (from === 'file' ? section.copyFromFile : section.copyFromPipe) ? { section, length: entry.length } : null;
  }

  /**
   * The section directSection() named takes its bytes from the file at fileOffset (the caller
   * skips them), or, given a pipe, splices them from it.
   */
  async takeDirect(from: number | PipeSource, fileOffset = 0): Promise<void> {
    const d = this.directSection(typeof from === 'number' ? 'file' : 'pipe');
    if (d === null) throw new Error('takeDirect: no section can take its bytes from the channel here');
    try {
      this.received += d.length;
      if (this.header && this.received > this.header.totalLength) throw new StateFormatError(`section ${this.order[this.secIndex].entry.name} runs past the end of the state`);
      this.crc = typeof from === 'number' ? await d.section.copyFromFile!(from, fileOffset, d.length, this.crc) : await d.section.copyFromPipe!(from, d.length, this.crc);
      this.secOffset = d.length;
      this.advanceSection();
    } catch (e) {
      await this.fail(e);
      throw e;
    }
  }

  private take(n: number): Buffer {
    const all = this.pending.length === 1 ? this.pending[0] : Buffer.concat(this.pending, this.pendingLen);
    const out = all.subarray(0, n);
    const rest = all.subarray(n);
    this.pending = rest.length > 0 ? [rest] : [];
    this.pendingLen = rest.length;
    return out;
  }

  private async feedInner(buf: Buffer): Promise<void> {
    if (buf.length === 0) return;
    if (this.phase === 'done') {
      throw new StateFormatError(`trailing garbage: ${buf.length} byte(s) after the end of the state`);
    }
    this.received += buf.length;
    if (this.header && this.received > this.header.totalLength) {
      throw new StateFormatError(`trailing garbage: ${this.received - this.header.totalLength} byte(s) after the end of the state`);
    }
    let rest = buf;
    while (rest.length > 0) {
      if (this.phase === 'payload') {
        rest = await this.payload(rest);
        continue;
      }
      if ((this.phase as string) === 'done') throw new StateFormatError(`trailing garbage: ${rest.length} byte(s) after the end of the state`);
      const n = Math.min(rest.length, this.need - this.pendingLen);
      this.pending.push(rest.subarray(0, n));
      this.pendingLen += n;
      rest = rest.subarray(n);
      if (this.pendingLen < this.need) return;
      await this.step();
    }
  }

  private async step(): Promise<void> {
    switch (this.phase) {
      case 'prefix': {
        const h = peekHeaderLength(Buffer.concat(this.pending, this.pendingLen));
        this.phase = 'header';
        this.need = h;
        return;
      }
      case 'header': {
        const bytes = this.take(this.need);
        const hdr = decodeHeader(Buffer.from(bytes));
        this.checkIdentity(hdr);
        this.ck = checksumFor(Math.min(hdr.formatVersion, FORMAT_VERSION));
        this.crc = this.ck(bytes);
        this.header = hdr;
        for (const entry of hdr.sections) {
          const section = this.expect.sections.find((s) => s.id === entry.id);
          if (!section) throw new StateFormatError(`section ${entry.id} (${entry.name}) is not one this device has`);
          this.order.push({ entry, section });
        }
        for (const s of this.expect.sections) {
          if (!hdr.sections.some((e) => e.id === s.id)) throw new StateFormatError(`section ${s.id} (${s.name}) is missing from the state`);
        }
        for (const { entry, section } of this.order) {
          this.begun.push(section);
          await section.beginLoad(entry.length);
        }
        this.secIndex = 0;
        this.secOffset = 0;
        this.advanceSection();
        return;
      }
      case 'trailer': {
        const t = this.take(TRAILER_SIZE);
        if (!t.subarray(0, 8).equals(TRAILER_MAGIC)) throw new StateFormatError('bad trailer magic: the state is corrupt or cut short');
        const want = t.readUInt32LE(8);
        if (t.readUInt32LE(12) !== 0) throw new StateFormatError('reserved trailer bytes are not zero');
        if (want !== this.crc >>> 0) {
          throw new StateFormatError(`checksum mismatch (stored 0x${want.toString(16)}, computed 0x${(this.crc >>> 0).toString(16)}): the state is corrupt`);
        }
        this.phase = 'done';
        return;
      }
      default:
        return;
    }
  }

  /** Moves to the next section with bytes left, or to the trailer. */
  private advanceSection(): void {
    while (this.secIndex < this.order.length && this.secOffset >= this.order[this.secIndex].entry.length) {
      this.secIndex++;
      this.secOffset = 0;
    }
    if (this.secIndex < this.order.length) {
      this.phase = 'payload';
    } else {
      this.phase = 'trailer';
      this.need = TRAILER_SIZE;
    }
  }

  private async payload(buf: Buffer): Promise<Buffer> {
    const { entry, section } = this.order[this.secIndex];
    const n = Math.min(buf.length, entry.length - this.secOffset);
    const part = buf.subarray(0, n);
    // Taken before write(): the section may take ownership of (transfer) the buffer.
    const rest = buf.subarray(n);
    this.crc = this.ck(part, this.crc);
    await section.write(this.secOffset, part);
    this.secOffset += n;
    this.advanceSection();
    return rest;
  }

  private checkIdentity(h: ContainerHeader): void {
    const want = this.expect.identity;
    const got = h.identity;
    if (got.deviceId !== want.deviceId) {
      throw new StateFormatError(`state is from virtio device type ${got.deviceId} (${got.name}), this device is type ${want.deviceId} (${want.name})`);
    }
    if (got.name !== want.name) {
      throw new StateFormatError(`state is from device "${got.name}" ${got.version}, this device is "${want.name}" ${want.version}`);
    }
    if (got.version !== want.version) {
      // The device's own bytes carry its own version (virtiofsd-style): it decides in finish.
      this.expect.warn?.(`state is from ${got.name} ${got.version}, loading into ${want.version}: the device decides whether it can read it`);
    }
  }
}
